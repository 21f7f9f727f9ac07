//! The backup file, `hygie-backup/1`:
//!
//! ```text
//! header line   JSON, one line ending in \n, at most MAX_HEADER_BYTES; in clear
//! chunk*        flags (1 byte: 1 = final) ‖ length (u32 BE) ‖ XChaCha20-Poly1305(records)
//! ```
//!
//! The header holds what one needs before decrypting and nothing of the patients: the
//! format, the backup's id, when, the backend and schema version, the installation and the
//! key file's generation whose backup slot wraps the backup's random key (the wrapped key,
//! bound to `"hygie-backup/1" ‖ id`), each table's rows, the audit tree's size and its
//! latest signed checkpoint (public by design).
//!
//! Chunks carry at most [`CHUNK_BYTES`] of the record stream each, STREAM-style: chunk `i`
//! is sealed with the nonce `i (u64 BE) ‖ final (1 byte) ‖ 0 (15 bytes)` under the backup's
//! key, which is fresh for every backup, and its associated data `"hygie-backup/1" ‖ id ‖ i ‖
//! final` binds it to this backup and this place: a chunk altered, moved, dropped or
//! replayed from another backup does not open, and a stream without its final chunk is
//! truncated. The file ends with the final chunk.
//!
//! Records (the stream inside the chunks; integers big-endian):
//!
//! ```text
//! 'H' len u32 ‖ header JSON     first: the header again, authenticated
//! 'T' name ‖ columns u16 ‖ (name ‖ kind u8)*      a table starts
//! 'R' value*                    one row, one value per column:
//!       0 null | 1 i64 | 2 f64 | 3 len u32 ‖ UTF-8 | 4 len u32 ‖ bytes | 5 false | 6 true
//! 'E' rows u64                  the table ends
//! 'S' name ‖ value i64          a sequence's position
//! 'Z' tables u32                the end
//! ```
//! Names are a length byte and at most 63 bytes of ASCII.

use std::io::{self, Read, Write};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use hygie_store::backup::{
    Column, ColumnKind, MAX_COLUMNS, MAX_NAME_BYTES, MAX_VALUE_BYTES, Value,
};
use serde::{Deserialize, Serialize};

/// The format this version writes and reads.
pub const FORMAT: &str = "hygie-backup/1";
/// The longest header line, bytes: the checkpoint note and ~20 table names take ~2 KiB.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Plaintext bytes of one chunk, at most.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Sequences in one backup, at most.
pub const MAX_SEQUENCES: usize = 64;
const TAG_BYTES: usize = 16;
const CHUNK_HEADER_BYTES: usize = 5;
const FINAL_FLAG: u8 = 1;

/// The plaintext header (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: String,
    pub backup_id: String,
    pub created_us: i64,
    /// `created_us` for people (UTC).
    pub created: String,
    pub backend: String,
    pub schema_version: i64,
    pub installation: String,
    /// The key file's generation whose backup slot wraps the backup's key.
    pub generation: u32,
    /// The backup's key, wrapped (standard base64).
    pub wrapped_key: String,
    pub tables: Vec<TableRows>,
    pub audit: AuditSummary,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRows {
    pub name: String,
    pub rows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSummary {
    /// Leaves in the audit tree (`audit.tree_size`).
    pub tree_size: u64,
    /// The latest signed checkpoint (a C2SP signed note), if the log has one.
    pub checkpoint: Option<String>,
}

impl Header {
    /// The header's line, without its `\n`.
    pub fn to_line(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a header serializes")
    }

    /// The associated data of the backup key's wrapping.
    pub fn key_aad(&self) -> Vec<u8> {
        [FORMAT.as_bytes(), self.backup_id.as_bytes()].concat()
    }

    /// The backup's id as the 16 bytes the chunks are bound to.
    pub fn id_bytes(&self) -> Result<[u8; 16], String> {
        uuid::Uuid::parse_str(&self.backup_id)
            .map(|id| *id.as_bytes())
            .map_err(|_| format!("the header's backup_id {:?} is not a UUID", self.backup_id))
    }

    /// The field by field difference with `other`, for a message: the first field that
    /// differs.
    pub fn first_difference(&self, other: &Header) -> String {
        let (a, b) = (
            serde_json::to_value(self).expect("serializes"),
            serde_json::to_value(other).expect("serializes"),
        );
        if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
            for (field, value) in a {
                if b.get(field) != Some(value) {
                    if field == "tables"
                        && let Some(table) =
                            self.tables.iter().zip(&other.tables).find(|(x, y)| x != y)
                    {
                        return format!(
                            "table {}: {} rows in the plaintext header, {} in the authenticated copy",
                            table.0.name, table.0.rows, table.1.rows
                        );
                    }
                    return format!("field {field}");
                }
            }
        }
        "its text".into()
    }
}

