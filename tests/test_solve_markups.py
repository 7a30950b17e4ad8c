"""Slicer markups (.mrk.json): trajectories in (LPS and RAS, refusals) and out (loadable Line
markups, one per candidate, reading back to the same points)."""

from __future__ import annotations

import json
import math

import jsonschema
import numpy as np
import pytest

from planner.errors import ERROR_CODES, InputError, SolverError
from planner.solve.markups import (
    MARKUPS_SCHEMA_URL,
    candidates_to_markups,
    plan_to_markups,
    read_markups,
    select_trajectory,
    trajectories_from_markups,
    write_markups,
)

SCHEMA = "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#"

# A line as Slicer 5 saves it (trimmed display block), LPS.
LINE_LPS = """{
"@schema": "SCHEMA_URL",
"markups": [{
  "type": "Line", "name": "L4 left", "coordinateSystem": "LPS", "coordinateUnits": "mm",
  "locked": false, "fixedNumberOfControlPoints": false, "labelFormat": "%N-%d", "lastUsedControlPointNumber": 2,
  "controlPoints": [
    {"id": "1", "label": "L-1", "description": "", "associatedNodeID": "", "position": [71.5, 85.25, -40.0],
     "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0], "selected": true, "locked": false,
     "visibility": true, "positionStatus": "defined"},
    {"id": "2", "label": "L-2", "description": "", "associatedNodeID": "", "position": [10.5, -1.0, -48.25],
     "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0], "selected": true, "locked": false,
     "visibility": true, "positionStatus": "defined"}
  ],
  "measurements": [{"name": "length", "enabled": true, "value": 106.9, "units": "mm", "printFormat": "%-#4.4gmm"}],
  "display": {"visibility": true, "opacity": 1.0, "color": [0.4, 1.0, 1.0], "selectedColor": [1.0, 0.5, 0.5]}
}]
}""".replace("SCHEMA_URL", SCHEMA)

# The same line written in RAS (x and y negated), units as a UCUM coded entry.
LINE_RAS = """{
"@schema": "SCHEMA_URL",
"markups": [{
  "type": "Line", "name": "L4 left (RAS)", "coordinateSystem": "RAS", "coordinateUnits": ["mm", "UCUM", "millimeter"],
  "controlPoints": [
    {"label": "L-1", "position": [-71.5, -85.25, -40.0]},
    {"label": "L-2", "position": [-10.5, 1.0, -48.25]}
  ]
}]
}""".replace("SCHEMA_URL", SCHEMA)

ENTRY = np.array([71.5, 85.25, -40.0])
TARGET = np.array([10.5, -1.0, -48.25])


def _doc(**markup):
    base = {"type": "Line", "name": "t", "coordinateSystem": "LPS",
            "controlPoints": [{"position": list(ENTRY)}, {"position": list(TARGET)}]}
    base.update(markup)
    return {"@schema": SCHEMA, "markups": [{k: v for k, v in base.items() if v is not KeyError}]}


def _code(doc, code, text, **kw):
    with pytest.raises(SolverError) as e:
        trajectories_from_markups(doc, **kw)
    assert e.value.code == code, e.value
    assert text in e.value.message, e.value.message
    return e.value


# ---------------------------------------------------------------------------- reading
def test_read_lps_line(tmp_path):
    f = tmp_path / "line.mrk.json"
    f.write_text(LINE_LPS)
    (t,) = read_markups(f)
    assert t.name == "L4 left" and t.markup_type == "Line" and t.coordinate_system == "LPS"
    np.testing.assert_array_equal(t.entry_lps, ENTRY)
    np.testing.assert_array_equal(t.target_lps, TARGET)
    assert t.length_mm == pytest.approx(float(np.linalg.norm(ENTRY - TARGET)))
    assert t.to_dict()["entry_lps_mm"] == list(ENTRY)


def test_read_ras_line_converts_to_lps(tmp_path):
    f = tmp_path / "ras.mrk.json"
    f.write_text(LINE_RAS)
    (t,) = read_markups(f)
    assert t.coordinate_system == "RAS"
    np.testing.assert_array_equal(t.entry_lps, ENTRY)  # (-x, -y, z)
    np.testing.assert_array_equal(t.target_lps, TARGET)
    (lps,) = trajectories_from_markups(json.loads(LINE_LPS))
    np.testing.assert_array_equal(lps.entry_lps, t.entry_lps)


