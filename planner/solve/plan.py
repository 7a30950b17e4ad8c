"""Planning: search, refine, check exactly, score, explain and recommend, per level.

Flow for one target level (:func:`plan_level`):

1. fields of the level (:meth:`planner.solve.scene.Scene.fields`);
2. coarse stage-1 search per side (:func:`planner.solve.search.search_side`), traced with
   the widest instrument (the kyphoplasty cannula), so every narrower one is decided from
   the same trace;
3. refinement around the best candidates of every (side, route): finer angles, nudged
   targets;
4. a shortlist per (side, route) goes to the **exact check**
   (:func:`exact_clearances`: segment-to-mesh distances against the scene's meshes,
   segment-to-solid distances against each screw, tulip, rod and cross-link); only exactly
   checked candidates can be marked feasible, and every clearance in the plan is exact;
5. metrics, scores, verdicts per instrument, route explanations and the recommendation.

The plan is plain JSON-ready data (:mod:`planner.solve.schema` documents and validates it).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from planner.errors import SolverError
from planner.instruments import NEEDLE_LENGTHS_MM, get_instrument
from planner.solve import search
from planner.solve.config import OBSTACLE_CLASSES, SolverOptions
from planner.solve.scene import LevelFields, LevelGeometry, Scene, display_name, structure_class
from planner.solve.search import ROUTES, Candidates

log = logging.getLogger(__name__)

PLAN_SCHEMA_VERSION = "1.0"

EXACT_CULL_MM = 25.0


def _r(x: float, nd: int = 2) -> float | None:
    x = float(x)
    return round(x, nd) if np.isfinite(x) else None


def _pt(p: np.ndarray) -> list[float]:
    return [round(float(v), 3) for v in p]


# ---------------------------------------------------------------------------- exact check
def exact_clearances(scene: Scene, level: str, p0: np.ndarray, p1: np.ndarray) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Exact axis clearance (mm, axis to structure surface; negative = the axis is inside)
    of segments ``p0``-``p1`` (n, 3) per obstacle class, with the closest structure's name.

    Anatomy: exact segment-to-mesh distances (:class:`planner.solve.exact.MeshDistance`) to
    each structure of the class near the segments.  Implants: exact segment-to-cylinder /
    capsule distances to each solid.  Classes with no structure get ``+inf``.
    """
    p0 = np.atleast_2d(np.asarray(p0, float))
    p1 = np.atleast_2d(np.asarray(p1, float))
    n = len(p0)
    out = {c: (np.full(n, np.inf), [""] * n) for c in OBSTACLE_CLASSES}

    def update(cls: str, d: np.ndarray, name: str) -> None:
        cur, names = out[cls]
        better = d < cur
        cur[better] = d[better]
        for i in np.flatnonzero(better):
            names[i] = name

    # structures nearest first (box-to-box lower bound per segment); a structure is queried
    # only for the segments whose lower bound beats their current best of its class
    names, classes, bmin, bmax = _level_obstacles(scene, level)
    if len(names):
        smin, smax = np.minimum(p0, p1), np.maximum(p0, p1)
        gap = np.maximum(np.maximum(bmin[None] - smax[:, None], smin[:, None] - bmax[None]), 0.0)
        lb = np.sqrt((gap**2).sum(-1))  # (n, m)
        order = np.lexsort((np.arange(len(names)), lb.min(0)))
        # the compiled pass does every segment that stays outside every structure it comes
        # near; the others (touching or possibly inside one: a signed, negative clearance)
        # go through the loop below, with the same visiting order
        todo = np.ones(n, bool)
        forest = _level_forest(scene, level)
        if forest is not None:
            from planner.solve import kernels

            fn = kernels.forest_clearances_serial if n < FOREST_SERIAL_BELOW else kernels.forest_clearances
            cls_idx = np.array([OBSTACLE_CLASSES.index(c) for c in classes], np.int64)
            gmap, packed = forest
            best, who, flag = fn(np.ascontiguousarray(p0), np.ascontiguousarray(p1), order.astype(np.int64), gmap,
                                 np.ascontiguousarray(bmin), np.ascontiguousarray(bmax), cls_idx,
                                 len(OBSTACLE_CLASSES), EXACT_CULL_MM + 5.0, *packed)
            todo = flag
            for ci, cls in enumerate(OBSTACLE_CLASSES):
                cur, nm = out[cls]
                done = np.flatnonzero(~flag & (who[:, ci] >= 0))
                cur[done] = best[done, ci]
                for i in done:
                    nm[i] = names[who[i, ci]]
        for k in order if todo.any() else ():
            cls = classes[k]
            cur = out[cls][0]
            # beats the best so far, or may be deeper inside than a penetration found so far
            rows = np.flatnonzero(todo & ((lb[:, k] < np.minimum(cur, EXACT_CULL_MM + 5.0)) | ((lb[:, k] <= 0.0) & (cur <= 0.0))))
            if not len(rows):
                continue
            md = scene.mesh_distance(names[k])
            d = np.full(n, np.inf)
            # a positive distance only matters below the class's best so far: bound the
            # query there (the result is min(exact, bound), so the update is the same);
            # rows already inside a structure keep the full bound for their depth test
            c = cur[rows]
            # (floored at 1e-6 mm, above the touch tolerance, so a bound is never taken for contact)
            bound = np.where(c > 0.0, np.clip(c, 1e-6, EXACT_CULL_MM + 5.0), EXACT_CULL_MM + 5.0)
            d[rows] = md.segment_signed_clearance(p0[rows], p1[rows], max_distance=bound)
            update(cls, d, names[k])
    d, nm = solid_clearances(scene, p0, p1)
    cur, names = out["hardware"]
    better = d < cur
    out["hardware"] = (np.where(better, d, cur), [nm[i] if better[i] else names[i] for i in range(n)])
    return out


#: Below this many segments the packed-mesh pass runs on the calling thread.
FOREST_SERIAL_BELOW = 16


def _level_forest(scene: Scene, level: str) -> tuple[np.ndarray, tuple[np.ndarray, ...]] | None:
    """The level's obstacle meshes in the scene's packed hierarchies (:func:`pack_meshes`):
    (the index of each of the level's obstacles in the pack, the pack).  None without the
    compiled kernels."""
    from planner.solve import exact

    if exact._kernels() is None:
        return None
    names = _level_obstacles(scene, level)[0]
    index, packed = pack_meshes(scene, names)
    return np.array([index[nm] for nm in names], np.int64), packed


def pack_meshes(scene: Scene, names: list[str]) -> tuple[dict[str, int], tuple[np.ndarray, ...]]:
    """Pack the exact-distance hierarchies of ``names`` (and of every mesh packed before)
    for :func:`planner.solve.kernels.forest_clearances`: mesh bounds, node and leaf offsets,
    depths, then the concatenated node, leaf and triangle arrays (leaf starts and triangle
    order made global).  One copy per mesh: :func:`plan` packs every level's obstacles at
    once; when every name is already packed the scene's pack is returned as it is.  Kept
    on the scene as ``(name -> index, arrays)``."""
    old = scene.__dict__.get("_mesh_pack")
    if old is not None and all(nm in old[0] for nm in names):
        return old
    keep = list(old[0]) if old is not None else []
    allnames = keep + [nm for nm in dict.fromkeys(names) if nm not in set(keep)]
    mds = [scene.mesh_distance(nm) for nm in allnames]
    flats = [md._flat() for md in mds]
    n_nodes = np.array([len(f[0]) for f in flats], np.int64)
    n_leaves = np.array([len(f[4]) for f in flats], np.int64)
    n_tri = np.array([len(md.A) for md in mds], np.int64)
    node_off = np.concatenate([[0], np.cumsum(n_nodes)[:-1]]).astype(np.int64)
    leaf_off = np.concatenate([[0], np.cumsum(n_leaves)[:-1]]).astype(np.int64)
    tri_off = np.concatenate([[0], np.cumsum(n_tri)[:-1]]).astype(np.int64)

    def cat(arrs, dtype=float, shape=(0, 3)):
        return np.ascontiguousarray(np.concatenate(arrs)) if arrs else np.zeros(shape, dtype)

    packed = (
        cat([md.bounds[0][None] for md in mds]), cat([md.bounds[1][None] for md in mds]),
        node_off, leaf_off, np.array([int(md.depth) for md in mds], np.int64),
        cat([f[0] for f in flats]), cat([f[1] for f in flats]), cat([f[2] for f in flats]), cat([f[3] for f in flats], shape=(0,)),
        cat([f[4] + o for f, o in zip(flats, tri_off)], np.int64, (0,)), cat([f[5] for f in flats], np.int64, (0,)),
        cat([md.order + o for md, o in zip(mds, tri_off)], np.int64, (0,)),
        cat([md.A for md in mds]), cat([md.B for md in mds]), cat([md.C for md in mds]),
        cat([md.centroids for md in mds]), cat([md.tri_radius for md in mds], shape=(0,)),
    )
    pool = ({nm: i for i, nm in enumerate(allnames)}, packed)
    scene._mesh_pack = pool
    return pool


