//! A puncturable key: a GGM tree of HMAC-SHA256 over 2^32 slots, kept as its cover set.
//!
//! Each slot (one per patient) has a slot key, the leaf of a binary tree whose root is a
//! random secret: `child(parent, bit) = HMAC-SHA256(parent, "hygie-ggm-v1" ‖ [bit])`,
//! bit 0 for the left child, 1 for the right, the slot's bits read from the most
//! significant (depth 1) to the least (depth 32). The key is stored as a cover set: the
//! nodes `(depth, index)` from which every slot still reachable derives. A fresh key is the
//! root `(0, 0)`. Puncturing a slot removes the node that covers it and puts in its place
//! the siblings of the path below it: every other slot still derives the same key, and the
//! punctured one can no longer be derived from what is kept, since HMAC cannot be run
//! backwards from a child to its parent or sibling.
//!
//! Cost: deriving runs at most 32 HMACs; a puncture adds at most 31 nodes (32 new minus the
//! one removed), so the cover set holds at most `32 × punctures + 1` nodes. The path of the
//! last slot derived is kept ([`LastPath`]): slots are handed out in order, so the next one
//! shares all but its last few nodes and costs one or two HMACs.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::secret::hmac_sha256;
use crate::{Secret, VaultError};

/// The depth of the tree: slots are `0..2^32`.
pub const SLOT_BITS: u8 = 32;
/// The number of slots.
pub const SLOT_COUNT: u64 = 1 << SLOT_BITS;
/// The last slot, reserved for the key check value: never handed out, never punctured, so
/// that every generation can always prove it is the right key.
pub const CHECK_SLOT: u64 = SLOT_COUNT - 1;
/// The slot reserved for the keys of backups (`hygie backup`): each backup's random key is
/// wrapped under this slot's key. Never handed to a patient and never punctured, so that
/// erasing a patient makes that patient's data in a backup unreadable and nothing else:
/// the backup itself still opens.
pub const BACKUP_SLOT: u64 = SLOT_COUNT - 2;

/// The label of child derivation; a new derivation would take a new label.
const CHILD_LABEL: &[u8] = b"hygie-ggm-v1";

/// A GGM tree's cover set: the nodes from which every non-punctured slot derives.
pub struct PuncturableKey {
    /// `(depth, index)`: the node covers slots `[index << (32 - depth), (index + 1) << (32 - depth))`.
    /// The nodes' ranges never overlap.
    nodes: BTreeMap<(u8, u64), Secret>,
    /// The path of the slot derived last. Emptied by every puncture, so that it never holds
    /// a node above a punctured slot.
    last_path: Mutex<Option<LastPath>>,
}

/// The nodes on the path of one slot, from its covering node down to the slot's key:
/// `nodes[i]` is at depth `from_depth + i`. Wiped when dropped, as every [`Secret`] is.
struct LastPath {
    slot: u64,
    from_depth: u8,
    nodes: Vec<Secret>,
}

impl LastPath {
    /// The depth of the deepest kept node that is also on `slot`'s path, if any. Every
    /// node is derived from its parent alone, so a node of this path is the same node of
    /// `slot`'s path at every depth where the two paths have taken the same turns.
    fn shared_depth(&self, slot: u64) -> Option<u8> {
        let same_turns = ((self.slot ^ slot) << (64 - u32::from(SLOT_BITS)))
            .leading_zeros()
            .min(u32::from(SLOT_BITS)) as u8;
        (same_turns >= self.from_depth).then_some(same_turns)
    }
}

impl Clone for PuncturableKey {
    fn clone(&self) -> PuncturableKey {
        PuncturableKey {
            nodes: self.nodes.clone(),
            last_path: Mutex::new(None),
        }
    }
}

impl PuncturableKey {
    /// A fresh key: a random root that covers every slot.
    pub fn random() -> PuncturableKey {
        PuncturableKey {
            nodes: BTreeMap::from([((0, 0), Secret::random())]),
            last_path: Mutex::new(None),
        }
    }

