//! SMART App Launch 2.x scopes: the language of a token's `scope` claim, parsed and evaluated.
//!
//! A scope string is space-separated tokens (RFC 6749 §3.3). [`ScopeSet::parse`] reads each
//! token into a [`Scope`]:
//!
//! - a **clinical** scope `<context>/<resource>.<permissions>[?<query>]`
//!   ([`ClinicalScope`]): context `patient`, `user` or `system`; resource an R4 resource type
//!   or `*`; permissions a non-empty subset of `cruds` written in that order (v2), or the v1
//!   forms `read` (= `rs`), `write` (= `cud`) and `*` (= `cruds`); an optional query of
//!   `param=value` pairs joined by `&` narrows what the scope grants (a *granular* scope,
//!   e.g. `patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory`);
//! - one of the **other** scopes SMART defines ([`OtherScope`]: `openid`, `fhirUser`,
//!   `profile`, `launch`, `launch/patient`, `launch/encounter`, `offline_access`,
//!   `online_access`), kept for whoever needs them; they grant no data;
//! - anything else is **unrecognised** (kept verbatim, grants nothing), or **invalid** when
//!   it claims a SMART clinical context but breaks the grammar (`patient/Observation.sr`),
//!   kept with the reason so that the caller can log it; it grants nothing either.
//!
//! A malformed token never fails the whole string: the other tokens still count. Only a
//! string beyond the limits ([`MAX_SCOPE_STRING_BYTES`], [`MAX_SCOPES`]) is refused.
//!
//! [`ScopeSet::grants`] answers one question: does this set allow `permission` on
//! `resource_type` in `context`? The answer is a [`Grant`]: denied, allowed, or allowed
//! only for resources matching one of a list of query constraints. How a scope's context
//! combines with the principal (a `patient/` scope limited to the patient in context, a
//! `user/` scope to what the user may see) is the policy's business, not this module's.
//!
//! ```
//! use hygie_policy::scopes::{Grant, Permission, ScopeContext, ScopeSet};
//! let is_type = |t: &str| ["Observation", "Patient"].contains(&t);
//! let scopes = ScopeSet::parse(
//!     "openid fhirUser patient/Patient.read patient/Observation.rs?category=laboratory",
//!     is_type,
//! )
//! .unwrap();
//! assert_eq!(scopes.grants(ScopeContext::Patient, "Patient", Permission::Search), Grant::Allowed);
//! assert_eq!(scopes.grants(ScopeContext::Patient, "Patient", Permission::Create), Grant::Denied);
//! let Grant::Constrained(constraints) =
//!     scopes.grants(ScopeContext::Patient, "Observation", Permission::Read)
//! else {
//!     panic!("a granular scope grants under its constraint only")
//! };
//! assert_eq!(constraints[0].params(), [("category".to_owned(), "laboratory".to_owned())]);
//! // Printed back in canonical v2 form:
//! assert_eq!(scopes.to_string(), "openid fhirUser patient/Patient.rs patient/Observation.rs?category=laboratory");
//! ```
//!
//! Resource types are checked at parse time against a predicate the caller supplies
//! (`hygie_fhir::schema::is_resource_type` in the hub), so that this crate stays free of the
//! FHIR definitions; a scope naming anything else is invalid. See [`ScopeSet::grants`] for
//! what the caller must check on its side.

use std::fmt;

/// The longest scope string [`ScopeSet::parse`] reads, in bytes. A scope string travels in
/// an access token, that is in an HTTP header, which common servers cap at 8 KiB for all
/// headers together (SMART, "Scope size over the wire"); 4 KiB holds some forty granular
/// scopes of the specification's longest example.
pub const MAX_SCOPE_STRING_BYTES: usize = 4096;

/// The most scope tokens [`ScopeSet::parse`] reads (empty tokens between two spaces aside):
/// far above what a real token carries, low enough that evaluating every scope on every
/// decision stays cheap.
pub const MAX_SCOPES: usize = 100;

/// The most `param=value` pairs in the query of one granular scope. Granular scopes narrow
/// by one or two parameters (a category, a code); a longer list is a mistake or an attack.
pub const MAX_CONSTRAINTS_PER_SCOPE: usize = 10;

/// The longest name accepted as a resource type (the longest R4 type has 33 letters).
const MAX_RESOURCE_TYPE_BYTES: usize = 64;

/// Search result parameters: they shape a result (page, sort, includes, elements) but
/// filter nothing, so a scope "narrowed" by one would be as broad as without it, or broader
/// (`_include`). A scope query holding one is invalid.
const RESULT_PARAMETERS: [&str; 12] = [
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_summary",
    "_elements",
    "_total",
    "_contained",
    "_containedType",
    "_page",
    "_format",
    "_pretty",
];

/// The context of a clinical scope: whose data it is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeContext {
    /// `patient/`: data about the patient in context (the launch's `patient`).
    Patient,
    /// `user/`: data the authorizing user may access.
    User,
    /// `system/`: data the client itself is authorized for (backend services).
    System,
}

impl ScopeContext {
    pub const ALL: [ScopeContext; 3] = [
        ScopeContext::Patient,
        ScopeContext::User,
        ScopeContext::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScopeContext::Patient => "patient",
            ScopeContext::User => "user",
            ScopeContext::System => "system",
        }
    }

    fn from_prefix(prefix: &str) -> Option<ScopeContext> {
        ScopeContext::ALL.into_iter().find(|c| c.as_str() == prefix)
    }
}

impl fmt::Display for ScopeContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One SMART permission. Each FHIR interaction needs exactly one:
/// `c` type-level create; `r` read, vread, instance history; `u` update, patch;
/// `d` delete; `s` type and system search, type and system history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Permission {
    /// In the canonical order, the order of the letters in `cruds`.
    pub const ALL: [Permission; 5] = [
        Permission::Create,
        Permission::Read,
        Permission::Update,
        Permission::Delete,
        Permission::Search,
    ];

    /// The letter of the permission in a v2 scope.
    pub fn letter(self) -> char {
        match self {
            Permission::Create => 'c',
            Permission::Read => 'r',
            Permission::Update => 'u',
            Permission::Delete => 'd',
            Permission::Search => 's',
        }
    }

    fn from_letter(letter: char) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.letter() == letter)
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of [`Permission`]s, as a bit set. Displays as its letters in `cruds` order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u8);

impl Permissions {
    pub const NONE: Permissions = Permissions(0);
    /// `cruds`, and the v1 `*`.
    pub const ALL: Permissions = Permissions(0b1_1111);
    /// The v1 `read`: `rs`.
    pub const V1_READ: Permissions = Permissions(Permission::Read.bit() | Permission::Search.bit());
    /// The v1 `write`: `cud`.
    pub const V1_WRITE: Permissions =
        Permissions(Permission::Create.bit() | Permission::Update.bit() | Permission::Delete.bit());

