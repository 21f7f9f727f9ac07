//! `hygie import PATH…`: loads FHIR Bundles and NDJSON files through the hub (decided,
//! validated, audited like any other write), with a progress bar and a summary.
//!
//! - a transaction Bundle is all-or-nothing: on any bad entry, nothing of it is written;
//!   consecutive transaction Bundles are committed together (each still all-or-nothing and
//!   audited on its own, in file order), and the next ones are read, validated and indexed
//!   on another thread while the store writes: a commit per file made the WAL rewrite the
//!   same index pages hundreds of times;
//! - a batch or collection Bundle, and NDJSON, load resource by resource: a bad one is
//!   reported with its file and position (entry index, line number), the rest loads;
//! - a resource with an `id` keeps it (update semantics), so references between NDJSON
//!   files stay valid; one without an id gets a server id.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use hygie_hub::{Caller, Hub, HubError, PreparedTransaction, ReturnPreference};
use hygie_policy::Principal;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::config::{self, StoreArgs};

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Files or directories (searched for *.json and *.ndjson).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Resources written concurrently (NDJSON and batch Bundles).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

/// The largest file read whole (a Bundle), in bytes. NDJSON is streamed line by line.
const BUNDLE_FILE_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// The longest NDJSON line accepted.
const NDJSON_LINE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Transaction Bundles committed together: up to this many entries in all...
const COMMIT_MAX_ENTRIES: usize = 5_000;
/// ...and up to this many bytes of files (what a group holds in memory, prepared).
const COMMIT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// How files are read and written.
struct Options {
    /// Resources written concurrently.
    concurrency: usize,
    /// The settings' `max_json_depth`, applied to every file and line as to HTTP bodies.
    max_json_depth: usize,
}

#[derive(Default)]
struct Summary {
    files: usize,
    resources_written: usize,
    failures: Vec<String>,
}

fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            walk(path, &mut found)?;
            found.sort();
            files.extend(found);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            anyhow::bail!("{} does not exist", path.display());
        }
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("json" | "ndjson")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

