//! At-least-once delivery to loopback collectors (TCP, TLS, mutual TLS) and to files, with
//! collectors that crash mid-stream and come back, sources that fail, and restarts.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Collector, fill, wait_status, wait_until};
use hygie_siem::{AuditSource, ExportConfig, ExportLeaf, MemorySource, SourceError, Wakeup};

const ANY_PORT: &str = "127.0.0.1:0";

/// Settings that make the tests quick: small batches, short waits.
fn syslog_config(kind: &str, address: SocketAddr) -> ExportConfig {
    ExportConfig {
        name: "siem".to_owned(),
        kind: kind.to_owned(),
        address: Some(address.to_string()),
        hostname: Some("hygie-test".to_owned()),
        batch_leaves: Some(50),
        poll_interval_ms: Some(20),
        backoff_min_ms: Some(10),
        backoff_max_ms: Some(100),
        connect_timeout_ms: Some(2_000),
        connect_settle_ms: Some(50),
        send_timeout_ms: Some(5_000),
        ..ExportConfig::default()
    }
}

/// The indices in order of first arrival are 0..count, each at least once.
fn assert_all_first_arrivals_in_order(indices: &[u64], count: u64) {
    let mut seen = BTreeSet::new();
    let mut first_arrivals = Vec::new();
    for &index in indices {
        if seen.insert(index) {
            first_arrivals.push(index);
        }
    }
    assert_eq!(
        first_arrivals,
        (0..count).collect::<Vec<_>>(),
        "first arrivals out of order or missing"
    );
}

/// Exports to a collector that crashes after `stop_after` messages, with more leaves
/// appended while it is down, then comes back on the same port.
async fn survive_a_collector_crash(
    config: impl Fn(SocketAddr) -> ExportConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let source = Arc::new(MemorySource::new());
    fill(&source, 200);
    let messages = Arc::new(Mutex::new(Vec::new()));
    let collector = Collector::start(
        ANY_PORT.parse().unwrap(),
        tls.clone(),
        None,
        messages.clone(),
    )
    .await;
    let address = collector.address;
    let wakeup = Wakeup::new();
    let export = hygie_siem::spawn(&config(address), source.clone(), &wakeup).unwrap();
    let mut status = export.watch_status();

    // Everything so far arrives, in order, once.
    wait_status(&mut status, "the first 200 leaves", |s| {
        s.cursor == Some(200)
    })
    .await;
    wait_until("200 messages", || messages.lock().unwrap().len() >= 200).await;
    assert_eq!(collector.indices(), (0..200).collect::<Vec<_>>());
    assert!(export.status().connected);
    collector.stop().await;

    // A collector that dies after 300 more messages, unread bytes and all.
    let collector = Collector::start(address, tls.clone(), Some(500), messages.clone()).await;
    fill(&source, 2_000);
    wakeup.poke();
    collector.stopped().await;
    assert!(messages.lock().unwrap().len() >= 500);
    // The loopback buffers hold far more than the collector read: here the cursor usually
    // counts all 2,200 leaves already, though only 500 messages were read.
    wait_status(&mut status, "the disconnection", |s| !s.connected).await;
    fill(&source, 300);
    wakeup.poke();
    let status_down = wait_status(&mut status, "a failure while the collector is down", |s| {
        s.consecutive_failures > 0
    })
    .await;
    assert!(status_down.last_error.is_some());
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Back on the same port: every leaf arrives, the lost ones again.
    let collector = Collector::start(address, tls, None, messages.clone()).await;
    let total = source.len();
    wait_status(&mut status, "the cursor at the end", |s| {
        s.cursor == Some(total)
    })
    .await;
    wait_until("every index", || {
        let received: BTreeSet<u64> = collector.indices().into_iter().collect();
        received.len() as u64 == total
    })
    .await;
    let indices = collector.indices();
    let received: BTreeSet<u64> = indices.iter().copied().collect();
    assert_eq!(received, (0..total).collect::<BTreeSet<_>>());
    assert_all_first_arrivals_in_order(&indices, total);
    assert_eq!(source.cursor("siem"), Some(total));
    let status = export.status();
    assert_eq!(status.last_delivered_index, Some(total - 1));
    assert_eq!(status.consecutive_failures, 0);
    assert!(collector.frame_errors.lock().unwrap().is_empty());
    export.shutdown().await;
    collector.stop().await;
}