    pub const fn contains(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    pub const fn with(self, permission: Permission) -> Permissions {
        Permissions(self.0 | permission.bit())
    }

    pub const fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The permissions of the set, in `cruds` order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    /// Reads the permission suffix of a clinical scope, the part after the `.`: v2 letters
    /// (a non-empty subset of `cruds`, in that order, each once) or one of the v1 forms
    /// `read`, `write` and `*`. Out-of-order letters are refused rather than sorted, as
    /// SMART asks, so that no other convention is misread (`.read` taken as `r`+`d`).
    pub fn parse(suffix: &str) -> Result<Permissions, InvalidScope> {
        match suffix {
            "" => return Err(InvalidScope::NoPermissions),
            "read" => return Ok(Permissions::V1_READ),
            "write" => return Ok(Permissions::V1_WRITE),
            "*" => return Ok(Permissions::ALL),
            _ => {}
        }
        let mut set = Permissions::NONE;
        let mut in_order = true;
        let mut last: Option<Permission> = None;
        for letter in suffix.chars() {
            let permission =
                Permission::from_letter(letter).ok_or(InvalidScope::UnknownPermission(letter))?;
            if set.contains(permission) {
                return Err(InvalidScope::RepeatedPermission(letter));
            }
            in_order &= last.is_none_or(|last| last < permission);
            last = Some(permission);
            set = set.with(permission);
        }
        if !in_order {
            return Err(InvalidScope::PermissionsOutOfOrder {
                found: suffix.to_owned(),
                canonical: set.to_string(),
            });
        }
        Ok(set)
    }
}

impl From<Permission> for Permissions {
    fn from(permission: Permission) -> Permissions {
        Permissions::NONE.with(permission)
    }
}

impl std::ops::BitOr for Permissions {
    type Output = Permissions;
    fn bitor(self, other: Permissions) -> Permissions {
        self.union(other)
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.iter()
            .try_for_each(|p| fmt::Write::write_char(f, p.letter()))
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Permissions({self})")
    }
}

/// What a clinical scope is about: one resource type, or every type (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScopeResource {
    /// `*`: every resource type, including those the server adds later.
    Any,
    /// A resource type the parse predicate accepted, e.g. `Observation`.
    Type(String),
}

impl ScopeResource {
    /// Whether the scope covers `resource_type`. `*` covers only what looks like a resource
    /// type name (see [`ScopeSet::grants`]).
    pub fn matches(&self, resource_type: &str) -> bool {
        match self {
            ScopeResource::Any => is_resource_type_name(resource_type),
            ScopeResource::Type(t) => t == resource_type,
        }
    }
}

impl fmt::Display for ScopeResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeResource::Any => f.write_str("*"),
            ScopeResource::Type(t) => f.write_str(t),
        }
    }
}

/// The query of a granular scope: FHIR search `(param, value)` pairs, percent-decoded, in
/// the order written. A resource is covered when it matches them all, as the same query
/// would find it in a search (so `category=a&category=b` asks for both).
///
/// Names and values are not interpreted here: the hub applies them with FHIR search
/// semantics, and must deny when it cannot evaluate one (an unsupported parameter or
/// modifier), never ignore it as a search would.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueryConstraint {
    /// Never empty, at most [`MAX_CONSTRAINTS_PER_SCOPE`]; no name or value is empty.
    params: Vec<(String, String)>,
}

impl QueryConstraint {
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// Reads the part after the `?`: `param=value` pairs joined by `&`, each name and value
    /// percent-decoded (`+` is a space, as in a query string).
    fn parse(query: &str) -> Result<QueryConstraint, InvalidScope> {
        if query.is_empty() {
            return Err(InvalidScope::EmptyQuery);
        }
        let mut params = Vec::new();
        for part in query.split('&') {
            if params.len() == MAX_CONSTRAINTS_PER_SCOPE {
                return Err(InvalidScope::TooManyConstraints {
                    max: MAX_CONSTRAINTS_PER_SCOPE,
                });
            }
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| InvalidScope::NotAParameter(part.to_owned()))?;
            let name =
                percent_decode(name).ok_or_else(|| InvalidScope::BadEncoding(name.to_owned()))?;
            let value =
                percent_decode(value).ok_or_else(|| InvalidScope::BadEncoding(value.to_owned()))?;
            if name.is_empty() || !name.chars().all(is_parameter_name_char) {
                return Err(InvalidScope::BadParameterName(name));
            }
            if RESULT_PARAMETERS.contains(&name.as_str()) {
                return Err(InvalidScope::NotAFilter(name));
            }
            if value.is_empty() {
                // A search ignores an empty parameter: the scope would grant everything.
                return Err(InvalidScope::EmptyValue(name));
            }
            params.push((name, value));
        }
        Ok(QueryConstraint { params })
    }
}

impl fmt::Display for QueryConstraint {
    /// `param=value&…`, without the `?`, encoded so that it reads back the same.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.params.iter().enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            write_percent_encoded(f, name)?;
            f.write_str("=")?;
            write_percent_encoded(f, value)?;
        }
        Ok(())
    }
}

/// A scope for FHIR resources: `<context>/<resource>.<permissions>[?<query>]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClinicalScope {
    context: ScopeContext,
    resource: ScopeResource,
    /// Never empty.
    permissions: Permissions,
    query: Option<QueryConstraint>,
}

impl ClinicalScope {
    pub fn context(&self) -> ScopeContext {
        self.context
    }

    pub fn resource(&self) -> &ScopeResource {
        &self.resource
    }

    pub fn permissions(&self) -> Permissions {
        self.permissions
    }

    /// The constraint of a granular scope; `None` when the scope grants on every resource
    /// of its type.
    pub fn query(&self) -> Option<&QueryConstraint> {
        self.query.as_ref()
    }

    /// Whether the scope speaks of `permission` on `resource_type` in `context`, whatever
    /// its query.
    pub fn covers(
        &self,
        context: ScopeContext,
        resource_type: &str,
        permission: Permission,
    ) -> bool {
        self.context == context
            && self.permissions.contains(permission)
            && self.resource.matches(resource_type)
    }

    /// Reads the part after `<context>/`.
    fn parse(
        context: ScopeContext,
        rest: &str,
        is_resource_type: &dyn Fn(&str) -> bool,
    ) -> Result<ClinicalScope, InvalidScope> {
        let (resource, rest) = rest.split_once('.').ok_or(InvalidScope::NoPermissions)?;
        let resource = match resource {
            "*" => ScopeResource::Any,
            "" => return Err(InvalidScope::NoResourceType),
            name if is_resource_type_name(name) && is_resource_type(name) => {
                ScopeResource::Type(name.to_owned())
            }
            name => return Err(InvalidScope::UnknownResourceType(name.to_owned())),
        };
        let (suffix, query) = match rest.split_once('?') {
            Some((suffix, query)) => (suffix, Some(query)),
            None => (rest, None),
        };
        let permissions = Permissions::parse(suffix)?;
        let query = match query {
            None => None,
            // v1 had no queries; reading one with v1 permissions would invent a meaning.
            Some(_) if matches!(suffix, "read" | "write" | "*") => {
                return Err(InvalidScope::QueryWithV1Permissions);
            }
            Some(query) => Some(QueryConstraint::parse(query)?),
        };
        Ok(ClinicalScope {
            context,
            resource,
            permissions,
            query,
        })
    }
}

