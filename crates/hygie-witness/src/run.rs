//! A witness's rounds: the command line ([`WitnessArgs`]), a configured [`Witness`], one
//! round ([`Witness::run_once`]: fetch, judge, cosign, save, publish), and the loop with its
//! exit codes ([`run`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hygie_audit::checkpoint::{Checkpoint, Cosigner, Note, NoteError, VerifierKey};

use crate::decide::{self, Evidence, Judgement, LogTrust, Refusal};
use crate::hub::{HubClient, HubError, Posted};
use crate::state::{self, StateError, WitnessState};

/// Exit codes of a witness run.
pub mod exit {
    /// Every round succeeded (in a loop: it was stopped by a signal or `--rounds`).
    pub const OK: u8 = 0;
    /// A local problem: configuration, state or key file, writing `--out`. Not retried.
    pub const LOCAL_ERROR: u8 = 1;
    /// The hub could not be reached or gave no usable answer (network, HTTP status, size
    /// limit, a note that does not verify, a cosignature not delivered). In a loop: retried
    /// at the next round. (clap's usage errors are 2 as well.)
    pub const HUB_ERROR: u8 = 2;
    /// The log misbehaved: rollback, fork or unprovable growth, with the two signed
    /// checkpoints printed. Stops a loop: it must not be retried until it goes away.
    pub const MISBEHAVIOUR: u8 = 3;
}

/// The fewest and most seconds between two rounds of `--every`.
pub const EVERY_S_MIN: u64 = 1;
pub const EVERY_S_MAX: u64 = 86_400;
/// The default and largest time limit of one HTTP request, seconds.
pub const TIMEOUT_S_DEFAULT: u64 = 10;
pub const TIMEOUT_S_MAX: u64 = 300;
/// The largest `--ca-file` read.
pub const MAX_CA_FILE_BYTES: u64 = 1 << 20;
/// Mode of `--out`: a cosigned checkpoint is public.
pub const OUT_FILE_MODE: u32 = 0o644;

/// `hygie audit witness`: watch a hub's audit log from elsewhere, cosign each checkpoint
/// that extends the last one, and raise the alarm (exit 3, with the evidence) on a rollback
/// or a fork.
#[derive(clap::Args, Debug, Clone)]
pub struct WitnessArgs {
    /// The hub's base URL: https (plain http only to 127.0.0.0/8 or [::1]).
    #[arg(
        long,
        visible_alias = "url",
        value_name = "URL",
        required_unless_present = "show_key"
    )]
    pub hub: Option<String>,
    /// The witness's state file (JSON; created on the first run, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// The witness's private cosigning key (PKCS#8 PEM, mode 0600; generated on the first
    /// run). Keep it apart from the state, and secret.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The witness's name in its cosignatures (e.g. witness.example.org): needed on the
    /// first run, fixed from then on.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The log's verifier key (`name+keyid+base64`), from the hub operator. Without it, the
    /// key the hub serves at the first contact is pinned (trust on first use).
    #[arg(long, value_name = "VKEY")]
    pub log_key: Option<String>,
    /// The log's origin (first line of its checkpoints). Without it, the first accepted
    /// checkpoint's is pinned.
    #[arg(long, value_name = "ORIGIN")]
    pub origin: Option<String>,
    /// Write each cosigned checkpoint to this file (replaced atomically).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Send each cosigned checkpoint to the hub (POST /audit/cosignatures).
    #[arg(long)]
    pub post: bool,
    /// Run a round every SECONDS (1 to 86400) until stopped; without it, one round.
    #[arg(long = "every", value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(EVERY_S_MIN..=EVERY_S_MAX))]
    pub every_s: Option<u64>,
    /// With --every: stop after this many rounds.
    #[arg(long, value_name = "N", requires = "every_s",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: Option<u64>,
    /// Time limit of each HTTP request, seconds (1 to 300).
    #[arg(long = "timeout-seconds", value_name = "SECONDS", default_value_t = TIMEOUT_S_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=TIMEOUT_S_MAX))]
    pub timeout_s: u64,
    /// Trust only the CA certificates of this PEM file for the hub's https (a private CA).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Print the witness's verifier key (creating the key and state if needed) and exit,
    /// without contacting the hub.
    #[arg(long)]
    pub show_key: bool,
}

/// Why a round (or the setup) failed. [`WitnessError::exit_code`] says how bad it is.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("the log's key served at /audit/key is not a verifier key: {0}")]
    BadServedKey(String),
    #[error("cannot cosign the checkpoint: {0}")]
    Cosign(NoteError),
}

