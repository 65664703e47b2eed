//! Shapes and strided layouts. A view (permute, transpose, slice, expand) only changes the
//! layout; kernels read any layout, so views cost nothing until a kernel needs contiguous data.

use crate::error::{Error, Result};
use std::fmt;

/// A list of dimension sizes, printed as `[2, 3]`.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    /// The sizes.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    /// Number of elements (1 for a 0-d shape).
    pub fn numel(&self) -> usize {
        numel(&self.0)
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}
impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}
impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Shape, strides (in elements) and offset of a tensor inside its buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// The element count of a shape that [`checked_numel`] accepted: 0 with a zero dim (whose
/// other dims may multiply past `usize`), else the product.
fn numel(shape: &[usize]) -> usize {
    if shape.contains(&0) {
        0
    } else {
        shape.iter().product()
    }
}

/// The element count of `shape`, or an error naming `op` when the count overflows or its bytes
/// (`elem_bytes` each; 1 where only the count matters) pass `isize::MAX`, the most one
/// allocation can hold. Every op that makes a shape from user input checks it here, so no
/// product wraps around to a small (or zero) size.
pub fn checked_numel(op: &'static str, shape: &[usize], elem_bytes: usize) -> Result<usize> {
    // A zero dim makes the count 0 whatever the others are (PyTorch allows [2^32, 2^32, 0]).
    if shape.contains(&0) {
        return Ok(0);
    }
    let n = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            Error::invalid(
                op,
                format!("shape {shape:?} has more elements than fit in a usize"),
            )
        })?;
    match n.checked_mul(elem_bytes.max(1)) {
        Some(b) if b <= isize::MAX as usize => Ok(n),
        _ => Err(Error::invalid(
            op,
            format!(
                "shape {shape:?} ({n} elements of {} bytes) needs more bytes than one allocation can hold ({})",
                elem_bytes.max(1),
                isize::MAX
            ),
        )),
    }
}

/// Row-major strides of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut s: usize = 1;
    for i in (0..shape.len()).rev() {
        strides[i] = s;
        // Saturating: only an empty shape (a zero dim) can get here with a product past usize.
        s = s.saturating_mul(shape[i].max(1));
    }
    strides
}

/// Resolves a possibly negative `dim` against `rank`.
pub fn normalize_dim(op: &'static str, dim: isize, rank: usize) -> Result<usize> {
    let r = rank as isize;
    let d = if dim < 0 { dim + r } else { dim };
    if d < 0 || d >= r.max(0) {
        return Err(Error::invalid(
            op,
            format!("dim {dim} is out of range for a tensor of rank {rank}"),
        ));
    }
    Ok(d as usize)
}

/// NumPy broadcasting of two shapes.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let da = if i < r - a.len() {
            1
        } else {
            a[i - (r - a.len())]
        };
        let db = if i < r - b.len() {
            1
        } else {
            b[i - (r - b.len())]
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::shape(
                op,
                format!("shapes cannot be broadcast together (dim {i}: {da} vs {db})"),
                a,
                b,
            ));
        };
    }
    checked_numel(op, &out, 1)?;
    Ok(out)
}

impl Layout {
    /// A contiguous row-major layout at offset 0.
    pub fn contiguous(shape: &[usize]) -> Layout {
        Layout {
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
        }
    }

