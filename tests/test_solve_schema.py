"""Plan JSON schema: a valid draft 2020-12 schema, in step with the code, strict where it must
be, and a real plan (case-example phantom, 1.0 mm) validates in memory and as written."""

from __future__ import annotations

import copy
import json
import tomllib

import jsonschema
import pytest

from planner.errors import ERROR_CODES, SolverError
from planner.solve.schema import load_schema, schema_path, validate_candidate, validate_plan
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def l4_plan(case_example_scene):
    from planner.solve.plan import plan

    result = plan(case_example_scene, ["L4"])
    assert result["levels"][0]["candidates"], "the L4 plan of case_example has no candidate to check the schema with"
    return result


@pytest.fixture
def plan_copy(l4_plan):
    return copy.deepcopy({k: v for k, v in l4_plan.items() if k != "run"})


# ---------------------------------------------------------------------------- the schema itself
def test_schema_is_valid_and_versioned():
    from planner.solve.plan import PLAN_SCHEMA_VERSION

    s = load_schema()
    jsonschema.Draft202012Validator.check_schema(s)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert s["$id"].endswith(":" + PLAN_SCHEMA_VERSION)
    assert s["properties"]["schema_version"]["const"] == PLAN_SCHEMA_VERSION
    assert s["additionalProperties"] is False
    # load_schema hands out copies
    s["properties"].clear()
    assert load_schema()["properties"]
    assert "PLN-SOL-005" in ERROR_CODES


def test_schema_ships_as_package_data():
    assert schema_path().is_file()
    assert json.loads(schema_path().read_text()) == load_schema()
    pp = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "solve/plan.schema.json" in pp["tool"]["setuptools"]["package-data"]["planner"]
    assert any(d.replace(" ", "").startswith("jsonschema>=") for d in pp["project"]["dependencies"])


def _properties(node, where="$"):
    """(path, name, property schema) of every property definition (if/then/else overlays excluded)."""
    if isinstance(node, dict):
        for name, sub in node.get("properties", {}).items():
            yield f"{where}.{name}", name, sub
            yield from _properties(sub, f"{where}.{name}")
        for key in ("$defs", "items", "additionalProperties", "allOf", "oneOf", "anyOf"):
            v = node.get(key)
            if isinstance(v, dict):
                for k, sub in (v.items() if key == "$defs" else [(key, v)]):
                    yield from _properties(sub, f"{where}/{k}")
            elif isinstance(v, list):
                for i, sub in enumerate(v):
                    yield from _properties(sub, f"{where}/{key}[{i}]")


def test_every_property_has_a_description_with_its_unit():
    props = list(_properties(load_schema()))
    assert len(props) > 150
    missing = [p for p, _, s in props if not str(s.get("description", "")).strip()]
    assert not missing, missing
    bad_unit = []
    for p, name, s in props:
        d = s["description"]
        if name.endswith("_mm") and "mm" not in d:
            bad_unit.append(p)
        if name.endswith("_deg") and "degree" not in d:
            bad_unit.append(p)
        if ("_lps" in name) and "LPS" not in d:
            bad_unit.append(p)
    assert not bad_unit, bad_unit


def test_schema_enums_match_the_code():
    from planner.labels.registry import LEVELS
    from planner.solve.config import OBSTACLE_CLASSES, SolverOptions
    from planner.solve.plan import _instruments
    from planner.solve.search import ROUTES

    d = load_schema()["$defs"]
    assert tuple(d["route"]["enum"]) == ROUTES
    assert tuple(d["obstacle_class"]["enum"]) == OBSTACLE_CLASSES
    assert tuple(d["metrics"]["properties"]["axis_clearance_mm"]["required"]) == OBSTACLE_CLASSES
    opts = load_schema()["properties"]["options"]["properties"]
    assert tuple(opts["margins"]["required"]) == OBSTACLE_CLASSES
    assert tuple(d["level_name"]["enum"]) == tuple(LEVELS)
    assert set(d["procedure"]["enum"]) == set(_instruments(SolverOptions()))
    assert set(load_schema()["properties"]["instruments"]["required"]) == set(_instruments(SolverOptions()))
    # every current solver option is documented (new ones are allowed, but should be added here)
    assert set(SolverOptions().to_dict()) <= set(opts)


# ---------------------------------------------------------------------------- a real plan
def test_real_plan_validates(l4_plan):
    validate_plan(l4_plan)  # the in-memory result: its 'run' timings are ignored
    lv = l4_plan["levels"][0]
    for c in lv["candidates"]:
        validate_candidate(c)
        validate_candidate({k: v for k, v in c.items() if k != "rank"})  # evaluation output has no rank


def test_written_plan_validates(l4_plan, tmp_path):
    from planner.solve.api import write_plan

    path = tmp_path / "plan.json"
    write_plan(l4_plan, path)
    on_disk = json.loads(path.read_text())
    assert "run" not in on_disk and (tmp_path / "run.json").is_file()
    validate_plan(on_disk)


