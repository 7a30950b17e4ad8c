"""Exact segment distances (planner.solve.exact) against independent checks (planner.solve.verify).

Every comparison with dense sampling uses the two one-sided bounds that hold for a correct
exact minimum: ``exact <= sampled + tiny`` (the samples are points of the segment) and
``sampled - exact <= h / 2`` (the signed distance is 1-Lipschitz and the minimiser lies
within half a spacing of a sample).  Analytic configurations pin the values exactly.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from planner.solve import exact as ex
from planner.solve import verify as vf

ROOT = Path(__file__).resolve().parents[1]
TINY = 1e-9


def _random_segments(rng, n, lo, hi, length):
    p0 = rng.uniform(lo, hi, (n, 3))
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1)[:, None]
    return p0, p0 + d * rng.uniform(0.0, length, (n, 1))


def _box_sdf(p, half):
    q = np.abs(p) - half
    return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)


@pytest.fixture(scope="module")
def sphere_mesh():
    return trimesh.creation.icosphere(subdivisions=5, radius=20.0)  # 20480 faces


@pytest.fixture(scope="module")
def sphere_md(sphere_mesh):
    return ex.MeshDistance(sphere_mesh.vertices, sphere_mesh.faces)


# ------------------------------------------------------------------- segment / segment
def test_segment_segment_analytic():
    f = ex.segment_segment_distance
    # skew perpendicular lines crossing at distance 3
    assert f([[-1, 0, 0]], [[1, 0, 0]], [[0, -1, 3]], [[0, 1, 3]])[0] == pytest.approx(3.0, abs=1e-15)
    # parallel overlapping, at distance 2
    assert f([[0, 0, 0]], [[10, 0, 0]], [[5, 2, 0]], [[15, 2, 0]])[0] == pytest.approx(2.0, abs=1e-15)
    # parallel disjoint (gap 4 along the axis, 3 across): 5
    assert f([[0, 0, 0]], [[1, 0, 0]], [[5, 3, 0]], [[9, 3, 0]])[0] == pytest.approx(5.0, abs=1e-14)
    # collinear touching, crossing
    assert f([[0, 0, 0]], [[1, 0, 0]], [[1, 0, 0]], [[3, 0, 0]])[0] == 0.0
    assert f([[-1, -1, 0]], [[1, 1, 0]], [[-1, 1, 0]], [[1, -1, 0]])[0] == pytest.approx(0.0, abs=1e-15)
    # degenerate: point vs segment, point vs point
    assert f([[0, 4, 0]], [[0, 4, 0]], [[-1, 0, 0]], [[1, 0, 0]])[0] == pytest.approx(4.0, abs=1e-15)
    assert f([[1, 2, 3]], [[1, 2, 3]], [[1, 2, 7]], [[1, 2, 7]])[0] == pytest.approx(4.0, abs=1e-15)
    # nearly parallel crossing (1e-9 rad): distance 0 up to round-off
    d = f([[-50, 0, 0]], [[50, 0, 0]], [[-50, -50e-9, 0]], [[50, 50e-9, 0]])[0]
    assert d < 1e-9


def test_segment_segment_vs_dense(rng):
    p0, p1 = _random_segments(rng, 60, -10, 10, 15)
    q0, q1 = _random_segments(rng, 60, -10, 10, 15)
    exact = ex.segment_segment_distance(p0, p1, q0, q1)
    # brute force: sample p densely, exact point-to-segment distance to q (independent code)
    pts, owner = vf.dense_points(p0, p1, 0.002)
    d = np.array([vf.tube_sdf(pts[owner == i], np.stack([q0[i], q1[i]]), 0.0).min() for i in range(60)])
    assert np.all(exact <= d + TINY)
    assert np.all(d - exact <= 0.001 + TINY)
    # broadcasting (n, 3) against (1, 3) and (3,)
    b1 = ex.segment_segment_distance(p0, p1, q0[:1], q1[:1])
    b2 = ex.segment_segment_distance(p0, p1, q0[0], q1[0])
    ref = np.array([ex.segment_segment_distance(p0[i:i + 1], p1[i:i + 1], q0[:1], q1[:1])[0] for i in range(60)])
    np.testing.assert_array_equal(b1, ref)
    np.testing.assert_array_equal(b2, ref)


# ------------------------------------------------------------------------ cylinders
def test_point_cylinder_matches_independent_formula(rng):
    a, b, r = np.array([1.0, 2.0, 3.0]), np.array([5.0, -4.0, 20.0]), 3.0
    pts = rng.uniform(-10, 25, (5000, 3))
    np.testing.assert_allclose(ex.point_cylinder_distance(pts, a, b, r), vf.cylinder_sdf(pts, a, b, r), atol=1e-12)
    assert np.all(ex.point_cylinder_distance(pts, a, b, r, signed=False) >= 0)


def test_segment_cylinder_analytic():
    a, b, r = np.array([0.0, 0.0, 0.0]), np.array([0.0, 0.0, 40.0]), 2.0
    # parallel to the axis at 5 mm, overlapping the cylinder's length: 5 - r
    d = ex.segment_cylinder_distance([[5, 0, 10]], [[5, 0, 30]], a, b, r)[0]
    assert d == pytest.approx(3.0, abs=1e-9)
    # perpendicular through the axis in the middle: depth = radius
    d = ex.segment_cylinder_distance([[-10, 0, 20]], [[10, 0, 20]], a, b, r)[0]
    assert d == pytest.approx(-2.0, abs=1e-9)
    # along the axis through both caps: depth = min(r, L/2) = r
    d = ex.segment_cylinder_distance([[0, 0, -5]], [[0, 0, 45]], a, b, r)[0]
    assert d == pytest.approx(-2.0, abs=1e-9)
    # beyond the cap, diagonal to the rim: hypot(axial 3, radial 4)
    d = ex.segment_cylinder_distance([[6, 0, 43]], [[6, 0, 60]], a, b, r)[0]
    assert d == pytest.approx(5.0, abs=1e-9)
    # degenerate zero-length segment = point distance
    d = ex.segment_cylinder_distance([[0, 7, 20]], [[0, 7, 20]], a, b, r)[0]
    assert d == pytest.approx(5.0, abs=1e-12)


def test_segment_cylinder_vs_dense(rng):
    a, b, r = np.array([1.0, 2.0, 3.0]), np.array([5.0, -4.0, 20.0]), 3.0
    p0, p1 = _random_segments(rng, 150, -12, 25, 30)
    exact = ex.segment_cylinder_distance(p0, p1, a, b, r)
    step = 0.01
    dense = vf.primitive_clearance(p0, p1, "cylinder", a=a, b=b, radius=r, step_mm=step)
    assert (exact < 0).sum() >= 5 and (exact > 0).sum() >= 50
    assert np.all(exact <= dense + TINY + 1e-9)  # + golden-section tolerance
    assert np.all(dense - exact <= step / 2 + TINY)


# ------------------------------------------------------------------------- capsules
def test_segment_capsule_analytic():
    a, b, r = np.array([0.0, 0.0, 0.0]), np.array([0.0, 0.0, 40.0]), 2.5
    assert ex.segment_capsule_distance([[5, 0, 10]], [[5, 0, 30]], a, b, r)[0] == pytest.approx(2.5, abs=1e-14)
    assert ex.segment_capsule_distance([[-9, 0, 20]], [[9, 0, 20]], a, b, r)[0] == pytest.approx(-2.5, abs=1e-14)
    # past the end: distance to the end sphere
    assert ex.segment_capsule_distance([[3, 0, 44]], [[3, 0, 60]], a, b, r)[0] == pytest.approx(2.5, abs=1e-14)


def test_polyline_capsules_vs_dense(rng):
    poly = np.array([[0, 0, 0], [10, 0, 0], [15, 5, 3], [20, 5, 10.0]])
    p0, p1 = _random_segments(rng, 150, -5, 20, 25)
    exact = ex.segment_polyline_capsules_distance(p0, p1, poly, 2.5)
    step = 0.01
    dense = vf.primitive_clearance(p0, p1, "tube", polyline=poly, radius=2.5, step_mm=step)
    assert (exact < 0).sum() >= 5
    assert np.all(exact <= dense + TINY)
    assert np.all(dense - exact <= step / 2 + TINY)
    # chunking does not change anything; a single-point polyline is a ball
    np.testing.assert_array_equal(exact, ex.segment_polyline_capsules_distance(p0, p1, poly, 2.5, chunk=7))
    ball = ex.segment_polyline_capsules_distance(p0, p1, poly[:1], 1.0)
    np.testing.assert_allclose(ball, ex.point_segment_distance(poly[0], p0, p1) - 1.0, atol=1e-15)


# ------------------------------------------------------------------------- triangles
TRI = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])


def _seg_tri(p0, p1):
    d, h = ex.segment_triangle_distance(np.array([p0], float), np.array([p1], float), *TRI)
    return d[0], h[0]


def test_segment_triangle_cases():
    # crossing the face
    assert _seg_tri([2, 2, -5], [2, 2, 5]) == (0.0, True)
    # end point above the face (projection inside): plane distance
    assert _seg_tri([2, 3, 4], [2, 3, 14]) == (pytest.approx(4.0, abs=1e-14), False)
    # edge parallel: segment at z = 3 over x + y = 16, parallel to the hypotenuse x + y = 10
    d, h = _seg_tri([8, 8, 3], [12, 4, 3])
    assert d == pytest.approx(np.hypot(3.0, 6.0 / np.sqrt(2.0)), abs=1e-12) and not h
    # skew edge-edge: closest pair (6, 6, 2) on the segment, (5, 5, 0) on the hypotenuse
    d, h = _seg_tri([3, 3, 5], [9, 9, -1])
    assert d == pytest.approx(np.sqrt(6.0), abs=1e-12) and not h
    # skew edge-edge crossing over the edge y = 0 below the plane's extent
    d, h = _seg_tri([5, -3, -4], [5, -3, 4])
    assert d == pytest.approx(3.0, abs=1e-14) and not h
    # degenerate zero-length segment: point-triangle distance to the vertex region
    d, h = _seg_tri([-3, -4, 0], [-3, -4, 0])
    assert d == pytest.approx(5.0, abs=1e-14) and not h
    # coplanar segment crossing the triangle: 0 via the edges
    d, h = _seg_tri([-5, 2, 0], [20, 2, 0])
    assert d == 0.0 and h


def test_point_triangle_vs_dense(rng):
    # dense sampling of the triangle itself (independent of the region logic)
    u, v = np.meshgrid(np.linspace(0, 1, 401), np.linspace(0, 1, 401))
    m = (u + v) <= 1
    samples = TRI[0] + u[m][:, None] * (TRI[1] - TRI[0]) + v[m][:, None] * (TRI[2] - TRI[0])
    pts = rng.uniform(-8, 18, (40, 3))
    exact = ex.point_triangle_distance(pts, *TRI)
    from scipy.spatial import cKDTree

    dense = cKDTree(samples).query(pts)[0]
    h = 10.0 * np.sqrt(2) / 400  # largest sample spacing (diagonal)
    assert np.all(exact <= dense + TINY)
    assert np.all(dense - exact <= h + TINY)


# ------------------------------------------------------------------------------ mesh
def test_mesh_box_analytic(rng):
    half = np.array([10.0, 15.0, 20.0])
    box = trimesh.creation.box(extents=2 * half)
    md = ex.MeshDistance(box.vertices, box.faces)
    # parallel to the +x face at 5 mm
    d, hit = md.segment_distance([[15, -5, -5]], [[15, 5, 5]])
    assert d[0] == pytest.approx(5.0, abs=1e-12) and not hit[0]
    # skew over the edge x = 10, y = 15 (parallel to z): distance to the edge line
    d, _ = md.segment_distance([[13, 19, -50]], [[13, 19, 50]])
    assert d[0] == pytest.approx(5.0, abs=1e-12)
    # crossing
    d, hit = md.segment_distance([[-30, 1, 2]], [[30, 1, 2]])
    assert d[0] == 0.0 and hit[0]
    # points: unsigned distance to the box surface, exact (the mesh is the box)
    pts = rng.uniform(-30, 30, (3000, 3))
    np.testing.assert_allclose(md.point_distance(pts), np.abs(_box_sdf(pts, half)), atol=1e-12)
    # segments entirely outside: exact vs dense sampling of the exact box SDF
    p0, p1 = _random_segments(rng, 300, -40, 40, 30)
    d, hit = md.segment_distance(p0, p1)
    pts, owner = vf.dense_points(p0, p1, 0.01)
    dense = np.minimum.reduceat(np.abs(_box_sdf(pts, half)), np.searchsorted(owner, np.arange(300)))
    assert np.all(d <= dense + TINY)
    assert np.all(dense - d <= 0.005 + TINY)
    assert np.all(hit == (d == 0))
    # max_distance culls to exactly max_distance
    dc, _ = md.segment_distance(p0, p1, max_distance=3.0)
    np.testing.assert_array_equal(dc, np.minimum(d, 3.0))


def test_mesh_culling_vs_brute_force(rng):
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=12.0)
    mesh.vertices += rng.normal(scale=0.3, size=mesh.vertices.shape)  # irregular triangles
    md = ex.MeshDistance(mesh.vertices, mesh.faces, leaf_size=4)
    p0, p1 = _random_segments(rng, 200, -25, 25, 40)
    d, hit = md.segment_distance(p0, p1)
    A, B, C = (mesh.vertices[mesh.faces[:, k]] for k in range(3))
    bf, bh = ex.segment_triangle_distance(p0[:, None], p1[:, None], A[None], B[None], C[None])
    np.testing.assert_allclose(d, bf.min(axis=1), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(hit, bh.any(axis=1))
    assert hit.sum() >= 10 and (~hit).sum() >= 10
    # the compiled depth-first traversal and the numpy level-by-level one agree
    dn, hn = md.segment_distance(p0, p1, method="numpy")
    np.testing.assert_allclose(d, dn, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(hit, hn)


def test_mesh_cylinder_analytic():
    # a closed cylinder mesh with many sides: exact distances to the faceted mesh
    cyl = trimesh.creation.cylinder(radius=5.0, height=30.0, sections=256)  # axis z, centred
    md = ex.MeshDistance(cyl.vertices, cyl.faces)
    # above the top cap, parallel to it: exact 4 (flat cap)
    d, _ = md.segment_distance([[-2, -2, 19]], [[2, 2, 19]])
    assert d[0] == pytest.approx(4.0, abs=1e-12)
    # parallel to the axis at 9 mm: between 9 - 5 and 9 - 5 cos(pi / 256) (facet sagitta)
    d, _ = md.segment_distance([[9, 0, -5]], [[9, 0, 5]])
    assert 4.0 - 1e-12 <= d[0] <= 9 - 5 * np.cos(np.pi / 256) + 1e-12
    # through the axis: crossing, deepest point at depth 5 (approx negative part)
    c = md.segment_signed_clearance([[-20, 0, 0]], [[20, 0, 0]])
    assert c[0] == pytest.approx(-5.0, abs=0.13)


def test_mesh_vs_vtk_fine_sphere(rng, sphere_mesh, sphere_md):
    # outside segments: exact distance to the faceted mesh vs VTK sampled every 0.05 mm
    c = rng.normal(size=(40, 3))
    c *= (rng.uniform(21, 30, 40) / np.linalg.norm(c, axis=1))[:, None]
    t = rng.normal(size=(40, 3))
    t -= (t * c).sum(1)[:, None] * c / (c * c).sum(1)[:, None]  # tangent directions
    t /= np.linalg.norm(t, axis=1)[:, None]
    p0, p1 = c - 6 * t, c + 6 * t
    exact = sphere_md.segment_signed_clearance(p0, p1)
    sampled = vf.vtk_clearance(p0, p1, sphere_mesh, step_mm=0.05)
    assert np.all(exact > 0.5)
    assert np.all(exact <= sampled + 1e-6)
    assert np.all(sampled - exact < 0.02)


def test_signed_clearance_sphere(sphere_md):
    # through the centre: about -radius (faceted: the inscribed distance is a bit less)
    c = sphere_md.segment_signed_clearance([[-30, 0.1, 0.2], [0, 0, 0], [25, 0, 0]],
                                           [[30, 0.1, 0.2], [1, 1, 1], [40, 0, 0]])
    assert -20.0 - 1e-9 <= c[0] <= -19.0
    assert c[1] < -17.0  # fully inside segment: negative although nothing is crossed
    assert c[2] == pytest.approx(5.0, abs=1e-3)


def test_signed_clearance_depth_vs_vtk(rng, sphere_mesh, sphere_md):
    # crossing segments: the approximate depth against VTK's signed distance sampled every
    # 0.05 mm; the estimate lies in [sampled depth (0.25 mm step), depth / (1 - 0.05)]
    c = rng.normal(size=(10, 3))
    c *= (rng.uniform(0, 15, 10) / np.linalg.norm(c, axis=1))[:, None]
    d = rng.normal(size=(10, 3))
    d /= np.linalg.norm(d, axis=1)[:, None]
    p0, p1 = c - 30 * d, c + 30 * d
    est = -sphere_md.segment_signed_clearance(p0, p1)
    ref = -vf.vtk_clearance(p0, p1, sphere_mesh, step_mm=0.05)
    assert np.all(ref > 4.0)
    assert np.all(est - ref >= -0.125 - 1e-6)
    assert np.all(est - ref <= 0.0527 * ref + 0.03)


def test_tiny_mesh_tetrahedron(rng):
    v = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10.0]])
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    md = ex.MeshDistance(v, f)  # fewer faces than a leaf: a one-node hierarchy
    p0, p1 = _random_segments(rng, 100, -5, 15, 10)
    A, B, C = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    bf = ex.segment_triangle_distance(p0[:, None], p1[:, None], A[None], B[None], C[None])[0].min(axis=1)
    np.testing.assert_allclose(md.segment_distance(p0, p1)[0], bf, rtol=0, atol=1e-12)  # compiled: round-off only
    pts = rng.uniform(-2, 12, (2000, 3))
    inside = np.all(pts > 0, axis=1) & (pts.sum(axis=1) < 10)
    np.testing.assert_array_equal(md.contains(pts), inside)


def test_contains_box_degenerate_rays():
    half = np.array([10.0, 15.0, 20.0])
    box = trimesh.creation.box(extents=2 * half)
    md = ex.MeshDistance(box.vertices, box.faces)
    ys = np.array([-15.0, -7.5, 0.0, 15.0, 20.0, -15.0 + 1e-13])
    zs = np.array([-20.0, 0.0, 20.0, 5.0, -25.0, 20.0 - 1e-13])
    xs = np.array([-40.0, -5.0, 0.0, 9.0, 40.0])
    # rays along +x through vertices, edges and face diagonals ((y, z) on the box outline)
    Y, Z, X = np.meshgrid(ys, zs, xs, indexing="ij")
    pts = np.stack([X.ravel(), Y.ravel(), Z.ravel()], axis=1)
    sdf = _box_sdf(pts, half)
    off = np.abs(sdf) > 1e-12  # points on the surface may go either way
    got = md.contains(pts)
    np.testing.assert_array_equal(got[off], sdf[off] < 0)
    # rays through the diagonals of the -x face ((-15, -20) -> (15, 20) in (P, S)) and the
    # +x face ((15, -20) -> (-15, 20)), from inside the box and from beyond it
    s = np.linspace(-0.9, 0.9, 13)
    diag = np.concatenate([np.stack([np.full_like(s, 3.0), 15 * s, 20 * s], axis=1),
                           np.stack([np.full_like(s, -3.0), 15 * s, -20 * s], axis=1)])
    assert md.contains(diag).all()
    assert not md.contains(diag + [20.0, 0, 0]).any()
    assert not md.contains(diag - [40.0, 0, 0]).any()


def test_contains_sphere_and_marching_cubes(rng, sphere_md):
    pts = rng.uniform(-25, 25, (20000, 3))
    r = np.linalg.norm(pts, axis=1)
    got = sphere_md.contains(pts)
    far = np.abs(r - 20.0) > 0.05  # facet sagitta of the 20480-face sphere is < 0.02 mm
    np.testing.assert_array_equal(got[far], r[far] < 20.0)
    # marching cubes: every vertex lies on a grid line, so rays from grid points pass
    # exactly through vertices and edges; the grid's own sign must come back
    from skimage.measure import marching_cubes

    g = np.arange(-12, 13, 1.0)
    X, Y, Z = np.meshgrid(g, g, g, indexing="ij")
    f = 8.3 - np.sqrt(X**2 + (1.3 * Y) ** 2 + (0.8 * Z) ** 2) + 1.5 * np.sin(X / 3.0)
    assert f[[0, -1]].max() < 0 and f[:, [0, -1]].max() < 0 and f[:, :, [0, -1]].max() < 0  # closed
    verts, faces, _, _ = marching_cubes(f, level=0.0, spacing=(1.0, 1.0, 1.0))
    verts = verts + g[0]
    assert trimesh.Trimesh(verts, faces).is_watertight
    md = ex.MeshDistance(verts, faces)
    grid_pts = np.stack([X.ravel(), Y.ravel(), Z.ravel()], axis=1)
    vals = f.ravel()
    ok = np.abs(vals) > 1e-9
    np.testing.assert_array_equal(md.contains(grid_pts)[ok], vals[ok] > 0)


def test_determinism_and_order_independence(rng, sphere_md):
    p0, p1 = _random_segments(rng, 400, -30, 30, 60)
    d1, h1 = sphere_md.segment_distance(p0, p1)
    d2, h2 = sphere_md.segment_distance(p0, p1)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(h1, h2)
    perm = rng.permutation(400)
    d3, h3 = sphere_md.segment_distance(p0[perm], p1[perm], chunk=37)
    np.testing.assert_array_equal(d3, d1[perm])
    np.testing.assert_array_equal(h3, h1[perm])
    c1 = sphere_md.segment_signed_clearance(p0[:60], p1[:60])
    c2 = sphere_md.segment_signed_clearance(p0[:60], p1[:60])
    np.testing.assert_array_equal(c1, c2)
    # a fresh instance gives the same bits
    m2 = ex.MeshDistance(sphere_md.vertices, sphere_md.faces)
    np.testing.assert_array_equal(m2.segment_distance(p0, p1)[0], d1)


# ------------------------------------------------------- mesh hierarchy construction
def _ref_spread_bits(x):
    x = x & np.uint64(0x1FFFFF)
    x = (x | (x << np.uint64(32))) & np.uint64(0x1F00000000FFFF)
    x = (x | (x << np.uint64(16))) & np.uint64(0x1F0000FF0000FF)
    x = (x | (x << np.uint64(8))) & np.uint64(0x100F00F00F00F00F)
    x = (x | (x << np.uint64(4))) & np.uint64(0x10C30C30C30C30C3)
    x = (x | (x << np.uint64(2))) & np.uint64(0x1249249249249249)
    return x


def _ref_morton_codes(points):
    lo = points.min(axis=0)
    span = np.maximum(points.max(axis=0) - lo, 1e-12)
    q = np.clip(((points - lo) / span * (2**21 - 1)).astype(np.int64), 0, 2**21 - 1).astype(np.uint64)
    return (_ref_spread_bits(q[:, 0]) << np.uint64(2)) | (_ref_spread_bits(q[:, 1]) << np.uint64(1)) | _ref_spread_bits(q[:, 2])


def _ref_build(vertices, faces, leaf_size=8):
    """The former numpy construction of MeshDistance (per-triangle data and every level
    with ``reduceat``), the reference of the compiled :mod:`planner.solve.bvh`."""
    v = np.ascontiguousarray(np.asarray(vertices, float))
    f = np.asarray(faces).astype(np.int64)
    A, B, C = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    cen = (A + B + C) / 3.0
    trad = np.max(np.stack([ex._norm(x - cen) for x in (A, B, C)]), axis=0)
    tmin_all = np.minimum(np.minimum(A, B), C)
    tmax_all = np.maximum(np.maximum(A, B), C)
    nf = len(f)
    leaf_size = max(int(leaf_size), 1)
    depth = max(0, int(np.ceil(np.log2(nf / leaf_size)))) if nf > leaf_size else 0
    order = np.argsort(_ref_morton_codes(cen), kind="stable").astype(np.int64)
    tmin, tmax = tmin_all[order], tmax_all[order]
    corners = np.stack([A[order], B[order], C[order]])
    levels = []
    for k in range(depth + 1):
        nn = 1 << k
        starts = (np.arange(nn, dtype=np.int64) * nf) // nn
        counts = np.diff(np.append(starts, nf))
        bmin = np.minimum.reduceat(tmin, starts, axis=0)
        bmax = np.maximum.reduceat(tmax, starts, axis=0)
        centre = 0.5 * (bmin + bmax)
        node = np.repeat(np.arange(nn), counts)
        rtri = ex._norm(corners - centre[node][None]).max(axis=0)
        radius = np.maximum.reduceat(rtri, starts)
        rep = cen[order[starts + counts // 2]]
        levels.append(ex._Level(starts, counts, bmin, bmax, centre, radius, rep))
    return {"A": A, "B": B, "C": C, "centroids": cen, "tri_radius": trad, "tri_min": tmin_all, "tri_max": tmax_all,
            "bounds": np.stack([tmin_all.min(0), tmax_all.max(0)]), "order": order, "depth": depth, "levels": levels}


def _assert_same_build(md, ref):
    for k in ("A", "B", "C", "centroids", "tri_min", "tri_max", "bounds", "order"):
        np.testing.assert_array_equal(getattr(md, k), ref[k], err_msg=k)
    # radii are square roots of einsum sums in the reference: 1e-12 (bit-equal here)
    np.testing.assert_allclose(md.tri_radius, ref["tri_radius"], rtol=0, atol=1e-12)
    assert md.depth == ref["depth"] and len(md.levels) == len(ref["levels"])
    for k, (lv, rl) in enumerate(zip(md.levels, ref["levels"])):
        for name in ("starts", "counts", "bmin", "bmax", "centre", "rep"):
            np.testing.assert_array_equal(getattr(lv, name), getattr(rl, name), err_msg=f"level {k} {name}")
        np.testing.assert_allclose(lv.radius, rl.radius, rtol=0, atol=1e-12, err_msg=f"level {k} radius")
    # the kernel's flat arrays are the levels concatenated in heap order
    bmin, bmax, centre, radius, starts, counts = md._flat()
    lv = ref["levels"]
    np.testing.assert_array_equal(bmin, np.concatenate([x.bmin for x in lv]))
    np.testing.assert_array_equal(bmax, np.concatenate([x.bmax for x in lv]))
    np.testing.assert_array_equal(centre, np.concatenate([x.centre for x in lv]))
    np.testing.assert_allclose(radius, np.concatenate([x.radius for x in lv]), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(starts, lv[-1].starts)
    np.testing.assert_array_equal(counts, lv[-1].counts)
    for a in (bmin, bmax, centre, radius, starts, counts):
        assert a.flags.c_contiguous


def _ref_kernel_distance(ref, p0, p1, bound=np.inf):
    """The compiled query on the reference hierarchy (flat arrays as _flat used to build them)."""
    from planner.solve import kernels

    lv = ref["levels"]
    flat = [np.ascontiguousarray(np.concatenate([getattr(x, n) for x in lv])) for n in ("bmin", "bmax", "centre", "radius")]
    return kernels.bvh_segment_distance(
        np.ascontiguousarray(p0), np.ascontiguousarray(p1), *flat, lv[-1].starts, lv[-1].counts, ref["depth"],
        ref["order"], ref["A"], ref["B"], ref["C"], ref["centroids"], ref["tri_radius"], np.full(len(p0), float(bound)),
    )


def test_morton_order_matches_numpy(rng):
    from planner.solve import bvh

    for n in (1, 2, 7, 1000, 50_000):
        pts = rng.normal(size=(n, 3)) * [30.0, 5.0, 80.0]
        pts[rng.integers(0, n, n // 3)] = pts[0]  # repeated points: equal codes, stable order
        codes = bvh.morton_codes(pts)
        np.testing.assert_array_equal(codes, _ref_morton_codes(pts))
        np.testing.assert_array_equal(bvh.morton_order(pts), np.argsort(codes, kind="stable"))
    flat = rng.normal(size=(500, 3))
    flat[:, 1] = 4.0  # zero span along one axis
    np.testing.assert_array_equal(bvh.morton_codes(flat), _ref_morton_codes(flat))
    for keys in (rng.integers(0, 2**63, 20_000, dtype=np.uint64), rng.integers(0, 5, 20_000).astype(np.uint64),
                 np.full(100, 7, np.uint64), np.zeros(0, np.uint64)):
        np.testing.assert_array_equal(bvh.stable_argsort_u64(keys), np.argsort(keys, kind="stable"))


@pytest.mark.parametrize("leaf_size", [1, 2, 3, 8, 16])
def test_mesh_build_matches_numpy_reference(rng, leaf_size):
    cases = []
    for nf in (1, 2, 3, 5, 8, 9, 17, 100, 1001, 5000):
        cases.append((rng.normal(size=(nf + 5, 3)) * 30.0, rng.integers(0, nf + 5, (nf, 3))))
    v = rng.normal(size=(50, 3))
    cases.append((v, np.tile(rng.integers(0, 50, (40, 3)), (30, 1))))  # repeated faces: equal codes
    v = rng.normal(size=(300, 3))
    v[:, 2] = 5.0  # flat mesh
    cases.append((v, rng.integers(0, 300, (700, 3))))
    for v, f in cases:
        md = ex.MeshDistance(v, f, leaf_size=leaf_size)
        ref = _ref_build(v, f, leaf_size)
        _assert_same_build(md, ref)
        lo, hi = ref["bounds"]
        p0, p1 = _random_segments(rng, 200, lo - 5.0, hi + 5.0, 40.0)
        d_new, h_new = md.segment_distance(p0, p1)
        d_ref, h_ref = _ref_kernel_distance(ref, p0, p1)
        np.testing.assert_array_equal(d_new, d_ref)
        np.testing.assert_array_equal(h_new, h_ref | (d_ref <= ex.TOUCH_MM))


def test_mesh_build_matches_numpy_reference_sphere(rng, sphere_mesh, sphere_md):
    ref = _ref_build(sphere_mesh.vertices, sphere_mesh.faces)
    _assert_same_build(sphere_md, ref)
    p0, p1 = _random_segments(rng, 2000, -30, 30, 50)
    d_ref, _ = _ref_kernel_distance(ref, p0, p1)
    np.testing.assert_array_equal(sphere_md.segment_distance(p0, p1)[0], d_ref)
    # the level-by-level numpy traversal reads the levels (views of the flat arrays)
    md_ref = ex.MeshDistance(sphere_mesh.vertices, sphere_mesh.faces)
    md_ref._levels = ref["levels"]
    np.testing.assert_array_equal(sphere_md.segment_distance(p0[:300], p1[:300], method="numpy")[0],
                                  md_ref.segment_distance(p0[:300], p1[:300], method="numpy")[0])


def test_mesh_build_matches_numpy_reference_phantom(rng, case_example_1mm):
    from planner.meshing import read_mesh

    for name in ("L3_body", "L3_posterior", "spinal_canal", "aorta"):
        m = read_mesh(case_example_1mm / "meshes" / f"{name}.vtp")
        md = ex.MeshDistance(np.asarray(m.vertices, float), np.asarray(m.faces))
        ref = _ref_build(m.vertices, m.faces)
        _assert_same_build(md, ref)
        lo, hi = ref["bounds"]
        p0, p1 = _random_segments(rng, 3000, lo - 10.0, hi + 10.0, 60.0)
        for bound in (np.inf, 5.0):
            d_new, h_new = md.segment_distance(p0, p1, max_distance=bound)
            d_ref, h_ref = _ref_kernel_distance(ref, p0, p1, bound)
            np.testing.assert_array_equal(d_new, d_ref)
            np.testing.assert_array_equal(h_new, h_ref | (d_ref <= ex.TOUCH_MM))


# --------------------------------------------------------------------- verify module
def test_verify_screw_solids_match_recorded_sdf(rng):
    from planner.implants import Rod, Screw
    from planner.phantom.hardware import recorded_screw_sdf
    from planner.phantom.sdf import tube

    sc = Screw("L3", "left", head_lps=[10.0, 40.0, 100.0], tip_lps=[20.0, 0.0, 95.0], diameter_mm=6.5)
    pts = rng.uniform(-20, 50, (5000, 3)) + [0, 0, 80]
    solids = vf.screw_solids(sc)
    mine = np.minimum(vf.solid_sdf(pts, solids[0]), vf.solid_sdf(pts, solids[1]))
    np.testing.assert_allclose(mine, recorded_screw_sdf(sc)(pts), atol=1e-9)
    rod = Rod("left", [[0, 0, 0], [5, 10, 20], [8, 15, 40]], diameter_mm=5.5)
    np.testing.assert_allclose(vf.solid_sdf(pts, vf.tube_solid(rod)), tube(rod.centreline_lps, 2.75)(pts), atol=1e-9)
    # exact cylinder clearance to the recorded screw vs the independent sampled check
    p0, p1 = _random_segments(rng, 60, -10, 40, 60)
    p0 += [0, 0, 90]
    p1 += [0, 0, 90]
    exact = np.minimum(*(ex.segment_cylinder_distance(p0, p1, s["a"], s["b"], s["radius"]) for s in solids))
    dense = vf.implant_clearance(p0, p1, [sc], step_mm=0.02)
    assert np.all(exact <= dense + 2e-9)
    assert np.all(dense - exact <= 0.01 + TINY)


def test_vtk_baseline_matches_vtk_clearance(rng, sphere_mesh):
    p0, p1 = _random_segments(rng, 30, -30, 30, 50)
    box = trimesh.creation.box(extents=(10, 10, 10))
    out = vf.vtk_baseline(p0, p1, {"sphere": sphere_mesh, "box": box}, step_mm=1.0)
    assert out.shape == (30, 2)
    np.testing.assert_allclose(out[:, 0], vf.vtk_clearance(p0, p1, sphere_mesh, step_mm=1.0), atol=1e-12)
    np.testing.assert_allclose(out[:, 1], vf.vtk_clearance(p0, p1, box, step_mm=1.0), atol=1e-12)


def test_dense_points_spacing():
    pts, owner = vf.dense_points([[0, 0, 0], [1, 1, 1]], [[1, 0, 0], [1, 1, 1]], step_mm=0.3)
    np.testing.assert_array_equal(owner, [0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_allclose(pts[:5, 0], [0, 0.25, 0.5, 0.75, 1.0])


def test_verify_is_independent_of_the_solver():
    path = ROOT / "planner" / "solve" / "verify.py"
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            imported.add(mod)
            imported.update(f"{mod}.{a.name}" for a in node.names)
            assert node.level == 0, "relative imports would pull in the solver package"
    assert not any(m.startswith("planner.solve") for m in imported), imported
    # load it standalone (without the planner.solve package) and use it
    saved = {k: v for k, v in sys.modules.items() if k.startswith("planner.solve")}
    try:
        for k in saved:
            del sys.modules[k]
        spec = importlib.util.spec_from_file_location("_verify_standalone", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mod.primitive_clearance([[0, 0, 0]], [[1, 0, 0]], "tube", polyline=[[0, 5, 0], [1, 5, 0]], radius=1.0)
        assert not any(k.startswith("planner.solve") for k in sys.modules)
    finally:
        sys.modules.update(saved)


def test_mesh_build_parallel_and_serial_agree(rng, sphere_mesh, monkeypatch):
    """The parallel build (large meshes) and the calling-thread build (small ones) give the
    same tree arrays and the same numpy-reference tree."""
    from planner.solve import bvh

    cases = [(sphere_mesh.vertices, sphere_mesh.faces), (rng.normal(size=(3005, 3)) * 30.0, rng.integers(0, 3005, (3000, 3)))]
    for v, f in cases:
        monkeypatch.setattr(bvh, "SERIAL_BELOW_TRIANGLES", 10**9)
        serial = ex.MeshDistance(v, f)
        monkeypatch.setattr(bvh, "SERIAL_BELOW_TRIANGLES", 0)
        parallel = ex.MeshDistance(v, f)
        np.testing.assert_array_equal(serial.order, parallel.order)
        for a, b in zip(serial._flat(), parallel._flat()):
            np.testing.assert_array_equal(a, b)
        _assert_same_build(parallel, _ref_build(v, f))
