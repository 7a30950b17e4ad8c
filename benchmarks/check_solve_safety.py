"""Independent safety check of the solver's plans on every phantom preset (issue 4, "Safety").

For each preset (:data:`planner.phantom.PRESETS`) the phantom is generated at ``--spacing``
(cached in ``--out``), the levels a radiologist would treat are planned with
:func:`planner.solve.plan.plan` on the phantom's ground truth, and **every candidate the
plan marks feasible and every recommended one** is re-checked here with code that shares
nothing with the solver's distance computations:

* anatomy: VTK signed distances (``vtkImplicitPolyDataDistance``, via
  :mod:`planner.solve.verify`) to the ground-truth meshes in the case's ``meshes/`` folder,
  read with :func:`planner.meshing.read_mesh`;
* implants: textbook point-to-primitive distances (:func:`planner.solve.verify.solid_sdf`)
  to the recorded screw / rod / cross-link solids of ``case.json``
  (:meth:`planner.implants.Screw.from_dict` ...);
* sampled every 0.05 mm along each part of each instrument, the minimum found
  coarse-to-fine on windows that provably hold it (:func:`reference_clearances`; the same
  guarantee as a full 0.05 mm pass: an upper bound of the exact value within 0.025 mm).

Levels treated (derived from ``case.json``, nothing per preset): the fractured levels
(``findings.fractures``) and the levels with endplate infractions (``findings.infractions``),
plus the neighbours of a fractured level that carry a pedicle screw (cement augmentation of
the instrumented neighbours next to a fracture).

Parts of an instrument (the candidate dicts carry ``cannula_tip_lps_mm`` and ``curved``):

* **cannula part**: skin entry -> cannula tip, for every instrument, at its radius;
* **channel**: cannula tip -> target, for the kyphoplasty cannula (and its bone tamp at the
  inflated radius against the hardware, as the solver requires) and the straight needle;
* **arc**: the curved needle's arc (reconstructed from the cannula tip, the needle
  direction, ``bend_lps``, ``arc_radius_mm`` and ``extension_mm``; checked against the
  arc's recorded tip), sampled every 0.05 mm of arc length, at the curved stylet's radius,
  against hardware and every anatomical class; it must stay inside the target body.
* the straight instruments' tip (the target) must be inside the target body.

A hard-margin violation is ``clearance - radius - margin < 0`` for a part and an obstacle
class (margins from the plan's own options), or a tip / arc leaving the body.  The plan's
clearances (``metrics.cannula_axis_clearance_mm``, ``metrics.channel_axis_clearance_mm``,
``curved.hardware_clearance_mm``, rounded to 0.01 mm) are compared with the independent
ones where the latter lie in ``[0, 20]`` mm.  Depth, angle and needle-length checks are
not geometry against structures and are not repeated here.

Usage (from the repository root)::

    python benchmarks/check_solve_safety.py                      # all presets at 1.0 mm
    python benchmarks/check_solve_safety.py --presets case_example --spacing 1.5

Exit status 1 when any violation is found or a clearance disagrees by more than 0.1 mm.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Obstacle classes (the solver's class names; the margins come from the plan's options).
CLASSES: tuple[str, ...] = ("hardware", "canal", "nerve_root", "lung_pleura", "vessel", "fluid", "disc", "other_bone", "rib")

#: Broad phase: a point farther than this from a mesh's bounding box is not queried (no
#: margin plus radius comes near it).
CULL_MM = 25.0
#: Clearances compared with the plan where the independent value is in [0, COMPARE_CAP_MM].
COMPARE_CAP_MM = 20.0
#: Largest allowed |plan - independent| clearance (mm), issue 4.
AGREE_MM = 0.1
#: Round-off allowance of the violation test (mm).
ROUND_OFF_MM = 1e-6


# ---------------------------------------------------------------------------- cases
def source_fingerprint() -> str:
    """Hash of the phantom and meshing sources: a cached case is regenerated when they change."""
    import planner

    root = Path(planner.__file__).parent
    h = hashlib.sha1()
    for f in sorted([*(root / "phantom").glob("*.py"), root / "meshing.py"]):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def case_folder(preset: str, spacing: float, out: Path, quiet: bool = False, mesh_spacing: float = 1.0) -> Path:
    """The cached phantom case folder of a preset at ``spacing`` mm, ground-truth meshes at
    ``mesh_spacing`` mm (generated when missing or when the phantom / meshing code changed)."""
    from planner.phantom import generate, get_preset, write_case

    folder = Path(out) / (f"{preset}_{spacing:g}mm" + ("" if mesh_spacing == 1.0 else f"_mesh{mesh_spacing:g}mm"))
    stamp = folder / "bench_fingerprint.txt"
    fp = source_fingerprint()
    if (folder / "manifest.json").is_file() and stamp.is_file() and stamp.read_text().strip() == fp:
        return folder
    if not quiet:
        print(f"generating {preset} at {spacing:g} mm into {folder} ...", flush=True)
    t = time.perf_counter()
    spec = get_preset(preset).replace_imaging(spacing_mm=(spacing, spacing, spacing))
    write_case(generate(spec), folder, dicom=False, mesh_spacing_mm=mesh_spacing)
    stamp.write_text(fp + "\n")
    if not quiet:
        print(f"  generated in {time.perf_counter() - t:.1f} s", flush=True)
    return folder


def treated_levels(case: dict[str, Any]) -> list[str]:
    """Fractured and infracted levels of ``case.json`` plus the instrumented neighbours of
    the fractured ones, in cranio-caudal order."""
    from planner.labels.registry import LEVELS

    f = case.get("findings", {})
    fractured = {x["level"] for x in f.get("fractures", [])}
    levels = fractured | {x["level"] for x in f.get("infractions", [])}
    screwed = {s["level"] for s in case.get("screws", [])}
    present = set(case.get("vertebrae", {}))
    for lv in fractured:
        i = LEVELS.index(lv)
        for j in (i - 1, i + 1):
            if 0 <= j < len(LEVELS) and LEVELS[j] in screwed and (not present or LEVELS[j] in present):
                levels.add(LEVELS[j])
    return sorted(levels, key=LEVELS.index)


# ---------------------------------------------------------------------------- ground truth
def obstacle_class(name: str, level: str) -> str | None:
    """Obstacle class of a ground-truth structure name for a target level (None: not an
    obstacle).  Written from the registry's naming, independently of the solver: the target
    level's own body, pedicles, posterior elements and lesion are where the needle goes."""
    from planner.labels.registry import parse_label

    if name in ("spinal_canal", "thecal_sac", "spinal_cord"):
        return "canal"
    if name in ("lung_left", "lung_right", "pleura"):
        return "lung_pleura"
    if name in ("aorta", "vena_cava", "iliac_artery_left", "iliac_artery_right"):
        return "vessel"
    if name == "fluid_collection":
        return "fluid"
    if name == "other_bone":
        return "other_bone"
    if name.startswith(("screw_", "rod_", "crosslink_")) or name == "other_metal":
        return "hardware"
    try:
        p = parse_label(name)
    except Exception:
        return None
    part = p.get("part") or ""
    if part.startswith("nerve_root"):
        return "nerve_root"
    if part == "disc":
        return "disc"
    if part.startswith("rib"):
        return "rib"
    if part in ("body", "pedicle_left", "pedicle_right", "posterior", "lesion"):
        return None if p.get("level") == level else "other_bone"
    return None