def level_obstacle_names(scene: Scene, level: str, geo: LevelGeometry | None = None) -> list[str]:
    """Names of the meshed obstacle structures a needle to ``level`` can come near.

    Every present structure with an obstacle class for this level (screws, rods and
    cross-links excepted: they are exact solids) whose mesh lies within the reach of the
    longest needle from the level's body (the box of :meth:`Scene.fields`).  Cached on the
    scene.
    """
    cache = scene.__dict__.setdefault("_obstacle_names", {})
    if level in cache:
        return cache[level]
    geo = geo or scene.level(level)
    box = np.array([[a, b, c] for a in (-110.0, 110.0) for b in (geo.lo[1] - 15.0, geo.hi[1] + 135.0) for c in (-100.0, 100.0)])
    world = geo.to_world(box)
    lo, hi = world.min(0), world.max(0)
    names = []
    for name in scene.present_names:
        cls = structure_class(name, level)
        if cls is None or (cls == "hardware" and name != "other_metal"):
            continue
        b = scene.mesh_bounds(name)
        if b is None or np.any(b[0] > hi) or np.any(b[1] < lo):
            continue
        names.append(name)
    cache[level] = names
    return names


def _level_obstacles(scene: Scene, level: str) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """:func:`level_obstacle_names` with each one's class and mesh bounds (cached)."""
    cache = scene.__dict__.setdefault("_obstacle_arrays", {})
    if level not in cache:
        names = level_obstacle_names(scene, level)
        b = np.array([scene.mesh_bounds(nm) for nm in names], float).reshape(-1, 2, 3)
        cache[level] = (names, [structure_class(nm, level) for nm in names], b[:, 0], b[:, 1])
    return cache[level]


# ---------------------------------------------------------------------------- helpers
def _instruments(opt: SolverOptions) -> dict[str, Any]:
    return {
        "vertebroplasty_straight": get_instrument(opt.needle),
        "kyphoplasty": get_instrument(opt.kyphoplasty),
        "vertebroplasty_curved": get_instrument(opt.curved),
    }


def _radius(kind: str, ins: dict[str, Any]) -> float:
    i = ins[kind]
    return float(i.cannula.radius_mm) if kind == "vertebroplasty_curved" else float(i.radius_mm)


def _refine(c: Candidates, geo: LevelGeometry, fields: LevelFields, side: str, opt: SolverOptions, radius: float, max_len: float, tol: float) -> Candidates:
    """Finer angles and nudged targets around the best coarse candidates of each route.

    Seeds per route: the best by clearance of the whole axis (straight needle, kyphoplasty)
    and the best by clearance of the cannula part alone (curved needle)."""
    seeds_T, seeds_D = [], []
    ok = (c.fail & ~search.FAIL_BITS["obstacle"]) == 0
    for r in range(len(ROUTES)):
        m = np.flatnonzero(ok & (c.route == r))
        if not len(m):
            continue
        best = m[np.lexsort((np.arange(len(m)), -c.f_min[m]))][:3]
        outer = m[np.lexsort((np.arange(len(m)), c.t_skin[m], -np.minimum(c.f_min_outer[m], radius + 4.0)))][:3]
        pick = np.unique(np.concatenate([best, outer]))
        seeds_T.append(c.target[pick])
        seeds_D.append(c.direction[pick])
    if not seeds_T:
        return c
    T0 = np.concatenate(seeds_T)
    D0 = np.concatenate(seeds_D)
    h = opt.coarse_step_deg
    steps = np.arange(-h, h + 1e-9, opt.fine_step_deg)
    off = np.array([[a, b, g] for a in (-2.0, 0.0, 2.0) for b in (-2.0, 0.0, 2.0) for g in (-2.0, 0.0, 2.0)])
    Ts, Ds = [], []
    s = 1.0 if side == "left" else -1.0
    for t0, d0 in zip(T0, D0):
        loc = d0 @ geo.R
        a0 = np.degrees(np.arctan2(s * loc[0], loc[1]))
        b0 = np.degrees(np.arcsin(np.clip(loc[2], -1, 1)))
        dirs = search.directions(geo, side, a0 + steps, b0 + steps)
        tg = t0 + off @ geo.R.T
        inside = fields.local.sample(fields.body, tg) <= -opt.target_margin_mm
        tg = tg[inside]
        Ts.append(np.repeat(tg, len(dirs), axis=0))
        Ds.append(np.tile(dirs, (len(tg), 1)))
    T = np.concatenate(Ts)
    D = np.concatenate(Ds)
    sd = np.full(len(T), 0 if side == "left" else 1, np.int8)
    fine = search.evaluate(T, D, sd, geo, fields, opt, radius, max_len, tol=tol)
    return Candidates(**{k: np.concatenate([getattr(c, k), getattr(fine, k)]) for k in c.__dataclass_fields__})


def _diverse(order: np.ndarray, c: Candidates, k: int) -> list[int]:
    """The first ``k`` of ``order`` that differ from every earlier pick (> 2 deg or > 3 mm)."""
    chosen: list[int] = []
    for i in order:
        if all(
            np.degrees(np.arccos(np.clip(c.direction[i] @ c.direction[j], -1, 1))) > 2.0
            or np.linalg.norm(c.target[i] - c.target[j]) > 3.0
            for j in chosen
        ):
            chosen.append(int(i))
        if len(chosen) >= k:
            break
    return chosen


