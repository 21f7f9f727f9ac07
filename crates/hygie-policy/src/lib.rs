//! The policy decision point (PDP) of Hygie: every access to data is decided here, and
//! nowhere else.
//!
//! `decide(principal, action, target)` answers [`Decision::Permit`] with a [`Mask`] (what to
//! remove from the response) or [`Decision::Deny`] with a reason. This crate knows nothing
//! about HTTP, SQL or tokens: front doors turn credentials into a [`Principal`], the hub
//! calls [`Policy::decide`] before it touches the store.
//!
//! The principals: the development principal that `hygie serve --no-auth` gives every
//! request (loopback only), permitted everything; the local operator running a CLI command
//! on the hub's own data directory; a caller with a verified bearer token
//! ([`PrincipalKind::Token`]); and the anonymous caller, denied everything.
//!
//! A token's caller may do what BOTH its SMART scopes ([`scopes`]) and the ceiling of one of
//! its roles ([`RoleCeilings`]) allow, on the resource type at hand: deny by default. The
//! permit's [`Mask`] carries what the hub must still apply: a `patient/` scope's compartment,
//! a query-constrained scope's query, need-to-know, hidden security labels, removed elements.
//!
//! ```
//! use hygie_policy::{Action, Decision, Policy, Principal, Target};
//! let policy = Policy::default();
//! let read = Target::instance("Patient", "123");
//! assert!(matches!(policy.decide(&Principal::anonymous(), Action::Read, &read), Decision::Deny { .. }));
//! assert!(matches!(policy.decide(&Principal::development(), Action::Read, &read), Decision::Permit { .. }));
//! ```
#![forbid(unsafe_code)]

pub mod scopes;

pub use scopes::{
    ClinicalScope, Grant, InvalidScope, OtherScope, Permission, Permissions, QueryConstraint,
    Scope, ScopeContext, ScopeResource, ScopeSet, ScopeSetError,
};

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// A stable name for logs and the audit trail, e.g. `Practitioner/123` or `cli:root`.
    pub subject: String,
    /// What a verified token grants (for [`PrincipalKind::Token`] only).
    pub access: Option<Box<TokenAccess>>,
}

/// What a verified token says its bearer may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAccess {
    /// `jti`, for revocation.
    pub token_id: Option<String>,
    pub roles: Vec<String>,
    pub scopes: ScopeSet,
    /// The SMART `patient` launch context.
    pub patient: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// No credentials were presented.
    Anonymous,
    /// Every request of a hub started with `--no-auth` (loopback only, for development).
    Development,
    /// An operator running a `hygie` subcommand against the hub's own data directory or
    /// database: whoever can do that can already read the files.
    LocalOperator,
    /// A caller whose bearer token was verified: limited to its scopes and roles.
    Token,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            kind: PrincipalKind::Anonymous,
            subject: "anonymous".to_owned(),
            access: None,
        }
    }

    pub fn development() -> Principal {
        Principal {
            kind: PrincipalKind::Development,
            subject: "development (--no-auth)".to_owned(),
            access: None,
        }
    }

    pub fn local_operator(user: &str) -> Principal {
        Principal {
            kind: PrincipalKind::LocalOperator,
            subject: format!("cli:{user}"),
            access: None,
        }
    }

    /// The bearer of a verified token.
    pub fn token(subject: &str, access: TokenAccess) -> Principal {
        Principal {
            kind: PrincipalKind::Token,
            subject: subject.to_owned(),
            access: Some(Box::new(access)),
        }
    }
}

/// What the principal wants to do: the FHIR interactions, plus the hub's own operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Read,
    VRead,
    Create,
    Update,
    Patch,
    Delete,
    Search,
    /// `Patient/{id}/$everything`: the whole patient compartment, and what it references.
    Everything,
    History,
    /// A transaction or batch Bundle; each entry is decided again on its own.
    Bundle,
    Import,
    /// Revoking a token or a principal, or lifting a revocation: an administrative act.
    Revoke,
    /// Opening a patient's record without a care relationship, in an emergency, with a
    /// reason: the access is recorded and reviewed afterwards.
    BreakGlass,
    /// Listing and closing the reviews of break-the-glass accesses (the DPO's work).
    ReviewBreakGlass,
    /// Replacing the policy in force (role ceilings, need-to-know, labels, masks).
    ReloadPolicy,
    /// Rotating or retiring the keys the hub signs its own tokens with.
    ManageKeys,
    /// `Patient/{id}/$access-log`: who reached a patient's record, when and why; for the
    /// patient themself and for the DPO.
    AccessLog,
    /// Erasing a patient (GDPR Art. 17, crypto-shredding): the DPO's decision alone.
    ErasePatient,
}

impl Action {
    /// The FHIR `TypeRestfulInteraction` / `SystemRestfulInteraction` code.
    pub fn interaction_code(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::VRead => "vread",
            Action::Create => "create",
            Action::Update => "update",
            Action::Patch => "patch",
            Action::Delete => "delete",
            Action::Search => "search-type",
            Action::Everything => "operation",
            Action::History => "history",
            Action::Bundle => "transaction",
            Action::Import => "import",
            Action::Revoke => "revoke",
            Action::BreakGlass => "break-the-glass",
            Action::ReviewBreakGlass => "break-the-glass-review",
            Action::ReloadPolicy => "policy-reload",
            Action::ManageKeys => "key-management",
            Action::AccessLog => "operation",
            Action::ErasePatient => "erase",
        }
    }

    /// Whether the action changes data.
    pub fn writes(self) -> bool {
        matches!(
            self,
            Action::Create
                | Action::Update
                | Action::Patch
                | Action::Delete
                | Action::Import
                | Action::Revoke
                | Action::BreakGlass
                | Action::ReviewBreakGlass
                | Action::ReloadPolicy
                | Action::ManageKeys
                | Action::ErasePatient
        )
    }
}

/// The resource type of the hub's own audit trail: read through the audit log, never
/// written through the API.
pub const AUDIT_EVENT: &str = "AuditEvent";

/// What the action is aimed at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Target {
    /// `None` for system-level actions (system history, a Bundle).
    pub resource_type: Option<String>,
    pub id: Option<String>,
}

impl Target {
    pub fn system() -> Target {
        Target::default()
    }

    pub fn resource_type(resource_type: &str) -> Target {
        Target {
            resource_type: Some(resource_type.to_owned()),
            id: None,
        }
    }

    pub fn instance(resource_type: &str, id: &str) -> Target {
        Target {
            resource_type: Some(resource_type.to_owned()),
            id: Some(id.to_owned()),
        }
    }
}

/// What a permitted action may return: less than everything when not empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mask {
    /// Top-level elements the caller's role does not need, as `Type.element` (e.g.
    /// `Encounter.diagnosis`): removed from what it reads (marked `REDACTED`), refused in
    /// what it writes, not searchable.
    pub remove_elements: Vec<String>,
    /// Only what belongs to the compartment of `Patient/{id}` (a `patient/` scope): the hub
    /// adds it to searches and checks it on reads.
    pub patient_compartment: Option<String>,
    /// Need-to-know: only the data of patients the caller has a care relationship with,
    /// or has broken the glass for.
    pub care_of: Option<CareOf>,
    /// Security labels (`meta.security`) the caller's roles are not granted: resources
    /// carrying one are invisible to it, as if they did not exist.
    pub hidden_labels: Vec<SecurityLabel>,
    /// Query-constrained scopes (`user/Observation.rs?category=laboratory`): only resources
    /// of the target type that match, in each group, at least one constraint (the token's
    /// scopes make one group, a role's ceiling another).
    pub query_constraints: Vec<Vec<QueryConstraint>>,
}

