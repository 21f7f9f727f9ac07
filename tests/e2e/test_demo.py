"""`hygie demo`: starts, prints its base URL, a token per role and curl commands that work as
printed (a clinician's read, reception refused the observations, no token refused), stops on
SIGINT with exit code 0 and removes its throwaway data."""

from __future__ import annotations

import re
import time
import signal
import urllib.parse
from pathlib import Path

from e2e_support import Process, assert_outcome, check_bundle, check_resource, free_port, one_shot, run_cli

DEMO_START_TIMEOUT_S = 90  # generating and loading 20 patients in a debug build


def test_demo(hygie_bin, tmp_path, http):
    port = free_port()
    demo = Process([hygie_bin, "demo", "--listen", f"127.0.0.1:{port}"], cwd=tmp_path)
    try:
        banner = demo.wait_for_output(r"Hygie demo hub: (\S+)", DEMO_START_TIMEOUT_S)
        base = banner.group(1)
        assert base == f"http://127.0.0.1:{port}/fhir", f"printed base URL: {base}"
        demo.wait_for_output(r"^Reception reads(?:.*\n)*.*curl -s http\S+/Patient/\S+\s*$", 30)
        output = demo.output()
        tokens = dict(re.findall(r"^\s+export (\w+)='([^']+)'$", output, re.MULTILINE))
        assert {"CLINICIAN", "NURSE", "RECEPTION", "BILLING", "DPO"} <= set(tokens), output
        http.headers["Authorization"] = f"Bearer {tokens['CLINICIAN']}"

        as_clinician = re.escape('-H "Authorization: Bearer $CLINICIAN"')
        read_cmd = re.search(rf"curl -s {as_clinician} {re.escape(base)}/(Patient/[A-Za-z0-9\-.]+)\s*$", output,
                             re.MULTILINE)
        assert read_cmd, f"no `curl {base}/Patient/<id>` in the output:\n{output}"
        reference = read_cmd.group(1)
        search_cmd = re.search(rf"curl -s {as_clinician} '({re.escape(base)}/Patient\?identifier=[^']+)'", output)
        assert search_cmd, f"no `curl '{base}/Patient?identifier=…'` in the output:\n{output}"

        patient = check_resource(http.get(f"{base}/{reference}"), 200, "Patient")
        assert f"Patient/{patient['id']}" == reference

        # The URL exactly as printed (curl sends `|` as is; requests would too).
        bundle = check_bundle(http.get(search_cmd.group(1)), "searchset")
        found = [e["resource"]["id"] for e in bundle.get("entry") or [] if e["search"]["mode"] == "match"]
        assert found == [patient["id"]], f"{search_cmd.group(1)} found {found}, expected {reference}"
        token = urllib.parse.unquote(search_cmd.group(1).split("identifier=", 1)[1])
        system, _, value = token.partition("|")
        assert any(i.get("system") == system and i.get("value") == value for i in patient["identifier"]), token

        # The other printed commands answer too.
        check_bundle(http.get(f"{base}/Patient", params={"_count": "5"}), "searchset")
        check_bundle(http.get(f"{base}/{reference}/_history"), "history")
        check_bundle(http.get(f"{base}/Observation", params={"subject": reference, "_count": "3"}), "searchset")
        check_resource(http.get(f"{base}/metadata"), 200, "CapabilityStatement")
        # Reception reads the patient and is refused the observations; no token is 401.
        reception = {"Authorization": f"Bearer {tokens['RECEPTION']}"}
        check_resource(one_shot("GET", f"{base}/{reference}", headers=reception), 200, "Patient")
        assert_outcome(one_shot("GET", f"{base}/Observation", params={"subject": reference}, headers=reception),
                       403, code="forbidden")
        assert_outcome(one_shot("GET", f"{base}/{reference}"), 401, code="login")
        # Need-to-know: the clinician's token is refused a patient they do not care for, breaks
        # the glass with a reason (the printed commands), and the DPO sees the review item.
        stranger = re.search(r"X-Break-Glass-Reason: ([^']+)' '([^']+)'", output)
        assert stranger, f"no break-the-glass example in the output:\n{output}"
        reason, url = stranger.group(1), stranger.group(2)
        assert_outcome(http.get(url), 403, code="forbidden", diagnostics_contains="X-Break-Glass-Reason")
        check_bundle(http.get(url, headers={"X-Break-Glass-Reason": reason}), "searchset")
        check_bundle(http.get(url), "searchset")  # the grant holds for its window
        admin = base.removesuffix("/fhir")
        dpo = {"Authorization": f"Bearer {tokens['DPO']}"}
        listing = one_shot("GET", f"{admin}/admin/break-glass", headers=dpo)
        assert listing.status_code == 200, listing.text
        items = listing.json()["items"]
        assert [item["reason"] for item in items] == [reason], items
        assert url.split("subject=", 1)[1].split("&", 1)[0] == items[0]["patient"], items
        # The printed audit trail commands: the DPO finds the emergency access, and the
        # patient's access log says who (by name), with the reason.
        trail = re.search(r"Bearer \$DPO\" '([^']+AuditEvent\?[^']+)'", output)
        access_log = re.search(r"Bearer \$DPO\" '([^']+/\$access-log)'", output)
        assert trail and access_log, f"no audit trail example in the output:\n{output}"
        found = check_bundle(one_shot("GET", trail.group(1), headers=dpo), "searchset")
        assert {e["resource"]["subtype"][0]["code"] for e in found["entry"]} >= {"break-the-glass", "search-type"}
        log = check_bundle(one_shot("GET", access_log.group(1), headers=dpo), "collection")
        emergency = [e["resource"] for e in log["entry"] if "purposeOfEvent" in e["resource"]]
        assert emergency and emergency[0]["purposeOfEvent"][0]["text"] == reason
        assert emergency[0]["agent"][0]["who"]["display"].startswith("Dr "), emergency[0]["agent"]
        listed = re.findall(r"^\s+.+?\s(Patient/[A-Za-z0-9\-.]+)\s", output, re.MULTILINE)
        assert len(listed) >= 5, f"five patients are listed with their references:\n{output}"
        for other in listed[:5]:
            check_resource(http.get(f"{base}/{other}"), 200, "Patient")

        # The demo keeps its audit log as serve does: a signed checkpoint is served.
        deadline = time.monotonic() + 15
        while True:
            checkpoint = one_shot("GET", f"{admin}/audit/checkpoint")
            if checkpoint.status_code == 200 and int(checkpoint.text.split("\n")[1]) > 0:
                break
            assert time.monotonic() < deadline, f"no audit checkpoint: {checkpoint.status_code} {checkpoint.text}"
            time.sleep(0.5)

        post_cmd = re.search(r"-d '(\{.*\})'", output)
        assert post_cmd, f"no create example in the output:\n{output}"
        check_resource(http.post(f"{base}/Patient", data=post_cmd.group(1),
                                 headers={"Content-Type": "application/fhir+json"}), 201, "Patient")

        code = demo.signal_and_wait(signal.SIGINT)
        assert code == 0, f"hygie demo exited {code} on SIGINT:\n{demo.output()[-3000:]}"
        removed = re.search(r"data directory (\S+) was removed", demo.output())
        assert removed, f"the demo should say its throwaway data was removed:\n{demo.output()[-2000:]}"
        assert not Path(removed.group(1)).exists(), f"{removed.group(1)} still exists"
    finally:
        demo.close()


def test_demo_refuses_a_non_loopback_address(hygie_bin, tmp_path):
    done = run_cli(hygie_bin, ["demo", "--listen", f"0.0.0.0:{free_port()}", "--patients", "2"], cwd=tmp_path,
                   timeout_s=60)
    assert done.returncode != 0, f"the demo runs without authentication: loopback only\n{done.stdout}{done.stderr}"
    assert "loopback" in done.stdout + done.stderr
