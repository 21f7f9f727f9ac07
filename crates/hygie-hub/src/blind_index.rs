//! Search on encrypted identifying data: the index rows of the elements that identify a
//! person (names, addresses, identifiers, telecom, birth date of Patient, RelatedPerson,
//! Person and Practitioner; addresses of every type) are stored as keyed hashes (`hygie_vault::blind::term`, HMAC
//! under the key file's index key), and searches on them are turned into searches for
//! the same hashes. Whoever reads the database sees which rows are equal, never what
//! they say; without the key file they cannot test a guess either.
//!
//! - Strings: a term per prefix (`starts with`, the default search) of the normalized
//!   value's first [`blind::MAX_BLIND_CHARS`] characters, and one of the original text on
//!   every row (`:exact`); names also a term per other substring of at least
//!   [`MIN_CONTAINS_CHARS`] characters (`:contains`, 3 to 32 characters; not on
//!   addresses, whose lines would make hundreds of rows). A search longer than 32
//!   characters matches on its first ones (a superset).
//! - Identifiers: a row of the token table whose code is hashed and whose system stays in
//!   clear (it says what kind of identifier, not whose), so that `system|value`, `value`
//!   and `system|` searches keep their meaning, each one B-tree seek (a feed looks every
//!   patient and doctor up by identifier).
//! - Other tokens (`identifier:of-type`, telecom, phone, email): a term of the value, one
//!   of the system and value, one of the system, for the same searches.
//! - Birth dates: keyed buckets of the day, month and year of each date, by its
//!   precision; a date search of any prefix is expanded into the buckets of every date
//!   that passes it (the same range semantics as the clear index), between
//!   [`FIRST_OPEN_YEAR`] and next year for open ranges: terms too.
//!
//! Terms (names, addresses, other tokens, birth dates, and a presence term per parameter
//! for `:missing`) go to the resource's one entry of the inverted index (`search_term`),
//! not to rows: a keyed hash lands on a scattered page of a B-tree, and as rows a new
//! patient's `identifier:of-type`, telecom, phone and birth-date buckets were six rows
//! on six pages per admission (the token lookup index wrote a third of an HL7 feed's
//! WAL frames, measured: 56 of 165 per commit, 25 after).
//!
//! Sorting by one of these elements cannot use the index: such a search is sorted in
//! memory, over at most [`MAX_SORTED_IN_MEMORY`] matches.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use hygie_store::{
    BlindTerm, Filter, IndexCell, IndexRow, IndexTable, RangeOp, SearchHit, SearchSpec, SortBy,
    SortValue, StoreError, StoreResult, Test, VersionRecord,
};
use hygie_vault::{Keyring, Secret, blind};

/// `:contains` on a blind string needs at least this many characters (shorter ones
/// would match nearly everything, and would need more terms per value).
pub const MIN_CONTAINS_CHARS: usize = 3;
/// Open date ranges (`lt1980`) reach back to this year.
pub const FIRST_OPEN_YEAR: i32 = 1850;
/// A search sorted by a blind element is sorted in memory over at most this many matches.
pub const MAX_SORTED_IN_MEMORY: usize = 10_000;

/// A term namespace nothing is stored under: what a date search that no date can pass
/// looks for.
const NO_TERM: &str = "none";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blind {
    /// A person's name: prefixes, substrings (`:contains`) and the exact text.
    Name,
    /// An address part: prefixes and the exact text. No `:contains`: an address line's
    /// substrings are hundreds of rows per value.
    Address,
    /// An identifier: a row of the token table, its code a keyed hash and its system in
    /// clear, because a feed looks people up by it (a patient by PID-3, a doctor by
    /// PV1-7) for every message: one B-tree seek, where a term is one seek per segment of
    /// the term index (measured: three times the writer's time in conditional searches).
    Identifier,
    /// Another token (`identifier:of-type`, telecom, phone, email): terms of the value, of
    /// the system and value, and of the system.
    Token,
    /// A birth date: terms of its buckets.
    Date,
}

/// Whether `param` of `resource_type` is indexed blind, and how. Addresses are blind on
/// every type: an organization's or a location's address is no secret, but it is often
/// the patients' own city and postcode, which the index should not spell out either.
pub(crate) fn blind_kind(resource_type: &str, param: &str) -> Option<Blind> {
    if matches!(
        param,
        "address" | "address-city" | "address-country" | "address-postalcode" | "address-state"
    ) {
        return Some(Blind::Address);
    }
    if !matches!(
        resource_type,
        "Patient" | "RelatedPerson" | "Person" | "Practitioner"
    ) {
        return None;
    }
    match param {
        "name" | "family" | "given" => Some(Blind::Name),
        "phonetic" => Some(Blind::Address),
        "identifier" => Some(Blind::Identifier),
        "identifier:of-type" | "telecom" | "phone" | "email" => Some(Blind::Token),
        "birthdate" => Some(Blind::Date),
        _ => None,
    }
}

fn term(key: &Secret, resource_type: &str, param: &str, kind: &str, value: &str) -> String {
    blind::term(key, &format!("{resource_type}.{param}/{kind}"), value)
}

/// A term of the inverted index: the MAC alone, the namespace being in it.
fn term_mac(key: &Secret, resource_type: &str, param: &str, kind: &str, value: &str) -> BlindTerm {
    namespace_mac(key, resource_type, param, kind).term_mac(value)
}

/// Namespaces whose keyed MAC state a thread keeps (more: it starts over).
const MAX_CACHED_NAMESPACES: usize = 4_096;

/// The keyed MAC states of the namespaces (`Type.param/kind`) a thread has blinded under
/// one index key, and their presence terms. Keying HMAC-SHA256 and absorbing the
/// namespace cost as much as a term; a new patient's blinding made that state afresh
/// for each of its dozen namespaces and computed each presence term in full: a fifth of
/// the blinding's instructions, for values that depend on the key and the namespace
/// only. Kept per thread (no lock); compared with the key's bytes, not its address, so a
/// reloaded keyring never meets another key's states.
#[derive(Default)]
struct NamespaceCache {
    key: Option<Secret>,
    macs: HashMap<String, blind::NamespaceMac>,
    presence: HashMap<String, BlindTerm>,
}