/// Reads the header line: at most [`MAX_HEADER_BYTES`], JSON, of [`FORMAT`]. Returns it
/// with its exact bytes (compared with the authenticated copy).
pub fn read_header<R: io::BufRead>(input: &mut R) -> Result<(Header, Vec<u8>), String> {
    let mut line = Vec::new();
    io::BufRead::read_until(
        &mut io::Read::take(&mut *input, MAX_HEADER_BYTES as u64 + 1),
        b'\n',
        &mut line,
    )
    .map_err(|e| format!("cannot read the header: {e}"))?;
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_HEADER_BYTES {
            format!("it is not a Hygie backup: no header line within {MAX_HEADER_BYTES} bytes")
        } else {
            "it is not a Hygie backup, or it is truncated inside its header".to_owned()
        });
    }
    line.pop();
    #[derive(Deserialize)]
    struct FormatOnly {
        format: String,
    }
    let format: FormatOnly = serde_json::from_slice(&line).map_err(|_| {
        "it is not a Hygie backup (its first line is not a backup header)".to_owned()
    })?;
    if format.format != FORMAT {
        return Err(format!(
            "its format is {:?}, and this hygie reads {FORMAT:?} only",
            format.format
        ));
    }
    let header: Header =
        serde_json::from_slice(&line).map_err(|e| format!("its header is malformed: {e}"))?;
    Ok((header, line))
}

fn nonce(index: u64, last: bool) -> [u8; 24] {
    let mut nonce = [0u8; 24];
    nonce[..8].copy_from_slice(&index.to_be_bytes());
    nonce[8] = u8::from(last);
    nonce
}

fn chunk_aad(id: &[u8; 16], index: u64, last: bool) -> Vec<u8> {
    [
        FORMAT.as_bytes(),
        id,
        &index.to_be_bytes(),
        &[u8::from(last)],
    ]
    .concat()
}

/// Encrypts the record stream into chunks.
pub struct ChunkWriter<W: Write> {
    out: W,
    cipher: XChaCha20Poly1305,
    id: [u8; 16],
    index: u64,
    buffer: Vec<u8>,
    /// Bytes written to `out`.
    pub written: u64,
}

impl<W: Write> ChunkWriter<W> {
    pub fn new(out: W, key: &[u8; 32], id: [u8; 16]) -> ChunkWriter<W> {
        ChunkWriter {
            out,
            cipher: XChaCha20Poly1305::new(key.into()),
            id,
            index: 0,
            buffer: Vec::with_capacity(CHUNK_BYTES + TAG_BYTES),
            written: 0,
        }
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        let plain = self.buffer.len().min(CHUNK_BYTES);
        let mut chunk: Vec<u8> = self.buffer.drain(..plain).collect();
        let tag = self
            .cipher
            .encrypt_in_place_detached(
                (&nonce(self.index, last)).into(),
                &chunk_aad(&self.id, self.index, last),
                &mut chunk,
            )
            .map_err(|_| io::Error::other("a chunk could not be encrypted"))?;
        chunk.extend_from_slice(&tag);
        let flags = if last { FINAL_FLAG } else { 0 };
        self.out.write_all(&[flags])?;
        self.out.write_all(&(chunk.len() as u32).to_be_bytes())?;
        self.out.write_all(&chunk)?;
        self.written += (CHUNK_HEADER_BYTES + chunk.len()) as u64;
        self.index += 1;
        Ok(())
    }

    /// Writes the final chunk; returns the output and the number of chunks.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        while self.buffer.len() > CHUNK_BYTES {
            self.seal(false)?;
        }
        self.seal(true)?;
        self.out.flush()?;
        Ok((self.out, self.index))
    }
}

