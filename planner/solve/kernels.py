"""Compiled kernels for the exact clearance hot paths (numba), with the same formulas as
:mod:`planner.solve.exact`.

The numpy functions of :mod:`planner.solve.exact` are vectorised over many segments; a
single trajectory (a user dragging an entry point) pays their per-call overhead dozens of
times per structure.  These kernels do the same work in one compiled pass per query:

* :func:`bvh_segment_distance`: exact segment-to-triangle-mesh distance, traversing the
  :class:`planner.solve.exact.MeshDistance` hierarchy depth first, nearer child first,
  pruning a node when its lower bound (box-to-box gap and bounding sphere) is not below
  the best distance found;
* :func:`segment_cylinders_distance`: exact clearance of segments to flat-capped
  cylinders (golden-section search of the convex signed distance along the segment,
  after a capsule lower bound) and to tubes (closed-form capsules).

* :func:`trace_candidates`: the stage-1 sphere traces of
  :func:`planner.solve.search.evaluate` (body exit, skin, obstacle field on the cannula
  part and the channel), one ray per iteration of a parallel loop.

Every formula is the one of the numpy reference (``tests/test_solve_exact.py`` and
``tests/test_solve_kernels.py`` check agreement).  Compilation is cached on disk (``cache=True``); the first call of
a fresh install compiles for a few seconds.  Lengths are mm, points LPS.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_GOLD = (math.sqrt(5.0) - 1.0) / 2.0
TOUCH_MM = 1e-9

#: Queries with fewer segments than this run on the calling thread (the ``_serial``
#: kernels): starting the worker threads of a parallel loop costs more than the work of a
#: few segments, and on a loaded machine each start can wait a scheduler time slice.  The
#: results are the same either way (segments are independent).
SERIAL_BELOW_MESH = 48
SERIAL_BELOW_SOLIDS = 256
SERIAL_BELOW_RAYS = 2048


@njit(cache=True, inline="always")
def _dot(a0, a1, a2, b0, b1, b2):
    return a0 * b0 + a1 * b1 + a2 * b2


@njit(cache=True)
def _point_segment(px, py, pz, ax, ay, az, bx, by, bz):
    abx, aby, abz = bx - ax, by - ay, bz - az
    apx, apy, apz = px - ax, py - ay, pz - az
    den = abx * abx + aby * aby + abz * abz
    t = 0.0
    if den > 0.0:
        t = (apx * abx + apy * aby + apz * abz) / den
        t = min(max(t, 0.0), 1.0)
    dx, dy, dz = apx - t * abx, apy - t * aby, apz - t * abz
    return math.sqrt(dx * dx + dy * dy + dz * dz)


@njit(cache=True)
def _segment_segment(p0, p1, q0, q1):
    """As :func:`planner.solve.exact.segment_segment_distance` for one pair ((3,) arrays)."""
    d1x, d1y, d1z = p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]
    d2x, d2y, d2z = q1[0] - q0[0], q1[1] - q0[1], q1[2] - q0[2]
    rx, ry, rz = p0[0] - q0[0], p0[1] - q0[1], p0[2] - q0[2]
    a = d1x * d1x + d1y * d1y + d1z * d1z
    e = d2x * d2x + d2y * d2y + d2z * d2z
    b = d1x * d2x + d1y * d2y + d1z * d2z
    c = d1x * rx + d1y * ry + d1z * rz
    f = d2x * rx + d2y * ry + d2z * rz
    nx, ny, nz = d1y * d2z - d1z * d2y, d1z * d2x - d1x * d2z, d1x * d2y - d1y * d2x
    nn = nx * nx + ny * ny + nz * nz
    wx, wy, wz = -rx, -ry, -rz
    cx, cy, cz = wy * d2z - wz * d2y, wz * d2x - wx * d2z, wx * d2y - wy * d2x
    s = (cx * nx + cy * ny + cz * nz) / nn if nn > 0.0 else 0.0
    s = min(max(s, 0.0), 1.0)
    t = (b * s + f) / e if e > 0.0 else 0.0
    t = min(max(t, 0.0), 1.0)
    s = (b * t - c) / a if a > 0.0 else 0.0
    s = min(max(s, 0.0), 1.0)
    dx = rx + s * d1x - t * d2x
    dy = ry + s * d1y - t * d2y
    dz = rz + s * d1z - t * d2z
    best = math.sqrt(dx * dx + dy * dy + dz * dz)
    best = min(best, _point_segment(p0[0], p0[1], p0[2], q0[0], q0[1], q0[2], q1[0], q1[1], q1[2]))
    best = min(best, _point_segment(p1[0], p1[1], p1[2], q0[0], q0[1], q0[2], q1[0], q1[1], q1[2]))
    best = min(best, _point_segment(q0[0], q0[1], q0[2], p0[0], p0[1], p0[2], p1[0], p1[1], p1[2]))
    best = min(best, _point_segment(q1[0], q1[1], q1[2], p0[0], p0[1], p0[2], p1[0], p1[1], p1[2]))
    return best


@njit(cache=True)
def _point_triangle(p, a, b, c):
    abx, aby, abz = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    bcx, bcy, bcz = c[0] - b[0], c[1] - b[1], c[2] - b[2]
    cax, cay, caz = a[0] - c[0], a[1] - c[1], a[2] - c[2]
    # n = ab x (-ca)
    nx = aby * (-caz) - abz * (-cay)
    ny = abz * (-cax) - abx * (-caz)
    nz = abx * (-cay) - aby * (-cax)
    nn = nx * nx + ny * ny + nz * nz
    inside = False
    if nn > 0.0:
        ux, uy, uz = p[0] - a[0], p[1] - a[1], p[2] - a[2]
        c1 = _dot(aby * uz - abz * uy, abz * ux - abx * uz, abx * uy - aby * ux, nx, ny, nz)
        ux, uy, uz = p[0] - b[0], p[1] - b[1], p[2] - b[2]
        c2 = _dot(bcy * uz - bcz * uy, bcz * ux - bcx * uz, bcx * uy - bcy * ux, nx, ny, nz)
        ux, uy, uz = p[0] - c[0], p[1] - c[1], p[2] - c[2]
        c3 = _dot(cay * uz - caz * uy, caz * ux - cax * uz, cax * uy - cay * ux, nx, ny, nz)
        inside = c1 >= 0.0 and c2 >= 0.0 and c3 >= 0.0
    if inside:
        return abs(_dot(p[0] - a[0], p[1] - a[1], p[2] - a[2], nx, ny, nz)) / math.sqrt(nn)
    d = _point_segment(p[0], p[1], p[2], a[0], a[1], a[2], b[0], b[1], b[2])
    d = min(d, _point_segment(p[0], p[1], p[2], b[0], b[1], b[2], c[0], c[1], c[2]))
    d = min(d, _point_segment(p[0], p[1], p[2], c[0], c[1], c[2], a[0], a[1], a[2]))
    return d


@njit(cache=True)
def _segment_triangle(p0, p1, a, b, c):
    """(distance, hit) as :func:`planner.solve.exact.segment_triangle_distance`."""
    dx, dy, dz = p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]
    e1x, e1y, e1z = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    e2x, e2y, e2z = c[0] - a[0], c[1] - a[1], c[2] - a[2]
    px, py, pz = dy * e2z - dz * e2y, dz * e2x - dx * e2z, dx * e2y - dy * e2x
    det = e1x * px + e1y * py + e1z * pz
    scale = math.sqrt(dx * dx + dy * dy + dz * dz) * math.sqrt(e1x * e1x + e1y * e1y + e1z * e1z) * math.sqrt(
        e2x * e2x + e2y * e2y + e2z * e2z
    )
    hit = False
    if abs(det) > 1e-14 * scale:
        inv = 1.0 / det
        tx, ty, tz = p0[0] - a[0], p0[1] - a[1], p0[2] - a[2]
        u = (tx * px + ty * py + tz * pz) * inv
        qx, qy, qz = ty * e1z - tz * e1y, tz * e1x - tx * e1z, tx * e1y - ty * e1x
        v = (dx * qx + dy * qy + dz * qz) * inv
        t = (e2x * qx + e2y * qy + e2z * qz) * inv
        hit = u >= 0.0 and v >= 0.0 and u + v <= 1.0 and t >= 0.0 and t <= 1.0
    if hit:
        return 0.0, True
    d = min(_point_triangle(p0, a, b, c), _point_triangle(p1, a, b, c))
    d = min(d, _segment_segment(p0, p1, a, b))
    d = min(d, _segment_segment(p0, p1, b, c))
    d = min(d, _segment_segment(p0, p1, c, a))
    return d, d <= TOUCH_MM


@njit(cache=True, inline="always")
def _bvh_one(P0, P1, s, bmin, bmax, centre, radius, starts, counts, depth, order, A, B, C, tri_c, tri_r, bound, shrink, first_leaf, no, lo):
    """One segment of :func:`bvh_segment_distance`: (distance, touches).

    ``no``, ``lo``: offsets of this mesh's nodes and leaves in the node and leaf arrays
    (0 for one mesh; :func:`forest_clearances` packs several meshes), whose ``starts``
    and ``order`` entries are global positions and triangle ids."""
    touched = False
    stack = np.empty(64 + 2 * (depth + 1), np.int64)
    p0 = P0[s]
    p1 = P1[s]
    lo0, lo1, lo2 = min(p0[0], p1[0]), min(p0[1], p1[1]), min(p0[2], p1[2])
    hi0, hi1, hi2 = max(p0[0], p1[0]), max(p0[1], p1[1]), max(p0[2], p1[2])
    best = bound
    top = 0
    stack[0] = 0
    top = 1
    while top > 0:
        top -= 1
        g = stack[top]
        gx = max(max(bmin[no + g, 0] - hi0, lo0 - bmax[no + g, 0]), 0.0)
        gy = max(max(bmin[no + g, 1] - hi1, lo1 - bmax[no + g, 1]), 0.0)
        gz = max(max(bmin[no + g, 2] - hi2, lo2 - bmax[no + g, 2]), 0.0)
        lb = math.sqrt(gx * gx + gy * gy + gz * gz)
        if lb > shrink * best:
            continue
        sp = _point_segment(centre[no + g, 0], centre[no + g, 1], centre[no + g, 2], p0[0], p0[1], p0[2], p1[0], p1[1], p1[2]) - radius[no + g]
        if sp > shrink * best:
            continue
        if g >= first_leaf:
            i = g - first_leaf
            for q in range(starts[lo + i], starts[lo + i] + counts[lo + i]):
                t = order[q]
                lbt = _point_segment(tri_c[t, 0], tri_c[t, 1], tri_c[t, 2], p0[0], p0[1], p0[2], p1[0], p1[1], p1[2]) - tri_r[t]
                if lbt > shrink * best:
                    continue
                d, h = _segment_triangle(p0, p1, A[t], B[t], C[t])
                if h:
                    touched = True
                if d < best:
                    best = d
        else:
            c1 = 2 * g + 1
            c2 = c1 + 1
            # push the farther child first so the nearer is visited first
            d1 = _point_segment(centre[no + c1, 0], centre[no + c1, 1], centre[no + c1, 2], p0[0], p0[1], p0[2], p1[0], p1[1], p1[2])
            d2 = _point_segment(centre[no + c2, 0], centre[no + c2, 1], centre[no + c2, 2], p0[0], p0[1], p0[2], p1[0], p1[1], p1[2])
            if d1 <= d2:
                stack[top] = c2
                stack[top + 1] = c1
            else:
                stack[top] = c1
                stack[top + 1] = c2
            top += 2
    return best, touched


@njit(cache=True, parallel=True)
def bvh_segment_distance(P0, P1, bmin, bmax, centre, radius, starts, counts, depth, order, A, B, C, tri_c, tri_r, bound, shrink=1.0):
    """Exact distance of segments ``P0``-``P1`` (n, 3) to a mesh, and whether they touch it.

    The hierarchy is the implicit heap of :class:`planner.solve.exact.MeshDistance`: node
    ``g`` of level ``k`` (``g = 2**k - 1 + i``) has children ``2 g + 1`` and ``2 g + 2``;
    the leaves (level ``depth``) own ``order[starts[i]:starts[i] + counts[i]]``.  Node
    arrays are flattened over the levels in that order.  Distances beyond ``bound[s]``
    (one per segment) come back as ``bound[s]``.  ``shrink < 1`` prunes a node whose lower bound exceeds ``shrink``
    times the best distance so far (the relative-tolerance query of
    :meth:`planner.solve.exact.MeshDistance.approx_point_distance`); 1 is exact.
    Segments run in parallel.
    """
    n = P0.shape[0]
    dist = bound.copy()
    hit = np.zeros(n, np.bool_)
    first_leaf = (1 << depth) - 1
    for s in prange(n):  # segments are independent
        dist[s], hit[s] = _bvh_one(P0, P1, s, bmin, bmax, centre, radius, starts, counts, depth, order, A, B, C, tri_c, tri_r, bound[s], shrink, first_leaf, 0, 0)
    return dist, hit


@njit(cache=True)
def bvh_segment_distance_serial(P0, P1, bmin, bmax, centre, radius, starts, counts, depth, order, A, B, C, tri_c, tri_r, bound, shrink=1.0):
    """:func:`bvh_segment_distance` on the calling thread (few segments: no thread start-up)."""
    n = P0.shape[0]
    dist = bound.copy()
    hit = np.zeros(n, np.bool_)
    first_leaf = (1 << depth) - 1
    for s in range(n):
        dist[s], hit[s] = _bvh_one(P0, P1, s, bmin, bmax, centre, radius, starts, counts, depth, order, A, B, C, tri_c, tri_r, bound[s], shrink, first_leaf, 0, 0)
    return dist, hit


@njit(cache=True)
def _point_cylinder(px, py, pz, a, b, radius):
    ux, uy, uz = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    length = math.sqrt(ux * ux + uy * uy + uz * uz)
    ux, uy, uz = ux / length, uy / length, uz / length
    qx = px - 0.5 * (a[0] + b[0])
    qy = py - 0.5 * (a[1] + b[1])
    qz = pz - 0.5 * (a[2] + b[2])
    h = qx * ux + qy * uy + qz * uz
    rx, ry, rz = qx - h * ux, qy - h * uy, qz - h * uz
    rho = math.sqrt(rx * rx + ry * ry + rz * rz)
    dx = rho - radius
    dy = abs(h) - 0.5 * length
    outside = math.hypot(max(dx, 0.0), max(dy, 0.0))
    return outside + min(max(dx, dy), 0.0)


@njit(cache=True)
def _segment_cylinder(p0, p1, a, b, radius, tol_mm):
    """As :func:`planner.solve.exact.segment_cylinder_distance` for one segment."""
    dx, dy, dz = p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]
    L = math.sqrt(dx * dx + dy * dy + dz * dz)
    best = min(_point_cylinder(p0[0], p0[1], p0[2], a, b, radius), _point_cylinder(p1[0], p1[1], p1[2], a, b, radius))
    if L <= tol_mm:
        return best
    iters = int(math.ceil(math.log(L / tol_mm) / math.log(1.0 / _GOLD))) + 1
    lo, hi = 0.0, 1.0
    x1 = hi - _GOLD * (hi - lo)
    x2 = lo + _GOLD * (hi - lo)
    f1 = _point_cylinder(p0[0] + x1 * dx, p0[1] + x1 * dy, p0[2] + x1 * dz, a, b, radius)
    f2 = _point_cylinder(p0[0] + x2 * dx, p0[1] + x2 * dy, p0[2] + x2 * dz, a, b, radius)
    best = min(best, f1, f2)
    for _ in range(iters):
        if f1 <= f2:
            hi = x2
            x2, f2 = x1, f1
            x1 = hi - _GOLD * (hi - lo)
            f1 = _point_cylinder(p0[0] + x1 * dx, p0[1] + x1 * dy, p0[2] + x1 * dz, a, b, radius)
            best = min(best, f1)
        else:
            lo = x1
            x1, f1 = x2, f2
            x2 = lo + _GOLD * (hi - lo)
            f2 = _point_cylinder(p0[0] + x2 * dx, p0[1] + x2 * dy, p0[2] + x2 * dz, a, b, radius)
            best = min(best, f2)
    return best


@njit(cache=True, inline="always")
def _solids_one(s, P0, P1, kind, sa, sb, srad, poly, poly_start, poly_count, sbmin, sbmax, tol_mm, cap):
    """One segment of :func:`segment_solids_distance`: (clearance, solid index)."""
    m = kind.shape[0]
    p0 = P0[s]
    p1 = P1[s]
    best = cap
    arg = -1
    lo0, lo1, lo2 = min(p0[0], p1[0]), min(p0[1], p1[1]), min(p0[2], p1[2])
    hi0, hi1, hi2 = max(p0[0], p1[0]), max(p0[1], p1[1]), max(p0[2], p1[2])
    gaps = np.empty(m)
    for k in range(m):
        gx = max(max(sbmin[k, 0] - hi0, lo0 - sbmax[k, 0]), 0.0)
        gy = max(max(sbmin[k, 1] - hi1, lo1 - sbmax[k, 1]), 0.0)
        gz = max(max(sbmin[k, 2] - hi2, lo2 - sbmax[k, 2]), 0.0)
        gaps[k] = math.sqrt(gx * gx + gy * gy + gz * gz)
    for k in range(m):
        if kind[k] != 1:
            continue
        gap = gaps[k]
        if gap > 0.0 and (gap > best or (gap == best and k > arg)):  # at least the gap away
            continue
        j0 = poly_start[k]
        cnt = poly_count[k]
        if cnt == 1:
            d = _point_segment(poly[j0, 0], poly[j0, 1], poly[j0, 2], p0[0], p0[1], p0[2], p1[0], p1[1], p1[2]) - srad[k]
        else:
            d = np.inf
            for j in range(j0, j0 + cnt - 1):
                q0 = poly[j]
                q1 = poly[j + 1]
                mx, my, mz = 0.5 * (q0[0] + q1[0]), 0.5 * (q0[1] + q1[1]), 0.5 * (q0[2] + q1[2])
                hx, hy, hz = q1[0] - q0[0], q1[1] - q0[1], q1[2] - q0[2]
                half = 0.5 * math.sqrt(hx * hx + hy * hy + hz * hz)
                if _point_segment(mx, my, mz, p0[0], p0[1], p0[2], p1[0], p1[1], p1[2]) - half >= min(d, best + srad[k]):
                    continue
                d = min(d, _segment_segment(p0, p1, q0, q1))
            d -= srad[k]
        if d < best or (d == best and k < arg):
            best = d
            arg = k
    # cylinders: capsule lower bounds first (cheap), then exact ones nearest first
    lbs = np.full(m, np.inf)
    for k in range(m):
        if kind[k] == 1:
            continue
        gap = gaps[k]
        if gap > 0.0 and (gap > best or (gap == best and k > arg)):
            continue
        lbs[k] = _segment_segment(p0, p1, sa[k], sb[k]) - srad[k]
    order = np.argsort(lbs, kind="mergesort")
    for q in range(m):
        k = order[q]
        lb = lbs[k]
        if lb == np.inf:
            break
        if lb > best or (lb == best and k > arg):
            continue
        d = _segment_cylinder(p0, p1, sa[k], sb[k], srad[k], tol_mm)
        if d < best or (d == best and k < arg):
            best = d
            arg = k
    return best, arg


@njit(cache=True, parallel=True)
def segment_solids_distance(P0, P1, kind, sa, sb, srad, poly, poly_start, poly_count, sbmin, sbmax, tol_mm, cap=np.inf):
    """Clearance of each segment to its nearest solid, and that solid's index.

    Solids ``k``: ``kind[k]`` 0 = flat-capped cylinder ``sa[k]``-``sb[k]``, 1 = tube along
    ``poly[poly_start[k]:poly_start[k] + poly_count[k]]``; radius ``srad[k]``; ``sbmin``,
    ``sbmax`` (m, 3) its bounding box.  A solid is skipped when the gap between its box
    and the segment's is not below the best so far; a tube piece when its midpoint's
    distance less half its length is not.  Tubes (closed form) go first, then the
    cylinders in the order of their capsule lower bounds, each evaluated exactly only when
    that bound beats the best.  Among solids at exactly the same distance the lowest index
    is reported, whatever the visiting order.  Segments run in parallel (independent).

    ``cap``: a segment whose clearance is not below ``cap`` gets exactly ``cap`` and index
    -1 (solids are pruned against it from the start); below ``cap`` the result is the
    same as without it, value and index.
    """
    n = P0.shape[0]
    out = np.full(n, np.inf)
    who = np.full(n, -1, np.int64)
    for s in prange(n):
        out[s], who[s] = _solids_one(s, P0, P1, kind, sa, sb, srad, poly, poly_start, poly_count, sbmin, sbmax, tol_mm, cap)
    return out, who


@njit(cache=True)
def segment_solids_distance_serial(P0, P1, kind, sa, sb, srad, poly, poly_start, poly_count, sbmin, sbmax, tol_mm, cap=np.inf):
    """:func:`segment_solids_distance` on the calling thread (few segments: no thread start-up)."""
    n = P0.shape[0]
    out = np.full(n, np.inf)
    who = np.full(n, -1, np.int64)
    for s in range(n):
        out[s], who[s] = _solids_one(s, P0, P1, kind, sa, sb, srad, poly, poly_start, poly_count, sbmin, sbmax, tol_mm, cap)
    return out, who


@njit(cache=True, inline="always")
def _tri1(arr, M, o, x, y, z):
    """Trilinear value of ``arr`` at one LPS point (the formula of :func:`trilinear`)."""
    ni, nj, nk = arr.shape
    qi = x * M[0, 0] + y * M[1, 0] + z * M[2, 0] + o[0]
    qj = x * M[0, 1] + y * M[1, 1] + z * M[2, 1] + o[1]
    qk = x * M[0, 2] + y * M[1, 2] + z * M[2, 2] + o[2]
    qi = min(max(qi, 0.0), ni - 1.0)
    qj = min(max(qj, 0.0), nj - 1.0)
    qk = min(max(qk, 0.0), nk - 1.0)
    i0 = min(int(qi), ni - 2)
    j0 = min(int(qj), nj - 2)
    k0 = min(int(qk), nk - 2)
    fx = np.float32(qi - i0)
    fy = np.float32(qj - j0)
    fz = np.float32(qk - k0)
    c000 = arr[i0, j0, k0]
    c001 = arr[i0, j0, k0 + 1]
    c010 = arr[i0, j0 + 1, k0]
    c011 = arr[i0, j0 + 1, k0 + 1]
    c100 = arr[i0 + 1, j0, k0]
    c101 = arr[i0 + 1, j0, k0 + 1]
    c110 = arr[i0 + 1, j0 + 1, k0]
    c111 = arr[i0 + 1, j0 + 1, k0 + 1]
    c00 = c000 + (c001 - c000) * fz
    c01 = c010 + (c011 - c010) * fz
    c10 = c100 + (c101 - c100) * fz
    c11 = c110 + (c111 - c110) * fz
    c0 = c00 + (c01 - c00) * fy
    c1 = c10 + (c11 - c10) * fy
    return c0 + (c1 - c0) * fx


@njit(cache=True)
def trilinear(arr, M, o, P):
    """Trilinear values of ``arr`` (i, j, k) at LPS points ``P`` (n, 3), as
    :meth:`planner.solve.scene.Grid.sample`: index ``q = P @ M + o`` clamped to the grid."""
    n = P.shape[0]
    out = np.empty(n, arr.dtype)
    for s in range(n):
        out[s] = _tri1(arr, M, o, P[s, 0], P[s, 1], P[s, 2])
    return out


@njit(cache=True, inline="always")
def _trace_min1(F, M, o, T, D, s, t, t_end, radius, smin, stop_below, max_steps):
    """Sphere trace of one ray ``T[s] + t D[s]`` over [t, t_end]: (smallest F, its t)."""
    f_min = np.float32(np.inf)
    f_t = t
    if t > t_end:
        return f_min, f_t
    for _ in range(max_steps):
        f = _tri1(F, M, o, T[s, 0] + t * D[s, 0], T[s, 1] + t * D[s, 1], T[s, 2] + t * D[s, 2])
        if f < f_min:
            f_min = f
            f_t = t
        t += max(f - radius, smin)
        if t > t_end or f < stop_below:
            break
    return f_min, f_t


@njit(cache=True, inline="always")
def _trace_one(s, T, D, body, ML, oL, skin, F, MG, oG, hiG, reach, stop_below, cannula_in_body, r32, s32, t_body, t_skin, t_can, f_out, t_out, f_in, t_in):
    """One iteration of :func:`trace_candidates` (writes index ``s`` of the outputs)."""
    tb = 0.0
    for _ in range(200):
        v = _tri1(body, ML, oL, T[s, 0] + tb * D[s, 0], T[s, 1] + tb * D[s, 1], T[s, 2] + tb * D[s, 2])
        if v >= 0.0:
            break
        tb += max(-v, np.float32(0.25))
    t_body[s] = tb
    t = tb
    tsk = np.nan
    for _ in range(500):
        x = T[s, 0] + t * D[s, 0]
        y = T[s, 1] + t * D[s, 1]
        z = T[s, 2] + t * D[s, 2]
        g = _tri1(skin, MG, oG, x, y, z)
        if g >= 0.0:
            tsk = t
            break
        t += max(-g, s32)
        qi = x * MG[0, 0] + y * MG[1, 0] + z * MG[2, 0] + oG[0]
        qj = x * MG[0, 1] + y * MG[1, 1] + z * MG[2, 1] + oG[1]
        qk = x * MG[0, 2] + y * MG[1, 2] + z * MG[2, 2] + oG[2]
        ins = qi >= 1.0 and qj >= 1.0 and qk >= 1.0 and qi <= hiG[0] - 1.0 and qj <= hiG[1] - 1.0 and qk <= hiG[2] - 1.0
        if t > reach or not ins:
            break
    t_skin[s] = tsk
    ts = reach if math.isnan(tsk) else tsk
    tc = max(tb - cannula_in_body, 0.0)
    t_can[s] = tc
    fo, to = _trace_min1(F, MG, oG, T, D, s, tc, ts, r32, s32, stop_below, 4000)
    f_out[s] = fo
    t_out[s] = to
    if fo >= stop_below:
        fi, ti = _trace_min1(F, MG, oG, T, D, s, 0.0, tc, r32, s32, stop_below, 4000)
        f_in[s] = fi
        t_in[s] = ti
    else:
        f_in[s] = np.float32(np.inf)


@njit(cache=True, parallel=True)
def trace_candidates(T, D, body, ML, oL, skin, F, MG, oG, hiG, smin, reach, radius, stop_below, cannula_in_body):
    """Stage-1 traces of :func:`planner.solve.search.evaluate`, one compiled pass per ray.

    For every ray ``T + t D`` (target ``T``, unit direction ``D`` toward the skin):

    1. ``t_body``: where the ray leaves the target body (steps ``max(-sdf, 0.25)`` on the
       local body SDF ``body``, grid ``ML, oL``; at most 200 steps);
    2. ``t_skin``: sphere trace of the outline's signed distance ``skin`` (field grid
       ``MG, oG``, index upper bounds ``hiG``) from ``t_body``, steps ``max(-g, smin)``,
       ending when ``g >= 0`` (NaN when the ray reaches ``reach`` or leaves the grid by
       more than one node first; at most 500 steps);
    3. the smallest obstacle field ``F`` (and its ``t``) on the cannula part
       [``t_body - cannula_in_body`` (>= 0), ``t_skin``] and, unless that part already
       collides (``f < stop_below``), on the channel [0, that start]; sphere steps
       ``max(f - radius, smin)`` (at most 4000 each).  The channel of a colliding ray is
       ``+inf``.

    Float32 field values and float64 positions, as the numpy reference (the formula of
    :func:`trilinear`).  Returns ``t_body, t_skin, t_cannula, f_out, t_out, f_in, t_in``.
    """
    n = T.shape[0]
    t_body = np.empty(n)
    t_skin = np.empty(n)
    t_can = np.empty(n)
    f_out = np.empty(n, np.float32)
    t_out = np.empty(n)
    f_in = np.empty(n, np.float32)
    t_in = np.zeros(n)
    r32 = np.float32(radius)
    s32 = np.float32(smin)
    for s in prange(n):
        _trace_one(s, T, D, body, ML, oL, skin, F, MG, oG, hiG, reach, stop_below, cannula_in_body, r32, s32, t_body, t_skin, t_can, f_out, t_out, f_in, t_in)
    return t_body, t_skin, t_can, f_out, t_out, f_in, t_in


@njit(cache=True)
def trace_candidates_serial(T, D, body, ML, oL, skin, F, MG, oG, hiG, smin, reach, radius, stop_below, cannula_in_body):
    """:func:`trace_candidates` on the calling thread (a few rays: no thread start-up)."""
    n = T.shape[0]
    t_body = np.empty(n)
    t_skin = np.empty(n)
    t_can = np.empty(n)
    f_out = np.empty(n, np.float32)
    t_out = np.empty(n)
    f_in = np.empty(n, np.float32)
    t_in = np.zeros(n)
    r32 = np.float32(radius)
    s32 = np.float32(smin)
    for s in range(n):
        _trace_one(s, T, D, body, ML, oL, skin, F, MG, oG, hiG, reach, stop_below, cannula_in_body, r32, s32, t_body, t_skin, t_can, f_out, t_out, f_in, t_in)
    return t_body, t_skin, t_can, f_out, t_out, f_in, t_in


@njit(cache=True, inline="always")
def _route_one(s, T, D, t_body, side, ped_left, ped_right, body, M, o, k, count, reentry):
    """One iteration of :func:`route_samples` (writes index ``s`` of the outputs)."""
    ped = ped_left if side[s] == 0 else ped_right
    c = 0
    re = False
    for j in range(k.shape[0]):
        t = t_body[s] + k[j]
        x = T[s, 0] + t * D[s, 0]
        y = T[s, 1] + t * D[s, 1]
        z = T[s, 2] + t * D[s, 2]
        if _tri1(ped, M, o, x, y, z) < 0.0:
            c += 1
        if _tri1(body, M, o, x, y, z) < -0.5:
            re = True
    count[s] = c
    reentry[s] = re


@njit(cache=True, parallel=True)
def route_samples(T, D, t_body, side, ped_left, ped_right, body, M, o, k):
    """Samples behind each candidate's body entry, for its route: at ``T + (t_body + k_j) D``
    (LPS mm) the own-side pedicle's and the body's signed distances (trilinear, as
    :func:`trilinear`, on the local grid ``M``, ``o``).  Returns per candidate the number
    of samples inside the own pedicle (``side`` 0 = left, 1 = right) and whether any is
    more than 0.5 mm back inside the body (a re-entry).  Candidates run in parallel.
    """
    n = T.shape[0]
    count = np.zeros(n, np.int64)
    reentry = np.zeros(n, np.bool_)
    for s in prange(n):
        _route_one(s, T, D, t_body, side, ped_left, ped_right, body, M, o, k, count, reentry)
    return count, reentry


@njit(cache=True)
def route_samples_serial(T, D, t_body, side, ped_left, ped_right, body, M, o, k):
    """:func:`route_samples` on the calling thread (a few candidates: no thread start-up)."""
    n = T.shape[0]
    count = np.zeros(n, np.int64)
    reentry = np.zeros(n, np.bool_)
    for s in range(n):
        _route_one(s, T, D, t_body, side, ped_left, ped_right, body, M, o, k, count, reentry)
    return count, reentry


@njit(cache=True, inline="always")
def _forest_one(s, P0, P1, visit, gmap, lbmin, lbmax, cls, cull, mbmin, mbmax, node_off, leaf_off, depth,
                bmin, bmax, centre, radius, starts, counts, order, A, B, C, tri_c, tri_r, best, who, flag):
    """One segment of :func:`forest_clearances` (writes row ``s`` of the outputs)."""
    p0 = P0[s]
    p1 = P1[s]
    lo0, lo1, lo2 = min(p0[0], p1[0]), min(p0[1], p1[1]), min(p0[2], p1[2])
    hi0, hi1, hi2 = max(p0[0], p1[0]), max(p0[1], p1[1]), max(p0[2], p1[2])
    for q in range(visit.shape[0]):
        k = visit[q]
        c = cls[k]
        cur = best[s, c]
        gx = max(max(lbmin[k, 0] - hi0, lo0 - lbmax[k, 0]), 0.0)
        gy = max(max(lbmin[k, 1] - hi1, lo1 - lbmax[k, 1]), 0.0)
        gz = max(max(lbmin[k, 2] - hi2, lo2 - lbmax[k, 2]), 0.0)
        lb = math.sqrt(gx * gx + gy * gy + gz * gz)
        if not (lb < min(cur, cull) or (lb <= 0.0 and cur <= 0.0)):
            continue
        bound = min(max(cur, 1e-6), cull) if cur > 0.0 else cull
        g = gmap[k]
        d, h = _bvh_one(P0, P1, s, bmin, bmax, centre, radius, starts, counts, depth[g], order, A, B, C, tri_c, tri_r,
                        bound, 1.0, (1 << depth[g]) - 1, node_off[g], leaf_off[g])
        boxed = True
        for a in range(3):
            if not (p0[a] >= mbmin[g, a] and p0[a] <= mbmax[g, a] and p1[a] >= mbmin[g, a] and p1[a] <= mbmax[g, a]):
                boxed = False
        if h or d <= TOUCH_MM or boxed:
            flag[s] = True  # may be inside the solid: the caller's signed path decides
            return
        if d < cur:
            best[s, c] = d
            who[s, c] = k


@njit(cache=True, parallel=True)
def forest_clearances(P0, P1, visit, gmap, lbmin, lbmax, cls, n_cls, cull, mbmin, mbmax, node_off, leaf_off, depth,
                      bmin, bmax, centre, radius, starts, counts, order, A, B, C, tri_c, tri_r):
    """Per obstacle class, the exact distance of each segment to the nearest of several
    meshes packed together (the loop of :func:`planner.solve.plan.exact_clearances` in one
    compiled pass; segments in parallel).

    Meshes are visited in the order ``visit``; mesh ``k`` (class ``cls[k]``) is queried for
    a segment when its box lower bound (``lbmin``/``lbmax``) beats the class's best so far
    and ``cull``, bounded by that best (:func:`bvh_segment_distance`).  Its hierarchy is
    number ``g = gmap[k]`` of the pack: nodes from ``node_off[g]``, leaves from
    ``leaf_off[g]``, tree depth ``depth[g]``, bounds ``mbmin[g]``/``mbmax[g]``.  A segment
    that touches a queried mesh, or lies within its bounds ``mbmin``/``mbmax`` (it may be
    inside), is **flagged** and left for the caller's signed computation.  Returns
    ``best`` (n, n_cls) (``+inf`` where no mesh was closer than the cull), ``who`` (the
    mesh index, -1) and ``flag`` (n,).
    """
    n = P0.shape[0]
    best = np.full((n, n_cls), np.inf)
    who = np.full((n, n_cls), -1, np.int64)
    flag = np.zeros(n, np.bool_)
    for s in prange(n):
        _forest_one(s, P0, P1, visit, gmap, lbmin, lbmax, cls, cull, mbmin, mbmax, node_off, leaf_off, depth,
                    bmin, bmax, centre, radius, starts, counts, order, A, B, C, tri_c, tri_r, best, who, flag)
    return best, who, flag


@njit(cache=True)
def forest_clearances_serial(P0, P1, visit, gmap, lbmin, lbmax, cls, n_cls, cull, mbmin, mbmax, node_off, leaf_off, depth,
                             bmin, bmax, centre, radius, starts, counts, order, A, B, C, tri_c, tri_r):
    """:func:`forest_clearances` on the calling thread (a few segments: no thread start-up)."""
    n = P0.shape[0]
    best = np.full((n, n_cls), np.inf)
    who = np.full((n, n_cls), -1, np.int64)
    flag = np.zeros(n, np.bool_)
    for s in range(n):
        _forest_one(s, P0, P1, visit, gmap, lbmin, lbmax, cls, cull, mbmin, mbmax, node_off, leaf_off, depth,
                    bmin, bmax, centre, radius, starts, counts, order, A, B, C, tri_c, tri_r, best, who, flag)
    return best, who, flag


@njit(cache=True)
def segment_segment_distance1(p0, p1, q0, q1):
    """Distance between segments ``p0``-``p1`` and ``q0``-``q1`` ((3,) float64 each): the
    formula of :func:`planner.solve.exact.segment_segment_distance` for one pair."""
    return _segment_segment(p0, p1, q0, q1)
