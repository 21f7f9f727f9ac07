//! The MLLP listener: one task per connection, messages on a connection taken one at a
//! time (original mode: the sender waits for each acknowledgement), each acknowledged only
//! after the hub has committed it. Framing that cannot be trusted (bytes outside a frame, a
//! frame never ended) closes the connection: the listener can no longer tell where the next
//! message starts. Other connections are never affected.

use std::net::SocketAddr;
use std::sync::Arc;

use hygie_hl7v2::mllp::{FrameError, MllpDecoder, frame};
use hygie_hl7v2::{AckCode, AckError, ErrorCode, Limits, Message, ParseError, ack, encode, parse};
use hygie_hub::{Caller, Hub, HubError, InboundMessage, Ingested};
use hygie_policy::{Principal, ScopeSet, TokenAccess};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::mapping::map_message;
use crate::settings::{
    ListenerSettings, SENDER_ROLE, SENDER_SCOPES, SUPPORTED_VERSIONS, Sender, TLS_HANDSHAKE_TIMEOUT,
};

/// A running listener.
pub struct Listener {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets each connection finish the message it is on (up to `grace`),
    /// then closes them.
    pub async fn stop(self, grace: std::time::Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Starts serving MLLP on `listener`.
pub fn serve(
    hub: Hub,
    listener: TcpListener,
    settings: ListenerSettings,
) -> std::io::Result<Listener> {
    let local_addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let settings = Arc::new(settings);
    let task = tokio::spawn(accept_loop(hub, listener, settings, stopped));
    Ok(Listener {
        local_addr,
        stop,
        task,
    })
}

async fn accept_loop(
    hub: Hub,
    listener: TcpListener,
    settings: Arc<ListenerSettings>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!(%error, "MLLP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = settings.max_connections, "MLLP connection refused: max_connections reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let hub = hub.clone();
        let settings = settings.clone();
        let stopped = stopped.clone();
        connections.spawn(async move {
            let _permit = permit;
            match settings.tls.clone() {
                None => connection(stream, peer, None, hub, settings, stopped).await,
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => {
                            let certificate = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .map(|der| <[u8; 32]>::from(sha2::Sha256::digest(der.as_ref())));
                            connection(tls, peer, certificate, hub, settings, stopped).await
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(%peer, %error, "MLLP TLS handshake failed")
                        }
                        Err(_) => tracing::warn!(%peer, "MLLP TLS handshake timed out"),
                    }
                }
            }
        });
    }
    // Stopping: connections end after their current message.
    while connections.join_next().await.is_some() {}
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    certificate: Option<[u8; 32]>,
    hub: Hub,
    settings: Arc<ListenerSettings>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut decoder = MllpDecoder::new(settings.max_message_bytes);
    let mut buffer = vec![0u8; 64 * 1024];
    let door = Door {
        hub: &hub,
        settings: &settings,
        peer,
        certificate,
    };
    loop {
        loop {
            match decoder.next_frame() {
                Ok(Some(payload)) => {
                    let answer = door.handle(&payload).await;
                    if stream.write_all(&frame(&answer)).await.is_err()
                        || stream.flush().await.is_err()
                    {
                        tracing::info!(%peer, "MLLP sender left before its acknowledgement");
                        return;
                    }
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { limit }) => {
                    let answer = door.too_large(decoder.refused_frame_head(), limit).await;
                    let _ = stream.write_all(&frame(&answer)).await;
                    let _ = stream.flush().await;
                    tracing::warn!(%peer, limit, "MLLP frame over max_message_bytes: answered AE and closed");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%peer, %error, "MLLP framing error: connection closed");
                    return;
                }
            }
        }
        if *stopped.borrow() {
            return;
        }
        let read = tokio::select! {
            read = tokio::time::timeout(settings.idle_timeout, stream.read(&mut buffer)) => read,
            _ = stopped.changed() => return,
        };
        match read {
            Ok(Ok(0)) => {
                if decoder.buffered_bytes() > 0 {
                    tracing::warn!(%peer, bytes = decoder.buffered_bytes(), "MLLP connection closed inside a frame: the partial message was dropped, unacknowledged");
                }
                return;
            }
            Ok(Ok(n)) => decoder.push(&buffer[..n]),
            Ok(Err(error)) => {
                tracing::info!(%peer, %error, "MLLP read failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "MLLP connection idle for idle_timeout: closed");
                return;
            }
        }
    }
}