thread_local! {
    static NAMESPACES: RefCell<NamespaceCache> = RefCell::new(NamespaceCache::default());
}

impl NamespaceCache {
    /// The cache, emptied first if it was filled under another key or is full.
    fn under(&mut self, key: &Secret) -> &mut NamespaceCache {
        let same_key = self
            .key
            .as_ref()
            .is_some_and(|kept| kept.as_bytes() == key.as_bytes());
        if !same_key || self.macs.len() + self.presence.len() >= MAX_CACHED_NAMESPACES {
            *self = NamespaceCache {
                key: Some(key.clone()),
                ..NamespaceCache::default()
            };
        }
        self
    }
}

/// [`term_mac`] for the many values of one parameter and kind (a name's prefixes).
fn namespace_mac(
    key: &Secret,
    resource_type: &str,
    param: &str,
    kind: &str,
) -> blind::NamespaceMac {
    let namespace = format!("{resource_type}.{param}/{kind}");
    NAMESPACES.with(|cache| {
        cache
            .borrow_mut()
            .under(key)
            .macs
            .entry(namespace)
            .or_insert_with_key(|namespace| blind::NamespaceMac::new(key, namespace))
            .clone()
    })
}

/// The term every value of a blind string parameter has: what `:missing` looks for.
fn presence_term(key: &Secret, resource_type: &str, param: &str) -> BlindTerm {
    let namespace = format!("{resource_type}.{param}/m");
    let cached = NAMESPACES.with(|cache| {
        cache
            .borrow_mut()
            .under(key)
            .presence
            .get(&namespace)
            .copied()
    });
    if let Some(term) = cached {
        return term;
    }
    let term = term_mac(key, resource_type, param, "m", "");
    NAMESPACES.with(|cache| {
        cache
            .borrow_mut()
            .under(key)
            .presence
            .insert(namespace, term)
    });
    term
}

/// What a `system|code` term is the MAC of: the system (empty for none) and the code,
/// spelled so that no other pair gives the same text (a system is free text, so its
/// length comes first).
fn system_and_code(system: &str, code: &str) -> String {
    format!("{}:{system}|{code}", system.len())
}

/// The first `max` characters of `text`.
fn first_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// The rows to store for a resource's `rows`: blind where [`blind_kind`] says so. The
/// blind cells of a row prepared for the unit of work running on this thread
/// ([`PreparedBlinding`]) are taken from there rather than computed.
pub(crate) fn blind_rows(key: &Secret, resource_type: &str, rows: &[IndexRow]) -> Vec<IndexRow> {
    let mut out = Vec::with_capacity(rows.len() * 8);
    for row in rows {
        let Some(kind) = blind_kind(resource_type, &row.param) else {
            out.push(row.clone());
            continue;
        };
        let cells = PREPARED
            .with(|prepared| {
                prepared
                    .borrow_mut()
                    .as_mut()
                    .and_then(|prepared| prepared.take(key, resource_type, row))
            })
            .unwrap_or_else(|| blind_cells(key, resource_type, kind, row));
        out.extend(cells.into_iter().map(|cell| IndexRow {
            param: row.param.clone(),
            group: row.group,
            cell,
        }));
    }
    out
}

/// What a row of a blind parameter (`kind`) is stored as.
fn blind_cells(key: &Secret, resource_type: &str, kind: Blind, row: &IndexRow) -> Vec<IndexCell> {
    let param = row.param.as_str();
    match (kind, &row.cell) {
        (Blind::Name | Blind::Address, IndexCell::String { normalized, exact }) => {
            let mut terms = BTreeSet::new();
            terms.insert(presence_term(key, resource_type, param));
            terms.insert(term_mac(key, resource_type, param, "e", exact));
            let value = first_chars(normalized, blind::MAX_BLIND_CHARS);
            let prefix_mac = namespace_mac(key, resource_type, param, "p");
            for prefix in blind::prefixes(value) {
                terms.insert(prefix_mac.term_mac(prefix));
            }
            if kind == Blind::Name {
                // Substrings that are not prefixes: a `:contains` looks for both kinds.
                let mut start = value.char_indices().skip(1).map(|(at, _)| at);
                if let Some(second) = start.next() {
                    let substring_mac = namespace_mac(key, resource_type, param, "s");
                    for part in blind::substrings(&value[second..], MIN_CONTAINS_CHARS) {
                        terms.insert(substring_mac.term_mac(part));
                    }
                }
            }
            terms.into_iter().map(IndexCell::Term).collect()
        }
        (Blind::Identifier, IndexCell::Token { system, code }) => vec![IndexCell::Token {
            system: system.clone(),
            code: term(key, resource_type, param, "t", code),
        }],
        (Blind::Token, IndexCell::Token { system, code }) => [
            presence_term(key, resource_type, param),
            term_mac(key, resource_type, param, "t", code),
            term_mac(
                key,
                resource_type,
                param,
                "ts",
                &system_and_code(system, code),
            ),
            term_mac(key, resource_type, param, "sy", system),
        ]
        .into_iter()
        .map(IndexCell::Term)
        .collect(),
        (Blind::Date, IndexCell::Date { low, high }) => {
            std::iter::once(presence_term(key, resource_type, param))
                .chain(
                    stored_date_buckets(*low, *high)
                        .iter()
                        .map(|bucket| term_mac(key, resource_type, param, "d", bucket)),
                )
                .map(IndexCell::Term)
                .collect()
        }
        // A value of another shape than the parameter's kind: kept out of the index
        // rather than stored in clear.
        _ => Vec::new(),
    }
}

/// Blind cells computed before a unit of work, off the store's writer thread, for the
/// unit to take instead of computing them there: a new patient's names are a few hundred
/// HMACs (every prefix and substring), about a tenth of the writer's time in an HL7
/// ingestion. Held only while the unit runs ([`Self::during`]), each taken once; made
/// under one keyring, used under that same keyring only.
pub(crate) struct PreparedBlinding {
    keyring: Arc<Keyring>,
    cells: HashMap<BlindSource, Vec<IndexCell>>,
}

/// A row of a blind parameter, as the key of its prepared cells.
#[derive(PartialEq, Eq, Hash)]
struct BlindSource {
    resource_type: String,
    param: String,
    value: SourceValue,
}

