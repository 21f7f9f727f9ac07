//! `hygie backup create | verify | restore`: online, consistent, encrypted backups of a
//! store (SQLite or PostgreSQL) and their restoration into an empty one.
//!
//! - `create --out FILE`: a snapshot of every table (`hygie_store::backup`: SQLite's online
//!   backup API, or one PostgreSQL `REPEATABLE READ` transaction) while the hub serves,
//!   written as `hygie-backup/1` ([`format`]) to `FILE.partial`, fsynced, then renamed.
//! - `verify FILE`: without a database, checks everything [`check`] checks; exit 1 names
//!   the first problem.
//! - `restore FILE (--data-dir DIR | --database URL)`: the same checks while loading into
//!   an empty target of the same backend; any failure removes what it created. Then the
//!   restored store is opened the normal way (remaining migrations, key file bound) and
//!   its audit log verified (`hygie audit verify`).
//!
//! The backup's key is random, wrapped under the key file's reserved backup slot: the key
//! file is never in a backup, and is needed to read one. Erasing a patient punctures their
//! slot only, so a backup restored after an erasure opens, without that patient's data.

mod check;
mod format;

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use hygie_store::backup::{Restorer, Snapshot, Target};
use hygie_vault::{DataKey, Keyring};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{self, StoreArgs};
use check::{Checker, Report, unwrap_backup_key};
use format::{
    AuditSummary, ChunkReader, ChunkWriter, FORMAT, Header, Record, RecordReader, RecordWriter,
    TableRows,
};

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub command: BackupCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum BackupCommand {
    /// Back up a store while it serves: every table of one snapshot, encrypted under a key
    /// wrapped by the key file (which is never in the backup).
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// The backup file to write (never overwritten; written as FILE.partial first).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Check a backup without restoring it: integrity, decryptability, row counts, data
    /// keys, sealed resources, and the audit tree against its latest signed checkpoint.
    Verify {
        /// The backup file.
        file: PathBuf,
        /// The key file of the backup's installation.
        #[arg(long, env = "HYGIE_VAULT_KEY_FILE", value_name = "FILE")]
        vault_key: Option<PathBuf>,
    },
    /// Restore a backup into an empty store of the backend it was made from, checking it
    /// while loading; then verify the restored audit log.
    Restore {
        /// The backup file.
        file: PathBuf,
        #[command(flatten)]
        into: RestoreInto,
        /// The key file of the backup's installation.
        #[arg(long, env = "HYGIE_VAULT_KEY_FILE", value_name = "FILE")]
        vault_key: Option<PathBuf>,
        /// TOML settings used to open the restored store afterwards.
        #[arg(long, env = "HYGIE_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Where to restore: given explicitly (no environment default), since it must be empty.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct RestoreInto {
    /// A SQLite data directory that does not exist or is empty.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL database without tables (postgres://…).
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
}

pub async fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BackupCommand::Create { store, out } => create(store, out).await,
        BackupCommand::Verify { file, vault_key } => verify(file, vault_key).await,
        BackupCommand::Restore {
            file,
            into,
            vault_key,
            config,
        } => restore(file, into, vault_key, config).await,
    }
}

/// The keyring: `HYGIE_VAULT_KEY`, else the key file.
fn load_keyring(path: Option<&Path>) -> anyhow::Result<Keyring> {
    if let Ok(text) = std::env::var("HYGIE_VAULT_KEY")
        && !text.trim().is_empty()
    {
        return Keyring::from_text(&text).map_err(|e| anyhow!("HYGIE_VAULT_KEY: {e}"));
    }
    let Some(path) = path else {
        bail!(
            "no key file given: a backup is read with the key file of its installation; give it with --vault-key FILE (or HYGIE_VAULT_KEY_FILE)"
        );
    };
    Keyring::load(path).map_err(|e| anyhow!("cannot read the key file: {e}"))
}

fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} rows {what} {{msg}}"
        ))
        .expect("a valid template"),
    );
    bar
}

/// The local operator running the command, as the audit log names them.
fn operator() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "operator".to_owned());
    hygie_policy::Principal::local_operator(&user).subject
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// `FILE.partial`, beside it.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_owned();
    name.push(".partial");
    out.with_file_name(name)
}