/// One connection's view of the hub.
struct Door<'a> {
    hub: &'a Hub,
    settings: &'a ListenerSettings,
    peer: SocketAddr,
    certificate: Option<[u8; 32]>,
}

/// Why a message was answered with a NAK, for the answer and the audit trail.
struct Nak {
    code: AckCode,
    error: AckError,
}

impl Nak {
    fn new(
        code: AckCode,
        error: ErrorCode,
        location: Option<hygie_hl7v2::ack::ErrorLocation>,
        text: impl Into<String>,
    ) -> Nak {
        Nak {
            code,
            error: AckError {
                code: error,
                location,
                diagnostic: text.into(),
            },
        }
    }
}

fn msh_at(field: usize) -> Option<hygie_hl7v2::ack::ErrorLocation> {
    Some(hygie_hl7v2::ack::ErrorLocation {
        segment_id: "MSH".to_owned(),
        sequence: 1,
        field: Some(field),
        ..Default::default()
    })
}

impl Door<'_> {
    fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.settings.max_message_bytes,
            ..Limits::default()
        }
    }

    /// The acknowledgement of one frame's payload, encoded.
    async fn handle(&self, payload: &[u8]) -> Vec<u8> {
        let message = match parse(payload, &self.limits()) {
            Ok(message) => message,
            Err(error) => {
                // Answer in the sender's terms when at least its header can be read.
                let header = header_only(payload, &self.limits());
                let code = match (&header, &error) {
                    (None, _)
                    | (
                        _,
                        ParseError::Empty
                        | ParseError::MissingMsh
                        | ParseError::BadDelimiters { .. }
                        | ParseError::UnsupportedCharset { .. },
                    ) => AckCode::Reject,
                    _ => AckCode::Error,
                };
                let original = header.unwrap_or_default();
                let nak = Nak {
                    code,
                    error: AckError::from(&error),
                };
                return self.refuse(&original, nak).await;
            }
        };
        match self.accept(&message, payload).await {
            Ok(answer) => answer,
            Err(nak) => self.refuse(&message, nak).await,
        }
    }

    /// A frame over the size limit: answered from its header alone.
    async fn too_large(&self, head: &[u8], limit: usize) -> Vec<u8> {
        let original = header_only(head, &self.limits()).unwrap_or_default();
        let nak = Nak::new(
            AckCode::Error,
            ErrorCode::ApplicationInternalError,
            None,
            format!(
                "the message is over the limit of {limit} bytes (max_message_bytes); it was not processed"
            ),
        );
        self.refuse(&original, nak).await
    }

    async fn accept(&self, message: &Message, payload: &[u8]) -> Result<Vec<u8>, Nak> {
        let control_id = message.control_id();
        if control_id.is_empty() {
            return Err(Nak::new(
                AckCode::Reject,
                ErrorCode::RequiredFieldMissing,
                msh_at(10),
                "MSH-10 (message control id) is empty",
            ));
        }
        let sender = self.sender(message)?;
        let processing = message.processing_id();
        if !self.settings.processing_ids.iter().any(|p| p == processing) {
            return Err(Nak::new(
                AckCode::Reject,
                ErrorCode::UnsupportedProcessingId,
                msh_at(11),
                format!(
                    "MSH-11: processing id {processing:?} is not taken by this listener (it takes {})",
                    self.settings.processing_ids.join(", ")
                ),
            ));
        }
        let version = message.version();
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(Nak::new(
                AckCode::Reject,
                ErrorCode::UnsupportedVersionId,
                msh_at(12),
                format!("MSH-12: version {version:?} is not taken (2.3 to 2.8 are)"),
            ));
        }
        let mapped = map_message(message, &self.settings.mapping).map_err(|refusal| Nak {
            code: refusal.code,
            error: refusal.error,
        })?;
        let caller = self.caller(&sender, control_id);
        let transaction = self
            .hub
            // A feed repeats the patient with every event: unchanged records get no version.
            .prepare_feed_transaction(&caller, &mapped.bundle)
            .map_err(|error| {
                // The mapping wrote something FHIR refuses: the message's content is at fault
                // (a value FHIR cannot hold) or the mapping is; either way, say what.
                Nak::new(
                    AckCode::Error,
                    ErrorCode::ApplicationInternalError,
                    None,
                    diagnostics(&error),
                )
            })?;
        let answer = encode(&ack(
            message,
            AckCode::Accept,
            None,
            &ack_control_id(),
            &self.now(),
        ));
        let (kind, event, _) = message.message_type();
        let inbound = InboundMessage {
            key: format!("{}|{}|{control_id}", sender.application, sender.facility),
            fingerprint: fingerprint(message, payload),
            description: format!("HL7v2 {kind}^{event} {control_id}"),
            transaction,
            merge_prior: mapped.merge_prior,
            acknowledgement: bytes_as_text(&answer),
        };
        let ingested = tokio::time::timeout(
            self.settings.message_timeout,
            self.hub.ingest_message(&caller, inbound),
        )
        .await;
        match ingested {
            Ok(Ok(Ingested::Committed { .. })) => Ok(answer),
            Ok(Ok(Ingested::Duplicate { acknowledgement })) => {
                tracing::info!(sender = %sender.subject(), control_id, "MLLP resend: answered the acknowledgement of the first time");
                Ok(text_as_bytes(&acknowledgement))
            }
            // Refusals inside the hub are audited there; answered here.
            Ok(Err(error)) => Err(hub_nak(&error)),
            // The store may still commit it: a resend then finds it and answers AA.
            Err(_) => Err(Nak::new(
                AckCode::Reject,
                ErrorCode::ApplicationInternalError,
                None,
                "the message was not processed in time (message_timeout); resend it",
            )),
        }
    }

    /// The sender named by MSH-3 and MSH-4, if this listener takes it (with the client
    /// certificate it is bound to).
    fn sender(&self, message: &Message) -> Result<Sender, Nak> {
        let (application, facility) = (message.sending_application(), message.sending_facility());
        let Some(sender) = self
            .settings
            .senders
            .iter()
            .find(|s| s.application == application && s.facility == facility)
        else {
            return Err(Nak::new(
                AckCode::Reject,
                ErrorCode::ApplicationInternalError,
                msh_at(3),
                format!(
                    "sender {application:?} at {facility:?} (MSH-3, MSH-4) is not allowed on this listener"
                ),
            ));
        };
        if !sender.certificate_sha256.is_empty()
            && !self
                .certificate
                .is_some_and(|c| sender.certificate_sha256.contains(&c))
        {
            return Err(Nak::new(
                AckCode::Reject,
                ErrorCode::ApplicationInternalError,
                msh_at(3),
                format!(
                    "sender {application:?} at {facility:?} must connect with its own client certificate"
                ),
            ));
        }
        Ok(sender.clone())
    }

    fn caller(&self, sender: &Sender, control_id: &str) -> Caller {
        let access = TokenAccess {
            token_id: None,
            roles: vec![SENDER_ROLE.to_owned()],
            scopes: ScopeSet::parse(SENDER_SCOPES, |_| true).expect("the sender scopes parse"),
            patient: None,
        };
        let mut caller = Caller::new(Principal::token(&sender.subject(), access), control_id);
        caller.network_address = Some(self.peer.ip().to_string());
        caller.base_url = self.settings.base_url.clone();
        caller
    }

    /// A NAK, recorded in the audit trail; if even that fails, the sender is told to resend.
    async fn refuse(&self, original: &Message, nak: Nak) -> Vec<u8> {
        let (kind, event, _) = original.message_type();
        let claimed = Sender {
            application: original.sending_application().to_owned(),
            facility: original.sending_facility().to_owned(),
            certificate_sha256: Vec::new(),
        };
        let mut caller = Caller::new(
            Principal::token(
                &claimed.subject(),
                TokenAccess {
                    token_id: None,
                    roles: Vec::new(),
                    scopes: ScopeSet::default(),
                    patient: None,
                },
            ),
            original.control_id(),
        );
        caller.network_address = Some(self.peer.ip().to_string());
        caller.base_url = self.settings.base_url.clone();
        let description = format!("HL7v2 {kind}^{event} {}", original.control_id());
        let reason = format!("{}: {}", nak.code.as_str(), nak.error.diagnostic);
        let (code, error) = match self
            .hub
            .record_refused_message(&caller, &description, &reason)
            .await
        {
            Ok(()) => (nak.code, nak.error),
            Err(failure) => {
                tracing::error!(%failure, "cannot record a refused MLLP message");
                (
                    AckCode::Reject,
                    AckError {
                        code: ErrorCode::ApplicationInternalError,
                        location: None,
                        diagnostic: "the hub cannot record messages now; resend later".to_owned(),
                    },
                )
            }
        };
        tracing::info!(peer = %self.peer, sender = %claimed.subject(), %description, %reason, "MLLP message refused");
        encode(&ack(
            original,
            code,
            Some(&error),
            &ack_control_id(),
            &self.now(),
        ))
    }

    /// MSH-7 of an acknowledgement, in the listener's time zone.
    fn now(&self) -> String {
        jiff::Zoned::now()
            .with_time_zone(self.settings.mapping.time_zone.clone())
            .strftime("%Y%m%d%H%M%S%z")
            .to_string()
    }
}

