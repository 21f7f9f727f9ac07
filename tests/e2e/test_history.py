"""History (http.html#history): instance, type and system scopes, `_count` paging that follows
`next` links to the end, stable pages under concurrent writes, `_since`.
"""

from __future__ import annotations

import time
from collections import Counter

from e2e_support import (
    assert_outcome,
    check_bundle,
    check_resource,
    create,
    follow_pages,
    history_entries,
    observation,
    patient,
)


def _version_key(entry: dict) -> tuple[str, str]:
    """(Type/id, version) of a history entry, from its fullUrl and ETag."""
    full_url = entry["fullUrl"]
    type_and_id = "/".join(full_url.rstrip("/").split("/")[-2:])
    etag = entry["response"]["etag"]
    version = etag.removeprefix('W/"').removesuffix('"')
    if "resource" in entry:
        resource = entry["resource"]
        assert f"{resource['resourceType']}/{resource['id']}" == type_and_id, entry
        assert resource["meta"]["versionId"] == version, entry
    return type_and_id, version


def _make_versions(http, hub, resource: dict, count: int) -> list[tuple[str, str]]:
    """Creates `resource` and updates it until it has `count` versions."""
    current = create(http, hub, resource)
    keys = [(f"{current['resourceType']}/{current['id']}", "1")]
    for n in range(2, count + 1):
        body = {k: v for k, v in current.items() if k != "meta"}
        if current["resourceType"] == "Patient":
            body["name"] = [{"family": f"Version{n}", "given": ["Claire"]}]
        else:
            body["valueQuantity"] = dict(current["valueQuantity"], value=60 + n)
        response = http.put(f"{hub}/{current['resourceType']}/{current['id']}", json=body)
        current = check_resource(response, 200, current["resourceType"])
        assert current["meta"]["versionId"] == str(n)
        keys.append((keys[0][0], str(n)))
    return keys


def _assert_exactly_once(entries: list[dict], expected: set[tuple[str, str]], where: str) -> None:
    keys = [_version_key(e) for e in entries]
    duplicates = [k for k, n in Counter(keys).items() if n > 1]
    assert not duplicates, f"{where}: versions listed more than once: {duplicates}"
    missing = expected - set(keys)
    assert not missing, f"{where}: versions missing: {sorted(missing)}"


def _assert_newest_first(entries: list[dict], where: str) -> None:
    stamps = [e["response"]["lastModified"] for e in entries]
    assert all(s for s in stamps), f"{where}: every entry needs response.lastModified"
    as_dt = [time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S") for s in stamps]
    assert as_dt == sorted(as_dt, reverse=True), f"{where}: history must be newest first: {stamps}"


def test_instance_history_paging(hub, http):
    keys = _make_versions(http, hub, patient(), 7)
    reference = keys[0][0]
    entries, pages = follow_pages(http, f"{hub}/{reference}/_history", "history", params={"_count": "3"})
    assert pages == 3, f"7 versions at _count=3 make 3 pages, got {pages}"
    assert len(entries) == 7
    _assert_exactly_once(entries, set(keys), "instance history")
    versions = [_version_key(e)[1] for e in entries]
    assert versions == ["7", "6", "5", "4", "3", "2", "1"], versions
    _assert_newest_first(entries, "instance history")
    for entry in entries:
        method = entry["request"]["method"]
        assert method == ("POST" if _version_key(entry)[1] == "1" else "PUT"), entry["request"]
        assert entry["response"]["status"].startswith("201" if method == "POST" else "200"), entry


def test_type_and_system_history_paging(hub, http):
    expected_patients: set[tuple[str, str]] = set()
    for _ in range(4):
        expected_patients |= set(_make_versions(http, hub, patient(), 2))
    observation_keys = set(_make_versions(http, hub, observation("Patient/x"), 3))

    entries, pages = follow_pages(http, f"{hub}/Patient/_history", "history", params={"_count": "3"})
    assert len(entries) == 8 and pages == 3, (len(entries), pages)
    _assert_exactly_once(entries, expected_patients, "type history")
    assert {_version_key(e)[0].split("/")[0] for e in entries} == {"Patient"}
    _assert_newest_first(entries, "type history")

    entries, pages = follow_pages(http, f"{hub}/_history", "history", params={"_count": "4"})
    assert len(entries) == 11 and pages == 3, (len(entries), pages)
    _assert_exactly_once(entries, expected_patients | observation_keys, "system history")
    _assert_newest_first(entries, "system history")


def test_history_pages_do_not_shift_under_writes(hub, http):
    """A write between two page fetches must neither repeat nor skip an entry of the listing
    the client started."""
    instance_keys = _make_versions(http, hub, patient(), 7)
    reference = instance_keys[0][0]
    other_keys = _make_versions(http, hub, patient(), 2)
    scopes = {
        "instance": (f"{hub}/{reference}/_history", set(instance_keys)),
        "type": (f"{hub}/Patient/_history", set(instance_keys) | set(other_keys)),
        "system": (f"{hub}/_history", set(instance_keys) | set(other_keys)),
    }
    for scope, (url, expected) in scopes.items():
        first = check_bundle(http.get(url, params={"_count": "3"}), "history")
        next_url = {l["relation"]: l["url"] for l in first["link"]}.get("next")
        assert next_url, f"{scope}: the first page of {len(expected)} versions needs a next link"

        # Writes between page fetches: a new version of the listed resource and a new resource.
        current = check_resource(http.get(f"{hub}/{reference}"), 200, "Patient")
        response = http.put(f"{hub}/{reference}", json={**current, "gender": "male"})
        check_resource(response, 200, "Patient")
        create(http, hub, patient())

        rest, _ = follow_pages(http, next_url, "history")
        entries = (first.get("entry") or []) + rest
        _assert_exactly_once(entries, expected, f"{scope} history across a concurrent write")


def test_history_since(hub, http):
    early = create(http, hub, patient())
    time.sleep(0.05)
    late = create(http, hub, patient())
    since = late["meta"]["lastUpdated"]

    for url in (f"{hub}/_history", f"{hub}/Patient/_history"):
        entries = history_entries(http, url + "?_since=" + since.replace("+", "%2B"))
        ids = {e["resource"]["id"] for e in entries}
        assert late["id"] in ids, f"{url}?_since={since} must include the version written at {since}"
        assert early["id"] not in ids, f"{url}?_since={since} must leave out earlier versions"

    entries = history_entries(http, f"{hub}/Patient/{early['id']}/_history?_since={since}")
    assert entries == [], "the early resource has no version since"

    # A _since that is not an instant.
    assert_outcome(http.get(f"{hub}/_history", params={"_since": "yesterday"}), 400)
    # Paging through _since keeps the filter.
    for _ in range(3):
        create(http, hub, patient())
    entries, pages = follow_pages(http, f"{hub}/Patient/_history", "history", params={"_since": since, "_count": "2"})
    assert pages == 2 and len(entries) == 4, (pages, len(entries))
    assert early["id"] not in {e["resource"]["id"] for e in entries}


def test_history_count_bounds(hub, http):
    create(http, hub, patient())
    for value in ("0", "-1", "100000", "ten"):
        assert_outcome(http.get(f"{hub}/_history", params={"_count": value}), 400)
    assert_outcome(http.get(f"{hub}/_history", params={"_page": "not-a-cursor"}), 400)