/// Removes the partial file unless the backup completed.
struct PartialFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn create(store: StoreArgs, out: PathBuf) -> anyhow::Result<ExitCode> {
    let file = config::load_file(store.config.as_deref())?;
    let settings = config::store_settings(&store, &file)?;
    let target = Target::resolve(settings.database.as_deref(), &settings.data_dir)
        .map_err(|e| anyhow!("{e}"))?;
    let keyring = load_keyring(Some(&settings.vault_key_file))?;
    let summary = tokio::task::spawn_blocking(move || create_blocking(&target, &keyring, &out))
        .await
        .context("the backup task failed")??;
    println!("{summary}");
    // A copy of everything was taken: said in the audit log (after the snapshot, so the
    // backup itself does not hold this record).
    let store = config::open_store(&settings).await?;
    let recorded = hygie_hub::vault::record_operation(
        &store,
        "backup",
        &operator(),
        format!("backup taken: {summary}"),
    )
    .await;
    store.close().await;
    recorded.map_err(|e| anyhow!("the backup was written but could not be audited: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

fn create_blocking(target: &Target, keyring: &Keyring, out: &Path) -> anyhow::Result<String> {
    let started = Instant::now();
    if out.exists() {
        bail!(
            "{} exists: a backup never overwrites a file; choose another name",
            out.display()
        );
    }
    let partial = partial_path(out);
    if partial.exists() {
        bail!(
            "{} exists: another backup is writing it, or one was interrupted; remove it if none runs",
            partial.display()
        );
    }
    let directory = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut snapshot = Snapshot::take(target, &directory)
        .map_err(|e| anyhow!("cannot take a snapshot of {}: {e}", target.describe()))?;

    // The key file must be this database's: a backup under another would not restore.
    let installation = snapshot.meta("vault.installation")?.ok_or_else(|| {
        anyhow!(
            "{} is not bound to a key file yet (no vault.installation): start the hub on it once, then back it up",
            target.describe()
        )
    })?;
    if installation != keyring.installation() {
        bail!(
            "the key file is of installation {}, but {} is of installation {installation}: give this database's key file",
            keyring.installation(),
            target.describe()
        );
    }
    let generation = keyring.active_generation();
    if let Some(recorded) = snapshot.meta(&format!("vault.check.{generation}"))?
        && recorded != keyring.check_value(generation)?
    {
        bail!(
            "generation {generation} of the key file is not the one this database's keys were wrapped under (check value differs): wrong or regenerated key file"
        );
    }

    let backup_key = DataKey::generate();
    let backup_id = uuid::Uuid::new_v4();
    let created_us = now_us();
    let tables = snapshot.tables().to_vec();
    let mut header = Header {
        format: FORMAT.to_owned(),
        backup_id: backup_id.to_string(),
        created_us,
        created: hygie_hub::format_instant(created_us),
        backend: snapshot.backend().to_owned(),
        schema_version: snapshot.schema_version(),
        installation,
        generation,
        wrapped_key: String::new(),
        tables: tables
            .iter()
            .map(|info| TableRows {
                name: info.name.clone(),
                rows: info.rows,
            })
            .collect(),
        audit: AuditSummary {
            tree_size: snapshot
                .meta("audit.tree_size")?
                .map(|size| size.parse::<u64>())
                .transpose()
                .context("audit.tree_size is not a number")?
                .unwrap_or(0),
            checkpoint: snapshot.latest_checkpoint()?.map(|(_, note)| note),
        },
    };
    let wrapped = keyring.wrap(
        generation,
        hygie_vault::ggm::BACKUP_SLOT,
        &backup_key,
        &header.key_aad(),
    )?;
    header.wrapped_key = base64::engine::general_purpose::STANDARD.encode(wrapped);
    let line = header.to_line();
    if line.len() > format::MAX_HEADER_BYTES {
        bail!(
            "the header would take {} bytes, more than {}",
            line.len(),
            format::MAX_HEADER_BYTES
        );
    }

    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options
        .open(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut guard = PartialFile {
        path: partial.clone(),
        keep: false,
    };
    let mut output = BufWriter::with_capacity(1 << 20, file);
    output.write_all(&line)?;
    output.write_all(b"\n")?;
    let chunks = ChunkWriter::new(output, backup_key.as_bytes(), *backup_id.as_bytes());
    let mut records = RecordWriter::new(chunks);
    records.header(&line)?;
    let total: u64 = tables.iter().map(|info| info.rows).sum();
    let bar = progress_bar(total, "backed up");
    for info in &tables {
        records.table(&info.name, &info.columns)?;
        let rows = snapshot.dump(&info.name, |row| -> anyhow::Result<()> {
            records.row(row)?;
            bar.inc(1);
            Ok(())
        })?;
        if rows != info.rows {
            bail!(
                "the table {} gave {rows} rows where the snapshot counted {}: not one snapshot",
                info.name,
                info.rows
            );
        }
        records.end_table(rows)?;
    }
    for sequence in snapshot.sequences()? {
        records.sequence(&sequence.name, sequence.value)?;
    }
    records.end(tables.len() as u32)?;
    snapshot.finish()?;
    let chunk_writer = records.into_inner();
    let written = chunk_writer.written;
    let (output, chunks) = chunk_writer.finish()?;
    let file = output
        .into_inner()
        .map_err(|e| anyhow!("cannot write {}: {}", partial.display(), e.error()))?;
    file.sync_all()
        .with_context(|| format!("cannot fsync {}", partial.display()))?;
    drop(file);
    std::fs::rename(&partial, out)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), out.display()))?;
    guard.keep = true;
    File::open(&directory)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot fsync {}", directory.display()))?;
    bar.finish_and_clear();
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(written);
    let seconds = started.elapsed().as_secs_f64();
    Ok(format!(
        "backup {backup_id} of {} written to {}: {} tables, {total} rows, {chunks} chunks, {:.1} MB, audit tree of {} leaves; in {seconds:.1} s ({:.0} rows/s, {:.1} MB/s)",
        target.describe(),
        out.display(),
        tables.len(),
        megabytes(bytes),
        header.audit.tree_size,
        total as f64 / seconds.max(1e-9),
        megabytes(bytes) / seconds.max(1e-9),
    ))
}

/// A backup file opened: its header (and the header's exact line), and the rest.
fn open_backup(path: &Path) -> anyhow::Result<(Header, Vec<u8>, BufReader<File>)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let (header, line) =
        format::read_header(&mut input).map_err(|why| anyhow!("{}: {why}", path.display()))?;
    header
        .id_bytes()
        .map_err(|why| anyhow!("{}: {why}", path.display()))?;
    Ok((header, line, input))
}

