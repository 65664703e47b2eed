//! `einsum`: any equation `TERM,TERM,...->TERM` (letters `a`–`z`, at most one `...` per term,
//! explicit output), lowered to ops that already carry their backward rules, so the gradient
//! (and its gradient) comes from them:
//!
//! 1. a letter repeated within one term reads that input's diagonal (`where` with an identity
//!    mask, then `sum`: the gradient lands on the diagonal, 0 elsewhere);
//! 2. `...` dims broadcast (NumPy rules, aligned right) through `expand`;
//! 3. a letter needed neither by the output nor by a later input is summed out as early as
//!    possible;
//! 4. inputs are contracted left to right, each pair as one batched `matmul` after
//!    `permute`/`reshape` to `[batch, free_left, contracted] · [batch, contracted, free_right]`;
//! 5. the result is summed over what is left and permuted into the output's order.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A dim's label: letters are 0..26, the broadcast `...` dims 26.. from the left.
type Label = usize;
const ELLIPSIS_BASE: Label = 26;

fn bad(equation: &str, msg: impl std::fmt::Display) -> Error {
    Error::invalid("einsum", format!("equation {equation:?}: {msg}"))
}

/// One term's letters, and where its `...` sits (`None` without one).
fn parse_term(eq: &str, term: &str) -> Result<(Vec<Label>, Option<usize>)> {
    let mut letters = Vec::new();
    let mut ellipsis = None;
    let mut rest = term;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("...") {
            if ellipsis.is_some() {
                return Err(bad(eq, format!("term {term:?} has two '...'")));
            }
            ellipsis = Some(letters.len());
            rest = r;
            continue;
        }
        let c = rest.as_bytes()[0];
        if !c.is_ascii_lowercase() {
            return Err(bad(
                eq,
                format!(
                    "term {term:?}: {:?} is not a letter a-z or '...'",
                    c as char
                ),
            ));
        }
        letters.push((c - b'a') as Label);
        rest = &rest[1..];
    }
    Ok((letters, ellipsis))
}

/// Labels of one input of rank `rank` whose term is `letters` with `...` at `at`, the
/// ellipsis covering `rank - letters.len()` dims aligned right among `e_max`.
fn labels_of(
    eq: &str,
    k: usize,
    (letters, at): &(Vec<Label>, Option<usize>),
    rank: usize,
    e_max: usize,
) -> Result<Vec<Label>> {
    match at {
        None if letters.len() != rank => Err(bad(
            eq,
            format!(
                "input {k} has {rank} dims but its term names {}",
                letters.len()
            ),
        )),
        None => Ok(letters.clone()),
        Some(p) => {
            let e = rank.checked_sub(letters.len()).ok_or_else(|| {
                bad(
                    eq,
                    format!(
                        "input {k} has {rank} dims, fewer than the {} letters of its term",
                        letters.len()
                    ),
                )
            })?;
            let mut l = letters[..*p].to_vec();
            l.extend((0..e).map(|t| ELLIPSIS_BASE + e_max - e + t));
            l.extend_from_slice(&letters[*p..]);
            Ok(l)
        }
    }
}

/// The diagonal over every repeated label of `x`, so each label names one dim.
fn take_diagonals(mut x: Tensor, mut labels: Vec<Label>) -> Result<(Tensor, Vec<Label>)> {
    while let Some((p, q)) = (0..labels.len()).find_map(|p| {
        (p + 1..labels.len())
            .find(|&q| labels[q] == labels[p])
            .map(|q| (p, q))
    }) {
        let n = x.dims()[p];
        let mut shape = vec![1isize; x.rank()];
        shape[p] = n as isize;
        shape[q] = n as isize;
        let eye = Tensor::triangle_mask(n, n, x.device(), |i, j| i == j)?.reshape(&shape)?;
        x = eye
            .where_(&x, &x.scalar_like(0.0)?.detach())?
            .sum(&[q as isize], false)?;
        labels.remove(q);
    }
    Ok((x, labels))
}

