//! The JSON lines sink: one `{"index":N,"event":<AuditEvent>}` per line, fsynced per batch.
//!
//! The AuditEvent is written as its leaf bytes, not re-serialized, so that a line's `event`
//! is byte for byte what the Merkle log hashed (a verifier can recompute the leaf hash from
//! the file). The index sits beside it rather than inside it, since adding a member would
//! change the event. A leaf with line breaks between its tokens (hygie-audit writes compact
//! JSON, so never in practice) has them turned into spaces: JSON strings cannot hold raw
//! line breaks, so the event means the same and the line stays one line.
//!
//! The file is opened for each batch, so an operator (or logrotate without `copytruncate`)
//! may rename it at any time: the next batch creates a new one. Past `max_file_bytes` the
//! sink refuses to write and says so; it never deletes or overwrites a line.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::exporter::ExportError;
use crate::source::ExportLeaf;
use crate::syslog::BadLeaf;

/// Appends the line of `leaf` (with its `\n`) to `out`.
pub fn write_line(leaf: &ExportLeaf, out: &mut Vec<u8>) -> Result<(), BadLeaf> {
    let bad = |reason: String| BadLeaf {
        index: leaf.index,
        reason,
    };
    let text = std::str::from_utf8(&leaf.leaf).map_err(|e| bad(format!("not UTF-8: {e}")))?;
    if !text.trim_start().starts_with('{') {
        return Err(bad("not a JSON object".to_owned()));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| bad(e.to_string()))?;
    out.extend_from_slice(b"{\"index\":");
    out.extend_from_slice(leaf.index.to_string().as_bytes());
    out.extend_from_slice(b",\"event\":");
    let start = out.len();
    out.extend_from_slice(text.as_bytes());
    for byte in &mut out[start..] {
        if matches!(*byte, b'\n' | b'\r') {
            *byte = b' ';
        }
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}

pub(crate) struct JsonlSink {
    path: PathBuf,
    max_file_bytes: u64,
    /// The last write succeeded: the file is writable (shown as `connected`).
    healthy: bool,
}

impl JsonlSink {
    pub(crate) fn new(path: PathBuf, max_file_bytes: u64) -> JsonlSink {
        JsonlSink {
            path,
            max_file_bytes,
            healthy: false,
        }
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Appends the batch (or as much of it as the file may hold) and fsyncs: the count is of
    /// leaves on stable storage. Lines before a bad leaf are written; the bad one is reported
    /// when it comes first.
    pub(crate) async fn deliver(&mut self, batch: &[ExportLeaf]) -> Result<usize, ExportError> {
        let mut lines = Vec::new();
        let mut ends = Vec::with_capacity(batch.len());
        for leaf in batch {
            if let Err(bad) = write_line(leaf, &mut lines) {
                if ends.is_empty() {
                    return Err(bad.into());
                }
                break;
            }
            ends.push(lines.len());
        }
        let path = self.path.clone();
        let max_file_bytes = self.max_file_bytes;
        // File IO blocks; a cancelled batch still finishes here, but its cursor is not saved,
        // so at worst it is written twice.
        let result =
            tokio::task::spawn_blocking(move || append(&path, max_file_bytes, &lines, &ends))
                .await
                .map_err(|e| ExportError::File {
                    path: self.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
        self.healthy = result.is_ok();
        result
    }
}

fn append(
    path: &Path,
    max_file_bytes: u64,
    lines: &[u8],
    ends: &[usize],
) -> Result<usize, ExportError> {
    let io = |source| ExportError::File {
        path: path.to_owned(),
        source,
    };
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    let length = file.metadata().map_err(io)?.len();
    let length = drop_partial_line(&mut file, length, path).map_err(io)?;
    let room = max_file_bytes.saturating_sub(length);
    let mut count = ends.iter().take_while(|&&end| end as u64 <= room).count();
    if count == 0 {
        if length > 0 {
            return Err(ExportError::FileFull {
                path: path.to_owned(),
                max_file_bytes,
            });
        }
        // A line larger than the limit goes alone into an empty file rather than block.
        count = 1;
    }
    file.seek(SeekFrom::Start(length)).map_err(io)?;
    file.write_all(&lines[..ends[count - 1]]).map_err(io)?;
    file.sync_data().map_err(io)?;
    if !existed {
        // The new file's directory entry must be durable too, or a crash could lose the
        // file whose lines the cursor already counts.
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)
                .and_then(|dir| dir.sync_all())
                .map_err(io)?;
        }
    }
    Ok(count)
}

/// Cuts an unterminated last line, left by a write interrupted before its fsync (so never
/// counted by the cursor), and answers the new length: the batch is written again whole.
fn drop_partial_line(file: &mut File, length: u64, path: &Path) -> std::io::Result<u64> {
    const CHUNK_BYTES: u64 = 64 * 1024;
    if length == 0 {
        return Ok(0);
    }
    let mut chunk = vec![0u8; CHUNK_BYTES as usize];
    let mut end = length;
    while end > 0 {
        let start = end.saturating_sub(CHUNK_BYTES);
        let part = &mut chunk[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        if let Some(position) = part.iter().rposition(|&b| b == b'\n') {
            let kept = start + position as u64 + 1;
            if kept < length {
                tracing::warn!(
                    path = %path.display(),
                    bytes = length - kept,
                    "removing the partial line of an interrupted write"
                );
                file.set_len(kept)?;
            }
            return Ok(kept);
        }
        end = start;
    }
    tracing::warn!(path = %path.display(), bytes = length, "removing the partial line of an interrupted write");
    file.set_len(0)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(index: u64, json: &str) -> ExportLeaf {
        ExportLeaf {
            index,
            recorded_us: 0,
            leaf: json.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_line_wraps_the_event_bytes_unchanged() {
        let mut out = Vec::new();
        write_line(&leaf(7, r#"{"b":1,"a":"x y"}"#), &mut out).unwrap();
        assert_eq!(out, b"{\"index\":7,\"event\":{\"b\":1,\"a\":\"x y\"}}\n");
    }

    #[test]
    fn line_breaks_between_tokens_become_spaces() {
        let mut out = Vec::new();
        write_line(&leaf(0, "{\n\"a\":\r\n1}"), &mut out).unwrap();
        assert_eq!(out, b"{\"index\":0,\"event\":{ \"a\":  1}}\n");
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["event"]["a"], 1);
    }

    #[test]
    fn non_objects_are_refused() {
        for bad in ["[1]", "{", "\"s\"", "{}x"] {
            assert!(write_line(&leaf(3, bad), &mut Vec::new()).is_err(), "{bad}");
        }
        assert!(
            write_line(
                &ExportLeaf {
                    index: 0,
                    recorded_us: 0,
                    leaf: vec![b'{', 0xff, b'}']
                },
                &mut Vec::new()
            )
            .is_err()
        );
    }

    #[test]
    fn a_partial_last_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, b"{\"a\":1}\n{\"b\":").unwrap();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert_eq!(drop_partial_line(&mut file, 13, &path).unwrap(), 8);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}\n");
        std::fs::write(&path, b"no newline").unwrap();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert_eq!(drop_partial_line(&mut file, 10, &path).unwrap(), 0);
    }
}