/// A security label: a coding of `meta.security`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecurityLabel {
    pub system: &'static str,
    pub code: &'static str,
}

/// HL7 v3 Confidentiality: `R` restricted, `V` very restricted.
pub const CONFIDENTIALITY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
/// HL7 v3 ActCode: the sensitivity codes (information sensitivity policy).
pub const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// The labels that hide a resource from roles not granted them: confidentiality R and V,
/// and the sensitivities psychiatry, HIV, ethnicity, genetic disease, sexually transmitted
/// disease.
pub const PROTECTED_LABELS: &[SecurityLabel] = &[
    SecurityLabel {
        system: CONFIDENTIALITY_SYSTEM,
        code: "R",
    },
    SecurityLabel {
        system: CONFIDENTIALITY_SYSTEM,
        code: "V",
    },
    SecurityLabel {
        system: ACT_CODE_SYSTEM,
        code: "PSY",
    },
    SecurityLabel {
        system: ACT_CODE_SYSTEM,
        code: "HIV",
    },
    SecurityLabel {
        system: ACT_CODE_SYSTEM,
        code: "ETH",
    },
    SecurityLabel {
        system: ACT_CODE_SYSTEM,
        code: "GDIS",
    },
    SecurityLabel {
        system: ACT_CODE_SYSTEM,
        code: "STD",
    },
];

/// The built-in label grants: treating staff see restricted data; a patient sees all of
/// their own record (their token reaches nothing else); systems see everything they sync.
/// Sites add their specialists (`[labels]`: `psychiatrist = ["R", "PSY"]`).
pub const DEFAULT_LABEL_GRANTS: &[(&str, &[&str])] = &[
    ("clinician", &["R"]),
    ("nurse", &["R"]),
    ("patient", &["R", "V", "PSY", "HIV", "ETH", "GDIS", "STD"]),
    (
        "integration",
        &["R", "V", "PSY", "HIV", "ETH", "GDIS", "STD"],
    ),
    // An HL7 v2 sender updates the records it feeds whatever their labels (a restricted
    // patient is admitted like any other); the listener answers it only acknowledgements.
    (
        "hl7-interface",
        &["R", "V", "PSY", "HIV", "ETH", "GDIS", "STD"],
    ),
];

/// The built-in minimization: elements a role's work does not need, removed from what it
/// reads (and refused in what it writes). Reception handles admissions: demographics and
/// the administrative part of an encounter, not why the patient came. Billing codes claims
/// from the encounter's diagnoses: not the patient's contacts or the clinical reasons.
pub const DEFAULT_ELEMENT_MASKS: &[(&str, &[&str])] = &[
    (
        "reception",
        &[
            "Encounter.diagnosis",
            "Encounter.reasonCode",
            "Encounter.reasonReference",
            "Encounter.hospitalization",
        ],
    ),
    (
        "billing",
        &[
            "Patient.telecom",
            "Patient.contact",
            "Patient.photo",
            "Patient.communication",
            "Patient.maritalStatus",
            "Encounter.reasonCode",
            "Encounter.reasonReference",
        ],
    ),
];

/// The elements each role may not see, as `Type.element` (a top-level element).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementMasks {
    masks: Vec<(String, Vec<String>)>,
}

impl Default for ElementMasks {
    fn default() -> ElementMasks {
        ElementMasks {
            masks: DEFAULT_ELEMENT_MASKS
                .iter()
                .map(|(role, paths)| {
                    (
                        role.to_string(),
                        paths.iter().map(|p| p.to_string()).collect(),
                    )
                })
                .collect(),
        }
    }
}

impl ElementMasks {
    /// The built-in masks with `overrides` replacing or adding roles. A path is
    /// `Type.element`, where `is_element(type, element)` says the element exists.
    pub fn with_overrides<'a>(
        overrides: impl IntoIterator<Item = (&'a str, &'a [String])>,
        is_element: impl Fn(&str, &str) -> bool,
    ) -> Result<ElementMasks, String> {
        let mut masks = ElementMasks::default();
        for (role, paths) in overrides {
            for path in paths {
                let known = path
                    .split_once('.')
                    .is_some_and(|(ty, element)| !element.contains('.') && is_element(ty, element));
                if !known {
                    return Err(format!(
                        "role {role}: {path:?} is not Type.element of an R4 resource (top-level elements only)"
                    ));
                }
            }
            masks.masks.retain(|(name, _)| name != role);
            masks.masks.push((role.to_owned(), paths.to_vec()));
        }
        Ok(masks)
    }

    /// What a token with `roles` may not see: the elements every one of its roles that
    /// grants anything removes (a role that removes nothing lifts every removal).
    fn removed_for(&self, roles: &[String], ceilings: &RoleCeilings) -> Vec<String> {
        let mut granting = roles
            .iter()
            .filter(|role| ceilings.ceilings.iter().any(|(name, _)| name == *role));
        let Some(first) = granting.next() else {
            return Vec::new();
        };
        let of = |role: &String| -> Vec<String> {
            self.masks
                .iter()
                .find(|(name, _)| name == role)
                .map(|(_, paths)| paths.clone())
                .unwrap_or_default()
        };
        let mut removed = of(first);
        for role in granting {
            let theirs = of(role);
            removed.retain(|path| theirs.contains(path));
        }
        removed
    }
}

/// Which protected labels each role may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelGrants {
    grants: Vec<(String, Vec<&'static str>)>,
}

impl Default for LabelGrants {
    fn default() -> LabelGrants {
        LabelGrants {
            grants: DEFAULT_LABEL_GRANTS
                .iter()
                .map(|(role, codes)| (role.to_string(), codes.to_vec()))
                .collect(),
        }
    }
}

impl LabelGrants {
    /// The built-in grants with `overrides` replacing or adding roles (each role and the
    /// codes of [`PROTECTED_LABELS`] it may see). An unknown code is an error.
    pub fn with_overrides<'a>(
        overrides: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ) -> Result<LabelGrants, String> {
        let mut grants = LabelGrants::default();
        for (role, codes) in overrides {
            let mut known = Vec::new();
            for code in codes {
                let Some(label) = PROTECTED_LABELS.iter().find(|l| l.code == code) else {
                    return Err(format!(
                        "role {role}: {code:?} is not a protected label (one of {})",
                        PROTECTED_LABELS
                            .iter()
                            .map(|l| l.code)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                };
                known.push(label.code);
            }
            grants.grants.retain(|(name, _)| name != role);
            grants.grants.push((role.to_owned(), known));
        }
        Ok(grants)
    }

    /// The protected labels none of `roles` is granted.
    pub fn hidden_from(&self, roles: &[String]) -> Vec<SecurityLabel> {
        PROTECTED_LABELS
            .iter()
            .filter(|label| {
                !self
                    .grants
                    .iter()
                    .any(|(role, codes)| roles.contains(role) && codes.contains(&label.code))
            })
            .cloned()
            .collect()
    }
}

/// A need-to-know limit. The hub finds the patients inside the access's unit (from
/// encounters, care teams, departments and open break-the-glass grants) and limits reads,
/// searches, includes and writes to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CareOf {
    /// The token's subject (`Practitioner/{id}` has care relationships; any subject may
    /// hold break-the-glass grants).
    pub subject: String,
    /// Days after an encounter or a care team ends during which it still counts.
    pub window_days: u32,
    /// Types open without a relationship (see [`NeedToKnow::open_types`]).
    pub open_types: Vec<String>,
    /// The patients found, filled in by the hub inside the unit; `None` until then.
    pub patients: Option<Vec<String>>,
    /// For a read by id, filled in by the hub: that resource, whether it is in care, and
    /// its patients, so that neither the read's check nor its audit record looks again.
    pub checked: Option<CheckedRead>,
}