/// The hub's refusal as a NAK: the content at fault is AE, a forbidden or unavailable hub
/// is AR (the sender may resend once the cause is fixed).
fn hub_nak(error: &HubError) -> Nak {
    let (code, error_code) = match error.status {
        401 | 403 => (AckCode::Reject, ErrorCode::ApplicationInternalError),
        404 | 410 => (AckCode::Error, ErrorCode::UnknownKeyIdentifier),
        409 => (AckCode::Error, ErrorCode::DuplicateKeyIdentifier),
        412 => (AckCode::Error, ErrorCode::ApplicationInternalError),
        400 | 413 | 422 => (AckCode::Error, ErrorCode::ApplicationInternalError),
        _ => (AckCode::Reject, ErrorCode::ApplicationInternalError),
    };
    Nak::new(code, error_code, None, diagnostics(error))
}

fn diagnostics(error: &HubError) -> String {
    let text = error
        .issues
        .iter()
        .map(|issue| match &issue.expression {
            Some(at) if !at.is_empty() => format!("{} ({at})", issue.diagnostics),
            _ => issue.diagnostics.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ");
    // ERR-8 is meant for a help desk, not a dump.
    text.chars().take(500).collect()
}

/// What makes a message itself: its type, control id and every segment after MSH (a resend
/// may carry a new MSH-7 time).
fn fingerprint(message: &Message, payload: &[u8]) -> String {
    let body_start = payload
        .iter()
        .position(|b| *b == b'\r' || *b == b'\n')
        .unwrap_or(payload.len());
    let (kind, event, _) = message.message_type();
    let mut digest = sha2::Sha256::new();
    digest.update(format!("{kind}^{event}|{}|", message.control_id()).as_bytes());
    digest.update(&payload[body_start..]);
    digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The MSH segment alone, parsed, to answer a message that does not parse in full.
fn header_only(payload: &[u8], limits: &Limits) -> Option<Message> {
    let end = payload
        .iter()
        .position(|b| *b == b'\r' || *b == b'\n')
        .unwrap_or(payload.len());
    parse(&payload[..end], limits).ok()
}

/// A fresh MSH-10 for an acknowledgement: 20 characters, time-ordered.
fn ack_control_id() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("A{}", &id[..19])
}

/// Bytes kept as text, one character per byte (lossless for any encoding).
fn bytes_as_text(bytes: &[u8]) -> String {
    bytes.iter().map(|b| char::from(*b)).collect()
}

fn text_as_bytes(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}
