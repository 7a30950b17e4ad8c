"""Benchmark: DRR speed, C-arm view-search speed and hardware overlap of the suggested views.

On the case-example phantom (L3-L5 fixation extended to T12, bilateral screws at L3 and L5):

(a) the median / min / max time of a 512 x 512 DRR (AP view, screws, rods and needle drawn
    in) against, in the same run, the straightforward full-resolution ray caster
    (``planner.fluoro.drr.raycast_reference``: trilinear ``map_coordinates`` along every
    ray, one sample per voxel spacing), with the speed ratio and the agreement of the two
    images;
(b) the time of a view search over >= 300 C-arm poses (629: LAO/RAO -90..90 x cranial /
    caudal -40..40 in 5 deg steps) for each trajectory;
(c) for each level the hardware overlap on the needle tip, the posterior wall and the path
    of AP, lateral, bull's-eye, progression and the two suggested views (``tip_wall``: the
    tip/wall monitoring view; ``wall_edge_on``: the best view that sees the posterior wall
    edge-on), the ratios suggested / AP and suggested / lateral with a verdict per
    component, and the findings of ``ViewPlan.suggest`` (which say so where no view reduces a
    component).  The wall is the posterior wall between the pedicles within 8 mm of the tip's
    height (``posterior_wall_points(..., tip_lps=tip)``); the column ``wall*`` is the overlap
    on the whole posterior surface (no pedicle or tip limit), printed for comparison;

(d) with ``plan`` trajectories (``--no-candidates`` skips it): the same view search on every
    feasible candidate the plan lists at each level, each placed with the instrument the
    level's procedure uses where the candidate allows it (else its own feasible
    instrument), one row per candidate, and per level: how many candidates have a tip (or
    wall) overlap > 0 in AP or lateral, and for those the suggested ``tip_wall`` view's
    overlap against AP's and lateral's (median, worst) with the verdict counts; the wall
    also for the ``wall_edge_on`` view against the lateral.  Candidates whose tip no usable
    pose clears (it lies within the tip disc's radius of a screw, so every projection
    overlaps) are counted apart, with the tip's distance to the hardware.  The plan lists
    few candidates (5 per level, side and route), so the same summary follows for the
    candidates of a plan with ``--shortlist`` (20) per route, planned once into
    ``plan-shortlist<N>`` next to the plan (its recommendation may differ; (a)-(c) keep the
    default plan's).

The tip is the *working* tip (``Trajectory.tip_lps``): for a curved-needle vertebroplasty
the curved stylet's tip at the end of the planned arc, where the cement leaves the needle
(the cannula tip it leaves is the views' isocentre); for a straight needle its end.

The PNGs of the views go into ``--out`` (not part of the repository), one folder per
trajectory: ``<view>.png``, ``<view>_overlay.png`` (tip ring and wall points yellow / cyan
where clear of hardware shadow, orange where partly, red where mostly covered, as scored;
a caption with the overlaps) and ``compare.png`` (AP, lateral and the two suggested views
cropped around the tip, 2x).  Folders: ``<level>`` (recommended trajectory) and, with (d),
``<level>[-<N>]-tip-demo`` (of the candidates whose tip some usable pose clears, the one
most covered in AP and lateral) and ``<level>[-<N>]-tip-uncleared`` (the same among those
no pose clears), ``-<N>`` for the ``--shortlist`` plan's candidates.

Trajectories (``--trajectories``):

* ``plan`` (default): each level's recommended candidate of a ``planner plan`` of the
  case-example preset at 1 mm.  ``--plan plan.json`` takes an existing plan; otherwise the
  case is written (1 mm CT, labels, 1 mm meshes, as the test fixture does) into ``--work``
  and planned there, both reused by later runs.  A curved-needle recommendation is seen as
  its cannula plus the planned arc (``Trajectory.from_candidate(cand, procedure)``).
* ``frame``: a screw-free path built from the case's vertebral frames: a target on the
  midline in the anterior third of the body, a fifth of its height below the centre; of the
  directions (lateral angle 20-60 deg from the posterior axis, cranio-caudal -30..30 deg,
  both sides) that keep the straight needle >= 3 mm from every screw and rod and >= 14 mm
  from the canal axis the one closest to a level 35 deg approach; the skin entry where that
  line leaves the body in the CT; at a level with bilateral screws the default curved
  extension bending toward the other side.

Usage::

    python benchmarks/bench_fluoro.py                          # plan trajectories, 0.8 mm CT
    python benchmarks/bench_fluoro.py --plan plan/plan.json --out fluoro-views
    python benchmarks/bench_fluoro.py --trajectories frame
    python benchmarks/bench_fluoro.py --shortlist 0                # (d) on the plan's own candidates only

Targets (issue 5): a 512 x 512 DRR in <= 1 s on a 2-core machine; a >= 300-pose view search
in <= 2 s; suggested obliques reduce the hardware overlap on tip and posterior wall relative
to AP and lateral.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from planner.fluoro.carm import CArm
from planner.fluoro.drr import DRRRenderer, raycast_reference
from planner.fluoro.views import (
    Trajectory,
    ViewSearchSettings,
    plan_views,
    posterior_wall_points,
    score_poses,
    standard_views,
    write_view_pngs,
)

#: the speed targets of issue 5, seconds
DRR_TARGET_S = 1.0
SEARCH_TARGET_S = 2.0


def frame_trajectory(case, level: str) -> tuple[np.ndarray, np.ndarray, str]:
    """A screw-free straight path (entry, target, side) from the level's frame (module docstring)."""
    from planner.fluoro.geometry import implant_cylinders
    from planner.solve.exact import segment_segment_distance

    fr = case.scene.vertebrae[level]
    cyl = implant_cylinders(case.scene.screws + case.scene.rods + case.scene.crosslinks, 0.5)
    canal = fr.landmarks["canal_centre"]
    canal_a, canal_b = canal - 40.0 * fr.w, canal + 40.0 * fr.w
    alpha, beta = np.meshgrid(np.deg2rad(np.arange(20.0, 60.1, 5.0)), np.deg2rad(np.arange(-30.0, 30.1, 5.0)), indexing="ij")
    alpha, beta = alpha.ravel(), beta.ravel()
    best = None
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        target = fr.centre_lps - 0.3 * fr.dims["body_depth_mm"] * fr.v - 0.2 * fr.dims["body_height_posterior_mm"] * fr.w
        n = (
            (np.cos(alpha) * np.cos(beta))[:, None] * fr.v
            + (sgn * np.sin(alpha) * np.cos(beta))[:, None] * fr.u
            + np.sin(beta)[:, None] * fr.w
        )
        far = target + 110.0 * n
        T = np.broadcast_to(target, far.shape)
        clear = (segment_segment_distance(T[:, None], far[:, None], cyl.p0[None], cyl.p1[None]) - cyl.radius).min(axis=1)
        canal_d = segment_segment_distance(T, far, canal_a[None], canal_b[None])
        # the feasible direction (>= 3 mm from hardware, >= 14 mm from the canal axis)
        # closest to a 35 deg lateral, level approach; else the clearest one
        ok = (canal_d >= 14.0) & (clear >= 3.0)
        cost = np.where(ok, np.abs(np.rad2deg(beta)) + 0.5 * np.abs(np.rad2deg(alpha) - 35.0), np.inf)
        if ok.any():
            i = int(np.lexsort((alpha, np.abs(beta), cost))[0])
            cand = (1, -float(cost[i]))
        else:
            key = np.where(canal_d >= 14.0, np.round(clear, 3), -np.inf)
            i = int(np.lexsort((np.abs(beta), alpha, -key))[0])
            cand = (0, float(key[i]))
        if np.isfinite(cand[1]) and (best is None or cand > best[0]):
            best = (cand, target, n[i], side)
    if best is None:
        raise SystemExit(f"no screw-free frame trajectory at {level}")
    _, target, n, side = best
    # skin entry: where the line leaves the body (last sample above -400 HU)
    s = np.arange(0.0, 200.0, 0.5)
    pts = target + s[:, None] * n
    ijk = np.rint(case.image.index_from_lps(pts)).astype(int)
    ok = np.all((ijk >= 0) & (ijk < np.array(case.image.shape)), axis=1)
    hu = np.full(len(s), -1000.0)
    hu[ok] = case.image.array[tuple(ijk[ok].T)]
    inside = np.flatnonzero(hu > -400.0)
    entry = target + s[inside[-1]] * n
    return entry, target, side


