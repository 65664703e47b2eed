//! Counter-based random numbers (Philox 4x32-10, as in JAX and cuRAND).
//!
//! Element `i` of a random tensor is a pure function of `(seed, offset + i)`, so the same seed
//! gives the same numbers on every device, whatever the thread count or launch shape.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = (a as u64) * (b as u64);
    ((p >> 32) as u32, p as u32)
}

/// Philox 4x32 with 10 rounds: four random words for a 128-bit counter and a 64-bit key.
#[inline]
pub fn philox_4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for _ in 0..10 {
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

#[inline]
fn words(seed: u64, index: u64) -> [u32; 4] {
    philox_4x32(
        [index as u32, (index >> 32) as u32, 0, 0],
        [seed as u32, (seed >> 32) as u32],
    )
}

#[inline]
fn unit(hi: u32, lo: u32) -> f64 {
    // 53 random bits -> [0, 1).
    let bits = ((hi as u64) << 21) ^ ((lo as u64) >> 11);
    bits as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform on `[0, 1)` for element `index` of stream `seed`.
#[inline]
pub fn uniform(seed: u64, index: u64) -> f64 {
    let w = words(seed, index);
    unit(w[0], w[1])
}

/// Standard normal for element `index` of stream `seed` (Box-Muller on one Philox block).
#[inline]
pub fn normal(seed: u64, index: u64) -> f64 {
    let w = words(seed, index);
    let u1 = 1.0 - unit(w[0], w[1]); // (0, 1], so the log is finite
    let u2 = unit(w[2], w[3]);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A seeded source of random tensors. Each draw advances the counter by the number of elements
/// drawn, so successive draws never overlap.
#[derive(Clone, Debug)]
pub struct Generator {
    seed: u64,
    offset: u64,
}

impl Generator {
    /// A generator for `seed`, starting at counter 0.
    pub fn new(seed: u64) -> Self {
        Generator { seed, offset: 0 }
    }
    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// The counter of the next element drawn.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Reserves `n` counters and returns the first.
    pub fn advance(&mut self, n: usize) -> u64 {
        let o = self.offset;
        self.offset += n as u64;
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_the_random123_known_answer() {
        // Known-answer test from Random123 (kat_vectors: philox4x32_10, all-ones pattern).
        let out = philox_4x32([0xffff_ffff; 4], [0xffff_ffff; 2]);
        assert_eq!(out, [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]);
        let out = philox_4x32([0; 4], [0; 2]);
        assert_eq!(out, [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
    }

    #[test]
    fn normal_has_unit_moments() {
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|i| normal(7, i)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.01, "{var}");
    }
}

thread_local! {
    /// The generator of [`crate::Tensor::randn`] and [`crate::Tensor::rand`] on this thread.
    static THREAD_GENERATOR: std::cell::RefCell<Generator> =
        std::cell::RefCell::new(Generator::new(DEFAULT_SEED));
}

/// The seed of each thread's generator until [`manual_seed`] (PyTorch's default seed).
pub const DEFAULT_SEED: u64 = 67_280_421_310_721;

/// Seeds this thread's generator, which [`crate::Tensor::randn`] and [`crate::Tensor::rand`]
/// draw from (PyTorch's `torch.manual_seed`): the same seed gives the same values on every
/// device and thread count.
pub fn manual_seed(seed: u64) {
    THREAD_GENERATOR.with(|g| *g.borrow_mut() = Generator::new(seed));
}

/// Runs `f` with this thread's generator.
pub(crate) fn with_thread_generator<T>(f: impl FnOnce(&mut Generator) -> T) -> T {
    THREAD_GENERATOR.with(|g| f(&mut g.borrow_mut()))
}
