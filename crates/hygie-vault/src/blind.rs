//! Keyed blind-index terms: search on encrypted data without storing what is searched.
//!
//! A term is `namespace ":" base64url(first 16 bytes of HMAC-SHA256(index key, namespace ‖
//! 0x00 ‖ value))`: deterministic, so equal values match; keyed, so that someone holding
//! only the database cannot test guesses (a patient's name, a birth date) against it; the
//! namespace (`Patient.family`, `Patient.birthdate`, ...) both prefixes the term and enters
//! the MAC, so that equal values of two search parameters give unrelated terms. Every term
//! of a namespace has the same length, so the index tells nothing of a value's length.
//!
//! Prefix and substring search index every [`prefixes`] or [`substrings`] of a value.
//! Normalising the value first (case, accents) is the caller's choice: this module hashes
//! the exact string it is given.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::Secret;

/// The most characters of a value that prefixes and substrings are taken from: bounds a
/// value's terms (32 prefixes, at most 528 substrings).
pub const MAX_BLIND_CHARS: usize = 32;

/// The length of a term's MAC, in bytes: 128 bits make a chance collision negligible.
pub const TERM_MAC_BYTES: usize = 16;

/// The blind-index term of `value` in `namespace`.
pub fn term(index_key: &Secret, namespace: &str, value: &str) -> String {
    let encoded = URL_SAFE_NO_PAD.encode(term_mac(index_key, namespace, value));
    format!("{namespace}:{encoded}")
}

/// The MAC of a term alone (what [`term`] encodes after its namespace): for an index that
/// keeps each term as 16 bytes.
pub fn term_mac(index_key: &Secret, namespace: &str, value: &str) -> [u8; TERM_MAC_BYTES] {
    NamespaceMac::new(index_key, namespace).term_mac(value)
}

/// [`term_mac`] for many values of one namespace: the HMAC is keyed and has absorbed the
/// namespace once, and each value continues from a copy of that state. A name's terms
/// (every prefix and substring, about a hundred) then cost one key schedule, not one each.
#[derive(Clone)]
pub struct NamespaceMac {
    keyed: aws_lc_rs::hmac::Context,
}

impl NamespaceMac {
    /// Keys the MAC with `index_key` and absorbs `namespace` and its separator.
    pub fn new(index_key: &Secret, namespace: &str) -> NamespaceMac {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, index_key.as_bytes());
        let mut keyed = aws_lc_rs::hmac::Context::with_key(&key);
        keyed.update(namespace.as_bytes());
        keyed.update(&[0]);
        NamespaceMac { keyed }
    }

    /// The first [`TERM_MAC_BYTES`] of `HMAC-SHA256(index key, namespace ‖ 0x00 ‖ value)`.
    pub fn term_mac(&self, value: &str) -> [u8; TERM_MAC_BYTES] {
        let mut context = self.keyed.clone();
        context.update(value.as_bytes());
        let tag = context.sign();
        let mut first = [0u8; TERM_MAC_BYTES];
        first.copy_from_slice(&tag.as_ref()[..TERM_MAC_BYTES]);
        first
    }
}

/// Every non-empty prefix of `value`, cut at character boundaries, of at most
/// [`MAX_BLIND_CHARS`] characters, shortest first.
pub fn prefixes(value: &str) -> Vec<&str> {
    char_ends(value)
        .take(MAX_BLIND_CHARS)
        .map(|end| &value[..end])
        .collect()
}

/// Every distinct substring of at least `min_chars` characters (at least one) of the first
/// [`MAX_BLIND_CHARS`] characters of `value`, in no particular order.
pub fn substrings(value: &str, min_chars: usize) -> Vec<&str> {
    let min_chars = min_chars.max(1);
    let boundaries: Vec<usize> = std::iter::once(0)
        .chain(char_ends(value).take(MAX_BLIND_CHARS))
        .collect();
    let char_count = boundaries.len() - 1;
    let mut seen = std::collections::HashSet::new();
    let mut found = Vec::new();
    for start in 0..char_count {
        for end in start + min_chars..=char_count {
            let substring = &value[boundaries[start]..boundaries[end]];
            if seen.insert(substring) {
                found.push(substring);
            }
        }
    }
    found
}