    /// A layout from its parts. Backends use it to describe regions of their own buffers.
    pub fn new(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Layout {
        debug_assert_eq!(shape.len(), strides.len());
        // An empty view reads nothing: offset 0 keeps every `offset..offset + numel` in bounds.
        let offset = if numel(&shape) == 0 { 0 } else { offset };
        Layout {
            shape,
            strides,
            offset,
        }
    }

    /// Dimension sizes.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Strides in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    /// Offset of element `[0, 0, ...]` in the buffer.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Whether the elements are laid out row-major without gaps (size-1 dims may have any stride).
    pub fn is_contiguous(&self) -> bool {
        // No elements: nothing to be out of order (and a copy would not be "more" contiguous).
        if self.numel() == 0 {
            return true;
        }
        let mut expected = 1;
        for i in (0..self.rank()).rev() {
            if self.shape[i] != 1 && self.strides[i] != expected {
                return false;
            }
            expected *= self.shape[i];
        }
        true
    }

    /// One past the largest buffer index this layout touches (0 when empty).
    pub fn max_extent(&self) -> usize {
        if self.numel() == 0 {
            return 0;
        }
        self.offset
            + self
                .shape
                .iter()
                .zip(&self.strides)
                .map(|(&d, &s)| (d - 1) * s)
                .sum::<usize>()
            + 1
    }

    /// The layout with its dims reordered (`dims` already validated as a permutation).
    pub fn permute(&self, dims: &[usize]) -> Layout {
        Layout {
            shape: dims.iter().map(|&d| self.shape[d]).collect(),
            strides: dims.iter().map(|&d| self.strides[d]).collect(),
            offset: self.offset,
        }
    }

    /// Elements `start, start + step, ...` (`len` of them) along `dim`.
    pub fn slice(&self, dim: usize, start: usize, len: usize, step: usize) -> Layout {
        let mut l = self.clone();
        l.shape[dim] = len;
        l.strides[dim] *= step;
        // An empty view reads nothing: offset 0 keeps every `offset..offset + numel` in bounds.
        l.offset = match l.numel() {
            0 => 0,
            _ => l.offset + start * self.strides[dim],
        };
        l
    }

    /// Broadcasts to `shape` (already checked compatible): new leading dims and size-1 dims get
    /// stride 0.
    pub fn broadcast_to(&self, shape: &[usize]) -> Layout {
        let extra = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for i in 0..self.rank() {
            strides[extra + i] = if self.shape[i] == 1 && shape[extra + i] != 1 {
                0
            } else {
                self.strides[i]
            };
        }
        Layout {
            shape: shape.to_vec(),
            strides,
            offset: self.offset,
        }
    }

    /// A view with a new shape of the same number of elements, if one exists without copying:
    /// always for contiguous layouts, otherwise when each new dim splits or merges old dims
    /// that are themselves laid out row-major.
    pub fn reshape(&self, shape: &[usize]) -> Option<Layout> {
        if self.is_contiguous() {
            return Some(Layout {
                shape: shape.to_vec(),
                strides: contiguous_strides(shape),
                offset: self.offset,
            });
        }
        // Group old dims (ignoring size-1) into runs that are row-major among themselves, then
        // map the new dims onto those runs.
        let old: Vec<(usize, usize)> = self
            .shape
            .iter()
            .zip(&self.strides)
            .filter(|(&d, _)| d != 1)
            .map(|(&d, &s)| (d, s))
            .collect();
        let mut new_strides = vec![0; shape.len()];
        let mut oi = 0;
        let mut ni = 0;
        while ni < shape.len() {
            if shape[ni] == 1 {
                new_strides[ni] = 1;
                ni += 1;
                continue;
            }
            if oi >= old.len() {
                return None;
            }
            // Take old dims until their product matches the new dims' product.
            let mut old_prod = old[oi].0;
            let mut run = vec![old[oi]];
            oi += 1;
            let mut new_dims = vec![ni];
            let mut new_prod = shape[ni];
            ni += 1;
            while old_prod != new_prod {
                if old_prod < new_prod {
                    if oi >= old.len() {
                        return None;
                    }
                    // The merged old dims must be row-major with each other.
                    let (d, s) = old[oi];
                    let last = run.last().copied()?;
                    if last.1 != d * s {
                        return None;
                    }
                    run.push((d, s));
                    old_prod *= d;
                    oi += 1;
                } else {
                    if ni >= shape.len() {
                        return None;
                    }
                    new_dims.push(ni);
                    new_prod *= shape[ni];
                    ni += 1;
                }
            }
            let mut stride = run.last().copied()?.1;
            for &k in new_dims.iter().rev() {
                new_strides[k] = stride;
                stride *= shape[k];
            }
        }
        if oi != old.len() {
            return None;
        }
        Some(Layout {
            shape: shape.to_vec(),
            strides: new_strides,
            offset: self.offset,
        })
    }

    /// Buffer offset of the element at multi-index `idx`.
    pub fn offset_of(&self, idx: &[usize]) -> usize {
        self.offset
            + idx
                .iter()
                .zip(&self.strides)
                .map(|(i, s)| i * s)
                .sum::<usize>()
    }
}

/// Merges adjacent dims that are row-major with respect to each other in *every* layout, and
/// drops size-1 dims, so strided kernels run long inner loops. All layouts share one shape.
/// Returns the merged shape and one stride list per layout.
pub fn coalesce(shape: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_shape: Vec<usize> = Vec::with_capacity(shape.len());
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::with_capacity(shape.len()); strides.len()];
    for (i, &d) in shape.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let merge = match out_shape.last() {
            Some(_) => strides
                .iter()
                .zip(&out_strides)
                .all(|(s, os)| os[os.len() - 1] == s[i] * d),
            None => false,
        };
        if merge {
            let n = out_shape.len() - 1;
            out_shape[n] *= d;
            for (s, os) in strides.iter().zip(out_strides.iter_mut()) {
                os[n] = s[i];
            }
        } else {
            out_shape.push(d);
            for (s, os) in strides.iter().zip(out_strides.iter_mut()) {
                os.push(s[i]);
            }
        }
    }
    (out_shape, out_strides)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_of_transposed_view_needs_a_copy() {
        let l = Layout::contiguous(&[2, 3]).permute(&[1, 0]);
        assert!(l.reshape(&[6]).is_none());
        assert!(l.reshape(&[3, 2, 1]).is_some());
    }

    #[test]
    fn reshape_splits_a_strided_dim() {
        // Every other row of a [4, 6] matrix, reshaped to [2, 2, 3]: a view.
        let l = Layout::contiguous(&[4, 6]).slice(0, 0, 2, 2);
        let r = l.reshape(&[2, 2, 3]).unwrap();
        assert_eq!(r.strides(), &[12, 3, 1]);
    }

    #[test]
    fn coalesce_merges_contiguous_dims() {
        let (s, st) = coalesce(&[2, 3, 4], &[&[12, 4, 1], &[0, 4, 1]]);
        assert_eq!(s, vec![2, 12]);
        assert_eq!(st, vec![vec![12, 1], vec![0, 1]]);
    }

    #[test]
    fn broadcast_names_both_shapes() {
        let e = broadcast_shapes("add", &[2, 3], &[4])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("add") && e.contains("[2, 3]") && e.contains("[4]"),
            "{e}"
        );
    }
}