/// The resource of a read by id, as the hub found it inside the read's unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRead {
    pub resource_type: String,
    pub id: String,
    /// Whether one of its patients is in care (or it is no patient's data).
    pub in_care: bool,
    /// Every patient whose compartment it is in, in care or not: the audit record of the
    /// read names them all.
    pub patients: Vec<String>,
}

impl Mask {
    pub fn is_empty(&self) -> bool {
        self.remove_elements.is_empty()
            && self.patient_compartment.is_none()
            && self.care_of.is_none()
            && self.hidden_labels.is_empty()
            && self.query_constraints.is_empty()
    }
}

/// Who needs a care relationship to see a patient's data, and who may break the glass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedToKnow {
    /// Roles whose access to patient data needs a care relationship (a token holding any
    /// other role that grants the same access is not limited by it).
    pub roles: Vec<String>,
    /// Days after an encounter ends during which its participants (and its department)
    /// keep access to the patient.
    pub window_days: u32,
    /// Roles that may break the glass.
    pub break_glass_roles: Vec<String>,
    /// How long a broken glass opens the patient, hours.
    pub break_glass_hours: u32,
    /// Resource types open without a relationship: finding a patient (to admit them, or to
    /// break the glass) needs their demographics.
    pub open_types: Vec<String>,
}

impl Default for NeedToKnow {
    fn default() -> NeedToKnow {
        NeedToKnow {
            roles: vec!["clinician".to_owned(), "nurse".to_owned()],
            window_days: 30,
            break_glass_roles: vec!["clinician".to_owned(), "nurse".to_owned()],
            break_glass_hours: 8,
            open_types: vec!["Patient".to_owned()],
        }
    }
}

/// The answer of the policy decision point.
// One decision per request, moved once: boxing the mask would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Permit { mask: Mask },
    Deny { reason: DenyReason },
}

/// Why an action was denied. The front door maps these to 401 or 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// No credentials: authenticate first (401).
    Unauthenticated,
    /// Authenticated, but not allowed (403).
    Forbidden(String),
}

/// The most each role may do, as SMART scopes: a token's scopes are cut down to these.
/// Built in for now (a policy file comes with need-to-know); roles not listed get nothing.
#[derive(Debug, Clone)]
pub struct RoleCeilings {
    ceilings: Vec<(String, ScopeSet)>,
}

/// The built-in ceilings: clinical roles read and write clinical data, administrative roles
/// only what their work needs; `admin`, `researcher` and `security` no clinical data at all
/// through the FHIR API (their tools come with later issues).
pub const DEFAULT_ROLE_CEILINGS: &[(&str, &str)] = &[
    ("clinician", "user/*.cruds"),
    ("nurse", "user/*.crus"),
    (
        "reception",
        "user/Patient.crus user/Encounter.crus user/Appointment.crus user/Coverage.crus \
         user/RelatedPerson.crus user/Organization.rs user/Practitioner.rs \
         user/PractitionerRole.rs user/Location.rs",
    ),
    (
        "billing",
        "user/Patient.rs user/Encounter.rs user/Coverage.crus user/Claim.crus \
         user/ExplanationOfBenefit.crus user/Organization.rs user/Practitioner.rs",
    ),
    (
        "dpo",
        "user/AuditEvent.rs user/Consent.crus user/Provenance.rs user/Patient.rs",
    ),
    // The security officer investigates through the audit trail, not the clinical record.
    ("security", "user/AuditEvent.rs"),
    ("integration", "system/*.cruds"),
    // HL7 v2 senders (admissions, labs): what the v2-to-FHIR mapping writes, nothing else.
    (
        "hl7-interface",
        "system/Patient.crus system/Encounter.crus system/Practitioner.crus \
         system/Location.crus system/Observation.crus system/DiagnosticReport.crus",
    ),
    // A patient (or their app) reads their own record: with `patient/` scopes and the
    // token's `patient` context only (see `decide_patient_context`).
    ("patient", "patient/*.rs"),
];

impl Default for RoleCeilings {
    fn default() -> RoleCeilings {
        RoleCeilings {
            ceilings: DEFAULT_ROLE_CEILINGS
                .iter()
                .map(|(role, scopes)| {
                    let scopes = scopes.split_whitespace().collect::<Vec<_>>().join(" ");
                    let parsed = ScopeSet::parse(&scopes, |_| true)
                        .expect("the built-in ceilings are within the limits");
                    (role.to_string(), parsed)
                })
                .collect(),
        }
    }
}

impl RoleCeilings {
    /// The built-in ceilings, with `overrides` replacing or adding roles: each a role name
    /// and its ceiling as SMART scopes (an empty string: the role gets nothing). A scope
    /// that does not parse is an error, never silently dropped.
    pub fn with_overrides<'a>(
        overrides: impl IntoIterator<Item = (&'a str, &'a str)>,
        is_resource_type: impl Fn(&str) -> bool + Copy,
    ) -> Result<RoleCeilings, String> {
        let mut ceilings = RoleCeilings::default();
        for (role, scopes) in overrides {
            if role.is_empty()
                || !role
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c))
            {
                return Err(format!("role {role:?}: letters, digits and - _ : . only"));
            }
            let parsed = ScopeSet::parse(scopes, is_resource_type)
                .map_err(|e| format!("role {role}: {e}"))?;
            if let Some((token, reason)) = parsed.invalid().next() {
                return Err(format!(
                    "role {role}: {token:?} is not a valid SMART scope: {reason}"
                ));
            }
            ceilings.ceilings.retain(|(name, _)| name != role);
            ceilings.ceilings.push((role.to_owned(), parsed));
        }
        Ok(ceilings)
    }

    /// The grant of the most generous of `roles` (unknown roles grant nothing).
    fn grants(
        &self,
        roles: &[String],
        context: ScopeContext,
        resource_type: &str,
        permission: Permission,
    ) -> Grant {
        let mut best = Grant::Denied;
        for (role, ceiling) in &self.ceilings {
            if roles.iter().any(|r| r == role) {
                match ceiling.grants(context, resource_type, permission) {
                    Grant::Allowed => return Grant::Allowed,
                    Grant::Denied => {}
                    constrained => best = constrained,
                }
            }
        }
        best
    }
}

/// The policy decision point.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    ceilings: RoleCeilings,
    need_to_know: NeedToKnow,
    labels: LabelGrants,
    elements: ElementMasks,
}

impl Policy {
    /// A policy with these role ceilings (the default: [`DEFAULT_ROLE_CEILINGS`]).
    pub fn with_ceilings(ceilings: RoleCeilings) -> Policy {
        Policy {
            ceilings,
            need_to_know: NeedToKnow::default(),
            labels: LabelGrants::default(),
            elements: ElementMasks::default(),
        }
    }

    /// The same policy with these element masks.
    pub fn with_element_masks(mut self, elements: ElementMasks) -> Policy {
        self.elements = elements;
        self
    }

    /// The same policy with these security label grants.
    pub fn with_labels(mut self, labels: LabelGrants) -> Policy {
        self.labels = labels;
        self
    }

