//! The settings: TOML as the binary will read it, and every refusal naming its cause.

use std::sync::Arc;

use hygie_siem::{ConfigProblem, ExportConfig, MemorySource, Wakeup, validate_all};

#[derive(serde::Deserialize)]
struct Settings {
    audit: Audit,
}

#[derive(serde::Deserialize)]
struct Audit {
    export: Vec<ExportConfig>,
}

fn parse(toml: &str) -> ExportConfig {
    toml::from_str(toml).unwrap()
}

fn problem(toml: &str) -> ConfigProblem {
    let config = parse(toml);
    let error = config.validate().unwrap_err();
    assert_eq!(error.sink, config.name);
    error.problem
}

const TLS: &str = r#"
name = "siem"
kind = "syslog-tls"
address = "siem.example:6514"
"#;

#[test]
fn the_documented_settings_parse_and_validate() {
    let settings: Settings = toml::from_str(
        r#"
        [[audit.export]]
        name = "siem"
        kind = "syslog-tls"
        address = "siem.example:6514"
        server_name = "siem.example"
        ca_file = "/etc/hygie/siem-ca.pem"
        client_cert_file = "/etc/hygie/siem-client.pem"
        client_key_file = "/etc/hygie/siem-client.key"
        facility = 13
        enterprise_id = 32473
        batch_leaves = 500

        [[audit.export]]
        name = "archive"
        kind = "jsonl"
        path = "/var/log/hygie/audit.jsonl"
        max_file_bytes = 1073741824

        [[audit.export]]
        name = "lab-siem"
        kind = "syslog-tcp"
        address = "[::1]:601"
        hostname = "hygie-1"
        app_name = "hygie"
        max_message_bytes = 8192
        poll_interval_ms = 500
        backoff_min_ms = 50
        backoff_max_ms = 60000
        backoff_jitter = false
        connect_timeout_ms = 3000
        connect_settle_ms = 0
        send_timeout_ms = 10000
        resend_leaves_max = 0
        "#,
    )
    .unwrap();
    assert_eq!(settings.audit.export.len(), 3);
    validate_all(&settings.audit.export).unwrap();
}

#[test]
fn unknown_fields_are_refused_by_the_parser() {
    let error =
        toml::from_str::<ExportConfig>("name = \"a\"\nkind = \"jsonl\"\npaht = \"x\"").unwrap_err();
    assert!(
        error.to_string().contains("unknown field `paht`"),
        "{error}"
    );
}

#[test]
fn each_wrong_setting_gets_its_own_error() {
    assert!(
        matches!(problem("name = \"a\"\nkind = \"syslog-udp\""), ConfigProblem::UnknownKind(k) if k == "syslog-udp")
    );
    assert!(matches!(
        problem("name = \"\"\nkind = \"jsonl\""),
        ConfigProblem::BadName
    ));
    assert!(matches!(
        problem("name = \"a b\"\nkind = \"jsonl\""),
        ConfigProblem::BadName
    ));
    assert!(matches!(
        problem("name = \"a\"\nkind = \"syslog-tcp\""),
        ConfigProblem::Missing {
            field: "address",
            kind: "syslog-tcp"
        }
    ));
    assert!(matches!(
        problem("name = \"a\"\nkind = \"jsonl\""),
        ConfigProblem::Missing {
            field: "path",
            kind: "jsonl"
        }
    ));
    assert!(matches!(
        problem(&format!("{TLS}facility = 24")),
        ConfigProblem::OutOfRange {
            field: "facility",
            value: 24,
            min: 0,
            max: 23
        }
    ));
    assert!(matches!(
        problem(&format!("{TLS}batch_leaves = 0")),
        ConfigProblem::OutOfRange {
            field: "batch_leaves",
            value: 0,
            ..
        }
    ));
    assert!(matches!(
        problem(&format!("{TLS}batch_leaves = 10001")),
        ConfigProblem::OutOfRange {
            field: "batch_leaves",
            ..
        }
    ));
    assert!(matches!(
        problem(&format!("{TLS}poll_interval_ms = 0")),
        ConfigProblem::OutOfRange {
            field: "poll_interval_ms",
            ..
        }
    ));
    assert!(matches!(
        problem(&format!("{TLS}max_message_bytes = 1024")),
        ConfigProblem::OutOfRange {
            field: "max_message_bytes",
            min: 2048,
            ..
        }
    ));
    assert!(matches!(
        problem(&format!(
            "{TLS}backoff_min_ms = 5000\nbackoff_max_ms = 1000"
        )),
        ConfigProblem::BackoffOrder {
            min_ms: 5000,
            max_ms: 1000
        }
    ));
    assert!(matches!(
        problem(&format!("{TLS}client_cert_file = \"c.pem\"")),
        ConfigProblem::ClientCertAndKey
    ));
    assert!(matches!(
        problem(&format!("{TLS}server_name = \"not a name\"")),
        ConfigProblem::BadServerName(_)
    ));
}

