//! A small seeded pseudo-random generator: xoshiro256** seeded through SplitMix64.
//!
//! NOT cryptographic. It exists so that the same seed always gives the same synthetic data on
//! every platform and Rust version (the standard library has no seeded generator, and pulling
//! `rand` in for this would tie our byte-identical output to its release policy).

/// SplitMix64: used to expand one `u64` into well-mixed seeds (and to derive sub-streams).
fn split_mix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut mixed = *state;
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    mixed ^ (mixed >> 31)
}

/// xoshiro256** (Blackman and Vigna): fast, small, good statistical quality, not cryptographic.
#[derive(Debug, Clone)]
pub(crate) struct SynthRng {
    state: [u64; 4],
}

impl SynthRng {
    /// One independent stream per (seed, stream, index): the hospital uses one, each patient
    /// its own, so patient N is the same whether it is generated alone or among others.
    pub(crate) fn for_stream(seed: u64, stream: u64, index: u64) -> Self {
        let mut mixer = seed;
        let mut state_seed = split_mix64(&mut mixer) ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let mut mixer = split_mix64(&mut state_seed) ^ index.wrapping_mul(0xA076_1D64_78BD_642F);
        let state = [
            split_mix64(&mut mixer),
            split_mix64(&mut mixer),
            split_mix64(&mut mixer),
            split_mix64(&mut mixer),
        ];
        // SplitMix64 never yields four zeros in a row, the one state xoshiro must avoid.
        Self { state }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = self.state;
        let result = s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let shifted = s1 << 17;
        let mut next = [s0, s1, s2 ^ s0, s3 ^ s1];
        next[1] ^= next[2];
        next[0] ^= next[3];
        next[2] ^= shifted;
        next[3] = next[3].rotate_left(45);
        self.state = next;
        result
    }

    /// Uniform in `0..bound` (Lemire's multiply-shift; the tiny bias is irrelevant here).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0) has no value to return");
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Uniform in `low..=high`.
    pub(crate) fn between(&mut self, low: i64, high: i64) -> i64 {
        assert!(low <= high, "empty range {low}..={high}");
        let span = high.abs_diff(low) + 1;
        low.wrapping_add(self.below(span) as i64)
    }

    /// True with probability `percent`/100.
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Picks an item with probability proportional to `weight(item)`.
    pub(crate) fn pick_weighted<'a, T>(
        &mut self,
        items: &'a [T],
        weight: impl Fn(&T) -> u64,
    ) -> &'a T {
        let total: u64 = items.iter().map(&weight).sum();
        let mut ticket = self.below(total);
        for item in items {
            let item_weight = weight(item);
            if ticket < item_weight {
                return item;
            }
            ticket -= item_weight;
        }
        unreachable!("the ticket is below the total weight")
    }

    /// A version-4 shaped UUID (RFC 9562 layout) from the generator, as `urn:uuid:…`.
    pub(crate) fn urn_uuid(&mut self) -> String {
        let high = (self.next_u64() & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
        let low = (self.next_u64() & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
        format!(
            "urn:uuid:{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            high >> 32,
            (high >> 16) & 0xFFFF,
            high & 0xFFFF,
            low >> 48,
            low & 0xFFFF_FFFF_FFFF
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_streams_differ() {
        let mut first = SynthRng::for_stream(42, 1, 0);
        let mut second = SynthRng::for_stream(42, 1, 0);
        let mut other_index = SynthRng::for_stream(42, 1, 1);
        let mut other_stream = SynthRng::for_stream(42, 2, 0);
        let mut other_seed = SynthRng::for_stream(43, 1, 0);
        let a: Vec<u64> = (0..8).map(|_| first.next_u64()).collect();
        let b: Vec<u64> = (0..8).map(|_| second.next_u64()).collect();
        assert_eq!(a, b);
        for other in [&mut other_index, &mut other_stream, &mut other_seed] {
            let c: Vec<u64> = (0..8).map(|_| other.next_u64()).collect();
            assert_ne!(a, c);
        }
    }

    #[test]
    fn reference_outputs_pin_the_algorithms() {
        // Published reference values: a change here would silently change every demo data set
        // and benchmark input, so it must be deliberate.
        let mut split_mix_state = 0;
        assert_eq!(split_mix64(&mut split_mix_state), 0xE220_A839_7B1D_CDAF);
        assert_eq!(split_mix64(&mut split_mix_state), 0x6E78_9E6A_A1B9_65F4);
        let mut xoshiro = SynthRng {
            state: [1, 2, 3, 4],
        };
        assert_eq!(xoshiro.next_u64(), 11520);
        assert_eq!(xoshiro.next_u64(), 0);
        assert_eq!(xoshiro.next_u64(), 1_509_978_240);
    }

    #[test]
    fn ranges_stay_in_bounds_and_cover_them() {
        let mut rng = SynthRng::for_stream(7, 0, 0);
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let value = rng.between(-2, 2);
            assert!((-2..=2).contains(&value));
            seen[(value + 2) as usize] = true;
        }
        assert!(seen.iter().all(|&hit| hit));
        assert_eq!(rng.between(5, 5), 5);
        assert!((0..1000).all(|_| rng.below(3) < 3));
        assert!(!(0..1000).any(|_| rng.chance(0)));
        assert!((0..1000).all(|_| rng.chance(100)));
    }

    #[test]
    fn weighted_pick_never_picks_zero_weight() {
        let mut rng = SynthRng::for_stream(9, 0, 0);
        let items = [("never", 0), ("always", 5)];
        assert!((0..200).all(|_| rng.pick_weighted(&items, |item| item.1).0 == "always"));
    }

    #[test]
    fn uuids_have_the_version_4_shape() {
        let mut rng = SynthRng::for_stream(1, 0, 0);
        for _ in 0..100 {
            let urn = rng.urn_uuid();
            let uuid = urn.strip_prefix("urn:uuid:").unwrap();
            let groups: Vec<&str> = uuid.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(
                uuid.chars()
                    .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
            assert!(groups[2].starts_with('4'));
            assert!(matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        }
    }
}