#[derive(PartialEq, Eq, Hash)]
enum SourceValue {
    String { normalized: String, exact: String },
    Token { system: String, code: String },
    Date { low: i64, high: i64 },
}

impl BlindSource {
    fn of(resource_type: &str, row: &IndexRow) -> Option<BlindSource> {
        let value = match &row.cell {
            IndexCell::String { normalized, exact } => SourceValue::String {
                normalized: normalized.clone(),
                exact: exact.clone(),
            },
            IndexCell::Token { system, code } => SourceValue::Token {
                system: system.clone(),
                code: code.clone(),
            },
            IndexCell::Date { low, high } => SourceValue::Date {
                low: *low,
                high: *high,
            },
            _ => return None,
        };
        Some(BlindSource {
            resource_type: resource_type.to_owned(),
            param: row.param.clone(),
            value,
        })
    }
}

/// How many fingerprints [`RecentWrites`] keeps per generation (it keeps two).
pub const RECENT_WRITES_PER_GENERATION: usize = 65_536;

/// Fingerprints of the resources that transactions recently asked to write only if they
/// were absent (a conditional create) or changed (a feed's conditional update of what it
/// repeats), so that the next transaction carrying the same one skips its blinding. An HL7
/// feed repeats the patient, the attending doctor and the ward with every event: their
/// blinding (an HMAC per prefix and substring of a name: dozens for a short one, hundreds
/// for a long one) was a quarter of the listener's CPU per message (bench/mllp), for
/// records the store then found unchanged and did not write. Only a guess: an entry
/// skipped here that the store does write after all (the record changed or vanished
/// meanwhile) is blinded by the writer instead (`blind_rows`), as under a reloaded keyring. Two generations of [`RECENT_WRITES_PER_GENERATION`]
/// keyed 64-bit hashes (a few MiB at most): a fingerprint seen again moves to the young
/// one, the old one is dropped when the young one is full.
#[derive(Default)]
pub(crate) struct RecentWrites {
    /// Keyed per process: a sender cannot aim at another record's fingerprint.
    hasher: std::hash::RandomState,
    generations: std::sync::Mutex<[std::collections::HashSet<u64>; 2]>,
}

impl RecentWrites {
    /// Whether the same `resource` of `resource_type` was seen recently; remembers it.
    pub(crate) fn seen_before(&self, resource_type: &str, resource: &serde_json::Value) -> bool {
        use std::hash::{BuildHasher, Hasher};
        struct Feed<'h>(&'h mut std::hash::DefaultHasher);
        impl std::io::Write for Feed<'_> {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.write(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut hasher = self.hasher.build_hasher();
        hasher.write(resource_type.as_bytes());
        hasher.write_u8(0);
        if serde_json::to_writer(Feed(&mut hasher), resource).is_err() {
            return false;
        }
        let fingerprint = hasher.finish();
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let [young, old] = &mut *generations;
        if young.contains(&fingerprint) {
            return true;
        }
        let seen = old.remove(&fingerprint);
        if young.len() >= RECENT_WRITES_PER_GENERATION {
            *old = std::mem::take(young);
        }
        young.insert(fingerprint);
        seen
    }
}

thread_local! {
    /// The blinding prepared for the unit of work running on this thread, if any.
    static PREPARED: RefCell<Option<PreparedBlinding>> = const { RefCell::new(None) };
}

impl PreparedBlinding {
    /// How many rows' cells were computed.
    pub(crate) fn rows(&self) -> usize {
        self.cells.len()
    }

    /// Computes the blind cells of the rows of blind parameters among `resources`' rows
    /// (each a resource type and its index rows), under `keyring`.
    pub(crate) fn prepare<'r>(
        keyring: Arc<Keyring>,
        resources: impl IntoIterator<Item = (&'r str, &'r [IndexRow])>,
    ) -> PreparedBlinding {
        let mut cells = HashMap::new();
        for (resource_type, rows) in resources {
            for row in rows {
                let Some(kind) = blind_kind(resource_type, &row.param) else {
                    continue;
                };
                if let Some(source) = BlindSource::of(resource_type, row) {
                    cells.entry(source).or_insert_with(|| {
                        blind_cells(keyring.index_key(), resource_type, kind, row)
                    });
                }
            }
        }
        PreparedBlinding { keyring, cells }
    }

    /// Runs `unit` with these cells at hand for [`blind_rows`] on this thread; they are
    /// dropped when it returns or unwinds.
    pub(crate) fn during<T>(self, unit: impl FnOnce() -> T) -> T {
        struct Clear;
        impl Drop for Clear {
            fn drop(&mut self) {
                PREPARED.with(|prepared| prepared.borrow_mut().take());
            }
        }
        PREPARED.with(|prepared| *prepared.borrow_mut() = Some(self));
        let _clear = Clear;
        unit()
    }

    /// The prepared cells of `row`, if they were made under `key`.
    fn take(
        &mut self,
        key: &Secret,
        resource_type: &str,
        row: &IndexRow,
    ) -> Option<Vec<IndexCell>> {
        // The very key prepared with: a keyring reloaded since is another.
        if !std::ptr::eq(self.keyring.index_key(), key) {
            return None;
        }
        self.cells.remove(&BlindSource::of(resource_type, row)?)
    }
}

/// The filters to run for `filters` on `resource_type`, blind where the index is.
pub(crate) fn blind_filters(
    key: &Secret,
    resource_type: &str,
    filters: &[Filter],
) -> StoreResult<Vec<Filter>> {
    filters
        .iter()
        .map(|filter| blind_filter(key, resource_type, filter))
        .collect()
}

