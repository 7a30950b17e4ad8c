"""Compiled kernels against numpy references: the stage-1 traces (:func:`planner.solve.kernels.trace_candidates`) against a
numpy reference of the same sphere-tracing loops, on the case-example phantom and on an
oblique, anisotropic synthetic field."""

from __future__ import annotations

import numpy as np
import pytest

from planner.solve import kernels
from planner.solve.config import SolverOptions
from planner.solve.scene import Grid
from planner.solve.search import CANNULA_IN_BODY_MM, directions, targets


def _trace_min_ref(grid, F, T, D, t, t_end, radius, smin, stop_below):
    n = len(T)
    f_min = np.full(n, np.inf, np.float32)
    f_t = t.copy()
    active = np.arange(n)
    active = active[t[active] <= t_end[active]]
    for _ in range(4000):
        if not len(active):
            break
        p = T[active] + t[active, None] * D[active]
        f = grid.sample(F, p)
        cur = f_min[active]
        lower = f < cur
        f_min[active] = np.where(lower, f, cur)
        f_t[active] = np.where(lower, t[active], f_t[active])
        t[active] += np.maximum(f - np.float32(radius), np.float32(smin))
        gone = (t[active] > t_end[active]) | (f < stop_below)
        active = active[~gone]
    return f_min, f_t


def trace_ref(T, D, local, body, grid, skin, F, smin, reach, radius, stop_below):
    """Numpy reference: body exit, skin trace, cannula part then channel (vectorised)."""
    n = len(T)
    t_body = np.zeros(n)
    active = np.arange(n)
    for _ in range(200):
        if not len(active):
            break
        s = local.sample(body, T[active] + t_body[active, None] * D[active])
        done = s >= 0.0
        t_body[active] += np.where(done, 0.0, np.maximum(-s, np.float32(0.25)))
        active = active[~done]
    t_skin = np.full(n, np.nan)
    t = t_body.copy()
    active = np.arange(n)
    for _ in range(500):
        if not len(active):
            break
        p = T[active] + t[active, None] * D[active]
        g = grid.sample(skin, p)
        out = g >= 0.0
        t_skin[active[out]] = t[active[out]]
        t[active] += np.maximum(-g, np.float32(smin))
        gone = out | (t[active] > reach) | ~grid.inside(p, pad=-1.0)
        active = active[~gone]
    ts = np.nan_to_num(t_skin, nan=reach)
    t_can = np.maximum(t_body - CANNULA_IN_BODY_MM, 0.0)
    f_out, t_out = _trace_min_ref(grid, F, T, D, t_can.copy(), ts, radius, smin, stop_below)
    live = np.flatnonzero(f_out >= stop_below)
    f_in = np.full(n, np.inf, np.float32)
    t_in = np.zeros(n)
    if len(live):
        f_in[live], t_in[live] = _trace_min_ref(grid, F, T[live], D[live], np.zeros(len(live)), t_can[live], radius, smin, stop_below)
    return t_body, t_skin, t_can, f_out, t_out, f_in, t_in


def _compiled(T, D, local, body, grid, skin, F, smin, reach, radius, stop_below):
    return kernels.trace_candidates(T, D, body, local._M, local._o, skin, F, grid._M, grid._o, grid._hi,
                                    smin, reach, radius, stop_below, float(CANNULA_IN_BODY_MM))


def _agree(a, b):
    names = ("t_body", "t_skin", "t_cannula", "f_out", "t_out", "f_in", "t_in")
    for name, x, y in zip(names, a, b):
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=name)
        fin = np.isfinite(x) & np.isfinite(y)
        np.testing.assert_array_equal(np.isinf(x), np.isinf(y), err_msg=name)
        # same loops and float32 field arithmetic: equal up to the last bits of t
        np.testing.assert_allclose(x[fin], y[fin], rtol=0, atol=1e-6, err_msg=name)


def test_trace_matches_reference_on_phantom(case_example_scene):
    opt = SolverOptions()
    scene = case_example_scene
    fields = scene.fields("L4", opt)
    geo = scene.level("L4")
    tg = targets(geo, fields, opt)[::7]
    dirs = directions(geo, "left", np.arange(0.0, 50.0, 6.0), np.arange(-30.0, 31.0, 6.0))
    T = np.ascontiguousarray(np.repeat(tg, len(dirs), axis=0))
    D = np.ascontiguousarray(np.tile(dirs, (len(tg), 1)))
    args = (T, D, fields.local, fields.body, fields.grid, fields.skin, fields.F, opt.step_min_mm, 160.0, 2.1, 0.0)
    got, ref = _compiled(*args), trace_ref(*args)
    _agree(got, ref)
    # the traces decide something: some rays collide on the cannula part, some are clear
    assert (got[3] < 0.0).any() and (got[3] > 2.1).any()
    assert np.isfinite(got[1]).mean() > 0.5


