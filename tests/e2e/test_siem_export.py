"""The audit log's export to SIEMs (`[[audit.export]]`, crate hygie-siem wired into `hygie
serve`), on SQLite and PostgreSQL: a JSON lines file whose events are the very leaves the
signed tree holds (an inclusion proof verifies for each, with the independent rfc9162.py),
RFC 5424 syslog over TCP and over TLS to loopback collectors that go away and come back
(every leaf arrives, at least once), and a bad entry that stops the start."""

from __future__ import annotations

import base64
import datetime
import json
import re
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import requests

import rfc9162
from e2e_support import one_shot, patient, run_cli
from hygie_e2e import free_port
from test_audit_log import _checkpoint, _hashes, _leaf, _psql

WAIT_S = 30  # a debug build on a loaded machine: integration (50 ms) and export (poked) are fast
BACKENDS = ["sqlite", "postgres"]


def _settings(tmp_path: Path, export: str) -> Path:
    settings = tmp_path / "siem.toml"
    settings.write_text(
        "[audit]\nintegrate_every_ms = 50\ncheckpoint_every_seconds = 1\n\n"
        "[[audit.export]]\n" + export
    )
    return settings


def _tree_size(server) -> int:
    """The integrated tree size, read from the stopped server's database."""
    sql = "SELECT value FROM hub_meta WHERE key = 'audit.tree_size'"
    if server.database_url:
        return int(_psql(server.database_url, sql).strip())
    import sqlite3

    with sqlite3.connect(server.data_dir / "hygie.db") as db:
        return int(db.execute(sql).fetchone()[0])


def _wait(what: str, done, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while True:
        value = done()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.1)


# --------------------------------------------------------------------------------------
# JSON lines


def _lines(path: Path) -> list[tuple[int, bytes]]:
    """(index, event bytes) of each complete line, checking each is exactly
    {"index":N,"event":<event>}."""
    if not path.exists():
        return []
    lines = []
    for raw in path.read_bytes().split(b"\n")[:-1]:
        match = re.fullmatch(rb'\{"index":(\d+),"event":(.*)\}', raw, re.DOTALL)
        assert match, raw[:200]
        lines.append((int(match[1]), match[2]))
    return lines


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_jsonl_export_holds_the_leaves_the_tree_proves(backend, start_hub, tmp_path):
    path = tmp_path / "audit.jsonl"
    # No polling to speak of: the leaves go out because the integrator wakes the exporter.
    settings = _settings(tmp_path, f'name = "archive"\nkind = "jsonl"\npath = "{path}"\n'
                                   "poll_interval_ms = 600000\n")
    server = start_hub(backend, args=["--config", str(settings)])
    vkey = requests.get(f"{server.root_url}/audit/key", timeout=10).text.strip()
    for n in range(6):
        assert one_shot("POST", f"{server.fhir_url}/Patient", json=patient(f"siem-{n}")).status_code == 201
    _, size, root = _checkpoint(server, vkey, 6)
    lines = _wait("the leaves in the file", lambda: (got := _lines(path)) and len(got) >= size and got)

    assert [index for index, _ in lines] == list(range(len(lines))), "dense from 0, each once"
    for index, event in lines[:size]:
        assert json.loads(event)["resourceType"] == "AuditEvent"
        assert event == _leaf(server, index), "the stored bytes, unchanged"
        proof = _hashes(requests.get(f"{server.root_url}/audit/proof/inclusion",
                                     params={"index": index, "size": size}, timeout=10))
        rfc9162.verify_inclusion(rfc9162.leaf_hash(event), index, size, proof, root)
    with pytest.raises(rfc9162.VerificationError):
        index, event = lines[0]
        proof = _hashes(requests.get(f"{server.root_url}/audit/proof/inclusion",
                                     params={"index": index, "size": size}, timeout=10))
        rfc9162.verify_inclusion(rfc9162.leaf_hash(event + b" "), index, size, proof, root)

    # A clean stop sends the last leaves; a restart goes on from the cursor, nothing twice.
    assert one_shot("GET", f"{server.fhir_url}/Patient").status_code == 200
    server.stop()
    final = _tree_size(server)
    assert [index for index, _ in _lines(path)] == list(range(final))
    again = start_hub(backend, data_dir=server.data_dir, database_url=server.database_url,
                      args=["--config", str(settings)])
    assert one_shot("GET", f"{again.fhir_url}/Patient").status_code == 200
    _wait("the new leaf in the file", lambda: len(_lines(path)) > final)
    assert [index for index, _ in _lines(path)] == list(range(len(_lines(path))))


# --------------------------------------------------------------------------------------
# Syslog collectors