#[test]
fn settings_of_another_kind_are_refused() {
    assert!(matches!(
        problem("name = \"a\"\nkind = \"syslog-tcp\"\naddress = \"h:1\"\npath = \"/x\""),
        ConfigProblem::NotForKind {
            field: "path",
            kind: "syslog-tcp"
        }
    ));
    assert!(matches!(
        problem("name = \"a\"\nkind = \"syslog-tcp\"\naddress = \"h:1\"\nca_file = \"/x\""),
        ConfigProblem::NotForKind {
            field: "ca_file",
            kind: "syslog-tcp"
        }
    ));
    assert!(matches!(
        problem("name = \"a\"\nkind = \"jsonl\"\npath = \"/x\"\nfacility = 1"),
        ConfigProblem::NotForKind {
            field: "facility",
            kind: "jsonl"
        }
    ));
}

#[test]
fn addresses_need_a_host_and_a_port() {
    for address in [
        "siem.example",
        "siem.example:",
        ":6514",
        "siem.example:0",
        "siem.example:70000",
        "::1:6514",
        "[::1:6514",
        "[::1]",
    ] {
        let toml = format!("name = \"a\"\nkind = \"syslog-tcp\"\naddress = \"{address}\"");
        assert!(
            matches!(problem(&toml), ConfigProblem::BadAddress { .. }),
            "{address}"
        );
    }
    for address in ["siem.example:6514", "127.0.0.1:601", "[::1]:6514"] {
        let toml = format!("name = \"a\"\nkind = \"syslog-tls\"\naddress = \"{address}\"");
        parse(&toml).validate().unwrap();
    }
}

#[test]
fn header_fields_are_held_to_rfc_5424() {
    for (field, value) in [
        ("hostname", "has space".to_owned()),
        ("hostname", "".to_owned()),
        ("hostname", "h".repeat(256)),
        ("hostname", "hôte".to_owned()),
        ("app_name", "a".repeat(49)),
    ] {
        let toml = format!("{TLS}{field} = \"{value}\"");
        match problem(&toml) {
            ConfigProblem::BadHeaderField { field: named, .. } => assert_eq!(named, field),
            other => panic!("{field} = {value:?}: {other}"),
        }
    }
    parse(&format!("{TLS}hostname = \"{}\"", "h".repeat(255)))
        .validate()
        .unwrap();
    parse(&format!("{TLS}hostname = \"-\"")).validate().unwrap();
}

#[test]
fn names_and_files_are_not_shared() {
    let a = parse("name = \"a\"\nkind = \"jsonl\"\npath = \"/x\"");
    let b = parse("name = \"a\"\nkind = \"syslog-tcp\"\naddress = \"h:1\"");
    let c = parse("name = \"c\"\nkind = \"jsonl\"\npath = \"/x\"");
    let error = validate_all(&[a.clone(), b]).unwrap_err();
    assert!(matches!(error.problem, ConfigProblem::DuplicateName));
    let error = validate_all(&[a, c]).unwrap_err();
    assert!(matches!(error.problem, ConfigProblem::DuplicatePath(_)));
    assert!(
        error.to_string().starts_with("audit.export \"c\": "),
        "{error}"
    );
}

#[tokio::test]
async fn certificate_files_are_read_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no PEM here\n").unwrap();
    let source = Arc::new(MemorySource::new());
    for (file, expected) in [(&missing, "reading"), (&empty, "holds no certificate")] {
        let config = parse(&format!("{TLS}ca_file = {file:?}"));
        config.validate().unwrap();
        let error = hygie_siem::spawn(&config, source.clone(), &Wakeup::new()).unwrap_err();
        assert!(error.to_string().contains(expected), "{error}");
    }
}
