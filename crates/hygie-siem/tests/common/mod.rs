//! Test helpers: AuditEvent leaves, an octet-counting frame parser written from RFC 6587
//! (not from the crate's code), and a loopback syslog collector that can be stopped
//! mid-stream and started again on the same port.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hygie_siem::{ExporterStatus, MemorySource};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};

/// An AuditEvent shaped like hygie-audit's, with the fields the header reads.
pub fn event(outcome: &str, subtype: &str, who: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype}],
        "action": "R",
        "recorded": "2023-11-14T22:13:20.123456Z",
        "outcome": outcome,
        "agent": [{"who": {"display": who}, "requestor": true}],
        "source": {"observer": {"display": "hygie"}},
    }))
    .unwrap()
}

/// Appends `count` leaves, each naming its own number (and some non-ASCII).
pub fn fill(source: &MemorySource, count: u64) {
    for _ in 0..count {
        let n = source.len();
        source.append(
            1_700_000_000_000_000 + n as i64,
            event("0", "read", &format!("Practitioner/{n} Zoë")),
        );
    }
}

/// Error of the test parser: the stream is not a sequence of `LEN SP MSG` frames.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameError(pub String);

/// Takes the complete frames off the front of `buffer` (RFC 6587 §3.4.1:
/// `MSG-LEN SP SYSLOG-MSG`, MSG-LEN a decimal without leading zero counting octets), leaving
/// an incomplete frame in it.
pub fn take_frames(buffer: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, FrameError> {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let rest = &buffer[at..];
        let Some(space) = rest.iter().position(|&b| b == b' ') else {
            if rest.len() > 10 || !rest.iter().all(u8::is_ascii_digit) {
                return Err(FrameError(format!("no length at byte {at}")));
            }
            break;
        };
        let digits = &rest[..space];
        if digits.is_empty()
            || digits[0] == b'0'
            || digits.len() > 10
            || !digits.iter().all(u8::is_ascii_digit)
        {
            return Err(FrameError(format!(
                "bad length {:?} at byte {at}",
                String::from_utf8_lossy(digits)
            )));
        }
        let length: usize = std::str::from_utf8(digits).unwrap().parse().unwrap();
        if rest.len() < space + 1 + length {
            break;
        }
        frames.push(rest[space + 1..space + 1 + length].to_vec());
        at += space + 1 + length;
    }
    buffer.drain(..at);
    Ok(frames)
}

/// An RFC 5424 message taken apart (the subset hygie sends: one SD element).
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub pri: u16,
    /// TIMESTAMP, HOSTNAME, APP-NAME, PROCID, MSGID.
    pub header: Vec<String>,
    pub sd_id: String,
    /// The SD-PARAMs, values unescaped.
    pub params: Vec<(String, String)>,
    /// MSG without its BOM.
    pub msg: Vec<u8>,
}

impl Parsed {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a message as RFC 5424 §6 describes it, not as the crate writes it.
pub fn parse_message(message: &[u8]) -> Result<Parsed, String> {
    let text = std::str::from_utf8(message).map_err(|e| e.to_string())?;
    let rest = text.strip_prefix('<').ok_or("no PRI")?;
    let (pri, rest) = rest.split_once('>').ok_or("unclosed PRI")?;
    let pri: u16 = pri.parse().map_err(|_| "bad PRI")?;
    if pri > 191 {
        return Err(format!("PRI {pri} > 191"));
    }
    let mut rest = rest.strip_prefix("1 ").ok_or("not version 1")?;
    let mut header = Vec::new();
    for _ in 0..5 {
        let (field, after) = rest.split_once(' ').ok_or("short header")?;
        if field.is_empty() || !field.bytes().all(|b| (33..=126).contains(&b)) {
            return Err(format!("bad header field {field:?}"));
        }
        header.push(field.to_owned());
        rest = after;
    }
    let rest = rest.strip_prefix('[').ok_or("no SD element")?;
    let id_end = rest.find([' ', ']']).ok_or("unclosed SD element")?;
    let sd_id = rest[..id_end].to_owned();
    let mut chars = rest[id_end..].char_indices().peekable();
    let mut params = Vec::new();
    let msg_start = loop {
        match chars.next() {
            Some((i, ']')) => break id_end + i + 1,
            Some((_, ' ')) => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some((_, '=')) => break,
                        Some((_, c)) if c != ' ' && c != ']' && c != '"' => name.push(c),
                        other => return Err(format!("bad SD-NAME at {other:?}")),
                    }
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err("no opening quote".to_owned());
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.peek().map(|&(_, c)| c) {
                            Some(c @ ('"' | '\\' | ']')) => {
                                value.push(c);
                                chars.next();
                            }
                            _ => value.push('\\'),
                        },
                        Some((_, ']')) => return Err("unescaped ']' in a value".to_owned()),
                        Some((_, c)) => value.push(c),
                        None => return Err("unclosed value".to_owned()),
                    }
                }
                params.push((name, value));
            }
            other => return Err(format!("bad SD at {other:?}")),
        }
    };
    let after_sd = &rest[msg_start..];
    let msg = match after_sd.strip_prefix(' ') {
        None if after_sd.is_empty() => Vec::new(),
        None => return Err("no space before MSG".to_owned()),
        Some(msg) => msg
            .strip_prefix('\u{feff}')
            .ok_or("MSG without BOM")?
            .as_bytes()
            .to_vec(),
    };
    Ok(Parsed {
        pri,
        header,
        sd_id,
        params,
        msg,
    })
}