    /// The key of `slot`, or `None` once it was punctured.
    pub fn derive(&self, slot: u64) -> Result<Option<Secret>, VaultError> {
        check_in_range(slot)?;
        let Some((covering_depth, index)) = self.covering_node(slot) else {
            return Ok(None);
        };
        // Taken out while deriving, so that other threads never wait on the HMACs (one
        // that comes meanwhile derives from the cover set).
        let taken = self
            .last_path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let reused = taken.and_then(|mut path| {
            let depth = path.shared_depth(slot)?;
            path.nodes
                .truncate(usize::from(depth - path.from_depth) + 1);
            Some(path)
        });
        let mut path = reused.unwrap_or_else(|| LastPath {
            slot,
            from_depth: covering_depth,
            nodes: vec![self.nodes[&(covering_depth, index)].clone()],
        });
        path.slot = slot;
        for depth in path.from_depth + path.nodes.len() as u8 - 1..SLOT_BITS {
            let next = child(
                path.nodes.last().expect("never empty"),
                path_bit(slot, depth),
            );
            path.nodes.push(next);
        }
        let key = path.nodes.last().expect("never empty").clone();
        *self.last_path.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
        Ok(Some(key))
    }

    /// Makes `slot` underivable while every other slot keeps its key. Returns whether the
    /// slot was covered (false: already punctured, nothing changed). [`CHECK_SLOT`] and
    /// [`BACKUP_SLOT`] are refused ([`VaultError::ReservedSlot`]).
    pub fn puncture(&mut self, slot: u64) -> Result<bool, VaultError> {
        check_in_range(slot)?;
        if slot == CHECK_SLOT || slot == BACKUP_SLOT {
            return Err(VaultError::ReservedSlot(slot));
        }
        // Its nodes may lie above `slot`: gone before anything else changes.
        *self.last_path.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        let Some(covering) = self.covering_node(slot) else {
            return Ok(false);
        };
        let mut current = self
            .nodes
            .remove(&covering)
            .expect("the covering node was just found");
        for depth in covering.0..SLOT_BITS {
            let bit = path_bit(slot, depth);
            let index_on_path = slot >> (SLOT_BITS - depth - 1);
            self.nodes
                .insert((depth + 1, index_on_path ^ 1), child(&current, 1 - bit));
            current = child(&current, bit);
        }
        Ok(true)
    }

    /// Whether `slot` was punctured.
    pub fn is_punctured(&self, slot: u64) -> Result<bool, VaultError> {
        check_in_range(slot)?;
        Ok(self.covering_node(slot).is_none())
    }

    /// The number of nodes kept: what the key file's size grows with.
    pub fn cover_len(&self) -> usize {
        self.nodes.len()
    }

    /// The nodes, for the key file: `(depth, index, secret)`.
    pub(crate) fn nodes(&self) -> impl Iterator<Item = (u8, u64, &Secret)> {
        self.nodes
            .iter()
            .map(|(&(depth, index), secret)| (depth, index, secret))
    }

    /// A key from the key file's nodes, refused unless they form a cover set (depths at
    /// most 32, indexes within their depth, ranges that do not overlap).
    pub(crate) fn from_nodes(
        nodes: impl IntoIterator<Item = (u8, u64, Secret)>,
    ) -> Result<PuncturableKey, String> {
        let mut map = BTreeMap::new();
        for (depth, index, secret) in nodes {
            if depth > SLOT_BITS {
                return Err(format!("node ({depth}, {index}): depth above {SLOT_BITS}"));
            }
            if index >= 1 << depth {
                return Err(format!(
                    "node ({depth}, {index}): index out of range for its depth"
                ));
            }
            if map.insert((depth, index), secret).is_some() {
                return Err(format!("node ({depth}, {index}) appears twice"));
            }
        }
        let mut ranges: Vec<(u64, u64, u8, u64)> = map
            .keys()
            .map(|&(depth, index)| {
                let shift = SLOT_BITS - depth;
                (index << shift, (index + 1) << shift, depth, index)
            })
            .collect();
        ranges.sort_unstable();
        for pair in ranges.windows(2) {
            let (_, end, depth, index) = pair[0];
            let (start, _, next_depth, next_index) = pair[1];
            if start < end {
                return Err(format!(
                    "nodes ({depth}, {index}) and ({next_depth}, {next_index}) overlap"
                ));
            }
        }
        Ok(PuncturableKey {
            nodes: map,
            last_path: Mutex::new(None),
        })
    }