    /// The same policy with these need-to-know rules.
    pub fn with_need_to_know(mut self, need_to_know: NeedToKnow) -> Policy {
        self.need_to_know = need_to_know;
        self
    }

    pub fn need_to_know(&self) -> &NeedToKnow {
        &self.need_to_know
    }

    pub fn decide(&self, principal: &Principal, action: Action, target: &Target) -> Decision {
        match principal.kind {
            PrincipalKind::Development | PrincipalKind::LocalOperator => Decision::Permit {
                mask: Mask::default(),
            },
            PrincipalKind::Anonymous => Decision::Deny {
                reason: DenyReason::Unauthenticated,
            },
            PrincipalKind::Token => match &principal.access {
                Some(access) => {
                    match self.decide_token(&principal.subject, access, action, target) {
                        Decision::Permit { mut mask } => {
                            mask.hidden_labels = self.labels.hidden_from(&access.roles);
                            mask.remove_elements =
                                self.elements.removed_for(&access.roles, &self.ceilings);
                            Decision::Permit { mask }
                        }
                        denied => denied,
                    }
                }
                None => Decision::Deny {
                    reason: DenyReason::Unauthenticated,
                },
            },
        }
    }

    fn decide_token(
        &self,
        subject: &str,
        access: &TokenAccess,
        action: Action,
        target: &Target,
    ) -> Decision {
        let forbidden = |why: String| Decision::Deny {
            reason: DenyReason::Forbidden(why),
        };
        let permission = match action {
            Action::Read | Action::VRead => Permission::Read,
            Action::Create => Permission::Create,
            Action::Update | Action::Patch => Permission::Update,
            Action::Delete => Permission::Delete,
            // A history of one resource reads it; of a type or the system, it lists.
            Action::History if target.id.is_some() => Permission::Read,
            Action::Search | Action::History => Permission::Search,
            // Each entry of a Bundle is decided on its own by the hub.
            Action::Bundle => {
                return Decision::Permit {
                    mask: Mask::default(),
                };
            }
            Action::Everything => return self.decide_everything(subject, access, target),
            Action::BreakGlass => {
                return if self.has_role(access, &self.need_to_know.break_glass_roles) {
                    Decision::Permit {
                        mask: Mask::default(),
                    }
                } else {
                    forbidden(format!(
                        "breaking the glass needs one of the roles {}",
                        self.need_to_know.break_glass_roles.join(", ")
                    ))
                };
            }
            Action::ErasePatient => {
                return if access.roles.iter().any(|r| r == "dpo") {
                    Decision::Permit {
                        mask: Mask::default(),
                    }
                } else {
                    forbidden("erasing a patient needs the dpo role".to_owned())
                };
            }
            Action::ReviewBreakGlass => {
                return if access.roles.iter().any(|r| r == "dpo" || r == "security") {
                    Decision::Permit {
                        mask: Mask::default(),
                    }
                } else {
                    forbidden("break-the-glass reviews need the dpo or security role".to_owned())
                };
            }
            Action::Import => {
                return forbidden("import is for the hub's operator (hygie import)".to_owned());
            }
            Action::AccessLog => {
                let own = access.roles.iter().any(|r| r == "patient")
                    && access.patient.is_some()
                    && access.patient == target.id;
                return if own || access.roles.iter().any(|r| r == "dpo") {
                    Decision::Permit {
                        mask: Mask::default(),
                    }
                } else {
                    forbidden(
                        "a patient's access log is for the patient themself (a patient token with that patient's context) and for the dpo role"
                            .to_owned(),
                    )
                };
            }
            Action::Revoke | Action::ReloadPolicy | Action::ManageKeys => {
                return if access.roles.iter().any(|r| r == "admin") {
                    Decision::Permit {
                        mask: Mask::default(),
                    }
                } else {
                    forbidden(format!(
                        "{} needs the admin role",
                        match action {
                            Action::Revoke => "revocation",
                            Action::ReloadPolicy => "reloading the policy",
                            _ => "managing the token signing keys",
                        }
                    ))
                };
            }
        };
        // The audit trail is evidence: only the hub writes it, and only those who watch over
        // accesses read it, whatever a broad scope (`user/*.rs`) would otherwise grant.
        if target.resource_type.as_deref() == Some(AUDIT_EVENT) {
            if permission != Permission::Read && permission != Permission::Search {
                return forbidden("AuditEvents are written by the hub alone".to_owned());
            }
            if !access.roles.iter().any(|r| r == "dpo" || r == "security") {
                return forbidden(
                    "the audit trail is read by the dpo and security roles; a patient reads their own access log with Patient/{id}/$access-log"
                        .to_owned(),
                );
            }
        }
        let Some(resource_type) = target.resource_type.as_deref() else {
            return forbidden(format!(
                "{} across every resource type needs a scope on each type: not granted to tokens",
                action.interaction_code()
            ));
        };
        let needed = format!("{}.{}", resource_type, permission.letter());
        // A patient's own token only ever reaches that patient's compartment: its user/ and
        // system/ scopes, if any, count for nothing.
        let is_patient = access.roles.iter().any(|r| r == "patient");
        // system/ first: a grant there is unlimited by need-to-know, a user/ one may not be.
        let contexts: &[ScopeContext] = if is_patient {
            &[]
        } else {
            &[ScopeContext::System, ScopeContext::User]
        };
        let mut refusal = None;
        for &context in contexts {
            let by_scope = access.scopes.grants(context, resource_type, permission);
            if by_scope.is_denied() {
                continue;
            }
            let by_role = self
                .ceilings
                .grants(&access.roles, context, resource_type, permission);
            match (by_scope, by_role) {
                (_, Grant::Denied) => {
                    refusal.get_or_insert(format!(
                        "the token's roles ({}) do not allow {context}/{needed}",
                        if access.roles.is_empty() {
                            "none".to_owned()
                        } else {
                            access.roles.join(", ")
                        }
                    ));
                }
                (by_scope, by_role) => {
                    return Decision::Permit {
                        mask: Mask {
                            care_of: self.care_of(
                                subject,
                                access,
                                context,
                                Some((resource_type, permission)),
                            ),
                            query_constraints: [by_scope, by_role]
                                .into_iter()
                                .filter_map(|grant| match grant {
                                    Grant::Constrained(constraints) => Some(constraints),
                                    _ => None,
                                })
                                .collect(),
                            ..Mask::default()
                        },
                    };
                }
            }
        }
        if let Some(why) = refusal {
            return forbidden(why);
        }
        if let Some(decision) =
            self.decide_patient_context(subject, access, action, target, permission)
        {
            return decision;
        }
        forbidden(format!(
            "the token's scopes do not grant user/{needed} (nor system/{needed}, nor patient/{needed} with a patient context)"
        ))
    }