class GroundTruth:
    """Ground-truth meshes and implant solids of a phantom case folder."""

    def __init__(self, folder: Path) -> None:
        from planner.implants import CrossLink, Rod, Screw
        from planner.meshing import read_mesh

        self.folder = Path(folder)
        self.case = json.loads((self.folder / "case.json").read_text())
        self.implants = [
            *[Screw.from_dict(d) for d in self.case.get("screws", [])],
            *[Rod.from_dict(d) for d in self.case.get("rods", [])],
            *[CrossLink.from_dict(d) for d in self.case.get("crosslinks", [])],
        ]
        self.meshes: dict[str, Any] = {}
        for f in sorted((self.folder / "meshes").glob("*.vtp")):
            if f.stem.startswith(("screw_", "rod_", "crosslink_")):
                continue  # implants are checked as their recorded solids (case.json)
            m = read_mesh(f)
            if len(m.faces):
                self.meshes[f.stem] = m
        self._fn: dict[str, Any] = {}

    def implicit(self, name: str):
        """VTK implicit signed distance of a mesh (built once)."""
        if name not in self._fn:
            self._fn[name] = implicit(self.meshes[name])
        return self._fn[name]

    def obstacles(self, level: str) -> list[tuple[str, int]]:
        """(mesh name, class index) of the anatomical obstacles of a target level."""
        out = []
        for name in self.meshes:
            c = obstacle_class(name, level)
            if c is not None and c != "hardware":
                out.append((name, CLASSES.index(c)))
        return out

    def body(self, level: str):
        return self.meshes.get(f"{level}_body")