/// The byte offset after each character.
fn char_ends(value: &str) -> impl Iterator<Item = usize> + '_ {
    value
        .char_indices()
        .map(|(start, character)| start + character.len_utf8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::hmac_sha256;
    use std::collections::BTreeSet;

    fn key(byte: u8) -> Secret {
        Secret::from_bytes([byte; 32])
    }

    #[test]
    fn same_input_same_term() {
        assert_eq!(
            term(&key(1), "Patient.family", "Durand"),
            term(&key(1), "Patient.family", "Durand")
        );
    }

    /// Pins the construction to a value computed outside this crate (Python's `hmac`):
    /// terms already stored must keep matching.
    #[test]
    fn term_matches_a_known_answer() {
        assert_eq!(
            term(&key(1), "Patient.family", "Durand"),
            "Patient.family:t_8XTkoe8AUOjettblP-1A"
        );
    }

    #[test]
    fn key_namespace_and_value_each_change_the_term() {
        let base = term(&key(1), "Patient.family", "Durand");
        assert_ne!(term(&key(2), "Patient.family", "Durand"), base);
        assert_ne!(
            term(&key(1), "Patient.given", "Durand")[14..],
            base["Patient.family".len()..]
        );
        assert_ne!(term(&key(1), "Patient.family", "durand"), base);
        assert_ne!(term(&key(1), "Patient.family", "Durand "), base);
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(
            term(&key(1), "ab", "c")["ab:".len()..],
            term(&key(1), "a", "bc")["a:".len()..]
        );
    }

    #[test]
    fn every_term_of_a_namespace_has_the_same_length() {
        let lengths: BTreeSet<usize> = ["", "a", "Durand", &"x".repeat(10_000), "東京"]
            .iter()
            .map(|value| term(&key(1), "Patient.family", value).len())
            .collect();
        assert_eq!(lengths, BTreeSet::from(["Patient.family:".len() + 22]));
    }

    #[test]
    fn prefixes_cut_at_character_boundaries() {
        assert_eq!(prefixes("Zoé"), ["Z", "Zo", "Zoé"]);
        assert_eq!(prefixes("東京都"), ["東", "東京", "東京都"]);
        assert!(prefixes("").is_empty());
    }

    #[test]
    fn prefixes_stop_at_the_limit() {
        let long = "é".repeat(50);
        let found = prefixes(&long);
        assert_eq!(found.len(), MAX_BLIND_CHARS);
        assert_eq!(found.last().unwrap().chars().count(), MAX_BLIND_CHARS);
    }

    #[test]
    fn substrings_cut_at_character_boundaries() {
        let found: BTreeSet<&str> = substrings("Léa", 2).into_iter().collect();
        assert_eq!(found, BTreeSet::from(["Lé", "éa", "Léa"]));
        let found: BTreeSet<&str> = substrings("東京", 1).into_iter().collect();
        assert_eq!(found, BTreeSet::from(["東", "京", "東京"]));
    }

    #[test]
    fn a_namespace_mac_is_the_hmac_of_namespace_separator_and_value() {
        let key = Secret::from_bytes([7; Secret::LEN]);
        let other = Secret::from_bytes([8; Secret::LEN]);
        let family = NamespaceMac::new(&key, "Patient.family/p");
        for value in ["", "l", "lefevre", "éa", "東京"] {
            let whole = hmac_sha256(&key, &[b"Patient.family/p", &[0], value.as_bytes()]);
            assert_eq!(
                family.term_mac(value).as_slice(),
                &whole.as_bytes()[..TERM_MAC_BYTES]
            );
            // The same namespace state serves every value: no value leaks into the next.
            assert_eq!(
                family.term_mac(value),
                term_mac(&key, "Patient.family/p", value)
            );
            assert_ne!(
                family.term_mac(value),
                term_mac(&key, "Patient.given/p", value)
            );
            assert_ne!(
                family.term_mac(value),
                NamespaceMac::new(&other, "Patient.family/p").term_mac(value)
            );
        }
    }

    #[test]
    fn substrings_are_deduplicated() {
        let found = substrings("aaaa", 2);
        let distinct: BTreeSet<&str> = found.iter().copied().collect();
        assert_eq!(found.len(), distinct.len());
        assert_eq!(distinct, BTreeSet::from(["aa", "aaa", "aaaa"]));
    }

    #[test]
    fn substrings_honour_the_minimum_and_the_limit() {
        assert!(substrings("abc", 4).is_empty());
        assert_eq!(substrings("ab", 0).len(), 3);
        let long: String = ('a'..='z').chain('A'..='Z').collect();
        let found = substrings(&long, 1);
        assert_eq!(found.len(), MAX_BLIND_CHARS * (MAX_BLIND_CHARS + 1) / 2);
        assert!(found.iter().all(|substring| long[..32].contains(substring)));
    }
}
