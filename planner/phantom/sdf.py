"""Signed distance functions (SDFs) in patient LPS millimetres.

An :class:`SDF` maps points ``(n, 3) float`` to signed distances ``(n,) float`` (negative
inside, mm) and knows an axis-aligned LPS bounding box ``(2, 3)`` that contains its zero
level set.  Primitives are exact Euclidean distances where cheap (sphere, capsule, box,
capped cylinder); elliptic shapes use the usual first-order approximation, which is exact
on the surface and monotone off it, good enough for partial-volume rasterisation and
for cortical shells a few mm thick.

Composite SDFs (union, intersection, difference, smooth union) track their bounds, so the
rasteriser evaluates each structure only inside its own box.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Array = np.ndarray


class SDF:
    """Base class: ``sdf(points) -> distances`` with ``bounds``."""

    def __init__(self, fn: Callable[[Array], Array], bounds: Array):
        self._fn = fn
        self.bounds = np.asarray(bounds, dtype=float).reshape(2, 3)

    def __call__(self, points: Array) -> Array:
        p = np.asarray(points, dtype=float)
        if p.ndim != 2 or p.shape[1] != 3:
            raise ValueError(f"points must be (n, 3), got {p.shape}")
        return self._fn(p)

    # operators ------------------------------------------------------------------------
    def __or__(self, other: SDF) -> SDF:
        return union(self, other)

    def __and__(self, other: SDF) -> SDF:
        return intersect(self, other)

    def __sub__(self, other: SDF) -> SDF:
        return subtract(self, other)

    def offset(self, mm: float) -> SDF:
        """Grow (``mm > 0``) or shrink the shape by ``mm``."""
        f = self._fn
        return SDF(lambda p: f(p) - mm, self.bounds + np.array([[-mm] * 3, [mm] * 3]) * (mm > 0))


# ---- helpers --------------------------------------------------------------------------
def _frame(R: Array | None) -> Array:
    return np.eye(3) if R is None else np.asarray(R, dtype=float).reshape(3, 3)


def _box_bounds(centre: Array, R: Array, half: Array) -> Array:
    """Bounds of an oriented box: centre (3,), R columns = local axes, half extents (3,)."""
    ext = np.abs(R) @ np.asarray(half, float)
    c = np.asarray(centre, float)
    return np.stack([c - ext, c + ext])


def _to_local(p: Array, centre: Array, R: Array) -> Array:
    """World points -> local coordinates (R columns are the local axes in world)."""
    return (p - centre) @ R


# ---- primitives -----------------------------------------------------------------------
def sphere(centre: Sequence[float], radius: float) -> SDF:
    c = np.asarray(centre, float)
    return SDF(lambda p: np.linalg.norm(p - c, axis=1) - radius, np.stack([c - radius, c + radius]))


def capsule(a: Sequence[float], b: Sequence[float], radius: float) -> SDF:
    """Segment a-b swept by a sphere of ``radius`` (exact)."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    ab = b - a
    L2 = float(ab @ ab) or 1e-12

    def f(p: Array) -> Array:
        t = np.clip(((p - a) @ ab) / L2, 0.0, 1.0)
        return np.linalg.norm(p - a - t[:, None] * ab, axis=1) - radius

    lo = np.minimum(a, b) - radius
    hi = np.maximum(a, b) + radius
    return SDF(f, np.stack([lo, hi]))


def tapered_capsule(a: Sequence[float], b: Sequence[float], ra: float, rb: float) -> SDF:
    """Cone-like capsule with radius ``ra`` at a and ``rb`` at b (approximate, for ra~rb)."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    ab = b - a
    L2 = float(ab @ ab) or 1e-12

    def f(p: Array) -> Array:
        t = np.clip(((p - a) @ ab) / L2, 0.0, 1.0)
        r = ra + (rb - ra) * t
        return np.linalg.norm(p - a - t[:, None] * ab, axis=1) - r

    r = max(ra, rb)
    return SDF(f, np.stack([np.minimum(a, b) - r, np.maximum(a, b) + r]))


def cylinder(a: Sequence[float], b: Sequence[float], radius: float) -> SDF:
    """Capped (flat-ended) cylinder between a and b (exact)."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    axis = b - a
    L = float(np.linalg.norm(axis))
    u = axis / L
    mid = (a + b) / 2

    def f(p: Array) -> Array:
        q = p - mid
        h = q @ u
        r = np.linalg.norm(q - h[:, None] * u[None, :], axis=1)
        dx = r - radius
        dy = np.abs(h) - L / 2
        outside = np.sqrt(np.maximum(dx, 0) ** 2 + np.maximum(dy, 0) ** 2)
        return outside + np.minimum(np.maximum(dx, dy), 0.0)

    lo = np.minimum(a, b) - radius
    hi = np.maximum(a, b) + radius
    return SDF(f, np.stack([lo, hi]))


