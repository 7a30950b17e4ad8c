"""Solver: options, scene, stage-1 search, exact check, plan, CLI, on the case-example phantom."""

from __future__ import annotations

import json

import numpy as np
import pytest

from planner.errors import SolverError
from planner.solve.config import SolverOptions
from planner.solve.scene import display_name, structure_class


@pytest.fixture(scope="module")
def case_dir(case_example_1mm):
    return case_example_1mm


@pytest.fixture(scope="module")
def scene(case_example_scene):
    return case_example_scene


@pytest.fixture(scope="module")
def plan_result(scene):
    from planner.solve.plan import plan

    return plan(scene, ["L3", "L4", "L5"], SolverOptions())


def test_options_validate_and_replace():
    with pytest.raises(SolverError) as e:
        SolverOptions(margins={"cord": 3.0})
    assert e.value.code == "PLN-SOL-002"
    with pytest.raises(SolverError):
        SolverOptions(weights={"length": -1})
    with pytest.raises(SolverError):
        SolverOptions(procedure="open_surgery")
    o = SolverOptions().replace(margins={"canal": 3.5})
    assert o.margins["canal"] == 3.5 and o.margins["hardware"] == 2.0
    assert SolverOptions.from_dict(o.to_dict()) == o


def test_structure_classes():
    assert structure_class("thecal_sac") == "canal"
    assert structure_class("L3_body", "L4") == "other_bone"
    assert structure_class("L4_body", "L4") is None
    assert structure_class("L4_pedicle_left", "L4") is None
    assert structure_class("L3_disc", "L4") == "disc"
    assert structure_class("L3_nerve_root_left", "L4") == "nerve_root"
    assert structure_class("screw_L3_left", "L4") == "hardware"
    assert structure_class("aorta") == "vessel"
    assert structure_class("muscle") is None
    assert display_name("screw_L3_left") == "L3 left screw"
    assert display_name("L4_pedicle_right") == "L4 right pedicle"


def test_level_frames(scene):
    assert {"L3", "L4", "L5"} <= set(scene.levels)
    for g in scene.levels.values():
        assert np.allclose(g.R.T @ g.R, np.eye(3), atol=1e-9)
        assert g.R[0, 0] > 0.9  # u points to the patient's left (+x in LPS)
        assert g.R[1, 1] > 0.9  # v posterior (+y)
        assert g.R[2, 2] > 0.9  # w superior (+z)
    assert scene.levels["L3"].screws == ["left", "right"]
    assert scene.levels["L4"].screws == ["right"]
    with pytest.raises(SolverError) as e:
        scene.level("T2")
    assert e.value.code == "PLN-SOL-001"


def test_fields_bound_hardware_exactly(scene):
    """The obstacle field (a minimum over every class) never over-states the exact clearance
    to a screw by more than half a millimetre at points near it."""
    from planner.solve import search

    opt = SolverOptions()
    f = scene.fields("L3", opt)
    screw = next(s for s in scene.solids if s.name == "screw_L3_left")
    rng = np.random.default_rng(0)
    p = screw.a + rng.normal(scale=8.0, size=(2000, 3))
    exact = screw.distance(p) - opt.margins["hardware"]
    near = (exact < 6.0) & (exact > -opt.margins["hardware"])  # outside the solid, close to it
    fv = f.grid.sample(f.F, p[near])
    assert near.sum() > 100
    assert np.all(fv <= exact[near] + 0.5)  # never optimistic beyond half a millimetre
    assert search.ROUTES[0] == "transpedicular"


def test_stage1_finds_left_transpedicular_at_l4_only(scene):
    from planner.solve import search

    opt = SolverOptions()
    out = {}
    for lv in ("L3", "L4"):
        f = scene.fields(lv, opt)
        g = scene.levels[lv]
        c = search.search_side(g, f, "left", opt, 2.1, 150.0)
        ok = (c.fail == 0) & (c.route == 0)
        out[lv] = int(ok.sum())
        assert len(c) > 10000
    assert out["L4"] > 50
    assert out["L3"] == 0  # the L3 left screw occupies the pedicle