def test_trace_matches_reference_oblique_anisotropic(oblique, rng):
    A = oblique(spacing=(1.3, 0.8, 2.1))
    shape = (60, 90, 40)
    grid = Grid(A, shape)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    P = (idx @ A[:3, :3].T + A[:3, 3]).reshape(*shape, 3)
    c = P.reshape(-1, 3).mean(0)
    r = np.linalg.norm(P - c, axis=-1)
    body = (r - 12.0).astype(np.float32)  # a ball
    skin = (r - 45.0).astype(np.float32)  # the outline: a larger ball
    hole = c + np.array([20.0, 5.0, 0.0])
    F = (np.linalg.norm(P - hole, axis=-1) - 6.0).astype(np.float32)  # an obstacle ball
    T = np.ascontiguousarray(c + rng.uniform(-5.0, 5.0, size=(400, 3)))
    D = rng.normal(size=(400, 3))
    D = np.ascontiguousarray(D / np.linalg.norm(D, axis=1, keepdims=True))
    args = (T, D, grid, body, grid, skin, F, 0.5, 120.0, 1.5, -1.0)
    got, ref = _compiled(*args), trace_ref(*args)
    _agree(got, ref)
    # analytic check: the body exit of a ball of radius 12 (sdf exact up to trilinear)
    exit_exact = np.array([(-(d @ (t - c)) + np.sqrt((d @ (t - c)) ** 2 - (t - c) @ (t - c) + 144.0)) for t, d in zip(T, D)])
    # trilinear interpolation of a convex distance overestimates it by up to h^2 / (8 R) ~ 0.05 mm;
    # a step of at least 0.25 mm may overshoot the exit
    assert np.all(got[0] >= exit_exact - 0.1) and np.all(got[0] <= exit_exact + 0.5)
    assert (got[3] < 0.0).any()


@pytest.mark.parametrize("radius", [0.5, 2.1])
def test_trace_empty_interval(radius):
    grid = Grid(np.eye(4), (10, 10, 10))
    body = np.full((10, 10, 10), 1.0, np.float32)  # outside everywhere: t_body = 0
    skin = np.full((10, 10, 10), 1.0, np.float32)  # outside: t_skin = t_body
    F = np.full((10, 10, 10), 5.0, np.float32)
    T = np.array([[5.0, 5.0, 5.0]])
    D = np.array([[1.0, 0.0, 0.0]])
    got = _compiled(T, D, grid, body, grid, skin, F, 0.5, 50.0, radius, -1.0)
    assert got[0][0] == 0.0 and got[1][0] == 0.0 and got[2][0] == 0.0
    # the cannula part and the channel are single points: both sample F there once
    assert got[3][0] == np.float32(5.0) and got[5][0] == np.float32(5.0)


def test_solids_distance_matches_numpy_reference(rng):
    """Nearest implant solid of each segment: compiled (capsule-ordered, parallel) vs the
    numpy exact functions, solid by solid; ties resolve to the lowest index."""
    from planner.solve.exact import segment_cylinder_distance, segment_polyline_capsules_distance
    from planner.solve.plan import _packed_solids
    from planner.solve.scene import Solid

    solids = []
    for k in range(14):
        a = rng.uniform(-30, 30, 3)
        b = a + rng.normal(size=3) * 15.0
        solids.append(Solid(f"screw_{k}", "cylinder", float(rng.uniform(1.5, 4.0)), a=a, b=b))
    for k in range(3):
        poly = np.cumsum(rng.normal(size=(6, 3)) * 10.0, axis=0)
        solids.append(Solid(f"rod_{k}", "tube", 2.75, polyline=poly))
    solids.append(Solid("copy_of_0", "cylinder", solids[0].radius, a=solids[0].a.copy(), b=solids[0].b.copy()))  # an exact tie
    p0 = rng.uniform(-40, 40, (3000, 3))
    p1 = p0 + rng.normal(size=(3000, 3)) * rng.uniform(0.5, 30.0, (3000, 1))
    d, who = kernels.segment_solids_distance(p0, p1, *_packed_solids(solids), 1e-4)
    ref = np.stack([
        segment_cylinder_distance(p0, p1, x.a, x.b, x.radius, tol_mm=1e-4) if x.kind == "cylinder"
        else segment_polyline_capsules_distance(p0, p1, x.polyline, x.radius)
        for x in solids
    ], axis=1)
    np.testing.assert_allclose(d, ref.min(1), rtol=0, atol=2e-4)
    # the reported solid attains the minimum; the duplicate of solid 0 never wins over it
    np.testing.assert_allclose(ref[np.arange(len(p0)), who], ref.min(1), rtol=0, atol=2e-4)
    assert not np.any(who == len(solids) - 1)
    assert (d < 0).any() and (d > 5).any()


def _segments_near_level(scene, level, rng, n):
    """Segments from inside the level's body out toward and past its neighbours: some stay
    clear, some graze or cross structures, some lie wholly inside one (negative clearances)."""
    geo = scene.level(level)
    a = geo.to_world(rng.uniform(-0.6, 0.6, (n, 3)) * geo.half)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    b = a + d * rng.uniform(2.0, 120.0, (n, 1))
    return a, b