def implicit(mesh):
    """A ``vtkImplicitPolyDataDistance`` of a mesh with its locator built."""
    import vtk

    from planner.solve import verify

    fn = vtk.vtkImplicitPolyDataDistance()
    fn.SetInput(verify.vtk_polydata(mesh))
    fn.EvaluateFunction(0.0, 0.0, 0.0)
    return fn


def eval_implicit(fn, pts: np.ndarray) -> np.ndarray:
    """Signed distances (mm) of points (n, 3) with one vectorised VTK call."""
    import vtk
    from vtk.util import numpy_support as ns

    if not len(pts):
        return np.zeros(0)
    out = vtk.vtkDoubleArray()
    fn.FunctionValue(ns.numpy_to_vtk(np.ascontiguousarray(pts, dtype=np.float64), deep=1), out)
    return ns.vtk_to_numpy(out).astype(np.float64).copy()


# ---------------------------------------------------------------------------- clearances
def _refine(q0: np.ndarray, q1: np.ndarray, parent: np.ndarray, n: int, values, step: float):
    """One stage of the windowed minimum search.

    Samples the sub-segments ``q0``-``q1`` (owned by segments ``parent``) every ``step``
    (:func:`planner.solve.verify.dense_points`), evaluates ``values(points)`` (+inf where not
    evaluated) and keeps, as new sub-segments, ``+/- h`` around each sample whose value is at
    most the parent's sampled minimum + ``h/2`` (``h`` its sub-segment's spacing; runs of
    consecutive kept samples are merged into one window).  A signed
    distance is 1-Lipschitz, so the parent's exact minimiser lies within ``h/2`` of a sample
    with value <= exact minimum + h/2 <= sampled minimum + h/2: it stays inside the windows.
    Returns (q0, q1, parent, the parents' sampled minimum).
    """
    from planner.solve import verify

    pts, owner = verify.dense_points(q0, q1, step)
    vals = values(pts)
    L = np.linalg.norm(q1 - q0, axis=1)
    k = np.maximum(np.ceil(L / step).astype(int), 1)
    h = L / k
    first = np.concatenate([[0], np.cumsum(k + 1)[:-1]])
    t = (np.arange(len(owner)) - first[owner]) * h[owner]
    pmin = np.full(n, np.inf)
    np.minimum.at(pmin, parent[owner], vals)
    keep = np.flatnonzero(np.isfinite(vals) & (vals <= pmin[parent[owner]] + 0.5 * h[owner] + 1e-9))
    # consecutive kept samples of one sub-segment make one window (a flat minimum keeps many)
    first_of_run = np.ones(len(keep), bool)
    first_of_run[1:] = (np.diff(keep) > 1) | (owner[keep[1:]] != owner[keep[:-1]])
    last_of_run = np.ones(len(keep), bool)
    last_of_run[:-1] = first_of_run[1:]
    lo_i, hi_i = keep[first_of_run], keep[last_of_run]
    j = owner[lo_i]
    u = (q1 - q0) / np.maximum(L, 1e-12)[:, None]
    a = np.clip(t[lo_i] - h[j], 0.0, L[j])
    b = np.clip(t[hi_i] + h[j], 0.0, L[j])
    return q0[j] + a[:, None] * u[j], q0[j] + b[:, None] * u[j], parent[j], pmin


def _windowed(p0: np.ndarray, p1: np.ndarray, values, final, steps=(8.0, 2.0, 0.25)) -> np.ndarray:
    """Minimum over each segment of a 1-Lipschitz function sampled at the final step:
    coarse passes over ``steps`` narrow the segments to windows (:func:`_refine`), then
    ``final(q0, q1)`` (a 0.05 mm verifier) gives each window's minimum.  Segments whose
    sampled minimum less half a step exceeds ``COMPARE_CAP_MM`` (so the exact minimum does)
    are not refined further (their coarse value is kept: above every margin and outside the
    compared range)."""
    n = len(p0)
    q0, q1, par = p0, p1, np.arange(n)
    best = np.full(n, np.inf)
    for st in steps:
        q0, q1, par, pmin = _refine(q0, q1, par, n, values, st)
        best = np.minimum(best, pmin)
        near = pmin[par] - 0.5 * st <= COMPARE_CAP_MM
        q0, q1, par = q0[near], q1[near], par[near]
    if len(par):
        np.minimum.at(best, par, final(q0, q1))
    return best