impl<W: Write> Write for ChunkWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        // A chunk is sealed once more follows it, so that the last one can be final.
        while self.buffer.len() > CHUNK_BYTES {
            self.seal(false)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What can be wrong with the chunks or the records of a backup.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(
        "the backup is truncated after chunk {after}: its final chunk is missing (chunks are numbered from 0)"
    )]
    Truncated { after: u64 },
    #[error("the backup is truncated after its header: it holds no chunk")]
    NoChunk,
    #[error(
        "the backup is truncated after chunk {after}: chunk {} is cut short ({found} of {expected} bytes)",
        after + 1
    )]
    CutShort {
        after: u64,
        found: usize,
        expected: usize,
    },
    #[error(
        "chunk {index} does not authenticate: the backup was altered or damaged there (chunks are numbered from 0)"
    )]
    Altered { index: u64 },
    #[error("chunk {index} is in the place of chunk {found}: the backup's chunks were reordered")]
    Reordered { index: u64, found: u64 },
    #[error(
        "chunk {index} is the stream's final chunk in the place of a middle one: the chunks after it were dropped, or the chunks reordered"
    )]
    FinalTooEarly { index: u64 },
    #[error("bytes follow the final chunk {index}: the backup was altered")]
    Trailing { index: u64 },
    #[error("chunk {index} claims {length} bytes, more than a chunk holds: the backup was altered")]
    TooLong { index: u64, length: usize },
    #[error("the record stream is malformed: {0}")]
    Malformed(String),
    #[error("cannot read the backup: {0}")]
    Io(#[from] io::Error),
}

/// How far on each side to look for the place a chunk came from, when it fails to open
/// where it is (two tag checks of up to 1 MiB per place).
const REORDER_PROBE_CHUNKS: u64 = 64;

/// Decrypts the chunks, checking their order and the final one.
pub struct ChunkReader<R: Read> {
    input: R,
    cipher: XChaCha20Poly1305,
    id: [u8; 16],
    /// The next chunk's number.
    index: u64,
    ended: bool,
    /// Ciphertext bytes read.
    pub read: u64,
}

impl<R: Read> ChunkReader<R> {
    pub fn new(input: R, key: &[u8; 32], id: [u8; 16]) -> ChunkReader<R> {
        ChunkReader {
            input,
            cipher: XChaCha20Poly1305::new(key.into()),
            id,
            index: 0,
            ended: false,
            read: 0,
        }
    }

    /// Chunks opened so far.
    pub fn chunks(&self) -> u64 {
        self.index
    }

    /// The next chunk's plaintext, `None` after the final one (and nothing after it).
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StreamError> {
        if self.ended {
            return Ok(None);
        }
        let index = self.index;
        let mut head = [0u8; CHUNK_HEADER_BYTES];
        let got = read_full(&mut self.input, &mut head)?;
        if got == 0 {
            return Err(match index {
                0 => StreamError::NoChunk,
                _ => StreamError::Truncated { after: index - 1 },
            });
        }
        let after = index.checked_sub(1);
        let cut = |found: usize, expected: usize| match after {
            Some(after) => StreamError::CutShort {
                after,
                found,
                expected,
            },
            None => StreamError::NoChunk,
        };
        if got < head.len() {
            return Err(cut(got, CHUNK_HEADER_BYTES));
        }
        let last = head[0] & FINAL_FLAG != 0;
        let length = u32::from_be_bytes(head[1..].try_into().expect("4 bytes")) as usize;
        if !(TAG_BYTES..=CHUNK_BYTES + TAG_BYTES).contains(&length) || head[0] & !FINAL_FLAG != 0 {
            return Err(StreamError::TooLong { index, length });
        }
        let mut chunk = vec![0u8; length];
        let got = read_full(&mut self.input, &mut chunk)?;
        if got < length {
            return Err(cut(got + CHUNK_HEADER_BYTES, length + CHUNK_HEADER_BYTES));
        }
        self.read += (CHUNK_HEADER_BYTES + length) as u64;
        let tag_at = length - TAG_BYTES;
        let tag: [u8; TAG_BYTES] = chunk[tag_at..].try_into().expect("16 bytes");
        let mut plain = chunk[..tag_at].to_vec();
        if self.open(index, last, &mut plain, &tag).is_err() {
            return Err(self.diagnose(index, last, &chunk[..tag_at], &tag));
        }
        self.index += 1;
        if last {
            self.ended = true;
            let mut extra = [0u8; 1];
            if read_full(&mut self.input, &mut extra)? > 0 {
                return Err(StreamError::Trailing { index });
            }
        }
        Ok(Some(plain))
    }