/// Streams the records through the checks, and into `restorer` when there is one.
fn stream(
    header: &Header,
    line: &[u8],
    input: BufReader<File>,
    keyring: &Keyring,
    mut restorer: Option<&mut Restorer>,
) -> anyhow::Result<(Report, u64)> {
    let key = unwrap_backup_key(keyring, header)?;
    let id = header.id_bytes().map_err(|why| anyhow!(why))?;
    let mut reader = RecordReader::new(ChunkReader::new(input, key.as_bytes(), id));
    let mut checker = Checker::new(keyring, header.clone());
    let total: u64 = header.tables.iter().map(|table| table.rows).sum();
    let bar = progress_bar(
        total,
        if restorer.is_some() {
            "restored"
        } else {
            "verified"
        },
    );
    let mut report = None;
    while let Some(record) = reader.next_record()? {
        match record {
            Record::Header(copy) => checker.header_copy(line, &copy)?,
            Record::Table { name, columns } => {
                checker.begin_table(&name, &columns)?;
                if let Some(restorer) = restorer.as_deref_mut() {
                    restorer.begin_table(&name, &columns)?;
                }
            }
            Record::Row(values) => {
                checker.row(&values)?;
                if let Some(restorer) = restorer.as_deref_mut() {
                    restorer.row(&values)?;
                }
                bar.inc(1);
            }
            Record::EndTable { rows } => {
                checker.end_table(rows)?;
                if let Some(restorer) = restorer.as_deref_mut() {
                    restorer.end_table()?;
                }
            }
            Record::Sequence { name, value } => {
                if let Some(restorer) = restorer.as_deref_mut() {
                    restorer.set_sequence(&hygie_store::backup::SequenceValue { name, value })?;
                }
            }
            Record::End { tables } => report = Some(checker.finish(tables)?),
        }
    }
    bar.finish_and_clear();
    let report = report.ok_or_else(|| anyhow!("the backup's stream has no end record"))?;
    Ok((report, reader.chunks().chunks()))
}

fn describe_header(path: &Path, header: &Header) -> String {
    format!(
        "backup {} ({}, {}): made {} of a {} store at schema version {}, installation {}",
        path.display(),
        header.format,
        header.backup_id,
        header.created,
        header.backend,
        header.schema_version,
        header.installation,
    )
}

fn describe_report(report: &Report, chunks: u64) -> String {
    let checkpoint = if report.checkpoint {
        format!(
            "the latest checkpoint ({} leaves) verifies with the log's key, and the leaves give its root",
            report.checkpoint_size
        )
    } else {
        "no checkpoint yet".to_owned()
    };
    format!(
        "  chunks: {chunks}, each authenticated, ending with the final one\n  \
         tables: {}, rows: {} (as the header lists)\n  \
         data keys: {} ({} unwrap with the key file, {} erased)\n  \
         resource versions: {} open with their keys, {} erased, {} in clear (written before encryption), {} deletions\n  \
         audit log: {} leaves ({} pruned, {} pending); {checkpoint}",
        report.tables,
        report.rows,
        report.data_keys,
        report.data_keys - report.erased_keys,
        report.erased_keys,
        report.versions_opened,
        report.versions_erased,
        report.versions_in_clear,
        report.tombstones,
        report.leaves,
        report.pruned_leaves,
        report.pending_leaves,
    )
}