/// Sums `x` over the labels `keep` rejects.
fn sum_out(
    x: Tensor,
    labels: Vec<Label>,
    keep: impl Fn(Label) -> bool,
) -> Result<(Tensor, Vec<Label>)> {
    let drop: Vec<isize> = (0..labels.len())
        .filter(|&i| !keep(labels[i]))
        .map(|i| i as isize)
        .collect();
    if drop.is_empty() {
        return Ok((x, labels));
    }
    let kept = labels.into_iter().filter(|&l| keep(l)).collect();
    Ok((x.sum(&drop, false)?, kept))
}

fn permuted(x: &Tensor, labels: &[Label], order: &[Label]) -> Result<Tensor> {
    let perm: Vec<isize> = order
        .iter()
        .map(|l| labels.iter().position(|m| m == l).unwrap_or(0) as isize)
        .collect();
    x.permute(&perm)
}

/// `a · b` contracted over `contract`, batched over `batch`: labels batch ++ a-only ++ b-only.
fn contract(
    (a, la): (Tensor, Vec<Label>),
    (b, lb): (Tensor, Vec<Label>),
    needed: impl Fn(Label) -> bool,
) -> Result<(Tensor, Vec<Label>)> {
    let size = |x: &Tensor, l: &[Label], label: Label| {
        x.dims()[l.iter().position(|&m| m == label).unwrap_or(0)]
    };
    let batch: Vec<Label> = la
        .iter()
        .copied()
        .filter(|l| lb.contains(l) && needed(*l))
        .collect();
    let summed: Vec<Label> = la
        .iter()
        .copied()
        .filter(|l| lb.contains(l) && !needed(*l))
        .collect();
    let left: Vec<Label> = la.iter().copied().filter(|l| !lb.contains(l)).collect();
    let right: Vec<Label> = lb.iter().copied().filter(|l| !la.contains(l)).collect();
    let prod = |x: &Tensor, l: &[Label], ls: &[Label]| -> isize {
        ls.iter().map(|&m| size(x, l, m)).product::<usize>() as isize
    };
    let (nb, m, k, n) = (
        prod(&a, &la, &batch),
        prod(&a, &la, &left),
        prod(&a, &la, &summed),
        prod(&b, &lb, &right),
    );
    let a_order: Vec<Label> = [&batch[..], &left[..], &summed[..]].concat();
    let b_order: Vec<Label> = [&batch[..], &summed[..], &right[..]].concat();
    let a3 = permuted(&a, &la, &a_order)?.reshape(&[nb, m, k])?;
    let b3 = permuted(&b, &lb, &b_order)?.reshape(&[nb, k, n])?;
    let mut out_shape: Vec<isize> = Vec::new();
    out_shape.extend(batch.iter().map(|&l| size(&a, &la, l) as isize));
    out_shape.extend(left.iter().map(|&l| size(&a, &la, l) as isize));
    out_shape.extend(right.iter().map(|&l| size(&b, &lb, l) as isize));
    let y = a3.matmul(&b3)?.reshape(&out_shape)?;
    Ok((y, [batch, left, right].concat()))
}

