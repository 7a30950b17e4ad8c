"""Exact distances between needle axes (segments) and obstacles, for the solver's refinement.

All coordinates are patient LPS millimetres, all arrays ``float64``; point arrays are
``(n, 3)`` with the last axis ``(L, P, S)``.  Everything is vectorised over segments (no
per-candidate Python loop) and deterministic (no randomness, no thread-order dependence).

Definitions
-----------
*Signed distance* ``sdf(x)`` of a point to a solid: the Euclidean distance to the solid's
surface, positive outside and negative inside (mm).

*Clearance* of a segment ``p(t) = p0 + t (p1 - p0)``, ``t in [0, 1]`` (the needle axis) to a
solid::

    clearance = min_t sdf(p(t))

It is the exact segment-to-solid distance when the axis stays outside (``0`` when it
touches), and minus the largest depth reached inside the solid when it enters.  For a
*convex* solid ``sdf`` is convex along any line, so the minimum over ``t`` is found
exactly (closed form for capsules; a bracketing golden-section search to ``tol_mm`` for
flat-capped cylinders).  The needle's own radius is **not** included: the caller subtracts
it (a needle of radius ``r`` is collision-free when ``clearance > r``).

Triangle meshes (:class:`MeshDistance`) are not convex; their positive clearance is still
exact (closest distance between the segment and the triangles), while the negative part
(depth inside) is an estimate from sampled points, see
:meth:`MeshDistance.segment_signed_clearance`.

Functions
---------
:func:`point_segment_distance`, :func:`segment_segment_distance`,
:func:`point_cylinder_distance`, :func:`segment_cylinder_distance`,
:func:`segment_capsule_distance`, :func:`segment_polyline_capsules_distance`,
:func:`point_triangle_distance`, :func:`segment_triangle_intersects`,
:func:`segment_triangle_distance`, :class:`MeshDistance` (``segment_distance``,
``point_distance``, ``approx_point_distance``, ``point_signed_distance``, ``contains``,
``segment_signed_clearance``).

The independent checker is :mod:`planner.solve.verify` (dense sampling, VTK), which does
not import this module.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

Array = np.ndarray

#: Golden-section ratio ``(sqrt(5) - 1) / 2``.
_GOLD = (math.sqrt(5.0) - 1.0) / 2.0
#: Absolute slack (mm) used when pruning with lower bounds, against round-off.
_PRUNE_SLACK_MM = 1e-9
#: Distances at or below this (mm) count as touching (``intersects`` is True).
TOUCH_MM = 1e-12


# ------------------------------------------------------------------------------- helpers
log = logging.getLogger(__name__)

_KERNELS: Any = None


def _kernels():
    """:mod:`planner.solve.kernels` when numba is importable, else None (numpy paths)."""
    global _KERNELS
    if _KERNELS is None:
        try:
            from planner.solve import kernels

            _KERNELS = kernels
        except ImportError as e:  # pragma: no cover - numba is a dependency
            log.warning("compiled kernels unavailable (%s); using the numpy implementations", e)
            _KERNELS = False
    return _KERNELS or None


def _bvh():
    """:mod:`planner.solve.bvh`, the compiled hierarchy construction (numba is required)."""
    from planner.solve import bvh

    return bvh


def _f64(x) -> Array:
    return np.asarray(x, dtype=np.float64)


def _dot(a: Array, b: Array) -> Array:
    """Row-wise dot product over the last axis (broadcasting)."""
    return np.einsum("...i,...i->...", a, b)


def _cross(a: Array, b: Array) -> Array:
    """Row-wise cross product over the last axis (broadcasting), faster than np.cross."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)


def _norm(a: Array) -> Array:
    return np.sqrt(_dot(a, a))