mod tcp {
    use super::*;

    /// A source that can no longer read leaves below the saved cursor (pruned by retention
    /// after their delivery): it answers no leaf there.
    struct PruningSource(MemorySource);

    impl AuditSource for PruningSource {
        async fn leaves_from(
            &self,
            from: u64,
            limit: usize,
        ) -> Result<Vec<ExportLeaf>, SourceError> {
            if from < self.0.cursor("siem").unwrap_or(0) {
                return Ok(Vec::new());
            }
            self.0.leaves_from(from, limit).await
        }

        async fn load_cursor(&self, name: &str) -> Result<u64, SourceError> {
            self.0.load_cursor(name).await
        }

        async fn save_cursor(&self, name: &str, next: u64) -> Result<(), SourceError> {
            self.0.save_cursor(name, next).await
        }
    }

    #[tokio::test]
    async fn a_resend_of_pruned_leaves_goes_on_from_the_cursor() {
        let source = Arc::new(PruningSource(MemorySource::new()));
        fill(&source.0, 100);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let collector =
            Collector::start(ANY_PORT.parse().unwrap(), None, None, messages.clone()).await;
        let address = collector.address;
        let wakeup = Wakeup::new();
        let export = hygie_siem::spawn(
            &syslog_config("syslog-tcp", address),
            source.clone(),
            &wakeup,
        )
        .unwrap();
        let mut status = export.watch_status();
        wait_status(&mut status, "the first 100 leaves", |s| {
            s.cursor == Some(100)
        })
        .await;
        collector.stop().await;
        wait_status(&mut status, "the disconnection", |s| !s.connected).await;

        // The resend (from leaf 0) finds nothing to read: the new leaves still go out.
        let collector = Collector::start(address, None, None, messages.clone()).await;
        fill(&source.0, 50);
        wakeup.poke();
        wait_status(&mut status, "the cursor past the new leaves", |s| {
            s.cursor == Some(150)
        })
        .await;
        wait_until("the new leaves", || {
            let received: BTreeSet<u64> = collector.indices().into_iter().collect();
            (100..150).all(|index| received.contains(&index))
        })
        .await;
        export.shutdown().await;
        collector.stop().await;
    }

    #[tokio::test]
    async fn every_leaf_arrives_across_a_collector_crash() {
        survive_a_collector_crash(|address| syslog_config("syslog-tcp", address), None).await;
    }

    #[tokio::test]
    async fn messages_are_rfc_5424_with_the_configured_header() {
        let source = Arc::new(MemorySource::new());
        source.append(1_700_000_000_123_456, common::event("4", "read", "Zoë"));
        let messages = Arc::new(Mutex::new(Vec::new()));
        let collector =
            Collector::start(ANY_PORT.parse().unwrap(), None, None, messages.clone()).await;
        let export = hygie_siem::spawn(
            &syslog_config("syslog-tcp", collector.address),
            source.clone(),
            &Wakeup::new(),
        )
        .unwrap();
        wait_until("one message", || !messages.lock().unwrap().is_empty()).await;
        let message = String::from_utf8(messages.lock().unwrap()[0].clone()).unwrap();
        let json = String::from_utf8(common::event("4", "read", "Zoë")).unwrap();
        assert_eq!(
            message,
            format!(
                "<108>1 2023-11-14T22:13:20.123456Z hygie-test hygie - rest [hygie@32473 index=\"0\" subtype=\"read\" outcome=\"4\"] \u{feff}{json}"
            )
        );
        export.shutdown().await;
        collector.stop().await;
    }