impl fmt::Display for ClinicalScope {
    /// The canonical v2 form: v1 permissions as letters (`.read` → `.rs`), query
    /// re-encoded.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}.{}", self.context, self.resource, self.permissions)?;
        if let Some(query) = &self.query {
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}

/// The non-clinical scopes SMART defines. They grant no data; the front door and the
/// token issuer care about them (identity, launch context, refresh tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OtherScope {
    /// `openid`: an OpenID Connect `id_token`.
    OpenId,
    /// `fhirUser`: the `fhirUser` claim, the FHIR resource of the user.
    FhirUser,
    /// `profile`: the OpenID Connect profile claims (SMART v1's way to `fhirUser`).
    Profile,
    /// `launch`: the launch context of an EHR launch.
    Launch,
    /// `launch/patient`: a patient in context (standalone launch).
    LaunchPatient,
    /// `launch/encounter`: an encounter in context (standalone launch).
    LaunchEncounter,
    /// `offline_access`: a refresh token usable after the user has left.
    OfflineAccess,
    /// `online_access`: a refresh token usable while the user is online.
    OnlineAccess,
}

impl OtherScope {
    pub const ALL: [OtherScope; 8] = [
        OtherScope::OpenId,
        OtherScope::FhirUser,
        OtherScope::Profile,
        OtherScope::Launch,
        OtherScope::LaunchPatient,
        OtherScope::LaunchEncounter,
        OtherScope::OfflineAccess,
        OtherScope::OnlineAccess,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OtherScope::OpenId => "openid",
            OtherScope::FhirUser => "fhirUser",
            OtherScope::Profile => "profile",
            OtherScope::Launch => "launch",
            OtherScope::LaunchPatient => "launch/patient",
            OtherScope::LaunchEncounter => "launch/encounter",
            OtherScope::OfflineAccess => "offline_access",
            OtherScope::OnlineAccess => "online_access",
        }
    }

    fn from_token(token: &str) -> Option<OtherScope> {
        OtherScope::ALL.into_iter().find(|s| s.as_str() == token)
    }
}

impl fmt::Display for OtherScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One token of a scope string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Clinical(ClinicalScope),
    Other(OtherScope),
    /// A well-formed token this module does not know (another system's scope, a launch
    /// context other than patient and encounter, `Patient/…`): kept verbatim, grants
    /// nothing.
    Unrecognised(String),
    /// A token that is not a scope token at all, or that starts like a clinical scope
    /// (`patient/`, `user/`, `system/`) but breaks its grammar. Grants nothing; log it.
    Invalid {
        token: String,
        reason: InvalidScope,
    },
}

impl Scope {
    /// Reads one token (no spaces). Never fails: see [`Scope::Invalid`].
    pub fn parse(token: &str, is_resource_type: impl Fn(&str) -> bool) -> Scope {
        parse_token(token, &is_resource_type)
    }
}

fn parse_token(token: &str, is_resource_type: &dyn Fn(&str) -> bool) -> Scope {
    let invalid = |reason| Scope::Invalid {
        token: token.to_owned(),
        reason,
    };
    if let Some(other) = OtherScope::from_token(token) {
        return Scope::Other(other);
    }
    if let Some(c) = token.chars().find(|c| !is_scope_token_char(*c)) {
        return invalid(InvalidScope::NotAScopeToken(c));
    }
    let Some((prefix, rest)) = token.split_once('/') else {
        return Scope::Unrecognised(token.to_owned());
    };
    let Some(context) = ScopeContext::from_prefix(prefix) else {
        if let Some(context) = ScopeContext::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(prefix))
        {
            return invalid(InvalidScope::ContextCase {
                found: prefix.to_owned(),
                expected: context,
            });
        }
        return Scope::Unrecognised(token.to_owned());
    };
    match ClinicalScope::parse(context, rest, is_resource_type) {
        Ok(scope) => Scope::Clinical(scope),
        Err(reason) => invalid(reason),
    }
}

impl fmt::Display for Scope {
    /// Clinical scopes in canonical v2 form; unrecognised and invalid tokens verbatim.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Clinical(scope) => fmt::Display::fmt(scope, f),
            Scope::Other(scope) => fmt::Display::fmt(scope, f),
            Scope::Unrecognised(token) | Scope::Invalid { token, .. } => f.write_str(token),
        }
    }
}

/// Why a token is not a valid scope. The message says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum InvalidScope {
    #[error(
        "{0:?} is not allowed in a scope token (RFC 6749: printable ASCII but space, '\"' and '\\'); percent-encode it in a query value"
    )]
    NotAScopeToken(char),
    #[error("scope contexts are lowercase: write '{expected}/', not '{found}/'")]
    ContextCase {
        found: String,
        expected: ScopeContext,
    },
    #[error("no resource type: write '<context>/<ResourceType or *>.<permissions>'")]
    NoResourceType,
    #[error(
        "'{0}' is not an R4 resource type (resource types are case-sensitive, e.g. 'Observation'), nor '*'"
    )]
    UnknownResourceType(String),
    #[error(
        "no permissions: write '<context>/<resource>.' followed by some of 'cruds' in that order, or v1 'read', 'write', '*'"
    )]
    NoPermissions,
    #[error(
        "unknown permission {0:?}: permissions are letters of 'cruds', or v1 'read', 'write', '*'"
    )]
    UnknownPermission(char),
    #[error("permission {0:?} is repeated: write each of 'cruds' at most once")]
    RepeatedPermission(char),
    #[error(
        "permissions '{found}' are out of order: write them in the order of 'cruds' ('{canonical}')"
    )]
    PermissionsOutOfOrder { found: String, canonical: String },
    #[error(
        "v1 permissions ('read', 'write', '*') take no query; use the v2 letters, e.g. '.rs?…'"
    )]
    QueryWithV1Permissions,
    #[error("empty query after '?': write 'param=value' pairs joined by '&', or drop the '?'")]
    EmptyQuery,
    #[error("'{0}' in the query is not 'param=value'")]
    NotAParameter(String),
    #[error("'{0}' is not valid percent-encoding of UTF-8 text")]
    BadEncoding(String),
    #[error("'{0}' is not a search parameter name (letters, digits, '_', '-', '.', ':')")]
    BadParameterName(String),
    #[error("'{0}' shapes search results but filters nothing, so it cannot narrow a scope")]
    NotAFilter(String),
    #[error("parameter '{0}' has an empty value, which a search ignores: give it a value")]
    EmptyValue(String),
    #[error("more than {max} parameters in the query of one scope")]
    TooManyConstraints { max: usize },
}

/// A scope string beyond the limits. The string as a whole is refused: the caller should
/// refuse the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeSetError {
    #[error(
        "scope string of {bytes} bytes is over the limit of {max} (MAX_SCOPE_STRING_BYTES): grant broader or fewer scopes"
    )]
    TooLong { bytes: usize, max: usize },
    #[error("scope string has more than {max} scopes (MAX_SCOPES): grant broader or fewer scopes")]
    TooMany { max: usize },
}

/// What a [`ScopeSet`] grants for one permission on one resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// No scope grants it.
    Denied,
    /// A scope without query grants it on every resource of the type.
    Allowed,
    /// Only granular scopes grant it: on the resources that match at least one of these
    /// constraints (each a conjunction of search parameters). Never empty; no duplicates.
    Constrained(Vec<QueryConstraint>),
}

