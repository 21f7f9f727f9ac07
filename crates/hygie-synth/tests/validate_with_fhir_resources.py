#!/usr/bin/env python3
"""Validate a FHIR R4 Bundle file with the independent library fhir.resources 6.4.0.

Usage: validate_with_fhir_resources.py BUNDLE.json [MORE.json ...]

Each file holds one Bundle as JSON, or one Bundle per line (NDJSON, as the synth_bundle
example prints with --per-patient). Every entry's resource is validated on its own (so an
error names the entry), then the whole Bundle. Needs `fhir.resources==6.4.0` and
`pydantic<2` (FHIR R4 4.0.1 models). Exits 0 when everything is valid, 1 when anything is
invalid, 2 on a usage or setup error.
"""

import json
import sys
from collections import Counter

try:
    import fhir.resources
    from fhir.resources import construct_fhir_element
except ImportError:
    print(
        "fhir.resources is not installed: pip install 'fhir.resources==6.4.0' 'pydantic<2'",
        file=sys.stderr,
    )
    sys.exit(2)


def bundles_in(path):
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        yield json.loads(text)
    except json.JSONDecodeError:
        for line_number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{line_number}: not JSON: {error}") from error


def first_lines(error, count=6):
    lines = str(error).splitlines()
    return "\n      ".join(lines[:count] + (["..."] if len(lines) > count else []))


def validate_bundle(bundle, label):
    """Returns (resource counts, list of error messages)."""
    errors = []
    counts = Counter()
    if bundle.get("resourceType") != "Bundle":
        return counts, [f"{label}: not a Bundle"]
    for position, entry in enumerate(bundle.get("entry", [])):
        resource = entry.get("resource")
        if not isinstance(resource, dict) or "resourceType" not in resource:
            errors.append(f"{label} entry {position}: no resource")
            continue
        resource_type = resource["resourceType"]
        counts[resource_type] += 1
        try:
            construct_fhir_element(resource_type, resource)
        except Exception as error:  # pydantic.ValidationError, LookupError, ...
            errors.append(
                f"{label} entry {position} ({resource_type} {entry.get('fullUrl')}):\n"
                f"      {first_lines(error)}"
            )
    try:
        construct_fhir_element("Bundle", bundle)
    except Exception as error:
        errors.append(f"{label} as a whole Bundle:\n      {first_lines(error)}")
    return counts, errors


def main(paths):
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if fhir.resources.__fhir_version__ != "4.0.1":
        print(
            f"fhir.resources models FHIR {fhir.resources.__fhir_version__}, not R4 4.0.1: "
            "install fhir.resources==6.4.0",
            file=sys.stderr,
        )
        return 2
    all_counts = Counter()
    all_errors = []
    bundle_count = 0
    for path in paths:
        try:
            for number, bundle in enumerate(bundles_in(path), start=1):
                bundle_count += 1
                counts, errors = validate_bundle(bundle, f"{path} bundle {number}")
                all_counts += counts
                all_errors += errors
        except (OSError, ValueError) as error:
            print(f"cannot read {path}: {error}", file=sys.stderr)
            return 2
    for message in all_errors:
        print(f"INVALID {message}")
    resources = sum(all_counts.values())
    summary = ", ".join(f"{name} {count}" for name, count in sorted(all_counts.items()))
    print(f"{bundle_count} bundle(s), {resources} resources ({summary})")
    # One check per resource plus one per whole Bundle.
    checks = resources + bundle_count
    print(f"{checks - len(all_errors)} passed, {len(all_errors)} failed")
    return 1 if all_errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
