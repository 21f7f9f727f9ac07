//! The policy decision point (PDP) of Hygie: every access to data is decided here, and
//! nowhere else.
//!
//! `decide(principal, action, target)` answers [`Decision::Permit`] with a [`Mask`] (what to
//! remove from the response) or [`Decision::Deny`] with a reason. This crate knows nothing
//! about HTTP, SQL or tokens: front doors turn credentials into a [`Principal`], the hub
//! calls [`Policy::decide`] before it touches the store.
//!
//! Today the policy knows two kinds of principals: the development principal that
//! `hygie serve --no-auth` gives every request (loopback only), which is permitted
//! everything, and the local operator running a CLI command on the hub's own data directory.
//! Anything else is denied: deny by default, until SMART scopes and roles land.
//!
//! [`scopes`] is the SMART App Launch 2.x scope language: [`ScopeSet::parse`] reads a
//! token's `scope` claim, [`ScopeSet::grants`] says what it allows on a resource type. The
//! policy will combine it with the principal once access tokens are verified.
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
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal {
            kind: PrincipalKind::Anonymous,
            subject: "anonymous".to_owned(),
        }
    }

    pub fn development() -> Principal {
        Principal {
            kind: PrincipalKind::Development,
            subject: "development (--no-auth)".to_owned(),
        }
    }

    pub fn local_operator(user: &str) -> Principal {
        Principal {
            kind: PrincipalKind::LocalOperator,
            subject: format!("cli:{user}"),
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
        }
    }

    /// Whether the action changes data.
    pub fn writes(self) -> bool {
        matches!(
            self,
            Action::Create | Action::Update | Action::Patch | Action::Delete | Action::Import
        )
    }
}

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

/// Elements to remove from what a permitted action returns. Empty today; roles will fill it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mask {
    /// FHIRPath-like element paths, e.g. `Patient.telecom`.
    pub remove_elements: Vec<String>,
}

impl Mask {
    pub fn is_empty(&self) -> bool {
        self.remove_elements.is_empty()
    }
}

/// The answer of the policy decision point.
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

/// The policy. Stateless today; it will hold the role table and consent rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {}

impl Policy {
    /// Decides whether `principal` may perform `action` on `target`. Deny by default.
    pub fn decide(&self, principal: &Principal, action: Action, target: &Target) -> Decision {
        let _ = (action, target);
        match principal.kind {
            PrincipalKind::Development | PrincipalKind::LocalOperator => Decision::Permit {
                mask: Mask::default(),
            },
            PrincipalKind::Anonymous => Decision::Deny {
                reason: DenyReason::Unauthenticated,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_ACTIONS: [Action; 11] = [
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
    ];

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
