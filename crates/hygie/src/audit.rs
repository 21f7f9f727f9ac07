//! `hygie audit …`: the audit log, from the operator's side.
//! - `verify`: recomputes the Merkle tree from the stored leaves and checks every stored
//!   hash and signed checkpoint (and checkpoints held elsewhere, `--checkpoint FILE`);
//!   exits 1 naming the first bad leaf.
//! - `key`: prints the log's verifier key, for witnesses and auditors.
//! - `witness`: an independent witness of a hub's log (`hygie-witness`), run elsewhere.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use hygie_audit::checkpoint::VerifierKey;
use hygie_hub::Hub;

use crate::config::{self, StoreArgs};

#[derive(Args, Debug, Clone)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum AuditCommand {
    /// Check that the audit log was not rewritten: every leaf, stored hash and checkpoint.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        /// A signed checkpoint kept outside the database (a witness's, an auditor's copy
        /// of `GET /audit/checkpoint`); the log must still contain it. Repeatable.
        #[arg(long = "checkpoint", value_name = "FILE")]
        checkpoints: Vec<std::path::PathBuf>,
        /// The log's verifier key, as published (`hygie audit key`); by default the one
        /// stored with the data, which someone able to rewrite the database could replace.
        #[arg(long, value_name = "VKEY")]
        log_key: Option<String>,
    },
    /// Print the log's verifier key (`origin+keyid+base64`).
    Key {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Watch a hub's audit log from outside: verify that each checkpoint extends the last
    /// one accepted, cosign it, and exit 3 on a rollback or a fork.
    Witness(hygie_witness::WitnessArgs),
}

/// The largest checkpoint file read, bytes.
const MAX_CHECKPOINT_FILE_BYTES: u64 = 1 << 20;

pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let store_args = match &args.command {
        AuditCommand::Verify { store, .. } | AuditCommand::Key { store } => store.clone(),
        // Needs no store: it only talks to a hub over HTTP(S).
        AuditCommand::Witness(witness) => return Ok(hygie_witness::run(witness).await),
    };
    let file = config::load_file(store_args.config.as_deref())?;
    let limits = config::limits(&Default::default(), &file.limits)?;
    let (audit, _) = config::audit_settings(&file)?;
    let settings = config::store_settings(&store_args, &file)?;
    let store = config::open_store(&settings).await?;
    let mut hub_config = config::hub_config(&limits);
    hub_config.audit = audit;
    let hub = Hub::new(store, hub_config);
    let outcome = match &args.command {
        AuditCommand::Witness(_) => unreachable!("answered above"),
        AuditCommand::Key { .. } => key(&hub).await,
        AuditCommand::Verify {
            checkpoints,
            log_key,
            ..
        } => verify(&hub, checkpoints, log_key.as_deref()).await,
    };
    hub.close().await;
    outcome
}

async fn key(hub: &Hub) -> anyhow::Result<ExitCode> {
    let key = hub
        .audit_log_key()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{key}");
    Ok(ExitCode::SUCCESS)
}

async fn verify(
    hub: &Hub,
    checkpoint_files: &[std::path::PathBuf],
    log_key: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let log_key = log_key
        .map(|text| VerifierKey::parse(text.trim()).map_err(|e| anyhow::anyhow!("--log-key: {e}")))
        .transpose()?;
    let mut external = Vec::new();
    for path in checkpoint_files {
        let size = std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("--checkpoint {}: {e}", path.display()))?
            .len();
        if size > MAX_CHECKPOINT_FILE_BYTES {
            anyhow::bail!(
                "--checkpoint {}: {size} bytes, more than a checkpoint ({MAX_CHECKPOINT_FILE_BYTES})",
                path.display()
            );
        }
        external.push(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--checkpoint {}: {e}", path.display()))?,
        );
    }
    let started = std::time::Instant::now();
    let outcome = hub
        .verify_audit(log_key, &external)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    match outcome {
        Ok(report) => {
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "audit log verified: {} leaves ({} pruned), {} stored checkpoints and {} given, root {}; {} leaves not yet integrated; {:.2} s",
                report.leaves,
                report.pruned,
                report.checkpoints,
                external.len(),
                hex(&report.root),
                report.pending,
                seconds
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            match failure.first_bad_leaf {
                Some(leaf) => eprintln!("AUDIT LOG TAMPERED: first bad leaf {leaf}: {failure}"),
                None => eprintln!("AUDIT LOG TAMPERED: {failure}"),
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