impl Grant {
    /// Whether nothing at all is granted.
    pub fn is_denied(&self) -> bool {
        matches!(self, Grant::Denied)
    }
}

/// The scopes of one token, in the order written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeSet {
    scopes: Vec<Scope>,
}

impl ScopeSet {
    /// Reads a space-separated scope string (the `scope` claim of an access token).
    ///
    /// `is_resource_type` says which names are resource types; a clinical scope naming
    /// anything else is invalid. The hub passes `hygie_fhir::schema::is_resource_type`
    /// (this crate does not depend on the FHIR definitions).
    ///
    /// Malformed tokens do not fail the string: each becomes a [`Scope::Invalid`] that
    /// grants nothing. Fails only beyond [`MAX_SCOPE_STRING_BYTES`] or [`MAX_SCOPES`].
    pub fn parse(
        scope: &str,
        is_resource_type: impl Fn(&str) -> bool,
    ) -> Result<ScopeSet, ScopeSetError> {
        if scope.len() > MAX_SCOPE_STRING_BYTES {
            return Err(ScopeSetError::TooLong {
                bytes: scope.len(),
                max: MAX_SCOPE_STRING_BYTES,
            });
        }
        let mut scopes = Vec::new();
        // RFC 6749 separates scope tokens by one space; runs of spaces are tolerated.
        for token in scope.split(' ').filter(|t| !t.is_empty()) {
            if scopes.len() == MAX_SCOPES {
                return Err(ScopeSetError::TooMany { max: MAX_SCOPES });
            }
            scopes.push(parse_token(token, &is_resource_type));
        }
        Ok(ScopeSet { scopes })
    }

    /// Every token, in the order written.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    pub fn clinical(&self) -> impl Iterator<Item = &ClinicalScope> {
        self.scopes.iter().filter_map(|s| match s {
            Scope::Clinical(scope) => Some(scope),
            _ => None,
        })
    }

    /// The invalid tokens and why, for the log.
    pub fn invalid(&self) -> impl Iterator<Item = (&str, &InvalidScope)> {
        self.scopes.iter().filter_map(|s| match s {
            Scope::Invalid { token, reason } => Some((token.as_str(), reason)),
            _ => None,
        })
    }

    /// Whether one of the non-clinical SMART scopes is present.
    pub fn contains(&self, other: OtherScope) -> bool {
        self.scopes.contains(&Scope::Other(other))
    }

    /// What the clinical scopes of the set grant for `permission` on `resource_type` in
    /// `context` (exactly that context: how contexts map onto principals is the policy's
    /// choice). Deny by default: unrecognised and invalid scopes grant nothing.
    ///
    /// If one covering scope has no query, the answer is [`Grant::Allowed`]; if all
    /// covering scopes have one, it is [`Grant::Constrained`] with each distinct
    /// constraint (the resource must match one of them); with none, [`Grant::Denied`].
    /// Scopes combine per permission: `Observation.r Observation.s` grants what
    /// `Observation.rs` grants.
    ///
    /// `resource_type` must be a type the caller has checked with the same predicate it
    /// gave [`ScopeSet::parse`] (the hub refuses an unknown type before deciding): a named
    /// scope only matches a type that passed that predicate, but `*` can only check that
    /// `resource_type` is shaped like a type name. Anything else (`*`, empty, `metadata`,
    /// `$export`, `Patient/1`) is denied, so that no system-level or malformed target
    /// slips through a wildcard.
    pub fn grants(
        &self,
        context: ScopeContext,
        resource_type: &str,
        permission: Permission,
    ) -> Grant {
        if !is_resource_type_name(resource_type) {
            return Grant::Denied;
        }
        let mut constraints: Vec<QueryConstraint> = Vec::new();
        for scope in self.clinical() {
            if !scope.covers(context, resource_type, permission) {
                continue;
            }
            match &scope.query {
                None => return Grant::Allowed,
                Some(query) => {
                    if !constraints.contains(query) {
                        constraints.push(query.clone());
                    }
                }
            }
        }
        if constraints.is_empty() {
            Grant::Denied
        } else {
            Grant::Constrained(constraints)
        }
    }
}

impl fmt::Display for ScopeSet {
    /// The tokens separated by one space, clinical scopes in canonical v2 form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.scopes.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            fmt::Display::fmt(scope, f)?;
        }
        Ok(())
    }
}

/// Shaped like an R4 resource type name: an ASCII capital, then ASCII letters and digits.
fn is_resource_type_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_RESOURCE_TYPE_BYTES
        && bytes.next().is_some_and(|b| b.is_ascii_uppercase())
        && bytes.all(|b| b.is_ascii_alphanumeric())
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_token_char(c: char) -> bool {
    matches!(c, '\x21' | '\x23'..='\x5B' | '\x5D'..='\x7E')
}

/// Search parameter names with their modifiers and chains: `code:in`, `patient.birthdate`,
/// `_has:Observation:patient:code`, `value-quantity`.
fn is_parameter_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')
}

