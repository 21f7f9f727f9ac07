//! `hygie revoke`: refuses one token (`--jti`) or every token of a principal (`--subject`,
//! a kill switch) from the next request on, on every hub process of the store, until lifted
//! (`--lift`). Run by the local operator; recorded in the audit log like any access.

use std::process::ExitCode;

use clap::Args;
use hygie_hub::{Caller, Hub, RevocationKind};
use hygie_policy::Principal;

use crate::config::{self, StoreArgs};

#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "subject"])))]
pub struct RevokeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The `jti` of one token.
    #[arg(long)]
    pub jti: Option<String>,
    /// A principal (`sub`): every token it holds, issued before or after.
    #[arg(long)]
    pub subject: Option<String>,
    /// Why (kept with the revocation and told to the refused caller).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Lift the revocation instead.
    #[arg(long)]
    pub lift: bool,
}

pub async fn run(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let (kind, value) = match (&args.jti, &args.subject) {
        (Some(jti), None) => (RevocationKind::TokenId, jti.clone()),
        (None, Some(subject)) => (RevocationKind::Subject, subject.clone()),
        _ => anyhow::bail!("give exactly one of --jti and --subject"),
    };
    let file = config::load_file(args.store.config.as_deref())?;
    let limits = config::limits(&Default::default(), &file.limits)?;
    let settings = config::store_settings(&args.store, &file)?;
    let store = config::open_store(&settings).await?;
    let hub = Hub::new(store, config::hub_config(&limits));
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    let caller = Caller::new(Principal::local_operator(&user), "revoke");
    let outcome = hub
        .revoke(&caller, kind, &value, &args.reason, args.lift)
        .await;
    hub.close().await;
    let changed = outcome.map_err(|e| anyhow::anyhow!("{e}"))?;
    match (args.lift, changed) {
        (false, _) => eprintln!("Revoked {value}: refused from the next request on."),
        (true, true) => eprintln!("Lifted the revocation of {value}."),
        (true, false) => {
            eprintln!("{value} was not revoked: nothing to lift.");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