def test_swap_and_contradicting_labels():
    (t,) = trajectories_from_markups(_doc(), swap=True)
    np.testing.assert_array_equal(t.entry_lps, TARGET)
    np.testing.assert_array_equal(t.target_lps, ENTRY)
    labelled = _doc(controlPoints=[{"label": "target", "position": list(TARGET)}, {"label": "Entry", "position": list(ENTRY)}])
    _code(labelled, "PLN-MRK-001", "contradict the order", swap=False)
    (t,) = trajectories_from_markups(labelled, swap=True)
    np.testing.assert_array_equal(t.entry_lps, ENTRY)
    ok = _doc(controlPoints=[{"label": "entry", "position": list(ENTRY)}, {"label": "target", "position": list(TARGET)}])
    _code(ok, "PLN-MRK-001", "drop swap", swap=True)


def test_two_point_fiducial_list_is_a_trajectory():
    (t,) = trajectories_from_markups(_doc(type="Fiducial"))
    assert t.markup_type == "Fiducial"
    np.testing.assert_array_equal(t.target_lps, TARGET)
    three = _doc(type="Fiducial", controlPoints=[{"position": [0, 0, 0]}, {"position": [1, 1, 1]}, {"position": [2, 2, 2]}])
    e = _code(three, "PLN-MRK-001", "has 3 control point(s); a trajectory needs exactly 2")
    assert e.details["control_points"] == 3


def test_missing_coordinate_system_is_refused_unless_decided():
    doc = _doc(coordinateSystem=KeyError)
    _code(doc, "PLN-MRK-001", "has no coordinateSystem")
    (t,) = trajectories_from_markups(doc, missing_coordinate_system="RAS")
    np.testing.assert_array_equal(t.entry_lps, ENTRY * [-1, -1, 1])
    (t,) = trajectories_from_markups(doc, missing_coordinate_system="LPS")
    np.testing.assert_array_equal(t.entry_lps, ENTRY)
    _code(_doc(coordinateSystem="ras"), "PLN-MRK-001", "use \"LPS\" or \"RAS\"")


@pytest.mark.parametrize("units", ["um", "cm", ["um", "UCUM", "micrometer"], ["mm", "DCM", "millimeter"], 1])
def test_non_mm_units_are_refused(units):
    _code(_doc(coordinateUnits=units), "PLN-MRK-001", "only mm is accepted")


def test_mm_units_forms_are_accepted():
    for units in ("mm", ["mm", "UCUM", "millimeter"], KeyError):
        (t,) = trajectories_from_markups(_doc(coordinateUnits=units))
        np.testing.assert_array_equal(t.entry_lps, ENTRY)


@pytest.mark.parametrize("points, code, text", [
    ([{"position": list(ENTRY)}], "PLN-MRK-001", "has 1 control point(s)"),
    ([], "PLN-MRK-001", "has 0 control point(s)"),
    ([{"position": [1.0, 2.0]}, {"position": list(TARGET)}], "PLN-MRK-001", "must be three numbers"),
    ([{"position": ["1", "2", "3"]}, {"position": list(TARGET)}], "PLN-MRK-001", "must be three numbers"),
    ([{"position": [True, 2, 3]}, {"position": list(TARGET)}], "PLN-MRK-001", "must be three numbers"),
    ([{"position": list(ENTRY)}, {"position": [float("nan"), 0.0, 0.0]}], "PLN-SOL-004", "not finite"),
    ([{"position": list(ENTRY)}, {"position": [math.inf, 0.0, 0.0]}], "PLN-SOL-004", "not finite"),
    ([{"position": list(ENTRY)}, {"position": list(TARGET), "positionStatus": "undefined"}], "PLN-MRK-001", "never placed"),
    ([{"position": list(ENTRY), "positionStatus": "preview"}, {"position": list(TARGET)}], "PLN-MRK-001", "never placed"),
    ([{"position": list(ENTRY)}, {"position": list(ENTRY)}], "PLN-SOL-004", "coincide"),
])
def test_bad_control_points_are_refused(points, code, text):
    _code(_doc(controlPoints=points), code, text)


def test_non_finite_json_tokens_are_refused(tmp_path):
    f = tmp_path / "nan.mrk.json"
    f.write_text(LINE_LPS.replace("[10.5, -1.0, -48.25]", "[NaN, -1.0, -48.25]"))
    with pytest.raises(SolverError) as e:
        read_markups(f)
    assert e.value.code == "PLN-SOL-004"


