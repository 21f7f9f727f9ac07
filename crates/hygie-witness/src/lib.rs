//! A witness of Hygie's audit log: an independent process, run on another machine by
//! another administrator, that keeps the log honest. Each round it fetches the hub's latest
//! signed checkpoint (c2sp.org/tlog-checkpoint), verifies the log's signature with a pinned
//! key, checks with an RFC 9162 consistency proof that the tree only grew since the last
//! checkpoint it accepted, then cosigns it (c2sp.org/tlog-cosignature). A log that rolls
//! back, forks or rewrites history is caught with the evidence: two checkpoints it signed
//! that cannot both be true.
//!
//! - [`decide`]: the judgement, pure (given trust, the last accepted checkpoint, a served
//!   note and a proof: cosign or alarm);
//! - [`state`]: the state file and the key file (atomic writes, mode 0600);
//! - [`hub`]: the bounded HTTP client of the hub's `/audit` endpoints;
//! - [`run`]: the command line (`hygie audit witness`), rounds, the loop, exit codes.
//!
//! ```
//! use hygie_audit::checkpoint::{Checkpoint, Cosigner, NoteSigner};
//! use hygie_witness::decide::{self, Judgement, LogTrust};
//!
//! let (log, _) = NoteSigner::generate("hub.example/audit").unwrap();
//! let (witness, _) = Cosigner::generate("witness.example").unwrap();
//! let trust = LogTrust::new(log.verifier_key(), None).unwrap();
//! let served = Checkpoint::new("hub.example/audit", 3, [7; 32]).sign(&log).unwrap();
//!
//! let opened = decide::open(&trust, served.to_string().as_bytes()).unwrap();
//! assert_eq!(decide::judge(None, &opened), Judgement::FirstContact);
//! let cosigned = decide::cosign(&opened, &witness, 1_700_000_000).unwrap();
//! assert_eq!(cosigned.verify(&[witness.verifier_key()]).unwrap()[0].timestamp_s, Some(1_700_000_000));
//! ```
#![forbid(unsafe_code)]

pub mod decide;
pub mod hub;
pub mod run;
pub mod state;

pub use run::{Outcome, Witness, WitnessArgs, WitnessError, exit, run, run_with};