    fn open(
        &self,
        index: u64,
        last: bool,
        buffer: &mut [u8],
        tag: &[u8; TAG_BYTES],
    ) -> Result<(), ()> {
        self.cipher
            .decrypt_in_place_detached(
                (&nonce(index, last)).into(),
                &chunk_aad(&self.id, index, last),
                buffer,
                tag.into(),
            )
            .map_err(|_| ())
    }

    /// Why a chunk did not open where it is: it opens as another chunk (reordered), as a
    /// middle chunk where a final one was announced and expected, or not at all (altered).
    fn diagnose(
        &self,
        index: u64,
        last: bool,
        sealed: &[u8],
        tag: &[u8; TAG_BYTES],
    ) -> StreamError {
        let opens = |at: u64, final_flag: bool| {
            let mut scratch = sealed.to_vec();
            self.open(at, final_flag, &mut scratch, tag).is_ok()
        };
        if last && opens(index, false) {
            // A middle chunk whose flag was set: the ones after it were dropped.
            return StreamError::Truncated { after: index };
        }
        if !last && opens(index, true) {
            return StreamError::FinalTooEarly { index };
        }
        let first = index.saturating_sub(REORDER_PROBE_CHUNKS);
        let last = index.saturating_add(REORDER_PROBE_CHUNKS);
        for at in (first..=last).filter(|&at| at != index) {
            if opens(at, false) || opens(at, true) {
                return StreamError::Reordered { index, found: at };
            }
        }
        StreamError::Altered { index }
    }
}

/// Reads until `buffer` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match input.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// A record of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Header(Vec<u8>),
    Table { name: String, columns: Vec<Column> },
    Row(Vec<Value>),
    EndTable { rows: u64 },
    Sequence { name: String, value: i64 },
    End { tables: u32 },
}

/// Writes records.
pub struct RecordWriter<W: Write> {
    out: W,
    scratch: Vec<u8>,
}