    #[tokio::test]
    async fn nothing_is_counted_while_no_collector_listens() {
        // Bind then drop: a loopback port with (almost surely) nobody behind it.
        let address = std::net::TcpListener::bind(ANY_PORT)
            .unwrap()
            .local_addr()
            .unwrap();
        let source = Arc::new(MemorySource::new());
        fill(&source, 10);
        let export = hygie_siem::spawn(
            &syslog_config("syslog-tcp", address),
            source.clone(),
            &Wakeup::new(),
        )
        .unwrap();
        let mut status = export.watch_status();
        let failed = wait_status(&mut status, "a connection failure", |s| {
            s.consecutive_failures >= 2
        })
        .await;
        assert!(
            failed
                .last_error
                .as_deref()
                .unwrap()
                .contains(&address.to_string()),
            "{failed:?}"
        );
        assert_eq!(failed.cursor, Some(0));
        assert_eq!(source.cursor("siem"), None);
        export.shutdown().await;
    }
}

mod tls {
    use super::*;
    use rcgen::{
        BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    struct Authority {
        cert: Certificate,
        key: KeyPair,
    }

    impl Authority {
        fn new(name: &str) -> Authority {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            Authority {
                cert: params.self_signed(&key).unwrap(),
                key,
            }
        }

        /// A leaf certificate for `names`, for a server or a client.
        fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (Certificate, KeyPair) {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, names[0]);
            params.extended_key_usages = vec![usage];
            (params.signed_by(&key, &self.cert, &self.key).unwrap(), key)
        }

        fn write(&self, dir: &Path, file: &str) -> PathBuf {
            let path = dir.join(file);
            std::fs::write(&path, self.cert.pem()).unwrap();
            path
        }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    /// A TLS collector's settings: its certificate, and the CA its clients must be signed
    /// by, if it requires client certificates.
    fn server_config(
        server: &Authority,
        client_ca: Option<&Authority>,
    ) -> Arc<rustls::ServerConfig> {
        let (cert, key) = server.issue(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let chain = vec![cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let config = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from(ca.cert.der().to_vec()))
                    .unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        Arc::new(config.with_single_cert(chain, key).unwrap())
    }

    fn tls_config(address: SocketAddr, ca_file: &Path) -> ExportConfig {
        ExportConfig {
            server_name: Some("localhost".to_owned()),
            ca_file: Some(ca_file.to_owned()),
            ..syslog_config("syslog-tls", address)
        }
    }

    #[tokio::test]
    async fn every_leaf_arrives_across_a_collector_crash() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::new("Hygie test CA");
        let ca_file = ca.write(dir.path(), "ca.pem");
        let server = server_config(&ca, None);
        survive_a_collector_crash(|address| tls_config(address, &ca_file), Some(server)).await;
    }

    #[tokio::test]
    async fn a_server_certificate_of_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let trusted = Authority::new("Trusted CA");
        let other = Authority::new("Someone else's CA");
        let ca_file = trusted.write(dir.path(), "ca.pem");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let collector = Collector::start(
            ANY_PORT.parse().unwrap(),
            Some(server_config(&other, None)),
            None,
            messages.clone(),
        )
        .await;
        let source = Arc::new(MemorySource::new());
        fill(&source, 20);
        let export = hygie_siem::spawn(
            &tls_config(collector.address, &ca_file),
            source.clone(),
            &Wakeup::new(),
        )
        .unwrap();
        let mut status = export.watch_status();
        let failed = wait_status(&mut status, "a refused certificate", |s| {
            s.consecutive_failures >= 2
        })
        .await;
        let error = failed.last_error.clone().unwrap();
        assert!(
            error.contains("TLS handshake") && error.contains("UnknownIssuer"),
            "{error}"
        );
        assert!(!failed.connected);
        assert_eq!(failed.cursor, Some(0));
        assert_eq!(source.cursor("siem"), None);
        assert!(messages.lock().unwrap().is_empty());
        export.shutdown().await;
        collector.stop().await;
    }

