"""'planner evaluate': one given trajectory (arguments or a Slicer markups line) -> verdict,
metrics, evaluation.json; exit 0 feasible, 4 not feasible, 2 usage, 3 typed error.

The first tests check the command's plumbing with a stand-in evaluator; the last ones run
the real :mod:`planner.solve.evaluate` on the case-example phantom and hold it to its
contract (a candidate of the plan schema's form, the plan's own verdict for a plan's
candidate)."""

from __future__ import annotations

import copy
import json
import sys
import types

import numpy as np
import pytest

from planner.cli import EXIT_NO_SAFE_ROUTE, EXIT_OK, EXIT_PLANNER_ERROR, EXIT_USAGE, main
from planner.solve.schema import validate_candidate

ENTRY = [71.5, 85.25, -40.0]
TARGET = [10.5, -1.0, -48.25]


def _fake_candidate(entry, target, feasible: bool) -> dict:
    inst = {"feasible": feasible, "violations": [], "needle_length_mm": 150.0, "radius_mm": 1.524}
    binding = None if feasible else {"constraint": "clearance_hardware", "structure": "screw_L4_right",
                                     "structure_display": "L4 right screw", "clearance_mm": -1.2, "required_mm": 3.5,
                                     "excess_mm": -4.7}
    d = np.subtract(target, entry)
    return {
        "id": "L4-L-transpedicular-0123abcd", "level": "L4", "side": "left", "route": "transpedicular",
        "target_lps_mm": list(target), "skin_entry_lps_mm": list(entry), "bone_entry_lps_mm": list(target),
        "direction_lps": list(d / np.linalg.norm(d)),
        "metrics": {
            "skin_to_target_mm": 106.9, "skin_to_body_mm": 100.0, "in_body_mm": 6.9, "pedicle_inside_mm": 12.0,
            "tilt_from_vertical_deg": 35.0, "craniocaudal_deg": 4.0, "bone_entry_angle_deg": 30.0,
            "axis_clearance_mm": {c: (None if c == "rib" else 9.0) for c in
                                  ("hardware", "canal", "nerve_root", "lung_pleura", "vessel", "fluid", "disc", "other_bone", "rib")},
            "closest_structure": {"hardware": "rod_left"},
            "coverage": {"straight_zones": ["ipsilateral"], "curved_zones": ["ipsilateral", "midline"],
                         "curved_reaches_midline": True, "curved_reaches_far_side": False, "curved_far_reach_mm": float("nan")},
            "fluoro_visibility": None,
        },
        "verdict": {"feasible": feasible, "instruments": ["vertebroplasty_curved"] if feasible else [],
                    "per_instrument": {k: dict(inst) for k in ("kyphoplasty", "vertebroplasty_straight", "vertebroplasty_curved")},
                    "binding": binding},
        "score": 0.42,
        "score_terms": {"clearance": 1.0, "length": 0.2, "entry_angle": 0.5, "coverage": 0.5, "kyphoplasty": 0.0, "visibility": 0.0},
        "run": {"total_s": 0.001},
    }


@pytest.fixture
def fake(monkeypatch):
    """Stand-ins for the scene loader and the evaluator; records the calls."""
    calls: list[dict] = []
    state = {"feasible": True}

    def evaluate_trajectory(scene, level, entry_lps, target_lps, options=None, side=None):
        calls.append({"scene": scene, "level": level, "entry": np.asarray(entry_lps, float), "target": np.asarray(target_lps, float),
                      "options": options, "side": side})
        return _fake_candidate(list(map(float, entry_lps)), list(map(float, target_lps)), state["feasible"])

    mod = types.ModuleType("planner.solve.evaluate")
    mod.evaluate_trajectory = evaluate_trajectory
    monkeypatch.setitem(sys.modules, "planner.solve.evaluate", mod)
    import planner.solve.api as api

    scene = types.SimpleNamespace(source={"kind": "phantom_ground_truth", "case": "stand_in"}, levels={"L3": None, "L4": None})
    monkeypatch.setattr(api, "load_scene", lambda path, anchor=None: scene)
    return types.SimpleNamespace(calls=calls, state=state)


def test_fake_candidate_is_schema_form():
    c = _fake_candidate(ENTRY, TARGET, True)
    c["metrics"]["coverage"]["curved_far_reach_mm"] = None
    validate_candidate({k: v for k, v in c.items() if k != "run"})


