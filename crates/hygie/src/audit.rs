//! `hygie audit …`: the audit log, from the operator's side.
//! - `verify`: recomputes the Merkle tree from the stored leaves and checks every stored
//!   hash and signed checkpoint (and checkpoints held elsewhere, `--checkpoint FILE`);
//!   exits 1 naming the first bad leaf.
//! - `key`: prints the log's verifier key, for witnesses and auditors.
//! - `witness`: an independent witness of a hub's log (`hygie-witness`), run elsewhere.
//! - `report`: a patient's access report (who, when, what, why, emergency), as Markdown for
//!   a letter or as JSON; the same as `GET /fhir/Patient/{id}/$access-log`, every page.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use hygie_audit::checkpoint::VerifierKey;
use hygie_hub::{AccessReportLine, Caller, Hub};
use hygie_policy::Principal;

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
    /// Retention: prune the bodies of AuditEvents older than DAYS days (their hashes stay,
    /// the log remains verifiable). Recorded in the log.
    Prune {
        #[command(flatten)]
        store: StoreArgs,
        /// Keep the bodies of the last DAYS days (0: prune every integrated leaf).
        #[arg(long, value_name = "DAYS")]
        older_than_days: u64,
    },
    /// A patient's access report: every recorded access to their record, newest first.
    /// Reading it is recorded in the audit log like any access.
    Report {
        #[command(flatten)]
        store: StoreArgs,
        /// The patient's id (`Patient/{id}` or `{id}`).
        #[arg(long, value_name = "ID")]
        patient: String,
        /// `md` (a table, for a letter to the patient) or `json`.
        #[arg(long, default_value = "md", value_parser = ["md", "json"])]
        format: String,
    },
}

/// The largest checkpoint file read, bytes.
const MAX_CHECKPOINT_FILE_BYTES: u64 = 1 << 20;

pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let (store_args, command) = match args.command {
        // Needs no store: it only talks to a hub over HTTP(S).
        AuditCommand::Witness(witness) => return Ok(hygie_witness::run(&witness).await),
        AuditCommand::Verify { ref store, .. }
        | AuditCommand::Key { ref store }
        | AuditCommand::Report { ref store, .. }
        | AuditCommand::Prune { ref store, .. } => (store.clone(), args.command),
    };
    let file = config::load_file(store_args.config.as_deref())?;
    let limits = config::limits(&Default::default(), &file.limits)?;
    let (audit, _) = config::audit_settings(&file)?;
    let settings = config::store_settings(&store_args, &file)?;
    // Verifying reads only the audit tables: an auditor needs no key file for it.
    let store = if matches!(
        command,
        AuditCommand::Verify { .. } | AuditCommand::Key { .. }
    ) {
        config::open_raw_store(&settings).await?
    } else {
        config::open_store(&settings).await?
    };
    let mut hub_config = config::hub_config(&limits);
    hub_config.audit = audit;
    let hub = Hub::new(store, hub_config);
    let outcome = match command {
        AuditCommand::Key { .. } => key(&hub).await,
        AuditCommand::Verify {
            checkpoints,
            log_key,
            ..
        } => verify(&hub, &checkpoints, log_key.as_deref()).await,
        AuditCommand::Report {
            patient, format, ..
        } => report(&hub, &patient, &format).await,
        AuditCommand::Prune {
            older_than_days, ..
        } => prune(&hub, older_than_days).await,
        AuditCommand::Witness(witness) => Ok(hygie_witness::run(&witness).await),
    };
    hub.close().await;
    outcome
}

/// `hygie audit prune`: integrates what is pending, then prunes.
async fn prune(hub: &Hub, older_than_days: u64) -> anyhow::Result<ExitCode> {
    if older_than_days > config::MAX_RETENTION_DAYS {
        anyhow::bail!(
            "--older-than-days must be at most {}, not {older_than_days}",
            config::MAX_RETENTION_DAYS
        );
    }
    hub.integrate_audit(false)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let cutoff = now - (older_than_days as i64) * 86_400_000_000;
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    let caller = Caller::new(Principal::local_operator(&user), "audit-prune");
    let pruned = hub
        .prune_audit(&caller, cutoff)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "pruned the bodies of {} AuditEvents recorded before {}; every leaf below {} is pruned, their hashes kept",
        pruned.leaves,
        hygie_hub::format_instant(cutoff),
        pruned.pruned_below
    );
    Ok(ExitCode::SUCCESS)
}

/// `hygie audit report`: reads the patient's accesses as the local operator (recorded).
async fn report(hub: &Hub, patient: &str, format: &str) -> anyhow::Result<ExitCode> {
    let patient = patient.strip_prefix("Patient/").unwrap_or(patient);
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    let caller = Caller::new(Principal::local_operator(&user), "audit-report");
    let lines = hub
        .access_report(&caller, patient)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let generated = hygie_hub::format_instant(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0),
    );
    if format == "json" {
        let report = serde_json::json!({
            "patient": format!("Patient/{patient}"),
            "generated": generated,
            "accesses": lines,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", markdown_report(patient, &generated, &lines));
    Ok(ExitCode::SUCCESS)
}

/// The report as a Markdown document a DPO can send to the patient.
fn markdown_report(patient: &str, generated: &str, lines: &[AccessReportLine]) -> String {
    let mut out = format!(
        "# Accesses to the health record of Patient/{patient}\n\n\
         Produced by Hygie on {generated} from the hospital's tamper-evident audit log: \
         {} recorded accesses, newest first.\n\n",
        lines.len()
    );
    if lines.is_empty() {
        out.push_str("No access to this record is recorded.\n");
        return out;
    }
    out.push_str(
        "| When (UTC) | Who | Role | Action | Data | Why | Emergency access | Outcome |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for line in lines {
        let cells = [
            line.when.clone(),
            line.who.clone(),
            line.roles.join(", "),
            line.action.clone(),
            line.what.join(", "),
            line.why.clone().unwrap_or_default(),
            if line.emergency { "yes" } else { "no" }.to_owned(),
            match line.outcome.as_str() {
                "0" => "granted",
                _ => "refused",
            }
            .to_owned(),
        ];
        let cells: Vec<String> = cells.iter().map(|cell| markdown_cell(cell)).collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

/// A table cell: pipes escaped, line breaks flattened, so that no value breaks the table.
fn markdown_cell(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
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
            let witnesses = &hub.config().audit.witnesses;
            if !witnesses.is_empty() {
                let cosigned: Vec<String> = report
                    .witness_cosigned
                    .iter()
                    .map(|(witness, size)| format!("{witness} at size {size}"))
                    .collect();
                println!(
                    "witness cosignatures: {} of {} configured witnesses cosigned a stored checkpoint{}{}",
                    cosigned.len(),
                    witnesses.len(),
                    if cosigned.is_empty() { "" } else { ": " },
                    cosigned.join(", ")
                );
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_cannot_break_the_markdown_table() {
        let line = AccessReportLine {
            id: 1,
            when: "2026-11-30T10:00:00Z".to_owned(),
            who: "Dr A | B\nC".to_owned(),
            roles: vec!["clinician".to_owned()],
            action: "read".to_owned(),
            what: vec!["Observation".to_owned()],
            why: Some("ETREAT: unconscious".to_owned()),
            emergency: true,
            outcome: "0".to_owned(),
        };
        let table = markdown_report("p1", "now", &[line]);
        let row = table.lines().last().unwrap();
        assert_eq!(row.matches(" | ").count(), 7, "{row}");
        assert!(row.contains("Dr A \\| B C"));
        assert!(row.contains("| yes |"));
    }
}