    #[tokio::test]
    async fn a_server_certificate_for_another_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::new("Hygie test CA");
        let ca_file = ca.write(dir.path(), "ca.pem");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let collector = Collector::start(
            ANY_PORT.parse().unwrap(),
            Some(server_config(&ca, None)),
            None,
            messages.clone(),
        )
        .await;
        let source = Arc::new(MemorySource::new());
        fill(&source, 5);
        let config = ExportConfig {
            server_name: Some("siem.example".to_owned()),
            ..tls_config(collector.address, &ca_file)
        };
        let export = hygie_siem::spawn(&config, source.clone(), &Wakeup::new()).unwrap();
        let mut status = export.watch_status();
        let failed = wait_status(&mut status, "a refused name", |s| {
            s.consecutive_failures >= 1
        })
        .await;
        assert!(
            failed
                .last_error
                .as_deref()
                .unwrap()
                .contains("not valid for name"),
            "{failed:?}"
        );
        assert_eq!(source.cursor("siem"), None);
        assert!(messages.lock().unwrap().is_empty());
        export.shutdown().await;
        collector.stop().await;
    }

    #[tokio::test]
    async fn mutual_tls_delivers_with_the_client_certificate_and_not_without() {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = Authority::new("Server CA");
        let client_ca = Authority::new("Client CA");
        let ca_file = server_ca.write(dir.path(), "ca.pem");
        let (client_cert, client_key) =
            client_ca.issue(&["hygie-1"], ExtendedKeyUsagePurpose::ClientAuth);
        let cert_file = dir.path().join("client.pem");
        let key_file = dir.path().join("client.key");
        std::fs::write(&cert_file, client_cert.pem()).unwrap();
        std::fs::write(&key_file, client_key.serialize_pem()).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let collector = Collector::start(
            ANY_PORT.parse().unwrap(),
            Some(server_config(&server_ca, Some(&client_ca))),
            None,
            messages.clone(),
        )
        .await;
        let source = Arc::new(MemorySource::new());
        fill(&source, 120);

        // Without a client certificate the server refuses: nothing is counted.
        // The refusal comes one round trip after the client's handshake (TLS 1.3): a long
        // settle keeps a loaded test machine from counting the first batch before it.
        let anonymous = ExportConfig {
            name: "anonymous".to_owned(),
            connect_settle_ms: Some(2_000),
            ..tls_config(collector.address, &ca_file)
        };
        let export = hygie_siem::spawn(&anonymous, source.clone(), &Wakeup::new()).unwrap();
        let mut status = export.watch_status();
        let failed = wait_status(&mut status, "a refused client", |s| {
            s.consecutive_failures >= 2
        })
        .await;
        assert!(
            failed
                .last_error
                .as_deref()
                .unwrap()
                .contains("CertificateRequired"),
            "{failed:?}"
        );
        assert_eq!(source.cursor("anonymous"), None);
        export.shutdown().await;
        assert!(messages.lock().unwrap().is_empty());
        assert!(!collector.handshake_errors.lock().unwrap().is_empty());

        let with_certificate = ExportConfig {
            client_cert_file: Some(cert_file),
            client_key_file: Some(key_file),
            ..tls_config(collector.address, &ca_file)
        };
        let export = hygie_siem::spawn(&with_certificate, source.clone(), &Wakeup::new()).unwrap();
        let mut status = export.watch_status();
        wait_status(&mut status, "all leaves", |s| s.cursor == Some(120)).await;
        wait_until("120 messages", || messages.lock().unwrap().len() >= 120).await;
        assert_eq!(collector.indices(), (0..120).collect::<Vec<_>>());
        export.shutdown().await;
        collector.stop().await;
    }
}

mod jsonl {
    use super::*;

    fn config(path: &Path) -> ExportConfig {
        ExportConfig {
            name: "archive".to_owned(),
            kind: "jsonl".to_owned(),
            path: Some(path.to_owned()),
            batch_leaves: Some(10),
            poll_interval_ms: Some(20),
            backoff_min_ms: Some(10),
            backoff_max_ms: Some(50),
            ..ExportConfig::default()
        }
    }