/// Evaluates `equation` over `inputs` (see the module docs); one dtype for all inputs.
pub fn einsum(equation: &str, inputs: &[&Tensor]) -> Result<Tensor> {
    let eq = equation;
    let (lhs, rhs) = eq
        .split_once("->")
        .ok_or_else(|| bad(eq, "needs an explicit output: TERM,TERM->TERM"))?;
    let terms = lhs
        .split(',')
        .map(|t| parse_term(eq, t))
        .collect::<Result<Vec<_>>>()?;
    if terms.len() != inputs.len() || inputs.is_empty() {
        return Err(bad(
            eq,
            format!("{} terms for {} inputs", terms.len(), inputs.len()),
        ));
    }
    let first = inputs[0];
    for t in &inputs[1..] {
        super::same_kind("einsum", first, t)?;
    }
    if first.dtype() == DType::Bool {
        return Err(bad(eq, "takes numeric tensors, got bool"));
    }
    // The broadcast rank of `...` and its labels.
    let e_max = terms
        .iter()
        .zip(inputs)
        .filter(|((_, at), _)| at.is_some())
        .map(|((l, _), x)| x.rank().saturating_sub(l.len()))
        .max()
        .unwrap_or(0);
    let mut ops = Vec::with_capacity(inputs.len());
    for (k, (term, x)) in terms.iter().zip(inputs).enumerate() {
        let labels = labels_of(eq, k, term, x.rank(), e_max)?;
        ops.push(take_diagonals((*x).clone(), labels)?);
    }
    let (out_letters, out_at) = parse_term(eq, rhs)?;
    let any_ellipsis = terms.iter().any(|(_, at)| at.is_some());
    if out_at.is_some() != any_ellipsis {
        return Err(bad(
            eq,
            "'...' must be in the output exactly when some input has it",
        ));
    }
    let mut out_labels = out_letters.clone();
    if let Some(p) = out_at {
        out_labels.splice(p..p, (0..e_max).map(|t| ELLIPSIS_BASE + t));
    }
    for (i, &l) in out_letters.iter().enumerate() {
        if out_letters[..i].contains(&l) {
            return Err(bad(
                eq,
                format!("output repeats {:?}", (b'a' + l as u8) as char),
            ));
        }
        if !ops.iter().any(|(_, ls)| ls.contains(&l)) {
            return Err(bad(
                eq,
                format!(
                    "output letter {:?} is in no input",
                    (b'a' + l as u8) as char
                ),
            ));
        }
    }
    // Every label's size: letters must agree; `...` dims broadcast (1 grows).
    let mut sizes: std::collections::BTreeMap<Label, usize> = Default::default();
    for (x, ls) in &ops {
        for (&l, &n) in ls.iter().zip(x.dims()) {
            match sizes.get(&l).copied() {
                None => {
                    sizes.insert(l, n);
                }
                Some(m) if m == n => {}
                Some(m) if l >= ELLIPSIS_BASE && (m == 1 || n == 1) => {
                    sizes.insert(l, m.max(n));
                }
                Some(m) => {
                    let what = if l < ELLIPSIS_BASE {
                        format!("letter {:?}", (b'a' + l as u8) as char)
                    } else {
                        "'...'".to_string()
                    };
                    return Err(bad(eq, format!("{what} names dims of sizes {m} and {n}")));
                }
            }
        }
    }
    let ops = ops
        .into_iter()
        .map(|(x, ls)| {
            let target: Vec<isize> = ls.iter().map(|l| sizes[l] as isize).collect();
            let x = if target.iter().zip(x.dims()).any(|(&t, &d)| t as usize != d) {
                x.expand(&target)?
            } else {
                x
            };
            Ok((x, ls))
        })
        .collect::<Result<Vec<_>>>()?;
    // Left to right; a label is needed while the output or a later input has it.
    let later = |from: usize, l: Label, ops: &[(Tensor, Vec<Label>)]| {
        out_labels.contains(&l) || ops[from..].iter().any(|(_, ls)| ls.contains(&l))
    };
    let mut iter = ops.clone().into_iter().enumerate();
    let (_, (x0, l0)) = iter.next().ok_or_else(|| bad(eq, "no inputs"))?;
    let mut acc = sum_out(x0, l0, |l| later(1, l, &ops))?;
    for (i, (x, ls)) in iter {
        let rhs = sum_out(x, ls, |l| later(i + 1, l, &ops) || acc.1.contains(&l))?;
        let lhs_labels = acc.1.clone();
        let acc_pruned = sum_out(acc.0, lhs_labels, |l| {
            later(i + 1, l, &ops) || rhs.1.contains(&l)
        })?;
        acc = contract(acc_pruned, rhs, |l| later(i + 1, l, &ops))?;
    }
    let (y, ly) = sum_out(acc.0, acc.1, |l| out_labels.contains(&l))?;
    permuted(&y, &ly, &out_labels)
}