def reference_clearances(p0, p1, named_meshes, implants, n_classes: int, hw_class: int,
                         fine_mm: float = 0.05, implicits: dict[str, Any] | None = None) -> np.ndarray:
    """Independent axis clearances (n, n_classes), mm, of segments ``p0``-``p1``.

    Per class, the minimum over the class's meshes of
    :func:`planner.solve.verify.vtk_clearance` and, for the hardware class, of
    :func:`planner.solve.verify.implant_clearance`, both at ``fine_mm``, evaluated on the
    windows that can hold the minimum (:func:`_windowed`).  Like a full ``fine_mm`` pass, the
    result is an upper bound of the exact clearance within ``fine_mm / 2`` (the windows
    contain the exact minimiser and are sampled at spacing <= ``fine_mm``).

    ``named_meshes``: (name, mesh, class index).  ``implicits``: optional cache name -> VTK
    implicit function for the coarse passes.
    """
    from planner.solve import verify

    p0 = np.atleast_2d(np.asarray(p0, float))
    p1 = np.atleast_2d(np.asarray(p1, float))
    n = len(p0)
    out = np.full((n, n_classes), np.inf)
    if not n:
        return out
    seg_lo = np.minimum(p0, p1).min(0)
    seg_hi = np.maximum(p0, p1).max(0)
    for name, mesh, ci in named_meshes:
        lo, hi = (np.asarray(x, float) for x in mesh.bounds)
        if np.any(lo - CULL_MM > seg_hi) or np.any(hi + CULL_MM < seg_lo):
            continue
        fn = implicits[name] if implicits is not None and name in implicits else implicit(mesh)

        def values(pts, fn=fn, lo=lo, hi=hi):
            v = np.full(len(pts), np.inf)
            near = np.all((pts > lo - CULL_MM) & (pts < hi + CULL_MM), axis=1)
            v[near] = eval_implicit(fn, pts[near])
            return v

        best = _windowed(p0, p1, values, lambda a, b, m=mesh: verify.vtk_clearance(a, b, m, step_mm=fine_mm))
        out[:, ci] = np.minimum(out[:, ci], best)
    if implants:
        solids = verify.implant_solids(implants)

        def hw_values(pts):
            v = np.full(len(pts), np.inf)
            for s in solids:
                v = np.minimum(v, verify.solid_sdf(pts, s))
            return v

        out[:, hw_class] = _windowed(p0, p1, hw_values, lambda a, b: verify.implant_clearance(a, b, implants, step_mm=fine_mm))
    return out


def curve_min(curve, length: float, values, coarse_mm: float = 1.0, fine_mm: float = 0.05) -> float:
    """Minimum of ``values(points)`` along a unit-speed curve ``curve(l)`` (l: arc length,
    array in, (k, 3) points out) sampled every ``fine_mm``, on windows: a ``coarse_mm`` pass
    keeps ``+/- h`` around the samples within ``h/2`` of its minimum (the function is
    1-Lipschitz in ``l``, so the exact minimiser is inside them), which are then sampled
    every ``fine_mm`` or closer."""
    k = max(int(np.ceil(length / coarse_mm)), 1)
    h = length / k
    ls = np.linspace(0.0, length, k + 1)
    v = values(curve(ls))
    m = float(v.min())
    if not np.isfinite(m):
        return m
    fine = []
    for l0 in ls[v <= m + 0.5 * h + 1e-9]:
        a, b = max(l0 - h, 0.0), min(l0 + h, length)
        fine.append(np.linspace(a, b, max(int(np.ceil((b - a) / fine_mm)), 1) + 1))
    return min(m, float(values(curve(np.concatenate(fine))).min()))


