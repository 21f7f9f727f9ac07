"""Robustness: a few thousand mutated requests (fixed seed) against a server holding 20
resources. Every answer must be a well-formed FHIR JSON OperationOutcome or a valid resource,
with a status below 500, in bounded time; the process must survive; and the 20 resources must
read back byte-identical afterwards (same versionId, same content).

Reproduce one case: the failure message lists the seed, the request index and the request.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import requests

from hygie_e2e import FHIR_JSON, assert_valid_r4
from e2e_support import MRN_SYSTEM, check_resource

SEED = 20240917
REQUESTS = 2500  # per backend
REQUEST_TIMEOUT_S = 20  # a request that takes longer is a hang
SLOW_REQUEST_S = 5  # reported (not failed) when exceeded
HUGE_STRING_CHARS = (64 * 1024, 1024 * 1024, 1024 * 1024 + 1)  # around the 1 MiB string limit
FAILURES_SHOWN = 15

TYPES = ["Patient", "Observation", "Encounter", "Practitioner", "Organization", "Condition", "Bundle"]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "PROPFIND"]
CONTENT_TYPES = [FHIR_JSON] * 12 + [
    "application/json",
    "application/fhir+json; charset=utf-8",
    "application/json-patch+json",
    "application/fhir+xml",
    "text/plain",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
    "",
    "application/fhir+json; charset=latin-1; q=\"",
]
ODD_IDS = [
    "x" * 65, "..", "a/b", "%00", "%2e%2e", "é", "-", "a" * 64, "ID with space", "%ff%fe",
    "_history", "$everything", "1e400", "0", "-1", "%", "a%2Fb", "\u202e",
]
ODD_QUERY = [
    "_count=0", "_count=-5", "_count=99999999999999999999", "_count=1.5", "_count=",
    "_since=2024-13-01", "_since=", "_since=9999-12-31T23:59:59Z", "_page=AAAA", "_page=%%%",
    "identifier=%7C", "identifier=", "identifier=a%7Cb%7Cc", "_id=,,,", "_format=xml",
    "_format=json", "_pretty=true", "name=%00", "_sort=-_lastUpdated", "_include=*",
    "_count=2&_count=3", "&&&", "=x", "%zz=1",
]


def _patient(index: int) -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": MRN_SYSTEM, "value": f"mut-{index:04d}"}],
        "active": index % 2 == 0,
        "name": [{"family": f"Fam{index}", "given": ["Ann", f"G{index}"]}],
        "telecom": [{"system": "phone", "value": f"+33 1 23 45 {index:02d} 00"}],
        "gender": ["female", "male", "other", "unknown"][index % 4],
        "birthDate": f"19{50 + index % 50:02d}-0{1 + index % 9}-1{index % 10}",
        "address": [{"line": [f"{index} rue de la Paix"], "city": "Lyon", "postalCode": "69001"}],
    }


def _observation(index: int, subject: str) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                   "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": subject},
        "effectiveDateTime": f"2024-05-{1 + index:02d}T10:00:00+02:00",
        "valueQuantity": {"value": 60 + index, "unit": "/min", "system": "http://unitsofmeasure.org",
                          "code": "/min"},
        "note": [{"text": f"note {index} with unicode: é ü 漢字"}],
    }


# The bodies the mutations start from: deterministic (no server-assigned ids in them).
TEMPLATES = [_patient(i) for i in range(6)] + [_observation(i, f"Patient/p-{i:04d}") for i in range(4)]


@dataclass
class Case:
    method: str
    path: str  # after the FHIR base, with the query
    headers: dict = field(default_factory=dict)
    body: bytes | None = None
    note: str = ""

    def describe(self) -> str:
        body = "" if self.body is None else self.body[:300].decode("utf-8", "replace")
        size = 0 if self.body is None else len(self.body)
        return f"{self.method} /fhir/{self.path} headers={self.headers} body[{size}]={body!r} ({self.note})"


# ---------------------------------------------------------------------------------------
# Body mutations


def _walk(value: Any, path=()):
    yield path, value
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _walk(child, path + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _walk(child, path + (index,))


def _set(doc: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = new
    return doc


def _delete(doc: Any, path: tuple) -> Any:
    if not path:
        return doc
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return doc


def _other_type(rng: random.Random, value: Any) -> Any:
    choices = [None, True, 0, -1, 1.5, 1e308, 10**30, "", "text", "1970-13-01", [], {}, [None], [[1]],
               {"value": 1}, "\u0000", "\ud800", " padded ", "<div>x</div>"]
    return rng.choice([c for c in choices if type(c) is not type(value)])


def mutate_document(rng: random.Random, doc: Any) -> tuple[bytes, str]:
    """A mutated serialization of `doc`, and what was done."""
    doc = copy.deepcopy(doc)
    kind = rng.choices(
        ["flip", "truncate", "type-swap", "delete", "huge-string", "nest", "resourceType",
         "insert-garbage", "duplicate-key", "numbers", "unicode", "empty", "valid"],
        weights=[16, 8, 14, 10, 1, 6, 6, 6, 3, 4, 5, 3, 4],
    )[0]
    paths = [p for p, _ in _walk(doc) if p]
    if kind == "flip":
        data = bytearray(json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode())
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data), kind
    if kind == "truncate":
        data = json.dumps(doc).encode()
        return data[: rng.randrange(len(data))], kind
    if kind == "type-swap" and paths:
        path = rng.choice(paths)
        target = doc
        for key in path:
            target = target[key]
        return json.dumps(_set(doc, path, _other_type(rng, target))).encode(), f"{kind} at {path}"
    if kind == "delete" and paths:
        required = [p for p in paths if p[-1] in ("resourceType", "status", "code", "subject", "system", "value")]
        path = rng.choice(required or paths)
        return json.dumps(_delete(doc, path)).encode(), f"{kind} {path}"
    if kind == "huge-string":
        string_paths = [p for p, v in _walk(doc) if isinstance(v, str) and p and p[-1] != "resourceType"]
        size = rng.choice(HUGE_STRING_CHARS)
        path = rng.choice(string_paths)
        return json.dumps(_set(doc, path, rng.choice("aé漢") * size), ensure_ascii=False).encode(), f"{kind} {size} at {path}"
    if kind == "nest":
        depth = rng.choice([3, 10, 40, 63, 64, 65, 200, 5000])
        use_extension = isinstance(doc, dict) and (not paths or rng.random() < 0.3)
        path = ("extension",) if use_extension else rng.choice(paths)
        # Built as text: Python's json module recurses, and 5000 levels exceed its stack.
        opens, closes = [], []
        for _ in range(depth):
            if rng.random() < 0.8:
                opens.append("["), closes.append("]")
            else:
                opens.append('{"a":'), closes.append("}")
        nested = "".join(opens) + rng.choice(["1", '"x"', "{}", "null"]) + "".join(reversed(closes))
        text = json.dumps(_set(doc, path, "@@NEST@@"))
        return text.replace('"@@NEST@@"', nested).encode(), f"{kind} {depth} at {path}"
    if kind == "resourceType" and isinstance(doc, dict):
        doc["resourceType"] = rng.choice(TYPES + ["", "patient", "Patient ", "DomainResource", "Resource",
                                                  "Bundle", "OperationOutcome", 7, None, ["Patient"]])
        return json.dumps(doc).encode(), f"{kind}={doc['resourceType']!r}"
    if kind == "insert-garbage":
        data = json.dumps(doc).encode()
        at = rng.randrange(len(data) + 1)
        junk = rng.choice([b"\x00", b"\xff\xfe", b",", b"}", b"]]]]", b'"', b"\\u", b"NaN", b"Infinity",
                           b"/* */", b"\xed\xa0\x80", bytes(rng.randrange(256) for _ in range(8))])
        return data[:at] + junk + data[at:], kind
    if kind == "duplicate-key":
        text = json.dumps(doc)
        return (text[:-1] + ', "resourceType": "Observation", "id": "dup"}').encode(), kind
    if kind == "numbers" and paths:
        path = rng.choice(paths)
        number = rng.choice(["1e400", "-0", "123456789012345678901234567890", "0.0000000000000000000001",
                             "1E+2", "01", "-", "1.", ".5", "0x10"])
        text = json.dumps(_set(doc, path, "@@NUM@@"))
        return text.replace('"@@NUM@@"', number).encode(), f"{kind} {number} at {path}"
    if kind == "unicode" and paths:
        path = rng.choice(paths)
        # No Unicode-only whitespace (U+2028, U+00A0, …): FHIR's regexes read `\s` as XML Schema
        # (and the HL7 validator as Java) does, where those are not whitespace, but Python's `re`
        # in fhir.resources counts them as whitespace: the oracle would disagree with the spec.
        value = rng.choice(["\ud83d\ude00", "\u0000", "\ufeff", "a\u0301", "\U0010ffff", "\t\n", "\u200b"])
        data = json.dumps(_set(doc, path, value)).encode()
        if rng.random() < 0.3:
            data = data.replace(b"\\ud83d\\ude00", b"\\ud83d")  # a lone surrogate escape
        return data, f"{kind} at {path}"
    if kind == "empty":
        return rng.choice([b"", b" ", b"{}", b"[]", b"null", b"\n\n"]), kind
    return json.dumps(doc).encode(), "valid"


# ---------------------------------------------------------------------------------------
# Requests


class Generator:
    def __init__(self, rng: random.Random, existing: list[tuple[str, str]]):
        self.rng = rng
        self.existing = existing  # (type, id) that must survive untouched
        self.counter = 0

    def fresh_id(self) -> str:
        self.counter += 1
        return f"mut-{self.counter:05d}"

    def any_id(self) -> str:
        return self.rng.choice([self.fresh_id(), self.rng.choice(ODD_IDS)])

    def headers(self, content_type: str | None = None) -> dict:
        headers = {"Connection": "close"}  # a fresh connection per request (see test_bad_input)
        ct = content_type if content_type is not None else self.rng.choice(CONTENT_TYPES)
        if ct:
            headers["Content-Type"] = ct
        if self.rng.random() < 0.1:
            headers["Prefer"] = self.rng.choice(["return=minimal", "return=OperationOutcome", "handling=strict",
                                                 "return=representation", "respond-async", "garbage;;;="])
        if self.rng.random() < 0.05:
            headers["Accept"] = self.rng.choice(["*/*", "application/fhir+json", "text/html", "application/*"])
        return headers

    def case(self) -> Case:
        rng = self.rng
        template = rng.choice(TEMPLATES)
        body, note = mutate_document(rng, template)
        kind = rng.choices(
            ["create", "update-new", "update-existing", "conditional", "patch", "bundle", "random", "search"],
            weights=[30, 14, 12, 6, 10, 12, 10, 6],
        )[0]
        rtype = template["resourceType"] if rng.random() < 0.85 else rng.choice(TYPES)
        if kind == "create":
            headers = self.headers()
            if rng.random() < 0.15:
                headers["If-None-Exist"] = rng.choice(
                    [f"identifier={MRN_SYSTEM}|mut-0001", "identifier=", "name=x", "_id=" + self.fresh_id(), "%%"])
            return Case("POST", rtype, headers, body, f"create, {note}")
        if kind == "update-new":
            return Case("PUT", f"{rtype}/{self.any_id()}", self.headers(), body, f"update new id, {note}")
        if kind == "update-existing":
            ex_type, ex_id = rng.choice(self.existing)
            headers = self.headers()
            headers["If-Match"] = rng.choice(['W/"999"', 'W/"0"', '"1x"', "W/", "*x", 'W/"-1"'])
            return Case("PUT", f"{ex_type}/{ex_id}", headers, body, f"update existing with a stale If-Match, {note}")
        if kind == "conditional":
            query = rng.choice([f"identifier={MRN_SYSTEM}%7Cnew-{self.fresh_id()}", "identifier=", "name=x",
                                "_id=" + self.fresh_id(), "identifier=a,b,c"])
            return Case("PUT", f"{rtype}?{query}", self.headers(), body, f"conditional update, {note}")
        if kind == "patch":
            ops = [
                {"op": "replace", "path": "/gender", "value": "male"},
                {"op": "add", "path": "/name/0/given/-", "value": "X"},
                {"op": "remove", "path": "/identifier"},
                {"op": "test", "path": "/active", "value": True},
                {"op": "move", "from": "/name", "path": "/telecom"},
                {"op": "copy", "from": "/id", "path": "/resourceType"},
            ]
            doc = rng.sample(ops, rng.randint(1, 3))
            patch_body, patch_note = mutate_document(rng, doc) if rng.random() < 0.7 else (json.dumps(doc).encode(), "valid")
            if rng.random() < 0.5:
                ex_type, ex_id = rng.choice(self.existing)
                path = f"{ex_type}/{ex_id}"
                headers = self.headers("application/json-patch+json")
                headers["If-Match"] = 'W/"999"'
            else:
                path = f"{rtype}/{self.any_id()}"
                headers = self.headers("application/json-patch+json" if rng.random() < 0.8 else None)
            return Case("PATCH", path, headers, patch_body, f"patch, {patch_note}")
        if kind == "bundle":
            entries = []
            for _ in range(rng.randint(0, 6)):
                t = rng.choice(TEMPLATES)
                method = rng.choice(["POST", "PUT", "GET", "DELETE", "PATCH", "HEAD", "BOGUS"])
                if method in ("POST", "BOGUS"):
                    url = t["resourceType"]
                else:
                    url = f"{t['resourceType']}/{self.fresh_id()}"
                entry: dict = {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{self.counter:012d}",
                               "request": {"method": method, "url": url}}
                if method in ("POST", "PUT"):
                    entry["resource"] = copy.deepcopy(t)
                    if method == "PUT":
                        entry["resource"]["id"] = url.split("/")[1]
                if method == "PATCH":
                    entry["resource"] = {"resourceType": "Binary", "contentType": "application/json-patch+json",
                                         "data": base64.b64encode(b'[{"op":"remove","path":"/x"}]').decode()}
                if rng.random() < 0.2:
                    entry["request"]["ifNoneExist"] = rng.choice(["identifier=", f"identifier={MRN_SYSTEM}|mut-0002", "x=y"])
                entries.append(entry)
            doc = {"resourceType": "Bundle", "type": rng.choice(["transaction", "batch", "batch", "transaction",
                                                                  "collection", "searchset", "", None]),
                   "entry": entries}
            bundle_body, bundle_note = mutate_document(rng, doc) if rng.random() < 0.6 else (json.dumps(doc).encode(), "valid")
            return Case("POST", "", self.headers(), bundle_body, f"bundle, {bundle_note}")
        if kind == "search":
            query = "&".join(rng.sample(ODD_QUERY, rng.randint(1, 3)))
            path = rng.choice([rtype, "_history", f"{rtype}/_history", f"{rtype}/{self.any_id()}/_history"])
            return Case("GET", f"{path}?{query}", self.headers(""), None, "search/history with odd parameters")
        # random method and path
        method = rng.choice(METHODS)
        existing_type, existing_id = rng.choice(self.existing)
        candidates = [
            rtype, f"{rtype}/{self.any_id()}", f"{rtype}/{self.any_id()}/_history",
            f"{rtype}/{self.any_id()}/_history/{rng.choice(['1', '0', '-1', 'x', '99999999999999999999'])}",
            "metadata", "_history", rng.choice(ODD_IDS), f"{rng.choice(ODD_IDS)}/{rng.choice(ODD_IDS)}",
            f"{rtype}/_search", "$export", f"{rtype}/{self.any_id()}/$everything", "a/b/c/d/e/f",
        ]
        if method in ("GET", "HEAD", "OPTIONS"):
            # Reading an existing resource is harmless; writes only go to fresh ids.
            candidates += [f"{existing_type}/{existing_id}", f"{existing_type}/{existing_id}/_history"]
        path = rng.choice(candidates)
        send_body = body if method not in ("GET", "HEAD", "DELETE") or rng.random() < 0.2 else None
        return Case(method, path, self.headers(), send_body, f"random method/path, {note}")


def _check_response(case: Case, response: requests.Response) -> str | None:
    """None when the answer is acceptable, else what is wrong with it."""
    status = response.status_code
    if status >= 500:
        return f"HTTP {status}: {response.text[:500]}"
    if case.method == "HEAD" or status in (204, 304):
        if response.content:
            return f"HTTP {status} to {case.method} has a body"
        return None
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
    if status in (200, 201) and not response.content:
        if case.headers.get("Prefer") == "return=minimal":
            return None
        return f"HTTP {status} with an empty body"
    if content_type != FHIR_JSON:
        return f"HTTP {status} with Content-Type {content_type!r}: {response.text[:300]!r}"
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {status}, body is not JSON: {response.text[:300]!r}"
    if not isinstance(body, dict):
        return f"HTTP {status}, body is not a JSON object: {response.text[:300]!r}"
    if status >= 400:
        if body.get("resourceType") != "OperationOutcome":
            return f"HTTP {status} without an OperationOutcome: {response.text[:300]}"
        issues = body.get("issue") or []
        if not issues or not all(i.get("severity") and i.get("code") for i in issues):
            return f"an OperationOutcome without severity/code: {response.text[:300]}"
        if not any((i.get("diagnostics") or "").strip() for i in issues):
            return f"an OperationOutcome without diagnostics: {response.text[:300]}"
    try:
        assert_valid_r4(body)
    except AssertionError as err:
        return f"HTTP {status}, not valid FHIR R4: {str(err)[:700]}"
    return None


def test_mutated_requests_never_break_the_server(hub_server, http):
    hub = hub_server.fhir_url
    rng = random.Random(SEED)

    # 20 resources: 12 Patients (4 of them with a second version), 8 Observations.
    existing: list[tuple[str, str]] = []
    for index in range(12):
        created = check_resource(http.post(f"{hub}/Patient", json=_patient(100 + index)), 201, "Patient")
        existing.append(("Patient", created["id"]))
        if index % 3 == 0:
            check_resource(http.put(f"{hub}/Patient/{created['id']}", json=dict(created, active=False)), 200, "Patient")
    for index in range(8):
        subject = f"Patient/{existing[index][1]}"
        created = check_resource(http.post(f"{hub}/Observation", json=_observation(index, subject)), 201, "Observation")
        existing.append(("Observation", created["id"]))

    def snapshot() -> dict:
        result = {}
        for resource_type, rid in existing:
            response = http.get(f"{hub}/{resource_type}/{rid}")
            check_resource(response, 200, resource_type)
            result[(resource_type, rid)] = (response.headers.get("ETag"), response.content)
        return result

    before = snapshot()

    generator = Generator(rng, existing)
    failures: list[str] = []
    slow: list[str] = []
    statuses: dict[int, int] = {}
    started = time.monotonic()
    session = requests.Session()
    for index in range(REQUESTS):
        case = generator.case()
        url = f"{hub}/{case.path}" if case.path else hub
        t0 = time.monotonic()
        try:
            response = session.request(case.method, url, headers=case.headers, data=case.body,
                                        timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as err:
            alive = hub_server.running
            failures.append(f"#{index} {case.describe()}\n    -> {type(err).__name__}: {err} "
                            f"(server {'alive' if alive else 'DEAD'})")
            if not alive:
                break
            continue
        elapsed = time.monotonic() - t0
        if elapsed > SLOW_REQUEST_S:
            slow.append(f"#{index} {elapsed:.1f}s {case.describe()[:200]}")
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        problem = _check_response(case, response)
        if problem:
            failures.append(f"#{index} {case.describe()}\n    -> {problem}")
    duration = time.monotonic() - started
    session.close()

    assert hub_server.running, f"the server died during the mutation run:\n{hub_server.describe()}"
    summary = f"{REQUESTS} requests in {duration:.0f} s, statuses {dict(sorted(statuses.items()))}"
    assert not failures, (
        f"seed {SEED}: {len(failures)} bad answers ({summary}); first {FAILURES_SHOWN}:\n"
        + "\n".join(failures[:FAILURES_SHOWN])
    )
    assert statuses.get(201, 0) > 50, f"too few mutations were valid creates to be a useful mix: {summary}"

    after = snapshot()
    changed = [f"{t}/{i}: ETag {before[(t, i)][0]} -> {after[(t, i)][0]}"
               for (t, i) in before if before[(t, i)] != after[(t, i)]]
    assert not changed, "resources changed by requests that should have been refused:\n" + "\n".join(changed)
    # Their history is unchanged too (no version slipped in and was overwritten).
    for resource_type, rid in existing:
        response = http.get(f"{hub}/{resource_type}/{rid}/_history")
        bundle = check_resource(response, 200, "Bundle")
        expected_versions = int(before[(resource_type, rid)][0].split('"')[1])
        assert len(bundle.get("entry") or []) == expected_versions, f"{resource_type}/{rid} history changed"
    assert not slow or len(slow) < 10, "many slow requests:\n" + "\n".join(slow)