def test_forest_pass_matches_per_mesh_loop(case_example_scene, rng, monkeypatch):
    """exact_clearances: the packed compiled pass (with its fallback for touching / inside
    segments) gives the same values and names as the per-mesh loop alone, serial or parallel."""
    from planner.solve import plan as plan_mod

    scene = case_example_scene
    p0, p1 = _segments_near_level(scene, "L4", rng, 300)
    got = plan_mod.exact_clearances(scene, "L4", p0, p1)
    monkeypatch.setattr(plan_mod, "FOREST_SERIAL_BELOW", 10**9)
    got_serial = plan_mod.exact_clearances(scene, "L4", p0, p1)
    monkeypatch.setattr(plan_mod, "_level_forest", lambda scene, level: None)
    ref = plan_mod.exact_clearances(scene, "L4", p0, p1)
    negative = 0
    for c in ref:
        for g in (got, got_serial):
            np.testing.assert_array_equal(g[c][0], ref[c][0])
            assert g[c][1] == ref[c][1]
        negative += int((ref[c][0] < 0).sum())
    # the sample exercises both paths: clear segments and ones inside a structure
    assert negative > 0
    assert np.isfinite(ref["other_bone"][0]).mean() > 0.5


def test_serial_twins_match_parallel_kernels(case_example_scene, rng):
    from planner.solve.plan import _packed_solids

    scene = case_example_scene
    p0, p1 = _segments_near_level(scene, "L4", rng, 200)
    p0, p1 = np.ascontiguousarray(p0), np.ascontiguousarray(p1)
    md = scene.mesh_distance("L4_body")
    flat = md._flat()
    args = (p0, p1, *flat, int(md.depth), md.order, md.A, md.B, md.C, md.centroids, md.tri_radius, np.full(len(p0), 30.0))
    for a, b in zip(kernels.bvh_segment_distance(*args), kernels.bvh_segment_distance_serial(*args)):
        np.testing.assert_array_equal(a, b)
    packed = _packed_solids(scene.solids)
    for cap in (np.inf, 4.0):
        par = kernels.segment_solids_distance(p0, p1, *packed, 1e-4, cap)
        ser = kernels.segment_solids_distance_serial(p0, p1, *packed, 1e-4, cap)
        np.testing.assert_array_equal(par[0], ser[0])
        np.testing.assert_array_equal(par[1], ser[1])


def test_capped_solids_distance_is_exact_below_the_cap(case_example_scene, rng):
    from planner.solve.plan import _packed_solids

    scene = case_example_scene
    geo = scene.level("L4")
    # short chords around the pedicles, where the screws are
    a = geo.to_world(rng.uniform(-1.2, 1.2, (2000, 3)) * geo.half * np.array([1.0, 2.0, 1.0]))
    b = a + rng.normal(size=(2000, 3))
    packed = _packed_solids(scene.solids)
    full, who = kernels.segment_solids_distance(np.ascontiguousarray(a), np.ascontiguousarray(b), *packed, 1e-4, np.inf)
    cap = 3.0
    d, w = kernels.segment_solids_distance(np.ascontiguousarray(a), np.ascontiguousarray(b), *packed, 1e-4, cap)
    below = full < cap
    assert below.any() and (~below).any()
    np.testing.assert_array_equal(d[below], full[below])
    np.testing.assert_array_equal(w[below], who[below])
    assert np.all(d[~below] == cap) and np.all(w[~below] == -1)


def test_route_and_trace_serial_twins(case_example_scene):
    from planner.solve.search import evaluate

    opt = SolverOptions()
    scene = case_example_scene
    fields = scene.fields("L4", opt)
    geo = scene.level("L4")
    tg = targets(geo, fields, opt)[::11]
    dirs = directions(geo, "left", np.arange(0.0, 50.0, 10.0), np.arange(-30.0, 31.0, 15.0))
    T = np.ascontiguousarray(np.repeat(tg, len(dirs), axis=0))
    D = np.ascontiguousarray(np.tile(dirs, (len(tg), 1)))
    side = np.zeros(len(T), np.int8)
    big = evaluate(T, D, side, geo, fields, opt, 2.1, 150.0)
    assert len(T) < kernels.SERIAL_BELOW_RAYS  # the serial twins
    old = kernels.SERIAL_BELOW_RAYS
    try:
        kernels.SERIAL_BELOW_RAYS = 0  # the parallel kernels
        par = evaluate(T, D, side, geo, fields, opt, 2.1, 150.0)
    finally:
        kernels.SERIAL_BELOW_RAYS = old
    for name in ("t_body", "t_skin", "f_min", "f_t", "t_cannula", "route", "pedicle_mm", "fail"):
        np.testing.assert_array_equal(getattr(big, name), getattr(par, name))
    assert (big.route == 0).any()
