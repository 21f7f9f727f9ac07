//! A resource's references to patients, kept with its head (`resources.patient_refs`).
//!
//! Every audited access asks which patients the resources it touched belong to (BALP names
//! one patient entity per patient), and every read under need-to-know asks it first. The
//! reference index answers it with one owner-index seek and a table row per reference (an
//! Observation holds four): measured as 16% of the SQLite writer's time under audited reads
//! (bench/audit/README §7). The head row is read by the access anyway, so the same answer
//! is written there when the index is written, from the same rows.
//!
//! The column is a cache of `search_reference`'s rows whose target type is `Patient`: it is
//! written wherever those rows are (a version put, an index replaced), and NULL means
//! "not known here, ask the index" (a value that cannot be encoded, a row written by
//! hand). It never holds anything the index does not.

use crate::search::{IndexCell, IndexRow};

/// The only target type the column answers for.
pub const TARGET_TYPE: &str = "Patient";

/// Separates a parameter from the patient's id.
const FIELD: char = '\t';
/// Separates one reference from the next.
const RECORD: char = '\n';

/// The column's value for a resource indexed with `rows`: its `Patient` references as
/// `param<TAB>id` lines, sorted and deduplicated; empty when it has none; `None` when a
/// parameter or an id holds a separator (the index is then asked instead).
pub fn encode(rows: &[IndexRow]) -> Option<String> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for row in rows {
        if let IndexCell::Reference {
            target_type,
            target_id,
            ..
        } = &row.cell
            && target_type == TARGET_TYPE
        {
            let unsafe_text = |text: &str| text.contains([FIELD, RECORD]);
            if unsafe_text(&row.param) || unsafe_text(target_id) {
                return None;
            }
            pairs.push((row.param.as_str(), target_id.as_str()));
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    let mut encoded = String::new();
    for (param, id) in pairs {
        if !encoded.is_empty() {
            encoded.push(RECORD);
        }
        encoded.push_str(param);
        encoded.push(FIELD);
        encoded.push_str(id);
    }
    Some(encoded)
}

/// The ids of the patients that `encoded` references through any of `params`, sorted and
/// deduplicated (what `Tx::referenced_through` answers); `None` when `encoded` is not what
/// [`encode`] writes, so that the caller asks the index rather than trust it. Empty ids
/// are left out, as the index query leaves them out.
pub fn decode(encoded: &str, params: &[String]) -> Option<Vec<String>> {
    if encoded.is_empty() {
        return Some(Vec::new());
    }
    let mut found = std::collections::BTreeSet::new();
    for line in encoded.split(RECORD) {
        let (param, id) = line.split_once(FIELD)?;
        if id.contains(FIELD) {
            return None;
        }
        if !id.is_empty() && params.iter().any(|p| p == param) {
            found.insert(id);
        }
    }
    Some(found.into_iter().map(str::to_owned).collect())
}

/// The references of a few resources before migration 12, shared by both backends'
/// migration tests: what the migration must turn into the column [`encode`] writes.
#[cfg(test)]
pub(crate) mod migration_fixture {
    use crate::search::{IndexCell, IndexRow};

    /// (param, target type, target id) of one reference row.
    pub type Reference = (&'static str, &'static str, &'static str);

    /// Observations by id, with their reference rows.
    pub const OBSERVATIONS: &[(&str, &[Reference])] = &[
        (
            "o1",
            &[
                ("subject", "Patient", "p2"),
                ("performer", "Practitioner", "d1"),
                ("performer", "Patient", "p1"),
                ("patient", "Patient", "p2"),
                ("subject", "Patient", "p2"),
            ],
        ),
        ("o2", &[("performer", "Practitioner", "d1")]),
        ("o3", &[]),
        ("o4", &[("subject", "Patient", "p\t9")]),
        (
            "o5",
            &[("subject", "Patient", "p1"), ("subject", "Patient", "p\n9")],
        ),
    ];

    /// The index rows the store would have been given for `references`.
    pub fn index_rows(references: &[Reference]) -> Vec<IndexRow> {
        references
            .iter()
            .map(|(param, target_type, target)| IndexRow {
                param: (*param).to_owned(),
                group: 0,
                cell: IndexCell::Reference {
                    target_type: (*target_type).to_owned(),
                    target_id: (*target).to_owned(),
                    url: String::new(),
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(param: &str, target_type: &str, id: &str) -> IndexRow {
        IndexRow {
            param: param.to_owned(),
            group: 0,
            cell: IndexCell::Reference {
                target_type: target_type.to_owned(),
                target_id: id.to_owned(),
                url: format!("{target_type}/{id}"),
            },
        }
    }

    fn params(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn only_patient_references_are_kept_and_asked_by_parameter() {
        let rows = [
            reference("subject", "Patient", "p2"),
            reference("performer", "Practitioner", "d1"),
            reference("patient", "Patient", "p2"),
            reference("performer", "Patient", "p1"),
            reference("subject", "Patient", "p2"),
        ];
        let encoded = encode(&rows).unwrap();
        assert_eq!(encoded, "patient\tp2\nperformer\tp1\nsubject\tp2");
        assert_eq!(
            decode(&encoded, &params(&["subject", "performer"])).unwrap(),
            ["p1", "p2"]
        );
        assert_eq!(decode(&encoded, &params(&["patient"])).unwrap(), ["p2"]);
        assert!(
            decode(&encoded, &params(&["encounter"]))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn no_patient_reference_is_known_and_empty() {
        let rows = [reference("performer", "Practitioner", "d1")];
        assert_eq!(encode(&rows).as_deref(), Some(""));
        assert_eq!(decode("", &params(&["subject"])), Some(Vec::new()));
    }

    #[test]
    fn what_cannot_be_encoded_or_decoded_sends_the_caller_to_the_index() {
        assert_eq!(encode(&[reference("subject", "Patient", "p\t1")]), None);
        assert_eq!(encode(&[reference("subject", "Patient", "p\n1")]), None);
        assert_eq!(encode(&[reference("sub\tject", "Patient", "p1")]), None);
        assert_eq!(decode("subject", &params(&["subject"])), None);
        assert_eq!(decode("subject\tp1\tp2", &params(&["subject"])), None);
    }

    proptest! {
        /// Whatever the column holds answers exactly what the index rows would.
        #[test]
        fn decoding_answers_what_the_rows_say(
            rows in proptest::collection::vec(
                ("[a-c\t]{1,3}", prop_oneof![Just("Patient"), Just("Group"), Just("")], "[p-r\n\t]{0,3}"),
                0..8,
            ),
            asked in proptest::collection::vec("[a-c]{1,3}", 0..4),
        ) {
            let rows: Vec<IndexRow> = rows
                .iter()
                .map(|(param, target_type, id)| reference(param, target_type, id))
                .collect();
            let expected: std::collections::BTreeSet<&str> = rows
                .iter()
                .filter_map(|row| match &row.cell {
                    IndexCell::Reference { target_type, target_id, .. }
                        if target_type == TARGET_TYPE
                            && !target_id.is_empty()
                            && asked.contains(&row.param) => Some(target_id.as_str()),
                    _ => None,
                })
                .collect();
            let separators = rows.iter().any(|row| match &row.cell {
                IndexCell::Reference { target_type, target_id, .. } => target_type == TARGET_TYPE
                    && (row.param.contains(['\t', '\n']) || target_id.contains(['\t', '\n'])),
                _ => false,
            });
            match encode(&rows) {
                None => prop_assert!(separators),
                Some(encoded) => {
                    prop_assert!(!separators);
                    let decoded = decode(&encoded, &asked).unwrap();
                    let expected: Vec<&str> = expected.into_iter().collect();
                    prop_assert_eq!(decoded, expected);
                }
            }
        }
    }
}