impl WitnessError {
    pub fn exit_code(&self) -> u8 {
        match self {
            WitnessError::Config(_) | WitnessError::State(_) => exit::LOCAL_ERROR,
            WitnessError::Hub(HubError::BadUrl { .. } | HubError::BadCaFile { .. })
            | WitnessError::Hub(HubError::Client(_)) => exit::LOCAL_ERROR,
            WitnessError::Hub(_)
            | WitnessError::Refused(_)
            | WitnessError::BadServedKey(_)
            | WitnessError::Cosign(_) => exit::HUB_ERROR,
        }
    }
}

/// How an accepted checkpoint relates to what the witness had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The first checkpoint of this log; `pinned_key` when its key was just taken from the
    /// hub (trust on first use).
    FirstContact { pinned_key: bool },
    /// A larger tree, proven consistent with the one of `from_size` leaves.
    Grew { from_size: u64 },
    /// The same checkpoint as last time, cosigned again (a fresh timestamp).
    Unchanged,
}

/// A checkpoint the witness cosigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosigned {
    pub progress: Progress,
    pub checkpoint: Checkpoint,
    pub log_key: VerifierKey,
    /// The note: the log's signature, then the witness's cosignature.
    pub note: Note,
    /// What became of it at the hub, when `--post`.
    pub posted: Option<Posted>,
}

/// What one round concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Cosigned(Cosigned),
    /// The log misbehaved; the state is left as it was.
    Misbehaviour(Evidence),
}

/// A witness ready for rounds: its client, state, key and options.
#[derive(Debug)]
pub struct Witness {
    client: HubClient,
    state_path: PathBuf,
    state: WitnessState,
    cosigner: Cosigner,
    /// `--origin`, for a log not pinned yet.
    origin: Option<String>,
    out: Option<PathBuf>,
    post: bool,
}

/// What setting up a witness had to say (a generated key, a state created).
pub type Notices = Vec<String>;

impl Witness {
    /// Reads (or, on the first run, creates) the key and the state, and applies
    /// `--log-key` and `--origin`, refusing any that contradicts what the state pinned.
    pub fn open(args: &WitnessArgs) -> Result<(Witness, Notices), WitnessError> {
        let hub = args
            .hub
            .as_deref()
            .ok_or_else(|| WitnessError::Config("--hub is needed".into()))?;
        let ca_pem = args.ca_file.as_deref().map(read_ca_file).transpose()?;
        let client = HubClient::new(hub, Duration::from_secs(args.timeout_s), ca_pem.as_deref())?;
        let (state, cosigner, mut notices) = open_state(args)?;
        let mut witness = Witness {
            client,
            state_path: args.state.clone(),
            state,
            cosigner,
            origin: None,
            out: args.out.clone(),
            post: args.post,
        };
        if let Some(vkey) = &args.log_key {
            let key = VerifierKey::parse(vkey.trim())
                .map_err(|e| WitnessError::Config(format!("--log-key: {e}")))?;
            let given = LogTrust::new(key, None)
                .map_err(|e| WitnessError::Config(format!("--log-key: {e}")))?;
            match &witness.state.log {
                Some(pinned) if pinned.key != given.key => {
                    return Err(WitnessError::Config(format!(
                        "--log-key {} differs from the log key pinned in {}: {}. A log that changes its key is a new log to this witness: use a new state file if that is intended",
                        given.key,
                        args.state.display(),
                        pinned.key
                    )));
                }
                Some(_) => {}
                None => {
                    notices.push(format!("log key {} (given by --log-key)", given.key));
                    witness.state.log = Some(given);
                }
            }
        }
        if let Some(origin) = &args.origin {
            match witness.state.log.as_mut() {
                Some(LogTrust {
                    origin: Some(pinned),
                    ..
                }) if pinned != origin => {
                    return Err(WitnessError::Config(format!(
                        "--origin {origin:?} differs from the origin pinned in {}: {pinned:?}",
                        args.state.display()
                    )));
                }
                Some(log) => log.origin = Some(origin.clone()),
                None => witness.origin = Some(origin.clone()),
            }
        }
        Ok((witness, notices))
    }

    /// The witness's own verifier key, for the hub operator and auditors.
    pub fn witness_key(&self) -> VerifierKey {
        self.cosigner.verifier_key()
    }

    pub fn state(&self) -> &WitnessState {
        &self.state
    }

    pub fn hub(&self) -> &str {
        self.client.base()
    }

    /// One round at the current time: see [`Witness::run_once_at`].
    pub async fn run_once(&mut self) -> Result<Outcome, WitnessError> {
        self.run_once_at(unix_now_s()).await
    }

