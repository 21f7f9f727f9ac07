"""An independent verifier of Hygie's audit log, written from the specifications alone.

- RFC 9162 (Certificate Transparency v2) §2.1: leaf and node hashes, inclusion proofs
  (§2.1.3.2) and consistency proofs (§2.1.4.2), in the RFC's own steps;
- c2sp.org/signed-note, c2sp.org/tlog-checkpoint, c2sp.org/tlog-cosignature: signed notes,
  checkpoints, verifier keys (`<name>+<hex key ID>+<base64(type ‖ key)>`), Ed25519 log
  signatures (type 0x01) and witness cosignatures (type 0x04, `cosignature/v1`).

Hashing needs only the standard library; Ed25519 needs the `cryptography` package, imported
when a signature is checked. Every check raises `VerificationError` (or `ValueError` for
malformed input) and returns nothing useful to ignore:

    verify_inclusion(leaf_hash(leaf), index, size, proof, root)
    verify_consistency(size1, size2, proof, root1, root2)
    origin, size, root, extensions = parse_checkpoint(verify_note(note, vkey).body)

Sizes follow the Rust side (crates/hygie-audit): trees of at most 2^63 - 1 leaves, proofs
of at most 64 hashes, notes of at most 1 MiB with at most 100 signatures.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import NamedTuple

HASH_BYTES = 32
MAX_TREE_SIZE = 2**63 - 1
MAX_PROOF_HASHES = 64
MAX_NOTE_BYTES = 1 << 20
MAX_SIGNATURES = 100
MAX_LINE_BYTES = 8 * 1024
MAX_NAME_BYTES = 255
MAX_EXTENSION_LINES = 100
MAX_VKEY_BYTES = 512
MAX_COSIGNATURE_TIMESTAMP_S = 2**63 - 1

SIGNATURE_TYPE_ED25519 = 0x01
SIGNATURE_TYPE_COSIGNATURE_V1 = 0x04

EMPTY_ROOT = hashlib.sha256(b"").digest()

_EM_DASH_SPACE = "\u2014 "


class VerificationError(Exception):
    """A proof, root or signature that does not check out."""


# --- RFC 9162 §2.1 -----------------------------------------------------------------------


def leaf_hash(leaf: bytes) -> bytes:
    """MTH of a one-leaf tree: SHA-256(0x00 || leaf)."""
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _check_hashes(*hashes: bytes) -> None:
    for h in hashes:
        if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_BYTES:
            raise ValueError("a hash is 32 bytes")


def _check_size(size: int) -> None:
    if not 0 <= size <= MAX_TREE_SIZE:
        raise ValueError(f"tree size {size} is outside [0, 2^63 - 1]")


def _check_proof(proof: list[bytes]) -> None:
    if len(proof) > MAX_PROOF_HASHES:
        raise VerificationError(f"a proof of {len(proof)} hashes is over {MAX_PROOF_HASHES}")
    _check_hashes(*proof)


def root_from_inclusion_proof(leaf_hash: bytes, index: int, size: int, proof: list[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2, steps 1-4: the root the proof gives."""
    _check_size(size)
    _check_hashes(leaf_hash)
    _check_proof(proof)
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} is not in a tree of {size} leaves")
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise VerificationError("the proof is longer than the path")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("the proof is shorter than the path")
    return r


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2: `leaf_hash` is leaf `index` of the tree of `size` leaves, `root`."""
    _check_hashes(root)
    if root_from_inclusion_proof(leaf_hash, index, size, proof) != root:
        raise VerificationError("the proof leads to another root")


def verify_consistency(size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes) -> None:
    """RFC 9162 §2.1.4.2: the tree (size2, root2) extends the tree (size1, root1).

    As in c2sp.org/tlog-witness, size1 = 0 and size1 = size2 need no proof; then the first
    root must be the empty tree's, or the two roots equal.
    """
    _check_size(size1)
    _check_size(size2)
    _check_hashes(root1, root2)
    _check_proof(proof)
    if size1 > size2:
        raise VerificationError(f"size {size1} is after size {size2}")
    if size1 == 0 or size1 == size2:
        if proof:
            raise VerificationError("a proof where none is needed")
        if size1 == 0 and root1 != EMPTY_ROOT:
            raise VerificationError("the root of size 0 is not the empty tree's")
        if size1 == size2 and root1 != root2:
            raise VerificationError("two roots for one size")
        return
    # 1. An empty proof fails. 2. A power-of-two first size: its root starts the path.
    if not proof:
        raise VerificationError("an empty consistency proof")
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    # 3-4.
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5.
    fr = sr = path[0]
    # 6.
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("the proof is longer than the path")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # 7.
    if sn != 0:
        raise VerificationError("the proof is shorter than the path")
    if fr != root1:
        raise VerificationError("the proof leads to another first root")
    if sr != root2:
        raise VerificationError("the proof leads to another second root")


# --- c2sp.org/tlog-checkpoint ------------------------------------------------------------

_SIZE = re.compile(r"0|[1-9][0-9]*")


def _b64decode(text: str) -> bytes:
    """Standard base64, canonical only (what Go's and Rust's encoders write)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as err:
        raise ValueError(f"not standard base64: {text[:40]!r}") from err
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError(f"not canonical base64: {text[:40]!r}")
    return raw