def test_arguments_feasible_writes_evaluation(fake, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["evaluate", "-i", str(tmp_path), "--level", "L4", "--entry", *map(str, ENTRY), "--target", *map(str, TARGET),
               "--side", "left", "-o", str(out)])
    assert rc == EXIT_OK
    (call,) = fake.calls
    assert call["level"] == "L4" and call["side"] == "left" and call["options"] is None
    np.testing.assert_array_equal(call["entry"], ENTRY)
    np.testing.assert_array_equal(call["target"], TARGET)
    text = capsys.readouterr().out
    assert "FEASIBLE for vertebroplasty_curved" in text and "hardware 9.0 (rod_left)" in text
    raw = (out / "evaluation.json").read_text()
    ev = json.loads(raw)
    assert ev["schema"] == "planner.evaluation" and ev["frame"] == "LPS" and ev["units"] == "mm"
    assert ev["input"]["kind"] == "arguments" and ev["input"]["entry_lps_mm"] == ENTRY
    assert "run" not in ev["candidate"]  # timings stay out of the file
    assert ev["candidate"]["metrics"]["coverage"]["curved_far_reach_mm"] is None  # NaN -> null
    assert "NaN" not in raw
    assert ev["options"]["margins"]["hardware"] == 2.0
    validate_candidate(ev["candidate"])
    # the evaluated line, as a Slicer markups file
    from planner.solve.markups import read_markups

    (line,) = read_markups(out / "evaluation.mrk.json")
    assert line.name == ev["candidate"]["id"]
    np.testing.assert_array_equal(line.entry_lps, ENTRY)
    # deterministic bytes
    assert main(["evaluate", "-i", str(tmp_path), "--level", "L4", "--entry", *map(str, ENTRY), "--target", *map(str, TARGET),
                 "--side", "left", "-o", str(out)]) == EXIT_OK
    assert (out / "evaluation.json").read_text() == raw


def test_not_feasible_exits_4(fake, tmp_path, capsys):
    fake.state["feasible"] = False
    rc = main(["evaluate", "-i", str(tmp_path), "--level", "L4", "--entry", *map(str, ENTRY), "--target", *map(str, TARGET), "--json"])
    assert rc == EXIT_NO_SAFE_ROUTE
    printed = json.loads(capsys.readouterr().out)
    assert printed["candidate"]["verdict"]["feasible"] is False and printed["output"] is None
    assert fake.calls[0]["side"] is None


def test_ras_markups_reach_the_evaluator_as_lps(fake, tmp_path):
    f = tmp_path / "line.mrk.json"
    f.write_text(json.dumps({"@schema": "markups-schema-v1.0.3.json#", "markups": [{
        "type": "Line", "name": "drawn", "coordinateSystem": "RAS", "coordinateUnits": "mm",
        "controlPoints": [{"position": [-ENTRY[0], -ENTRY[1], ENTRY[2]]}, {"position": [-TARGET[0], -TARGET[1], TARGET[2]]}]}]}))
    out = tmp_path / "o"
    assert main(["evaluate", "-i", str(tmp_path), "--level", "L4", "--markups", str(f), "-o", str(out)]) == EXIT_OK
    np.testing.assert_array_equal(fake.calls[-1]["entry"], ENTRY)
    np.testing.assert_array_equal(fake.calls[-1]["target"], TARGET)
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["input"] == {"kind": "markups", "file": "line.mrk.json", "markup": "drawn", "file_coordinate_system": "RAS",
                           "swapped": False, "side": None, "entry_lps_mm": ENTRY, "target_lps_mm": TARGET}
    assert main(["evaluate", "-i", str(tmp_path), "--level", "L4", "--markups", str(f), "--swap"]) == EXIT_OK
    np.testing.assert_array_equal(fake.calls[-1]["entry"], TARGET)


def test_options_file_reaches_the_evaluator(fake, tmp_path):
    opts = tmp_path / "o.json"
    opts.write_text(json.dumps({"margins": {"canal": 4.0}}))
    assert main(["evaluate", "-i", str(tmp_path), "--level", "L4", "--entry", *map(str, ENTRY), "--target", *map(str, TARGET),
                 "--options", str(opts)]) == EXIT_OK
    assert fake.calls[-1]["options"].margins["canal"] == 4.0