fn blind_filter(key: &Secret, resource_type: &str, filter: &Filter) -> StoreResult<Filter> {
    Ok(match filter {
        Filter::Match {
            param,
            tests,
            negate,
        } => match blind_kind(resource_type, param) {
            None => filter.clone(),
            Some(kind) => {
                let mut blind_tests = Vec::new();
                for test in tests {
                    blind_tests.extend(blind_test(key, resource_type, param, kind, test)?);
                }
                Filter::Match {
                    param: param.clone(),
                    tests: blind_tests,
                    negate: *negate,
                }
            }
        },
        Filter::Missing {
            param,
            table,
            missing,
        } => match blind_kind(resource_type, param) {
            Some(Blind::Name | Blind::Address | Blind::Token | Blind::Date) => Filter::Match {
                param: param.clone(),
                tests: vec![Test::Term(presence_term(key, resource_type, param))],
                negate: *missing,
            },
            Some(Blind::Identifier) | None => Filter::Missing {
                param: param.clone(),
                table: *table,
                missing: *missing,
            },
        },
        Filter::Chain {
            param,
            target_type,
            inner,
        } => Filter::Chain {
            param: param.clone(),
            target_type: target_type.clone(),
            inner: blind_filters(key, target_type, inner)?,
        },
        Filter::Has {
            source_type,
            param,
            inner,
        } => Filter::Has {
            source_type: source_type.clone(),
            param: param.clone(),
            inner: blind_filters(key, source_type, inner)?,
        },
        Filter::Ids(_)
        | Filter::LastUpdated(_)
        | Filter::Composite { .. }
        | Filter::Compartment { .. } => filter.clone(),
    })
}

fn unsupported(message: String) -> StoreError {
    StoreError::Unsupported(message)
}

fn blind_test(
    key: &Secret,
    resource_type: &str,
    param: &str,
    kind: Blind,
    test: &Test,
) -> StoreResult<Vec<Test>> {
    let max = blind::MAX_BLIND_CHARS;
    Ok(match (kind, test) {
        (Blind::Name | Blind::Address, Test::StringStartsWith(prefix)) => {
            // The empty prefix: every value (as the clear index's `>= ''`).
            let prefix = first_chars(prefix, max);
            vec![Test::Term(if prefix.is_empty() {
                presence_term(key, resource_type, param)
            } else {
                term_mac(key, resource_type, param, "p", prefix)
            })]
        }
        (Blind::Address, Test::StringContains(_)) => {
            return Err(unsupported(format!(
                "{param}:contains is not available on {resource_type}: addresses are encrypted and searched through keyed hashes of their beginnings (search {param}=… for what an address part starts with)"
            )));
        }
        (Blind::Name, Test::StringContains(part)) => {
            let chars = part.chars().count();
            if !(MIN_CONTAINS_CHARS..=max).contains(&chars) {
                return Err(unsupported(format!(
                    "{param}:contains needs {MIN_CONTAINS_CHARS} to {max} characters on {resource_type}: names, addresses and identifiers are encrypted, and searched through keyed hashes of their parts"
                )));
            }
            vec![
                Test::Term(term_mac(key, resource_type, param, "p", part)),
                Test::Term(term_mac(key, resource_type, param, "s", part)),
            ]
        }
        (Blind::Name | Blind::Address, Test::StringExact(value)) => {
            vec![Test::Term(term_mac(key, resource_type, param, "e", value))]
        }
        (Blind::Identifier, Test::Token { system, code }) => vec![Test::Token {
            system: system.clone(),
            code: code
                .as_ref()
                .map(|code| term(key, resource_type, param, "t", code)),
        }],
        (Blind::Token, Test::Token { system, code }) => vec![Test::Term(match (system, code) {
            (None, Some(code)) => term_mac(key, resource_type, param, "t", code),
            (Some(system), Some(code)) => term_mac(
                key,
                resource_type,
                param,
                "ts",
                &system_and_code(system, code),
            ),
            (Some(system), None) => term_mac(key, resource_type, param, "sy", system),
            (None, None) => presence_term(key, resource_type, param),
        })],
        (Blind::Date, Test::Date { op, low, high }) => {
            let buckets = searched_date_buckets(*op, *low, *high);
            if buckets.is_empty() {
                // A term of a namespace nothing is stored under: no date passes.
                vec![Test::Term(term_mac(key, resource_type, param, NO_TERM, ""))]
            } else {
                buckets
                    .iter()
                    .map(|bucket| Test::Term(term_mac(key, resource_type, param, "d", bucket)))
                    .collect()
            }
        }
        (_, other) => {
            return Err(unsupported(format!(
                "this kind of search ({other:?}) is not available on {resource_type}.{param}, which is encrypted"
            )));
        }
    })
}

// --- dates ---------------------------------------------------------------------------

const DAY_US: i64 = 86_400_000_000;

fn days_in_month(year: i32, month: u8) -> u8 {
    time::Month::try_from(month)
        .map(|m| m.length(year))
        .unwrap_or(31)
}

/// Microseconds of a day's midnight, UTC.
fn day_start_us(year: i32, month: u8, day: u8) -> Option<i64> {
    let month = time::Month::try_from(month).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp() * 1_000_000)
}

/// The civil date (UTC) of an instant.
fn civil(us: i64) -> Option<time::Date> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .ok()
        .map(|t| t.date())
}

/// The buckets a stored date range goes in, by its precision: a day (`D:`, with its
/// month `DM:` and year `DY:`), a month (`M:`, `MY:`), a year (`Y:`). Anything else (an
/// instant, a period) is filed under the day it starts on.
pub(crate) fn stored_date_buckets(low: i64, high: i64) -> Vec<String> {
    let (Some(first), Some(last)) = (civil(low), civil(high)) else {
        return Vec::new();
    };
    let (year, month, day) = (first.year(), first.month() as u8, first.day());
    let starts_a_day = day_start_us(year, month, day) == Some(low);
    let ends = |y: i32, m: u8, d: u8| day_start_us(y, m, d).map(|start| start + DAY_US - 1);
    if starts_a_day && first == last && ends(year, month, day) == Some(high) {
        return day_buckets(year, month, day);
    }
    if starts_a_day && day == 1 && ends(year, month, days_in_month(year, month)) == Some(high) {
        return vec![format!("M:{year:04}-{month:02}"), format!("MY:{year:04}")];
    }
    if starts_a_day && day == 1 && month == 1 && ends(year, 12, 31) == Some(high) {
        return vec![format!("Y:{year:04}")];
    }
    day_buckets(year, month, day)
}

fn day_buckets(year: i32, month: u8, day: u8) -> Vec<String> {
    vec![
        format!("D:{year:04}-{month:02}-{day:02}"),
        format!("DM:{year:04}-{month:02}"),
        format!("DY:{year:04}"),
    ]
}

