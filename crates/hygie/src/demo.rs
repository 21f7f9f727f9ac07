//! `hygie demo`: a hub on a throwaway data directory, filled with deterministic synthetic
//! patients, and a list of things to try. Works offline: the data is generated here.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use hygie_hub::{Caller, Hub, ReturnPreference};
use hygie_policy::Principal;
use serde_json::Value;

use crate::config::{self, StoreArgs};
use crate::serve;

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Address to listen on (loopback only: the demo runs without authentication).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: String,
    /// Number of synthetic patients.
    #[arg(long, default_value_t = 20)]
    pub patients: usize,
    /// Seed of the generator: the same seed always gives the same people.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep the data in this directory instead of a throwaway one.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let options = hygie_synth::SynthOptions {
        patients: args.patients,
        seed: args.seed,
        ..hygie_synth::SynthOptions::default()
    };
    options
        .check()
        .map_err(|e| anyhow::anyhow!("invalid demo options: {e}"))?;
    if args.patients > hygie_synth::HOSPITAL_BUNDLE_PATIENTS_MAX {
        anyhow::bail!(
            "the demo loads at most {} patients",
            hygie_synth::HOSPITAL_BUNDLE_PATIENTS_MAX
        );
    }
    let throwaway = match &args.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("hygie-demo-")
                .tempdir()
                .context("cannot create a throwaway data directory")?,
        ),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| throwaway.as_ref().map(|d| d.path().to_owned()))
        .expect("one of the two is set");
    let store_args = StoreArgs {
        data_dir: Some(data_dir.clone()),
        database: None,
        config: None,
        vault_key: None,
    };
    let settings = config::store_settings(&store_args, &config::FileSettings::default())?;
    let store = config::open_store(&settings).await?;
    let limits = config::limits(&Default::default(), &Default::default())?;
    let hub = Hub::new(store.clone(), config::hub_config(&limits));
    hub.bring_index_up_to_date()
        .await
        .map_err(|e| anyhow::anyhow!("cannot bring the search index up to date: {e}"))?;
    // The demo data is one transaction, larger than what the HTTP door accepts; the loader
    // gets its own hub on the same store so the served limits stay as configured.
    let mut loader_config = config::hub_config(&limits);
    loader_config.max_bundle_entries = usize::MAX;
    let loader = Hub::new(store, loader_config);

    eprintln!(
        "Generating {} synthetic patients (seed {})…",
        args.patients, args.seed
    );
    let bundle = hygie_synth::hospital_bundle(&options);
    let full_urls: Vec<String> = bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| e["fullUrl"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    let care = CareExample::find(&bundle);
    let operator = Caller::new(Principal::local_operator("demo"), "demo-load");
    let response = loader
        .bundle(&operator, bundle, ReturnPreference::Minimal)
        .await
        .map_err(|e| anyhow::anyhow!("loading the demo data failed: {e}"))?;
    let response: Value = serde_json::from_slice(&response)?;
    let mut assigned: HashMap<String, String> = HashMap::new();
    if let Some(entries) = response["entry"].as_array() {
        for (full_url, entry) in full_urls.iter().zip(entries) {
            if let Some(location) = entry["response"]["location"].as_str() {
                // `…/fhir/Patient/123/_history/1` → `Patient/123`.
                let relative = location.split("/fhir/").nth(1).unwrap_or(location);
                let reference = relative.split("/_history").next().unwrap_or(relative);
                assigned.insert(full_url.clone(), reference.to_owned());
            }
        }
    }
    eprintln!("Loaded {} resources.", assigned.len());

    let address = config::parse_listen(&args.listen)?;
    serve::check_exposure(address, false, false, true)?;
    let listener = hygie_server::bind(address).with_context(|| {
        format!("cannot listen on {address}: is another hub running? Try --listen 127.0.0.1:0")
    })?;
    let bound = listener.local_addr()?;
    let base = format!("http://{bound}/fhir");
    let auth = config::auth_settings(&config::FileSettings::default())?;
    let issuer = hub
        .token_issuer(&auth.issuer)
        .await
        .map_err(|e| anyhow::anyhow!("cannot load the token issuer key: {e}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    // Clinicians and nurses see the patients they care for: their tokens are those of
    // staff members in charge of a current stay, so that the examples below answer.
    let staff = |url: &Option<String>| url.as_ref().and_then(|u| assigned.get(u)).cloned();
    let mut tokens = Vec::new();
    for (role, scope) in DEMO_ROLES {
        let subject = match *role {
            "clinician" => staff(&care.clinician),
            "nurse" => staff(&care.nurse),
            _ => None,
        }
        .unwrap_or_else(|| format!("Practitioner/demo-{role}"));
        let token = issuer.issue(
            &hygie_auth::TokenRequest {
                subject,
                audience: auth.audience.clone(),
                roles: vec![(*role).to_owned()],
                scope: (*scope).to_owned(),
                patient: None,
                ttl_seconds: DEMO_TOKEN_TTL_SECONDS,
            },
            now,
        )?;
        tokens.push((role.to_ascii_uppercase(), token));
    }
    let cared_for = staff(&care.patient);
    // A patient the clinician has no relationship with, for the break-the-glass example.
    let in_care = match staff(&care.clinician) {
        Some(clinician) => hub
            .patients_in_care(&operator, &clinician)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Vec::new(),
    };
    let stranger = assigned
        .values()
        .filter_map(|r| r.strip_prefix("Patient/"))
        .filter(|id| !in_care.iter().any(|p| p == id))
        .min()
        .map(|id| format!("Patient/{id}"));
    print_tries(
        &base,
        &options,
        &assigned,
        &tokens,
        cared_for.as_deref(),
        stranger.as_deref(),
    );
    let app = hygie_server::router(
        hub.clone(),
        hygie_server::HttpConfig {
            tokens: Some(std::sync::Arc::new(hygie_auth::Verifier::new(
                &issuer,
                &auth.audience,
                &auth.roles_claim,
            ))),
            ..hygie_server::HttpConfig::default()
        },
    );
    // The audit log's tree and checkpoints, as `serve` keeps them (`/audit/…`).
    let audit_integrator = hygie_server::spawn_audit_integrator(
        hub.clone(),
        std::time::Duration::from_secs(1),
        |_| {},
    );
    let result = hygie_server::serve(
        app,
        hygie_server::Listen {
            listener,
            tls: None,
            grace: limits.shutdown_grace,
        },
        serve::shutdown_signal(),
    )
    .await;
    audit_integrator.abort();
    hub.close().await;
    result.context("the HTTP server failed")?;
    match throwaway {
        Some(dir) => {
            let path = dir.path().display().to_string();
            dir.close()
                .context("cannot remove the demo data directory")?;
            eprintln!("Demo stopped; its data directory {path} was removed.");
        }
        None => eprintln!("Demo stopped; data kept in {}.", data_dir.display()),
    }
    Ok(ExitCode::SUCCESS)
}

/// The roles the demo prints a token for, and the scopes each token asks for (the role's
/// ceiling then caps them: reception asks for everything and gets demographics).
const DEMO_ROLES: &[(&str, &str)] = &[
    ("clinician", "user/*.cruds"),
    ("nurse", "user/*.crus"),
    ("reception", "user/*.cruds"),
    ("billing", "user/*.rs"),
    ("dpo", "user/*.rs"),
];
const DEMO_TOKEN_TTL_SECONDS: u64 = 8 * 3600;

/// A current stay of the demo data: its patient, its attending physician, and the nurse of
/// its care team (full URLs of the bundle, before the hub assigns ids).
#[derive(Default)]
struct CareExample {
    patient: Option<String>,
    clinician: Option<String>,
    nurse: Option<String>,
}

impl CareExample {
    fn find(bundle: &Value) -> CareExample {
        let resources = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| &entry["resource"]);
        let text = |value: &Value| value.as_str().map(str::to_owned);
        let mut example = CareExample::default();
        for resource in resources {
            match resource["resourceType"].as_str() {
                Some("CareTeam")
                    if resource["status"] == "active"
                        && resource["participant"]
                            .as_array()
                            .is_some_and(|p| p.len() > 1) =>
                {
                    let participants = &resource["participant"];
                    return CareExample {
                        patient: text(&resource["subject"]["reference"]),
                        clinician: text(&participants[0]["member"]["reference"]),
                        nurse: text(&participants[1]["member"]["reference"]),
                    };
                }
                Some("Encounter")
                    if resource["status"] == "in-progress" && example.patient.is_none() =>
                {
                    example.patient = text(&resource["subject"]["reference"]);
                    example.clinician =
                        text(&resource["participant"][0]["individual"]["reference"]);
                }
                _ => {}
            }
        }
        example
    }
}

fn print_tries(
    base: &str,
    options: &hygie_synth::SynthOptions,
    assigned: &HashMap<String, String>,
    tokens: &[(String, String)],
    cared_for: Option<&str>,
    stranger: Option<&str>,
) {
    let people = hygie_synth::demo_people(options);
    println!();
    println!("Hygie demo hub: {base}");
    println!(
        "Every request needs a bearer token: paste these lines into your shell (valid 8 hours)."
    );
    println!("Loopback only. Ctrl-C stops the demo and deletes its data.");
    for (role, token) in tokens {
        println!("  export {role}='{token}'");
    }
    println!();
    println!("Patients (first five):");
    for patient in people.patients.iter().take(5) {
        let reference = assigned.get(&patient.full_url).cloned().unwrap_or_default();
        println!(
            "  {:<28} {:<40} {}",
            patient.name, reference, patient.summary
        );
    }
    println!("Practitioners (first three):");
    for practitioner in people.practitioners.iter().take(3) {
        let reference = assigned
            .get(&practitioner.full_url)
            .cloned()
            .unwrap_or_default();
        println!(
            "  {:<28} {:<40} {}",
            practitioner.name, reference, practitioner.summary
        );
    }
    let first = people.patients.first();
    let first_ref = first
        .and_then(|p| assigned.get(&p.full_url))
        .cloned()
        .unwrap_or_else(|| "Patient/<id>".to_owned());
    // The examples use the patient the clinician's token cares for.
    let patient_ref = cared_for.map(str::to_owned).unwrap_or(first_ref.clone());
    let stranger_ref = stranger.unwrap_or("Patient/<id>");
    let token = people
        .patients
        .iter()
        .find(|p| assigned.get(&p.full_url) == Some(&patient_ref))
        .or(first)
        .map(|p| p.identifier.search_token())
        .unwrap_or_default();
    let as_clinician = "-H \"Authorization: Bearer $CLINICIAN\"";
    println!();
    println!("Try:");
    println!("  curl -s {base}/metadata | head -c 400");
    println!("  curl -s {as_clinician} {base}/{patient_ref}");
    println!("  curl -s {as_clinician} '{base}/Patient?identifier={token}'");
    println!("  curl -s {as_clinician} '{base}/Patient?_count=5'");
    println!("  curl -s {as_clinician} {base}/{patient_ref}/_history");
    println!(
        "  curl -s {as_clinician} -X POST {base}/Patient -H 'Content-Type: application/fhir+json' \\\n       -d '{{\"resourceType\":\"Patient\",\"name\":[{{\"family\":\"Durand\",\"given\":[\"Alice\"]}}]}}'"
    );
    println!("  curl -s {as_clinician} '{base}/Observation?subject={patient_ref}&_count=3'");
    println!(
        "The clinician sees the patients they care for (current stay, care team, department);"
    );
    println!("another patient's data is 403 unless the glass is broken, with a reason:");
    println!("  curl -s {as_clinician} '{base}/Observation?subject={stranger_ref}&_count=1'");
    println!(
        "  curl -s {as_clinician} -H 'X-Break-Glass-Reason: arrived unconscious in the ER' '{base}/Observation?subject={stranger_ref}&_count=1'"
    );
    println!(
        "  curl -s -H \"Authorization: Bearer $DPO\" http://{}/admin/break-glass",
        base.trim_start_matches("http://").trim_end_matches("/fhir")
    );
    println!(
        "Every access is in the audit trail; the DPO sees who opened a patient's record and why:"
    );
    println!(
        "  curl -s -H \"Authorization: Bearer $DPO\" '{base}/AuditEvent?patient={stranger_ref}&purpose=ETREAT'"
    );
    println!("  curl -s -H \"Authorization: Bearer $DPO\" '{base}/{stranger_ref}/$access-log'");
    println!("Reception reads the patient, not their observations (403), and no token is 401:");
    println!("  curl -s -H \"Authorization: Bearer $RECEPTION\" {base}/{patient_ref}");
    println!(
        "  curl -s -H \"Authorization: Bearer $RECEPTION\" '{base}/Observation?subject={patient_ref}'"
    );
    println!("  curl -s {base}/{patient_ref}");
    println!();
}
