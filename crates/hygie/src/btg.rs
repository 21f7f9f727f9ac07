//! `hygie btg list|close`: the DPO's review of break-the-glass accesses, on the hub's own
//! data. Each grant is one item: who opened which patient, why, until when; closing it
//! records the review's conclusion. Audited like any access.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use hygie_hub::{Caller, Hub, format_instant};
use hygie_policy::Principal;

use crate::config::{self, StoreArgs};

#[derive(Args, Debug, Clone)]
pub struct BtgArgs {
    #[command(subcommand)]
    pub command: BtgCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum BtgCommand {
    /// List the grants awaiting review (newest first).
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Closed reviews too.
        #[arg(long)]
        all: bool,
        /// `table` for people, `json` (one object per line) for scripts.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Close a grant's review with its conclusion (the grant runs its window; `hygie revoke
    /// --subject` stops a misuse at once).
    Close {
        #[command(flatten)]
        store: StoreArgs,
        /// The grant's number (from `hygie btg list`).
        id: i64,
        /// The review's conclusion (e.g. "justified: cardiac arrest, no relationship yet").
        #[arg(long)]
        review: String,
    },
}

pub async fn run(args: BtgArgs) -> anyhow::Result<ExitCode> {
    let store_args = match &args.command {
        BtgCommand::List { store, .. } | BtgCommand::Close { store, .. } => store.clone(),
    };
    let file = config::load_file(store_args.config.as_deref())?;
    let limits = config::limits(&Default::default(), &file.limits)?;
    let settings = config::store_settings(&store_args, &file)?;
    let store = config::open_store(&settings).await?;
    let hub = Hub::with_policy(store, config::hub_config(&limits), config::policy(&file)?);
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    let caller = Caller::new(Principal::local_operator(&user), "btg");
    let outcome = match &args.command {
        BtgCommand::List { all, format, .. } => list(&hub, &caller, *all, format).await,
        BtgCommand::Close { id, review, .. } => hub
            .close_break_glass(&caller, *id, review)
            .await
            .map(|()| {
                eprintln!("Closed the review of grant {id}.");
                ExitCode::SUCCESS
            })
            .map_err(|e| anyhow::anyhow!("{e}")),
    };
    hub.close().await;
    outcome
}

async fn list(hub: &Hub, caller: &Caller, all: bool, format: &str) -> anyhow::Result<ExitCode> {
    let grants = hub
        .break_glass_reviews(caller, all)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if format == "json" {
        for grant in &grants {
            println!("{}", serde_json::to_string(grant)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if grants.is_empty() {
        eprintln!(
            "{}",
            if all {
                "No break-the-glass grants."
            } else {
                "No break-the-glass grants await review."
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>5}  {:<20}  {:<24}  {:<22}  {:<22}  reason / review",
        "id", "opened", "by", "patient", "state"
    );
    for grant in &grants {
        let state = match (&grant.closed_us, &grant.closed_by) {
            (Some(_), Some(by)) => format!("closed by {by}"),
            _ => "awaiting review".to_owned(),
        };
        println!(
            "{:>5}  {:<20}  {:<24}  {:<22}  {:<22}  {}{}",
            grant.grant_id,
            format_instant(grant.opened_us),
            grant.subject,
            format!("Patient/{}", grant.patient),
            state,
            grant.reason,
            grant
                .review
                .as_ref()
                .map(|r| format!(" / {r}"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
