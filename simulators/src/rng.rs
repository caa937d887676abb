//! Seeded pseudo-random numbers for the simulators.
//!
//! The generator is xoshiro256** (Blackman & Vigna, <https://prng.di.unimi.it/>)
//! seeded through SplitMix64, both written out here instead of taken from the
//! `rand` crate. A demo scenario replayed from a seed must produce the same
//! telemetry forever, and an external crate is free to change its algorithms or
//! seeding between versions; this one only changes if this file does, and the
//! golden tests below make such a change fail loudly.

use std::f64::consts::TAU;

/// Deterministic, seedable PRNG (xoshiro256** seeded via SplitMix64).
///
/// Not cryptographically secure; it only has to be fast, statistically decent
/// and reproducible. The integer stream ([`next_u64`](Self::next_u64)) and
/// [`next_f64`](Self::next_f64) are bit-exact on every platform;
/// [`normal`](Self::normal) goes through `ln`/`cos`/`sqrt`, whose last bit may
/// differ between platform math libraries.
#[derive(Debug, Clone)]
pub struct SimRng {
    s: [u64; 4],
}

/// One SplitMix64 step: advances `state` and returns the next output.
///
/// Used only for seeding, because it turns any 64-bit seed (even 0 or
/// neighbouring seeds) into a well-mixed, never all-zero xoshiro state.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SimRng {
    /// Creates a generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Self { s }
    }

    /// Next 64 uniformly distributed bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform `f64` in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        // The top 53 bits fill the mantissa exactly, so every value is an
        // exact multiple of 2^-53 and 1.0 can never come out.
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform `f64` in `[lo, hi)`; if `hi < lo` the interval is `(hi, lo]`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Normally distributed sample (Box–Muller transform).
    ///
    /// Always consumes exactly two `u64`s; the second Box–Muller value is
    /// thrown away rather than cached so that the generator state stays a
    /// plain function of how many values were drawn.
    pub fn normal(&mut self, mean: f64, std_dev: f64) -> f64 {
        // 1 - u lies in (0, 1], keeping ln() finite.
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        let z = (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos();
        mean + std_dev * z
    }

    /// `true` with probability `p` (`p <= 0` or NaN: never, `p >= 1`: always).
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_reference_vector() {
        // Reference output of SplitMix64 for seed 0.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(splitmix64(&mut s), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn xoshiro_core_matches_reference_vector() {
        // Reference output of xoshiro256** for state [1, 2, 3, 4].
        let mut r = SimRng { s: [1, 2, 3, 4] };
        assert_eq!(r.next_u64(), 11_520);
        assert_eq!(r.next_u64(), 0);
        assert_eq!(r.next_u64(), 1_509_978_240);
        assert_eq!(r.next_u64(), 1_215_971_899_390_074_240);
    }

    #[test]
    fn golden_outputs_are_pinned() {
        let mut r = SimRng::new(0);
        assert_eq!(r.next_u64(), 0x99EC_5F36_CB75_F2B4);
        assert_eq!(r.next_u64(), 0xBF6E_1F78_4956_452A);
        assert_eq!(r.next_u64(), 0x1A5F_849D_4933_E6E0);
        assert_eq!(r.next_u64(), 0x6AA5_94F1_262D_2D2C);

        let mut r = SimRng::new(42);
        assert_eq!(r.next_u64(), 0x1578_0B2E_0C2E_C716);
        assert_eq!(r.next_u64(), 0x6104_D986_6D11_3A7E);

        let mut r = SimRng::new(42);
        assert_eq!(r.next_f64(), 0.083_862_971_059_882_16);
        assert_eq!(r.next_f64(), 0.378_980_250_662_668_6);
    }

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SimRng::new(7);
        let mut b = SimRng::new(7);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        let mut c = SimRng::new(8);
        let mut a = SimRng::new(7);
        let same = (0..100).filter(|_| a.next_u64() == c.next_u64()).count();
        assert_eq!(same, 0);
    }

    #[test]
    fn clone_continues_identically() {
        let mut a = SimRng::new(3);
        a.next_u64();
        let mut b = a.clone();
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn uniform_helpers_stay_in_range() {
        let mut r = SimRng::new(1);
        for _ in 0..10_000 {
            let u = r.next_f64();
            assert!((0.0..1.0).contains(&u));
            let x = r.range(-2.5, 4.0);
            assert!((-2.5..4.0).contains(&x));
        }
        assert!(!r.chance(0.0));
        assert!(r.chance(1.0));
        assert!(!r.chance(f64::NAN));
        let hits = (0..10_000).filter(|_| r.chance(0.25)).count();
        assert!((2_200..2_800).contains(&hits), "hits = {hits}");
    }

    #[test]
    fn normal_has_requested_moments() {
        let mut r = SimRng::new(99);
        let n = 10_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal(5.0, 2.0)).collect();
        assert!(xs.iter().all(|x| x.is_finite()));
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        // Standard error of the mean is 0.02 and of the std dev ~0.014.
        assert!((mean - 5.0).abs() < 0.08, "mean = {mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.06, "std = {}", var.sqrt());
    }
}