def _check_line(line: str, number: int) -> None:
    if len(line.encode()) > MAX_LINE_BYTES:
        raise ValueError(f"line {number} is over {MAX_LINE_BYTES} bytes")
    if any(ord(c) < 0x20 for c in line):
        raise ValueError(f"line {number} has a control character")


def parse_checkpoint(text: str) -> tuple[str, int, bytes, list[str]]:
    """A checkpoint's note text → (origin, tree size, root hash, extension lines)."""
    if not text.endswith("\n"):
        raise ValueError("a checkpoint ends with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise ValueError("a checkpoint has an origin, a tree size and a root hash")
    for number, line in enumerate(lines, 1):
        _check_line(line, number)
    origin, size_text, root_text, extensions = lines[0], lines[1], lines[2], lines[3:]
    if not origin:
        raise ValueError("an empty origin")
    if not _SIZE.fullmatch(size_text):
        raise ValueError("the tree size is not a decimal without leading zeros")
    size = int(size_text)
    _check_size(size)
    root = _b64decode(root_text)
    if len(root) != HASH_BYTES:
        raise ValueError("the root hash is not 32 bytes")
    if len(extensions) > MAX_EXTENSION_LINES:
        raise ValueError("too many extension lines")
    if any(not line for line in extensions):
        raise ValueError("an empty extension line")
    return origin, size, root, extensions


# --- c2sp.org/signed-note ----------------------------------------------------------------


def _check_name(name: str) -> None:
    if not name or len(name.encode()) > MAX_NAME_BYTES:
        raise ValueError("a key name is 1 to 255 bytes")
    if any(c.isspace() or c == "+" or ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise ValueError(f"a key name has no space, plus or control character: {name!r}")


def key_id(name: str, signature_type: int, public_key: bytes) -> int:
    """SHA-256(name || 0x0A || type || public key)[:4], big-endian."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([signature_type]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


class VerifierKey(NamedTuple):
    name: str
    key_id: int
    signature_type: int
    public_key: bytes


def parse_vkey(vkey: str) -> VerifierKey:
    """`<name>+<8 hex digits>+<base64(type || public key)>`, its key ID checked."""
    if len(vkey.encode()) > MAX_VKEY_BYTES:
        raise ValueError("a verifier key over 512 bytes")
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise ValueError("a verifier key is <name>+<hex key ID>+<base64 key>")
    name, id_hex, key_b64 = parts
    _check_name(name)
    if not re.fullmatch(r"[0-9a-fA-F]{8}", id_hex):
        raise ValueError("the key ID is not 8 hex digits")
    key = _b64decode(key_b64)
    if not key:
        raise ValueError("an empty key")
    signature_type, public_key = key[0], key[1:]
    if signature_type not in (SIGNATURE_TYPE_ED25519, SIGNATURE_TYPE_COSIGNATURE_V1):
        raise ValueError(f"signature type {signature_type:#04x} is not supported")
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    computed = key_id(name, signature_type, public_key)
    if computed != int(id_hex, 16):
        raise ValueError(f"key ID {id_hex} does not match the key ({computed:08x})")
    return VerifierKey(name, computed, signature_type, public_key)


class NoteSignature(NamedTuple):
    name: str
    key_id: int
    signature: bytes  # after the key ID


def parse_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """A signed note → (text, signature lines). Nothing is verified here."""
    raw = note.encode() if isinstance(note, str) else bytes(note)
    if len(raw) > MAX_NOTE_BYTES:
        raise ValueError("a note over 1 MiB")
    text = raw.decode("utf-8")  # raises on invalid UTF-8
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise ValueError("a control character other than newline")
    for number, line in enumerate(text.split("\n"), 1):
        if len(line.encode()) > MAX_LINE_BYTES:
            raise ValueError(f"line {number} is over {MAX_LINE_BYTES} bytes")
    split = text.rfind("\n\n")
    if split < 0:
        raise ValueError("no blank line before the signatures")
    body, block = text[: split + 1], text[split + 2 :]
    if not block or not block.endswith("\n"):
        raise ValueError("no signature lines, or no final newline")
    signatures = []
    for line in block[:-1].split("\n"):
        if len(signatures) == MAX_SIGNATURES:
            raise ValueError("too many signatures")
        if not line.startswith(_EM_DASH_SPACE):
            raise ValueError(f"not a signature line: {line[:40]!r}")
        name, sep, value = line[len(_EM_DASH_SPACE) :].partition(" ")
        if not sep:
            raise ValueError("no space between a key name and its signature")
        _check_name(name)
        value = _b64decode(value)
        if len(value) < 5:
            raise ValueError("a signature shorter than a key ID and one byte")
        signatures.append(NoteSignature(name, int.from_bytes(value[:4], "big"), value[4:]))
    return body, signatures


class VerifiedNote(NamedTuple):
    body: str
    timestamp: int | None  # a cosignature's, Unix seconds


def _ed25519_verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError as err:  # pragma: no cover - the requirements install it
        raise RuntimeError("checking Ed25519 signatures needs the `cryptography` package") from err
    if len(signature) != 64:
        raise VerificationError("an Ed25519 signature is 64 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature as err:
        raise VerificationError("the signature does not verify") from err


def verify_note(note: str | bytes, vkey: str) -> VerifiedNote:
    """Checks the note's signature by the key `vkey` (a log key, type 0x01, or a witness
    cosignature key, type 0x04). Other signatures are ignored, as c2sp.org/signed-note
    says; the key's must be there, and every one of its lines must verify."""
    key = parse_vkey(vkey)
    body, signatures = parse_note(note)
    mine = [s for s in signatures if (s.name, s.key_id) == (key.name, key.key_id)]
    if not mine:
        raise VerificationError(f"no signature by {key.name}+{key.key_id:08x}")
    timestamp = None
    for signature in mine:
        if key.signature_type == SIGNATURE_TYPE_ED25519:
            _ed25519_verify(key.public_key, signature.signature, body.encode())
        else:
            if len(signature.signature) != 8 + 64:
                raise VerificationError("a cosignature is an 8-byte timestamp and 64 bytes")
            timestamp = int.from_bytes(signature.signature[:8], "big")
            if timestamp > MAX_COSIGNATURE_TIMESTAMP_S:
                raise VerificationError("a cosignature timestamp past 2^63 - 1")
            message = f"cosignature/v1\ntime {timestamp}\n{body}".encode()
            _ed25519_verify(key.public_key, signature.signature[8:], message)
    return VerifiedNote(body, timestamp)