def test_open_places_accept_new_fields(plan_copy):
    p = plan_copy
    lv = p["levels"][0]
    c = lv["candidates"][0]
    c["new_field"] = 1
    c["metrics"]["new_metric_mm"] = 2.0
    c["verdict"]["new_verdict_field"] = True
    lv["stats"]["new_count"] = 3
    lv["geometry"]["new_landmark_lps_mm"] = [0.0, 0.0, 0.0]
    p["scene"]["new_scene_fact"] = "x"
    validate_plan(p)


def test_no_safe_route_and_not_sampled_forms_validate(plan_copy):
    p = plan_copy
    lv = p["levels"][0]
    lv["candidates"] = []
    lv["routes"] = [
        {"side": "left", "route": "parapedicular", "status": "not_sampled", "reason": "no candidate of this route"},
        {"side": "right", "route": "transpedicular", "status": "blocked", "binding": None, "reason": "no candidate passed",
         "closest_candidate": "L4-R-transpedicular-00000000"},
    ]
    lv["recommendation"] = {"procedure": None, "access": None, "candidates": [], "rule": "r", "safe_route_found": False,
                            "reason": "no route passes every hard constraint"}
    p["summary"]["levels_without_safe_route"] = ["L4"]
    validate_plan(p)
    del lv["routes"][0]["reason"]
    with pytest.raises(SolverError) as e:
        validate_plan(p)
    assert e.value.code == "PLN-SOL-005" and "$.levels[0].routes[0]" in e.value.message and "reason" in e.value.message


def _set(path, value):
    def f(p):
        node = p
        for k in path[:-1]:
            node = node[k]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return f


C0 = ("levels", 0, "candidates", 0)
MUTATIONS = {
    "missing candidate score": (_set((*C0, "score"), KeyError), "$.levels[0].candidates[0]", "'score' is a required"),
    "missing schema_version": (_set(("schema_version",), KeyError), "at $:", "schema_version"),
    "route not in enum": (_set((*C0, "route"), "posterior"), "$.levels[0].candidates[0].route", "'posterior' is not one of"),
    "side not in enum": (_set((*C0, "side"), "both"), "$.levels[0].candidates[0].side", "'both'"),
    "status not in enum": (_set(("levels", 0, "routes", 0, "status"), "open"), "$.levels[0].routes[0].status", "'open'"),
    "procedure not in enum": (_set(("levels", 0, "recommendation", "procedure"), "open_surgery"), "$.levels[0].recommendation.procedure", "open_surgery"),
    "string for a clearance": (_set((*C0, "metrics", "axis_clearance_mm", "canal"), "10.2"),
                               "$.levels[0].candidates[0].metrics.axis_clearance_mm.canal", "not of type"),
    "string for a score": (_set((*C0, "score"), "high"), "$.levels[0].candidates[0].score", "not of type 'number'"),
    "two-number point": (_set((*C0, "target_lps_mm"), [1.0, 2.0]), "$.levels[0].candidates[0].target_lps_mm", "too short"),
    "unknown obstacle class": (_set((*C0, "metrics", "axis_clearance_mm", "cord"), 1.0),
                               "$.levels[0].candidates[0].metrics.axis_clearance_mm", "'cord' was unexpected"),
    "missing per-instrument verdict": (_set((*C0, "verdict", "per_instrument", "kyphoplasty"), KeyError),
                                       "$.levels[0].candidates[0].verdict.per_instrument", "'kyphoplasty' is a required"),
    "extra top-level key": (_set(("extra",), 1), "at $:", "'extra' was unexpected"),
    "extra per-level key": (_set(("levels", 0, "extra"), 1), "$.levels[0]", "'extra' was unexpected"),
    "RAS frame": (_set(("frame",), "RAS"), "$.frame", "'LPS' was expected"),
    "other major version": (_set(("schema_version",), "2.0"), "$.schema_version", "'1.0' was expected"),
    "recommended id unknown": (_set(("levels", 0, "recommendation", "candidates"), ["L4-L-parapedicular-deadbeef"]),
                               "$.levels[0].recommendation.candidates[0]", "not among the level's candidates"),
    "summary disagrees": (_set(("summary", "levels_without_safe_route"), ["T1"]), "$.summary.levels_without_safe_route", "recommendations say"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_mutated_plans_fail_with_path(plan_copy, name):
    mutate, path, text = MUTATIONS[name]
    validate_plan(plan_copy)
    mutate(plan_copy)
    with pytest.raises(SolverError) as e:
        validate_plan(plan_copy)
    assert e.value.code == "PLN-SOL-005"
    assert path in e.value.message, e.value.message
    assert text in e.value.message, e.value.message
    assert "regenerate it with 'planner plan'" in e.value.message
    assert e.value.details["path"].startswith("$")


def test_not_a_plan_at_all():
    for bad in ([], "plan", None):
        with pytest.raises(SolverError) as e:
            validate_plan(bad)
        assert e.value.code == "PLN-SOL-005"
    with pytest.raises(SolverError) as e:
        validate_plan({})
    assert "is a required property" in e.value.message