/// The `index="N"` of a message's structured data.
pub fn index_of(message: &[u8]) -> u64 {
    let parsed = parse_message(message).expect("an RFC 5424 message");
    parsed
        .param("index")
        .expect("an index")
        .parse()
        .expect("a number")
}

/// A syslog collector on loopback: records every complete message of every connection.
pub struct Collector {
    pub address: SocketAddr,
    pub messages: Arc<Mutex<Vec<Vec<u8>>>>,
    pub handshake_errors: Arc<Mutex<Vec<String>>>,
    pub frame_errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Collector {
    /// Listens on `address` (port 0: any), TLS when `tls` is given. After `stop_after`
    /// messages (if any) it stops by itself, as a crashing collector would: the listener and
    /// every connection are dropped, unread bytes included.
    pub async fn start(
        address: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        stop_after: Option<usize>,
        messages: Arc<Mutex<Vec<Vec<u8>>>>,
    ) -> Collector {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(address).unwrap();
        let listener = socket.listen(64).unwrap();
        let address = listener.local_addr().unwrap();
        let stop = Arc::new(Notify::new());
        let handshake_errors = Arc::new(Mutex::new(Vec::new()));
        let frame_errors = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let stop = stop.clone();
            let messages = messages.clone();
            let handshake_errors = handshake_errors.clone();
            let frame_errors = frame_errors.clone();
            tokio::spawn(async move {
                let mut connections = JoinSet::new();
                loop {
                    tokio::select! {
                        _ = stop.notified() => break,
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let messages = messages.clone();
                            let stop = stop.clone();
                            let tls = tls.clone();
                            let handshake_errors = handshake_errors.clone();
                            let frame_errors = frame_errors.clone();
                            connections.spawn(async move {
                                let result = match tls {
                                    None => read_frames(tcp, &messages, stop_after, &stop).await,
                                    Some(config) => {
                                        match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                                            Ok(stream) => read_frames(stream, &messages, stop_after, &stop).await,
                                            Err(e) => {
                                                handshake_errors.lock().unwrap().push(e.to_string());
                                                Ok(())
                                            }
                                        }
                                    }
                                };
                                if let Err(FrameError(e)) = result {
                                    frame_errors.lock().unwrap().push(e);
                                }
                            });
                        }
                    }
                }
                // Dropping the set aborts every connection: their unread bytes are lost.
                drop(connections);
            })
        };
        Collector {
            address,
            messages,
            handshake_errors,
            frame_errors,
            stop,
            task,
        }
    }

    /// Stops as if crashed: the listener and every connection are dropped.
    pub async fn stop(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }

    /// Waits until it stopped by itself (`stop_after`).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }

    pub fn indices(&self) -> Vec<u64> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|m| index_of(m))
            .collect()
    }
}

async fn read_frames<S: tokio::io::AsyncRead + Unpin>(
    mut stream: S,
    messages: &Mutex<Vec<Vec<u8>>>,
    stop_after: Option<usize>,
    stop: &Notify,
) -> Result<(), FrameError> {
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        buffer.extend_from_slice(&chunk[..n]);
        for frame in take_frames(&mut buffer)? {
            let mut messages = messages.lock().unwrap();
            messages.push(frame);
            if stop_after.is_some_and(|limit| messages.len() >= limit) {
                stop.notify_one();
                return Ok(());
            }
        }
    }
}

/// Waits (at most 20 s) for the export's status to satisfy `done`.
pub async fn wait_status(
    status: &mut watch::Receiver<ExporterStatus>,
    what: &str,
    done: impl FnMut(&ExporterStatus) -> bool,
) -> ExporterStatus {
    let found = match tokio::time::timeout(Duration::from_secs(20), status.wait_for(done)).await {
        Ok(Ok(status)) => Some(status.clone()),
        _ => None,
    };
    found.unwrap_or_else(|| panic!("timed out waiting for {what}: {:?}", *status.borrow()))
}

/// Waits (at most 20 s) for `done` to hold, checking every 10 ms.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A connection attempt to `address` succeeds (the collector is up).
pub async fn reachable(address: SocketAddr) -> bool {
    TcpStream::connect(address).await.is_ok()
}