def arc_clearances(curve, length: float, gt: GroundTruth, level: str) -> np.ndarray:
    """Per-class clearance (n_classes,) of a curve (an arc of the curved needle): minimum
    signed distance to each class's meshes (VTK) and to the implant solids (primitives),
    sampled every 0.05 mm of arc length on windows (:func:`curve_min`)."""
    from planner.solve import verify

    out = np.full(len(CLASSES), np.inf)
    pts = curve(np.linspace(0.0, length, max(int(np.ceil(length)), 1) + 1))
    lo_c, hi_c = pts.min(0), pts.max(0)
    for name, ci in gt.obstacles(level):
        lo, hi = (np.asarray(x, float) for x in gt.meshes[name].bounds)
        if np.any(lo - CULL_MM > hi_c) or np.any(hi + CULL_MM < lo_c):
            continue
        fn = gt.implicit(name)

        def values(p, fn=fn, lo=lo, hi=hi):
            v = np.full(len(p), np.inf)
            near = np.all((p > lo - CULL_MM) & (p < hi + CULL_MM), axis=1)
            v[near] = eval_implicit(fn, p[near])
            return v

        out[ci] = min(out[ci], curve_min(curve, length, values))
    if gt.implants:
        solids = verify.implant_solids(gt.implants)

        def hw_values(p):
            v = np.full(len(p), np.inf)
            for s in solids:
                v = np.minimum(v, verify.solid_sdf(p, s))
            return v

        out[CLASSES.index("hardware")] = curve_min(curve, length, hw_values)
    return out


def arc_curve(tip, fwd, bend, radius: float):
    """The curved needle's arc as a unit-speed curve ``l -> points``: it leaves ``tip`` along
    ``fwd`` and bends toward ``bend``: ``p(l) = tip + R sin(l/R) fwd + R (1 - cos(l/R)) bend``."""
    fwd = np.asarray(fwd, float) / np.linalg.norm(fwd)
    bend = np.asarray(bend, float)
    bend = bend - (bend @ fwd) * fwd
    bend = bend / np.linalg.norm(bend)
    tip = np.asarray(tip, float)

    def curve(ls):
        ls = np.asarray(ls, float)
        return tip[None] + radius * np.sin(ls / radius)[:, None] * fwd[None] + radius * (1.0 - np.cos(ls / radius))[:, None] * bend[None]

    return curve


def arc_points(tip, fwd, bend, radius: float, length: float, step: float = 0.05) -> np.ndarray:
    """Points every ``step`` mm (or closer) of arc length of :func:`arc_curve`, ends included."""
    return arc_curve(tip, fwd, bend, radius)(np.linspace(0.0, length, max(int(np.ceil(length / step)), 1) + 1))


# ---------------------------------------------------------------------------- one preset
def _plan_value(d: dict[str, Any] | None, cls: str) -> float:
    v = (d or {}).get(cls)
    return float(v) if v is not None else np.inf