async fn verify(file: PathBuf, vault_key: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let keyring = load_keyring(vault_key.as_deref())?;
    let summary = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let started = Instant::now();
        let (header, line, input) = open_backup(&file)?;
        let (report, chunks) = stream(&header, &line, input, &keyring, None)
            .map_err(|e| anyhow!("{}: {e:#}", file.display()))?;
        let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let seconds = started.elapsed().as_secs_f64();
        Ok(format!(
            "{}\n{}\nbackup verified: every check passed, {:.1} MB in {seconds:.1} s ({:.0} rows/s, {:.1} MB/s)",
            describe_header(&file, &header),
            describe_report(&report, chunks),
            megabytes(bytes),
            report.rows as f64 / seconds.max(1e-9),
            megabytes(bytes) / seconds.max(1e-9),
        ))
    })
    .await
    .context("the verification task failed")??;
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

async fn restore(
    file: PathBuf,
    into: RestoreInto,
    vault_key: Option<PathBuf>,
    config_file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let store_args = StoreArgs {
        data_dir: into.data_dir.clone(),
        database: into.database.clone(),
        config: config_file,
        vault_key: vault_key.clone(),
    };
    let file_settings = config::load_file(store_args.config.as_deref())?;
    let mut settings = config::store_settings(&store_args, &file_settings)?;
    // The restored store is where the flags say, whatever the settings file names.
    settings.database = into.database.clone();
    if let Some(dir) = &into.data_dir {
        settings.data_dir = dir.clone();
    }
    let target = match (&into.data_dir, &into.database) {
        (_, Some(url)) => Target::resolve(Some(url), Path::new(".")),
        (Some(dir), None) => Target::resolve(None, dir),
        (None, None) => unreachable!("clap requires one"),
    }
    .map_err(|e| anyhow!("{e}"))?;
    let keyring = load_keyring(vault_key.as_deref())?;

    let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let started = Instant::now();
        let (header, line, input) = open_backup(&file)?;
        // Everything that needs no target first: a wrong key file touches nothing.
        unwrap_backup_key(&keyring, &header).map_err(|e| anyhow!("{}: {e:#}", file.display()))?;
        let mut restorer = Restorer::begin(&target, &header.backend, header.schema_version)
            .map_err(|e| anyhow!("cannot restore into {}: {e}", target.describe()))?;
        match stream(&header, &line, input, &keyring, Some(&mut restorer)) {
            Ok((report, chunks)) => {
                restorer.commit().map_err(|e| {
                    anyhow!(
                        "{}: the restore failed at its commit: {e}; what it had created was removed",
                        file.display()
                    )
                })?;
                let seconds = started.elapsed().as_secs_f64();
                let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                Ok(format!(
                    "{}\n{}\nrestored into {}: {} rows, {:.1} MB in {seconds:.1} s ({:.0} rows/s, {:.1} MB/s)",
                    describe_header(&file, &header),
                    describe_report(&report, chunks),
                    target.describe(),
                    report.rows,
                    megabytes(bytes),
                    report.rows as f64 / seconds.max(1e-9),
                    megabytes(bytes) / seconds.max(1e-9),
                ))
            }
            Err(error) => {
                let undone = restorer.abort();
                bail!(
                    "{}: {error:#}; the restore was abandoned: {undone}",
                    file.display()
                )
            }
        }
    })
    .await
    .context("the restore task failed")??;
    println!("{loaded}");

    // The normal path: remaining migrations, the key file bound and checked.
    let store = config::open_store(&settings)
        .await
        .context("the restored store does not open")?;
    let limits = config::limits(&Default::default(), &file_settings.limits)?;
    let (audit, _) = config::audit_settings(&file_settings)?;
    let mut hub_config = config::hub_config(&limits);
    hub_config.audit = audit;
    hygie_hub::vault::record_operation(
        &store,
        "restore",
        &operator(),
        format!("restored: {loaded}"),
    )
    .await
    .map_err(|e| anyhow!("the restored store cannot be audited: {e}"))?;
    let hub = hygie_hub::Hub::new(store, hub_config);
    let verified = hub.verify_audit(None, &[]).await;
    hub.close().await;
    match verified.map_err(|e| anyhow!("{e}"))? {
        Ok(report) => {
            println!(
                "audit verify of the restored store: OK, {} leaves ({} pruned), {} checkpoints, root {}",
                report.leaves,
                report.pruned,
                report.checkpoints,
                hex(&report.root)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            eprintln!(
                "error: audit verify of the restored store FAILED: {failure}; the restored data is left in place for inspection: do not serve it before you know why"
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