/// The range semantics of the clear index (`hygie_store` `range_test`): whether a stored
/// `[rl, rh]` passes `op` against the searched `[pl, ph]`.
fn passes(op: RangeOp, rl: i64, rh: i64, pl: i64, ph: i64) -> bool {
    let within = rl >= pl && rh <= ph;
    match op {
        RangeOp::Eq => within,
        RangeOp::Ne => !within,
        RangeOp::Gt => rh > ph,
        RangeOp::Lt => rl < pl,
        RangeOp::Ge => rh >= pl && (rh > ph || within),
        RangeOp::Le => rl <= ph && (rl < pl || within),
        RangeOp::Sa => rl > ph,
        RangeOp::Eb => rh < pl,
        RangeOp::Overlaps => rl <= ph && rh >= pl,
    }
}

/// Every bucket whose dates pass the search, the fewest: a whole month of passing days
/// is its `DM:` bucket, a whole year of them its `DY:` one (and so for months).
pub(crate) fn searched_date_buckets(op: RangeOp, low: i64, high: i64) -> Vec<String> {
    let this_year = time::OffsetDateTime::now_utc().year();
    let low_year = civil(low).map_or(FIRST_OPEN_YEAR, |d| d.year());
    let high_year = civil(high).map_or(this_year + 1, |d| d.year());
    let first = FIRST_OPEN_YEAR.min(low_year).max(1);
    let last = (this_year + 1).max(high_year).min(9999);
    let mut out = Vec::new();
    for year in first..=last {
        // Dates of day precision.
        let mut year_days = Vec::new();
        let mut whole_year_of_days = true;
        // Dates of month precision.
        let mut year_months = Vec::new();
        let mut whole_year_of_months = true;
        for month in 1..=12u8 {
            let Some(month_start) = day_start_us(year, month, 1) else {
                continue;
            };
            let length = days_in_month(year, month);
            let mut days = Vec::new();
            for day in 1..=length {
                let start = month_start + i64::from(day - 1) * DAY_US;
                if passes(op, start, start + DAY_US - 1, low, high) {
                    days.push(format!("D:{year:04}-{month:02}-{day:02}"));
                }
            }
            if days.len() == usize::from(length) {
                year_days.push(format!("DM:{year:04}-{month:02}"));
            } else {
                whole_year_of_days = false;
                year_days.extend(days);
            }
            let month_end = month_start + i64::from(length) * DAY_US - 1;
            if passes(op, month_start, month_end, low, high) {
                year_months.push(format!("M:{year:04}-{month:02}"));
            } else {
                whole_year_of_months = false;
            }
        }
        if whole_year_of_days {
            out.push(format!("DY:{year:04}"));
        } else {
            out.extend(year_days);
        }
        if whole_year_of_months {
            out.push(format!("MY:{year:04}"));
        } else {
            out.extend(year_months);
        }
        if let (Some(start), Some(end)) = (day_start_us(year, 1, 1), day_start_us(year, 12, 31))
            && passes(op, start, end + DAY_US - 1, low, high)
        {
            out.push(format!("Y:{year:04}"));
        }
    }
    out
}

// --- sorting in memory ---------------------------------------------------------------

/// Whether `spec` sorts by a blind element (and so cannot be sorted by the database).
pub(crate) fn sorts_blind(spec: &SearchSpec) -> bool {
    spec.sort.iter().any(|key| {
        matches!(key, SortBy::Param { param, .. } if blind_kind(&spec.resource_type, param).is_some())
    })
}

/// The sort values of one resource, as the store's SQL gives them: a parameter's lowest
/// value ascending (highest descending), a sentinel that sorts last when it has none.
fn sort_values(record: &VersionRecord, rows: &[IndexRow], sort: &[SortBy]) -> Vec<SortValue> {
    sort.iter()
        .map(|key| match key {
            SortBy::LastUpdated { .. } => SortValue::Int(record.last_updated_us),
            SortBy::Id { .. } => SortValue::Text(record.id.clone()),
            SortBy::Param {
                param,
                table,
                descending,
            } => {
                let values = rows
                    .iter()
                    .filter(|row| &row.param == param && row.cell.table() == *table)
                    .filter_map(|row| cell_sort_value(&row.cell, *descending));
                let chosen = if *descending {
                    values.max_by(compare_values)
                } else {
                    values.min_by(compare_values)
                };
                chosen.unwrap_or_else(|| sentinel(*table, *descending))
            }
        })
        .collect()
}

fn cell_sort_value(cell: &IndexCell, descending: bool) -> Option<SortValue> {
    Some(match cell {
        IndexCell::Token { code, .. } => SortValue::Text(code.clone()),
        IndexCell::String { normalized, .. } => SortValue::Text(
            hygie_store::truncate(normalized, hygie_store::MAX_INDEXED_STRING).to_owned(),
        ),
        IndexCell::Date { high, .. } if descending => SortValue::Int(*high),
        IndexCell::Date { low, .. } => SortValue::Int(*low),
        IndexCell::Number { value, .. } | IndexCell::Quantity { value, .. } => {
            SortValue::Real(*value)
        }
        IndexCell::Reference { url, .. } => SortValue::Text(url.clone()),
        IndexCell::Uri { value } => SortValue::Text(value.clone()),
        // Sorting reads the clear rows of the opened resource, which hold no terms.
        IndexCell::Term(_) => return None,
    })
}

fn sentinel(table: IndexTable, descending: bool) -> SortValue {
    match (table, descending) {
        (IndexTable::Date, false) => SortValue::Int(i64::MAX),
        (IndexTable::Date, true) => SortValue::Int(i64::MIN),
        (IndexTable::Number | IndexTable::Quantity, false) => SortValue::Real(f64::MAX),
        (IndexTable::Number | IndexTable::Quantity, true) => SortValue::Real(f64::MIN),
        (_, false) => SortValue::Text("\u{10FFFF}".to_owned()),
        (_, true) => SortValue::Text(String::new()),
    }
}