def box(centre: Sequence[float], half: Sequence[float], R: Array | None = None, round_mm: float = 0.0) -> SDF:
    """Oriented box (exact); ``R`` columns are the box axes in LPS; optional edge rounding."""
    c = np.asarray(centre, float)
    R = _frame(R)
    h = np.asarray(half, float) - round_mm

    def f(p: Array) -> Array:
        q = np.abs(_to_local(p, c, R)) - h
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
        inside = np.minimum(q.max(axis=1), 0.0)
        return outside + inside - round_mm

    return SDF(f, _box_bounds(c, R, np.asarray(half, float)))


def ellipsoid(centre: Sequence[float], radii: Sequence[float], R: Array | None = None) -> SDF:
    """Ellipsoid with semi-axes ``radii`` along R's columns (first-order approximation)."""
    c = np.asarray(centre, float)
    R = _frame(R)
    r = np.asarray(radii, float)

    def f(p: Array) -> Array:
        q = _to_local(p, c, R)
        k0 = np.linalg.norm(q / r, axis=1)
        k1 = np.linalg.norm(q / (r * r), axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            d = k0 * (k0 - 1.0) / k1
        return np.where(k1 > 0, d, -r.min())

    return SDF(f, _box_bounds(c, R, r))


def superellipse_prism(
    centre: Sequence[float],
    half_w: float,
    half_d: float,
    half_h: float,
    R: Array | None = None,
    exponent: float = 2.5,
    top: Callable[[Array, Array], Array] | None = None,
    bottom: Callable[[Array, Array], Array] | None = None,
) -> SDF:
    """Prism with a superellipse cross-section: the vertebral-body / disc primitive.

    Local axes (R columns): u (width, patient left), v (depth, posterior), w (height,
    superior).  ``|u/half_w|^e + |v/half_d|^e <= 1`` in plane; in height the shape spans
    ``[-half_h + bottom(u, v), half_h - top(u, v)]`` where ``top``/``bottom`` give depressions
    (mm, >= 0) of the upper and lower faces (fractures, endplate concavity).
    """
    c = np.asarray(centre, float)
    R = _frame(R)
    e = float(exponent)
    s = min(half_w, half_d)

    def f(p: Array) -> Array:
        q = _to_local(p, c, R)
        u, v, w = q[:, 0], q[:, 1], q[:, 2]
        rho = (np.abs(u / half_w) ** e + np.abs(v / half_d) ** e) ** (1.0 / e)
        d_plane = (rho - 1.0) * s  # approximate in-plane distance
        t = top(u, v) if top is not None else 0.0
        b = bottom(u, v) if bottom is not None else 0.0
        hi = half_h - t
        lo = -half_h + b
        mid = (hi + lo) / 2
        half = (hi - lo) / 2
        d_h = np.abs(w - mid) - half
        outside = np.sqrt(np.maximum(d_plane, 0) ** 2 + np.maximum(d_h, 0) ** 2)
        return outside + np.minimum(np.maximum(d_plane, d_h), 0.0)

    return SDF(f, _box_bounds(c, R, np.array([half_w, half_d, half_h])))


def tube(points: Array, radius: float | Array) -> SDF:
    """Union of capsules along a polyline (n, 3); ``radius`` scalar or per point (n,)."""
    pts = np.asarray(points, float)
    r = np.broadcast_to(np.asarray(radius, float), (len(pts),))
    a, b = pts[:-1], pts[1:]
    ab = b - a
    L2 = np.maximum((ab * ab).sum(1), 1e-12)

    def f(p: Array) -> Array:
        out = np.full(len(p), np.inf)
        for i in range(len(a)):  # loop over segments (few), vectorised over points
            t = np.clip(((p - a[i]) @ ab[i]) / L2[i], 0.0, 1.0)
            rr = r[i] + (r[i + 1] - r[i]) * t
            d = np.linalg.norm(p - a[i] - t[:, None] * ab[i], axis=1) - rr
            np.minimum(out, d, out=out)
        return out

    rmax = float(r.max())
    return SDF(f, np.stack([pts.min(0) - rmax, pts.max(0) + rmax]))


def halfspace(point: Sequence[float], normal: Sequence[float], bounds: Array) -> SDF:
    """Points on the side of the plane that ``normal`` points to are *outside* (d > 0).

    ``bounds`` must be given because a half-space is unbounded; use the region it cuts.
    """
    p0 = np.asarray(point, float)
    n = np.asarray(normal, float)
    n = n / np.linalg.norm(n)
    return SDF(lambda p: (p - p0) @ n, bounds)


# ---- boolean operations ----------------------------------------------------------------
def union(*sdfs: SDF) -> SDF:
    sdfs = tuple(s for s in sdfs if s is not None)
    if len(sdfs) == 1:
        return sdfs[0]
    b = np.stack([np.min([s.bounds[0] for s in sdfs], 0), np.max([s.bounds[1] for s in sdfs], 0)])
    return SDF(lambda p: _union_eval(sdfs, p), b)


def _union_eval(sdfs: Sequence[SDF], p: Array) -> Array:
    """Evaluate a union, skipping children whose box is far from the points."""
    out = np.full(len(p), np.inf)
    pmin, pmax = p.min(0), p.max(0)
    for s in sdfs:
        if np.any(s.bounds[0] > pmax + 50) or np.any(s.bounds[1] < pmin - 50):
            # far away: a lower bound on the distance is the box distance
            d = np.linalg.norm(np.maximum(np.maximum(s.bounds[0] - p, p - s.bounds[1]), 0), axis=1)
            np.minimum(out, d, out=out)
            continue
        np.minimum(out, s(p), out=out)
    return out


def intersect(*sdfs: SDF) -> SDF:
    lo = np.max([s.bounds[0] for s in sdfs], 0)
    hi = np.min([s.bounds[1] for s in sdfs], 0)
    hi = np.maximum(hi, lo)

    def f(p: Array) -> Array:
        out = np.full(len(p), -np.inf)
        for s in sdfs:
            np.maximum(out, s(p), out=out)
        return out

    return SDF(f, np.stack([lo, hi]))


def subtract(a: SDF, *cuts: SDF) -> SDF:
    """``a`` minus every cut (bounds of ``a`` kept)."""
    cuts = tuple(c for c in cuts if c is not None)
    if not cuts:
        return a

    def f(p: Array) -> Array:
        out = a(p)
        for c in cuts:
            inside_box = np.all((p >= c.bounds[0] - 1) & (p <= c.bounds[1] + 1), axis=1)
            if inside_box.any():
                sub = out[inside_box]
                out[inside_box] = np.maximum(sub, -c(p[inside_box]))
            far = ~inside_box
            if far.any():
                # Outside the cut's box its distance is at least the box distance, so
                # max(a, -box_distance) never claims more depth inside than the truth
                # (max(a, -c)) and keeps the sign: conservative for the block rasteriser.
                q = p[far]
                bd = np.linalg.norm(np.maximum(np.maximum(c.bounds[0] - q, q - c.bounds[1]), 0.0), axis=1)
                out[far] = np.maximum(out[far], -bd)
        return out

    return SDF(f, a.bounds.copy())


def smooth_union(a: SDF, b: SDF, k: float = 2.0) -> SDF:
    """Polynomial smooth minimum with blend radius ``k`` mm (fillets at bone junctions)."""
    bb = np.stack([np.minimum(a.bounds[0], b.bounds[0]), np.maximum(a.bounds[1], b.bounds[1])])

    def f(p: Array) -> Array:
        da, db = a(p), b(p)
        h = np.clip(0.5 + 0.5 * (db - da) / k, 0.0, 1.0)
        return db * (1 - h) + da * h - k * h * (1 - h)

    return SDF(f, bb)


def smooth_union_all(sdfs: Sequence[SDF], k: float = 2.0) -> SDF:
    out = sdfs[0]
    for s in sdfs[1:]:
        out = smooth_union(out, s, k)
    return out


def transformed(s: SDF, R: Array, t: Array) -> SDF:
    """Rigidly move shape ``s``: new(p) = s(R^T (p - t)); R rotation (3, 3), t (3,)."""
    R = np.asarray(R, float)
    t = np.asarray(t, float)
    lo, hi = s.bounds
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    moved = corners @ R.T + t
    return SDF(lambda p: s((p - t) @ R), np.stack([moved.min(0), moved.max(0)]))