/// `%XX` → byte, `+` → space; `None` on a truncated or non-hex escape, or if the bytes are
/// not UTF-8. Strict on purpose: a lenient decoder would make two spellings of one
/// constraint differ.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Writes `s` so that [`percent_decode`] gives it back and the result is a scope-token
/// fragment that splits the same way: what is outside the RFC 6749 token characters, and
/// the query's own delimiters `%`, `&`, `+`, `=`, become `%XX`.
fn write_percent_encoded(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    for c in s.chars() {
        if is_scope_token_char(c) && !matches!(c, '%' | '&' | '+' | '=') {
            fmt::Write::write_char(f, c)?;
        } else {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                write!(f, "%{b:02X}")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few R4 types, standing in for `hygie_fhir::schema::is_resource_type`.
    const TYPES: [&str; 6] = [
        "Patient",
        "Observation",
        "Encounter",
        "AllergyIntolerance",
        "Appointment",
        "MedicationRequest",
    ];

    fn is_type(name: &str) -> bool {
        TYPES.contains(&name)
    }

    fn parse(s: &str) -> ScopeSet {
        ScopeSet::parse(s, is_type).unwrap()
    }

    fn one(s: &str) -> Scope {
        Scope::parse(s, is_type)
    }

    fn clinical(s: &str) -> ClinicalScope {
        match one(s) {
            Scope::Clinical(scope) => scope,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn reason(s: &str) -> InvalidScope {
        match one(s) {
            Scope::Invalid { token, reason } => {
                assert_eq!(token, s);
                reason
            }
            other => panic!("{s} should be invalid: {other:?}"),
        }
    }

    fn perms(letters: &str) -> Permissions {
        Permissions::parse(letters).unwrap()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    const LAB: &str = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";

    #[test]
    fn spec_quick_start_examples() {
        let set = parse(
            "patient/*.rs user/*.cruds openid fhirUser launch launch/patient offline_access online_access",
        );
        let s = set.scopes();
        assert_eq!(s.len(), 8);
        let star_rs = clinical("patient/*.rs");
        assert_eq!(star_rs.context(), ScopeContext::Patient);
        assert_eq!(star_rs.resource(), &ScopeResource::Any);
        assert_eq!(star_rs.permissions(), Permissions::V1_READ);
        assert_eq!(star_rs.query(), None);
        assert_eq!(s[0], Scope::Clinical(star_rs));
        assert_eq!(clinical("user/*.cruds").permissions(), Permissions::ALL);
        for other in [
            OtherScope::OpenId,
            OtherScope::FhirUser,
            OtherScope::Launch,
            OtherScope::LaunchPatient,
            OtherScope::OfflineAccess,
            OtherScope::OnlineAccess,
        ] {
            assert!(set.contains(other), "{other}");
        }
        assert!(!set.contains(OtherScope::Profile));
        assert!(!set.contains(OtherScope::LaunchEncounter));
        assert_eq!(
            set.to_string(),
            "patient/*.rs user/*.cruds openid fhirUser launch launch/patient offline_access online_access"
        );
    }

    #[test]
    fn every_other_scope_is_recognised_and_prints_back() {
        for other in OtherScope::ALL {
            assert_eq!(one(other.as_str()), Scope::Other(other));
            assert_eq!(Scope::Other(other).to_string(), other.as_str());
        }
        // Case matters, and launch contexts other than patient and encounter are not ours.
        for token in [
            "OpenID",
            "fhiruser",
            "launch/diagnosticreport",
            "launch/Patient",
            "email",
        ] {
            assert_eq!(one(token), Scope::Unrecognised(token.to_owned()));
        }
    }

    #[test]
    fn spec_clinical_examples_v2() {
        for (s, context, resource, letters) in [
            (
                "patient/Observation.rs",
                ScopeContext::Patient,
                "Observation",
                "rs",
            ),
            ("patient/Patient.r", ScopeContext::Patient, "Patient", "r"),
            (
                "patient/Observation.c",
                ScopeContext::Patient,
                "Observation",
                "c",
            ),
            (
                "patient/Observation.cu",
                ScopeContext::Patient,
                "Observation",
                "cu",
            ),
            (
                "user/Observation.rs",
                ScopeContext::User,
                "Observation",
                "rs",
            ),
            (
                "user/Appointment.cruds",
                ScopeContext::User,
                "Appointment",
                "cruds",
            ),
            ("user/Patient.rs", ScopeContext::User, "Patient", "rs"),
            (
                "system/Observation.rs",
                ScopeContext::System,
                "Observation",
                "rs",
            ),
            (
                "system/Encounter.cud",
                ScopeContext::System,
                "Encounter",
                "cud",
            ),
            (
                "patient/AllergyIntolerance.cruds",
                ScopeContext::Patient,
                "AllergyIntolerance",
                "cruds",
            ),
            (
                "patient/AllergyIntolerance.cud",
                ScopeContext::Patient,
                "AllergyIntolerance",
                "cud",
            ),
            (
                "patient/Observation.d",
                ScopeContext::Patient,
                "Observation",
                "d",
            ),
            (
                "patient/Observation.crs",
                ScopeContext::Patient,
                "Observation",
                "crs",
            ),
        ] {
            let scope = clinical(s);
            assert_eq!(scope.context(), context, "{s}");
            assert_eq!(
                scope.resource(),
                &ScopeResource::Type(resource.to_owned()),
                "{s}"
            );
            assert_eq!(scope.permissions().to_string(), letters, "{s}");
            assert_eq!(scope.to_string(), s, "v2 scopes are already canonical");
        }
        assert_eq!(clinical("system/*.rs").resource(), &ScopeResource::Any);
    }

    #[test]
    fn v1_forms_map_to_v2_and_print_canonically() {
        for (v1, v2) in [
            ("patient/Observation.read", "patient/Observation.rs"),
            ("patient/Observation.write", "patient/Observation.cud"),
            ("patient/Observation.*", "patient/Observation.cruds"),
            ("patient/*.read", "patient/*.rs"),
            ("patient/*.*", "patient/*.cruds"),
            ("user/*.*", "user/*.cruds"),
            ("system/Encounter.write", "system/Encounter.cud"),
        ] {
            assert_eq!(clinical(v1).to_string(), v2);
            assert_eq!(clinical(v1), clinical(v2), "{v1} means {v2}");
        }
        assert_eq!(clinical("patient/*.*").permissions(), Permissions::ALL);
        assert_eq!(Permissions::V1_READ, perms("rs"));
        assert_eq!(Permissions::V1_WRITE, perms("cud"));
        // v1 spellings are exact.
        assert_eq!(
            reason("patient/Observation.Read"),
            InvalidScope::UnknownPermission('R')
        );
        assert_eq!(
            reason("patient/Observation.READ"),
            InvalidScope::UnknownPermission('R')
        );
        // `.read` is not read + delete, nor anything else by letters.
        assert_eq!(
            reason("patient/Observation.rd.read"),
            InvalidScope::UnknownPermission('.')
        );
    }

    #[test]
    fn granular_scope_from_the_spec() {
        let s = format!("patient/Observation.rs?category={LAB}");
        let scope = clinical(&s);
        assert_eq!(scope.permissions(), perms("rs"));
        assert_eq!(scope.query().unwrap().params(), pairs(&[("category", LAB)]));
        assert_eq!(scope.to_string(), s, "printed back as written");
    }

    #[test]
    fn granular_scope_with_several_params_modifiers_and_chains() {
        let scope = clinical(
            "user/Observation.rs?category=vital-signs&code:in=http://valueset.example.org/ValueSet/diabetes-codes&patient.birthdate=1990&date=ge2020-01-01",
        );
        assert_eq!(
            scope.query().unwrap().params(),
            pairs(&[
                ("category", "vital-signs"),
                (
                    "code:in",
                    "http://valueset.example.org/ValueSet/diabetes-codes"
                ),
                ("patient.birthdate", "1990"),
                ("date", "ge2020-01-01"),
            ])
        );
        // A repeated parameter is kept: both must hold, as in a search.
        let scope = clinical("patient/Observation.s?code=a&code=b");
        assert_eq!(
            scope.query().unwrap().params(),
            pairs(&[("code", "a"), ("code", "b")])
        );
        // A wildcard may be narrowed too.
        let scope = clinical(
            "patient/*.rs?_security=http://terminology.hl7.org/CodeSystem/v3-Confidentiality|N",
        );
        assert_eq!(scope.resource(), &ScopeResource::Any);
    }

    #[test]
    fn query_values_are_percent_decoded_and_reencoded_canonically() {
        let scope = clinical("patient/Observation.rs?code=a%2Cb&note=x+y%20z&cat=%7c");
        assert_eq!(
            scope.query().unwrap().params(),
            pairs(&[("code", "a,b"), ("note", "x y z"), ("cat", "|")])
        );
        assert_eq!(
            scope.to_string(),
            "patient/Observation.rs?code=a,b&note=x%20y%20z&cat=|"
        );
        let scope = clinical("patient/Observation.rs?code=a%26b%3Dc%2B%25&x=%C3%A9");
        assert_eq!(
            scope.query().unwrap().params(),
            pairs(&[("code", "a&b=c+%"), ("x", "é")])
        );
        assert_eq!(
            scope.to_string(),
            "patient/Observation.rs?code=a%26b%3Dc%2B%25&x=%C3%A9"
        );
        // A value may hold '=' and '?' written raw: only the first '=' splits.
        let scope = clinical("patient/Observation.rs?code=a=b?c");
        assert_eq!(scope.query().unwrap().params(), pairs(&[("code", "a=b?c")]));
        assert_eq!(clinical(&scope.to_string()), scope);
    }

    #[test]
    fn invalid_permissions() {
        use InvalidScope::*;
        for (s, expected) in [
            (
                "patient/Observation.sr",
                PermissionsOutOfOrder {
                    found: "sr".into(),
                    canonical: "rs".into(),
                },
            ),
            (
                "patient/Observation.sdurc",
                PermissionsOutOfOrder {
                    found: "sdurc".into(),
                    canonical: "cruds".into(),
                },
            ),
            (
                "patient/Observation.dus",
                PermissionsOutOfOrder {
                    found: "dus".into(),
                    canonical: "uds".into(),
                },
            ),
            ("patient/Observation.rr", RepeatedPermission('r')),
            ("patient/Observation.rsr", RepeatedPermission('r')),
            ("patient/Observation.", NoPermissions),
            ("patient/Observation", NoPermissions),
            ("patient/Observation.?category=x", NoPermissions),
            ("patient/Observation.x", UnknownPermission('x')),
            ("patient/Observation.rw", UnknownPermission('w')),
            ("patient/Observation.R", UnknownPermission('R')),
            ("patient/Observation.**", UnknownPermission('*')),
            ("patient/Observation.r*", UnknownPermission('*')),
            ("patient/Observation.reads", UnknownPermission('e')),
        ] {
            assert_eq!(reason(s), expected, "{s}");
        }
        // The message says how to fix it.
        assert!(
            reason("patient/Observation.sr")
                .to_string()
                .contains("'rs'")
        );
    }

    #[test]
    fn invalid_resources_and_contexts() {
        use InvalidScope::*;
        assert_eq!(reason("patient/.rs"), NoResourceType);
        for (s, name) in [
            ("patient/Observaton.rs", "Observaton"),
            ("patient/observation.rs", "observation"),
            ("patient/Resource.rs", "Resource"),
            ("patient/**.rs", "**"),
            ("patient/Obs/ervation.rs", "Obs/ervation"),
            ("user/Patient/123.r", "Patient/123"),
        ] {
            assert_eq!(reason(s), UnknownResourceType(name.to_owned()), "{s}");
        }
        for (s, found, expected) in [
            ("Patient/Observation.rs", "Patient", ScopeContext::Patient),
            ("USER/*.cruds", "USER", ScopeContext::User),
            ("System/*.rs", "System", ScopeContext::System),
        ] {
            assert_eq!(
                reason(s),
                ContextCase {
                    found: found.to_owned(),
                    expected
                }
            );
        }
        // Unknown contexts are not SMART clinical scopes: another system's, kept verbatim.
        for s in [
            "group/Observation.rs",
            "practitioner/*.read",
            "https://graph.microsoft.com/User.Read",
            "api://hygie/.default",
            "/Observation.rs",
        ] {
            assert_eq!(one(s), Scope::Unrecognised(s.to_owned()), "{s}");
        }
        // Not scope tokens at all.
        assert_eq!(
            reason("patient/Observation.rs?code=\"x\""),
            NotAScopeToken('"')
        );
        assert_eq!(
            reason("patient/Observation.rs?code=a\\b"),
            NotAScopeToken('\\')
        );
        assert_eq!(reason("patient/Observation.rs\t"), NotAScopeToken('\t'));
        assert_eq!(reason("patiént/Observation.rs"), NotAScopeToken('é'));
        assert_eq!(reason("hello\u{7f}"), NotAScopeToken('\u{7f}'));
    }

    #[test]
    fn invalid_queries() {
        use InvalidScope::*;
        for (s, expected) in [
            ("patient/Observation.rs?", EmptyQuery),
            (
                "patient/Observation.rs?category",
                NotAParameter("category".into()),
            ),
            (
                "patient/Observation.rs?category=x&",
                NotAParameter(String::new()),
            ),
            (
                "patient/Observation.rs?a=1&&b=2",
                NotAParameter(String::new()),
            ),
            ("patient/Observation.rs?=x", BadParameterName(String::new())),
            (
                "patient/Observation.rs?cat%20egory=x",
                BadParameterName("cat egory".into()),
            ),
            (
                "patient/Observation.rs?cat/egory=x",
                BadParameterName("cat/egory".into()),
            ),
            (
                "patient/Observation.rs?category=",
                EmptyValue("category".into()),
            ),
            (
                "patient/Observation.rs?category=x&code=",
                EmptyValue("code".into()),
            ),
            (
                "patient/Observation.rs?category=%zz",
                BadEncoding("%zz".into()),
            ),
            (
                "patient/Observation.rs?category=%2",
                BadEncoding("%2".into()),
            ),
            (
                "patient/Observation.rs?category=%FF",
                BadEncoding("%FF".into()),
            ),
            (
                "patient/Observation.rs?_include=Observation:subject",
                NotAFilter("_include".into()),
            ),
            (
                "patient/Observation.rs?category=x&_count=1",
                NotAFilter("_count".into()),
            ),
            (
                "patient/Observation.rs?_page=abc",
                NotAFilter("_page".into()),
            ),
            (
                "patient/Observation.read?category=x",
                QueryWithV1Permissions,
            ),
            ("patient/Observation.*?category=x", QueryWithV1Permissions),
        ] {
            assert_eq!(reason(s), expected, "{s}");
        }
        let max = (0..MAX_CONSTRAINTS_PER_SCOPE)
            .map(|i| format!("p{i}=v"))
            .collect::<Vec<_>>()
            .join("&");
        assert!(matches!(
            one(&format!("patient/Observation.rs?{max}")),
            Scope::Clinical(_)
        ));
        assert_eq!(
            reason(&format!("patient/Observation.rs?{max}&one=more")),
            TooManyConstraints {
                max: MAX_CONSTRAINTS_PER_SCOPE
            }
        );
    }

    #[test]
    fn a_bad_token_does_not_spoil_the_others() {
        let set = parse(
            "openid patient/Observation.sr  patient/Patient.r  hello patient/Observation.rs ",
        );
        assert_eq!(set.scopes().len(), 5);
        let invalid: Vec<_> = set.invalid().collect();
        assert_eq!(invalid.len(), 1);
        assert_eq!(invalid[0].0, "patient/Observation.sr");
        assert_eq!(set.clinical().count(), 2);
        assert_eq!(
            set.grants(ScopeContext::Patient, "Observation", Permission::Search),
            Grant::Allowed
        );
        assert_eq!(
            set.to_string(),
            "openid patient/Observation.sr patient/Patient.r hello patient/Observation.rs"
        );
        assert!(parse("").is_empty());
        assert!(parse("   ").is_empty());
    }

    #[test]
    fn limits() {
        let at_max = "a".repeat(MAX_SCOPE_STRING_BYTES);
        assert_eq!(parse(&at_max).scopes().len(), 1);
        assert_eq!(
            ScopeSet::parse(&format!("{at_max}b"), is_type),
            Err(ScopeSetError::TooLong {
                bytes: MAX_SCOPE_STRING_BYTES + 1,
                max: MAX_SCOPE_STRING_BYTES
            })
        );
        let tokens = |n: usize| vec!["openid"; n].join(" ");
        assert_eq!(parse(&tokens(MAX_SCOPES)).scopes().len(), MAX_SCOPES);
        assert_eq!(
            ScopeSet::parse(&tokens(MAX_SCOPES + 1), is_type),
            Err(ScopeSetError::TooMany { max: MAX_SCOPES })
        );
        // Spaces are not scopes.
        let spaced = format!("{}openid", " ".repeat(MAX_SCOPE_STRING_BYTES - 6));
        assert_eq!(parse(&spaced).scopes().len(), 1);
        assert!(
            ScopeSetError::TooMany { max: MAX_SCOPES }
                .to_string()
                .contains("fewer")
        );
    }

    // ---- grants: the positive space ----

    #[test]
    fn grants_follow_the_permissions() {
        let set = parse("patient/Observation.rs patient/Patient.r user/Appointment.cud");
        let g = |c, t, p| set.grants(c, t, p);
        use Permission::*;
        use ScopeContext::*;
        assert_eq!(g(Patient, "Observation", Read), Grant::Allowed);
        assert_eq!(g(Patient, "Observation", Search), Grant::Allowed);
        assert_eq!(g(Patient, "Patient", Read), Grant::Allowed);
        for p in [Create, Update, Delete] {
            assert_eq!(g(User, "Appointment", p), Grant::Allowed);
            assert_eq!(g(Patient, "Observation", p), Grant::Denied);
        }
        assert_eq!(
            g(User, "Appointment", Read),
            Grant::Denied,
            "write does not imply read"
        );
    }

    #[test]
    fn compound_and_expanded_scopes_are_equivalent() {
        let compound = parse("patient/Observation.rs");
        let expanded = parse("patient/Observation.r patient/Observation.s");
        for c in ScopeContext::ALL {
            for p in Permission::ALL {
                for t in ["Observation", "Patient"] {
                    assert_eq!(
                        compound.grants(c, t, p),
                        expanded.grants(c, t, p),
                        "{c} {t} {p:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn wildcard_grants_every_type() {
        let set = parse("patient/*.*");
        for t in TYPES {
            for p in Permission::ALL {
                assert_eq!(set.grants(ScopeContext::Patient, t, p), Grant::Allowed);
            }
        }
        assert_eq!(
            parse("system/*.rs").grants(ScopeContext::System, "Encounter", Permission::Search),
            Grant::Allowed
        );
    }

    #[test]
    fn constrained_grants_collect_constraints_and_unconstrained_wins() {
        let lab = format!("patient/Observation.rs?category={LAB}");
        let vitals = "patient/Observation.rs?category=vital-signs&date=ge2020";
        let set = parse(&format!("{lab} {vitals} {lab}"));
        let Grant::Constrained(constraints) =
            set.grants(ScopeContext::Patient, "Observation", Permission::Read)
        else {
            panic!("constrained")
        };
        assert_eq!(constraints.len(), 2, "duplicates collapse");
        assert_eq!(constraints[0].params(), pairs(&[("category", LAB)]));
        assert_eq!(
            constraints[1].params(),
            pairs(&[("category", "vital-signs"), ("date", "ge2020")])
        );
        // One scope without a query grants everything, whatever the order.
        for s in [
            format!("{lab} patient/Observation.r"),
            format!("patient/Observation.r {lab}"),
            format!("{lab} patient/*.rs"),
        ] {
            assert_eq!(
                parse(&s).grants(ScopeContext::Patient, "Observation", Permission::Read),
                Grant::Allowed,
                "{s}"
            );
        }
        // An unconstrained scope for another permission does not lift the constraint.
        let set = parse(&format!("{lab} patient/Observation.c"));
        assert!(matches!(
            set.grants(ScopeContext::Patient, "Observation", Permission::Read),
            Grant::Constrained(_)
        ));
    }

    // ---- grants: the negative space, one test per rule ----

    #[test]
    fn read_does_not_grant_search() {
        let set = parse("patient/Observation.r");
        assert_eq!(
            set.grants(ScopeContext::Patient, "Observation", Permission::Search),
            Grant::Denied
        );
        let set = parse("patient/Observation.s");
        assert_eq!(
            set.grants(ScopeContext::Patient, "Observation", Permission::Read),
            Grant::Denied
        );
    }

    #[test]
    fn a_granular_scope_never_grants_unconstrained() {
        let set = parse("patient/Observation.rs?category=x");
        for p in [Permission::Read, Permission::Search] {
            let grant = set.grants(ScopeContext::Patient, "Observation", p);
            assert_ne!(grant, Grant::Allowed);
            assert_eq!(
                grant,
                Grant::Constrained(vec![QueryConstraint {
                    params: pairs(&[("category", "x")])
                }])
            );
        }
        // Nor does a constrained wildcard.
        let set = parse("patient/*.rs?_security=R");
        assert!(matches!(
            set.grants(ScopeContext::Patient, "Patient", Permission::Read),
            Grant::Constrained(_)
        ));
    }

    #[test]
    fn v1_read_does_not_grant_writes() {
        let set = parse("patient/*.read user/Observation.read");
        for p in [Permission::Create, Permission::Update, Permission::Delete] {
            assert_eq!(
                set.grants(ScopeContext::Patient, "Observation", p),
                Grant::Denied
            );
            assert_eq!(
                set.grants(ScopeContext::User, "Observation", p),
                Grant::Denied
            );
        }
        let set = parse("patient/Observation.write");
        for p in [Permission::Read, Permission::Search] {
            assert_eq!(
                set.grants(ScopeContext::Patient, "Observation", p),
                Grant::Denied
            );
        }
    }

    #[test]
    fn unknown_invalid_and_other_scopes_grant_nothing() {
        let set = parse(
            "openid fhirUser profile launch launch/patient launch/encounter offline_access online_access \
             hello group/Observation.rs Patient/Observation.rs patient/Observation.sr patient/Observation.rr \
             patient/Observation. patient/Observaton.rs patient/Observation.rs? patient/Observation.rs?_count=1 \
             patient/Observation.rs?category= launch/observation",
        );
        assert_eq!(set.clinical().count(), 0);
        for c in ScopeContext::ALL {
            for t in TYPES {
                for p in Permission::ALL {
                    assert_eq!(set.grants(c, t, p), Grant::Denied, "{c} {t} {p:?}");
                }
            }
        }
        assert!(
            ScopeSet::default()
                .grants(ScopeContext::System, "Patient", Permission::Read)
                .is_denied()
        );
    }

    #[test]
    fn wildcard_does_not_match_a_non_resource() {
        let set = parse("patient/*.cruds user/*.* system/*.*");
        for c in ScopeContext::ALL {
            for t in [
                "",
                "*",
                "metadata",
                "$export",
                "_history",
                "Patient/123",
                "Patient.rs",
                "patient",
                "Observation ",
                "Ob_servation",
                "Patiént",
                &format!("A{}", "a".repeat(MAX_RESOURCE_TYPE_BYTES)),
            ] {
                for p in Permission::ALL {
                    assert_eq!(set.grants(c, t, p), Grant::Denied, "{c} {t:?} {p:?}");
                }
            }
        }
    }

    #[test]
    fn contexts_do_not_mix() {
        let set = parse("patient/*.cruds");
        for c in [ScopeContext::User, ScopeContext::System] {
            for p in Permission::ALL {
                assert_eq!(set.grants(c, "Observation", p), Grant::Denied);
            }
        }
        let set = parse("system/Observation.rs");
        assert_eq!(
            set.grants(ScopeContext::Patient, "Observation", Permission::Read),
            Grant::Denied
        );
    }

    #[test]
    fn a_named_scope_matches_only_its_type() {
        let set = parse("patient/Observation.cruds");
        for t in ["Patient", "observation", "OBSERVATION", "Observations"] {
            for p in Permission::ALL {
                assert_eq!(
                    set.grants(ScopeContext::Patient, t, p),
                    Grant::Denied,
                    "{t}"
                );
            }
        }
    }

    #[test]
    fn permissions_bitset() {
        assert_eq!(Permissions::ALL.to_string(), "cruds");
        assert_eq!(Permissions::NONE.to_string(), "");
        assert!(Permissions::NONE.is_empty());
        assert_eq!(
            Permissions::from(Permission::Read) | Permissions::from(Permission::Search),
            Permissions::V1_READ
        );
        assert_eq!(Permissions::ALL.iter().collect::<Vec<_>>(), Permission::ALL);
        assert_eq!(format!("{:?}", Permissions::V1_WRITE), "Permissions(cud)");
        // Every non-empty subset written in order parses back to itself.
        for bits in 1u8..32 {
            let set = Permissions(bits);
            assert_eq!(Permissions::parse(&set.to_string()), Ok(set));
        }
    }

    // ---- properties ----

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_context() -> impl Strategy<Value = ScopeContext> {
            prop::sample::select(ScopeContext::ALL.to_vec())
        }

        fn arb_resource() -> impl Strategy<Value = ScopeResource> {
            prop_oneof![
                Just(ScopeResource::Any),
                prop::sample::select(TYPES.to_vec())
                    .prop_map(|t| ScopeResource::Type(t.to_owned())),
            ]
        }

        fn arb_param_name() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_.:-]{1,12}".prop_filter("a filter, not a result parameter", |n| {
                !RESULT_PARAMETERS.contains(&n.as_str())
            })
        }

        fn arb_query() -> impl Strategy<Value = Option<QueryConstraint>> {
            prop::option::of(
                prop::collection::vec(
                    (arb_param_name(), "\\PC{1,16}"),
                    1..=MAX_CONSTRAINTS_PER_SCOPE,
                )
                .prop_map(|params| QueryConstraint { params }),
            )
        }

        fn arb_clinical() -> impl Strategy<Value = ClinicalScope> {
            (arb_context(), arb_resource(), 1u8..32, arb_query()).prop_map(
                |(context, resource, bits, query)| ClinicalScope {
                    context,
                    resource,
                    permissions: Permissions(bits),
                    query,
                },
            )
        }

        /// Strings made of scope-ish pieces, so that random input often reaches deep
        /// into the grammar.
        fn arb_scopeish() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("patient/".to_owned()),
                Just("user/".to_owned()),
                Just("system/".to_owned()),
                Just("Patient/".to_owned()),
                Just("Observation".to_owned()),
                Just("*".to_owned()),
                Just(".".to_owned()),
                Just("?".to_owned()),
                Just("&".to_owned()),
                Just("=".to_owned()),
                Just("%".to_owned()),
                Just(" ".to_owned()),
                Just("read".to_owned()),
                Just("openid".to_owned()),
                Just("launch/patient".to_owned()),
                "[cruds]{0,6}",
                "[a-z_:%0-9A-F|+]{0,8}",
                "\\PC{0,3}",
                any::<char>().prop_map(String::from),
            ];
            prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
        }

        fn check_parse_invariants(input: &str) {
            match ScopeSet::parse(input, is_type) {
                Ok(set) => {
                    assert!(input.len() <= MAX_SCOPE_STRING_BYTES);
                    assert!(set.scopes().len() <= MAX_SCOPES);
                    for scope in set.scopes() {
                        match scope {
                            Scope::Clinical(c) => {
                                assert!(!c.permissions().is_empty());
                                if let Some(q) = c.query() {
                                    assert!(!q.params().is_empty());
                                    assert!(q.params().len() <= MAX_CONSTRAINTS_PER_SCOPE);
                                    assert!(
                                        q.params()
                                            .iter()
                                            .all(|(n, v)| !n.is_empty() && !v.is_empty())
                                    );
                                }
                                // Canonical printing is a fixed point.
                                let printed = c.to_string();
                                assert_eq!(one(&printed), scope.clone(), "{printed}");
                            }
                            Scope::Invalid { token, reason } => {
                                assert!(!token.is_empty());
                                assert!(!reason.to_string().is_empty());
                            }
                            Scope::Unrecognised(token) => {
                                assert!(!token.is_empty() && !token.contains(' '));
                            }
                            Scope::Other(_) => {}
                        }
                    }
                    for c in ScopeContext::ALL {
                        for p in Permission::ALL {
                            for t in ["Observation", "*", ""] {
                                if let Grant::Constrained(list) = set.grants(c, t, p) {
                                    assert!(!list.is_empty());
                                }
                            }
                        }
                    }
                }
                Err(ScopeSetError::TooLong { bytes, max }) => {
                    assert_eq!(bytes, input.len());
                    assert!(bytes > max);
                }
                Err(ScopeSetError::TooMany { max }) => {
                    assert!(input.split(' ').filter(|t| !t.is_empty()).count() > max);
                }
            }
        }

        proptest! {
            #[test]
            fn canonical_printing_round_trips(scope in arb_clinical()) {
                let printed = scope.to_string();
                prop_assert!(!printed.contains(' '));
                prop_assert_eq!(one(&printed), Scope::Clinical(scope.clone()));
                // And a set of them, separated by spaces.
                let set = ScopeSet { scopes: vec![Scope::Clinical(scope), Scope::Other(OtherScope::OpenId)] };
                prop_assert_eq!(parse(&set.to_string()), set);
            }

            #[test]
            fn parse_never_panics_on_any_string(input in "\\PC{0,300}") {
                check_parse_invariants(&input);
            }

            #[test]
            fn parse_never_panics_on_long_strings(chars in prop::collection::vec(any::<char>(), 0..2000)) {
                // Up to 8 KB: either side of MAX_SCOPE_STRING_BYTES.
                check_parse_invariants(&chars.into_iter().collect::<String>());
            }

            #[test]
            fn parse_never_panics_on_scopeish_strings(input in arb_scopeish()) {
                check_parse_invariants(&input);
            }

            #[test]
            fn parse_respects_the_limits(token in "[a-z/.*]{1,12}", n in 0usize..400) {
                let input = vec![token; n].join(" ");
                check_parse_invariants(&input);
                let expected_ok = input.len() <= MAX_SCOPE_STRING_BYTES && n <= MAX_SCOPES;
                prop_assert_eq!(ScopeSet::parse(&input, is_type).is_ok(), expected_ok);
            }
        }
    }
}