def test_files_that_are_not_trajectories(tmp_path):
    _code(_doc(type="Curve"), "PLN-MRK-001", "is of type 'Curve'")
    _code({"markups": []}, "PLN-MRK-001", "holds no markups")
    _code({"@schema": "https://example.invalid/markups-schema-v2.0.0.json#", "markups": _doc()["markups"]}, "PLN-MRK-001", "only Slicer markups schema v1")
    _code({"points": []}, "PLN-MRK-001", "top-level \"markups\" array")
    # no @schema at all: still read (the geometry is not ambiguous)
    (t,) = trajectories_from_markups({"markups": _doc()["markups"]})
    np.testing.assert_array_equal(t.target_lps, TARGET)
    f = tmp_path / "broken.mrk.json"
    f.write_text(LINE_LPS[:-20])
    with pytest.raises(SolverError) as e:
        read_markups(f)
    assert e.value.code == "PLN-MRK-001" and "not valid JSON" in e.value.message
    with pytest.raises(InputError) as e:
        read_markups(tmp_path / "absent.mrk.json")
    assert e.value.code == "PLN-IN-001"
    assert "PLN-MRK-001" in ERROR_CODES


def test_select_trajectory_by_name():
    doc = _doc()
    second = json.loads(json.dumps(doc["markups"][0]))
    second["name"] = "other"
    doc["markups"].append(second)
    ts = trajectories_from_markups(doc)
    assert [t.name for t in ts] == ["t", "other"] and [t.index for t in ts] == [0, 1]
    with pytest.raises(SolverError) as e:
        select_trajectory(ts)
    assert e.value.code == "PLN-MRK-001" and "--markup NAME" in e.value.message
    assert select_trajectory(ts, "other").index == 1
    with pytest.raises(SolverError):
        select_trajectory(ts, "missing")
    doc["markups"][1]["name"] = "t"
    with pytest.raises(SolverError) as e:
        select_trajectory(trajectories_from_markups(doc), "t")
    assert "2 trajectory named 't'" in e.value.message
    assert select_trajectory(ts[:1]).name == "t"


# ---------------------------------------------------------------------------- writing
def _candidate(cid, side, entry, target, feasible, rank):
    binding = None if feasible else {"constraint": "clearance_hardware", "structure": "screw_L4_right",
                                     "structure_display": "L4 right screw", "clearance_mm": 0.4, "required_mm": 3.5, "excess_mm": -3.1}
    return {
        "id": cid, "level": "L4", "side": side, "route": "transpedicular",
        "target_lps_mm": list(target), "skin_entry_lps_mm": list(entry), "bone_entry_lps_mm": list(target),
        "direction_lps": [0.0, -1.0, 0.0],
        "metrics": {"skin_to_target_mm": 90.5, "axis_clearance_mm": {"hardware": 5.0}},
        "verdict": {"feasible": feasible, "instruments": ["vertebroplasty_curved"] if feasible else [], "binding": binding},
        "score": 0.5 / rank, "rank": rank,
    }


CANDS = [
    _candidate("L4-L-transpedicular-0000000a", "left", ENTRY, TARGET, True, 1),
    _candidate("L4-R-transpedicular-0000000b", "right", ENTRY * [-1, 1, 1], TARGET * [-1, 1, 1], True, 2),
    _candidate("L4-R-parapedicular-0000000c", "right", [-60.0, 80.0, -30.0], [-8.0, -2.0, -48.0], False, 3),
]
REC = {"procedure": "kyphoplasty", "access": "unipedicular", "candidates": ["L4-R-transpedicular-0000000b"],
       "route": "transpedicular", "side": "right", "rule": "r", "safe_route_found": True}

# The constraints of Slicer's markups schema v1.0.3 that a loadable Line file must meet
# (hand-written subset: required keys, enums, array shapes, colour ranges), plus the
# @schema pattern Slicer's reader accepts.
SLICER_SUBSET = {
    "type": "object",
    "required": ["@schema", "markups"],
    "properties": {
        "@schema": {"type": "string", "pattern": r"markups-schema-v1\.[0-9]+\.[0-9]+\.json#*$"},
        "markups": {"type": "array", "items": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"enum": ["Fiducial", "Line", "Angle", "Curve", "ClosedCurve", "Plane", "ROI"]},
                "name": {"type": "string"},
                "coordinateSystem": {"enum": ["LPS", "RAS"]},
                "coordinateUnits": {"enum": ["mm", "um"]},
                "locked": {"type": "boolean"},
                "fixedNumberOfControlPoints": {"type": "boolean"},
                "labelFormat": {"type": "string"},
                "controlPoints": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"}, "label": {"type": "string"}, "description": {"type": "string"},
                        "associatedNodeID": {"type": "string"},
                        "position": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
                        "orientation": {"type": "array", "items": {"type": "number"}, "minItems": 9, "maxItems": 9},
                        "selected": {"type": "boolean"}, "locked": {"type": "boolean"}, "visibility": {"type": "boolean"},
                        "positionStatus": {"enum": ["undefined", "preview", "defined"]},
                    },
                }},
                "display": {"type": "object", "properties": {
                    "visibility": {"type": "boolean"},
                    "opacity": {"type": "number", "minimum": 0, "maximum": 1},
                    "color": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": 3, "maxItems": 3},
                    "selectedColor": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": 3, "maxItems": 3},
                }},
            },
        }},
    },
}


