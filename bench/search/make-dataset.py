#!/usr/bin/env python3
"""Multiply Synthea R4 transaction bundles into a larger dataset, with fresh ids.

    bench/search/make-dataset.py SOURCE_DIR OUT_DIR --copies N

Each copy of each bundle gets new `urn:uuid:` full URLs (references follow, since they use
the same strings) and its patients' family names a copy suffix, so that a name search
finds one copy's patients, as in a real population, not N identical twins. Deterministic.
"""
from __future__ import annotations

import argparse
import json
import re
import uuid
from pathlib import Path

UUID_RE = re.compile(r"urn:uuid:([0-9a-fA-F-]{36})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--copies", type=int, default=14)
    args = parser.parse_args()
    sources = sorted(args.source.glob("*.json"))
    if not sources:
        raise SystemExit(f"no *.json bundles in {args.source}")
    args.out.mkdir(parents=True, exist_ok=True)
    resources = 0
    for copy in range(args.copies):
        for source in sources:
            text = source.read_text()
            mapping: dict[str, str] = {}

            def fresh(match: re.Match) -> str:
                old = match.group(1)
                if old not in mapping:
                    mapping[old] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{copy}/{source.name}/{old}"))
                return "urn:uuid:" + mapping[old]

            bundle = json.loads(UUID_RE.sub(fresh, text))
            for entry in bundle.get("entry", []):
                resource = entry.get("resource", {})
                resources += 1
                if resource.get("resourceType") == "Patient" and copy > 0:
                    for name in resource.get("name", []):
                        if "family" in name:
                            name["family"] = f"{name['family']}x{copy}"
            (args.out / f"c{copy:03}-{source.name}").write_text(json.dumps(bundle))
    print(f"{args.copies * len(sources)} bundles, {resources} resources in {args.out}")


if __name__ == "__main__":
    main()