    /// Every line's index, checking that each line is `{"index":N,"event":<leaf N>}`.
    fn read_lines(path: &Path, source: &MemorySource) -> Vec<u64> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'));
        let all = futures_lite_block(source.leaves_from(0, usize::MAX)).unwrap();
        text.lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                let index = value["index"].as_u64().unwrap();
                let leaf = std::str::from_utf8(&all[index as usize].leaf).unwrap();
                assert_eq!(line, format!("{{\"index\":{index},\"event\":{leaf}}}"));
                index
            })
            .collect()
    }

    /// MemorySource answers at once: its futures complete on the first poll.
    fn futures_lite_block<F: std::future::Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut context) {
            std::task::Poll::Ready(output) => output,
            std::task::Poll::Pending => panic!("MemorySource never waits"),
        }
    }

    /// A MemorySource whose `save_cursor` fails on chosen calls, and which checks, at each
    /// save, that the file already holds every leaf the new cursor counts.
    struct CheckingSource {
        inner: MemorySource,
        path: PathBuf,
        saves: AtomicUsize,
        fail_on_save: Option<usize>,
        violations: Mutex<Vec<String>>,
    }

    impl AuditSource for CheckingSource {
        async fn leaves_from(
            &self,
            from: u64,
            limit: usize,
        ) -> Result<Vec<ExportLeaf>, SourceError> {
            self.inner.leaves_from(from, limit).await
        }

        async fn load_cursor(&self, name: &str) -> Result<u64, SourceError> {
            self.inner.load_cursor(name).await
        }

        async fn save_cursor(&self, name: &str, next: u64) -> Result<(), SourceError> {
            let on_disk: BTreeSet<u64> = read_lines(&self.path, &self.inner).into_iter().collect();
            if let Some(missing) = (0..next).find(|i| !on_disk.contains(i)) {
                self.violations.lock().unwrap().push(format!(
                    "cursor {next} saved before leaf {missing} was written"
                ));
            }
            let call = self.saves.fetch_add(1, Ordering::SeqCst) + 1;
            if Some(call) == self.fail_on_save {
                return Err(SourceError::with_source(
                    "saving the cursor",
                    std::io::Error::other("disk hiccup"),
                ));
            }
            self.inner.save_cursor(name, next).await
        }
    }

    #[tokio::test]
    async fn the_file_holds_every_leaf_once_and_the_cursor_follows_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let source = Arc::new(CheckingSource {
            inner: MemorySource::new(),
            path: path.clone(),
            saves: AtomicUsize::new(0),
            fail_on_save: None,
            violations: Mutex::new(Vec::new()),
        });
        fill(&source.inner, 123);
        let export = hygie_siem::spawn(&config(&path), source.clone(), &Wakeup::new()).unwrap();
        let mut status = export.watch_status();
        wait_status(&mut status, "123 leaves", |s| s.cursor == Some(123)).await;
        assert_eq!(
            read_lines(&path, &source.inner),
            (0..123).collect::<Vec<_>>()
        );
        assert!(
            source.violations.lock().unwrap().is_empty(),
            "{:?}",
            source.violations.lock().unwrap()
        );
        assert_eq!(source.saves.load(Ordering::SeqCst), 13);
        let status = export.status();
        assert!(status.connected);
        assert_eq!(status.last_delivered_index, Some(122));
        export.shutdown().await;
    }

    #[tokio::test]
    async fn a_restart_with_a_saved_cursor_writes_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let source = Arc::new(MemorySource::new());
        fill(&source, 35);
        let wakeup = Wakeup::new();
        let export = hygie_siem::spawn(&config(&path), source.clone(), &wakeup).unwrap();
        wait_status(&mut export.watch_status(), "35 leaves", |s| {
            s.cursor == Some(35)
        })
        .await;
        export.shutdown().await;

        fill(&source, 40);
        let export = hygie_siem::spawn(&config(&path), source.clone(), &wakeup).unwrap();
        wait_status(&mut export.watch_status(), "75 leaves", |s| {
            s.cursor == Some(75)
        })
        .await;
        export.shutdown().await;
        assert_eq!(read_lines(&path, &source), (0..75).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_cursor_not_saved_repeats_exactly_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let source = Arc::new(CheckingSource {
            inner: MemorySource::new(),
            path: path.clone(),
            saves: AtomicUsize::new(0),
            fail_on_save: Some(3),
            violations: Mutex::new(Vec::new()),
        });
        fill(&source.inner, 50);
        let export = hygie_siem::spawn(&config(&path), source.clone(), &Wakeup::new()).unwrap();
        let mut status = export.watch_status();
        let done = wait_status(&mut status, "50 leaves", |s| s.cursor == Some(50)).await;
        assert!(
            done.last_error
                .as_deref()
                .unwrap()
                .contains("saving the cursor"),
            "{done:?}"
        );
        export.shutdown().await;
        // Batches of 10: the third save failed, so leaves 20..30 were written again.
        let expected: Vec<u64> = (0..30).chain(20..50).collect();
        assert_eq!(read_lines(&path, &source.inner), expected);
        assert_eq!(source.inner.cursor("archive"), Some(50));
    }

    #[tokio::test]
    async fn a_full_file_stops_the_export_until_it_is_renamed_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let source = Arc::new(MemorySource::new());
        fill(&source, 800);
        let config = ExportConfig {
            max_file_bytes: Some(64 * 1024),
            batch_leaves: Some(100),
            ..config(&path)
        };
        let export = hygie_siem::spawn(&config, source.clone(), &Wakeup::new()).unwrap();
        let mut status = export.watch_status();
        let mut rotated = Vec::new();
        loop {
            let now = wait_status(&mut status, "full or done", |s| {
                s.cursor == Some(800)
                    || (s.consecutive_failures > 0
                        && s.last_error
                            .as_deref()
                            .is_some_and(|e| e.contains("max_file_bytes")))
            })
            .await;
            if now.cursor == Some(800) {
                break;
            }
            let stuck_at = now.cursor;
            assert!(std::fs::metadata(&path).unwrap().len() <= 64 * 1024);
            let moved = dir
                .path()
                .join(format!("audit.jsonl.{}", rotated.len() + 1));
            std::fs::rename(&path, &moved).unwrap();
            rotated.push(moved);
            // Wait for the exporter to move on into the new file.
            wait_status(&mut status, "progress after the rename", |s| {
                s.cursor > stuck_at
            })
            .await;
        }
        export.shutdown().await;
        assert!(rotated.len() >= 2, "{rotated:?}");
        let mut indices = Vec::new();
        for file in rotated.iter().chain([&path]) {
            indices.extend(read_lines(file, &source));
        }
        assert_eq!(indices, (0..800).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn an_unwritable_path_is_reported_and_counts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let source = Arc::new(MemorySource::new());
        fill(&source, 3);
        // The path is a directory: opening it for writing fails.
        let export =
            hygie_siem::spawn(&config(dir.path()), source.clone(), &Wakeup::new()).unwrap();
        let mut status = export.watch_status();
        let failed = wait_status(&mut status, "a write failure", |s| {
            s.consecutive_failures >= 2
        })
        .await;
        assert!(
            failed.last_error.as_deref().unwrap().contains("writing"),
            "{failed:?}"
        );
        assert!(!failed.connected);
        assert_eq!(source.cursor("archive"), None);
        export.shutdown().await;
    }

    #[tokio::test]
    async fn a_corrupt_leaf_stops_the_export_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let source = Arc::new(MemorySource::new());
        fill(&source, 5);
        source.append(0, b"{\"truncated".to_vec());
        fill(&source, 5);
        let export = hygie_siem::spawn(&config(&path), source.clone(), &Wakeup::new()).unwrap();
        let mut status = export.watch_status();
        let failed =
            wait_status(&mut status, "the bad leaf", |s| s.consecutive_failures >= 2).await;
        assert!(
            failed.last_error.as_deref().unwrap().contains("leaf 5 "),
            "{failed:?}"
        );
        assert_eq!(failed.cursor, Some(5));
        export.shutdown().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 5);
    }
}