def test_case_example_known_answers(plan_result):
    levels = {lv["level"]: lv for lv in plan_result["levels"]}
    l4 = levels["L4"]["recommendation"]
    assert l4["safe_route_found"]
    assert l4["procedure"] == "kyphoplasty" and l4["side"] == "left" and l4["route"] == "transpedicular"
    for lv in ("L3", "L5"):
        rec = levels[lv]["recommendation"]
        tp = [r for r in levels[lv]["routes"] if r["route"] == "transpedicular"]
        assert tp and all(r["status"] != "feasible" for r in tp)
        names = " ".join(r.get("reason", "") for r in tp)
        assert f"{lv} left screw" in names and f"{lv} right screw" in names
        assert rec["safe_route_found"], lv
        assert rec["procedure"] == "vertebroplasty_curved", (lv, rec)
        assert rec["route"] in ("parapedicular", "extrapedicular_superior", "extrapedicular_inferior"), (lv, rec)
        best = next(c for c in levels[lv]["candidates"] if c["id"] == rec["candidates"][0])
        assert best["curved"] is not None and best["metrics"]["coverage"]["curved_reaches_midline"]


def _independent(verify, scene, name, p0, p1):
    """Clearance (mm) of segments p0-p1 to one structure by the independent checker."""
    solid = next((s for s in scene.solids if s.name == name), None)
    if solid is not None:
        if solid.kind == "cylinder":
            return verify.primitive_clearance(p0, p1, "cylinder", a=solid.a, b=solid.b, radius=solid.radius)
        return verify.primitive_clearance(p0, p1, "tube", polyline=solid.polyline, radius=solid.radius)
    return verify.vtk_clearance(p0, p1, scene.mesh(name))


def test_recommended_candidates_pass_independent_check(scene, plan_result):
    """The recommended candidates of every level pass the independent check (below)."""
    _independent_check(scene, plan_result, recommended_only=True, at_least=3)


@pytest.mark.slow
def test_feasible_candidates_pass_independent_check(scene, plan_result):
    """Every feasible candidate passes the independent check (below)."""
    _independent_check(scene, plan_result, recommended_only=False, at_least=5)


def _independent_check(scene, plan_result, recommended_only: bool, at_least: int):
    """Candidates re-checked with VTK and primitive sampling (independent code) over the
    parts each instrument uses: the cannula part (skin to cannula tip) for all, the channel
    (cannula tip to target) for the straight needle and kyphoplasty, the curved arc against
    every implant for the curved needle.  No hard-constraint violation, and the plan's
    clearances agree with the independent ones within 0.1 mm."""
    from planner.solve.config import OBSTACLE_CLASSES
    from planner.solve.plan import level_obstacle_names

    verify = pytest.importorskip("planner.solve.verify")
    opt = SolverOptions()
    checked = 0
    for lv in plan_result["levels"]:
        level = lv["level"]
        names = level_obstacle_names(scene, level) + [s.name for s in scene.solids]
        from planner.solve.scene import structure_class

        chosen = set(lv["recommendation"]["candidates"])
        for c in lv["candidates"]:
            if not c["verdict"]["feasible"] or (recommended_only and c["id"] not in chosen):
                continue
            skin = np.array([c["skin_entry_lps_mm"]])
            tip = np.array([c["cannula_tip_lps_mm"]])
            tgt = np.array([c["target_lps_mm"]])
            parts = {"cannula": (tip, skin), "channel": (tgt, tip)}
            indep = {}
            for part, (a, b) in parts.items():
                per = {k: np.inf for k in OBSTACLE_CLASSES}
                lo, hi = np.minimum(a, b)[0] - 30.0, np.maximum(a, b)[0] + 30.0
                for name in names:
                    solid = next((s for s in scene.solids if s.name == name), None)
                    pts = (solid.points if solid is not None else scene.mesh(name).bounds)
                    if np.any(pts.min(0) > hi) or np.any(pts.max(0) < lo):
                        continue  # farther than any margin: VTK's sign far from a mesh is unreliable
                    cls = "hardware" if name.startswith("tulip_") else structure_class(name, level)
                    per[cls] = min(per[cls], float(_independent(verify, scene, name, a, b)[0]))
                indep[part] = per
                got = c["metrics"][f"{part}_axis_clearance_mm"]
                for cls in OBSTACLE_CLASSES:
                    if got[cls] is not None and got[cls] < 25.0:
                        assert abs(got[cls] - indep[part][cls]) <= 0.1, (c["id"], part, cls, got[cls], indep[part][cls])
            for kind in c["verdict"]["instruments"]:
                r = c["verdict"]["per_instrument"][kind]["radius_mm"]
                used = ["cannula"] if kind == "vertebroplasty_curved" else ["cannula", "channel"]
                for part in used:
                    for cls in OBSTACLE_CLASSES:
                        assert indep[part][cls] - r >= opt.margins[cls] - 1e-6, (c["id"], kind, part, cls, indep[part][cls])
                if kind == "vertebroplasty_curved":
                    arc = np.array(c["curved"]["path_lps_mm"])
                    from planner.instruments import get_instrument

                    rs = get_instrument(opt.curved).radius_mm
                    for s in scene.solids:
                        d = _independent(verify, scene, s.name, arc[:-1], arc[1:]).min()
                        assert d - rs >= opt.margins["hardware"] - 0.15, (c["id"], "arc", s.name, d)
            checked += 1
    assert checked >= at_least