fn describe(error: &HubError) -> String {
    error
        .issues
        .iter()
        .map(|issue| match &issue.expression {
            Some(expression) => format!("{} (at {expression})", issue.diagnostics),
            None => issue.diagnostics.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub async fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let file_settings = config::load_file(args.store.config.as_deref())?;
    let limits = config::limits(&Default::default(), &file_settings.limits)?;
    let files = collect_files(&args.paths)?;
    if files.is_empty() {
        anyhow::bail!("no .json or .ndjson files found in the given paths");
    }
    let settings = config::store_settings(&args.store, &file_settings)?;
    let store = config::open_store(&settings).await?;
    let mut hub_config = config::hub_config(&limits);
    // An import may load Bundles larger than what the HTTP door accepts.
    hub_config.max_bundle_entries = hub_config.max_bundle_entries.max(100_000);
    let hub = Hub::new(store, hub_config);
    let reindexed = hub
        .bring_index_up_to_date()
        .await
        .map_err(|e| anyhow::anyhow!("cannot bring the search index up to date: {e}"))?;
    if reindexed > 0 {
        eprintln!("Re-indexed {reindexed} resources for this version's search rules.");
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    let caller = Arc::new(Caller::new(Principal::local_operator(&user), "import"));
    let total_bytes: u64 = files
        .iter()
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let progress = ProgressBar::new(total_bytes);
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} {msg}",
        )
        .expect("valid template"),
    );
    let options = Options {
        concurrency: args.concurrency.max(1),
        max_json_depth: limits.max_json_depth,
    };
    let started = std::time::Instant::now();
    let mut summary = Summary::default();
    // One thread reads, parses and prepares files in order, a group of transaction
    // Bundles at a time; this task writes them, in the same order. At most one group
    // waits ready while another is written.
    let (groups, mut ready) = tokio::sync::mpsc::channel::<Work>(1);
    let reader = {
        let hub = hub.clone();
        let caller = caller.clone();
        let max_json_depth = options.max_json_depth;
        tokio::task::spawn_blocking(move || {
            read_ahead(&hub, &caller, files, max_json_depth, groups)
        })
    };
    while let Some(work) = ready.recv().await {
        match work {
            Work::Transactions(group) => {
                let bytes: u64 = group.iter().map(|t| t.bytes).sum();
                if let Some(last) = group.last() {
                    progress.set_message(file_name(&last.file));
                }
                let (files, transactions): (Vec<_>, Vec<_>) = group
                    .into_iter()
                    .map(|t| ((t.file, t.entries), t.prepared))
                    .unzip();
                let results = hub
                    .commit_transactions(&caller, transactions, ReturnPreference::Minimal)
                    .await;
                for ((file, entries), result) in files.into_iter().zip(results) {
                    summary.files += 1;
                    match result {
                        Ok(_) => summary.resources_written += entries,
                        Err(error) => summary.failures.push(format!(
                            "{}: transaction not written: {}",
                            file.display(),
                            describe(&error)
                        )),
                    }
                }
                progress.inc(bytes);
            }
            Work::Failed { file, bytes, why } => {
                summary.files += 1;
                summary.failures.push(format!("{}: {why}", file.display()));
                progress.inc(bytes);
            }
            Work::Other { file, bytes, value } => {
                progress.set_message(file_name(&file));
                let result = match value {
                    Some(value) => {
                        import_resources(&hub, &caller, &file, value, &options, &mut summary).await
                    }
                    None => import_ndjson(&hub, &caller, &file, &options, &mut summary).await,
                };
                if let Err(error) = result {
                    summary
                        .failures
                        .push(format!("{}: {error:#}", file.display()));
                }
                summary.files += 1;
                progress.inc(bytes);
            }
        }
    }
    if let Err(error) = reader.await {
        summary
            .failures
            .push(format!("the file reader failed: {error}"));
    }
    progress.finish_and_clear();
    if summary.resources_written > 0
        && let Err(error) = hub.refresh_statistics().await
    {
        // The data is in; only the query plans may be poor until the database's own
        // statistics catch up.
        eprintln!("warning: could not refresh the database statistics: {error}");
    }
    hub.close().await;
    let elapsed = started.elapsed();
    eprintln!(
        "Imported {} resources from {} files in {:.1} s ({:.0} resources/s); {} failed.",
        summary.resources_written,
        summary.files,
        elapsed.as_secs_f64(),
        summary.resources_written as f64 / elapsed.as_secs_f64().max(0.001),
        summary.failures.len()
    );
    for failure in &summary.failures {
        eprintln!("  error: {failure}");
    }
    Ok(if summary.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What the reader thread hands to the writing task, in file order.
enum Work {
    /// Consecutive transaction Bundles, prepared, to commit together.
    Transactions(Vec<ReadyTransaction>),
    /// A file that is not a transaction Bundle: a parsed Bundle or resource, or (`None`)
    /// an NDJSON file, streamed by the writing task itself.
    Other {
        file: PathBuf,
        bytes: u64,
        value: Option<Value>,
    },
    /// A file that cannot be imported, and why.
    Failed {
        file: PathBuf,
        bytes: u64,
        why: String,
    },
}

struct ReadyTransaction {
    file: PathBuf,
    bytes: u64,
    entries: usize,
    prepared: PreparedTransaction,
}

fn file_name(file: &Path) -> String {
    file.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads every file in order; prepares transaction Bundles (parse, validate, index) and
/// groups consecutive ones up to `COMMIT_MAX_ENTRIES` / `COMMIT_MAX_BYTES`.
fn read_ahead(
    hub: &Hub,
    caller: &Caller,
    files: Vec<PathBuf>,
    max_json_depth: usize,
    out: tokio::sync::mpsc::Sender<Work>,
) {
    let mut group: Vec<ReadyTransaction> = Vec::new();
    let (mut group_entries, mut group_bytes) = (0usize, 0u64);
    let send = |work: Work| out.blocking_send(work).is_ok();
    for file in files {
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let work = if file.extension().and_then(|e| e.to_str()) == Some("ndjson") {
            Work::Other {
                file,
                bytes,
                value: None,
            }
        } else {
            match read_json(&file, bytes, max_json_depth) {
                Err(error) => Work::Failed {
                    file,
                    bytes,
                    why: format!("{error:#}"),
                },
                Ok(value) if is_transaction(&value) => {
                    let entries = value["entry"].as_array().map(Vec::len).unwrap_or(0);
                    match hub.prepare_transaction(caller, &value) {
                        Ok(prepared) => {
                            if !group.is_empty()
                                && (group_entries + entries > COMMIT_MAX_ENTRIES
                                    || group_bytes + bytes > COMMIT_MAX_BYTES)
                                && !send(Work::Transactions(std::mem::take(&mut group)))
                            {
                                return;
                            }
                            if group.is_empty() {
                                (group_entries, group_bytes) = (0, 0);
                            }
                            group_entries += entries;
                            group_bytes += bytes;
                            group.push(ReadyTransaction {
                                file,
                                bytes,
                                entries,
                                prepared,
                            });
                            continue;
                        }
                        Err(error) => Work::Failed {
                            file,
                            bytes,
                            why: format!("transaction not written: {}", describe(&error)),
                        },
                    }
                }
                Ok(value) => Work::Other {
                    file,
                    bytes,
                    value: Some(value),
                },
            }
        };
        // Anything else is handled after the group before it, to keep the file order.
        if !group.is_empty() && !send(Work::Transactions(std::mem::take(&mut group))) {
            return;
        }
        if !send(work) {
            return;
        }
    }
    if !group.is_empty() {
        send(Work::Transactions(group));
    }
}

fn read_json(file: &Path, size: u64, max_json_depth: usize) -> anyhow::Result<Value> {
    if size > BUNDLE_FILE_MAX_BYTES {
        anyhow::bail!(
            "file is {size} bytes, over the {BUNDLE_FILE_MAX_BYTES}-byte limit for a Bundle: split it or use NDJSON"
        );
    }
    let bytes = std::fs::read(file)?;
    hygie_fhir::json_depth::check_json_depth(&bytes, max_json_depth)?;
    serde_json::from_slice(&bytes).context("not valid JSON")
}

fn is_transaction(value: &Value) -> bool {
    value.get("resourceType").and_then(Value::as_str) == Some("Bundle")
        && value.get("type").and_then(Value::as_str) == Some("transaction")
}

/// A Bundle other than a transaction (its entries one by one), or a single resource.
async fn import_resources(
    hub: &Hub,
    caller: &Arc<Caller>,
    file: &Path,
    value: Value,
    options: &Options,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let is_bundle = value.get("resourceType").and_then(Value::as_str) == Some("Bundle");
    let resources: Vec<(String, Value)> = if is_bundle {
        value["entry"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| {
                        e.get("resource")
                            .map(|r| (format!("{}: entry {i}", file.display()), r.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    } else {
        vec![(file.display().to_string(), value)]
    };
    write_all(hub, caller, resources, options.concurrency, summary).await;
    Ok(())
}

async fn import_ndjson(
    hub: &Hub,
    caller: &Arc<Caller>,
    file: &Path,
    options: &Options,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let reader = tokio::io::BufReader::new(tokio::fs::File::open(file).await?);
    let mut lines = reader.lines();
    let mut chunk = Vec::with_capacity(1_000);
    let mut number = 0usize;
    while let Some(line) = lines.next_line().await? {
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let position = format!("{}:{number}", file.display());
        if line.len() > NDJSON_LINE_MAX_BYTES {
            summary.failures.push(format!(
                "{position}: line longer than {NDJSON_LINE_MAX_BYTES} bytes"
            ));
            continue;
        }
        if let Err(error) =
            hygie_fhir::json_depth::check_json_depth(line.as_bytes(), options.max_json_depth)
        {
            summary.failures.push(format!("{position}: {error}"));
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(resource) => chunk.push((position, resource)),
            Err(error) => summary
                .failures
                .push(format!("{position}: not valid JSON: {error}")),
        }
        if chunk.len() >= 1_000 {
            write_all(
                hub,
                caller,
                std::mem::take(&mut chunk),
                options.concurrency,
                summary,
            )
            .await;
        }
    }
    write_all(hub, caller, chunk, options.concurrency, summary).await;
    Ok(())
}

/// Writes resources with bounded concurrency; each is its own audited interaction.
async fn write_all(
    hub: &Hub,
    caller: &Arc<Caller>,
    resources: Vec<(String, Value)>,
    concurrency: usize,
    summary: &mut Summary,
) {
    let mut tasks = tokio::task::JoinSet::new();
    let mut pending = resources.into_iter();
    loop {
        while tasks.len() < concurrency {
            let Some((position, resource)) = pending.next() else {
                break;
            };
            let hub = hub.clone();
            let caller = caller.clone();
            tasks.spawn(async move {
                let result = write_one(&hub, &caller, resource).await;
                (position, result)
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        match joined {
            Ok((_, Ok(()))) => summary.resources_written += 1,
            Ok((position, Err(error))) => summary
                .failures
                .push(format!("{position}: {}", describe(&error))),
            Err(error) => summary
                .failures
                .push(format!("an import task failed: {error}")),
        }
    }
}

async fn write_one(hub: &Hub, caller: &Caller, resource: Value) -> Result<(), HubError> {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| HubError::bad_request("the resource has no resourceType"))?
        .to_owned();
    match resource
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
    {
        Some(id) => hub
            .update(caller, &resource_type, &id, resource, None)
            .await
            .map(|_| ()),
        None => hub
            .create(caller, &resource_type, resource, None)
            .await
            .map(|_| ()),
    }
}