def check_plan(plan_result: dict[str, Any], gt: GroundTruth) -> dict[str, Any]:
    """Independently check the feasible and recommended candidates of a plan."""
    opts = plan_result["options"]
    margins = np.array([float(opts["margins"][c]) for c in CLASSES])
    hw = CLASSES.index("hardware")
    ins = plan_result.get("instruments", {})
    r_tamp = 0.5 * float(ins.get("kyphoplasty", {}).get("tamp", {}).get("inflated_diameter_mm", 0.0))
    r_arc = 0.5 * float(ins.get("vertebroplasty_curved", {}).get("stylet_od_mm", 0.0))
    violations: list[str] = []
    diffs: list[float] = []
    n_checked = n_parts = 0
    arc_tip_err = 0.0
    min_excess = np.inf
    min_depth = np.inf
    recs: dict[str, dict[str, Any]] = {}
    for lv in plan_result["levels"]:
        level = lv["level"]
        rec = lv["recommendation"]
        by_id = {c["id"]: c for c in lv["candidates"]}
        recs[level] = {**rec, "chosen": [(i, by_id[i]["route"], by_id[i]["side"]) if i in by_id else (i, "?", "?")
                                         for i in rec.get("candidates") or []]}
        rec_ids = set(rec.get("candidates") or [])
        cands = [c for c in lv["candidates"] if c["verdict"]["feasible"] or c["id"] in rec_ids]
        if not cands:
            continue
        named = [(nm, gt.meshes[nm], ci) for nm, ci in gt.obstacles(level)]
        skin = np.array([c["skin_entry_lps_mm"] for c in cands], float)
        tgt = np.array([c["target_lps_mm"] for c in cands], float)
        tip = np.array([c.get("cannula_tip_lps_mm") or c["target_lps_mm"] for c in cands], float)
        has_tip = np.array(["cannula_tip_lps_mm" in c for c in cands])
        # cannula parts and channels in one batch
        ref = reference_clearances(np.concatenate([skin, tip]), np.concatenate([tip, tgt]), named, gt.implants,
                                   len(CLASSES), hw, implicits={nm: gt.implicit(nm) for nm, _, _ in named})
        outer, inner = ref[: len(cands)], ref[len(cands):]
        body = gt.body(level)
        body_fn = implicit(body) if body is not None else None
        for j, c in enumerate(cands):
            n_checked += 1
            per = c["verdict"]["per_instrument"]
            kinds = list(c["verdict"]["instruments"])
            if c["id"] in rec_ids and rec.get("procedure") and rec["procedure"] not in kinds:
                violations.append(f"{c['id']}: recommended for {rec['procedure']} but not feasible for it")
                kinds.append(rec["procedure"])
            m = c["metrics"]
            # plan clearances vs independent, per part
            for cls_i, cls in enumerate(CLASSES):
                for plan_d, ind in ((m.get("cannula_axis_clearance_mm"), outer[j, cls_i]),
                                    (m.get("channel_axis_clearance_mm"), inner[j, cls_i])):
                    if plan_d is None:
                        continue
                    pv = _plan_value(plan_d, cls)
                    if 0.0 <= ind <= COMPARE_CAP_MM and np.isfinite(pv):
                        diffs.append(abs(pv - ind))
            if not has_tip[j]:  # a single straight segment (older candidate format)
                for cls_i, cls in enumerate(CLASSES):
                    pv = _plan_value(m.get("axis_clearance_mm"), cls)
                    if 0.0 <= outer[j, cls_i] <= COMPARE_CAP_MM and np.isfinite(pv):
                        diffs.append(abs(pv - outer[j, cls_i]))
            for kind in kinds:
                r = float(per[kind]["radius_mm"])
                parts = [("cannula", outer[j])]
                if kind != "vertebroplasty_curved" and has_tip[j]:
                    parts.append(("channel", inner[j]))
                for part, clear in parts:
                    n_parts += 1
                    excess = clear - r - margins
                    min_excess = min(min_excess, float(excess.min()))
                    for ci in np.flatnonzero(excess < -ROUND_OFF_MM):
                        violations.append(f"{c['id']} {kind} {part}: {CLASSES[ci]} clearance {clear[ci] - r:.3f} mm "
                                          f"< margin {margins[ci]:.2f} mm")
                if kind != "vertebroplasty_curved" and body_fn is not None:
                    depth = -float(eval_implicit(body_fn, tgt[j][None])[0])
                    min_depth = min(min_depth, depth)
                    if depth < r:
                        violations.append(f"{c['id']} {kind}: tip {depth:.2f} mm inside the {level} body (< radius {r:.2f})")
                if kind == "kyphoplasty" and has_tip[j] and r_tamp > 0:
                    n_parts += 1
                    tc = inner[j, hw] - r_tamp
                    if tc - margins[hw] < -ROUND_OFF_MM:
                        violations.append(f"{c['id']} bone tamp: hardware clearance {tc:.3f} mm < margin {margins[hw]:.2f} mm")
                if kind == "vertebroplasty_curved":
                    arc = c.get("curved")
                    if not arc:
                        violations.append(f"{c['id']}: feasible for the curved needle but has no arc")
                        continue
                    curve = arc_curve(tip[j], tgt[j] - skin[j], arc["bend_lps"], float(arc["arc_radius_mm"]))
                    length = float(arc["extension_mm"])
                    pts = arc_points(tip[j], tgt[j] - skin[j], arc["bend_lps"], float(arc["arc_radius_mm"]), length)
                    arc_tip_err = max(arc_tip_err, float(np.linalg.norm(pts[-1] - np.asarray(arc["tip_lps_mm"], float))))
                    n_parts += 1
                    clear = arc_clearances(curve, length, gt, level)
                    excess = clear - r_arc - margins
                    min_excess = min(min_excess, float(excess.min()))
                    for ci in np.flatnonzero(excess < -ROUND_OFF_MM):
                        violations.append(f"{c['id']} curved arc: {CLASSES[ci]} clearance {clear[ci] - r_arc:.3f} mm "
                                          f"< margin {margins[ci]:.2f} mm")
                    if arc.get("hardware_clearance_mm") is not None and 0.0 <= clear[hw] <= COMPARE_CAP_MM:
                        diffs.append(abs(float(arc["hardware_clearance_mm"]) - (clear[hw] - r_arc)))
                    if body_fn is not None:
                        depth = -float(eval_implicit(body_fn, pts).max())
                        min_depth = min(min_depth, depth)
                        if depth < r_arc:
                            violations.append(f"{c['id']} curved arc: {depth:.2f} mm inside the {level} body (< radius {r_arc:.2f})")
    return {
        "checked": n_checked,
        "parts": n_parts,
        "violations": violations,
        "max_diff_mm": max(diffs) if diffs else float("nan"),
        "n_diffs": len(diffs),
        "min_excess_mm": min_excess,
        "min_body_depth_mm": min_depth,
        "arc_tip_error_mm": arc_tip_err,
        "recommendations": recs,
    }


