//! The witness's HTTP client of the hub's audit endpoints: the only IO with the log.
//!
//! Everything the hub answers is untrusted and bounded: every request by a timeout, every
//! body by a size read as it streams in ([`MAX_CHECKPOINT_BYTES`], [`MAX_PROOF_BYTES`],
//! [`MAX_KEY_BYTES`]), a proof by [`MAX_PROOF_HASHES`] hashes. https only, except plain
//! http to a loopback address (tests, or a hub on the same host); redirects are not
//! followed (the hub's URL is configuration, not something the hub may change); a private
//! CA given with `--ca-file` becomes the only trust root.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hygie_audit::checkpoint::MAX_NOTE_BYTES;
use hygie_audit::merkle::{Hash, MAX_PROOF_HASHES};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

/// The largest checkpoint note read: the signed-note limit.
pub const MAX_CHECKPOINT_BYTES: usize = MAX_NOTE_BYTES;
/// The largest proof document read: 64 base64 hashes take under 4 KiB.
pub const MAX_PROOF_BYTES: usize = 64 << 10;
/// The largest verifier key line read (a vkey is at most 512 bytes).
pub const MAX_KEY_BYTES: usize = 1 << 10;
/// How much of an error answer is read, to quote it.
pub const MAX_ERROR_BODY_BYTES: usize = 4 << 10;
/// How many characters of an error answer are quoted in a message.
const QUOTED_ERROR_CHARS: usize = 300;

/// Why a request to the hub did not give a usable answer: the round is abandoned (and, in
/// a loop, tried again at the next one); nothing is concluded about the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("--hub {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("--ca-file {path}: {reason}")]
    BadCaFile { path: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("GET/POST {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("{url} answered HTTP {status}{detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error(
        "{url} redirects (HTTP {status}) to {location}: redirects are not followed, give the hub's final URL as --hub"
    )]
    Redirect {
        url: String,
        status: u16,
        location: String,
    },
    #[error("{url} answered more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url} answered something that is not {what}: {reason}")]
    Malformed {
        url: String,
        what: &'static str,
        reason: String,
    },
}

/// Checks the hub's base URL: https, or http to a loopback address. A host *name* never
/// counts as loopback: `localhost` may resolve elsewhere.
pub fn check_hub_url(hub: &str) -> Result<Url, HubError> {
    let bad = |reason: &str| HubError::BadUrl {
        url: hub.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(hub).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials in the URL would end up in logs"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "a base URL has no query or fragment (the witness adds /audit/…)",
        ));
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(bad(
            "plain http would let anyone on the path feed the witness: use https (http is allowed to 127.0.0.0/8 and [::1] only)",
        )),
        other => Err(bad(&format!("scheme {other:?}: use https"))),
    }
}

fn is_loopback(url: &Url) -> bool {
    url.host_str()
        .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|host| host.parse::<IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback())
}

/// What became of a cosignature sent to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// The hub took it (a 2xx answer).
    Accepted,
    /// The hub does not collect cosignatures (404 or 405): nothing to do.
    NotCollected,
    /// It could not be delivered; the next round sends it again.
    Failed(String),
}

/// A client of one hub's `/audit` endpoints.
#[derive(Debug, Clone)]
pub struct HubClient {
    /// The base URL without a trailing slash.
    base: String,
    client: reqwest::Client,
}

/// The consistency proof document.
#[derive(Debug, Deserialize)]
struct ProofDocument {
    from: u64,
    to: u64,
    hashes: Vec<String>,
}

