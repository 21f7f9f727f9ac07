//! `hygie token`: prints a bearer token signed by the hub's own issuer, for development,
//! tests and small sites without an OpenID Connect provider. Whoever runs it can read the
//! hub's data directory or database (where the issuer key lives): the local operator.

use std::process::ExitCode;

use clap::Args;
use hygie_auth::{MAX_TTL_SECONDS, TokenRequest};

use crate::config::{self, StoreArgs};

#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Who the token is for: `Practitioner/ID`, `Patient/ID`, `Device/ID`, …
    #[arg(long)]
    pub subject: String,
    /// A role (repeat for several): clinician, nurse, reception, billing, dpo, integration…
    #[arg(long = "role", required = true)]
    pub roles: Vec<String>,
    /// SMART scopes, space-separated, e.g. "user/*.rs" or "user/Observation.cruds".
    #[arg(long)]
    pub scope: String,
    /// The SMART `patient` launch context.
    #[arg(long)]
    pub patient: Option<String>,
    /// Lifetime in seconds (at most one day).
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
}

pub async fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    if args.ttl == 0 || args.ttl > MAX_TTL_SECONDS {
        anyhow::bail!("--ttl must be between 1 and {MAX_TTL_SECONDS} seconds");
    }
    let scopes = hygie_policy::ScopeSet::parse(&args.scope, hygie_fhir::schema::is_resource_type)
        .map_err(|e| anyhow::anyhow!("--scope: {e}"))?;
    if let Some((token, reason)) = scopes.invalid().next() {
        anyhow::bail!("--scope: {token:?} is not a valid SMART scope: {reason}");
    }
    let file = config::load_file(args.store.config.as_deref())?;
    let auth = config::auth_settings(&file)?;
    let limits = config::limits(&Default::default(), &file.limits)?;
    let settings = config::store_settings(&args.store, &file)?;
    let store = config::open_store(&settings).await?;
    let hub = hygie_hub::Hub::new(store, config::hub_config(&limits));
    let issuer = hub.token_issuer(&auth.issuer).await;
    hub.close().await;
    let issuer = issuer.map_err(|e| anyhow::anyhow!("cannot load the token issuer key: {e}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let token = issuer.issue(
        &TokenRequest {
            subject: args.subject,
            audience: auth.audience,
            roles: args.roles,
            scope: scopes.to_string(),
            patient: args.patient,
            ttl_seconds: args.ttl,
        },
        now,
    )?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