    /// One round, cosigning at `now_s` (Unix seconds): fetch the checkpoint, verify it,
    /// compare it with the last one (with a consistency proof when it grew), and either
    /// report the misbehaviour, state untouched, or cosign it, save the state, then write
    /// `--out` and `--post` it. The state is saved before the cosignature leaves the
    /// witness, so that it never vouches for a tree it would not remember.
    pub async fn run_once_at(&mut self, now_s: u64) -> Result<Outcome, WitnessError> {
        let (trust, pinned_key) = match &self.state.log {
            Some(trust) => (trust.clone(), false),
            None => {
                let vkey = self.client.log_key().await?;
                let key = VerifierKey::parse(&vkey)
                    .map_err(|e| WitnessError::BadServedKey(format!("{vkey:?}: {e}")))?;
                (LogTrust::new(key, self.origin.clone())?, true)
            }
        };
        let served = self.client.checkpoint().await?;
        let opened = decide::open(&trust, &served)?;
        let progress = match decide::judge(self.state.last.as_ref(), &opened) {
            Judgement::FirstContact => Progress::FirstContact { pinned_key },
            Judgement::Unchanged => Progress::Unchanged,
            Judgement::Misbehaviour(evidence) => return Ok(Outcome::Misbehaviour(evidence)),
            Judgement::Grew { from_size } => {
                let last = self
                    .state
                    .last
                    .as_ref()
                    .expect("grew from a last checkpoint");
                let proof = self
                    .client
                    .consistency_proof(from_size, opened.checkpoint.size)
                    .await?;
                if let Err(evidence) = decide::check_growth(last, &opened, &proof) {
                    return Ok(Outcome::Misbehaviour(evidence));
                }
                Progress::Grew { from_size }
            }
        };
        let note = decide::cosign(&opened, &self.cosigner, now_s).map_err(WitnessError::Cosign)?;
        if progress != Progress::Unchanged {
            let mut next = self.state.clone();
            next.log = Some(LogTrust {
                key: trust.key.clone(),
                origin: Some(opened.checkpoint.origin.clone()),
            });
            next.last = Some(decide::accepted(&opened, now_s));
            next.save(&self.state_path)?;
            self.state = next;
        }
        let text = note.to_string();
        if let Some(out) = &self.out {
            state::write_atomically(out, text.as_bytes(), OUT_FILE_MODE)?;
        }
        let posted = if self.post {
            Some(self.client.post_cosignature(&text).await)
        } else {
            None
        };
        Ok(Outcome::Cosigned(Cosigned {
            progress,
            checkpoint: opened.checkpoint,
            log_key: trust.key,
            note,
            posted,
        }))
    }

    /// The one-line summary of a cosigned round.
    fn summary(&self, cosigned: &Cosigned) -> String {
        let checkpoint = &cosigned.checkpoint;
        let what = match cosigned.progress {
            Progress::FirstContact { pinned_key: true } => format!(
                "first contact: pinned the log key {} served by the hub (trust on first use: check it with the hub operator)",
                cosigned.log_key
            ),
            Progress::FirstContact { pinned_key: false } => {
                format!("first contact with log key {}", cosigned.log_key)
            }
            Progress::Grew { from_size } => format!("grew from {from_size}, consistent"),
            Progress::Unchanged => "unchanged, cosigned again".to_owned(),
        };
        let posted = match &cosigned.posted {
            None => String::new(),
            Some(Posted::Accepted) => "; cosignature delivered to the hub".to_owned(),
            Some(Posted::NotCollected) => "; the hub does not collect cosignatures".to_owned(),
            Some(Posted::Failed(why)) => format!("; cosignature NOT delivered: {why}"),
        };
        format!(
            "cosigned {} size {} root {} as {}+{:08x} ({what}){posted}",
            checkpoint.origin,
            checkpoint.size,
            decide::root_base64(&checkpoint.root),
            self.cosigner.name(),
            self.cosigner.key_id(),
        )
    }
}

/// Loads the state and the key, creating both on the first run.
fn open_state(args: &WitnessArgs) -> Result<(WitnessState, Cosigner, Notices), WitnessError> {
    let mut notices = Vec::new();
    let existing = WitnessState::load(&args.state)?;
    let (cosigner, generated) = state::load_or_create_key(
        &args.key,
        args.name.as_deref(),
        existing.as_ref().map(|state| &state.witness_key),
    )?;
    if generated {
        notices.push(format!(
            "generated the witness key in {}; its verifier key, for the hub operator and auditors: {}",
            args.key.display(),
            cosigner.verifier_key()
        ));
    }
    let state = match existing {
        Some(state) => state,
        None => {
            let state = WitnessState::new(cosigner.verifier_key());
            state.save(&args.state)?;
            notices.push(format!(
                "created the state file {} (no log known yet)",
                args.state.display()
            ));
            state
        }
    };
    Ok((state, cosigner, notices))
}