impl HubClient {
    /// A client of the hub at `hub` (see [`check_hub_url`]); `ca_pem`: the PEM certificates
    /// of a private CA, then the only roots trusted.
    pub fn new(hub: &str, timeout: Duration, ca_pem: Option<&[u8]>) -> Result<HubClient, HubError> {
        let url = check_hub_url(hub)?;
        let loopback = is_loopback(&url);
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hygie-witness/", env!("CARGO_PKG_VERSION")))
            .https_only(!loopback);
        if loopback {
            // A proxy from the environment must not see (nor break) a loopback fetch.
            builder = builder.no_proxy();
        }
        if let Some(pem) = ca_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| HubError::Client(format!("the CA file: {}", error_chain(&e))))?;
            if certificates.is_empty() {
                return Err(HubError::Client(
                    "the CA file holds no PEM certificate".into(),
                ));
            }
            builder = builder.tls_certs_only(certificates);
        }
        let client = builder
            .build()
            .map_err(|e| HubError::Client(error_chain(&e)))?;
        Ok(HubClient {
            base: url.as_str().trim_end_matches('/').to_owned(),
            client,
        })
    }

    /// The base URL, as the witness reports it.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET /audit/checkpoint`: the latest signed checkpoint note, unverified.
    pub async fn checkpoint(&self) -> Result<Vec<u8>, HubError> {
        self.get(
            &self.url("/audit/checkpoint"),
            MAX_CHECKPOINT_BYTES,
            "text/plain",
        )
        .await
    }

    /// `GET /audit/key`: the log's verifier key line, for trust on first use.
    pub async fn log_key(&self) -> Result<String, HubError> {
        let url = self.url("/audit/key");
        let body = self.get(&url, MAX_KEY_BYTES, "text/plain").await?;
        let text = String::from_utf8(body).map_err(|_| HubError::Malformed {
            url,
            what: "a verifier key",
            reason: "not UTF-8".into(),
        })?;
        Ok(text.trim().to_owned())
    }

    /// `GET /audit/proof/consistency?from=M&to=N`: the proof's hashes, checked for shape
    /// (the sizes it answers for, at most [`MAX_PROOF_HASHES`] hashes of 32 bytes), not yet
    /// verified.
    pub async fn consistency_proof(
        &self,
        from_size: u64,
        to_size: u64,
    ) -> Result<Vec<Hash>, HubError> {
        let url = self.url(&format!(
            "/audit/proof/consistency?from={from_size}&to={to_size}"
        ));
        let body = self.get(&url, MAX_PROOF_BYTES, "application/json").await?;
        let malformed = |reason: String| HubError::Malformed {
            url: url.clone(),
            what: "a consistency proof",
            reason,
        };
        let document: ProofDocument =
            serde_json::from_slice(&body).map_err(|e| malformed(e.to_string()))?;
        if (document.from, document.to) != (from_size, to_size) {
            return Err(malformed(format!(
                "it is the proof from {} to {}",
                document.from, document.to
            )));
        }
        if document.hashes.len() > MAX_PROOF_HASHES {
            return Err(malformed(format!(
                "{} hashes, more than the limit of {MAX_PROOF_HASHES}",
                document.hashes.len()
            )));
        }
        document
            .hashes
            .iter()
            .enumerate()
            .map(|(number, hash)| {
                STANDARD
                    .decode(hash)
                    .ok()
                    .and_then(|bytes| Hash::try_from(bytes).ok())
                    .ok_or_else(|| {
                        malformed(format!(
                            "hash {number} is not the standard base64 of 32 bytes"
                        ))
                    })
            })
            .collect()
    }

    /// `POST /audit/cosignatures` with the cosigned note. Never an error: the cosignature
    /// is saved, and the next round offers it again.
    pub async fn post_cosignature(&self, cosigned_note: &str) -> Posted {
        let url = self.url("/audit/cosignatures");
        let response = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(cosigned_note.to_owned())
            .send()
            .await;
        match response {
            Err(error) => Posted::Failed(format!("POST {url}: {}", error_chain(&error))),
            Ok(response) => match response.status() {
                status if status.is_success() => Posted::Accepted,
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Posted::NotCollected,
                status => {
                    let detail = quote_error(response).await;
                    Posted::Failed(format!("POST {url} answered HTTP {status}{detail}"))
                }
            },
        }
    }

    /// A GET whose 200 body is read up to `limit` bytes.
    async fn get(&self, url: &str, limit: usize, accept: &str) -> Result<Vec<u8>, HubError> {
        let request_error = |error: reqwest::Error| HubError::Request {
            url: url.to_owned(),
            reason: error_chain(&error),
        };
        let mut response = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|location| location.to_str().ok())
                .unwrap_or("nowhere")
                .to_owned();
            return Err(HubError::Redirect {
                url: url.to_owned(),
                status: status.as_u16(),
                location,
            });
        }
        if status != StatusCode::OK {
            return Err(HubError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
                detail: quote_error(response).await,
            });
        }
        let too_large = || HubError::TooLarge {
            url: url.to_owned(),
            limit,
        };
        if response
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(request_error)? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The start of an error answer (an OperationOutcome, say), as `: …` to append to a
/// message; empty when there is none.
async fn quote_error(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(MAX_ERROR_BODY_BYTES);
    let text = String::from_utf8_lossy(&body);
    let text: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .take(QUOTED_ERROR_CHARS)
        .collect();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// An error and its sources, one line: reqwest's own message rarely says what failed.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_are_https_or_loopback_http() {
        for good in [
            "https://hub.example",
            "https://hub.example/base/",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "http://127.1.2.3",
        ] {
            assert!(check_hub_url(good).is_ok(), "{good}");
        }
        for bad in [
            "http://hub.example",
            "http://localhost:8080",
            "http://10.0.0.1",
            "ftp://hub.example",
            "https://user:pw@hub.example",
            "https://hub.example/?x=1",
            "https://hub.example/#x",
            "hub.example",
        ] {
            assert!(check_hub_url(bad).is_err(), "{bad}");
        }
        let error = check_hub_url("http://hub.example").unwrap_err().to_string();
        assert!(error.contains("use https"), "{error}");
    }

    #[test]
    fn endpoint_urls_keep_the_base_path() {
        let client =
            HubClient::new("https://hub.example/hygie/", Duration::from_secs(1), None).unwrap();
        assert_eq!(
            client.url("/audit/checkpoint"),
            "https://hub.example/hygie/audit/checkpoint"
        );
    }
}
