//! `hygie`: the health-data hub. A thin binary over the hub's crates: it parses the
//! command line and settings, opens the store, and wires the front doors to the hub.
#![forbid(unsafe_code)]

mod audit;
mod backup;
mod btg;
mod config;
mod demo;
mod hl7;
mod import;
mod keys;
mod patient;
mod revoke;
mod serve;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: frees from another thread without locking (the writer thread and the HTTP
/// workers hand each other every request's buffers). Its `override` feature makes it the
/// C `malloc` of the process too, and so SQLite's, whose allocations were about a twentieth
/// of the writer thread's time under glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hygie: a FHIR R4 health-data hub where every access is decided, minimized and audited.
#[derive(Parser, Debug)]
#[command(name = "hygie", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr: `text` or `json`.
    #[arg(long, global = true, env = "HYGIE_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the hub: FHIR R4 over HTTP(S).
    Serve(serve::ServeArgs),
    /// Start a hub on a throwaway data directory filled with synthetic patients.
    Demo(demo::DemoArgs),
    /// Load FHIR Bundles (e.g. Synthea output) and NDJSON files into a hub's store.
    Import(import::ImportArgs),
    /// Print a bearer token signed by the hub's own issuer.
    Token(token::TokenArgs),
    /// Revoke a token (by jti) or every token of a principal, or lift a revocation.
    Revoke(revoke::RevokeArgs),
    /// Review break-the-glass accesses: list them, close a review.
    Btg(btg::BtgArgs),
    /// Manage the hub's keys: those that sign its own tokens, and those of encryption at rest.
    Keys(keys::KeysArgs),
    /// A patient's data as a whole: erase it (GDPR Art. 17).
    Patient(patient::PatientArgs),
    /// The audit log: verify it, print its key.
    Audit(audit::AuditArgs),
    /// Online, consistent, encrypted backups: create, verify, restore.
    Backup(backup::BackupArgs),
    /// HL7 v2 over MLLP: send messages to a listener (`hygie serve --mllp-listen`).
    Hl7(hl7::Hl7Args),
}

fn init_logging(format: Option<&str>) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format.unwrap_or("text") {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("--log-format must be text or json, not {other:?}"),
    }
    Ok(())
}

fn main() -> ExitCode {
    if hygie_hub::UNAUDITED_BENCH_BUILD {
        // Before anything else, even `--version`: such a binary must never pass unnoticed.
        let line = "!".repeat(88);
        eprintln!(
            "{line}\n!! THIS HYGIE BINARY DOES NOT AUDIT: built with the `bench-unaudited` feature, for\n!! benchmarks only. No access it serves is recorded in the audit log. It serves on a\n!! loopback address only. Never run it on real data: build without the feature.\n{line}"
        );
    }
    if hygie_store::AUDIT_FLOOR_BENCH_BUILD {
        let line = "!".repeat(88);
        eprintln!(
            "{line}\n!! THIS HYGIE BINARY KEEPS NO VERIFIABLE AUDIT LOG: built with the `bench-audit-floor`\n!! feature, for benchmarks only. Its audit leaves are stored without index or tree. It\n!! serves on a loopback address only. Never run it on real data: build without the feature.\n{line}"
        );
    }
    let cli = Cli::parse();
    if let Err(error) = init_logging(cli.log_format.as_deref()) {
        eprintln!("error: {error:#}");
        return ExitCode::from(2);
    }
    if hygie_hub::UNAUDITED_BENCH_BUILD {
        tracing::warn!("built with `bench-unaudited`: accesses are NOT audited (benchmarks only)");
    }
    if hygie_store::AUDIT_FLOOR_BENCH_BUILD {
        tracing::warn!(
            "built with `bench-audit-floor`: the audit log is neither indexed nor verifiable (benchmarks only)"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Import(args) => import::run(args).await,
            Command::Token(args) => token::run(args).await,
            Command::Revoke(args) => revoke::run(args).await,
            Command::Btg(args) => btg::run(args).await,
            Command::Keys(args) => keys::run(args).await,
            Command::Patient(args) => patient::run(args).await,
            Command::Audit(args) => audit::run(args).await,
            Command::Backup(args) => backup::run(args).await,
            Command::Hl7(args) => hl7::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