def test_usage_and_typed_errors(fake, tmp_path, capsys):
    base = ["evaluate", "-i", str(tmp_path), "--level", "L4"]
    # usage errors: exit 2
    assert main(base + ["--entry", *map(str, ENTRY)]) == EXIT_USAGE
    assert main(base) == EXIT_USAGE
    assert main(base + ["--entry", *map(str, ENTRY), "--target", *map(str, TARGET), "--swap"]) == EXIT_USAGE
    f = tmp_path / "l.mrk.json"
    f.write_text(json.dumps({"markups": [{"type": "Line", "controlPoints": [{"position": ENTRY}, {"position": TARGET}]}]}))
    assert main(base + ["--markups", str(f), "--entry", *map(str, ENTRY)]) == EXIT_USAGE
    with pytest.raises(SystemExit) as e:
        main(base + ["--entry", "1", "2", "--target", *map(str, TARGET)])  # argparse: wrong arity
    assert e.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as e:
        main(base + ["--entry", *map(str, ENTRY), "--target", *map(str, TARGET), "--side", "both"])
    assert e.value.code == EXIT_USAGE
    capsys.readouterr()
    # typed errors: exit 3 with the code printed (main's PlannerError mapping)
    assert main(base + ["--markups", str(f)]) == EXIT_PLANNER_ERROR  # no coordinateSystem
    assert "error [PLN-MRK-001]" in capsys.readouterr().err
    assert main(base + ["--markups", str(tmp_path / "missing.mrk.json")]) == EXIT_PLANNER_ERROR
    assert "error [PLN-IN-001]" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{margins")
    assert main(base + ["--entry", *map(str, ENTRY), "--target", *map(str, TARGET), "--options", str(bad)]) == EXIT_PLANNER_ERROR
    assert "error [PLN-SOL-002]" in capsys.readouterr().err
    assert not fake.calls


# ---------------------------------------------------------------------------- the real evaluator
@pytest.fixture(scope="module")
def case(case_example_1mm, case_example_scene):
    from planner.solve.plan import plan

    out, scene = case_example_1mm, case_example_scene
    result = plan(scene, ["L4"])
    return types.SimpleNamespace(dir=out, scene=scene, plan=result)


def test_contract_of_planner_solve_evaluate(case):
    from planner.solve.evaluate import TrajectoryEvaluator, evaluate_trajectory

    lv = case.plan["levels"][0]
    assert lv["candidates"], "L4 of case_example has no feasible candidate to evaluate"
    c = lv["candidates"][0]
    ev = TrajectoryEvaluator(case.scene, "L4")
    got = ev.evaluate(c["skin_entry_lps_mm"], c["target_lps_mm"], side=c["side"])
    validate_candidate(copy.deepcopy(got))
    assert got["side"] == c["side"] and got["route"] == c["route"] and got["level"] == "L4"
    assert got["verdict"]["feasible"] and set(got["verdict"]["instruments"]) == set(c["verdict"]["instruments"])
    for cls, v in c["metrics"]["axis_clearance_mm"].items():
        if v is not None:
            assert abs(got["metrics"]["axis_clearance_mm"][cls] - v) <= 0.1, (cls, got["metrics"]["axis_clearance_mm"][cls], v)
    once = evaluate_trajectory(case.scene, "L4", c["skin_entry_lps_mm"], c["target_lps_mm"], side=c["side"])
    assert once["verdict"] == got["verdict"] and once["id"] == got["id"]


def test_cli_evaluates_a_plan_candidate_from_slicer_markups(case, tmp_path, capsys):
    """The plan's recommended needle, exported as markups, converted to RAS as a user's
    Slicer file might be, evaluates feasible through the CLI with the plan's verdict."""
    from planner.solve.markups import plan_to_markups

    lv = case.plan["levels"][0]
    rec = lv["recommendation"]
    assert rec["safe_route_found"]
    doc = plan_to_markups(case.plan, only_recommended=True)
    m = doc["markups"][0]
    m["coordinateSystem"] = "RAS"
    for cp in m["controlPoints"]:
        cp["position"] = [-cp["position"][0], -cp["position"][1], cp["position"][2]]
    f = tmp_path / "rec.mrk.json"
    f.write_text(json.dumps(doc))
    out = tmp_path / "ev"
    rc = main(["evaluate", "-i", str(case.dir), "--level", "L4", "--markups", str(f), "--markup", rec["candidates"][0], "-o", str(out)])
    assert rc == EXIT_OK
    ev = json.loads((out / "evaluation.json").read_text())
    validate_candidate(ev["candidate"])
    best = next(c for c in lv["candidates"] if c["id"] == rec["candidates"][0])
    assert ev["candidate"]["route"] == best["route"] and ev["candidate"]["side"] == best["side"]
    assert set(ev["candidate"]["verdict"]["instruments"]) == set(best["verdict"]["instruments"])
    np.testing.assert_allclose(ev["input"]["entry_lps_mm"], best["skin_entry_lps_mm"], atol=1e-9)
    assert "FEASIBLE" in capsys.readouterr().out


def test_cli_through_the_screw_head_is_not_feasible(case, tmp_path, capsys):
    """A line from the L4 body centre out through the right screw's head: exit 4, hardware binding."""
    geo = case.scene.level("L4")
    screw = next(s for s in case.scene.solids if s.name == "screw_L4_right")
    head = np.asarray(screw.a, float)
    u = (head - geo.centre) / np.linalg.norm(head - geo.centre)
    entry = head + 80.0 * u
    args = ["evaluate", "-i", str(case.dir), "--level", "L4", "--entry", *map(str, entry), "--target", *map(str, geo.centre), "--json"]
    assert main(args) == EXIT_NO_SAFE_ROUTE
    printed = json.loads(capsys.readouterr().out)
    cand = printed["candidate"]
    validate_candidate(cand)
    assert cand["side"] == "right" and not cand["verdict"]["feasible"]
    assert cand["verdict"]["binding"] is not None
    assert cand["metrics"]["axis_clearance_mm"]["hardware"] < 0.5


def test_cli_target_outside_the_body_is_a_typed_error(case, capsys):
    geo = case.scene.level("L4")
    outside = geo.centre + np.array([0.0, -60.0, 0.0])  # 60 mm anterior of the body centre
    rc = main(["evaluate", "-i", str(case.dir), "--level", "L4", "--entry", *map(str, geo.centre + [40.0, 90.0, 0.0]),
               "--target", *map(str, outside)])
    assert rc == EXIT_PLANNER_ERROR
    assert "error [PLN-SOL-" in capsys.readouterr().err