class Collector:
    """A loopback syslog collector: RFC 6587 octet-counted frames over TCP, or TLS with
    `tls` (an ssl.SSLContext). `stop()` drops the listener and every connection, unread
    bytes included, as a crashed collector would."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None):
        self.port = port
        self.tls = tls
        self.messages: list[bytes] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(16)
        # A timeout, since closing a socket does not wake a thread blocked in accept().
        self._listener.settimeout(0.1)
        self._stopped = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                connection, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            connection.settimeout(None)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            if self.tls is not None:
                connection = self.tls.wrap_socket(connection, server_side=True)
            with self._lock:
                self._connections.append(connection)
            buffer = b""
            while not self._stopped:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while True:
                    space = buffer.find(b" ")
                    if space < 0:
                        break
                    length = int(buffer[:space])  # a bad frame ends the connection
                    if len(buffer) < space + 1 + length:
                        break
                    with self._lock:
                        self.messages.append(buffer[space + 1:space + 1 + length])
                    buffer = buffer[space + 1 + length:]
        except (OSError, ValueError, ssl.SSLError) as err:
            if not self._stopped:
                with self._lock:
                    self.errors.append(repr(err))
        finally:
            connection.close()

    def indices(self) -> set[int]:
        with self._lock:
            return {int(re.search(rb' index="(\d+)"', m)[1]) for m in self.messages}

    def stop(self) -> None:
        self._stopped = True
        self._acceptor.join(timeout=5)
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                connection.close()


def _syslog_export(kind: str, port: int, extra: str = "") -> str:
    return (f'name = "siem"\nkind = "{kind}"\naddress = "127.0.0.1:{port}"\n'
            f"backoff_min_ms = 50\nbackoff_max_ms = 300\nconnect_settle_ms = 50\n{extra}")


def _survive_a_collector_outage(start_hub, backend: str, tmp_path: Path, kind: str,
                                tls: ssl.SSLContext | None, extra: str = "") -> None:
    port = free_port()
    collector = Collector(port, tls)
    settings = _settings(tmp_path, _syslog_export(kind, port, extra))
    server = start_hub(backend, args=["--config", str(settings)])
    vkey = requests.get(f"{server.root_url}/audit/key", timeout=10).text.strip()
    for n in range(5):
        assert one_shot("POST", f"{server.fhir_url}/Patient", json=patient(f"siem-{n}")).status_code == 201
    _, size, _ = _checkpoint(server, vkey, 5)
    _wait("the first leaves at the collector", lambda: set(range(size)) <= collector.indices())
    message = next(m for m in collector.messages if b' index="0"' in m)
    assert re.match(rb"<\d+>1 \S+ \S+ hygie ", message), message[:100]
    assert message.split(b"\xef\xbb\xbf", 1)[1] == _leaf(server, 0), "the event after the BOM"

    # The collector goes away; accesses go on and are integrated meanwhile.
    collector.stop()
    for n in range(7):
        assert one_shot("GET", f"{server.fhir_url}/Patient").status_code == 200
    _, grown, _ = _checkpoint(server, vkey, size + 7)
    time.sleep(1)  # the exporter finds no collector, backs off, retries

    back = Collector(port, tls)
    _wait("every leaf after the collector came back",
          lambda: set(range(grown)) <= collector.indices() | back.indices())
    assert not back.errors, back.errors
    back.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_leaf_reaches_a_syslog_tcp_collector_that_went_away(backend, start_hub, tmp_path):
    _survive_a_collector_outage(start_hub, backend, tmp_path, "syslog-tcp", None)


def _certificates(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA and a certificate for 127.0.0.1 it signs: the CA file the exporter
    trusts, and the collector's server context."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hygie test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collector")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = tmp_path / "collector.pem"
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = tmp_path / "collector.key"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key_file)
    return ca_file, context


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_leaf_reaches_a_syslog_tls_collector_that_went_away(backend, start_hub, tmp_path):
    ca_file, context = _certificates(tmp_path)
    _survive_a_collector_outage(start_hub, backend, tmp_path, "syslog-tls", context,
                                f'ca_file = "{ca_file}"\n')


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tls_collector_of_another_ca_gets_nothing(backend, start_hub, tmp_path):
    """The exporter refuses a collector whose certificate its CA file did not sign: no
    leaf leaves in clear or to an impostor, and the failure is in the logs."""
    (tmp_path / "impostor").mkdir()
    _, impostor = _certificates(tmp_path / "impostor")
    ca_file, _ = _certificates(tmp_path)
    port = free_port()
    collector = Collector(port, impostor)
    settings = _settings(tmp_path, _syslog_export("syslog-tls", port, f'ca_file = "{ca_file}"\n'))
    server = start_hub(backend, args=["--config", str(settings)])
    for n in range(3):
        assert one_shot("GET", f"{server.fhir_url}/Patient").status_code == 200
    _wait("the refusal in the logs", lambda: "audit export failed" in server.log_text())
    assert collector.messages == []
    # A SIEM that refuses does not hold the shutdown for the drain time (10 s).
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 8, "the shutdown waited for an export that fails"
    assert "did not catch up before shutdown" in server.log_text()
    assert collector.messages == []
    collector.stop()


# --------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bad_export_entry_stops_the_start_naming_it(backend, hygie_bin, tmp_path, request):
    if backend == "postgres":
        store = ["--database", request.getfixturevalue("pg_databases").create()]
    else:
        store = ["--data-dir", str(tmp_path / "data")]
    for entry, why in (
        ('name = "siem"\nkind = "syslog-udp"\naddress = "127.0.0.1:514"\n', "syslog-udp"),
        ('name = "siem"\nkind = "syslog-tcp"\n', "address is required"),
        ('name = "siem"\nkind = "syslog-tls"\naddress = "127.0.0.1:6514"\nca_file = "/nonexistent/ca.pem"\n',
         "/nonexistent/ca.pem"),
        ('name = "siem"\nkind = "jsonl"\npath = "/tmp/x.jsonl"\nfacility = 3\n', "facility"),
    ):
        settings = _settings(tmp_path, entry)
        done = run_cli(hygie_bin, ["serve", *store, "--no-auth", "--listen", "127.0.0.1:0",
                                   "--config", str(settings)], cwd=tmp_path, timeout_s=60)
        output = done.stdout + done.stderr
        assert done.returncode != 0, output
        assert 'audit.export "siem"' in output and why in output, output
