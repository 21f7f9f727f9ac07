//! The HL7 v2 front door. Hospital systems (admissions, labs) send HL7 v2 messages over
//! MLLP; each one is checked (sender, version, processing id), mapped to ONE FHIR
//! transaction ([`mapping`]) and handed to the hub like any other request: decided by the
//! policy, audited under the sender's identity, sealed at rest. The acknowledgement `AA` is
//! sent only once the transaction has committed; a resend of the same message (same
//! sender, same MSH-10) gets the same acknowledgement and writes nothing.
#![forbid(unsafe_code)]

#[cfg(feature = "listener")]
pub mod client;
#[cfg(feature = "listener")]
pub mod listener;
pub mod mapping;
#[cfg(feature = "listener")]
pub mod settings;

#[cfg(feature = "listener")]
pub use listener::{Listener, serve};
pub use mapping::{Mapped, MappingSettings, Refusal, map_message};
#[cfg(feature = "listener")]
pub use settings::{ListenerSettings, Sender};