impl<W: Write> RecordWriter<W> {
    pub fn new(out: W) -> RecordWriter<W> {
        RecordWriter {
            out,
            scratch: Vec::with_capacity(64 << 10),
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn header(&mut self, line: &[u8]) -> io::Result<()> {
        self.scratch.clear();
        self.scratch.push(b'H');
        self.scratch
            .extend_from_slice(&(line.len() as u32).to_be_bytes());
        self.scratch.extend_from_slice(line);
        self.out.write_all(&self.scratch)
    }

    pub fn table(&mut self, name: &str, columns: &[Column]) -> io::Result<()> {
        self.scratch.clear();
        self.scratch.push(b'T');
        put_name(&mut self.scratch, name)?;
        self.scratch
            .extend_from_slice(&(columns.len() as u16).to_be_bytes());
        for column in columns {
            put_name(&mut self.scratch, &column.name)?;
            self.scratch.push(column.kind.code());
        }
        self.out.write_all(&self.scratch)
    }

    pub fn row(&mut self, values: &[Value]) -> io::Result<()> {
        self.scratch.clear();
        self.scratch.push(b'R');
        for value in values {
            match value {
                Value::Null => self.scratch.push(0),
                Value::Integer(v) => {
                    self.scratch.push(1);
                    self.scratch.extend_from_slice(&v.to_be_bytes());
                }
                Value::Real(v) => {
                    self.scratch.push(2);
                    self.scratch.extend_from_slice(&v.to_bits().to_be_bytes());
                }
                Value::Text(text) => {
                    self.scratch.push(3);
                    put_bytes(&mut self.scratch, text.as_bytes())?;
                }
                Value::Blob(bytes) => {
                    self.scratch.push(4);
                    put_bytes(&mut self.scratch, bytes)?;
                }
                Value::Boolean(v) => self.scratch.push(if *v { 6 } else { 5 }),
            }
        }
        self.out.write_all(&self.scratch)
    }

    pub fn end_table(&mut self, rows: u64) -> io::Result<()> {
        let mut record = [0u8; 9];
        record[0] = b'E';
        record[1..].copy_from_slice(&rows.to_be_bytes());
        self.out.write_all(&record)
    }

    pub fn sequence(&mut self, name: &str, value: i64) -> io::Result<()> {
        self.scratch.clear();
        self.scratch.push(b'S');
        put_name(&mut self.scratch, name)?;
        self.scratch.extend_from_slice(&value.to_be_bytes());
        self.out.write_all(&self.scratch)
    }

    pub fn end(&mut self, tables: u32) -> io::Result<()> {
        let mut record = [0u8; 5];
        record[0] = b'Z';
        record[1..].copy_from_slice(&tables.to_be_bytes());
        self.out.write_all(&record)
    }
}

fn put_name(out: &mut Vec<u8>, name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || !name.is_ascii() {
        return Err(io::Error::other(format!(
            "the name {name:?} cannot be written"
        )));
    }
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> io::Result<()> {
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(io::Error::other(format!(
            "a value of {} bytes is more than a backup takes ({MAX_VALUE_BYTES})",
            bytes.len()
        )));
    }
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Reads records from the chunks, in the order the format allows.
pub struct RecordReader<R: Read> {
    chunks: ChunkReader<R>,
    buffer: Vec<u8>,
    at: usize,
    /// The columns of the table being read (how many values a row has).
    columns: Option<usize>,
    state: ReaderState,
    sequences: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderState {
    Start,
    Tables,
    Sequences,
    Done,
}

impl<R: Read> RecordReader<R> {
    pub fn new(chunks: ChunkReader<R>) -> RecordReader<R> {
        RecordReader {
            chunks,
            buffer: Vec::new(),
            at: 0,
            columns: None,
            state: ReaderState::Start,
            sequences: 0,
        }
    }

    pub fn chunks(&self) -> &ChunkReader<R> {
        &self.chunks
    }

    /// Makes `count` bytes available from `at`; false at the end of the stream.
    fn fill(&mut self, count: usize) -> Result<bool, StreamError> {
        while self.buffer.len() - self.at < count {
            match self.chunks.next_chunk()? {
                Some(plain) => {
                    self.buffer.drain(..self.at);
                    self.at = 0;
                    self.buffer.extend_from_slice(&plain);
                }
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    fn take(&mut self, count: usize) -> Result<&[u8], StreamError> {
        if !self.fill(count)? {
            return Err(malformed("the stream ends inside a record"));
        }
        let start = self.at;
        self.at += count;
        Ok(&self.buffer[start..self.at])
    }

    fn u8(&mut self) -> Result<u8, StreamError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, StreamError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, StreamError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, StreamError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn name(&mut self) -> Result<String, StreamError> {
        let length = self.u8()? as usize;
        if length == 0 || length > MAX_NAME_BYTES {
            return Err(malformed("a name of a length no name has"));
        }
        let bytes = self.take(length)?;
        if !bytes.is_ascii() {
            return Err(malformed("a name that is not ASCII"));
        }
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn bytes(&mut self) -> Result<Vec<u8>, StreamError> {
        let length = self.u32()? as usize;
        if length > MAX_VALUE_BYTES {
            return Err(malformed("a value longer than a backup takes"));
        }
        Ok(self.take(length)?.to_vec())
    }

    /// The next record; `None` after [`Record::End`] (when the stream also ended there).
    pub fn next_record(&mut self) -> Result<Option<Record>, StreamError> {
        if self.state == ReaderState::Done {
            if self.fill(1)? {
                return Err(malformed("records follow the end record"));
            }
            return Ok(None);
        }
        let kind = self.u8()?;
        let record = match (self.state, kind) {
            (ReaderState::Start, b'H') => {
                let length = self.u32()? as usize;
                if length > MAX_HEADER_BYTES {
                    return Err(malformed("a header copy longer than a header"));
                }
                self.state = ReaderState::Tables;
                Record::Header(self.take(length)?.to_vec())
            }
            (ReaderState::Start, _) => {
                return Err(malformed("the stream does not start with the header"));
            }
            (ReaderState::Tables, b'T') if self.columns.is_none() => {
                let name = self.name()?;
                let count = self.u16()? as usize;
                if count == 0 || count > MAX_COLUMNS {
                    return Err(malformed("a table with no columns, or too many"));
                }
                let mut columns = Vec::with_capacity(count);
                for _ in 0..count {
                    let name = self.name()?;
                    let kind = ColumnKind::from_code(self.u8()?)
                        .ok_or_else(|| malformed("a column of an unknown kind"))?;
                    columns.push(Column { name, kind });
                }
                self.columns = Some(count);
                Record::Table { name, columns }
            }
            (ReaderState::Tables, b'R') if self.columns.is_some() => {
                let count = self.columns.expect("checked");
                let mut values = Vec::with_capacity(count);
                for _ in 0..count {
                    values.push(match self.u8()? {
                        0 => Value::Null,
                        1 => Value::Integer(self.u64()? as i64),
                        2 => Value::Real(f64::from_bits(self.u64()?)),
                        3 => Value::Text(
                            String::from_utf8(self.bytes()?)
                                .map_err(|_| malformed("a text that is not UTF-8"))?,
                        ),
                        4 => Value::Blob(self.bytes()?),
                        5 => Value::Boolean(false),
                        6 => Value::Boolean(true),
                        _ => return Err(malformed("a value of an unknown kind")),
                    });
                }
                Record::Row(values)
            }
            (ReaderState::Tables, b'E') if self.columns.is_some() => {
                self.columns = None;
                Record::EndTable { rows: self.u64()? }
            }
            (ReaderState::Tables | ReaderState::Sequences, b'S') if self.columns.is_none() => {
                self.state = ReaderState::Sequences;
                self.sequences += 1;
                if self.sequences > MAX_SEQUENCES {
                    return Err(malformed("more sequences than a backup holds"));
                }
                let name = self.name()?;
                Record::Sequence {
                    name,
                    value: self.u64()? as i64,
                }
            }
            (ReaderState::Tables | ReaderState::Sequences, b'Z') if self.columns.is_none() => {
                self.state = ReaderState::Done;
                Record::End {
                    tables: self.u32()?,
                }
            }
            (_, other) => {
                return Err(malformed(&format!(
                    "a record {:?} where it cannot be",
                    other as char
                )));
            }
        };
        Ok(Some(record))
    }
}

fn malformed(what: &str) -> StreamError {
    StreamError::Malformed(what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const ID: [u8; 16] = [9; 16];

    /// A stream of `chunks` full chunks and a final one of a few bytes.
    fn sealed(chunks: usize) -> Vec<u8> {
        let mut writer = ChunkWriter::new(Vec::new(), &KEY, ID);
        let plain: Vec<u8> = (0..chunks * CHUNK_BYTES + 10).map(|i| i as u8).collect();
        writer.write_all(&plain).unwrap();
        let (bytes, count) = writer.finish().unwrap();
        assert_eq!(count as usize, chunks + 1);
        bytes
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<u8>, StreamError> {
        let mut reader = ChunkReader::new(bytes, &KEY, ID);
        let mut plain = Vec::new();
        while let Some(chunk) = reader.next_chunk()? {
            plain.extend_from_slice(&chunk);
        }
        Ok(plain)
    }

    /// Where chunk `index` starts.
    fn offset(bytes: &[u8], index: usize) -> usize {
        let mut at = 0;
        for _ in 0..index {
            let length = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
            at += CHUNK_HEADER_BYTES + length;
        }
        at
    }

    #[test]
    fn round_trips_and_always_ends_with_a_final_chunk() {
        for chunks in [0, 1, 2] {
            let bytes = sealed(chunks);
            let plain = read_all(&bytes).unwrap();
            assert_eq!(plain.len(), chunks * CHUNK_BYTES + 10);
            assert!(plain.iter().enumerate().all(|(i, b)| *b == i as u8));
        }
        // An empty stream still has its (empty) final chunk.
        let (bytes, count) = ChunkWriter::new(Vec::new(), &KEY, ID).finish().unwrap();
        assert_eq!(count, 1);
        assert_eq!(read_all(&bytes).unwrap(), b"");
    }

    #[test]
    fn a_flipped_byte_is_named_by_its_chunk() {
        let mut bytes = sealed(2);
        let at = offset(&bytes, 1) + 100;
        bytes[at] ^= 1;
        assert!(matches!(
            read_all(&bytes),
            Err(StreamError::Altered { index: 1 })
        ));
    }

    #[test]
    fn truncation_and_dropped_chunks_are_truncation() {
        let bytes = sealed(2);
        // Cut inside chunk 2.
        let cut = &bytes[..offset(&bytes, 2) + 3];
        let error = read_all(cut).unwrap_err();
        assert!(
            matches!(error, StreamError::CutShort { after: 1, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("truncated after chunk 1"));
        // The final chunk dropped whole.
        let dropped = &bytes[..offset(&bytes, 2)];
        let error = read_all(dropped).unwrap_err();
        assert!(
            matches!(error, StreamError::Truncated { after: 1 }),
            "{error}"
        );
        // The final chunk dropped and the flag of the new last one set.
        let mut flagged = dropped.to_vec();
        let at = offset(&flagged, 1);
        flagged[at] = FINAL_FLAG;
        let error = read_all(&flagged).unwrap_err();
        assert!(
            matches!(error, StreamError::Truncated { after: 1 }),
            "{error}"
        );
        // Nothing after the header.
        assert!(matches!(read_all(&[]), Err(StreamError::NoChunk)));
    }

    #[test]
    fn swapped_chunks_are_reordered() {
        let bytes = sealed(3);
        let (one, two, three) = (offset(&bytes, 1), offset(&bytes, 2), offset(&bytes, 3));
        let mut swapped = bytes[..one].to_vec();
        swapped.extend_from_slice(&bytes[two..three]);
        swapped.extend_from_slice(&bytes[one..two]);
        swapped.extend_from_slice(&bytes[three..]);
        let error = read_all(&swapped).unwrap_err();
        assert!(
            matches!(error, StreamError::Reordered { index: 1, found: 2 }),
            "{error}"
        );
    }

    #[test]
    fn bytes_after_the_final_chunk_and_other_backups_chunks_are_refused() {
        let mut bytes = sealed(1);
        bytes.push(0);
        assert!(matches!(
            read_all(&bytes),
            Err(StreamError::Trailing { index: 1 })
        ));
        // The same stream under another backup's id does not open.
        let bytes = sealed(1);
        let mut reader = ChunkReader::new(&bytes[..], &KEY, [8; 16]);
        assert!(matches!(
            reader.next_chunk(),
            Err(StreamError::Altered { index: 0 })
        ));
    }

    #[test]
    fn records_round_trip_in_order() {
        let columns = vec![
            Column {
                name: "a".into(),
                kind: ColumnKind::Integer,
            },
            Column {
                name: "b".into(),
                kind: ColumnKind::Blob,
            },
        ];
        let mut records = RecordWriter::new(ChunkWriter::new(Vec::new(), &KEY, ID));
        records.header(b"{}").unwrap();
        records.table("t", &columns).unwrap();
        let big = vec![3u8; 3 * CHUNK_BYTES];
        records
            .row(&[Value::Integer(-5), Value::Blob(big.clone())])
            .unwrap();
        records.row(&[Value::Null, Value::Blob(vec![])]).unwrap();
        records.end_table(2).unwrap();
        records.sequence("t", 41).unwrap();
        records.end(1).unwrap();
        let (bytes, _) = records.into_inner().finish().unwrap();
        let mut reader = RecordReader::new(ChunkReader::new(&bytes[..], &KEY, ID));
        let mut read = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            read.push(record);
        }
        assert_eq!(
            read,
            vec![
                Record::Header(b"{}".to_vec()),
                Record::Table {
                    name: "t".into(),
                    columns
                },
                Record::Row(vec![Value::Integer(-5), Value::Blob(big)]),
                Record::Row(vec![Value::Null, Value::Blob(vec![])]),
                Record::EndTable { rows: 2 },
                Record::Sequence {
                    name: "t".into(),
                    value: 41
                },
                Record::End { tables: 1 },
            ]
        );
    }
}