def check_preset(preset: str, spacing: float, out: Path, levels: list[str] | None = None, quiet: bool = False,
                 mesh_spacing: float = 1.0) -> dict[str, Any]:
    """Generate (or reuse) a preset, plan its treated levels (or ``levels``) and check the
    plan.  The plan and the check use the same ground-truth meshes (``mesh_spacing``)."""
    from planner.solve.config import SolverOptions
    from planner.solve.plan import plan
    from planner.solve.scene import Scene

    folder = case_folder(preset, spacing, out, quiet=quiet, mesh_spacing=mesh_spacing)
    gt = GroundTruth(folder)
    levels = list(levels) if levels else treated_levels(gt.case)
    t = time.perf_counter()
    result = plan(Scene.from_phantom_case(folder), levels, SolverOptions())
    t_plan = time.perf_counter() - t
    t = time.perf_counter()
    res = check_plan(result, gt)
    res.update({"preset": preset, "levels": levels, "plan_s": t_plan, "check_s": time.perf_counter() - t})
    return res


def report(res: dict[str, Any]) -> None:
    """Print one preset's result."""
    ok = not res["violations"] and not (res["max_diff_mm"] > AGREE_MM)
    print(f"\n== {res['preset']}: levels planned {', '.join(res['levels'])} (plan {res['plan_s']:.1f} s, check {res['check_s']:.1f} s)")
    print(f"  feasible/recommended candidates checked: {res['checked']} ({res['parts']} instrument parts)"
          + ("  -- nothing to check: no level has a feasible candidate" if not res["checked"] else ""))
    print(f"  hard-margin violations: {len(res['violations'])}")
    for v in res["violations"][:20]:
        print(f"    {v}")
    if len(res["violations"]) > 20:
        print(f"    ... and {len(res['violations']) - 20} more")
    print(f"  largest |plan clearance - independent clearance|: {res['max_diff_mm']:.4f} mm over {res['n_diffs']} values "
          f"(limit {AGREE_MM} mm); smallest excess over a margin {res['min_excess_mm']:.3f} mm; "
          f"smallest tip/arc depth in the body {res['min_body_depth_mm']:.2f} mm; arc tip reconstruction "
          f"error {res['arc_tip_error_mm']:.3f} mm")
    for level, rec in res["recommendations"].items():
        if rec.get("safe_route_found"):
            chosen = ", ".join(f"{i}: {r} {sd}" for i, r, sd in rec["chosen"])
            note = f"; {rec['conflict_note']}" if rec.get("conflict_note") else ""
            print(f"  {level}: {rec['procedure']}, {rec['access']}, {rec.get('route')}, {rec.get('side')} ({chosen}{note})")
        else:
            print(f"  {level}: no safe route")
    print(f"  {'PASS' if ok else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    from planner.phantom import PRESETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spacing", type=float, default=1.0, help="phantom voxel spacing, mm (default 1.0)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "planner_bench_solve",
                    help="folder for the cached phantom cases (reruns skip generation)")
    ap.add_argument("--presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--levels", nargs="*", default=None, help="plan these levels instead of the treated ones")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    bad = 0
    for preset in args.presets:
        res = check_preset(preset, args.spacing, args.out, args.levels)
        report(res)
        bad += bool(res["violations"]) or bool(res["max_diff_mm"] > AGREE_MM)
    print(f"\n{len(args.presets) - bad} of {len(args.presets)} presets pass")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
