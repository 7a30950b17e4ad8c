"""Benchmark: DRR speed, C-arm view-search speed and hardware overlap of suggested views.

On the case-example phantom (L3-L5 fixation extended to T12, bilateral screws at L3 and L5):

(a) the median / min / max time of a 512 x 512 DRR (AP view, screws, rods and needle drawn
    in) against, in the same run, the straightforward full-resolution ray caster
    (``planner.fluoro.drr.raycast_reference``: trilinear ``map_coordinates`` along every
    ray, one sample per voxel spacing), with the speed ratio and the agreement of the two
    images;
(b) the time of a view search over >= 300 C-arm poses for an L3 and an L5 trajectory;
(c) for L3 and L5 the hardware overlap (needle path, tip, posterior wall and their weighted
    mean) of the AP, lateral, bull's-eye, progression and best suggested views;

and writes the PNGs of the views for each trajectory into ``--out`` (not part of the
repository).

Trajectories: ``--plan plan.json`` takes each level's recommended candidate
(``skin_entry_lps_mm`` -> ``target_lps_mm``) from a ``planner plan`` output.  Without it a
screw-free path is built from the case's vertebral frames: a target on the midline in the
anterior third of the body, a fifth of its height below the centre (below the screw tips, as
an extrapedicular inferior route enters); of the directions (lateral angle 20-60 deg from the posterior
axis, cranio-caudal -30..30 deg, both sides) that keep the straight needle >= 3 mm from every
screw and rod and >= 14 mm from the canal axis the one closest to a level 35 deg approach;
and the skin entry where that line leaves the body in the CT.  In both cases, when the level has bilateral screws (no free
pedicle: the domain practice is a curved-needle vertebroplasty) the needle gets the default
curved extension of :mod:`planner.instruments` bending toward the other side.

Usage::

    python benchmarks/bench_fluoro.py                          # 0.8 mm CT, 5 DRR repeats
    python benchmarks/bench_fluoro.py --plan plan/plan.json --out fluoro-views

Targets (issue 5): a 512 x 512 DRR in <= 1 s on a 2-core machine; a >= 300-pose view search
in <= 2 s; suggested obliques reduce the hardware overlap on tip and posterior wall.
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
    plan_views,
    posterior_wall_points,
    score_poses,
    standard_views,
    write_view_pngs,
)


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


def plan_trajectory(plan: dict, level: str) -> tuple[np.ndarray, np.ndarray, str]:
    for lv in plan["levels"]:
        if lv["level"] == level:
            rec = lv["recommendation"]
            ids = rec.get("candidates") or []
            cands = {c["id"]: c for c in lv["candidates"]}
            if not ids or ids[0] not in cands:
                raise SystemExit(f"plan has no recommended candidate at {level}")
            c = cands[ids[0]]
            return np.asarray(c["skin_entry_lps_mm"], float), np.asarray(c["target_lps_mm"], float), c["side"]
    raise SystemExit(f"level {level} not in the plan")


def timed(fn, repeats: int) -> tuple[list[float], object]:
    ts, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return ts, out


def fmt_times(ts: list[float]) -> str:
    return f"median {statistics.median(ts):.3f} s  min {min(ts):.3f}  max {max(ts):.3f}  (n={len(ts)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spacing", type=float, default=0.8, help="phantom CT spacing, mm")
    ap.add_argument("--repeats", type=int, default=5, help="DRR repeats")
    ap.add_argument("--baseline-repeats", type=int, default=1)
    ap.add_argument("--search-repeats", type=int, default=3)
    ap.add_argument("--levels", nargs="+", default=["L3", "L5"])
    ap.add_argument("--plan", type=Path, help="plan.json of 'planner plan' (recommended candidates)")
    ap.add_argument("--out", type=Path, default=Path("bench-output") / "fluoro", help="folder for the PNGs")
    args = ap.parse_args()

    from planner.phantom import generate, get_preset

    t0 = time.perf_counter()
    case = generate(get_preset("case_example").replace_imaging(spacing_mm=(args.spacing,) * 3))
    ct = case.image
    hw = case.scene.screws + case.scene.rods + case.scene.crosslinks
    print(f"case_example CT {ct.shape[0]}x{ct.shape[1]}x{ct.shape[2]} at {args.spacing} mm "
          f"({np.prod(ct.shape) / 1e6:.1f} Mvox), {len(case.scene.screws)} screws, {len(case.scene.rods)} rods; "
          f"generated in {time.perf_counter() - t0:.1f} s")

    plan = json.loads(args.plan.read_text()) if args.plan else None
    trajs: dict[str, Trajectory] = {}
    for lv in args.levels:
        entry, target, side = plan_trajectory(plan, lv) if plan else frame_trajectory(case, lv)
        t = Trajectory(entry, target)
        bilateral = {s.side for s in case.scene.screws if s.level == lv} == {"left", "right"}
        trajs[lv] = with_curve(t, side) if bilateral else t
        src = f"plan {args.plan.name}" if plan else "vertebral frame (screw-free path)"
        print(f"{lv} trajectory ({src}, {side}{', curved extension' if bilateral else ''}): "
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
    print(f"    DRR, AP, CT + {len(case.scene.screws)} screws, rods, needle:  {fmt_times(ts_full)}")
    print(f"    DRR, AP, CT part only:                     {fmt_times(ts_ct)}")
    print(f"    DRR, all {len(views)} standard views, full:          {fmt_times(ts_views)}")
    print(f"    baseline full-resolution ray caster, CT:   {fmt_times(ts_base)}")
    print(f"    speed-up (CT part, medians): {statistics.median(ts_base) / statistics.median(ts_ct):.1f}x; "
          f"first DRR incl. preparation {prep + ts_full[0]:.3f} s; "
          f"agreement with the baseline: relative L1 {rel:.4f}, correlation {corr:.5f}")

    # ---- (b) view search and (c) overlap --------------------------------------------------
    print()
    print("(b) view search (LAO/RAO -60..60 x cranial/caudal -40..40, 5 deg steps)")
    rows = []
    for lv, t in trajs.items():
        fr = case.scene.vertebrae[lv]
        t0 = time.perf_counter()
        W = posterior_wall_points(case.labels, lv, posterior_lps=fr.v)
        t_wall = time.perf_counter() - t0
        ts, vp = timed(lambda t=t, W=W: plan_views(t, hw, W), args.search_repeats)
        print(f"    {lv}: {vp.n_poses} poses  {fmt_times(ts)}  "
              f"(+ {len(W)} posterior-wall points from the label map in {t_wall:.3f} s)")
        sv = standard_views(t, None, vp)
        for name, c in sv.items():
            s = score_poses(t, hw, W, [c.lao_deg], [c.cran_deg])
            rows.append((lv, name, c.lao_deg, c.cran_deg, s["path"][0], s["tip"][0], s["wall"][0], s["overlap"][0]))
        rows.append((lv, "visibility", np.nan, np.nan, np.nan, np.nan, np.nan, vp.visibility))
        sug = "; ".join(f"({v['lao']:+.0f}, {v['cran']:+.0f}) overlap {v['overlap']:.3f}" for v in vp.suggestions(3))
        rows.append((lv, "suggested: " + sug, None, None, None, None, None, None))
        png = write_view_pngs(ct, t, hw, args.out / lv, W)
        rows.append((lv, f"PNGs: {', '.join(sorted(p.name for p in png.values()))} in {args.out / lv}", None, None, None, None, None, None))

    print()
    print("(c) hardware overlap (covered fraction; 0 = clear): path, tip (3 mm disc), posterior wall (2 mm discs), "
          "weighted overlap")
    print(f"    {'level':5} {'view':14} {'LAO':>6} {'CRAN':>6} {'path':>6} {'tip':>6} {'wall':>6} {'overlap':>8}")
    for lv, name, la, cr, p, tip, w, o in rows:
        if la is None:
            print(f"    {lv:5} {name}")
        elif np.isnan(la):
            print(f"    {lv:5} {'visibility':14} {'':>6} {'':>6} {'':>6} {'':>6} {'':>6} {o:8.3f}")
        else:
            print(f"    {lv:5} {name:14} {la:6.1f} {cr:6.1f} {p:6.3f} {tip:6.3f} {w:6.3f} {o:8.3f}")
    for lv in trajs:
        r = {name: (tip, w, o) for l2, name, la, cr, p, tip, w, o in rows if l2 == lv and la is not None and not np.isnan(la)}
        b, a, lat = r["best_oblique"], r["ap"], r["lateral"]
        print(f"    {lv}: best view vs AP / lateral: tip {b[0]:.3f} vs {a[0]:.3f} / {lat[0]:.3f}, "
              f"wall {b[1]:.3f} vs {a[1]:.3f} / {lat[1]:.3f}, overlap {b[2]:.3f} vs {a[2]:.3f} / {lat[2]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