def _safe_div(num: Array, den: Array) -> Array:
    """``num / den`` where ``den != 0``, else 0 (no warnings)."""
    num, den = np.broadcast_arrays(_f64(num), _f64(den))
    out = np.zeros(num.shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _pairs_3(*arrays: Array) -> list[Array]:
    """Broadcast (..., 3) arrays against each other."""
    arrs = [_f64(a) for a in arrays]
    for a in arrs:
        if a.shape[-1:] != (3,):
            raise ValueError(f"expected arrays with a last axis of 3, got {a.shape}")
    return list(np.broadcast_arrays(*arrs))


def _segments(p0, p1) -> tuple[Array, Array]:
    p0 = np.atleast_2d(_f64(p0))
    p1 = np.atleast_2d(_f64(p1))
    if p0.shape != p1.shape or p0.ndim != 2 or p0.shape[1] != 3:
        raise ValueError(f"segments must be two (n, 3) arrays, got {p0.shape} and {p1.shape}")
    return p0, p1


# ------------------------------------------------------------------------------ points
def point_segment_distance(points, a, b) -> Array:
    """Euclidean distance from points to segments ``a``-``b`` (mm).

    Parameters
    ----------
    points, a, b : (..., 3) float
        LPS mm; broadcast against each other (e.g. points ``(n, 3)`` and one segment
        ``(3,)``).  A zero-length segment is a point.

    Returns
    -------
    (...,) float
        Unsigned distance, mm.
    """
    p, a, b = _pairs_3(points, a, b)
    ab = b - a
    ap = p - a
    t = np.clip(_safe_div(_dot(ap, ab), _dot(ab, ab)), 0.0, 1.0)
    return _norm(ap - t[..., None] * ab)


def segment_segment_distance(p0, p1, q0, q1) -> Array:
    """Exact closest distance between segments ``p0``-``p1`` and ``q0``-``q1`` (mm).

    Robust for parallel, collinear and zero-length segments: the result is the minimum of
    five candidate distances, each the distance between two actual points of the
    segments (so never below the true value): the interior critical point of the squared
    distance (cross-product form, clamped, then one alternating refinement), and the
    four endpoint-to-segment
    distances.  The minimum of the convex quadratic over the unit square is either that
    interior point or lies on an edge of the square, i.e. an endpoint-to-segment distance.

    Parameters
    ----------
    p0, p1, q0, q1 : (..., 3) float
        LPS mm, broadcast against each other (``(n, 3)`` with ``(n, 3)``, ``(1, 3)`` or
        ``(3,)``; ``(n, 1, 3)`` with ``(1, m, 3)`` gives ``(n, m)``).

    Returns
    -------
    (...,) float
        Unsigned distance, mm (0 when the segments intersect).
    """
    p0, p1, q0, q1 = _pairs_3(p0, p1, q0, q1)
    d1 = p1 - p0
    d2 = q1 - q0
    r = p0 - q0
    a = _dot(d1, d1)
    e = _dot(d2, d2)
    b = _dot(d1, d2)
    c = _dot(d1, r)
    f = _dot(d2, r)
    # closest points of the two lines, in the well-conditioned cross-product form
    # (|d1 x d2|^2 instead of a e - b^2, which cancels for nearly parallel segments)
    n = _cross(d1, d2)
    nn = _dot(n, n)
    w = q0 - p0
    s = np.clip(_safe_div(_dot(_cross(w, d2), n), nn), 0.0, 1.0)
    t = np.clip(_safe_div(b * s + f, e), 0.0, 1.0)
    s = np.clip(_safe_div(b * t - c, a), 0.0, 1.0)
    best = _norm(r + s[..., None] * d1 - t[..., None] * d2)
    for cand in (
        point_segment_distance(p0, q0, q1),
        point_segment_distance(p1, q0, q1),
        point_segment_distance(q0, p0, p1),
        point_segment_distance(q1, p0, p1),
    ):
        np.minimum(best, cand, out=best)
    return best


# ----------------------------------------------------------------------------- cylinders
def point_cylinder_distance(points, a, b, radius: float, signed: bool = True) -> Array:
    """Exact distance from points to a solid flat-capped cylinder from ``a`` to ``b`` (mm).

    Parameters
    ----------
    points : (n, 3) float
        LPS mm.
    a, b : (3,) float
        Centres of the two flat caps, LPS mm (must differ).
    radius : float
        Cylinder radius, mm.
    signed : bool
        True (default): signed distance, negative inside (minus the distance to the
        nearest of the mantle and the two caps).  False: ``max(sdf, 0)``.

    Returns
    -------
    (n,) float
        mm.
    """
    p = np.atleast_2d(_f64(points))
    a = _f64(a).reshape(3)
    b = _f64(b).reshape(3)
    axis = b - a
    length = float(np.linalg.norm(axis))
    if not length > 0:
        raise ValueError("cylinder end points a and b coincide")
    u = axis / length
    q = p - 0.5 * (a + b)
    h = q @ u
    rho = _norm(q - h[:, None] * u)
    dx = rho - float(radius)
    dy = np.abs(h) - 0.5 * length
    outside = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
    sdf = outside + np.minimum(np.maximum(dx, dy), 0.0)
    return sdf if signed else np.maximum(sdf, 0.0)


def _golden_min(f, n: int, lengths: Array, tol_mm: float) -> Array:
    """Vectorised golden-section minimisation of convex ``f(t) -> (n,)`` on ``t in [0, 1]``.

    Returns the smallest value evaluated (endpoints included): every value is ``f`` at an
    actual point, so the result is never below the true minimum, and the final bracket is
    ``<= tol_mm`` long (in mm along the segment) so, ``f`` being 1-Lipschitz in mm, the
    result is within ``tol_mm`` of it.
    """
    zeros = np.zeros(n)
    ones = np.ones(n)
    best = np.minimum(f(zeros), f(ones))
    lmax = float(lengths.max(initial=0.0))
    if lmax <= tol_mm:
        return best
    iters = int(math.ceil(math.log(lmax / tol_mm) / math.log(1.0 / _GOLD))) + 1
    lo, hi = zeros, ones
    x1 = hi - _GOLD * (hi - lo)
    x2 = lo + _GOLD * (hi - lo)
    f1 = f(x1)
    f2 = f(x2)
    np.minimum(best, f1, out=best)
    np.minimum(best, f2, out=best)
    for _ in range(iters):
        left = f1 <= f2  # a minimiser lies in [lo, x2] (convexity; ties included)
        lo = np.where(left, lo, x1)
        hi = np.where(left, x2, hi)
        xn = np.where(left, hi - _GOLD * (hi - lo), lo + _GOLD * (hi - lo))
        fn = f(xn)
        np.minimum(best, fn, out=best)
        x1, f1, x2, f2 = (
            np.where(left, xn, x2),
            np.where(left, fn, f2),
            np.where(left, x1, xn),
            np.where(left, f1, fn),
        )
    return best


def segment_cylinder_distance(p0, p1, a, b, radius: float, tol_mm: float = 1e-9) -> Array:
    """Clearance ``min_t sdf(p(t))`` of segments to one solid flat-capped cylinder (mm).

    Positive: exact Euclidean distance between the segment and the solid; ``0`` when they
    touch; negative: minus the largest depth of the segment inside the solid (depth = the
    distance from the point to the cylinder's surface).  The signed distance of a convex
    solid is convex along the segment, so a golden-section search finds the minimum; the
    result is the smallest value actually evaluated (endpoints included), hence never
    below the true clearance and at most ``tol_mm`` above it.

    Parameters
    ----------
    p0, p1 : (n, 3) float
        Segment end points, LPS mm.
    a, b : (3,) float
        Cap centres of the cylinder, LPS mm.
    radius : float
        Cylinder radius, mm.
    tol_mm : float
        Length of the final bracket along the segment, mm (default ``1e-9``; about 60
        iterations for a 200 mm segment).

    Returns
    -------
    (n,) float
        Clearance, mm.
    """
    p0, p1 = _segments(p0, p1)
    d = p1 - p0
    lengths = _norm(d)

    def f(t: Array) -> Array:
        return point_cylinder_distance(p0 + t[:, None] * d, a, b, radius)

    return _golden_min(f, len(p0), lengths, float(tol_mm))


def segment_capsule_distance(p0, p1, a, b, radius: float) -> Array:
    """Clearance of segments to a capsule (segment ``a``-``b`` swept by a ball) (mm).

    Closed form and exact: ``min_t sdf(p(t)) = segment_segment_distance - radius``, which
    is negative (minus the maximal depth) when the segment enters the capsule.

    Parameters
    ----------
    p0, p1 : (n, 3) float
        Segment end points, LPS mm.
    a, b : (3,) float
        Capsule axis end points, LPS mm (may coincide: a ball).
    radius : float
        mm.

    Returns
    -------
    (n,) float
        mm.
    """
    p0, p1 = _segments(p0, p1)
    a = _f64(a).reshape(1, 3)
    b = _f64(b).reshape(1, 3)
    return segment_segment_distance(p0, p1, a, b) - float(radius)


def segment_polyline_capsules_distance(p0, p1, polyline, radius: float, chunk: int = 200_000) -> Array:
    """Clearance of segments to a tube: the union of capsules along a polyline (mm).

    ``min`` over the polyline's pieces of :func:`segment_capsule_distance` (exact; the
    minimum of per-capsule ``min_t sdf`` equals ``min_t`` of the union's ``sdf``).  Used for
    rods and cross-links.

    Parameters
    ----------
    p0, p1 : (n, 3) float
        Segment end points, LPS mm.
    polyline : (m, 3) float
        Centre line, LPS mm (``m == 1`` is a ball).
    radius : float
        Tube radius, mm.
    chunk : int
        Maximum number of (segment, piece) pairs evaluated at once (memory bound).

    Returns
    -------
    (n,) float
        mm.
    """
    p0, p1 = _segments(p0, p1)
    poly = np.atleast_2d(_f64(polyline))
    if poly.ndim != 2 or poly.shape[1] != 3 or len(poly) == 0:
        raise ValueError(f"polyline must be (m, 3), got {poly.shape}")
    if len(poly) == 1:
        return point_segment_distance(poly[0], p0, p1) - float(radius)
    qa = poly[:-1][None]
    qb = poly[1:][None]
    m = qa.shape[1]
    rows = max(1, int(chunk) // m)
    out = np.empty(len(p0))
    for i in range(0, len(p0), rows):
        j = min(i + rows, len(p0))
        out[i:j] = segment_segment_distance(p0[i:j, None], p1[i:j, None], qa, qb).min(axis=1)
    return out - float(radius)


# ----------------------------------------------------------------------------- triangles
def point_triangle_distance(points, a, b, c) -> Array:
    """Exact distance from points to triangles ``(a, b, c)`` (mm), row-wise.

    If the point's orthogonal projection falls inside the triangle the distance is the
    distance to its plane, otherwise the closest point is on the boundary and the distance
    is the smallest point-to-edge distance.  Degenerate (zero-area) triangles reduce to
    their edges.

    Parameters
    ----------
    points, a, b, c : (..., 3) float
        LPS mm, broadcast against each other.

    Returns
    -------
    (...,) float
        mm.
    """
    p, a, b, c = _pairs_3(points, a, b, c)
    ab = b - a
    bc = c - b
    ca = a - c
    n = _cross(ab, -ca)
    nn = _dot(n, n)
    inside = (
        (nn > 0)
        & (_dot(_cross(ab, p - a), n) >= 0)
        & (_dot(_cross(bc, p - b), n) >= 0)
        & (_dot(_cross(ca, p - c), n) >= 0)
    )
    plane = np.abs(_safe_div(_dot(p - a, n), np.sqrt(nn)))
    edges = np.minimum(
        np.minimum(point_segment_distance(p, a, b), point_segment_distance(p, b, c)),
        point_segment_distance(p, c, a),
    )
    return np.where(inside, plane, edges)


def segment_triangle_intersects(p0, p1, a, b, c) -> Array:
    """Möller-Trumbore test: does segment ``p0``-``p1`` cross triangle ``(a, b, c)``?

    Bounds are inclusive (``u, v >= 0``, ``u + v <= 1``, ``0 <= t <= 1``); segments (almost)
    parallel to the triangle's plane (``|det| <= 1e-14 |d| |e1| |e2|``) report False: their
    contact, if any, is found by the endpoint and edge distances of
    :func:`segment_triangle_distance`.

    Parameters
    ----------
    p0, p1, a, b, c : (..., 3) float
        LPS mm, broadcast against each other.

    Returns
    -------
    (...,) bool
    """
    p0, p1, a, b, c = _pairs_3(p0, p1, a, b, c)
    d = p1 - p0
    e1 = b - a
    e2 = c - a
    pvec = _cross(d, e2)
    det = _dot(e1, pvec)
    scale = _norm(d) * _norm(e1) * _norm(e2)
    ok = np.abs(det) > 1e-14 * scale
    inv = _safe_div(1.0, np.where(ok, det, 0.0))
    tvec = p0 - a
    u = _dot(tvec, pvec) * inv
    qvec = _cross(tvec, e1)
    v = _dot(d, qvec) * inv
    t = _dot(e2, qvec) * inv
    return ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t >= 0) & (t <= 1)


def segment_triangle_distance(p0, p1, a, b, c) -> tuple[Array, Array]:
    """Exact distance between segments and triangles, row-wise (mm).

    0 when the segment crosses the triangle (Möller-Trumbore); otherwise the minimum is
    attained at a segment end point against the triangle, or between the segment and one
    of the triangle's three edges, and that minimum of five exact distances is returned.

    Parameters
    ----------
    p0, p1, a, b, c : (..., 3) float
        LPS mm, broadcast against each other.

    Returns
    -------
    dist : (...,) float
        mm.
    hit : (...,) bool
        The segment crosses or touches the triangle (``dist <= TOUCH_MM``).
    """
    p0, p1, a, b, c = _pairs_3(p0, p1, a, b, c)
    hit = segment_triangle_intersects(p0, p1, a, b, c)
    d = np.minimum(point_triangle_distance(p0, a, b, c), point_triangle_distance(p1, a, b, c))
    for u, v in ((a, b), (b, c), (c, a)):
        np.minimum(d, segment_segment_distance(p0, p1, u, v), out=d)
    d = np.where(hit, 0.0, d)
    return d, hit | (d <= TOUCH_MM)


# ---------------------------------------------------------------------------------- mesh
class _Level:
    """Nodes of one level of the implicit BVH (arrays indexed by node)."""

    __slots__ = ("starts", "counts", "bmin", "bmax", "centre", "radius", "rep")

    def __init__(self, starts, counts, bmin, bmax, centre, radius, rep):
        self.starts = starts
        self.counts = counts
        self.bmin = bmin
        self.bmax = bmax
        self.centre = centre
        self.radius = radius
        self.rep = rep


class MeshDistance:
    """Exact distances from segments and points to a closed triangle mesh (LPS mm).

    Built once per mesh (e.g. a marching-cubes surface of an anatomical structure, tens of
    thousands of faces; construction is compiled, :mod:`planner.solve.bvh`).  Culling uses an implicit, balanced bounding-volume hierarchy
    (triangles sorted once by the Morton code of their centroids, nodes = runs; every node has an
    axis-aligned box, a bounding sphere and a representative surface point, the centroid
    of one of its triangles).  Queries traverse it depth first in compiled code
    (:mod:`planner.solve.kernels`), or level by level for all segments at once in numpy: a
    node is kept while its lower bound (max of segment-to-sphere and box-to-box distances)
    does not exceed the segment's current upper bound (distance to representative surface
    points seen so far, or ``max_distance``); surviving leaves are
    checked triangle by triangle with exact segment-triangle distances.  Pruning is
    conservative, so results are exact (to round-off).

    :meth:`contains` casts a ray along +L (the first axis) and counts crossings in the
    projection onto the (P, S) plane, with a consistent tie-break for rays through edges
    and vertices (see the method).

    Parameters
    ----------
    vertices : (V, 3) float
        LPS mm.
    faces : (F, 3) int
        Vertex indices, outward winding not required (distances are unsigned, inside-ness
        is by parity).
    leaf_size : int
        Maximum number of triangles per BVH leaf.
    """

    def __init__(self, vertices, faces, leaf_size: int = 8):
        v = np.ascontiguousarray(_f64(vertices))
        f = np.asarray(faces)
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"vertices must be (V, 3), got {v.shape}")
        if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
            raise ValueError(f"faces must be (F>0, 3), got {f.shape}")
        f = np.array(f, dtype=np.int64, order="C")  # own copy
        if f.min() < 0 or f.max() >= len(v):
            raise ValueError("face indices out of range")
        self.vertices = v
        self.faces = f
        bvh = _bvh()
        self.A, self.B, self.C, self.centroids, self.tri_radius, self.bounds = bvh.triangle_data(v, f)
        self._tri_box = None
        self._build_bvh(max(int(leaf_size), 1))
        self._grid = None

    # ---- construction -----------------------------------------------------------------
    @staticmethod
    def _starts(n_items: int, n_nodes: int) -> Array:
        return (np.arange(n_nodes, dtype=np.int64) * n_items) // n_nodes

    def _build_bvh(self, leaf_size: int) -> None:
        """Implicit balanced hierarchy over the triangles in Morton order of their centroids
        (compiled, :mod:`planner.solve.bvh`): node arrays flattened over the levels in heap
        order (the layout of :meth:`_flat`); :attr:`levels` views them per level."""
        nf = len(self.faces)
        depth = max(0, int(math.ceil(math.log2(nf / leaf_size)))) if nf > leaf_size else 0
        bvh = _bvh()
        # triangles in Morton (Z-order) of their centroids: one stable sort, and every node
        # of the implicit balanced tree is a spatially compact run of it
        self.order = bvh.morton_order(self.centroids)
        self.depth = depth
        self._flat_cache = bvh.build_tree(depth, self.order, self.vertices, self.faces)
        self._levels = None

    def _tri_boxes(self) -> tuple[Array, Array]:
        if self._tri_box is None:
            A, B, C = self.A, self.B, self.C
            self._tri_box = (np.minimum(np.minimum(A, B), C), np.maximum(np.maximum(A, B), C))
        return self._tri_box

    @property
    def tri_min(self) -> Array:
        """Per-triangle box corner (F, 3), ``min(A, B, C)`` (computed on first use)."""
        return self._tri_boxes()[0]

    @property
    def tri_max(self) -> Array:
        """Per-triangle box corner (F, 3), ``max(A, B, C)`` (computed on first use)."""
        return self._tri_boxes()[1]

    @property
    def levels(self) -> list[_Level]:
        """Nodes per level (views of the flat arrays; ``rep`` = the centroid of each node's
        middle triangle), for the level-by-level numpy traversal."""
        if self._levels is None:
            bmin, bmax, centre, radius = self._flat_cache[:4]
            nf = len(self.faces)
            levels = []
            for k in range(self.depth + 1):
                nn = 1 << k
                g = slice(nn - 1, 2 * nn - 1)
                starts = self._starts(nf, nn)
                counts = np.diff(np.append(starts, nf))
                rep = self.centroids[self.order[starts + counts // 2]]
                levels.append(_Level(starts, counts, bmin[g], bmax[g], centre[g], radius[g], rep))
            self._levels = levels
        return self._levels

    # ---- segment queries --------------------------------------------------------------
    def _query(self, p0: Array, p1: Array, bound, shrink: float = 1.0) -> tuple[Array, Array]:
        n = len(p0)
        dist = np.broadcast_to(np.asarray(bound, float), (n,)).copy()  # a scalar or one per segment
        hit = np.zeros(n, dtype=bool)
        if n == 0:
            return dist, hit
        smin = np.minimum(p0, p1)
        smax = np.maximum(p0, p1)
        seg = np.arange(n)
        node = np.zeros(n, dtype=np.int64)
        is_point = p0 is p1 or bool(np.array_equal(p0, p1))

        def to_seg(x: Array, a: Array, b: Array) -> Array:
            return _norm(x - a) if is_point else point_segment_distance(x, a, b)

        # visit a subset of the levels (branching 2**3 between them): fewer, larger steps
        visit = sorted({*range(0, len(self.levels), 3), len(self.levels) - 1})
        prev = 0
        for k in visit:
            lv = self.levels[k]
            if k > 0:
                fan = 1 << (k - prev)
                seg = np.repeat(seg, fan)
                node = (fan * node[:, None] + np.arange(fan)).ravel()
            prev = k
            a, b = p0[seg], p1[seg]
            np.minimum.at(dist, seg, to_seg(lv.rep[node], a, b))
            lb = to_seg(lv.centre[node], a, b) - lv.radius[node]
            gap = np.maximum(np.maximum(lv.bmin[node] - smax[seg], smin[seg] - lv.bmax[node]), 0.0)
            lb = np.maximum(lb, _norm(gap))
            keep = lb <= shrink * dist[seg] + _PRUNE_SLACK_MM
            seg, node = seg[keep], node[keep]
            if len(seg) == 0:
                return dist, hit
        lv = self.levels[-1]
        cnt = lv.counts[node]
        offs = np.repeat(np.cumsum(cnt) - cnt, cnt)
        posn = np.repeat(lv.starts[node], cnt) + (np.arange(int(cnt.sum())) - offs)
        tri = self.order[posn]
        seg = np.repeat(seg, cnt)
        a, b = p0[seg], p1[seg]
        lb = to_seg(self.centroids[tri], a, b) - self.tri_radius[tri]
        keep = lb <= shrink * dist[seg] + _PRUNE_SLACK_MM
        tri, seg, a, b = tri[keep], seg[keep], a[keep], b[keep]
        if is_point:
            d = point_triangle_distance(a, self.A[tri], self.B[tri], self.C[tri])
            h = d <= TOUCH_MM
        else:
            d, h = segment_triangle_distance(a, b, self.A[tri], self.B[tri], self.C[tri])
        np.minimum.at(dist, seg, d)
        hit[seg[h]] = True
        return dist, hit

    def _flat(self):
        """Node arrays flattened over the levels in heap order (for the compiled kernel):
        ``bmin, bmax, centre`` (N, 3), ``radius`` (N,), leaf ``starts, counts`` (int64)."""
        return self._flat_cache

    def segment_distance(self, p0, p1, max_distance: float = np.inf, chunk: int = 2048, method: str = "auto") -> tuple[Array, Array]:
        """Exact unsigned distance between segments and the mesh surface (mm).

        Parameters
        ----------
        p0, p1 : (n, 3) float
            Segment end points, LPS mm (``p0 == p1``: a point).
        max_distance : float or (n,) float
            Cull distance, mm (one for all or one per segment): segments farther than this
            get exactly ``max_distance`` (a lower bound); below it the distance is exact.
        chunk : int
            Segments processed per batch (memory bound only; results do not depend on it).
        method : {"auto", "compiled", "numpy"}
            ``"compiled"``: the depth-first kernel of :mod:`planner.solve.kernels` (numba);
            ``"numpy"``: the level-by-level vectorised traversal here; ``"auto"``: compiled
            when numba imports.  Both are exact and agree to round-off.

        Returns
        -------
        dist : (n,) float
            ``min(exact distance, max_distance)``, mm; 0 when the segment crosses a triangle.
        intersects : (n,) bool
            The segment crosses or touches the surface (distance ``<= TOUCH_MM``).
        """
        p0, p1 = _segments(p0, p1)
        n = len(p0)
        bound = np.broadcast_to(np.asarray(max_distance, float), (n,))
        if not np.all(bound >= 0):
            raise ValueError("max_distance must be >= 0")
        kern = _kernels() if method in ("auto", "compiled") else None
        if kern is not None:
            bmin, bmax, centre, radius, starts, counts = self._flat()
            fn = kern.bvh_segment_distance_serial if n < kern.SERIAL_BELOW_MESH else kern.bvh_segment_distance
            dist, hit = fn(
                np.ascontiguousarray(p0), np.ascontiguousarray(p1), bmin, bmax, centre, radius, starts, counts,
                int(self.depth), self.order, self.A, self.B, self.C, self.centroids, self.tri_radius, np.ascontiguousarray(bound),
            )
            return dist, hit | (dist <= TOUCH_MM)
        if method == "compiled":
            raise RuntimeError("the compiled kernels (numba) are not available")
        dist = np.empty(n)
        hit = np.empty(n, dtype=bool)
        for i in range(0, n, max(int(chunk), 1)):
            j = min(i + max(int(chunk), 1), n)
            dist[i:j], hit[i:j] = self._query(p0[i:j], p1[i:j], bound[i:j])
        return dist, hit | (dist <= TOUCH_MM)

    def point_distance(self, points, max_distance: float = np.inf) -> Array:
        """Exact unsigned distance from points (n, 3) to the mesh surface, mm (n,)."""
        p = np.atleast_2d(_f64(points))
        return self.segment_distance(p, p, max_distance)[0]

    def point_signed_distance(self, points) -> Array:
        """Signed distance of points to the closed mesh, mm: negative inside (:meth:`contains`)."""
        p = np.atleast_2d(_f64(points))
        d = self.point_distance(p)
        return np.where(self.contains(p), -d, d)

    # ---- inside test ------------------------------------------------------------------
    def _build_grid(self) -> None:
        """Uniform grid over the (P, S) projection: cell -> triangles whose box covers it."""
        ya, yb, yc = self.A[:, 1:], self.B[:, 1:], self.C[:, 1:]
        e_ab, e_bc, e_ca = yb - ya, yc - yb, ya - yc
        area2 = e_ab[:, 0] * (yc - ya)[:, 1] - e_ab[:, 1] * (yc - ya)[:, 0]
        use = np.flatnonzero(area2 != 0)  # edge-on triangles never meet a generic ray
        sigma = np.sign(area2)
        # tie-break on an edge (value exactly 0): the point belongs to the triangle into
        # which the perturbation (+1, +delta) in (P, S) moves it, i.e. the inward normal
        # n_in = sigma * (-dS, dP) satisfies n_in_P > 0, or n_in_P == 0 and n_in_S > 0.
        tie = []
        for e in (e_ab, e_bc, e_ca):
            nP = -sigma * e[:, 1]
            nS = sigma * e[:, 0]
            tie.append((nP > 0) | ((nP == 0) & (nS > 0)))
        self._tie = np.stack(tie, axis=1)
        # per edge, the orientation value is computed from the end points in canonical
        # (lexicographic (P, S)) order, so both triangles of a shared edge get the same
        # number; the sign flips back to the triangle's own (CCW-normalised) orientation
        tab = np.empty((len(self.faces), 3, 4))
        sgn = np.empty((len(self.faces), 3))
        verts = (ya, yb, yc)
        for k in range(3):
            u, w = verts[k], verts[(k + 1) % 3]
            swap = (u[:, 0] > w[:, 0]) | ((u[:, 0] == w[:, 0]) & (u[:, 1] > w[:, 1]))
            P = np.where(swap[:, None], w, u)
            Q = np.where(swap[:, None], u, w)
            tab[:, k, :2] = P
            tab[:, k, 2:] = Q - P
            sgn[:, k] = np.where(swap, -1.0, 1.0) * sigma
        self._edge_tab = tab
        self._edge_sgn = sgn
        self._vx = np.stack([self.A[:, 0], self.B[:, 0], self.C[:, 0]], axis=1)
        lo = self.tri_min[use][:, 1:]
        hi = self.tri_max[use][:, 1:]
        origin = self.bounds[0, 1:]
        extent = np.maximum(self.bounds[1, 1:] - origin, 1e-9)
        size = float(np.median((hi - lo).max(axis=1))) if len(use) else 1.0
        size = max(size, float(extent.max()) / 1024.0, 1e-6)
        while True:
            ncell = np.floor(extent / size).astype(np.int64) + 1
            i0 = np.clip(np.floor((lo - origin) / size).astype(np.int64), 0, ncell - 1)
            i1 = np.clip(np.floor((hi - origin) / size).astype(np.int64), 0, ncell - 1)
            w = i1 - i0 + 1
            cnt = w[:, 0] * w[:, 1]
            if cnt.sum() <= 32 * max(len(use), 1) + 1024:
                break
            size *= 1.5
        tot = int(cnt.sum())
        owner = np.repeat(np.arange(len(use)), cnt)
        j = np.arange(tot) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        iy = i0[owner, 0] + j % w[owner, 0]
        iz = i0[owner, 1] + j // w[owner, 0]
        cell = iy * ncell[1] + iz
        srt = np.argsort(cell, kind="stable")
        self._grid = {
            "origin": origin,
            "size": size,
            "ncell": ncell,
            "tris": use[owner[srt]],
            "start": np.searchsorted(cell[srt], np.arange(ncell[0] * ncell[1] + 1)),
        }

    def contains(self, points, chunk: int = 200_000) -> Array:
        """Whether points lie inside the closed mesh (ray parity along +L).

        A ray from each point along +L (the first LPS axis) is intersected with the
        triangles in the projection onto the (P, S) plane; the number of triangles crossed
        beyond the point is odd inside.  Rays through an edge or a vertex are resolved by
        simulation of simplicity: each edge's orientation value is computed once from its
        end points in a canonical (lexicographic) order, so the two triangles sharing an
        edge see the same number, and a zero value is assigned to the triangle into which
        a fixed infinitesimal shift of the ray, direction ``(+1, +delta)`` in (P, S), would
        move it.  That is exactly the parity of the shifted ray, so the answer is robust
        for watertight (closed, manifold) meshes, including for points whose ray passes
        exactly through vertices or along faces (e.g. grid-aligned points and
        marching-cubes vertices).  Points on the surface itself may go either way; open
        meshes give the parity along +L, which is not meaningful.

        Parameters
        ----------
        points : (n, 3) float
            LPS mm.

        Returns
        -------
        (n,) bool
        """
        p = np.atleast_2d(_f64(points))
        if self._grid is None:
            self._build_grid()
        g = self._grid
        out = np.zeros(len(p), dtype=bool)
        rel = (p[:, 1:] - g["origin"]) / g["size"]
        ok = (
            np.all(rel >= 0, axis=1)
            & np.all(rel < g["ncell"], axis=1)
            & (p[:, 0] <= self.bounds[1, 0])
        )
        idx = np.flatnonzero(ok)
        if len(idx) == 0:
            return out
        ij = np.floor(rel[idx]).astype(np.int64)
        ij = np.minimum(ij, g["ncell"] - 1)
        cell = ij[:, 0] * g["ncell"][1] + ij[:, 1]
        s0 = g["start"][cell]
        cnt = g["start"][cell + 1] - s0
        crossings = np.zeros(len(idx), dtype=np.int64)
        # process in chunks of pairs
        csum = np.cumsum(cnt)
        lo_i = 0
        while lo_i < len(idx):
            base = csum[lo_i - 1] if lo_i > 0 else 0
            hi_i = int(np.searchsorted(csum, base + chunk, side="right"))
            hi_i = max(hi_i, lo_i + 1)
            c = cnt[lo_i:hi_i]
            pi = np.repeat(np.arange(lo_i, hi_i), c)
            j = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
            tri = g["tris"][np.repeat(s0[lo_i:hi_i], c) + j]
            crossings[lo_i:hi_i] += np.bincount(
                pi - lo_i, weights=self._ray_hits(p[idx[pi]], tri), minlength=hi_i - lo_i
            ).astype(np.int64)
            lo_i = hi_i
        out[idx] = (crossings % 2) == 1
        return out

    def _ray_hits(self, p: Array, tri: Array) -> Array:
        """1.0 where the +L ray from p crosses triangle ``tri`` beyond p (pairs)."""
        tab = self._edge_tab[tri]  # (m, 3, 4): canonical start (P, S), canonical delta (P, S)
        val = tab[..., 2] * (p[:, 2, None] - tab[..., 1]) - tab[..., 3] * (p[:, 1, None] - tab[..., 0])
        e = val * self._edge_sgn[tri]  # > 0 on the inner side of the (CCW-normalised) edge
        inside = np.all((e > 0) | ((e == 0) & self._tie[tri]), axis=1)
        # barycentric weights: vertex k is opposite edge k+1 (ab -> c, bc -> a, ca -> b)
        wa, wb, wc = e[:, 1], e[:, 2], e[:, 0]
        wsum = wa + wb + wc
        vx = self._vx[tri]
        x = _safe_div(wa * vx[:, 0] + wb * vx[:, 1] + wc * vx[:, 2], wsum)
        return (inside & (wsum > 0) & (x > p[:, 0])).astype(np.float64)

    # ---- clearance --------------------------------------------------------------------
    def segment_signed_clearance(
        self,
        p0,
        p1,
        max_distance: float = np.inf,
        depth_step_mm: float = 0.25,
        depth_rel_tol: float = 0.05,
    ) -> Array:
        """Clearance of segments to the solid bounded by the mesh (mm).

        * Segment outside (no crossing, neither end point inside): the **exact** distance
          (positive, capped at ``max_distance`` as in :meth:`segment_distance`).
        * Otherwise **negative** (or 0 for a segment that only touches the surface):
          minus the maximal depth of the segment inside the solid, **approximated** from
          points sampled every ``depth_step_mm`` along the segment (end points included):
          the largest depth among the samples that are inside (:meth:`contains`), with
          depths from :meth:`approx_point_distance`.  Not every inside sample is
          evaluated: the distance is 1-Lipschitz along the segment, so samples that
          cannot beat the best depth found so far are skipped (coarse-to-fine, 16 -> 1
          sample spacing), which changes nothing in the result.  Hence
          ``D_s <= depth <= D / (1 - depth_rel_tol)`` with ``D_s`` the true largest depth
          over the samples and ``D`` the true maximal depth (``D - D_s <= depth_step_mm
          / 2``).

        Parameters
        ----------
        p0, p1 : (n, 3) float
            Segment end points (needle axis), LPS mm.
        max_distance : float or (n,) float
            Cull distance for the positive part, mm (one for all or one per segment).
        depth_step_mm : float
            Sampling step of the depth estimate, mm.
        depth_rel_tol : float
            Relative tolerance of the per-sample depth (:meth:`approx_point_distance`).

        Returns
        -------
        (n,) float
            mm.
        """
        p0, p1 = _segments(p0, p1)
        dist, hit = self.segment_distance(p0, p1, max_distance)
        # a segment that does not cross the surface is wholly inside or wholly outside
        neg = hit.copy()
        # ... so it is outside when either end lies outside the mesh's bounding box
        lo, hi = self.bounds
        boxed = np.all((p0 >= lo) & (p0 <= hi), axis=1) & np.all((p1 >= lo) & (p1 <= hi), axis=1)
        free = np.flatnonzero(~hit & boxed)
        if len(free):
            neg[free] = self.contains(p0[free])
        out = dist.copy()
        idx = np.flatnonzero(neg)
        for i in range(0, len(idx), 512):
            sub = idx[i:i + 512]
            out[sub] = 0.0 - self._max_depth(p0[sub], p1[sub], float(depth_step_mm), float(depth_rel_tol))
        return out

    def _max_depth(self, a: Array, b: Array, step: float, rel_tol: float) -> Array:
        """Largest (approximate) depth of inside samples along segments a-b (see above)."""
        m = len(a)
        length = _norm(b - a)
        k = np.maximum(np.ceil(length / step).astype(np.int64) + 1, 2)
        kmax = int(k.max())
        j = np.arange(kmax)[None, :]
        valid = j < k[:, None]
        h = length / (k - 1)  # actual spacing, mm
        t = np.where(valid, j / (k[:, None] - 1), 0.0)
        pts = a[:, None, :] + t[..., None] * (b - a)[:, None, :]
        inside = np.zeros((m, kmax), dtype=bool)
        inside[valid] = self.contains(pts[valid])
        est = np.full((m, kmax), np.nan)
        best = np.zeros(m)
        x = j * h[:, None]  # position along the segment, mm
        g = 16
        while True:
            cand = inside & np.isnan(est) & (j % g == 0)
            if g < 16:
                ev = ~np.isnan(est)
                fwd = np.minimum.accumulate(np.where(ev, est - x, np.inf), axis=1) + x
                bwd = (np.minimum.accumulate(np.where(ev, est + x, np.inf)[:, ::-1], axis=1)[:, ::-1]) - x
                ub = np.minimum(fwd, bwd)
                cand &= ub > best[:, None]
            if cand.any():
                est[cand] = self.approx_point_distance(pts[cand], rel_tol)
                best = np.maximum(best, np.where(np.isnan(est), 0.0, est).max(axis=1))
            if g == 1:
                return best
            g //= 2

    def approx_point_distance(self, points, rel_tol: float = 0.05) -> Array:
        """Point-to-surface distance (mm) to within a relative tolerance, fast when deep.

        Same BVH query as :meth:`point_distance`, but a node is pruned as soon as it
        cannot improve the current upper bound ``D`` by more than the fraction
        ``rel_tol`` (``lower bound > (1 - rel_tol) D``).  The result ``D`` satisfies
        ``d <= D <= d / (1 - rel_tol)`` for the exact distance ``d`` (it is the distance to
        an actual surface point).  Exact queries from points deep inside a round solid
        must visit nearly every triangle (all are nearly equidistant); this one stops at
        nodes about ``rel_tol * d`` in size.

        Parameters
        ----------
        points : (n, 3) float
            LPS mm.
        rel_tol : float
            Relative tolerance in ``[0, 1)``.

        Returns
        -------
        (n,) float
            mm.
        """
        p = np.atleast_2d(_f64(points))
        if not 0.0 <= rel_tol < 1.0:
            raise ValueError("rel_tol must be in [0, 1)")
        kern = _kernels()
        if kern is not None:
            bmin, bmax, centre, radius, starts, counts = self._flat()
            q = np.ascontiguousarray(p)
            fn = kern.bvh_segment_distance_serial if len(q) < kern.SERIAL_BELOW_MESH else kern.bvh_segment_distance
            return fn(
                q, q, bmin, bmax, centre, radius, starts, counts, int(self.depth), self.order,
                self.A, self.B, self.C, self.centroids, self.tri_radius, np.full(len(q), np.inf), 1.0 - float(rel_tol),
            )[0]
        out = np.empty(len(p))
        step = 2048
        for i in range(0, len(p), step):
            q = p[i:i + step]
            out[i:i + step] = self._query(q, q, np.inf, shrink=1.0 - rel_tol)[0]
        return out