fn read_ca_file(path: &Path) -> Result<Vec<u8>, WitnessError> {
    let bad = |reason: String| {
        WitnessError::Hub(HubError::BadCaFile {
            path: path.display().to_string(),
            reason,
        })
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(bad(format!("larger than {MAX_CA_FILE_BYTES} bytes")));
    }
    Ok(bytes)
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// The current UTC time, for the start of report lines.
fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|now| {
            now.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Runs the witness as `hygie audit witness` does, on stdout and stderr.
pub async fn run(args: &WitnessArgs) -> ExitCode {
    let code = run_with(args, &mut std::io::stdout(), &mut std::io::stderr()).await;
    ExitCode::from(code)
}

/// Runs the witness and returns its exit code ([`exit`]): summaries and evidence on `out`,
/// errors on `err`. One round, or with `--every` rounds until a signal (SIGINT, SIGTERM),
/// `--rounds`, a local error or a misbehaviour.
pub async fn run_with(
    args: &WitnessArgs,
    out: &mut (impl Write + Send),
    err: &mut (impl Write + Send),
) -> u8 {
    // Reports are best effort: a closed stdout must not stop a witness.
    if args.show_key {
        return match open_state(args) {
            Ok((_, cosigner, notices)) => {
                for notice in notices {
                    let _ = writeln!(err, "{notice}");
                }
                let _ = writeln!(out, "{}", cosigner.verifier_key());
                exit::OK
            }
            Err(error) => {
                let _ = writeln!(err, "error: {error}");
                error.exit_code()
            }
        };
    }
    let (mut witness, notices) = match Witness::open(args) {
        Ok(opened) => opened,
        Err(error) => {
            let _ = writeln!(err, "error: {error}");
            return error.exit_code();
        }
    };
    for notice in notices {
        let _ = writeln!(err, "{} {notice}", now_rfc3339());
    }
    let Some(every_s) = args.every_s else {
        return round(&mut witness, out, err).await;
    };
    let mut shutdown = Shutdown::new();
    let mut rounds: u64 = 0;
    loop {
        let code = tokio::select! {
            code = round(&mut witness, out, err) => code,
            () = shutdown.signalled() => return exit::OK,
        };
        rounds += 1;
        if code == exit::MISBEHAVIOUR || code == exit::LOCAL_ERROR {
            return code;
        }
        if args.rounds.is_some_and(|limit| rounds >= limit) {
            return code;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(every_s)) => {}
            () = shutdown.signalled() => return exit::OK,
        }
    }
}

/// One round, reported: its exit code.
async fn round(
    witness: &mut Witness,
    out: &mut (impl Write + Send),
    err: &mut (impl Write + Send),
) -> u8 {
    let hub = witness.hub().to_owned();
    match witness.run_once().await {
        Ok(Outcome::Cosigned(cosigned)) => {
            let _ = writeln!(
                out,
                "{} {hub}: {}",
                now_rfc3339(),
                witness.summary(&cosigned)
            );
            match cosigned.posted {
                Some(Posted::Failed(_)) => exit::HUB_ERROR,
                _ => exit::OK,
            }
        }
        Ok(Outcome::Misbehaviour(evidence)) => {
            let _ = write!(out, "{} {hub}: {evidence}", now_rfc3339());
            let _ = writeln!(
                err,
                "error: the log at {hub} misbehaved ({}); the evidence, two checkpoints it signed, is on stdout; the witness state is unchanged",
                evidence.kind
            );
            exit::MISBEHAVIOUR
        }
        Err(error) => {
            let _ = writeln!(err, "{} error: {hub}: {error}", now_rfc3339());
            error.exit_code()
        }
    }
}

/// SIGINT or SIGTERM: stops a loop between two steps (a round's state write is
/// synchronous, so it is never cut in half).
struct Shutdown {
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Shutdown {
    fn new() -> Shutdown {
        Shutdown {
            terminate: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .ok(),
        }
    }

    /// Completes on a signal; never, when the signals cannot be listened to.
    async fn signalled(&mut self) {
        let interrupt = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        match self.terminate.as_mut() {
            Some(terminate) => tokio::select! {
                () = interrupt => {}
                _ = terminate.recv() => {}
            },
            None => interrupt.await,
        }
    }
}
