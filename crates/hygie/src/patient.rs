//! `hygie patient erase ID --reason TEXT --yes`: crypto-shredding of one patient (GDPR
//! Art. 17, where the law allows it), for the DPO, on the hub's own data and key file.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use hygie_policy::Principal;

use crate::config::{self, StoreArgs};

#[derive(Args, Debug, Clone)]
pub struct PatientArgs {
    #[command(subcommand)]
    pub command: PatientCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum PatientCommand {
    /// Erase a patient: destroy their data keys, so that every version of their data, in
    /// the database and in every backup, becomes unreadable. Cannot be undone. The audit
    /// log keeps the fact (who, when, why, which patient id) and no patient data.
    Erase {
        #[command(flatten)]
        store: StoreArgs,
        /// The patient's id.
        id: String,
        /// Why (kept in the audit log for good: a request number, not patient data).
        #[arg(long)]
        reason: String,
        /// Confirm: without it, nothing is done.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn run(args: PatientArgs) -> anyhow::Result<ExitCode> {
    let PatientCommand::Erase {
        store,
        id,
        reason,
        yes,
    } = args.command;
    if reason.trim().is_empty() {
        anyhow::bail!("--reason must say why (e.g. \"GDPR Art. 17 request 2026-113\")");
    }
    if !yes {
        eprintln!(
            "This destroys the data keys of Patient/{id}: their data becomes unreadable everywhere, backups included, for good. Run again with --yes to do it."
        );
        return Ok(ExitCode::from(2));
    }
    let file = config::load_file(store.config.as_deref())?;
    let settings = config::store_settings(&store, &file)?;
    let (raw, vault) = config::open_store_and_vault(&settings).await?;
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    let by = Principal::local_operator(&user).subject;
    let outcome = vault.erase_patient(&raw, &id, &by, &reason).await;
    raw.close().await;
    let erasure = outcome.map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "Erased Patient/{id}: {} data key(s) destroyed, {} version(s) of {} resource(s) can no longer be read.",
        erasure.keys.len(),
        erasure.versions,
        erasure.resources
    );
    println!(
        "The key file was updated: replace every copy of it (other hub nodes, the safe) with this one; an older copy would still open the backups made before."
    );
    Ok(ExitCode::SUCCESS)
}
