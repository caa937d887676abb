#!/usr/bin/env python3
"""Independent check of the hub's AAS export with aas-core3.0 (the reference SDK of the AAS
v3.0 metamodel, not ours).

Usage: check.py DIR

DIR holds what tests/tests/aas_export.rs wrote (DEMOLAB_AAS_EXPORT_DIR): for each shell an
environment assembled from the API's answers (NAME.json) and the .aasx package the hub served
(NAME.aasx), plus `expected-shells` with the number of shells. Each environment, and the one
inside each package (found by following the OPC relationships, as an AASX reader does), must
deserialise with aas_core3.jsonization, verify with aas_core3.verification with no error, and
serialise back to the same JSON (nothing dropped or renamed). Exits non-zero on any failure,
and when there is nothing to check.
"""

import json
import pathlib
import posixpath
import sys
import xml.etree.ElementTree as ET
import zipfile

import aas_core3.jsonization as aas_jsonization
import aas_core3.verification as aas_verification

REL_NS = "{http://schemas.openxmlformats.org/package/2006/relationships}"
CT_NS = "{http://schemas.openxmlformats.org/package/2006/content-types}"
ORIGIN = "http://admin-shell.io/aasx/relationships/aasx-origin"
SPEC = "http://admin-shell.io/aasx/relationships/aas-spec"


def version():
    try:
        from importlib.metadata import version as installed

        return installed("aas-core3.0")
    except Exception:  # the version is for the log only
        return "?"


def check_environment(jsonable, where):
    """Returns a list of problems (empty when the environment is valid)."""
    try:
        environment = aas_jsonization.environment_from_jsonable(jsonable)
    except aas_jsonization.DeserializationException as error:
        return [f"{where}: not an AAS v3.0 environment: {error.path}: {error.cause}"]
    problems = [
        f"{where}: {error.path}: {error.cause}"
        for error in aas_verification.verify(environment)
    ]
    if aas_jsonization.to_jsonable(environment) != jsonable:
        problems.append(f"{where}: does not serialise back to the same JSON")
    shells = environment.asset_administration_shells or []
    submodels = {s.id for s in environment.submodels or []}
    if len(shells) != 1:
        problems.append(f"{where}: {len(shells)} shells, expected 1")
    for shell in shells:
        for reference in shell.submodels or []:
            target = reference.keys[0].value
            if target not in submodels:
                problems.append(f"{where}: submodel {target} is referenced but missing")
    return problems


def relationships(package, part):
    """The relationships of `part` ("" for the package) as (type, absolute target) pairs."""
    folder, name = posixpath.split(part)
    rels = posixpath.join(folder, "_rels", f"{name}.rels")
    if rels not in package.namelist():
        return []
    root = ET.fromstring(package.read(rels))
    pairs = []
    for rel in root.iter(f"{REL_NS}Relationship"):
        target = rel.get("Target", "")
        absolute = target.lstrip("/") if target.startswith("/") else posixpath.join(folder, target)
        pairs.append((rel.get("Type"), posixpath.normpath(absolute)))
    return pairs


def check_package(path):
    problems = []
    try:
        package = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        return [f"{path.name}: not a zip: {error}"]
    with package:
        bad = package.testzip()
        if bad is not None:
            return [f"{path.name}: damaged entry {bad}"]
        names = set(package.namelist())
        if "[Content_Types].xml" not in names:
            return [f"{path.name}: no [Content_Types].xml"]
        types = ET.fromstring(package.read("[Content_Types].xml"))
        defaults = {d.get("Extension") for d in types.iter(f"{CT_NS}Default")}
        for extension in ("rels", "json"):
            if extension not in defaults:
                problems.append(f"{path.name}: no content type for .{extension}")
        origins = [t for kind, t in relationships(package, "") if kind == ORIGIN]
        if len(origins) != 1 or origins[0] not in names:
            return problems + [f"{path.name}: no aasx-origin part ({origins})"]
        specs = [t for kind, t in relationships(package, origins[0]) if kind == SPEC]
        if not specs:
            return problems + [f"{path.name}: the origin names no aas-spec part"]
        for spec in specs:
            if spec not in names:
                problems.append(f"{path.name}: aas-spec part {spec} is missing")
                continue
            jsonable = json.loads(package.read(spec))
            problems += check_environment(jsonable, f"{path.name}!{spec}")
    return problems


def self_test(jsonable):
    """The checker must find faults planted in a valid environment, or it proves nothing."""
    broken = json.loads(json.dumps(jsonable))
    element = broken["submodels"][0]["submodelElements"][0]
    element["idShort"] = "not-an-id-short"
    broken["assetAdministrationShells"][0]["assetInformation"]["assetKind"] = "Machine"
    found = check_environment(broken, "self-test")
    if not found:
        return ["self-test: a broken environment passed the check"]
    return []


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    folder = pathlib.Path(sys.argv[1])
    expected_file = folder / "expected-shells"
    if not expected_file.exists():
        print(f"{expected_file} is missing: did the export test run?", file=sys.stderr)
        return 1
    expected = int(expected_file.read_text())
    environments = sorted(folder.glob("*.json"))
    packages = sorted(folder.glob("*.aasx"))
    problems = []
    if expected == 0 or len(environments) != expected or len(packages) != expected:
        problems.append(
            f"expected {expected} shells, found {len(environments)} environments "
            f"and {len(packages)} packages"
        )
    if environments:
        problems += self_test(json.loads(environments[0].read_text()))
    for path in environments:
        problems += check_environment(json.loads(path.read_text()), path.name)
    for path in packages:
        problems += check_package(path)
    for problem in problems:
        print(problem, file=sys.stderr)
    print(
        f"AAS check (aas-core3.0 {version()}): {len(environments)} environments and {len(packages)} "
        f".aasx packages, {len(problems)} errors"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
