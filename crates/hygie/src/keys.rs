//! `hygie keys signing list|rotate|retire`: the keys the hub signs its own tokens with, on
//! the hub's own data, for the local operator. A serving hub picks a change up within
//! `auth.keys_refresh_seconds`, or as soon as it meets a token signed with the new key.
//! Audited like any administrative act.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use hygie_hub::{Caller, Hub, Retire};
use hygie_policy::Principal;

use crate::config::{self, StoreArgs};

#[derive(Args, Debug, Clone)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum KeysCommand {
    /// The keys that sign the hub's own tokens (`hygie token`).
    #[command(subcommand)]
    Signing(SigningCommand),
    /// Rotate the keys of encryption at rest. Without --patient: the key file's keys (a new
    /// generation; every data key re-wrapped, online). With --patient: that patient's data
    /// key (all their data re-encrypted under a new one).
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
        /// Re-encrypt this patient's data under a new data key instead.
        #[arg(long, value_name = "ID")]
        patient: Option<String>,
        /// Remove the older generations from the key file afterwards (it leaked): backups
        /// made before can then no longer be opened with it.
        #[arg(long, conflicts_with = "patient")]
        retire_previous: bool,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum SigningCommand {
    /// List the signing keys: the current one, those retiring and those retired.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Make a new signing key. The replaced one keeps verifying the tokens it signed until
    /// they run out, or, with `--retire-previous now` (it may have leaked), stops at once.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value = "after-expiry", value_parser = ["after-expiry", "now"])]
        retire_previous: String,
    },
    /// Stop trusting a retiring key at once (it turned out to have leaked).
    Retire {
        #[command(flatten)]
        store: StoreArgs,
        /// Its key id (`kid`, from `hygie keys signing list`).
        key_id: String,
    },
}

pub async fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let command = match args.command {
        KeysCommand::Signing(command) => command,
        KeysCommand::Rotate {
            store,
            patient,
            retire_previous,
        } => return rotate(&store, patient.as_deref(), retire_previous).await,
    };
    let store_args = match &command {
        SigningCommand::List { store }
        | SigningCommand::Rotate { store, .. }
        | SigningCommand::Retire { store, .. } => store.clone(),
    };
    let file = config::load_file(store_args.config.as_deref())?;
    let auth = config::auth_settings(&file)?;
    let limits = config::limits(&Default::default(), &file.limits)?;
    let settings = config::store_settings(&store_args, &file)?;
    let store = config::open_store(&settings).await?;
    let hub = Hub::with_policy(store, config::hub_config(&limits), config::policy(&file)?);
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    let caller = Caller::new(Principal::local_operator(&user), "keys");
    let outcome = match &command {
        SigningCommand::List { .. } => hub.list_token_keys(&caller, &auth.issuer).await,
        SigningCommand::Rotate {
            retire_previous, ..
        } => {
            let retire = if retire_previous == "now" {
                Retire::Now
            } else {
                Retire::AfterExpiry
            };
            hub.rotate_token_key(&caller, &auth.issuer, retire).await
        }
        SigningCommand::Retire { key_id, .. } => {
            hub.retire_token_key(&caller, &auth.issuer, key_id).await
        }
    };
    hub.close().await;
    let keys = outcome.map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let listing = keys.describe(now);
    for key in listing["keys"].as_array().into_iter().flatten() {
        let text = |name: &str| key[name].as_str().unwrap_or("").to_owned();
        match text("state").as_str() {
            "current" => println!("{}  current", text("kid")),
            state => println!(
                "{}  {state:<8}  retired {}, trusted until {}",
                text("kid"),
                text("retiredAt"),
                text("trustedUntil")
            ),
        }
    }
    match &command {
        SigningCommand::Rotate { .. } => eprintln!(
            "Rotated: new tokens are signed with {}; serving hubs pick it up within {} s.",
            keys.current.key_id(),
            auth.keys_refresh.as_secs()
        ),
        SigningCommand::Retire { key_id, .. } => eprintln!(
            "Retired {key_id}: its tokens are refused within {} s on every serving hub.",
            auth.keys_refresh.as_secs()
        ),
        SigningCommand::List { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// `hygie keys rotate [--patient ID] [--retire-previous]`.
async fn rotate(
    store_args: &StoreArgs,
    patient: Option<&str>,
    retire_previous: bool,
) -> anyhow::Result<ExitCode> {
    let file = config::load_file(store_args.config.as_deref())?;
    let settings = config::store_settings(store_args, &file)?;
    let (raw, vault) = config::open_store_and_vault(&settings).await?;
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    let by = Principal::local_operator(&user).subject;
    let outcome = match patient {
        Some(patient) => vault
            .rotate_patient_key(&raw, patient, &by)
            .await
            .map(|done| {
                println!(
                    "Re-encrypted {} version(s) of Patient/{patient} under data key {} (was {}).",
                    done.versions, done.new_key, done.old_key
                );
            }),
        None => vault
            .rotate_key_file(&raw, &by, retire_previous)
            .await
            .map(|done| {
                println!(
                    "Key file generation {} is active; {} data key(s) re-wrapped under it.",
                    done.generation, done.rewrapped
                );
                if done.retired.is_empty() {
                    println!(
                        "The older generations stay in the key file: backups made before need them."
                    );
                } else {
                    println!(
                        "Retired generation(s) {:?}: backups made before them can no longer be opened with this key file.",
                        done.retired
                    );
                }
                println!(
                    "Replace every copy of the key file (other hub nodes, the safe) with the new one."
                );
            }),
    };
    raw.close().await;
    outcome.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(ExitCode::SUCCESS)
}