def test_candidates_written_as_loadable_lines(tmp_path):
    doc = candidates_to_markups(CANDS, recommendation=REC)
    jsonschema.Draft7Validator(SLICER_SUBSET).validate(doc)
    assert doc["@schema"] == MARKUPS_SCHEMA_URL
    ms = doc["markups"]
    # recommended first, then the others in the order given; name = candidate id
    assert [m["name"] for m in ms] == ["L4-R-transpedicular-0000000b", "L4-L-transpedicular-0000000a", "L4-R-parapedicular-0000000c"]
    assert all(m["type"] == "Line" and m["coordinateSystem"] == "LPS" and m["coordinateUnits"] == "mm" for m in ms)
    assert [[cp["label"] for cp in m["controlPoints"]] for m in ms] == [["entry", "target"]] * 3
    assert ms[0]["description"].startswith("L4 right transpedicular; RECOMMENDED kyphoplasty unipedicular; feasible: vertebroplasty_curved")
    assert "NOT feasible: L4 right screw (clearance 0.4 mm, required 3.5 mm)" in ms[2]["description"]
    colours = [tuple(m["display"]["color"]) for m in ms]
    assert len(set(colours)) == 3  # recommended, feasible, not feasible
    # reads back with the same convention and points
    f = write_markups(doc, tmp_path / "cands.mrk.json")
    back = read_markups(f)
    assert [t.name for t in back] == [m["name"] for m in ms]
    np.testing.assert_array_equal(back[1].entry_lps, ENTRY)
    np.testing.assert_array_equal(back[1].target_lps, TARGET)
    np.testing.assert_array_equal(back[0].entry_lps, ENTRY * [-1, 1, 1])
    # deterministic bytes
    first = f.read_bytes()
    write_markups(candidates_to_markups(CANDS, recommendation=REC), f)
    assert f.read_bytes() == first
    with pytest.raises(SolverError):
        candidates_to_markups(CANDS, recommendation={**REC, "candidates": ["L4-L-none-00000000"]})
    bad = dict(CANDS[0], target_lps_mm=[float("nan"), 0.0, 0.0])
    with pytest.raises(SolverError) as e:
        candidates_to_markups([bad])
    assert e.value.code == "PLN-SOL-004"


def test_plan_written_as_markups():
    blocked = {"side": "left", "route": "parapedicular", "status": "blocked", "binding": None,
               "reason": "L3 left screw too close: clearance 0.5 mm, margin 2.0 mm",
               "closest_candidate": "L4-L-parapedicular-0000000d",
               "closest_candidate_metrics": {"skin_entry_lps_mm": [80.0, 80.0, -30.0], "target_lps_mm": [5.0, -3.0, -47.0]}}
    plan = {"levels": [
        {"level": "L4", "candidates": CANDS[:2], "routes": [blocked], "recommendation": REC},
        {"level": "L5", "candidates": [], "routes": [], "recommendation": {"procedure": None, "access": None, "candidates": [],
                                                                          "safe_route_found": False}},
    ]}
    names = [m["name"] for m in plan_to_markups(plan)["markups"]]
    assert names == ["L4-R-transpedicular-0000000b", "L4-L-transpedicular-0000000a"]
    assert [m["name"] for m in plan_to_markups(plan, only_recommended=True)["markups"]] == ["L4-R-transpedicular-0000000b"]
    withb = plan_to_markups(plan, include_blocked=True)["markups"]
    assert withb[-1]["name"] == "L4-L-parapedicular-0000000d" and "BLOCKED: L3 left screw too close" in withb[-1]["description"]
    jsonschema.Draft7Validator(SLICER_SUBSET).validate({"@schema": MARKUPS_SCHEMA_URL, "markups": withb})
    assert plan_to_markups(plan, levels=["L5"])["markups"] == []
    with pytest.raises(SolverError) as e:
        plan_to_markups(plan, levels=["L2"])
    assert e.value.code == "PLN-SOL-001"