def with_curve(t: Trajectory, side: str) -> Trajectory:
    """The trajectory with the default curved needle's extension bending to the other side."""
    from planner.instruments import curved_needle_centreline, get_instrument

    cn = get_instrument("curved_needle")
    bend = np.array([-1.0 if side == "left" else 1.0, 0.0, 0.0])
    curve = curved_needle_centreline(t.target_lps, t.direction, bend, cn.arc_radius_mm, cn.max_extension_mm)
    return Trajectory(t.entry_lps, t.target_lps, curve_lps=curve, curve_radius_mm=cn.radius_mm)


def case_plan(work: Path, levels: list[str], shortlist: int | None = None) -> Path:
    """``plan.json`` of the case-example preset at 1 mm in ``work`` (written once, then reused);
    with ``shortlist``, planned with that ``shortlist_per_route`` into ``plan-shortlist<N>``."""
    from planner.phantom import generate, get_preset, write_case
    from planner.phantom.spec import CaseSpec
    from planner.solve.api import plan_input

    case_dir = work / "case_example_1mm"
    plan_dir = case_dir / ("plan" if shortlist is None else f"plan-shortlist{shortlist}")
    plan_path = plan_dir / "plan.json"
    if plan_path.is_file():
        have = {lv["level"] for lv in json.loads(plan_path.read_text())["levels"]}
        if set(levels) <= have:
            print(f"reusing the plan {plan_path}")
            return plan_path
    if not (case_dir / "case.json").is_file():
        t0 = time.perf_counter()
        d = get_preset("case_example").to_dict()
        d["imaging"]["spacing_mm"] = [1.0, 1.0, 1.0]
        write_case(generate(CaseSpec.from_dict(d)), case_dir, dicom=False, mesh_spacing_mm=1.0)
        print(f"wrote the case-example phantom at 1 mm to {case_dir} in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    options = None
    if shortlist is not None:
        plan_dir.mkdir(parents=True, exist_ok=True)
        options = plan_dir / "options.json"
        options.write_text(json.dumps({"shortlist_per_route": int(shortlist)}) + "\n")
    _, path = plan_input(case_dir, plan_dir, levels=list(levels), options_file=options)
    print(f"planned {', '.join(levels)} of {case_dir} in {time.perf_counter() - t0:.1f} s -> {path}")
    return path


def plan_trajectory(plan: dict, level: str) -> tuple[Trajectory, str, str]:
    """The recommended candidate of ``level`` as placed (curved: cannula + arc), its side and a label."""
    for lv in plan["levels"]:
        if lv["level"] == level:
            rec = lv["recommendation"]
            ids = rec.get("candidates") or []
            cands = {c["id"]: c for c in lv["candidates"]}
            if not ids or ids[0] not in cands:
                raise SystemExit(f"plan has no recommended candidate at {level}")
            c = cands[ids[0]]
            t = Trajectory.from_candidate(c, rec.get("procedure"))
            return t, c["side"], f"{c['id']}, {rec.get('procedure')}"
    raise SystemExit(f"level {level} not in the plan")


def candidate_procedure(cand: dict, level_procedure: str | None) -> str:
    """The instrument a candidate is placed with: the level's procedure where the candidate
    allows it, else its first feasible instrument."""
    inst = cand["verdict"]["instruments"]
    return level_procedure if level_procedure in inst else inst[0]


def candidate_views(case, plan: dict, level: str, hw: list) -> list[dict]:
    """View search of every feasible candidate of ``level`` in ``plan`` (module docstring, (d))."""
    from planner.fluoro.geometry import FluoroError

    lv = next(x for x in plan["levels"] if x["level"] == level)
    proc = lv["recommendation"].get("procedure")
    rec = set(lv["recommendation"].get("candidates") or [])
    fr = case.scene.vertebrae[level]
    rows = []
    for c in lv["candidates"]:
        if not c["verdict"]["feasible"]:
            continue
        kind = candidate_procedure(c, proc)
        t = Trajectory.from_candidate(c, kind)
        row = {"id": c["id"], "side": c["side"], "route": c["route"], "instrument": kind, "recommended": c["id"] in rec,
               "trajectory": t}
        try:
            W, N = posterior_wall_points(case.labels, level, posterior_lps=fr.v, tip_lps=t.tip_lps, return_normals=True)
        except FluoroError as exc:  # the tip is not at the height of this body's posterior wall
            row["error"] = str(exc)
            rows.append(row)
            continue
        t0 = time.perf_counter()
        vp = plan_views(t, hw, W, wall_normals=N)
        row["seconds"] = time.perf_counter() - t0
        sug = vp.suggest()
        d, who = tip_clearance(t.tip_lps, hw)
        row.update(W=W, N=N, vp=vp, ap=vp.reference["ap"], lateral=vp.reference["lateral"],
                   tip_wall=sug["tip_wall"], wall_edge_on=sug["wall_edge_on"], tip_clearance_mm=d, tip_nearest=who,
                   least_tip=float(vp.scores["tip"][vp.usable].min()))
        rows.append(row)
    return rows


def tip_clearance(tip: np.ndarray, hw: list) -> tuple[float, str]:
    """Distance (mm) from the tip point to the nearest hardware surface (the scored cylinders), and its owner."""
    from planner.fluoro.geometry import implant_cylinders

    cyl = implant_cylinders(hw, 0.5)
    ab = cyl.p1 - cyl.p0
    tt = np.clip(((tip - cyl.p0) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0.0, 1.0)
    d = np.linalg.norm(cyl.p0 + tt[:, None] * ab - tip, axis=1) - cyl.radius
    i = int(np.argmin(d))
    return float(d[i]), cyl.names[i]


def _stats(x: list[float], worst=max) -> str:
    """Median and worst (the largest overlap; ``worst=min`` for gaps)."""
    return f"median {statistics.median(x):.3f} worst {worst(x):.3f}"


VERDICTS = ("reduced", "clear in both", "not reduced", "increased", "wider", "ample in both", "same", "narrower")


def _verdict_counts(verdicts: list[str]) -> str:
    return ", ".join(f"{verdicts.count(v)} {v}" for v in VERDICTS if verdicts.count(v))


def _compare_block(comp: str, rows: list[dict], view: str = "tip_wall") -> None:
    """Suggested view's overlap of ``comp`` against AP's and lateral's over ``rows``: median,
    worst, verdict counts."""
    sv = [r[view][comp] for r in rows]
    print(f"        {view} {_stats(sv)} | AP {_stats([r['ap'][comp] for r in rows])} | "
          f"lateral {_stats([r['lateral'][comp] for r in rows])}")
    for ref in ("ap", "lateral"):
        print(f"        {view} vs {ref:8}: {_verdict_counts([r[view]['compare'][comp][f'vs_{ref}'] for r in rows])}")


def print_candidate_summary(level: str, rows: list[dict], tag: str = "") -> None:
    """Per-level counts and medians / worst values of (d)."""
    ok = [r for r in rows if "vp" in r]
    kinds = sorted({r["instrument"] for r in ok})
    per_kind = ", ".join(f"{sum(r['instrument'] == k for r in ok)} {k}" for k in kinds)
    lv = f"{level}{tag}"
    print(f"    {lv}: {len(ok)} feasible candidates searched ({per_kind})"
          + (f"; {len(rows) - len(ok)} skipped (no wall at the tip's height)" if len(rows) > len(ok) else "")
          + (f"; search median {statistics.median(r['seconds'] for r in ok):.3f} s, max {max(r['seconds'] for r in ok):.3f} s"
             if ok else ""))
    if not ok:
        return
    disc = ViewSearchSettings().tip_radius_mm
    g = [r["tip_wall"]["compare"]["tip_gap_mm"] for r in ok]
    print(f"    {lv} tip gap to the nearest hardware shadow (mm, all {len(ok)}): tip_wall {_stats([x['view'] for x in g], min)}"
          f" | AP {_stats([x['ap'] for x in g], min)} | lateral {_stats([x['lateral'] for x in g], min)}; "
          f"vs AP: {_verdict_counts([x['vs_ap'] for x in g])}; vs lateral: {_verdict_counts([x['vs_lateral'] for x in g])}")
    for comp in ("tip", "wall"):
        hit = [r for r in ok if r["ap"][comp] > 0 or r["lateral"][comp] > 0]
        hit01 = [r for r in ok if r["ap"][comp] > 0.01 or r["lateral"][comp] > 0.01]
        print(f"    {lv} {comp}: {len(hit)} of {len(ok)} candidates have {comp} overlap > 0 in AP or lateral "
              f"({len(hit01)} > 0.01); for those:")
        if not hit:
            continue
        _compare_block(comp, hit)
        below = sum(r["tip_wall"][comp] <= min(r["ap"][comp], r["lateral"][comp]) + 1e-9 for r in hit)
        print(f"        tip_wall at or below both AP and lateral in {below} of {len(hit)}")
        if comp == "tip":
            gaps = [r for r in hit if "tip_gap_mm" in r["tip_wall"]["compare"]]
            if gaps:
                g = [r["tip_wall"]["compare"]["tip_gap_mm"] for r in gaps]
                print(f"        tip gap to the nearest shadow, mm: tip_wall {_stats([x['view'] for x in g], min)} | "
                      f"AP {_stats([x['ap'] for x in g], min)} | lateral {_stats([x['lateral'] for x in g], min)}")
                for ref in ("ap", "lateral"):
                    print(f"        tip gap vs {ref:8}: {_verdict_counts([x[f'vs_{ref}'] for x in g])}")
            stuck = [r for r in hit if r["least_tip"] >= 0.01]
            clear = [r for r in hit if r["least_tip"] < 0.01]
            if stuck:
                print(f"        {len(stuck)} whose tip no usable pose clears (least tip overlap "
                      f"{_stats([r['least_tip'] for r in stuck])}): the tip lies "
                      f"{min(r['tip_clearance_mm'] for r in stuck):.1f}-{max(r['tip_clearance_mm'] for r in stuck):.1f} mm "
                      f"from a screw, inside the {disc:g} mm tip disc ({', '.join(sorted({r['tip_nearest'] for r in stuck}))})")
            if clear and stuck:
                print(f"        the {len(clear)} whose tip some usable pose clears:")
                _compare_block(comp, clear)
        if comp == "wall":
            e = [r for r in hit if r["wall_edge_on"] is not None]
            if e:
                print(f"        wall_edge_on {_stats([r['wall_edge_on']['wall'] for r in e])} | lateral "
                      f"{_stats([r['lateral']['wall'] for r in e])}; vs lateral: "
                      f"{_verdict_counts([r['wall_edge_on']['compare']['wall']['vs_lateral'] for r in e])}")


def tip_demos(rows: list[dict]) -> dict[str, dict]:
    """The candidate whose tip is most covered in AP or lateral (by the lesser of the two, then the
    larger) among those some usable pose clears (``tip-demo``), and among those none clears
    (``tip-uncleared``)."""
    ok = [r for r in rows if "vp" in r and max(r["ap"]["tip"], r["lateral"]["tip"]) > 0]
    out = {}
    for name, sel in (("tip-demo", [r for r in ok if r["least_tip"] < 0.01]),
                      ("tip-uncleared", [r for r in ok if r["least_tip"] >= 0.01])):
        if sel:
            out[name] = max(sel, key=lambda r: (min(r["ap"]["tip"], r["lateral"]["tip"]),
                                                max(r["ap"]["tip"], r["lateral"]["tip"]), r["id"]))
    return out


def print_candidate_rows(level: str, rows: list[dict]) -> None:
    print(f"    {level:5} {'candidate':42} {'instrument':23} {'AP tip':>6} {'wall':>6} {'LAT tip':>7} {'wall':>6}   "
          f"{'tip_wall view':>13} {'tip':>6} {'wall':>6} {'path':>6}   {'edge-on':>9} {'wall':>6}   {'tip-hw mm':>9}")
    for r in rows:
        name = r["id"] + (" *" if r["recommended"] else "")
        if "vp" not in r:
            print(f"    {level:5} {name:42} {r['instrument']:23} skipped: {r['error']}")
            continue
        tw, e = r["tip_wall"], r["wall_edge_on"]
        edge = f"({e['lao']:+.0f},{e['cran']:+.0f}) {e['wall']:6.3f}" if e else f"{'-':>9} {'-':>6}"
        ang = f"({tw['lao']:+.0f},{tw['cran']:+.0f})"
        print(f"    {level:5} {name:42} {r['instrument']:23} {r['ap']['tip']:6.3f} {r['ap']['wall']:6.3f} "
              f"{r['lateral']['tip']:7.3f} {r['lateral']['wall']:6.3f}   {ang:>13} "
              f"{tw['tip']:6.3f} {tw['wall']:6.3f} {tw['path']:6.3f}   {edge:>16}   {r['tip_clearance_mm']:9.1f}")


def write_compare(out_dir: Path, t: Trajectory, vp, names=("ap", "lateral", "best_oblique", "wall_edge_on"),
                  half: int = 96, zoom: int = 2) -> Path:
    """``compare.png``: the overlays of ``names`` cropped to ``2 half`` px around the tip, ``zoom``x."""
    from PIL import Image, ImageDraw

    views = standard_views(t, None, vp)
    meta = json.loads((out_dir / "views.json").read_text())["views"]
    panels = []
    for name in names:
        if name not in views or not (out_dir / f"{name}_overlay.png").is_file():
            continue
        im = Image.open(out_dir / f"{name}_overlay.png").convert("RGB")
        u, v = views[name].project(t.tip_lps[None])[0]
        u = int(np.clip(round(u), half, im.width - half))
        v = int(np.clip(round(v), half, im.height - half))
        crop = im.crop((u - half, v - half, u + half, v + half)).resize((2 * half * zoom,) * 2, Image.NEAREST)
        ov = meta[name]["overlap"]
        c = meta[name]["carm"]
        label = (f"{name} LAO {c['lao_deg']:+.0f} CRAN {c['cran_deg']:+.0f}  tip {ov['tip']:.3f} wall {ov['wall']:.3f}"
                 f" gap {meta[name]['tip_gap_mm']:.1f}mm")
        d = ImageDraw.Draw(crop)
        d.rectangle([0, 0, crop.width, 13], fill=(0, 0, 0))
        d.text((3, 1), label, fill=(255, 255, 255))
        panels.append(crop)
    w = sum(p.width for p in panels) + 4 * (len(panels) - 1)
    out = Image.new("RGB", (w, panels[0].height), (255, 255, 255))
    x = 0
    for pnl in panels:
        out.paste(pnl, (x, 0))
        x += pnl.width + 4
    path = out_dir / "compare.png"
    out.save(path)
    return path


def timed(fn, repeats: int) -> tuple[list[float], object]:
    ts, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return ts, out


def fmt_times(ts: list[float]) -> str:
    return f"median {statistics.median(ts):.3f} s  min {min(ts):.3f}  max {max(ts):.3f}  (n={len(ts)})"


def met(value: float, target: float) -> str:
    return f"target <= {target:g} s: {'met' if value <= target else 'NOT met'}"


def fmt_ratio(r: float | None) -> str:
    return "   -  " if r is None else f"{r:6.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spacing", type=float, default=0.8, help="phantom CT spacing for the DRRs, mm")
    ap.add_argument("--repeats", type=int, default=5, help="DRR repeats")
    ap.add_argument("--baseline-repeats", type=int, default=1)
    ap.add_argument("--search-repeats", type=int, default=3)
    ap.add_argument("--levels", nargs="+", default=["L3", "L5"])
    ap.add_argument("--trajectories", choices=("plan", "frame"), default="plan")
    ap.add_argument("--plan", type=Path, help="plan.json of 'planner plan' (recommended candidates)")
    ap.add_argument("--work", type=Path, default=Path("bench-output") / "fluoro-work",
                    help="folder for the 1 mm case and its plan (reused)")
    ap.add_argument("--out", type=Path, default=Path("bench-output") / "fluoro", help="folder for the PNGs")
    ap.add_argument("--no-candidates", action="store_true", help="skip (d), the view search on every feasible candidate")
    ap.add_argument("--shortlist", type=int, default=20,
                    help="(d) also on the candidates of a plan with this many per (level, side, route) (the solver's "
                         "shortlist_per_route; planned once into <work>/case_example_1mm/plan-shortlist<N>); 0: not")
    args = ap.parse_args()

    from planner.phantom import generate, get_preset

    trajs: dict[str, Trajectory] = {}
    plan = None
    if args.trajectories == "plan":
        plan_path = args.plan or case_plan(args.work, args.levels)
        plan = json.loads(Path(plan_path).read_text())
        for lv in args.levels:
            t, side, what = plan_trajectory(plan, lv)
            trajs[lv] = t
            print(f"{lv} trajectory (recommended: {what}, {side}): entry {np.round(t.entry_lps, 1).tolist()} "
                  f"cannula/needle end {np.round(t.target_lps, 1).tolist()} tip {np.round(t.tip_lps, 1).tolist()} "
                  f"straight part {t.length_mm:.1f} mm{', curved arc' if t.curve_lps is not None else ''}")

    t0 = time.perf_counter()
    case = generate(get_preset("case_example").replace_imaging(spacing_mm=(args.spacing,) * 3))
    ct = case.image
    hw = case.scene.screws + case.scene.rods + case.scene.crosslinks
    print(f"case_example CT {ct.shape[0]}x{ct.shape[1]}x{ct.shape[2]} at {args.spacing} mm "
          f"({np.prod(ct.shape) / 1e6:.1f} Mvox), {len(case.scene.screws)} screws, {len(case.scene.rods)} rods; "
          f"generated in {time.perf_counter() - t0:.1f} s")
    if args.trajectories == "frame":
        for lv in args.levels:
            entry, target, side = frame_trajectory(case, lv)
            t = Trajectory(entry, target)
            bilateral = {s.side for s in case.scene.screws if s.level == lv} == {"left", "right"}
            trajs[lv] = with_curve(t, side) if bilateral else t
            print(f"{lv} trajectory (vertebral frame, screw-free path, {side}{', curved extension' if bilateral else ''}): "
                  f"entry {np.round(entry, 1).tolist()} target {np.round(target, 1).tolist()} "
                  f"tip {np.round(trajs[lv].tip_lps, 1).tolist()} length {t.length_mm:.1f} mm")

    # ---- (a) DRR speed -----------------------------------------------------------------------
    lv0 = args.levels[0]
    carm = CArm(isocentre_lps=tuple(trajs[lv0].target_lps))
    t0 = time.perf_counter()
    rend = DRRRenderer(ct)
    prep = time.perf_counter() - t0
    ts_full, im = timed(lambda: rend.render(carm, hw, [trajs[lv0]]), args.repeats)
    ts_ct, fast_ct = timed(lambda: rend.ct_line_integrals(carm), args.repeats)
    ts_base, base = timed(lambda: raycast_reference(ct, carm), max(1, args.baseline_repeats))
    rel = float(np.abs(fast_ct - base).sum() / np.abs(base).sum())
    corr = float(np.corrcoef(fast_ct.ravel(), base.ravel())[0, 1])
    views = standard_views(trajs[lv0], carm)
    ts_views = []
    for c in views.values():
        ts, _ = timed(lambda c=c: rend.render(c, hw, [trajs[lv0]]), args.repeats)
        ts_views.extend(ts)
    print()
    print(f"(a) 512x512 DRR ({lv0} isocentre), CT prepared once: {rend.mu.shape[0]}x{rend.mu.shape[1]}x"
          f"{rend.mu.shape[2]} at factors {rend.factors} in {prep:.3f} s")
    print(f"    DRR, AP, CT + {len(case.scene.screws)} screws, rods, needle:  {fmt_times(ts_full)}  "
          f"({met(max(ts_full), DRR_TARGET_S)}, slowest run)")
    print(f"    DRR, AP, CT part only:                     {fmt_times(ts_ct)}")
    print(f"    DRR, all {len(views)} standard views, full:          {fmt_times(ts_views)}  "
          f"({met(max(ts_views), DRR_TARGET_S)})")
    print(f"    baseline full-resolution ray caster, CT:   {fmt_times(ts_base)}")
    print(f"    speed-up (CT part, medians): {statistics.median(ts_base) / statistics.median(ts_ct):.1f}x; "
          f"first DRR incl. preparation {prep + ts_full[0]:.3f} s; "
          f"agreement with the baseline: relative L1 {rel:.4f}, correlation {corr:.5f}")

    # ---- (b) view search ---------------------------------------------------------------------
    print()
    print("(b) view search (LAO/RAO -90..90 x cranial/caudal -40..40, 5 deg steps; minimax ranking)")
    plans = {}
    for lv, t in trajs.items():
        fr = case.scene.vertebrae[lv]
        t0 = time.perf_counter()
        W, N = posterior_wall_points(case.labels, lv, posterior_lps=fr.v, tip_lps=t.tip_lps, return_normals=True)
        W_all = posterior_wall_points(case.labels, lv, posterior_lps=fr.v, between_pedicles=False)
        t_wall = time.perf_counter() - t0
        ts, vp = timed(lambda t=t, W=W, N=N: plan_views(t, hw, W, wall_normals=N), args.search_repeats)
        plans[lv] = (t, W, N, W_all, vp)
        print(f"    {lv}: {vp.n_poses} poses  {fmt_times(ts)}  ({met(max(ts), SEARCH_TARGET_S)}; + {len(W)} wall points "
              f"between the pedicles within 8 mm of the tip and {len(W_all)} on the whole posterior surface, "
              f"from the label map in {t_wall:.3f} s)")

    # ---- (c) overlaps ------------------------------------------------------------------------
    print()
    print("(c) hardware overlap (covered fraction; 0 = clear): tip (3 mm disc), wall (2 mm discs on the posterior wall "
          "between the pedicles, +-8 mm of the tip), path; wall* = whole posterior surface (for comparison); "
          "needle = beam-to-needle angle (90 = full length), wall-plane = beam-to-wall-plane angle (0 = edge-on)")
    for lv, (t, W, N, W_all, vp) in plans.items():
        sug = vp.suggest()
        print()
        print(f"    {lv:5} {'view':14} {'LAO':>6} {'CRAN':>6} {'tip':>6} {'wall':>6} {'path':>6} {'wall*':>6} "
              f"{'overlap':>8} {'needle':>7} {'wall-plane':>10} {'tip gap mm':>10}")
        sv = standard_views(t, None, vp)
        rows = [(n, c.lao_deg, c.cran_deg) for n, c in sv.items() if n not in ("best_oblique", "wall_edge_on")]
        rows += [(f"-> {name}", v["lao"], v["cran"]) for name, v in sug.items() if name != "findings" and v is not None]
        for name, la, cr in rows:
            s = score_poses(t, hw, W, [la], [cr], wall_normals=N)
            s_all = score_poses(t, hw, W_all, [la], [cr])
            print(f"    {lv:5} {name:14} {la:6.1f} {cr:6.1f} {s['tip'][0]:6.3f} {s['wall'][0]:6.3f} {s['path'][0]:6.3f} "
                  f"{s_all['wall'][0]:6.3f} {s['overlap'][0]:8.3f} {s['needle_deg'][0]:7.1f} {s['wall_plane_deg'][0]:10.1f} "
                  f"{s['tip_gap_mm'][0]:10.1f}")
        for name in ("tip_wall", "wall_edge_on"):
            v = sug[name]
            if v is None:
                print(f"    {lv}: no {name} view")
                continue
            print(f"    {lv}: suggested {name} view LAO {v['lao']:+.0f} CRAN {v['cran']:+.0f}: "
                  "ratio to AP / lateral, verdict vs AP / lateral")
            for comp, row in v["compare"].items():
                if comp == "tip_gap_mm":
                    print(f"        tip gap {row['view']:.1f} mm  AP {row['ap']:.1f} mm {row['vs_ap']:8}"
                          f"  lateral {row['lateral']:.1f} mm {row['vs_lateral']}  (more = more room around the tip)")
                    continue
                print(f"        {comp:5} {row['view']:.3f}  AP {row['ap']:.3f} x{fmt_ratio(row['ratio_ap'])} {row['vs_ap']:14}"
                      f"  lateral {row['lateral']:.3f} x{fmt_ratio(row['ratio_lateral'])} {row['vs_lateral']}")
        print(f"    {lv}: findings")
        for f in sug["findings"]:
            print(f"        - {f}")
        others = "; ".join(f"({v['lao']:+.0f}, {v['cran']:+.0f}) tip {v['tip']:.3f} wall {v['wall']:.3f} path {v['path']:.3f}"
                           for v in vp.suggestions(3))
        print(f"    {lv}: next distinct views by rank: {others}")
        # the best-ranked view rotated at least 15 deg LAO/RAO (an oblique in the C-arm's sense)
        obl = [int(i) for i in vp.order if vp.usable[i] and abs(vp.scores["lao"][i]) >= 15.0]
        if obl:
            v = vp.view(obl[0])
            cmp = vp.compare(v)
            print(f"    {lv}: best LAO/RAO oblique (|LAO| >= 15) LAO {v['lao']:+.0f} CRAN {v['cran']:+.0f}: "
                  + "; ".join(f"{c} {cmp[c]['view']:.3f} ({cmp[c]['vs_ap']} vs AP, {cmp[c]['vs_lateral']} vs lateral)"
                              for c in vp.components())
                  + f"; tip gap {cmp['tip_gap_mm']['view']:.1f} mm")
        png = write_view_pngs(ct, t, hw, args.out / lv, W, wall_normals=N)
        write_compare(args.out / lv, t, vp)
        print(f"    {lv}: PNGs {', '.join(sorted(p.name for p in png.values()))} (+ _overlay, compare.png) in {args.out / lv}")

    # ---- (d) every feasible candidate --------------------------------------------------------
    if plan is None or args.no_candidates:
        return 0
    sets = [("", plan)]
    if args.shortlist and args.plan is None:
        more = json.loads(case_plan(args.work, args.levels, args.shortlist).read_text())
        sets.append((f" [{args.shortlist}/route]", more))
    print()
    print("(d) every feasible candidate of the plan (placed with the level's procedure where it allows it; "
          "tip = working tip: a curved needle's arc end); suggested view = tip_wall, edge-on = wall_edge_on; "
          "* = recommended; tip-hw = tip to the nearest hardware surface"
          + (f"; [{args.shortlist}/route] = the candidates of a plan with shortlist_per_route {args.shortlist} "
             "(summary only)" if len(sets) > 1 else ""))
    t0 = time.perf_counter()
    for lv in args.levels:
        for tag, pl in sets:
            rows = candidate_views(case, pl, lv, hw)
            print()
            if not tag:
                print_candidate_rows(lv, rows)
            print_candidate_summary(lv, rows, tag)
            for name, demo in tip_demos(rows).items():
                d = args.out / f"{lv}-{name}" if not tag else args.out / f"{lv}-{args.shortlist}-{name}"
                write_view_pngs(ct, demo["trajectory"], hw, d, demo["W"], wall_normals=demo["N"])
                write_compare(d, demo["trajectory"], demo["vp"])
                tw = demo["tip_wall"]
                print(f"    {lv}{tag}: {name} {demo['id']}: tip AP {demo['ap']['tip']:.3f} lateral "
                      f"{demo['lateral']['tip']:.3f} -> tip_wall (LAO {tw['lao']:+.0f}, CRAN {tw['cran']:+.0f}) "
                      f"{tw['tip']:.3f}; tip {demo['tip_clearance_mm']:.1f} mm from {demo['tip_nearest']}; PNGs in {d}")
    print(f"    (d) took {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