fn compare_values(a: &SortValue, b: &SortValue) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (SortValue::Int(a), SortValue::Int(b)) => a.cmp(b),
        (SortValue::Real(a), SortValue::Real(b)) => a.total_cmp(b),
        // Bytewise, as both databases compare (SQLite BINARY, PostgreSQL COLLATE "C").
        (SortValue::Text(a), SortValue::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
        _ => Ordering::Equal,
    }
}

/// One page of `candidates` (every current match, opened) in the order of `spec.sort`,
/// after `spec.position`, as the store's keyset paging would give it.
pub(crate) fn sort_in_memory(
    spec: &SearchSpec,
    candidates: Vec<VersionRecord>,
) -> StoreResult<Vec<SearchHit>> {
    let sort = hygie_store::full_sort(&spec.sort);
    let backwards = spec.position.as_ref().is_some_and(|p| p.backwards);
    let direction = |index: usize| sort[index].descending() != backwards;
    let order = |a: &[SortValue], b: &[SortValue]| {
        for (index, (x, y)) in a.iter().zip(b).enumerate() {
            let ordering = compare_values(x, y);
            let ordering = if direction(index) {
                ordering.reverse()
            } else {
                ordering
            };
            if ordering.is_ne() {
                return ordering;
            }
        }
        std::cmp::Ordering::Equal
    };
    let mut keyed = Vec::with_capacity(candidates.len());
    for record in candidates {
        let resource: serde_json::Value = serde_json::from_slice(&record.body)
            .map_err(|e| StoreError::Database(format!("stored body of {}: {e}", record.id)))?;
        let rows = crate::resource::index_rows(&resource);
        let values = sort_values(&record, &rows, &sort);
        keyed.push(SearchHit {
            id: record.id,
            sort_values: values,
        });
    }
    keyed.sort_by(|a, b| order(&a.sort_values, &b.sort_values));
    if let Some(position) = &spec.position {
        let after = &position.values;
        keyed.retain(|hit| {
            let shared = hit.sort_values.len().min(after.len());
            order(&hit.sort_values[..shared], &after[..shared]).is_gt()
        });
    }
    keyed.truncate(spec.limit);
    Ok(keyed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprints are bounded: two generations at most, the oldest forgotten; one
    /// seen again stays. Another resource, or the same under another type, is not seen.
    #[test]
    fn recent_writes_remember_a_bounded_number_of_resources() {
        let recent = RecentWrites::default();
        let doctor =
            |n: usize| serde_json::json!({"resourceType": "Practitioner", "id": n.to_string()});
        assert!(!recent.seen_before("Practitioner", &doctor(0)));
        assert!(recent.seen_before("Practitioner", &doctor(0)));
        assert!(
            !recent.seen_before("Patient", &doctor(0)),
            "the type is part of it"
        );
        assert!(!recent.seen_before("Practitioner", &doctor(1)));
        for n in 2..=RECENT_WRITES_PER_GENERATION * 2 {
            recent.seen_before("Practitioner", &doctor(n));
            if n % 1_000 == 0 {
                // Seen again now and then: kept in the young generation.
                assert!(recent.seen_before("Practitioner", &doctor(1)));
            }
        }
        let kept: usize = recent
            .generations
            .lock()
            .unwrap()
            .iter()
            .map(|g| g.len())
            .sum();
        assert!(
            kept <= 2 * RECENT_WRITES_PER_GENERATION,
            "{kept} fingerprints kept"
        );
        assert!(
            !recent.seen_before("Practitioner", &doctor(0)),
            "the oldest is forgotten"
        );
        assert!(
            recent.seen_before("Practitioner", &doctor(1)),
            "one seen again is kept"
        );
    }

    /// The kept namespace states give the very MACs computed from scratch, under the key
    /// asked for: switching keys (a reloaded keyring) on one thread starts over.
    #[test]
    fn kept_namespace_states_give_their_own_keys_terms() {
        let first = Secret::from_bytes([1; 32]);
        let second = Secret::from_bytes([2; 32]);
        for key in [&first, &second, &first, &second] {
            for value in ["d", "dup", "dupontel"] {
                assert_eq!(
                    term_mac(key, "Patient", "name", "p", value),
                    blind::term_mac(key, "Patient.name/p", value)
                );
            }
            assert_eq!(
                presence_term(key, "Patient", "family"),
                blind::term_mac(key, "Patient.family/m", "")
            );
        }
        assert_ne!(
            presence_term(&first, "Patient", "family"),
            presence_term(&second, "Patient", "family")
        );
    }

    fn us(date: &str) -> i64 {
        let date = time::Date::parse(
            date,
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .unwrap();
        date.midnight().assume_utc().unix_timestamp() * 1_000_000
    }

    /// Each stored precision, and the store's range test, against the buckets.
    fn stored(precision: &str, date: &str) -> (i64, i64) {
        let low = us(date);
        let high = match precision {
            "day" => low + DAY_US - 1,
            "month" => {
                let d = civil(low).unwrap();
                low + i64::from(days_in_month(d.year(), d.month() as u8)) * DAY_US - 1
            }
            _ => {
                let d = civil(low).unwrap();
                us(&format!("{:04}-12-31", d.year())) + DAY_US - 1
            }
        };
        (low, high)
    }

    /// For every operator and many searched ranges, a stored date's buckets meet the
    /// searched buckets exactly when the clear index's range test passes it.
    #[test]
    fn buckets_agree_with_the_range_semantics() {
        let ops = [
            RangeOp::Eq,
            RangeOp::Ne,
            RangeOp::Gt,
            RangeOp::Lt,
            RangeOp::Ge,
            RangeOp::Le,
            RangeOp::Sa,
            RangeOp::Eb,
            RangeOp::Overlaps,
        ];
        let values = [
            stored("day", "1987-02-20"),
            stored("day", "1987-02-28"),
            stored("day", "2000-01-01"),
            stored("day", "1979-12-31"),
            stored("month", "1987-02-01"),
            stored("month", "2015-06-01"),
            stored("year", "1987-01-01"),
            stored("year", "2015-01-01"),
            stored("day", "1860-07-14"),
        ];
        let searches = [
            stored("day", "1987-02-20"),
            stored("month", "1987-02-01"),
            stored("year", "1987-01-01"),
            stored("year", "1980-01-01"),
            stored("day", "2010-06-01"),
            stored("year", "2000-01-01"),
            stored("month", "2015-06-01"),
        ];
        for op in ops {
            for (pl, ph) in searches {
                let searched: BTreeSet<String> =
                    searched_date_buckets(op, pl, ph).into_iter().collect();
                for (rl, rh) in values {
                    let expected = passes(op, rl, rh, pl, ph);
                    let found = stored_date_buckets(rl, rh)
                        .iter()
                        .any(|bucket| searched.contains(bucket));
                    assert_eq!(
                        found, expected,
                        "{op:?} [{pl}, {ph}] against stored [{rl}, {rh}]"
                    );
                }
            }
        }
    }

    #[test]
    fn a_whole_year_of_days_is_one_bucket() {
        let (pl, ph) = stored("year", "1987-01-01");
        let buckets = searched_date_buckets(RangeOp::Eq, pl, ph);
        assert!(buckets.contains(&"DY:1987".to_owned()), "{buckets:?}");
        assert!(buckets.contains(&"MY:1987".to_owned()));
        assert!(buckets.contains(&"Y:1987".to_owned()));
        assert_eq!(buckets.len(), 3);
    }

    #[test]
    fn stored_precision_is_recognized() {
        let (l, h) = stored("day", "1987-02-20");
        assert_eq!(stored_date_buckets(l, h), day_buckets(1987, 2, 20));
        let (l, h) = stored("month", "1987-02-01");
        assert_eq!(stored_date_buckets(l, h), vec!["M:1987-02", "MY:1987"]);
        let (l, h) = stored("year", "1987-01-01");
        assert_eq!(stored_date_buckets(l, h), vec!["Y:1987"]);
        // An instant: the day it falls on.
        let noon = us("1987-02-20") + DAY_US / 2;
        assert_eq!(stored_date_buckets(noon, noon), day_buckets(1987, 2, 20));
    }

    /// Cells prepared before a unit are what the unit would have computed, are used only
    /// under the very key they were made with, once each, and only while the unit runs.
    #[test]
    fn prepared_cells_stand_in_for_computed_ones_under_their_own_key_only() {
        let rows = vec![
            IndexRow {
                param: "family".into(),
                group: 0,
                cell: IndexCell::String {
                    normalized: "everywoman".into(),
                    exact: "Everywoman".into(),
                },
            },
            IndexRow {
                param: "identifier".into(),
                group: 1,
                cell: IndexCell::Token {
                    system: "urn:oid:1.2.3".into(),
                    code: "12345".into(),
                },
            },
            IndexRow {
                param: "gender".into(),
                group: 0,
                cell: IndexCell::Token {
                    system: String::new(),
                    code: "female".into(),
                },
            },
        ];
        let keyring = Arc::new(Keyring::generate("test", 0));
        let key = keyring.index_key();
        let computed = blind_rows(key, "Patient", &rows);
        assert!(
            computed.len() > 10,
            "a name is many terms: {}",
            computed.len()
        );
        let prepared = PreparedBlinding::prepare(keyring.clone(), [("Patient", rows.as_slice())]);
        assert_eq!(prepared.cells.len(), 2, "the blind rows only, not gender");
        let (first, second) = prepared.during(|| {
            (
                blind_rows(key, "Patient", &rows),
                PREPARED.with(|p| p.borrow().as_ref().map(|p| p.cells.len())),
            )
        });
        assert_eq!(first, computed);
        assert_eq!(second, Some(0), "each prepared cell is taken once");
        assert!(
            PREPARED.with(|p| p.borrow().is_none()),
            "nothing is left once the unit returned"
        );
        // Prepared under another keyring (a key file reloaded, another installation):
        // ignored, the cells are computed under the key in use.
        let other = Arc::new(Keyring::generate("other", 0));
        let foreign = PreparedBlinding::prepare(other.clone(), [("Patient", rows.as_slice())]);
        let under_ours = foreign.during(|| blind_rows(key, "Patient", &rows));
        assert_eq!(under_ours, computed);
        assert_ne!(blind_rows(other.index_key(), "Patient", &rows), computed);
        // Gone after a panic too.
        let prepared = PreparedBlinding::prepare(keyring.clone(), [("Patient", rows.as_slice())]);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            prepared.during(|| panic!("the unit fails"))
        }));
        assert!(unwound.is_err());
        assert!(PREPARED.with(|p| p.borrow().is_none()));
    }

    /// The terms among `rows`.
    fn stored_terms(rows: &[IndexRow]) -> BTreeSet<BlindTerm> {
        rows.iter()
            .filter_map(|row| match &row.cell {
                IndexCell::Term(term) => Some(*term),
                _ => None,
            })
            .collect()
    }

    /// Telecom values and birth dates are terms, each search meaning what it meant on rows;
    /// identifiers stay rows of the token table (one seek for a feed's lookups).
    #[test]
    fn contact_tokens_and_birth_dates_are_terms_that_keep_their_search_meaning() {
        let key = Secret::from_bytes([5; 32]);
        let resource = serde_json::json!({
            "resourceType": "Patient", "id": "p",
            "birthDate": "1987-02-20",
            "telecom": [{"system": "phone", "value": "+33612345678"}],
            "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-1"}]
        });
        let rows = blind_rows(&key, "Patient", &crate::resource::index_rows(&resource));
        let stored = stored_terms(&rows);
        for param in ["telecom", "phone", "birthdate"] {
            let of_param: Vec<&IndexRow> = rows.iter().filter(|r| r.param == param).collect();
            assert!(!of_param.is_empty(), "{param}");
            assert!(
                of_param
                    .iter()
                    .all(|r| matches!(r.cell, IndexCell::Term(_))),
                "{param} is terms only"
            );
        }
        let identifier: Vec<&IndexRow> = rows.iter().filter(|r| r.param == "identifier").collect();
        assert!(
            matches!(&identifier[..], [IndexRow { cell: IndexCell::Token { system, code }, .. }]
                if system == "urn:oid:1.2.3" && code != "MRN-1"),
            "{identifier:?}"
        );
        let finds = |param: &str, kind: Blind, test: Test| {
            let tests = blind_test(&key, "Patient", param, kind, &test).unwrap();
            assert!(
                tests.iter().all(|t| matches!(t, Test::Term(_))),
                "{tests:?}"
            );
            tests
                .iter()
                .any(|test| matches!(test, Test::Term(t) if stored.contains(t)))
        };
        let token = |system: Option<&str>, code: Option<&str>| Test::Token {
            system: system.map(str::to_owned),
            code: code.map(str::to_owned),
        };
        let phone = "+33612345678";
        assert!(finds("telecom", Blind::Token, token(None, Some(phone))));
        assert!(finds("telecom", Blind::Token, token(Some(""), Some(phone))));
        assert!(finds("telecom", Blind::Token, token(Some(""), None)));
        assert!(finds("phone", Blind::Token, token(None, Some(phone))));
        assert!(!finds(
            "telecom",
            Blind::Token,
            token(None, Some("+33612345679"))
        ));
        assert!(!finds(
            "telecom",
            Blind::Token,
            token(Some("x"), Some(phone))
        ));
        assert!(!finds("telecom", Blind::Token, token(Some("x"), None)));
        assert!(
            !finds("email", Blind::Token, token(None, Some(phone))),
            "namespaced"
        );
        let date = |op: RangeOp, from: &str, to: &str| Test::Date {
            op,
            low: us(from),
            high: us(to) + DAY_US - 1,
        };
        let day = |d: &str| date(RangeOp::Eq, d, d);
        assert!(finds("birthdate", Blind::Date, day("1987-02-20")));
        assert!(!finds("birthdate", Blind::Date, day("1987-02-21")));
        assert!(finds(
            "birthdate",
            Blind::Date,
            date(RangeOp::Eq, "1987-01-01", "1987-12-31")
        ));
        assert!(finds(
            "birthdate",
            Blind::Date,
            date(RangeOp::Ge, "1987-02-01", "1987-02-28")
        ));
        assert!(!finds(
            "birthdate",
            Blind::Date,
            date(RangeOp::Lt, "1980-01-01", "1980-12-31")
        ));
        // Before the first open year no date passes: a term nothing is stored under.
        assert!(!finds(
            "birthdate",
            Blind::Date,
            date(RangeOp::Lt, "1700-01-01", "1700-12-31")
        ));
        for param in ["telecom", "birthdate"] {
            let present = blind_filter(
                &key,
                "Patient",
                &Filter::Missing {
                    param: param.into(),
                    table: IndexTable::Token,
                    missing: true,
                },
            )
            .unwrap();
            assert!(
                matches!(&present, Filter::Match { tests, negate: true, .. }
                    if matches!(&tests[..], [Test::Term(t)] if stored.contains(t))),
                "{param}: {present:?}"
            );
        }
    }

    /// `:contains` finds a part anywhere in a name (its start included), and is refused
    /// on addresses, which index only their beginnings.
    #[test]
    fn contains_finds_a_name_part_anywhere() {
        let key = Secret::from_bytes([9; 32]);
        let rows = blind_rows(
            &key,
            "Patient",
            &[IndexRow {
                param: "family".into(),
                group: 0,
                cell: IndexCell::String {
                    normalized: "everywoman".into(),
                    exact: "Everywoman".into(),
                },
            }],
        );
        let stored = stored_terms(&rows);
        assert_eq!(stored.len(), rows.len(), "only terms, each once");
        // Whether a search of `test` on `family` finds the stored terms.
        let found = |test: Test| {
            blind_test(&key, "Patient", "family", Blind::Name, &test)
                .unwrap()
                .iter()
                .any(|test| matches!(test, Test::Term(t) if stored.contains(t)))
        };
        let finds = |part: &str| found(Test::StringContains(part.into()));
        for part in ["eve", "every", "woma", "man", "everywoman", "ywo"] {
            assert!(finds(part), "{part}");
        }
        for part in ["womb", "mane", "xyz"] {
            assert!(!finds(part), "{part}");
        }
        // Fewer terms than every substring twice: prefixes once, other substrings once, the
        // exact text and the presence term.
        assert_eq!(rows.len(), 2 + 10 + (1..=7).sum::<usize>());
        // `:exact` and `:missing` find it too; another case does not.
        let exact = |text: &str| found(Test::StringExact(text.into()));
        assert!(exact("Everywoman"));
        assert!(!exact("everywoman"));
        let missing = blind_filter(
            &key,
            "Patient",
            &Filter::Missing {
                param: "family".into(),
                table: IndexTable::String,
                missing: false,
            },
        )
        .unwrap();
        assert!(
            matches!(&missing, Filter::Match { tests, negate: false, .. } if matches!(&tests[..], [Test::Term(t)] if stored.contains(t))),
            "{missing:?}"
        );
        let address = blind_test(
            &key,
            "Patient",
            "address-city",
            Blind::Address,
            &Test::StringContains("ill".into()),
        );
        assert!(matches!(address, Err(StoreError::Unsupported(_))));
    }

    #[test]
    fn rows_of_identifying_elements_hold_no_clear_text() {
        let key = Secret::from_bytes([7; 32]);
        let resource = serde_json::json!({
            "resourceType": "Patient", "id": "p",
            "name": [{"family": "Lefèvre", "given": ["Zoé"]}],
            "birthDate": "1987-02-20",
            "telecom": [{"system": "phone", "value": "+33612345678"}],
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "1870299123456"}],
            "address": [{"line": ["12 rue des Lilas"], "city": "Lille", "postalCode": "59000"}],
            "gender": "female"
        });
        let rows = crate::resource::index_rows(&resource);
        let blind = blind_rows(&key, "Patient", &rows);
        let text = format!("{blind:?}").to_lowercase();
        for secret in [
            "lefevre",
            "lefèvre",
            "zoe",
            "zoé",
            "1987",
            "33612345678",
            "1870299123456",
            "lilas",
            "lille",
            "59000",
        ] {
            assert!(!text.contains(secret), "{secret} is in the blind rows");
        }
        // What is not identifying stays searchable in clear.
        assert!(text.contains("female"));
        // Every blind parameter still has rows (so :missing keeps its meaning).
        for param in [
            "family",
            "given",
            "birthdate",
            "phone",
            "identifier",
            "address-city",
        ] {
            assert!(blind.iter().any(|row| row.param == param), "{param}");
        }
    }
}