    /// A `patient/` scope: the same permission, limited to the compartment of the token's
    /// `patient` (the hub checks reads, searches, one resource's history, and what a write
    /// replaces and produces).
    fn decide_patient_context(
        &self,
        subject: &str,
        access: &TokenAccess,
        action: Action,
        target: &Target,
        permission: Permission,
    ) -> Option<Decision> {
        let resource_type = target.resource_type.as_deref()?;
        let by_scope = access
            .scopes
            .grants(ScopeContext::Patient, resource_type, permission);
        if by_scope.is_denied() {
            return None;
        }
        let forbidden = |why: String| {
            Some(Decision::Deny {
                reason: DenyReason::Forbidden(why),
            })
        };
        let Some(patient) = &access.patient else {
            return forbidden("patient/ scopes need the token's patient launch context".to_owned());
        };
        // A history across resources mixes patients: one resource's history only.
        if action == Action::History && target.id.is_none() {
            return forbidden(
                "under a patient/ scope, history is one resource's: ask for Type/id/_history"
                    .to_owned(),
            );
        }
        let roles_allow = |context| {
            matches!(
                self.ceilings
                    .grants(&access.roles, context, resource_type, permission),
                Grant::Allowed
            )
        };
        if !roles_allow(ScopeContext::User) && !roles_allow(ScopeContext::Patient) {
            return forbidden(format!(
                "the token's roles do not allow {resource_type}.{}",
                permission.letter()
            ));
        }
        Some(Decision::Permit {
            mask: Mask {
                patient_compartment: Some(patient.clone()),
                // A clinician's app launched on a patient still needs a care relationship.
                care_of: self.care_of(
                    subject,
                    access,
                    ScopeContext::User,
                    Some((resource_type, permission)),
                ),
                query_constraints: match by_scope {
                    Grant::Constrained(constraints) => vec![constraints],
                    _ => Vec::new(),
                },
                ..Mask::default()
            },
        })
    }

    /// `$everything` reaches every type of the patient compartment: it needs read and
    /// search on every type (`*`), unconstrained, by scope and by role.
    /// Whether the token holds one of `roles`.
    fn has_role(&self, access: &TokenAccess, roles: &[String]) -> bool {
        access.roles.iter().any(|r| roles.contains(r))
    }

    /// The need-to-know limit of a permitted user/ access, if one applies: the token's
    /// subject must have a care relationship with the patient, unless another of its roles
    /// (not subject to need-to-know) grants the same access. The hub lets open types
    /// through, not what they lead to.
    /// `reached`: the type and permission, or `None` for the whole compartment.
    fn care_of(
        &self,
        subject: &str,
        access: &TokenAccess,
        context: ScopeContext,
        reached: Option<(&str, Permission)>,
    ) -> Option<CareOf> {
        // Set on open types too: what hangs off them (`_has`, `_revinclude`) is limited.
        let rules = &self.need_to_know;
        if context != ScopeContext::User || !self.has_role(access, &rules.roles) {
            return None;
        }
        let unlimited: Vec<String> = access
            .roles
            .iter()
            .filter(|r| !rules.roles.contains(r))
            .cloned()
            .collect();
        let granted_otherwise = match reached {
            Some((resource_type, permission)) => matches!(
                self.ceilings
                    .grants(&unlimited, context, resource_type, permission),
                Grant::Allowed
            ),
            None => self.ceilings.ceilings.iter().any(|(role, ceiling)| {
                unlimited.contains(role)
                    && ceiling.clinical().any(|s| {
                        s.context() == context
                            && matches!(s.resource(), ScopeResource::Any)
                            && s.query().is_none()
                            && s.permissions().contains(Permission::Read)
                    })
            }),
        };
        (!granted_otherwise).then(|| CareOf {
            subject: subject.to_owned(),
            window_days: rules.window_days,
            open_types: rules.open_types.clone(),
            patients: None,
            checked: None,
        })
    }

