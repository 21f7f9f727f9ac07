"""The independent verifier (rfc9162.py) on published vectors, and on what Hygie's Rust code
produces (crates/hygie-audit/tests/data/interop.json): two implementations, one answer.

Needs no server; only pytest and `cryptography`:

    python3 -m venv target/py && target/py/bin/pip install -q pytest cryptography
    cd tests/e2e && ../../target/py/bin/pytest -q --noconftest test_rfc9162_vectors.py

(`--noconftest` because conftest.py imports the server fixtures' dependencies; with the
requirements.txt venv of scripts/test it is not needed.)
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

import rfc9162
from rfc9162 import (
    EMPTY_ROOT,
    VerificationError,
    leaf_hash,
    parse_checkpoint,
    parse_note,
    parse_vkey,
    verify_consistency,
    verify_inclusion,
    verify_note,
)

FIXTURE = Path(__file__).resolve().parents[2] / "crates/hygie-audit/tests/data/interop.json"

# google/certificate-transparency cpp/merkletree/merkle_tree_test.cc (also in
# transparency-dev/merkle proof/verify_test.go): kInputs, kSHA256Roots, kSHA256Paths,
# kSHA256Proofs. Leaf numbers there are 1-based; indices here are 0-based.
INPUTS = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
PATHS = [
    (0, 1, []),
    (0, 8, [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]),
    (5, 8, [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ]),
]
PROOFS = [
    (1, 1, []),
    (1, 8, [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]),
    (6, 8, [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]),
    (2, 5, [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ]),
    # transparency-dev/merkle's extra (6, 7) proof.
    (6, 7, [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]),
]

# golang.org/x/mod/sumdb/note: the package documentation's example.
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
ENOCH_SIG = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"

# c2sp.org/tlog-checkpoint and tlog-cosignature: the specification's example.
C2SP_CHECKPOINT = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
    "— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    "— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def leaves() -> list[bytes]:
    return [leaf_hash(h(i)) for i in INPUTS]


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


def test_empty_root_is_sha256_of_nothing():
    assert EMPTY_ROOT == h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert leaf_hash(b"") == h(ROOTS[0])


@pytest.mark.parametrize("index,size,path", PATHS)
def test_ct_inclusion_vectors(index, size, path):
    proof = [h(p) for p in path]
    root = h(ROOTS[size - 1])
    leaf = leaves()[index]
    verify_inclusion(leaf, index, size, proof, root)
    wrong = [
        (leaf, index - 1, size, proof, root),
        (leaf, index + 1, size, proof, root),
        (leaf, index ^ 2, size, proof, root),
        (leaf, index, size * 2, proof, root),
        (leaf, index, size // 2, proof, root),
        (leaf_hash(b"WrongLeaf"), index, size, proof, root),
        (leaf, index, size, proof, EMPTY_ROOT),
        (leaf, index, size, proof + [bytes(32)], root),
        (leaf, index, size, [root] + proof, root),
        (leaf, index, size, proof[:-1], root),
    ] + [(leaf, index, size, proof[:i] + [flip(p, 3)] + proof[i + 1:], root) for i, p in enumerate(proof)]
    for args in wrong:
        if args == (leaf, index, size, proof, root):
            continue  # removing an element of an empty proof changes nothing
        with pytest.raises((VerificationError, ValueError)):
            verify_inclusion(*args)


@pytest.mark.parametrize("size1,size2,path", PROOFS)
def test_ct_consistency_vectors(size1, size2, path):
    proof = [h(p) for p in path]
    root1, root2 = h(ROOTS[size1 - 1]), h(ROOTS[size2 - 1])
    verify_consistency(size1, size2, proof, root1, root2)
    if not proof:
        return
    wrong = [
        (size1 - 1, size2, proof, root1, root2),
        (size1 + 1, size2, proof, root1, root2),
        (size1 ^ 2, size2, proof, root1, root2),
        (size1, size2 * 2, proof, root1, root2),
        (size1, size2 // 2, proof, root1, root2),
        (size1, size2, proof, leaf_hash(b"WrongRoot"), root2),
        (size1, size2, proof, root1, leaf_hash(b"WrongRoot")),
        (size1, size2, proof, root2, root1),
        (size1, size2, [], root1, root2),
        (size1, size2, proof + [root2], root1, root2),
        (size1, size2, [proof[0]] + proof, root1, root2),
        (size1, size2, proof[:-1], root1, root2),
    ] + [(size1, size2, proof[:i] + [flip(p, 4)] + proof[i + 1:], root1, root2) for i, p in enumerate(proof)]
    for args in wrong:
        with pytest.raises((VerificationError, ValueError)):
            verify_consistency(*args)


def test_trivial_and_invalid_consistency_queries():
    r = leaf_hash(b"r")
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(0, 5, [], EMPTY_ROOT, r)
    verify_consistency(3, 3, [], r, r)
    for args in [
        (1, 0, [], r, r),  # time travel
        (0, 5, [], r, r),  # not the empty tree
        (3, 3, [], r, EMPTY_ROOT),  # two roots for one size
        (0, 1, [EMPTY_ROOT], EMPTY_ROOT, r),  # a proof where none is needed
        (1, 2, [], r, r),  # an empty proof
        (3, 9, [r] * 65, r, r),  # over the length limit
    ]:
        with pytest.raises(VerificationError):
            verify_consistency(*args)
    with pytest.raises(ValueError):
        verify_inclusion(r, 0, 2**63, [], r)
    with pytest.raises(VerificationError):
        verify_inclusion(r, 0, 0, [], r)


def test_sumdb_note_and_keys():
    note = GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert verify_note(note, PETER_VKEY).body == GO_TEXT
    assert verify_note(note, ENOCH_VKEY).timestamp is None
    assert parse_vkey(PETER_VKEY).key_id == 0xC74F20A3
    # A known key's bad signature is refused; an unknown key has nothing to verify.
    bad = GO_TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(VerificationError):
        verify_note(bad, PETER_VKEY)
    with pytest.raises(VerificationError):
        verify_note(GO_TEXT + "\n" + ENOCH_SIG, PETER_VKEY)
    # Every substring of the key, and every byte bumped, is refused.
    for i in range(len(PETER_VKEY)):
        bumped = PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1:]
        with pytest.raises(ValueError):
            parse_vkey(bumped)
        with pytest.raises(ValueError):
            parse_vkey(PETER_VKEY[:i])
    # Every bit of the signed note matters.
    signed = (GO_TEXT + "\n" + PETER_SIG).encode()
    for bit in range(len(signed) * 8):
        with pytest.raises((VerificationError, ValueError)):
            verify_note(flip(signed, bit), PETER_VKEY)


def test_c2sp_checkpoint_example():
    body, signatures = parse_note(C2SP_CHECKPOINT)
    origin, size, root, extensions = parse_checkpoint(body)
    assert (origin, size, extensions) == ("example.com/behind-the-sofa", 20852163, [])
    assert base64.b64encode(root).decode() == "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
    witness = signatures[1]
    assert witness.key_id == 0x8D66CF3F
    # key ID || timestamp || signature; the specification's message shows `time 1679315147`.
    assert int.from_bytes(witness.signature[:8], "big") == 1679315147
    for bad in ["o\n01\nAAAA\n", "o\n1\n", "\n1\n" + base64.b64encode(bytes(32)).decode() + "\n",
                "o\n1\n" + base64.b64encode(bytes(31)).decode() + "\n"]:
        with pytest.raises(ValueError):
            parse_checkpoint(bad)


def fixture() -> dict:
    return json.loads(FIXTURE.read_text())


def test_rust_proofs_verify_here():
    data = fixture()
    hashes = [leaf_hash(bytes.fromhex(leaf)) for leaf in data["leaves"]]
    roots = [bytes.fromhex(r) for r in data["roots"]]
    assert roots[0] == EMPTY_ROOT
    assert len(data["inclusion"]) == sum(range(1, len(hashes) + 1))
    for case in data["inclusion"]:
        index, size = case["index"], case["size"]
        proof = [bytes.fromhex(p) for p in case["proof"]]
        verify_inclusion(hashes[index], index, size, proof, roots[size])
        if proof:
            with pytest.raises(VerificationError):
                verify_inclusion(hashes[index], index, size, [flip(proof[0], 7)] + proof[1:], roots[size])
    for case in data["consistency"]:
        size1, size2 = case["size1"], case["size2"]
        proof = [bytes.fromhex(p) for p in case["proof"]]
        verify_consistency(size1, size2, proof, roots[size1], roots[size2])
        if proof:
            with pytest.raises(VerificationError):
                verify_consistency(size1, size2, proof, roots[size1], flip(roots[size2], 9))


def test_rust_checkpoint_and_cosignature_verify_here():
    data = fixture()
    note = data["checkpoint"]
    log = verify_note(note, data["log_vkey"])
    witness = verify_note(note, data["witness_vkey"])
    assert log.timestamp is None
    assert witness.timestamp == data["cosigned_at_s"]
    origin, size, root, extensions = parse_checkpoint(log.body)
    assert origin == parse_vkey(data["log_vkey"]).name
    assert size == len(data["leaves"])
    assert root.hex() == data["roots"][size]
    assert extensions == []
    assert parse_vkey(data["witness_vkey"]).signature_type == rfc9162.SIGNATURE_TYPE_COSIGNATURE_V1
    # The log's key is no cosigner's and the reverse: swapping the types finds no signature.
    for vkey in (data["log_vkey"], data["witness_vkey"]):
        key = parse_vkey(vkey)
        other_type = 0x05 - key.signature_type  # 0x01 <-> 0x04
        swapped = "{}+{:08x}+{}".format(
            key.name,
            rfc9162.key_id(key.name, other_type, key.public_key),
            base64.b64encode(bytes([other_type]) + key.public_key).decode(),
        )
        with pytest.raises(VerificationError):
            verify_note(note, swapped)
    # Any flipped bit of the body fails both.
    body_bits = len(log.body.encode()) * 8
    for bit in range(0, body_bits, 7):
        tampered = flip(note.encode(), bit)
        for vkey in (data["log_vkey"], data["witness_vkey"]):
            with pytest.raises((VerificationError, ValueError)):
                verify_note(tampered, vkey)