def _shortlist(c: Candidates, route: int, radii: dict[str, float], tol: float, k: int, channel_mm: float, geo: LevelGeometry) -> tuple[np.ndarray, bool]:
    """Up to ``3 k`` diverse candidates of a route that stage 1 says may pass, in three
    families: kyphoplasty (whole axis clear at the cannula radius, a straight channel of at
    least ``channel_mm``; longest channel first), straight needle (whole axis clear) and
    curved needle (cannula part clear; shortest path first).

    Returns (indices, passable); when none may pass, the single best failing candidate.
    """
    other_ok = (c.fail & ~search.FAIL_BITS["obstacle"]) == 0
    on = np.flatnonzero(other_ok & (c.route == route))
    picks: list[int] = []
    if len(on):
        full = c.f_min[on]
        outer = c.f_min_outer[on]
        kp = on[(full >= radii["kyphoplasty"] - tol) & (c.t_cannula[on] >= channel_mm)]
        if len(kp):
            fk = np.minimum(c.f_min[kp], radii["kyphoplasty"] + 6.0)
            uk = np.abs(geo.to_local(c.target[kp])[:, 0])
            picks += _diverse(kp[np.lexsort((kp, c.t_skin[kp], np.round(uk / 3.0), -np.round(fk, 0), -np.round(c.t_cannula[kp] / 3.0)))], c, k)
        st = full >= radii["vertebroplasty_straight"] - tol
        if st.any():
            m = on[st]
            fs = np.minimum(full[st], radii["vertebroplasty_straight"] + 6.0)
            um = np.abs(geo.to_local(c.target[m])[:, 0])
            picks += _diverse(m[np.lexsort((m, c.t_skin[m], np.round(um / 3.0), -np.round(fs, 0)))], c, k)
        cu = outer >= radii["vertebroplasty_curved"] - tol
        if cu.any():
            m = on[cu]
            fo = np.minimum(outer[cu], radii["vertebroplasty_curved"] + 6.0)
            picks += _diverse(m[np.lexsort((m, c.t_skin[m], -np.round(fo, 0)))], c, k)
    if picks:
        return np.array(sorted(set(picks), key=picks.index), int), True
    allr = np.flatnonzero(c.route == route)
    if not len(allr):
        return np.zeros(0, int), False
    # failed checks per candidate: the set bits of its (non-negative int16) fail mask
    nbits = np.unpackbits(np.ascontiguousarray(c.fail[allr], dtype=np.uint16).view(np.uint8).reshape(-1, 2), axis=1).sum(1)
    key = np.lexsort((np.arange(len(allr)), c.t_skin[allr], -c.f_min_outer[allr], nbits))
    return allr[key[:1]], False


def _entry_angles(fields: LevelFields, c: Candidates, side: str) -> np.ndarray:
    """Angle (deg) between each candidate's needle and the bone surface normal where it
    first meets bone (``c``: one side): the last pedicle sample of a transpedicular path,
    else the body entry; the normal is the central-difference gradient (0.5 mm) of that
    structure's signed distance, NaN where it vanishes.  Samples in batched calls."""
    n = len(c)
    out = np.full(n, np.nan)
    if not n:
        return out
    ped = fields.pedicle[side]
    ts = [np.arange(c.t_body[i], c.t_body[i] + 40.0, 0.5) for i in range(n)]
    cnt = np.array([len(t) for t in ts])
    pts = np.concatenate([c.target[i] + ts[i][:, None] * c.direction[i] for i in range(n)])
    inside = fields.local.sample(ped, pts) < 0
    ends = np.cumsum(cnt)
    use_ped = np.zeros(n, bool)
    p = np.empty((n, 3))
    for i in range(n):
        ins = inside[ends[i] - cnt[i]:ends[i]]
        if c.route[i] == 0 and ins.any():
            t_e = ts[i][np.flatnonzero(ins)[-1]]
            use_ped[i] = True
        else:
            t_e = c.t_body[i]
        p[i] = c.target[i] + t_e * c.direction[i]
    e = 0.5
    ax = np.eye(3)
    g = np.empty((n, 3), np.float32)  # float32 differences, as the per-candidate version
    for flag, arr in ((True, ped), (False, fields.body)):
        sel = np.flatnonzero(use_ped == flag)
        if not len(sel):
            continue
        q = p[sel]
        plus = fields.local.sample(arr, (q[:, None, :] + e * ax[None]).reshape(-1, 3)).reshape(-1, 3)
        minus = fields.local.sample(arr, (q[:, None, :] - e * ax[None]).reshape(-1, 3)).reshape(-1, 3)
        g[sel] = plus - minus
    for i in range(n):
        nrm = np.linalg.norm(g[i])
        if nrm >= 1e-6:
            out[i] = float(np.degrees(np.arccos(np.clip(abs(g[i] @ c.direction[i]) / nrm, 0, 1))))
    return out


def _packed_solids(solids) -> tuple:
    """The solids as arrays for :func:`planner.solve.kernels.segment_solids_distance`."""
    kind = np.array([0 if x.kind == "cylinder" else 1 for x in solids], np.int64)
    sa = np.array([x.a if x.kind == "cylinder" else np.zeros(3) for x in solids], float).reshape(-1, 3)
    sb = np.array([x.b if x.kind == "cylinder" else np.zeros(3) for x in solids], float).reshape(-1, 3)
    rad = np.array([x.radius for x in solids], float)
    polys = [np.asarray(x.polyline, float).reshape(-1, 3) if x.kind != "cylinder" else np.zeros((0, 3)) for x in solids]
    count = np.array([len(q) for q in polys], np.int64)
    start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64) if len(polys) else np.zeros(0, np.int64)
    poly = np.ascontiguousarray(np.concatenate(polys) if polys else np.zeros((0, 3)))
    bmin = np.array([x.points.min(0) - x.radius for x in solids], float).reshape(-1, 3)
    bmax = np.array([x.points.max(0) + x.radius for x in solids], float).reshape(-1, 3)
    return kind, sa, sb, rad, poly, start, count, bmin, bmax


def solid_clearances(scene: Scene, p0: np.ndarray, p1: np.ndarray, cap: float = np.inf) -> tuple[np.ndarray, list[str]]:
    """Exact axis clearance (mm) of segments ``p0``-``p1`` (n, 3) to the nearest implant
    solid of the scene, with that solid's name (``+inf`` and "" when there are no solids).

    Tubes (rods, cross-links) are closed-form unions of capsules.  A flat-capped cylinder
    (screw shank, tulip) is evaluated exactly (golden-section search of its convex signed
    distance along the segment, to 1e-4 mm) only where its capsule, a lower bound, beats
    the best so far.  Compiled (:func:`planner.solve.kernels.segment_solids_distance`);
    the numpy functions of :mod:`planner.solve.exact` are the reference.  Clearances not
    below ``cap`` come back as ``cap`` with no name (below it they are unchanged).
    """
    from planner.solve import kernels

    p0 = np.ascontiguousarray(np.atleast_2d(np.asarray(p0, float)))
    p1 = np.ascontiguousarray(np.atleast_2d(np.asarray(p1, float)))
    n = len(p0)
    solids = scene.solids
    if not n or not len(solids):
        return np.full(n, np.inf), [""] * n
    packed = scene.__dict__.get("_packed_solids")
    if packed is None:
        packed = scene._packed_solids = _packed_solids(solids)
    # capped queries (curved-needle arcs) prune almost every solid at once: serial further up
    serial_below = kernels.SERIAL_BELOW_SOLIDS * (64 if np.isfinite(cap) else 1)
    fn = kernels.segment_solids_distance_serial if n < serial_below else kernels.segment_solids_distance
    d, who = fn(p0, p1, *packed, 1e-4, float(cap))
    return d, [solids[k].name if k >= 0 else "" for k in who]


#: Bend directions tried for the curved needle around the cannula axis, and arc lengths.
CURVED_BENDS = 16
CURVED_EXTENSIONS = 5


