//! String normalization for string search and token `:text`: what `index` stores and what
//! `query` compares it with, so both sides are normalized by the same code.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Lowercase, accents removed (canonical decomposition, then combining marks dropped),
/// whitespace runs collapsed to one space, leading and trailing whitespace removed.
///
/// Lowercasing comes first because some lowercase forms decompose into a base letter and a
/// mark (`İ` → `i̇`), which the next step then drops.
///
/// ```
/// use hygie_fhir::search::text::normalize;
/// assert_eq!(normalize("  Élodie\tDE  la Tour "), "elodie de la tour");
/// assert_eq!(normalize("Ångström"), "angstrom");
/// ```
pub fn normalize(s: &str) -> String {
    if s.is_ascii() {
        // Most values: no accent to remove, so no decomposition (a quarter of extraction time
        // without this path). Same rules as `normalize_unicode` (a test checks it).
        let mut out = String::with_capacity(s.len());
        let mut pending_space = false;
        for c in s.chars() {
            if c.is_whitespace() {
                pending_space = !out.is_empty();
            } else {
                if pending_space {
                    out.push(' ');
                    pending_space = false;
                }
                out.push(c.to_ascii_lowercase());
            }
        }
        return out;
    }
    normalize_unicode(s)
}

fn normalize_unicode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars().flat_map(char::to_lowercase).nfd() {
        if is_combining_mark(c) {
            continue;
        }
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{normalize, normalize_unicode};

    #[test]
    fn accents_case_and_whitespace() {
        assert_eq!(normalize("Chloé"), "chloe");
        assert_eq!(normalize("ÇA VA"), "ca va");
        assert_eq!(normalize("İstanbul"), "istanbul");
        assert_eq!(normalize("a \n\t b"), "a b");
        assert_eq!(normalize("   "), "");
        assert_eq!(normalize(""), "");
        // Precomposed and decomposed forms normalize alike.
        assert_eq!(normalize("e\u{301}"), normalize("\u{e9}"));
        // Letters without a decomposition stay.
        assert_eq!(normalize("Straße Øre"), "straße øre");
    }

    #[test]
    fn ascii_fast_path_agrees() {
        let ascii: String = (0u8..128).map(char::from).collect();
        for s in [ascii.as_str(), " A\tb\r\nC \x0b\x0c d ", "", "  ", "x"] {
            assert_eq!(normalize(s), normalize_unicode(s), "{s:?}");
        }
        for (a, b) in (0u8..128).flat_map(|a| (0u8..128).map(move |b| (a, b))) {
            let s = format!("{}x{}", char::from(a), char::from(b));
            assert_eq!(normalize(&s), normalize_unicode(&s), "{s:?}");
        }
    }

    #[test]
    fn idempotent() {
        for s in ["Élodie  Dupont", "ÅÄÖ", "x\u{0301}\u{0308}y"] {
            assert_eq!(normalize(&normalize(s)), normalize(s));
        }
    }
}