    fn decide_everything(&self, subject: &str, access: &TokenAccess, target: &Target) -> Decision {
        let is_patient = access.roles.iter().any(|r| r == "patient");
        let own_record = access.patient.is_some() && access.patient == target.id;
        let contexts: &[ScopeContext] = match (is_patient, own_record) {
            (true, true) => &[ScopeContext::Patient],
            (true, false) => &[],
            (false, true) => &[
                ScopeContext::User,
                ScopeContext::System,
                ScopeContext::Patient,
            ],
            (false, false) => &[ScopeContext::User, ScopeContext::System],
        };
        let wildcard = |set: &ScopeSet, contexts: &[ScopeContext]| {
            set.clinical().any(|s| {
                contexts.contains(&s.context())
                    && matches!(s.resource(), ScopeResource::Any)
                    && s.query().is_none()
                    && s.permissions().contains(Permission::Read)
                    && s.permissions().contains(Permission::Search)
            })
        };
        for &context in contexts {
            // A patient/ scope is capped by a role's user/ (or patient/) ceiling.
            let ceiling_contexts: &[ScopeContext] = if context == ScopeContext::Patient {
                &[ScopeContext::User, ScopeContext::Patient]
            } else {
                std::slice::from_ref(&context)
            };
            let by_role = self.ceilings.ceilings.iter().any(|(role, ceiling)| {
                access.roles.iter().any(|r| r == role) && wildcard(ceiling, ceiling_contexts)
            });
            if wildcard(&access.scopes, &[context]) && by_role {
                return Decision::Permit {
                    mask: Mask {
                        care_of: self.care_of(subject, access, context, None),
                        ..Mask::default()
                    },
                };
            }
        }
        Decision::Deny {
            reason: DenyReason::Forbidden(
                "$everything needs */.rs in both the token's scopes and its role (user/, system/, or patient/ for the token's own patient)"
                    .to_owned(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_ACTIONS: [Action; 18] = [
        Action::Read,
        Action::VRead,
        Action::Create,
        Action::Update,
        Action::Patch,
        Action::Delete,
        Action::Search,
        Action::Everything,
        Action::History,
        Action::Bundle,
        Action::Import,
        Action::Revoke,
        Action::BreakGlass,
        Action::ReviewBreakGlass,
        Action::ReloadPolicy,
        Action::ManageKeys,
        Action::AccessLog,
        Action::ErasePatient,
    ];

    fn bearer(roles: &[&str], scopes: &str) -> Principal {
        Principal::token(
            "Practitioner/p1",
            TokenAccess {
                token_id: None,
                roles: roles.iter().map(|r| r.to_string()).collect(),
                scopes: ScopeSet::parse(scopes, |t| {
                    t.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                })
                .unwrap(),
                patient: None,
            },
        )
    }

    fn permitted(policy: &Policy, principal: &Principal, action: Action, target: &Target) -> bool {
        matches!(
            policy.decide(principal, action, target),
            Decision::Permit { .. }
        )
    }

    #[test]
    fn a_token_gets_the_intersection_of_its_scopes_and_its_role() {
        let policy = Policy::default();
        let observation = Target::instance("Observation", "o1");
        let observations = Target::resource_type("Observation");
        let clinician = bearer(&["clinician"], "user/Observation.rs");
        assert!(permitted(&policy, &clinician, Action::Read, &observation));
        assert!(permitted(
            &policy,
            &clinician,
            Action::Search,
            &observations
        ));
        assert!(permitted(
            &policy,
            &clinician,
            Action::History,
            &observation
        ));
        // The scope does not grant writes, whatever the role allows.
        for action in [
            Action::Create,
            Action::Update,
            Action::Patch,
            Action::Delete,
        ] {
            assert!(
                !permitted(&policy, &clinician, action, &observation),
                "{action:?}"
            );
        }
        // The scope names Observation only.
        assert!(!permitted(
            &policy,
            &clinician,
            Action::Read,
            &Target::instance("Condition", "c")
        ));
        // The role caps a broad scope: reception reads patients, not observations.
        let reception = bearer(&["reception"], "user/*.cruds");
        assert!(permitted(
            &policy,
            &reception,
            Action::Read,
            &Target::instance("Patient", "p")
        ));
        assert!(permitted(
            &policy,
            &reception,
            Action::Update,
            &Target::instance("Patient", "p")
        ));
        assert!(!permitted(&policy, &reception, Action::Read, &observation));
        assert!(!permitted(
            &policy,
            &reception,
            Action::Delete,
            &Target::instance("Patient", "p")
        ));
        // No role, or an unknown one: nothing.
        for roles in [&[][..], &["superuser"][..]] {
            let nobody = bearer(roles, "user/*.cruds");
            assert!(
                !permitted(&policy, &nobody, Action::Read, &observation),
                "{roles:?}"
            );
        }
        // v1 `.read` reads and searches, and does not write.
        let v1 = bearer(&["nurse"], "user/Observation.read");
        assert!(permitted(&policy, &v1, Action::Search, &observations));
        assert!(!permitted(&policy, &v1, Action::Create, &observations));
        // `r` without `s` does not search.
        let read_only = bearer(&["clinician"], "user/Observation.r");
        assert!(!permitted(
            &policy,
            &read_only,
            Action::Search,
            &observations
        ));
    }

    #[test]
    fn what_is_not_enforced_yet_is_denied() {
        let policy = Policy::default();
        let observations = Target::resource_type("Observation");
        // Query-constrained scopes: permitted with the constraint for the hub to apply.
        let lab = bearer(&["clinician"], "user/Observation.rs?category=laboratory");
        match policy.decide(&lab, Action::Search, &observations) {
            Decision::Permit { mask } => {
                assert_eq!(mask.query_constraints.len(), 1);
                assert_eq!(
                    mask.query_constraints[0][0].params(),
                    [("category".to_owned(), "laboratory".to_owned())]
                );
            }
            other => panic!("{other:?}"),
        }
        // A constrained role ceiling and a constrained scope: both apply.
        let ceilings = RoleCeilings::with_overrides(
            [("lab-tech", "user/Observation.rs?status=final")],
            |_| true,
        )
        .unwrap();
        let both = bearer(&["lab-tech"], "user/Observation.rs?category=laboratory");
        match Policy::with_ceilings(ceilings).decide(&both, Action::Read, &observations) {
            Decision::Permit { mask } => assert_eq!(mask.query_constraints.len(), 2),
            other => panic!("{other:?}"),
        }
        // patient/ scopes without a patient context: nothing.
        let app = bearer(&["clinician"], "patient/*.rs");
        assert!(!permitted(
            &policy,
            &app,
            Action::Read,
            &Target::instance("Patient", "p")
        ));
        // System-wide searches and history, and import.
        let broad = bearer(&["clinician"], "user/*.cruds");
        assert!(!permitted(
            &policy,
            &broad,
            Action::History,
            &Target::system()
        ));
        assert!(!permitted(
            &policy,
            &broad,
            Action::Import,
            &Target::system()
        ));
        // $everything needs `*` read and search in both scope and role.
        let patient = Target::instance("Patient", "p");
        assert!(permitted(&policy, &broad, Action::Everything, &patient));
        let narrow = bearer(&["clinician"], "user/Patient.rs user/Observation.rs");
        assert!(!permitted(&policy, &narrow, Action::Everything, &patient));
        let reception = bearer(&["reception"], "user/*.rs");
        assert!(!permitted(
            &policy,
            &reception,
            Action::Everything,
            &patient
        ));
        // A system scope needs a system role.
        let service = bearer(&["integration"], "system/Observation.cruds");
        assert!(permitted(&policy, &service, Action::Create, &observations));
        let user_role = bearer(&["clinician"], "system/Observation.cruds");
        assert!(!permitted(
            &policy,
            &user_role,
            Action::Create,
            &observations
        ));
    }

    fn patient_token(roles: &[&str], scopes: &str, patient: &str) -> Principal {
        let mut principal = bearer(roles, scopes);
        principal.access.as_mut().unwrap().patient = Some(patient.to_owned());
        principal
    }

    #[test]
    fn a_patient_scope_is_limited_to_the_patients_compartment() {
        let policy = Policy::default();
        let mine = patient_token(&["patient"], "patient/*.rs", "p1");
        let decision = policy.decide(&mine, Action::Search, &Target::resource_type("Observation"));
        assert_eq!(
            decision,
            Decision::Permit {
                mask: Mask {
                    patient_compartment: Some("p1".to_owned()),
                    ..Mask::default()
                }
            },
            "searches carry the compartment for the hub to apply"
        );
        assert!(matches!(
            policy.decide(&mine, Action::Read, &Target::instance("Observation", "o")),
            Decision::Permit { mask } if mask.patient_compartment.as_deref() == Some("p1")
        ));
        // A patient's role reads: no writes, even with write scopes.
        let writer = patient_token(&["patient"], "patient/*.cruds", "p1");
        for action in [Action::Create, Action::Update, Action::Delete] {
            assert!(
                !permitted(
                    &policy,
                    &writer,
                    action,
                    &Target::instance("Observation", "o")
                ),
                "{action:?}"
            );
        }
        // One resource's history, in the compartment; never a type's.
        assert!(matches!(
            policy.decide(&writer, Action::History, &Target::instance("Observation", "o")),
            Decision::Permit { mask } if mask.patient_compartment.as_deref() == Some("p1")
        ));
        assert!(!permitted(
            &policy,
            &writer,
            Action::History,
            &Target::resource_type("Observation")
        ));
        // A clinician's app in a patient context writes within that compartment.
        let app = patient_token(&["clinician"], "patient/*.cruds", "p1");
        assert!(matches!(
            policy.decide(&app, Action::Create, &Target::resource_type("Observation")),
            Decision::Permit { mask } if mask.patient_compartment.as_deref() == Some("p1")
        ));
        // A patient's user/ scopes count for nothing.
        let sneaky = patient_token(&["patient"], "user/*.cruds", "p1");
        assert!(!permitted(
            &policy,
            &sneaky,
            Action::Read,
            &Target::instance("Observation", "o")
        ));
        // $everything: their own record only.
        assert!(permitted(
            &policy,
            &mine,
            Action::Everything,
            &Target::instance("Patient", "p1")
        ));
        assert!(!permitted(
            &policy,
            &mine,
            Action::Everything,
            &Target::instance("Patient", "p2")
        ));
        // A clinician's app launched for a patient: the same compartment limit.
        let app = patient_token(&["clinician"], "patient/Observation.rs", "p7");
        assert!(matches!(
            policy.decide(&app, Action::Search, &Target::resource_type("Observation")),
            Decision::Permit { mask } if mask.patient_compartment.as_deref() == Some("p7")
        ));
    }

    #[test]
    fn role_ceilings_can_be_replaced_or_added_and_bad_ones_are_refused() {
        let is_type = |t: &str| t.chars().next().is_some_and(|c| c.is_ascii_uppercase());
        let ceilings = RoleCeilings::with_overrides(
            [
                ("clinician", "user/Patient.rs"),
                ("pharmacist", "user/MedicationRequest.rs"),
            ],
            is_type,
        )
        .unwrap();
        let policy = Policy::with_ceilings(ceilings);
        let clinician = bearer(&["clinician"], "user/*.cruds");
        assert!(permitted(
            &policy,
            &clinician,
            Action::Read,
            &Target::instance("Patient", "p")
        ));
        assert!(
            !permitted(
                &policy,
                &clinician,
                Action::Read,
                &Target::instance("Observation", "o")
            ),
            "narrowed"
        );
        let pharmacist = bearer(&["pharmacist"], "user/*.rs");
        assert!(permitted(
            &policy,
            &pharmacist,
            Action::Search,
            &Target::resource_type("MedicationRequest")
        ));
        // Untouched roles keep their default.
        let nurse = bearer(&["nurse"], "user/*.rs");
        assert!(permitted(
            &policy,
            &nurse,
            Action::Read,
            &Target::instance("Observation", "o")
        ));
        assert!(
            RoleCeilings::with_overrides([("clinician", "user/Observation.sr")], is_type).is_err()
        );
        assert!(RoleCeilings::with_overrides([("bad role", "user/*.rs")], is_type).is_err());
        // An empty ceiling takes everything away.
        let none = Policy::with_ceilings(
            RoleCeilings::with_overrides([("clinician", "")], is_type).unwrap(),
        );
        assert!(!permitted(
            &none,
            &clinician,
            Action::Read,
            &Target::instance("Patient", "p")
        ));
    }

    fn care_of(
        policy: &Policy,
        principal: &Principal,
        action: Action,
        target: &Target,
    ) -> Option<String> {
        match policy.decide(principal, action, target) {
            Decision::Permit { mask } => mask.care_of.map(|care| care.subject),
            Decision::Deny { reason } => panic!("denied: {reason:?}"),
        }
    }

    #[test]
    fn clinicians_and_nurses_need_a_care_relationship_for_patient_data() {
        let policy = Policy::default();
        let observation = Target::instance("Observation", "o1");
        let observations = Target::resource_type("Observation");
        let clinician = bearer(&["clinician"], "user/*.cruds");
        let nurse = bearer(&["nurse"], "user/*.crus");
        for (who, action, target) in [
            (&clinician, Action::Read, &observation),
            (&clinician, Action::Search, &observations),
            (&clinician, Action::Update, &observation),
            (
                &clinician,
                Action::Everything,
                &Target::instance("Patient", "p"),
            ),
            (&nurse, Action::Read, &observation),
        ] {
            assert_eq!(
                care_of(&policy, who, action, target).as_deref(),
                Some("Practitioner/p1"),
                "{action:?} {target:?}"
            );
        }
        // Finding a patient is open (demographics, to admit them or to break the glass): the
        // limit comes with the open types, for what a Patient search reaches beyond them.
        match policy.decide(
            &clinician,
            Action::Search,
            &Target::resource_type("Patient"),
        ) {
            Decision::Permit { mask } => {
                assert_eq!(mask.care_of.unwrap().open_types, ["Patient"]);
            }
            other => panic!("{other:?}"),
        }
        // A system/ scope is no person's access; roles without need-to-know are not limited.
        let integration = bearer(&["integration"], "system/*.cruds");
        assert_eq!(
            care_of(&policy, &integration, Action::Read, &observation),
            None
        );
        let both = bearer(&["clinician", "integration"], "user/*.rs system/*.rs");
        assert_eq!(
            care_of(&policy, &both, Action::Read, &observation),
            None,
            "system/ grants it unlimited"
        );
        // Another role granting the same user/ access lifts the limit; one that does not, does not.
        let ceilings =
            RoleCeilings::with_overrides([("registrar", "user/Observation.rs")], |_| true).unwrap();
        let policy_with_registrar = Policy::with_ceilings(ceilings);
        let registrar_clinician = bearer(&["clinician", "registrar"], "user/*.rs");
        assert_eq!(
            care_of(
                &policy_with_registrar,
                &registrar_clinician,
                Action::Read,
                &observation
            ),
            None
        );
        assert_eq!(
            care_of(
                &policy_with_registrar,
                &registrar_clinician,
                Action::Read,
                &Target::instance("Condition", "c")
            )
            .as_deref(),
            Some("Practitioner/p1")
        );
        // The rules are configurable: a site may make nurses unlimited.
        let relaxed = Policy::default().with_need_to_know(NeedToKnow {
            roles: vec!["clinician".to_owned()],
            ..NeedToKnow::default()
        });
        assert_eq!(care_of(&relaxed, &nurse, Action::Read, &observation), None);
    }

    #[test]
    fn only_the_dpo_erases_a_patient() {
        let policy = Policy::default();
        let patient = Target::instance("Patient", "p");
        assert!(permitted(
            &policy,
            &bearer(&["dpo"], "user/AuditEvent.rs"),
            Action::ErasePatient,
            &patient
        ));
        for role in ["security", "admin", "clinician", "integration", "patient"] {
            assert!(
                !permitted(
                    &policy,
                    &bearer(&[role], "user/*.cruds system/*.cruds"),
                    Action::ErasePatient,
                    &patient
                ),
                "{role}"
            );
        }
    }

    #[test]
    fn only_the_allowed_roles_break_the_glass_and_only_reviewers_review() {
        let policy = Policy::default();
        let system = Target::system();
        for role in ["clinician", "nurse"] {
            assert!(
                permitted(
                    &policy,
                    &bearer(&[role], "user/*.rs"),
                    Action::BreakGlass,
                    &system
                ),
                "{role}"
            );
        }
        for role in [
            "reception",
            "billing",
            "dpo",
            "integration",
            "admin",
            "patient",
        ] {
            assert!(
                !permitted(
                    &policy,
                    &bearer(&[role], "user/*.cruds"),
                    Action::BreakGlass,
                    &system
                ),
                "{role}"
            );
        }
        for role in ["dpo", "security"] {
            assert!(
                permitted(
                    &policy,
                    &bearer(&[role], "user/AuditEvent.rs"),
                    Action::ReviewBreakGlass,
                    &system
                ),
                "{role}"
            );
        }
        for role in ["clinician", "nurse", "admin", "integration"] {
            assert!(
                !permitted(
                    &policy,
                    &bearer(&[role], "user/*.cruds"),
                    Action::ReviewBreakGlass,
                    &system
                ),
                "{role}"
            );
        }
        let none = Policy::default().with_need_to_know(NeedToKnow {
            break_glass_roles: vec![],
            ..NeedToKnow::default()
        });
        assert!(!permitted(
            &none,
            &bearer(&["clinician"], "user/*.rs"),
            Action::BreakGlass,
            &system
        ));
    }

    fn hidden_codes(policy: &Policy, principal: &Principal) -> Vec<&'static str> {
        match policy.decide(principal, Action::Read, &Target::instance("Patient", "x")) {
            Decision::Permit { mask } => mask.hidden_labels.iter().map(|l| l.code).collect(),
            Decision::Deny { reason } => panic!("denied: {reason:?}"),
        }
    }

    #[test]
    fn security_labels_are_hidden_from_roles_not_granted_them() {
        let policy = Policy::default();
        assert_eq!(
            hidden_codes(&policy, &bearer(&["clinician"], "user/*.rs")),
            ["V", "PSY", "HIV", "ETH", "GDIS", "STD"]
        );
        assert_eq!(
            hidden_codes(&policy, &bearer(&["reception"], "user/*.rs")),
            ["R", "V", "PSY", "HIV", "ETH", "GDIS", "STD"]
        );
        assert!(hidden_codes(&policy, &bearer(&["integration"], "system/*.rs")).is_empty());
        // Grants add up across roles; a site adds its specialists.
        let grants =
            LabelGrants::with_overrides([("psychiatrist", &["PSY".to_owned()][..])]).unwrap();
        let policy = Policy::default().with_labels(grants);
        assert_eq!(
            hidden_codes(
                &policy,
                &bearer(&["clinician", "psychiatrist"], "user/*.rs")
            ),
            ["V", "HIV", "ETH", "GDIS", "STD"]
        );
        // Unknown codes are refused, never silently ignored.
        assert!(LabelGrants::with_overrides([("x", &["SECRET".to_owned()][..])]).is_err());
        // The development principal and the operator see everything.
        for principal in [Principal::development(), Principal::local_operator("root")] {
            match policy.decide(&principal, Action::Read, &Target::instance("Patient", "x")) {
                Decision::Permit { mask } => assert!(mask.hidden_labels.is_empty()),
                other => panic!("{other:?}"),
            }
        }
    }

    fn removed(policy: &Policy, principal: &Principal) -> Vec<String> {
        match policy.decide(principal, Action::Read, &Target::instance("Patient", "x")) {
            Decision::Permit { mask } => mask.remove_elements,
            Decision::Deny { reason } => panic!("denied: {reason:?}"),
        }
    }

    #[test]
    fn each_role_gets_the_elements_its_work_needs() {
        let policy = Policy::default();
        assert!(
            removed(&policy, &bearer(&["reception"], "user/*.rs"))
                .contains(&"Encounter.diagnosis".to_owned())
        );
        assert!(
            removed(&policy, &bearer(&["billing"], "user/*.rs"))
                .contains(&"Patient.telecom".to_owned())
        );
        assert!(removed(&policy, &bearer(&["clinician"], "user/*.rs")).is_empty());
        // Several roles: only what all of them remove; a role granting nothing counts for nothing.
        assert_eq!(
            removed(&policy, &bearer(&["reception", "billing"], "user/*.rs")),
            ["Encounter.reasonCode", "Encounter.reasonReference"]
        );
        assert!(removed(&policy, &bearer(&["reception", "clinician"], "user/*.rs")).is_empty());
        assert_eq!(
            removed(&policy, &bearer(&["reception", "made-up"], "user/*.rs")),
            removed(&policy, &bearer(&["reception"], "user/*.rs"))
        );
        // Overrides are checked against the resource definitions.
        let is_element = |ty: &str, element: &str| ty == "Patient" && element == "telecom";
        let masks = ElementMasks::with_overrides(
            [("reception", &["Patient.telecom".to_owned()][..])],
            is_element,
        )
        .unwrap();
        let policy = Policy::default().with_element_masks(masks);
        assert_eq!(
            removed(&policy, &bearer(&["reception"], "user/*.rs")),
            ["Patient.telecom"]
        );
        for bad in ["Patient.nosuch", "Patient.name.family", "telecom"] {
            assert!(
                ElementMasks::with_overrides([("x", &[bad.to_owned()][..])], is_element).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn anonymous_is_denied_every_action() {
        let policy = Policy::default();
        for action in ALL_ACTIONS {
            for target in [
                Target::system(),
                Target::resource_type("Patient"),
                Target::instance("Observation", "x"),
            ] {
                assert_eq!(
                    policy.decide(&Principal::anonymous(), action, &target),
                    Decision::Deny {
                        reason: DenyReason::Unauthenticated
                    },
                    "{action:?} on {target:?}"
                );
            }
        }
    }

    #[test]
    fn administrative_actions_need_the_admin_role_whatever_the_scopes() {
        let policy = Policy::default();
        for action in [Action::Revoke, Action::ReloadPolicy, Action::ManageKeys] {
            for roles in [
                &["clinician"][..],
                &["dpo"],
                &["security"],
                &["integration"],
            ] {
                let decision = policy.decide(
                    &bearer(roles, "system/*.cruds user/*.cruds"),
                    action,
                    &Target::system(),
                );
                assert!(
                    matches!(decision, Decision::Deny { reason: DenyReason::Forbidden(ref why) } if why.contains("admin role")),
                    "{action:?} by {roles:?}: {decision:?}"
                );
            }
            assert!(permitted(
                &policy,
                &bearer(&["admin"], "user/*.rs"),
                action,
                &Target::system()
            ));
        }
    }

    #[test]
    fn the_audit_trail_is_read_by_dpo_and_security_only_and_written_by_nobody() {
        let policy = Policy::default();
        let search = Target::resource_type(AUDIT_EVENT);
        let one = Target::instance(AUDIT_EVENT, "7");
        for role in ["dpo", "security"] {
            let token = bearer(&[role], "user/AuditEvent.rs");
            assert!(
                permitted(&policy, &token, Action::Search, &search),
                "{role}"
            );
            assert!(permitted(&policy, &token, Action::Read, &one), "{role}");
        }
        // A wildcard scope and a clinical role do not open the audit trail.
        for role in ["clinician", "nurse", "integration", "admin", "reception"] {
            for scopes in ["user/*.cruds", "system/*.cruds user/*.cruds"] {
                let token = bearer(&[role], scopes);
                assert!(
                    !permitted(&policy, &token, Action::Search, &search),
                    "{role} {scopes}"
                );
                assert!(!permitted(&policy, &token, Action::Read, &one), "{role}");
            }
        }
        // Nobody writes it, not even its readers.
        for action in [
            Action::Create,
            Action::Update,
            Action::Patch,
            Action::Delete,
        ] {
            for role in ["dpo", "security", "admin", "integration"] {
                let token = bearer(&[role], "system/*.cruds user/*.cruds");
                let decision = policy.decide(&token, action, &one);
                assert!(
                    matches!(decision, Decision::Deny { reason: DenyReason::Forbidden(ref why) } if why.contains("hub alone")),
                    "{action:?} by {role}: {decision:?}"
                );
            }
        }
        // A patient's token reaches its compartment, but not the raw trail.
        let mut patient = bearer(&["patient"], "patient/*.rs");
        patient.access.as_mut().unwrap().patient = Some("p1".to_owned());
        assert!(!permitted(&policy, &patient, Action::Search, &search));
    }

    #[test]
    fn an_access_log_is_for_the_patient_themself_and_the_dpo() {
        let policy = Policy::default();
        let own = Target::instance("Patient", "p1");
        let other = Target::instance("Patient", "p2");
        let mut patient = bearer(&["patient"], "patient/*.rs");
        patient.access.as_mut().unwrap().patient = Some("p1".to_owned());
        assert!(permitted(&policy, &patient, Action::AccessLog, &own));
        assert!(!permitted(&policy, &patient, Action::AccessLog, &other));
        // A patient role without a launch context reaches no one's log.
        let no_context = bearer(&["patient"], "patient/*.rs");
        assert!(!permitted(&policy, &no_context, Action::AccessLog, &own));
        assert!(permitted(
            &policy,
            &bearer(&["dpo"], "user/AuditEvent.rs"),
            Action::AccessLog,
            &other
        ));
        for role in ["clinician", "security", "admin", "integration"] {
            let mut token = bearer(&[role], "system/*.cruds user/*.cruds");
            // A clinician's token with a patient context is not the patient.
            token.access.as_mut().unwrap().patient = Some("p1".to_owned());
            assert!(
                !permitted(&policy, &token, Action::AccessLog, &own),
                "{role}"
            );
        }
    }

    #[test]
    fn development_and_operator_are_permitted_without_mask() {
        let policy = Policy::default();
        for principal in [Principal::development(), Principal::local_operator("root")] {
            for action in ALL_ACTIONS {
                let decision = policy.decide(&principal, action, &Target::resource_type("Patient"));
                assert_eq!(
                    decision,
                    Decision::Permit {
                        mask: Mask::default()
                    }
                );
            }
        }
    }
}
