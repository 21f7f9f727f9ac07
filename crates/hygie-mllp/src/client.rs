//! A small MLLP client: sends messages one at a time on a connection and waits for each
//! acknowledgement (original mode), over TCP or TLS. For `hygie hl7 send`, tests and
//! replays.

use std::sync::Arc;
use std::time::Duration;

use hygie_hl7v2::mllp::{MllpDecoder, frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest acknowledgement read.
pub const MAX_ACK_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
    #[error("the hub closed the connection without acknowledging")]
    Closed,
    #[error("the acknowledgement is not a valid MLLP frame: {0}")]
    Framing(String),
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// One connection to an MLLP listener.
pub struct Connection {
    stream: Box<dyn Stream>,
    decoder: MllpDecoder,
    timeout: Duration,
}

/// TLS for the client: the CA that signed the listener's certificate, the name to check,
/// and optionally a client certificate.
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: String,
}

impl Connection {
    pub async fn open(
        address: &str,
        tls: Option<&ClientTls>,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|source| ClientError::Connect {
                address: address.to_owned(),
                source,
            })?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match tls {
            None => Box::new(tcp),
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(tls.server_name.clone())
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                Box::new(
                    tokio::time::timeout(timeout, connector.connect(name, tcp))
                        .await
                        .map_err(|_| ClientError::Timeout(timeout))?
                        .map_err(|e| ClientError::Tls(e.to_string()))?,
                )
            }
        };
        Ok(Connection {
            stream,
            decoder: MllpDecoder::new(MAX_ACK_BYTES),
            timeout,
        })
    }

    /// Ends the connection cleanly (with TLS, its close_notify).
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.stream.shutdown().await?;
        Ok(())
    }

    /// Sends one message and returns the acknowledgement's bytes.
    pub async fn send(&mut self, message: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.stream.write_all(&frame(message)).await?;
        self.stream.flush().await?;
        let mut buffer = vec![0u8; 8192];
        loop {
            match self.decoder.next_frame() {
                Ok(Some(ack)) => return Ok(ack),
                Ok(None) => {}
                Err(error) => return Err(ClientError::Framing(error.to_string())),
            }
            let read = tokio::time::timeout(self.timeout, self.stream.read(&mut buffer))
                .await
                .map_err(|_| ClientError::Timeout(self.timeout))??;
            if read == 0 {
                return Err(ClientError::Closed);
            }
            self.decoder.push(&buffer[..read]);
        }
    }
}

/// Splits a file into messages: each starts at a line beginning with `MSH`; line ends
/// (`\r\n`, `\n`, `\r`) become the segment separator `\r`; blank lines are dropped.
pub fn split_messages(text: &[u8]) -> Vec<Vec<u8>> {
    let mut messages: Vec<Vec<u8>> = Vec::new();
    for line in text.split(|b| *b == b'\n' || *b == b'\r') {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        if line.starts_with(b"MSH") || messages.is_empty() {
            messages.push(line.to_vec());
        } else {
            let current = messages.last_mut().expect("a message is open");
            current.push(b'\r');
            current.extend_from_slice(line);
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_split_into_messages_at_each_msh() {
        let file = b"MSH|^~\\&|A\r\nPID|1\r\n\r\nMSH|^~\\&|B\nPV1|1\nOBX|1\n";
        assert_eq!(
            split_messages(file),
            vec![
                b"MSH|^~\\&|A\rPID|1".to_vec(),
                b"MSH|^~\\&|B\rPV1|1\rOBX|1".to_vec()
            ]
        );
    }
}