def test_plan_is_deterministic(scene, plan_result):
    from planner.solve.api import plan_bytes
    from planner.solve.plan import plan

    again = plan(scene, ["L3", "L4", "L5"], SolverOptions())
    assert plan_bytes(again) == plan_bytes(plan_result)


def test_cli_plan_and_no_safe_route_exit(case_dir, tmp_path):
    from planner.cli import EXIT_NO_SAFE_ROUTE, EXIT_OK, main

    assert main(["plan", "-i", str(case_dir), "-o", str(tmp_path / "p"), "--levels", "L4"]) == EXIT_OK
    pj = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert pj["schema"] == "planner.plan" and pj["levels"][0]["level"] == "L4"
    opts = tmp_path / "o.json"
    opts.write_text(json.dumps({"margins": {"canal": 40.0}}))
    assert main(["plan", "-i", str(case_dir), "-o", str(tmp_path / "q"), "--levels", "L4", "--options", str(opts)]) == EXIT_NO_SAFE_ROUTE
    q = json.loads((tmp_path / "q" / "plan.json").read_text())
    assert q["summary"]["levels_without_safe_route"] == ["L4"]
    assert main(["plan", "-i", str(case_dir), "-o", str(tmp_path / "r"), "--levels", "C2"]) == 3


def test_fluoro_visibility_enters_the_score(scene, plan_result):
    """With a visibility weight, the best candidates get a C-arm view search: their score
    grows by weight x visibility of the best view, and the plan still validates."""
    from planner.solve.plan import plan
    from planner.solve.schema import validate_plan

    w = 0.2
    vis_plan = plan(scene, ["L4"], SolverOptions().replace(weights={"visibility": w}))
    validate_plan(vis_plan)
    base = {c["id"]: c for lv in plan_result["levels"] if lv["level"] == "L4" for c in lv["candidates"]}
    seen = [c for c in vis_plan["levels"][0]["candidates"] if c["metrics"]["fluoro_visibility"] is not None]
    assert len(seen) >= 3
    for c in seen:
        v = c["metrics"]["fluoro_visibility"]
        assert 0.0 <= v["visibility"] <= 1.0 and v["poses_searched"] >= 300
        assert c["score_terms"]["visibility"] == v["visibility"]
        if c["id"] in base:  # same candidate as in the plan without visibility
            assert abs(c["score"] - (base[c["id"]]["score"] + w * v["visibility"])) <= 2e-4
    ranks = [c["rank"] for c in vis_plan["levels"][0]["candidates"]]
    assert ranks == sorted(ranks)
    rec = vis_plan["levels"][0]["recommendation"]
    assert rec["procedure"] == "kyphoplasty" and rec["side"] == "left"