    /// The node that covers `slot`, if any: at most one, since ranges do not overlap.
    fn covering_node(&self, slot: u64) -> Option<(u8, u64)> {
        (0..=SLOT_BITS)
            .map(|depth| (depth, slot >> (SLOT_BITS - depth)))
            .find(|node| self.nodes.contains_key(node))
    }
}

impl std::fmt::Debug for PuncturableKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PuncturableKey")
            .field("cover_len", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

/// One step down the tree.
fn child(parent: &Secret, bit: u8) -> Secret {
    hmac_sha256(parent, &[CHILD_LABEL, &[bit]])
}

/// The bit of `slot` that picks the child of its path node at `depth`.
fn path_bit(slot: u64, depth: u8) -> u8 {
    ((slot >> (SLOT_BITS - depth - 1)) & 1) as u8
}

fn check_in_range(slot: u64) -> Result<(), VaultError> {
    if slot >= SLOT_COUNT {
        return Err(VaultError::SlotOutOfRange(slot));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::hex;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn fixed_root() -> PuncturableKey {
        PuncturableKey::from_nodes([(0, 0, Secret::from_bytes([7; 32]))]).unwrap()
    }

    fn derived(key: &PuncturableKey, slot: u64) -> Option<[u8; 32]> {
        key.derive(slot).unwrap().map(|secret| *secret.as_bytes())
    }

    /// A slot's key derived from its covering node, without the kept path.
    fn from_cover_set(key: &PuncturableKey, slot: u64) -> Option<[u8; 32]> {
        let (depth, index) = key.covering_node(slot)?;
        let mut current = key.nodes[&(depth, index)].clone();
        for depth in depth..SLOT_BITS {
            current = child(&current, path_bit(slot, depth));
        }
        Some(*current.as_bytes())
    }

    /// A puncture leaves no node of the path it cut in memory: the kept path would
    /// otherwise still derive the erased slot's key.
    #[test]
    fn a_puncture_forgets_the_kept_path() {
        let mut key = PuncturableKey::random();
        assert!(derived(&key, 41).is_some());
        assert!(key.last_path.lock().unwrap().is_some());
        key.puncture(41).unwrap();
        assert!(key.last_path.lock().unwrap().is_none());
        assert_eq!(derived(&key, 41), None);
        // A clone starts without one, so that two keys never share secrets they derived.
        assert!(derived(&key, 42).is_some());
        assert!(key.clone().last_path.lock().unwrap().is_none());
    }

    /// Pins the derivation (label, bit order, bit encoding) to values computed outside
    /// this crate (Python's `hmac`), so that a change of derivation cannot pass unnoticed:
    /// key files written today must derive the same slot keys forever.
    #[test]
    fn derivation_matches_known_answers() {
        let key = fixed_root();
        for (slot, expected) in KNOWN_ANSWERS {
            assert_eq!(
                hex(key.derive(slot).unwrap().unwrap().as_bytes()),
                expected,
                "slot {slot}"
            );
        }
    }

    const KNOWN_ANSWERS: [(u64, &str); 4] = [
        (
            0,
            "de404762558533a5269ae900021dd2f25f3a267071a69cb1b0e893cac1daad81",
        ),
        (
            1,
            "320ca3bf0740ebc97cea20433e4ebcfbe48679a976f60c842729d9dd292fd778",
        ),
        (
            0x8000_0000,
            "600cc2bccc1d36105a8123694db8b1dcce994704f2b0031af43493cbc8339aa5",
        ),
        (
            CHECK_SLOT,
            "9da8b37d11e87bf828015e70469acfc009fc6f2aed06b94cbde1337a19e45e6c",
        ),
    ];

    /// Would fail if the derivation ignored the bit: neighbouring slots, and slots that
    /// differ in any single bit, must derive different keys.
    #[test]
    fn slots_differing_in_any_bit_derive_different_keys() {
        let key = PuncturableKey::random();
        let base = 0x5a5a_5a5a;
        let base_key = derived(&key, base).unwrap();
        for bit in 0..SLOT_BITS {
            let other = base ^ (1 << bit);
            assert_ne!(derived(&key, other).unwrap(), base_key, "bit {bit}");
        }
    }

    #[test]
    fn a_fresh_key_is_its_root() {
        let key = PuncturableKey::random();
        assert_eq!(key.cover_len(), 1);
        assert!(!key.is_punctured(0).unwrap());
        assert!(!key.is_punctured(CHECK_SLOT).unwrap());
    }

    #[test]
    fn the_first_puncture_adds_thirty_two_siblings() {
        let mut key = PuncturableKey::random();
        assert!(key.puncture(12345).unwrap());
        assert_eq!(key.cover_len(), 32);
        assert!(key.is_punctured(12345).unwrap());
        assert!(!key.is_punctured(12344).unwrap());
        // The sibling leaf of 12345 is a node of its own: puncturing it removes that node.
        assert!(key.puncture(12344).unwrap());
        assert_eq!(key.cover_len(), 31);
    }

    #[test]
    fn check_slot_is_refused() {
        let mut key = PuncturableKey::random();
        assert!(matches!(
            key.puncture(CHECK_SLOT),
            Err(VaultError::ReservedSlot(CHECK_SLOT))
        ));
        assert_eq!(key.cover_len(), 1);
    }

    #[test]
    fn backup_slot_is_refused() {
        let mut key = PuncturableKey::random();
        assert!(matches!(
            key.puncture(BACKUP_SLOT),
            Err(VaultError::ReservedSlot(BACKUP_SLOT))
        ));
        assert_eq!(key.cover_len(), 1);
        // Its neighbour is an ordinary slot.
        assert!(key.puncture(BACKUP_SLOT - 1).unwrap());
        assert!(!key.is_punctured(BACKUP_SLOT).unwrap());
    }

    #[test]
    fn out_of_range_slots_are_refused() {
        let mut key = PuncturableKey::random();
        for slot in [SLOT_COUNT, SLOT_COUNT + 1, u64::MAX] {
            assert!(matches!(
                key.derive(slot),
                Err(VaultError::SlotOutOfRange(_))
            ));
            assert!(matches!(
                key.puncture(slot),
                Err(VaultError::SlotOutOfRange(_))
            ));
            assert!(matches!(
                key.is_punctured(slot),
                Err(VaultError::SlotOutOfRange(_))
            ));
        }
    }

    #[test]
    fn from_nodes_refuses_what_is_not_a_cover_set() {
        let secret = || Secret::from_bytes([1; 32]);
        assert!(PuncturableKey::from_nodes([(33, 0, secret())]).is_err());
        assert!(PuncturableKey::from_nodes([(1, 2, secret())]).is_err());
        assert!(PuncturableKey::from_nodes([(1, 1, secret()), (1, 1, secret())]).is_err());
        assert!(PuncturableKey::from_nodes([(0, 0, secret()), (32, 5, secret())]).is_err());
        assert!(PuncturableKey::from_nodes([(1, 0, secret()), (2, 1, secret())]).is_err());
        assert!(PuncturableKey::from_nodes([(1, 0, secret()), (2, 2, secret())]).is_ok());
        assert!(PuncturableKey::from_nodes([]).is_ok());
    }

    #[test]
    fn nodes_round_trip() {
        let mut key = PuncturableKey::random();
        for slot in [0, 1, 77, 1 << 31, BACKUP_SLOT - 1] {
            key.puncture(slot).unwrap();
        }
        let copy = PuncturableKey::from_nodes(
            key.nodes()
                .map(|(depth, index, secret)| (depth, index, secret.clone())),
        )
        .unwrap();
        for slot in [
            0,
            1,
            2,
            76,
            77,
            78,
            1 << 31,
            (1 << 31) + 1,
            BACKUP_SLOT - 1,
            BACKUP_SLOT,
            CHECK_SLOT,
        ] {
            assert_eq!(derived(&copy, slot), derived(&key, slot));
        }
    }

    /// Sets of slots to puncture: scattered, clustered (consecutive slots), and hugging
    /// both ends of the range that may be punctured (slot 0 and 2^32 - 3, next to the
    /// reserved backup and check slots).
    fn punctures() -> impl Strategy<Value = Vec<u64>> {
        let one = prop_oneof![
            0..BACKUP_SLOT,
            0..64u64,
            (BACKUP_SLOT - 64)..BACKUP_SLOT,
            Just(0),
            Just(BACKUP_SLOT - 1),
        ];
        let scattered = proptest::collection::vec(one, 0..24);
        let clustered = (0..BACKUP_SLOT - 48, 1..48u64)
            .prop_map(|(first, count)| (first..first + count).collect::<Vec<_>>());
        let top = (1..48u64).prop_map(|count| (BACKUP_SLOT - count..BACKUP_SLOT).collect());
        prop_oneof![scattered, clustered, top]
    }

    proptest! {
        #[test]
        fn puncturing_removes_exactly_the_punctured_slots(
            punctured in punctures(),
            probes in proptest::collection::vec(0..SLOT_COUNT, 0..16),
        ) {
            let untouched = PuncturableKey::random();
            let mut key = untouched.clone();
            let mut distinct = BTreeSet::new();
            for &slot in &punctured {
                prop_assert_eq!(key.puncture(slot).unwrap(), distinct.insert(slot));
            }
            prop_assert!(key.cover_len() <= 32 * distinct.len() + 1);

            // Every punctured slot, its neighbours, both ends and random slots.
            let mut checked: BTreeSet<u64> = probes.into_iter().collect();
            checked.extend([0, 1, CHECK_SLOT - 1, CHECK_SLOT]);
            for &slot in &distinct {
                checked.extend([slot.saturating_sub(1), slot, (slot + 1).min(CHECK_SLOT)]);
            }
            for slot in checked {
                if distinct.contains(&slot) {
                    prop_assert!(key.is_punctured(slot).unwrap());
                    prop_assert_eq!(derived(&key, slot), None);
                } else {
                    prop_assert!(!key.is_punctured(slot).unwrap());
                    prop_assert_eq!(derived(&key, slot), derived(&untouched, slot));
                }
            }
        }

        /// The kept path never changes a slot's key: slots derived in runs (as keys are
        /// handed out), at random and across punctures give what a derivation from the
        /// cover set alone gives.
        #[test]
        fn the_kept_path_derives_what_the_cover_set_derives(
            steps in proptest::collection::vec(
                prop_oneof![
                    (0..BACKUP_SLOT, 1..40u64).prop_map(|(first, count)| (first, count, false)),
                    (0..BACKUP_SLOT).prop_map(|slot| (slot, 1, true)),
                ],
                1..12,
            ),
        ) {
            let mut key = PuncturableKey::random();
            for (first, count, puncture) in steps {
                if puncture {
                    key.puncture(first).unwrap();
                }
                for slot in first..(first + count).min(BACKUP_SLOT) {
                    prop_assert_eq!(derived(&key, slot), from_cover_set(&key, slot));
                }
            }
        }

        #[test]
        fn puncturing_twice_changes_nothing(punctured in punctures()) {
            let mut key = PuncturableKey::random();
            for &slot in &punctured {
                key.puncture(slot).unwrap();
            }
            let nodes: Vec<(u8, u64, [u8; 32])> =
                key.nodes().map(|(depth, index, secret)| (depth, index, *secret.as_bytes())).collect();
            for &slot in &punctured {
                prop_assert!(!key.puncture(slot).unwrap());
            }
            let again: Vec<(u8, u64, [u8; 32])> =
                key.nodes().map(|(depth, index, secret)| (depth, index, *secret.as_bytes())).collect();
            prop_assert_eq!(nodes, again);
        }
    }
}