def curved_arcs(scene: Scene, geo: LevelGeometry, fields: LevelFields, tips: np.ndarray, axes: np.ndarray, side: str, curved, opt: SolverOptions) -> list[dict[str, Any]]:
    """The curved needle's reach from cannula tips: which arcs are safe, which zones they reach.

    For each cannula tip (``tips`` (n, 3), LPS mm; ``axes`` (n, 3) unit, toward the body)
    the stylet bends in :data:`CURVED_BENDS` directions around the axis, with
    :data:`CURVED_EXTENSIONS` arc lengths up to ``curved.max_extension_mm``.  An arc is
    **safe** while its whole centre line stays ``opt.target_margin_mm`` inside the target
    body (so it neither crosses an endplate nor the anterior / lateral cortex, nor reaches
    the canal, disc or vessels outside the body) and its surface keeps
    ``margins["hardware"]`` from every screw, rod and cross-link (exact segment-to-solid
    distances of the arc's 1 mm chords, less the chord sagitta).  Zones by the body frame's
    u: ipsilateral (beyond +1/6 of the half width toward the access side), midline (within
    +/- 1/6), contralateral.  The chosen arc reaches the farthest zone, then the farthest.
    Returns one dict per tip.
    """
    tips = np.atleast_2d(np.asarray(tips, float))
    axes = np.atleast_2d(np.asarray(axes, float))
    n = len(tips)
    s = 1.0 if side == "left" else -1.0
    hw = geo.half[0]
    names = ["ipsilateral", "midline", "contralateral"]
    R = float(curved.arc_radius_mm)
    Lmax = min(float(curved.max_extension_mm), np.pi * R)
    ext = np.linspace(Lmax / CURVED_EXTENSIONS, Lmax, CURVED_EXTENSIONS)
    n_pts = int(np.ceil(Lmax / 1.0)) + 1
    ls = np.linspace(0.0, Lmax, n_pts)
    kidx = np.searchsorted(ls, ext - 1e-9)
    B = CURVED_BENDS
    fwd = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    e1 = np.cross(fwd, [0.0, 0.0, 1.0])
    flat = np.linalg.norm(e1, axis=1) < 1e-6
    e1[flat] = np.cross(fwd[flat], [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(fwd, e1)
    th = 2 * np.pi * np.arange(B) / B
    bend = np.cos(th)[None, :, None] * e1[:, None, :] + np.sin(th)[None, :, None] * e2[:, None, :]  # (n, B, 3)
    # p(l) = tip + R sin(l/R) fwd + R (1 - cos(l/R)) bend, (n, B, K, 3)
    sa, ca = np.sin(ls / R), np.cos(ls / R)
    P = (tips[:, None, None, :] + R * sa[None, None, :, None] * fwd[:, None, None, :]
         + R * (1 - ca)[None, None, :, None] * bend[:, :, None, :])
    body = fields.local.sample(fields.body, P.reshape(-1, 3)).reshape(n, B, n_pts)
    chord = Lmax / (n_pts - 1)
    sagitta = chord**2 / (8.0 * R)
    need_hw = float(curved.radius_mm) + opt.margins["hardware"]
    # the safety test only needs to know which chords clear need_hw: clearances are capped
    # just above it (exact below the cap); the chosen arc's chords are measured uncapped
    cap = need_hw + sagitta + 1.0
    c0, c1 = P[:, :, :-1].reshape(-1, 3), P[:, :, 1:].reshape(-1, 3)
    d_hw = solid_clearances(scene, c0, c1, cap)[0]
    d_hw = (d_hw - sagitta).reshape(n, B, n_pts - 1)
    # an arc of length L is safe when every point and chord up to L is
    inside_ok = np.minimum.accumulate(body <= -opt.target_margin_mm, axis=2)
    hw_ok = np.concatenate([np.ones((n, B, 1), bool), np.minimum.accumulate(d_hw >= need_hw, axis=2)], axis=2)
    safe = (inside_ok & hw_ok)[:, :, kidx]  # (n, B, E)
    end = P[:, :, kidx]  # (n, B, E, 3)
    u_end = s * geo.to_local(end.reshape(-1, 3))[:, 0].reshape(n, B, len(kidx))
    zone = np.where(u_end > hw / 6, 0, np.where(u_end >= -hw / 6, 1, 2))
    out = []
    for i in range(n):
        ok = safe[i]
        reached = sorted({int(z) for z in zone[i][ok]})
        res: dict[str, Any] = {
            "curved_zones": [names[z] for z in reached],
            "curved_reaches_midline": 1 in reached,
            "curved_reaches_far_side": 2 in reached,
            "curved_safe_arcs": int(ok.sum()),
            "curved_arcs_tried": int(ok.size),
        }
        if not ok.any():
            first = int(kidx[0])
            hw_first = bool((d_hw[i, :, :first] < need_hw).any(axis=1).all())
            res.update({"arc": None, "curved_far_reach_mm": None, "arc_fails": "hardware" if hw_first else "body"})
            out.append(res)
            continue
        # farthest zone, then farthest toward the far side, then the lowest index
        key = np.where(ok, zone[i] * 1000.0 + (-u_end[i]), -np.inf)
        b, j = np.unravel_index(int(np.argmax(key)), key.shape)
        k = int(kidx[j])
        rows = (i * B + b) * (n_pts - 1) + np.arange(k)
        seg_hw, seg_names = solid_clearances(scene, c0[rows], c1[rows])
        seg_hw = seg_hw - sagitta
        i_min = int(np.argmin(seg_hw))
        step = max(1, k // 6)
        path = [_pt(q) for q in P[i, b, : k + 1 : step]]
        if k % step:
            path.append(_pt(P[i, b, k]))
        res.update({
            "curved_far_reach_mm": _r(float(-u_end[i, b, j]), 1),
            "arc": {
                "bend_lps": [round(float(x), 5) for x in bend[i, b]],
                "extension_mm": _r(float(ext[j]), 1),
                "arc_radius_mm": _r(R, 1),
                "tip_lps_mm": _pt(P[i, b, k]),
                "path_lps_mm": path,
                "hardware_clearance_mm": _r(float(seg_hw[i_min]) - float(curved.radius_mm)),
                "closest_hardware": seg_names[i_min],
                "body_depth_min_mm": _r(float(-body[i, b, : k + 1].max()), 2),
            },
        })
        out.append(res)
    return out


# ---------------------------------------------------------------------------- one level
def plan_level(scene: Scene, level: str, opt: SolverOptions | None = None, sides: tuple[str, ...] = ("left", "right")) -> dict[str, Any]:
    """Plan one level: ranked, exactly checked candidates per side and route, explanations,
    and the procedure recommendation (JSON-ready dict)."""
    opt = opt or SolverOptions()
    t0 = time.perf_counter()
    geo = scene.level(level)
    fields = scene.fields(level, opt)
    ins = _instruments(opt)
    radii = {k: _radius(k, ins) for k in ins}
    r_kp = max(radii.values())
    max_len = float(max(max(NEEDLE_LENGTHS_MM), ins["kyphoplasty"].usable_length_mm, ins["vertebroplasty_straight"].usable_length_mm))
    tol = search.field_tolerance(opt, fields)
    channel_mm = min(opt.bone_tamp_lengths_mm) + float(ins["kyphoplasty"].min_channel_margin_mm)
    n_eval = 0
    t_search = 0.0
    t_exact = 0.0
    candidates_out: list[dict[str, Any]] = []
    routes_out: list[dict[str, Any]] = []
    for side in sides:
        ts = time.perf_counter()
        c = search.search_side(geo, fields, side, opt, r_kp, max_len)
        c = _refine(c, geo, fields, side, opt, r_kp, max_len, tol)
        n_eval += len(c)
        t_search += time.perf_counter() - ts
        for r, route in enumerate(ROUTES):
            idx, passable = _shortlist(c, r, radii, tol, opt.shortlist_per_route, channel_mm, geo)
            if not len(idx):
                routes_out.append({"side": side, "route": route, "status": "not_sampled", "reason": "no candidate of this route in the search range (no target in the body clears the margins, or no path enters the body this way)"})
                continue
            sub = c.take(idx)
            te = time.perf_counter()
            evald = evaluate_candidates(scene, level, geo, fields, sub, side, route, ins, opt)
            t_exact += time.perf_counter() - te
            feas = [e for e in evald if e["verdict"]["feasible"]]
            feas.sort(key=lambda e: (-e["score"], e["id"]))
            if feas:
                keep = _keep_per_instrument(feas, opt.shortlist_per_route)
                candidates_out.extend(keep)
                routes_out.append({"side": side, "route": route, "status": "feasible", "best": keep[0]["id"], "instruments": sorted({k for e in feas for k in e["verdict"]["instruments"]})})
            else:
                worst = max(evald, key=lambda e: (e["verdict"]["binding"]["excess_mm"] if e["verdict"]["binding"] else -1e9, e["id"]))
                ex_ = _explain(worst)
                if route == "transpedicular" and side in geo.screws:
                    # the pedicle itself is taken: say so first, with the clearance to the screw
                    ex_["reason"] = f"pedicle occupied by the {level} {side} screw; closest path: " + ex_["reason"]
                    ex_["occupied_by"] = f"screw_{level}_{side}"
                routes_out.append({"side": side, "route": route, "status": "blocked", **ex_})
    candidates_out.sort(key=lambda e: (-e["score"], e["id"]))
    for k, e in enumerate(candidates_out):
        e["rank"] = k + 1
    rec = recommend(geo, candidates_out, routes_out, opt)
    return {
        "level": level,
        "geometry": geo.to_dict(),
        "screws": geo.screws,
        "candidates": candidates_out,
        "routes": routes_out,
        "recommendation": rec,
        "stats": {
            "candidates_evaluated": int(n_eval),
            "classes_present": fields.classes_present,
        },
        "run": {
            "search_s": round(t_search, 3),
            "exact_s": round(t_exact, 3),
            "fields_s": round(fields.timings_s.get("total_s", 0.0), 3),
            "total_s": round(time.perf_counter() - t0, 3),
        },
    }


def _keep_per_instrument(feas: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The best ``k`` feasible candidates of a route plus the best of each instrument that
    the first ``k`` miss (so a kyphoplasty access is not crowded out by needle-only ones)."""
    keep = list(feas[:k])
    for kind in ("kyphoplasty", "vertebroplasty_straight", "vertebroplasty_curved"):
        if not any(kind in e["verdict"]["instruments"] for e in keep):
            alt = [e for e in feas if kind in e["verdict"]["instruments"]]
            if alt:
                keep.append(alt[0])
    return keep


#: The arc summary of a candidate whose cannula part is blocked (no arc tried).
_NO_ARC: dict[str, Any] = {
    "curved_zones": [], "curved_reaches_midline": False, "curved_reaches_far_side": False,
    "curved_safe_arcs": 0, "curved_arcs_tried": 0, "arc": None, "curved_far_reach_mm": None,
    "arc_fails": "cannula_blocked",
}


def evaluate_candidates(scene: Scene, level: str, geo: LevelGeometry, fields: LevelFields, sub: Candidates, side: str, route: str, ins: dict[str, Any], opt: SolverOptions) -> list[dict[str, Any]]:
    """Exact check, metrics, verdicts and scores of stage-1 candidates of one side and route.

    Two exact segments per candidate: the **cannula part** (skin entry to the cannula tip,
    ``CANNULA_IN_BODY_MM`` past the body entry), which every instrument passes, and the
    **channel** (cannula tip to the target), which the straight needle and the kyphoplasty
    drill / bone tamp follow; the curved needle leaves the cannula tip on an arc instead
    (:func:`curved_arcs`), tried only where its cannula clears every margin.
    """
    n = len(sub)
    ct = sub.cannula_tip
    ex = exact_clearances(scene, level, np.concatenate([ct, sub.target]), np.concatenate([sub.skin_entry, ct]))
    outer = {c: (v[0][:n], v[1][:n]) for c, v in ex.items()}
    inner = {c: (v[0][n:], v[1][n:]) for c, v in ex.items()}
    tamp_d, tamp_names = solid_clearances(scene, sub.target, ct)
    # the curved needle's arcs start at the cannula tip: tried only where its cannula gets
    # there (a blocked cannula part already makes the curved needle infeasible)
    r_cv = _radius("vertebroplasty_curved", ins)
    reach = np.ones(n, bool)
    for c in OBSTACLE_CLASSES:
        reach &= outer[c][0] - r_cv - opt.margins[c] >= 0.0
    arcs = [dict(_NO_ARC) for _ in range(n)]
    live = np.flatnonzero(reach)
    if len(live):
        for j, a in zip(live, curved_arcs(scene, geo, fields, ct[live], -sub.direction[live], side, ins["vertebroplasty_curved"], opt)):
            arcs[j] = a
    angles = _entry_angles(fields, sub, side)
    return [_candidate(scene, level, geo, fields, sub, j, side, route, outer, inner, (tamp_d[j], tamp_names[j]), arcs[j], ins, opt, float(angles[j])) for j in range(n)]


def _violations(clear: dict[str, float], closest: dict[str, str], r: float, opt: SolverOptions, part: str) -> list[dict[str, Any]]:
    out = []
    for c in OBSTACLE_CLASSES:
        excess = clear[c] - r - opt.margins[c]
        if excess < 0:
            out.append({"constraint": f"clearance_{c}", "part": part, "structure": closest[c], "structure_display": display_name(closest[c]) if closest[c] else c, "clearance_mm": _r(clear[c] - r), "required_mm": opt.margins[c], "excess_mm": _r(excess)})
    return out


def _candidate(scene, level, geo, fields, sub: Candidates, j: int, side: str, route: str, outer, inner, tamp_hw, arcs, ins, opt: SolverOptions, ang: float) -> dict[str, Any]:
    T = sub.target[j]
    D = sub.direction[j]
    skin = sub.skin_entry[j]
    tip = sub.cannula_tip[j]
    depth = float(sub.t_skin[j])
    t_can = float(sub.t_cannula[j])
    cannula_depth = depth - t_can
    c_out = {c: float(outer[c][0][j]) for c in OBSTACLE_CLASSES}
    n_out = {c: outer[c][1][j] for c in OBSTACLE_CLASSES}
    c_in = {c: float(inner[c][0][j]) for c in OBSTACLE_CLASSES}
    n_in = {c: inner[c][1][j] for c in OBSTACLE_CLASSES}
    clear = {c: min(c_out[c], c_in[c]) for c in OBSTACLE_CLASSES}
    closest = {c: (n_out[c] if c_out[c] <= c_in[c] else n_in[c]) for c in OBSTACLE_CLASSES}
    per_inst: dict[str, dict[str, Any]] = {}
    for kind in ("kyphoplasty", "vertebroplasty_straight", "vertebroplasty_curved"):
        r = _radius(kind, ins)
        need = cannula_depth if kind != "vertebroplasty_straight" else depth
        usable = float(ins[kind].cannula.usable_length_mm if kind == "vertebroplasty_curved" else ins[kind].usable_length_mm)
        lengths = sorted({usable, *NEEDLE_LENGTHS_MM})
        fits = [L for L in lengths if need <= L - opt.skin_allowance_mm]
        viol = _violations(c_out, n_out, r, opt, "cannula")
        if kind != "vertebroplasty_curved":
            viol += _violations(c_in, n_in, r, opt, "channel")
        if not fits:
            viol.append({"constraint": "depth", "part": "cannula", "structure": "", "structure_display": "needle length", "clearance_mm": None, "required_mm": None, "excess_mm": _r(max(lengths) - opt.skin_allowance_mm - need), "depth_mm": _r(need, 1)})
        if kind == "kyphoplasty":
            margin_ch = float(ins["kyphoplasty"].min_channel_margin_mm)
            fit = [L for L in opt.bone_tamp_lengths_mm if L + margin_ch <= t_can]
            tamp_len = max(fit) if fit else None
            if tamp_len is None:
                need_ch = min(opt.bone_tamp_lengths_mm) + margin_ch
                viol.append({"constraint": "kyphoplasty_channel", "part": "channel", "structure": f"{level}_body", "structure_display": f"{level} body", "clearance_mm": _r(t_can, 1), "required_mm": need_ch, "excess_mm": _r(t_can - need_ch)})
            r_tamp = 0.5 * float(ins["kyphoplasty"].tamp.inflated_diameter_mm)
            tamp_clear = float(tamp_hw[0]) - r_tamp
            if tamp_clear < opt.margins["hardware"]:
                viol.append({"constraint": "bone_tamp_hardware", "part": "channel", "structure": tamp_hw[1], "structure_display": (display_name(tamp_hw[1]) if tamp_hw[1] else "hardware"), "clearance_mm": _r(tamp_clear), "required_mm": opt.margins["hardware"], "excess_mm": _r(tamp_clear - opt.margins["hardware"])})
        if kind == "vertebroplasty_curved" and arcs["arc"] is None and arcs.get("arc_fails") != "cannula_blocked":
            hw_fail = arcs.get("arc_fails") == "hardware"
            viol.append({"constraint": "curved_arc", "part": "arc", "structure": "" if hw_fail else f"{level}_body", "structure_display": ("no curve clears the hardware" if hw_fail else f"no curve stays inside the {level} body"), "clearance_mm": None, "required_mm": None, "excess_mm": -0.5})
        per_inst[kind] = {"feasible": not viol, "violations": viol, "needle_length_mm": (fits[0] if fits else None), "radius_mm": r, "insertion_mm": _r(need, 1)}
        if kind == "kyphoplasty":
            per_inst[kind]["bone_tamp_length_mm"] = tamp_len
    if sub.fail[j] & ~search.FAIL_BITS["obstacle"] & ~search.FAIL_BITS["depth"]:
        for kind in per_inst:
            per_inst[kind]["feasible"] = False
            per_inst[kind]["violations"].append({"constraint": "geometry", "part": "cannula", "structure": "", "structure_display": _fail_text(int(sub.fail[j])), "clearance_mm": None, "required_mm": None, "excess_mm": -1.0})
    feasible_kinds = [k for k, v in per_inst.items() if v["feasible"]]
    guide = _guide_check(opt, c_out, n_out, cannula_depth) if opt.coaxial_guide else None
    # the candidate's binding constraint: the worst violation of its most permissive instrument
    binding = None
    if not feasible_kinds:
        vs = per_inst["vertebroplasty_curved"]["violations"]
        binding = min(vs, key=lambda v: (v["excess_mm"] if v["excess_mm"] is not None else 0.0)) if vs else None
    cov = {"straight_zones": _straight_zone(geo, T, side), **{k: v for k, v in arcs.items() if k != "arc"}}
    w = opt.weights
    r_vp = _radius("vertebroplasty_straight", ins)
    # clearance term over the parts the feasible instruments use
    parts = c_out if feasible_kinds == ["vertebroplasty_curved"] else clear
    excess = min(parts[c] - r_vp - opt.margins[c] for c in OBSTACLE_CLASSES)
    s_clear = float(np.clip(excess / opt.clearance_saturation_mm, 0, 1))
    s_len = float(np.clip(1.0 - depth / max(NEEDLE_LENGTHS_MM), 0, 1))
    s_ang = float(np.clip((60.0 - ang) / 60.0, 0, 1)) if np.isfinite(ang) else 0.0
    zones: set[str] = set()
    if "vertebroplasty_straight" in feasible_kinds or "kyphoplasty" in feasible_kinds:
        zones |= set(cov["straight_zones"])
    if "vertebroplasty_curved" in feasible_kinds:
        zones |= set(cov["curved_zones"])
    s_cov = (("midline" in zones) + ("contralateral" in zones)) / 2.0
    s_kp = 1.0 if per_inst["kyphoplasty"]["feasible"] else 0.0
    score = w["clearance"] * s_clear + w["length"] * s_len + w["entry_angle"] * s_ang + w["coverage"] * s_cov + w["kyphoplasty"] * s_kp
    cid = f"{level}-{side[0].upper()}-{route}-{_hash(T, D)}"
    return {
        "id": cid,
        "level": level,
        "side": side,
        "route": route,
        "target_lps_mm": _pt(T),
        "skin_entry_lps_mm": _pt(skin),
        "bone_entry_lps_mm": _pt(T + float(sub.t_body[j]) * D),
        "cannula_tip_lps_mm": _pt(tip),
        "direction_lps": [round(float(x), 6) for x in -D],
        "curved": arcs["arc"],
        "metrics": {
            "skin_to_target_mm": _r(depth, 1),
            "skin_to_body_mm": _r(depth - float(sub.t_body[j]), 1),
            "skin_to_cannula_tip_mm": _r(cannula_depth, 1),
            "in_body_mm": _r(float(sub.t_body[j]), 1),
            "channel_mm": _r(t_can, 1),
            "pedicle_inside_mm": _r(float(sub.pedicle_mm[j]), 1),
            "tilt_from_vertical_deg": _r(float(sub.tilt_deg[j]), 1),
            "craniocaudal_deg": _r(float(sub.cc_deg[j]), 1),
            "bone_entry_angle_deg": _r(ang, 1),
            "axis_clearance_mm": {c: _r(clear[c]) for c in OBSTACLE_CLASSES},
            "cannula_axis_clearance_mm": {c: _r(c_out[c]) for c in OBSTACLE_CLASSES},
            "channel_axis_clearance_mm": {c: _r(c_in[c]) for c in OBSTACLE_CLASSES},
            "closest_structure": {c: closest[c] for c in OBSTACLE_CLASSES if closest[c]},
            "coverage": cov,
            "fluoro_visibility": None,
        },
        "verdict": {"feasible": bool(feasible_kinds), "instruments": feasible_kinds, "per_instrument": per_inst, "binding": binding,
                    **({"guide": guide} if guide is not None else {})},
        "score": round(float(score), 4),
        "score_terms": {"clearance": round(s_clear, 4), "length": round(s_len, 4), "entry_angle": round(s_ang, 4), "coverage": s_cov, "kyphoplasty": s_kp, "visibility": 0.0},
    }


def _guide_check(opt: SolverOptions, c_out: dict[str, float], n_out: dict[str, str], cannula_depth: float) -> dict[str, Any]:
    """The coaxial guide needle: along the cannula part, to the cannula tip."""
    g = get_instrument(opt.coaxial_guide)
    r = float(g.radius_mm)
    viol = _violations(c_out, n_out, r, opt, "cannula")
    fits = float(g.usable_length_mm) - opt.skin_allowance_mm >= cannula_depth
    if not fits:
        viol.append({"constraint": "depth", "part": "cannula", "structure": "", "structure_display": "guide needle length",
                     "clearance_mm": None, "required_mm": None, "excess_mm": _r(float(g.usable_length_mm) - opt.skin_allowance_mm - cannula_depth),
                     "depth_mm": _r(cannula_depth, 1)})
    return {"instrument": g.name, "radius_mm": r, "insertion_mm": _r(cannula_depth, 1), "needle_length_mm": float(g.usable_length_mm),
            "feasible": not viol, "violations": viol}


def _straight_zone(geo: LevelGeometry, T: np.ndarray, side: str) -> list[str]:
    s = 1.0 if side == "left" else -1.0
    u = s * float(geo.to_local(T)[0])
    hw = geo.half[0]
    return ["ipsilateral" if u > hw / 6 else ("midline" if u >= -hw / 6 else "contralateral")]


def _hash(T: np.ndarray, D: np.ndarray) -> str:
    import hashlib

    b = np.round(np.concatenate([T, D]), 4).astype(np.float64).tobytes()
    return hashlib.sha1(b).hexdigest()[:8]


def _fail_text(bits: int) -> str:
    text = {
        "tilt": "steeper than the tilt limit",
        "craniocaudal": "beyond the cranio-caudal angle limit",
        "reentry": "leaves and re-enters the body (crosses the lateral cortex)",
        "no_skin": "no skin entry within reach",
        "wrong_side": "enters the body across the midline",
    }
    return "; ".join(t for k, t in text.items() if bits & search.FAIL_BITS[k])


def _explain(e: dict[str, Any]) -> dict[str, Any]:
    b = e["verdict"]["binding"]
    if b is None:
        return {"binding": None, "reason": "no candidate passed", "closest_candidate": e["id"]}
    if b["constraint"].startswith("clearance_"):
        if b["clearance_mm"] is not None and b["clearance_mm"] < 0:
            msg = f"needle would hit the {b['structure_display']} (clearance {b['clearance_mm']:.1f} mm, margin {b['required_mm']:.1f} mm)"
        else:
            msg = f"{b['structure_display']} too close: clearance {b['clearance_mm']:.1f} mm, margin {b['required_mm']:.1f} mm"
    elif b["constraint"] == "depth":
        msg = f"too deep for the longest needle (skin to target {b.get('depth_mm')} mm)"
    elif b["constraint"] == "kyphoplasty_channel":
        msg = f"straight channel in the body {b['clearance_mm']} mm, bone tamp needs {b['required_mm']} mm"
    else:
        msg = b["structure_display"]
    others = [
        v for v in e["verdict"]["per_instrument"]["vertebroplasty_curved"]["violations"] if v is not b and v["structure_display"]
    ]
    if others:
        msg += "; also " + ", ".join(
            f"{v['structure_display']} ({v['clearance_mm']:.1f} mm)" if v["clearance_mm"] is not None else v["structure_display"]
            for v in others
        )
    return {"binding": b, "reason": msg, "violations": e["verdict"]["per_instrument"]["vertebroplasty_curved"]["violations"],
            "closest_candidate": e["id"], "closest_candidate_metrics": {"skin_entry_lps_mm": e["skin_entry_lps_mm"], "target_lps_mm": e["target_lps_mm"]}}


# ---------------------------------------------------------------------------- recommendation
def recommend(geo: LevelGeometry, cands: list[dict[str, Any]], routes: list[dict[str, Any]], opt: SolverOptions) -> dict[str, Any]:
    """Procedure per the practice in the domain doc, overridable with ``opt.procedure``.

    * 0 or 1 screw at the level: kyphoplasty through a free pedicle (transpedicular) or a
      parapedicular route; unipedicular when the best access ends at or across the midline,
      else bilateral when the other side also has a kyphoplasty access.
    * bilateral screws: curved-needle vertebroplasty through a parapedicular or
      extrapedicular route; unipedicular when the curved needle reaches the far side,
      else bilateral.
    * when the preferred procedure has no feasible access, the next one that has.
    """
    n_screws = len(geo.screws)
    if opt.procedure != "auto":
        order = [opt.procedure]
        rule = f"forced by option procedure={opt.procedure}"
    elif n_screws >= 2:
        order = ["vertebroplasty_curved", "vertebroplasty_straight", "kyphoplasty"]
        rule = "bilateral pedicle screws: no free pedicle; extrapedicular/parapedicular curved-needle vertebroplasty (domain practice)"
    else:
        order = ["kyphoplasty", "vertebroplasty_curved", "vertebroplasty_straight"]
        rule = ("no pedicle screw" if n_screws == 0 else f"one pedicle screw ({geo.screws[0]})") + ": kyphoplasty through a free pedicle or parapedicular (domain practice)"
    route_pref = {"transpedicular": 0, "parapedicular": 1, "extrapedicular_superior": 2, "extrapedicular_inferior": 3}
    for proc in order:
        ok = [c for c in cands if proc in c["verdict"]["instruments"] and c["verdict"].get("guide", {"feasible": True})["feasible"]]
        if not ok:
            continue
        if proc == "kyphoplasty" and opt.procedure == "auto":
            ok.sort(key=lambda c: (route_pref[c["route"]], -c["score"], c["id"]))
        else:
            ok.sort(key=lambda c: (-c["score"], c["id"]))
        best = ok[0]
        cov = best["metrics"]["coverage"]
        if proc == "vertebroplasty_curved":
            uni = bool(cov["curved_reaches_far_side"])
        else:
            uni = "midline" in cov["straight_zones"] or "contralateral" in cov["straight_zones"]
        other = [c for c in ok if c["side"] != best["side"]]
        access = "unipedicular" if uni or not other else "bilateral"
        chosen = [best["id"]] + ([other[0]["id"]] if access == "bilateral" else [])
        steps = None
        if opt.coaxial_guide:
            tool = {"kyphoplasty": "kyphoplasty cannula", "vertebroplasty_curved": "curved-needle cannula", "vertebroplasty_straight": "vertebroplasty needle"}[proc]
            steps = [f"{opt.coaxial_guide} guide needle to the cannula tip", f"{tool} coaxially over the guide"] + (
                ["curved needle out of the cannula tip"] if proc == "vertebroplasty_curved" else ["drill, then bone tamp in the channel"] if proc == "kyphoplasty" else [])
        return {
            **({"coaxial_steps": steps} if steps else {}),
            "procedure": proc,
            "access": access,
            "candidates": chosen,
            "route": best["route"],
            "side": best["side"],
            "rule": rule,
            "safe_route_found": True,
        }
    return {"procedure": None, "access": None, "candidates": [], "rule": rule, "safe_route_found": False,
            "reason": "no route passes every hard constraint at this level; see routes for the binding constraints"}


# ---------------------------------------------------------------------------- multi-level plan
def plan(scene: Scene, levels: list[str], opt: SolverOptions | None = None) -> dict[str, Any]:
    """Plan several levels; recommended needles of different levels must keep their skin
    entries ``skin_entry_separation_mm`` apart and their axes ``needle_separation_mm``
    apart (beyond both radii); a conflicting choice is replaced by the next feasible one."""
    opt = opt or SolverOptions()
    if not levels:
        raise SolverError("give at least one level to plan, e.g. --levels L3 L4", code="PLN-SOL-001")
    t0 = time.perf_counter()
    t_common = scene.prepare_fields(list(levels), opt)
    from planner.solve import exact

    if exact._kernels() is not None:  # every level's obstacle meshes packed once (one copy each)
        pack_meshes(scene, [nm for lv in levels for nm in _level_obstacles(scene, lv)[0]])
    out_levels = [plan_level(scene, lv, opt) for lv in levels]
    if opt.weights["visibility"] > 0:
        for lv in out_levels:
            t_vis = time.perf_counter()
            _fill_visibility(scene, lv, opt)
            lv["run"]["visibility_s"] = round(time.perf_counter() - t_vis, 3)
    _resolve_conflicts(out_levels, opt)
    return {
        "schema": "planner.plan",
        "schema_version": PLAN_SCHEMA_VERSION,
        "frame": "LPS",
        "units": "mm",
        "scene": {"source": scene.source, "levels_found": list(scene.levels), "screws": [s.name for s in scene.screws], "image": scene.labels.describe()},
        "options": opt.to_dict(),
        "instruments": {k: v.to_dict() for k, v in _instruments(opt).items()},
        "levels": out_levels,
        "warnings": [w.to_dict() for w in scene.warnings],
        "summary": {
            "levels_planned": list(levels),
            "levels_without_safe_route": [lv["level"] for lv in out_levels if not lv["recommendation"]["safe_route_found"]],
        },
        "run": {"total_s": round(time.perf_counter() - t0, 3), "common_fields_s": round(t_common, 3), "levels": {lv["level"]: lv.pop("run") for lv in out_levels}},
    }


def _fill_visibility(scene: Scene, lv: dict[str, Any], opt: SolverOptions) -> None:
    """Fluoroscopic visibility of a level's best candidates (:mod:`planner.fluoro`), into
    their score; the ranking and the recommendation are redone with it.

    Each of the ``opt.visibility_top_n`` best candidates and the recommended ones gets a
    C-arm view search over 629 poses (:class:`planner.fluoro.views.ViewSearchSettings`:
    hardware overlap on the needle path, its tip and the posterior body wall between the
    pedicles); ``metrics.fluoro_visibility`` records the best view, the score term
    ``visibility`` is ``1 - overlap`` of it.  A candidate is seen with the instrument it
    would be placed with: the level's recommended procedure where the candidate allows it
    (:meth:`planner.fluoro.views.Trajectory.from_candidate`), so a curved-needle
    vertebroplasty is its cannula plus the chosen arc, its tip the arc's end (the curved
    stylet's working tip), anything else the straight needle to its target.  The wall is
    the band at the tip's height (the whole wall between the pedicles where that band is
    empty), as in the report images (:mod:`planner.viewer.report`).
    """
    from planner.fluoro import FluoroError
    from planner.fluoro.views import Trajectory, plan_views, posterior_wall_points

    cands = lv["candidates"]
    if not cands:
        return
    level = lv["level"]
    pick = {c["id"] for c in cands[: max(int(opt.visibility_top_n), 0)]} | set(lv["recommendation"]["candidates"])
    hardware = list(scene.screws) + list(scene.rods) + list(scene.crosslinks)
    whole_wall = None
    w = opt.weights["visibility"]
    procedure = lv["recommendation"].get("procedure")
    for c in cands:
        if c["id"] not in pick:
            continue
        use = procedure if procedure in c["verdict"]["instruments"] else None
        traj = Trajectory.from_candidate(c, use, name=c["id"])
        try:
            wall = posterior_wall_points(scene.labels, level, tip_lps=traj.tip_lps)
        except FluoroError:  # no wall at the tip's height
            if whole_wall is None:
                whole_wall = posterior_wall_points(scene.labels, level)
            wall = whole_wall
        vp = plan_views(traj, hardware, wall)
        best = vp.best
        vis = float(vp.visibility)
        c["metrics"]["fluoro_visibility"] = {
            "visibility": round(vis, 4),
            "best_view": {"lao_deg": round(float(best["lao"]), 1), "cran_deg": round(float(best["cran"]), 1),
                          "overlap_path": round(float(best["path"]), 4), "overlap_tip": round(float(best["tip"]), 4),
                          "overlap_wall": round(float(best["wall"]), 4)},
            "poses_searched": vp.n_poses,
        }
        c["score_terms"]["visibility"] = round(vis, 4)
        c["score"] = round(float(c["score"] + w * vis), 4)
    cands.sort(key=lambda e: (-e["score"], e["id"]))
    for k, e in enumerate(cands):
        e["rank"] = k + 1
    lv["recommendation"] = recommend(scene.level(level), cands, lv["routes"], opt)


def _axis_distance(a0, a1, b0, b1) -> float:
    from planner.solve import exact

    kern = exact._kernels()
    if kern is not None:  # one pair: the compiled formula, without numpy's per-call overhead
        return float(kern.segment_segment_distance1(*(np.asarray(x, float) for x in (a0, a1, b0, b1))))
    return float(exact.segment_segment_distance(np.asarray([a0], float), np.asarray([a1], float), np.asarray([b0], float), np.asarray([b1], float))[0])


#: Alternatives per level considered when recommended needles of several levels clash.
CONFLICT_ALTERNATIVES = 6


def _level_options(lv: dict[str, Any], opt: SolverOptions, clash=None) -> list[list[dict[str, Any]]]:
    """Needle sets a level can use: its recommendation first, then the next feasible
    candidates of the same procedure (each paired, for bilateral access, with the best
    other-side candidate that does not clash with it)."""
    clash = clash or (lambda a, b: _clash(a, b, opt))
    rec = lv["recommendation"]
    by_id = {c["id"]: c for c in lv["candidates"]}
    first = [by_id[i] for i in rec["candidates"]]
    same = [c for c in lv["candidates"] if rec["procedure"] in c["verdict"]["instruments"] and c["verdict"].get("guide", {"feasible": True})["feasible"]]
    same.sort(key=lambda c: (-c["score"], c["id"]))
    out = [first]
    for c in same:
        if c["id"] == first[0]["id"] or len(out) > CONFLICT_ALTERNATIVES:
            continue
        pair = [c]
        if rec["access"] == "bilateral":
            other = [o for o in same if o["side"] != c["side"] and not clash(o, c)]
            if other:
                pair.append(other[0])
        out.append(pair)
    return out


def _resolve_conflicts(levels: list[dict[str, Any]], opt: SolverOptions) -> None:
    """Choose one needle set per level so that no two levels' needles clash (skin entries
    and axes, :func:`_clash`) at the least cost (an alternative costs 1, or 3 when it
    changes the route, plus a thousandth of the score it loses): an exhaustive search over each
    level's recommendation and its next :data:`CONFLICT_ALTERNATIVES` alternatives
    (deterministic; ties keep earlier choices).  A level without a clash-free choice keeps
    its recommendation with a note."""
    active = [lv for lv in levels if lv["recommendation"]["safe_route_found"]]
    if len(active) < 2:
        return
    memo: dict[tuple[str, str], bool] = {}

    def clash(p: dict[str, Any], q: dict[str, Any]) -> bool:
        """:func:`_clash`, each pair once (the search revisits pairs many times)."""
        key = (p["id"], q["id"])
        if key not in memo:
            memo[key] = _clash(p, q, opt)
        return memo[key]

    opts = [_level_options(lv, opt, clash) for lv in active]
    # cost of a choice: 0 for the recommendation; an alternative costs 1, 3 when it changes
    # the route (a kyphoplasty moved off its free pedicle loses more than a curved needle
    # moved to the other side), plus a thousandth of the score it loses
    cost = [
        [0.0] + [
            1.0 + 2.0 * (alt[0]["route"] != o[0][0]["route"]) + 1e-3 * max(o[0][0]["score"] - alt[0]["score"], 0.0)
            for alt in o[1:]
        ]
        for o in opts
    ]
    best: tuple[float, list[int]] | None = None

    def search(k: int, chosen: list[dict[str, Any]], picks: list[int], loss: float) -> None:
        nonlocal best
        if best is not None and loss > best[0] + 1e-12:
            return
        if k == len(opts):
            if best is None or loss < best[0] - 1e-12:
                best = (loss, list(picks))
            return
        for j, needles in enumerate(opts[k]):
            if any(clash(p, q) for p in needles for q in chosen):
                continue
            # the recommendation is the preferred choice (route preference, then score): the
            # loss counts how far down each level's list the choice is, then the score lost
            search(k + 1, chosen + needles, picks + [j], loss + cost[k][j])

    search(0, [], [], 0.0)
    for k, lv in enumerate(active):
        rec = lv["recommendation"]
        if best is None:
            others = [q for m, o in enumerate(opts) if m != k for q in o[0]]
            hits = [q for p in opts[k][0] for q in others if clash(p, q)]
            if hits:
                rec["conflict_note"] = f"clashes with {hits[0]['id']}; no combination of alternatives is clash-free"
            continue
        j = best[1][k]
        if j == 0:
            continue
        needles = opts[k][j]
        rec["conflict_note"] = f"first choice {rec['candidates'][0]} clashed with another level's needle; replaced by {needles[0]['id']}"
        rec["candidates"] = [c["id"] for c in needles]
        rec["side"] = needles[0]["side"]
        rec["route"] = needles[0]["route"]
        if rec["access"] == "bilateral" and len(needles) < 2:
            rec["access"] = "unipedicular"


def _clash(p: dict[str, Any], q: dict[str, Any], opt: SolverOptions) -> bool:
    if np.linalg.norm(np.subtract(p["skin_entry_lps_mm"], q["skin_entry_lps_mm"])) < opt.skin_entry_separation_mm:
        return True
    rp = max(v["radius_mm"] for v in p["verdict"]["per_instrument"].values())
    rq = max(v["radius_mm"] for v in q["verdict"]["per_instrument"].values())
    d = _axis_distance(p["target_lps_mm"], p["skin_entry_lps_mm"], q["target_lps_mm"], q["skin_entry_lps_mm"])
    return d < rp + rq + opt.needle_separation_mm

