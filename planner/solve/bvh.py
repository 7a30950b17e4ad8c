"""Compiled construction of the :class:`planner.solve.exact.MeshDistance` hierarchy (numba).

The hierarchy is an implicit, balanced binary tree over the triangles sorted by the
Morton code of their centroids.  Level ``k`` has ``2**k`` nodes; node ``i`` owns the sorted
positions ``[starts[i], starts[i] + counts[i])`` with ``starts[i] = (i * F) // 2**k``, so the
two children of a node partition it.  Node arrays are flattened over the levels in heap
order (node ``g = 2**k - 1 + i``; children ``2 g + 1`` and ``2 g + 2``), the layout the
query kernel :func:`planner.solve.kernels.bvh_segment_distance` traverses.

Every value is the one of the former numpy construction, bit for bit (the numpy
reference is in ``tests/test_solve_exact.py``):

* per triangle: corners ``A, B, C``, centroid ``(A + B + C) / 3``, bounding radius (largest
  corner-to-centroid distance), box;
* order: a *stable* sort of the 63-bit Morton codes (LSD radix sort, which is stable, so
  equal codes keep the face order as ``np.argsort(kind="stable")`` does);
* per node: box (min / max of its triangles' boxes), centre (box middle), radius (largest
  distance of a corner of its triangles to the centre), as ``np.minimum.reduceat`` gives
  them, including its convention for empty nodes (only possible with ``leaf_size == 1``):
  an empty node takes the values of the triangle at its start position (radius measured
  from the centre of the node that owns that triangle).

Squared lengths are summed as ``(x*x + z*z) + y*y``, the order of numpy's
``einsum("...i,...i->...")`` for three components, and a radius is the square root of the
largest squared distance (the square root is correctly rounded and monotone, so this is
the largest of the square roots).  Boxes of internal nodes are the min / max of their
children's (exact).  The radius of an internal node is found by a branch-and-bound
descent of its subtree: a subtree is skipped when the farthest corner of its box is not
farther than the best squared distance found; the bound is computed with the same
rounded operations, which are monotone, so no corner inside the box can exceed it and the
result is the exact maximum over all corners.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

#: Meshes with fewer triangles than this are built on the calling thread (thread start-up
#: and, on a loaded machine, a scheduler time slice per parallel loop cost more than the
#: work); the arrays are the same either way.
SERIAL_BELOW_TRIANGLES = 40000


@njit(cache=True, inline="always")
def _sq(dx, dy, dz):
    """Squared length in numpy ``einsum`` order for three components."""
    return (dx * dx + dz * dz) + dy * dy


@njit(cache=True)
def _triangle_data(v, f, A, B, C, cen, trad, bounds):
    nf = f.shape[0]
    for d in range(3):
        bounds[0, d] = np.inf
        bounds[1, d] = -np.inf
    for t in range(nf):
        ia, ib, ic = f[t, 0], f[t, 1], f[t, 2]
        for d in range(3):
            a = v[ia, d]
            b = v[ib, d]
            c = v[ic, d]
            A[t, d] = a
            B[t, d] = b
            C[t, d] = c
            cen[t, d] = (a + b + c) / 3.0
            bounds[0, d] = min(bounds[0, d], min(min(a, b), c))
            bounds[1, d] = max(bounds[1, d], max(max(a, b), c))
        c0, c1, c2 = cen[t, 0], cen[t, 1], cen[t, 2]
        ra = math.sqrt(_sq(A[t, 0] - c0, A[t, 1] - c1, A[t, 2] - c2))
        rb = math.sqrt(_sq(B[t, 0] - c0, B[t, 1] - c1, B[t, 2] - c2))
        rc = math.sqrt(_sq(C[t, 0] - c0, C[t, 1] - c1, C[t, 2] - c2))
        trad[t] = max(max(ra, rb), rc)


def triangle_data(v: np.ndarray, f: np.ndarray):
    """Per-triangle corners, centroids and radii, and the mesh bounds.

    Parameters
    ----------
    v : (V, 3) float64, C-contiguous
        Vertices, LPS mm.
    f : (F, 3) int64, C-contiguous
        Face vertex indices (already checked to be in range).

    Returns
    -------
    A, B, C, centroids : (F, 3) float64
        Corners and ``(A + B + C) / 3``.
    tri_radius : (F,) float64
        Largest corner-to-centroid distance.
    bounds : (2, 3) float64
        Smallest and largest corner coordinates.
    """
    nf = len(f)
    out = (np.empty((nf, 3)), np.empty((nf, 3)), np.empty((nf, 3)), np.empty((nf, 3)), np.empty(nf), np.empty((2, 3)))
    _triangle_data(v, f, *out)
    return out


@njit(cache=True, inline="always")
def _spread_bits(x):
    x = x & np.uint64(0x1FFFFF)
    x = (x | (x << np.uint64(32))) & np.uint64(0x1F00000000FFFF)
    x = (x | (x << np.uint64(16))) & np.uint64(0x1F0000FF0000FF)
    x = (x | (x << np.uint64(8))) & np.uint64(0x100F00F00F00F00F)
    x = (x | (x << np.uint64(4))) & np.uint64(0x10C30C30C30C30C3)
    x = (x | (x << np.uint64(2))) & np.uint64(0x1249249249249249)
    return x


@njit(cache=True, inline="always")
def _quantise(x):
    """``clip(int64(x), 0, 2**21 - 1)``; NaN and values outside the int64 range give 0, as
    numpy's cast (INT64_MIN on x86) followed by the clip does."""
    if not (x >= -9.223372036854775808e18 and x < 9.223372036854775808e18):
        return np.uint64(0)
    q = np.int64(x)  # truncation toward zero, as astype(np.int64)
    if q < 0:
        q = 0
    elif q > 2097151:
        q = 2097151
    return np.uint64(q)


@njit(cache=True)
def _morton_frame(points):
    """Lower corner and span (>= 1e-12) of the points' bounds, per axis."""
    n = points.shape[0]
    lo = np.empty(3)
    span = np.empty(3)
    for d in range(3):
        a = np.inf
        b = -np.inf
        for i in range(n):
            x = points[i, d]
            a = min(a, x)
            b = max(b, x)
        lo[d] = a
        span[d] = max(b - a, 1e-12)
    return lo, span


@njit(cache=True, inline="always")
def _morton1(points, i, lo, span):
    q0 = _quantise((points[i, 0] - lo[0]) / span[0] * 2097151.0)
    q1 = _quantise((points[i, 1] - lo[1]) / span[1] * 2097151.0)
    q2 = _quantise((points[i, 2] - lo[2]) / span[2] * 2097151.0)
    return (_spread_bits(q0) << np.uint64(2)) | (_spread_bits(q1) << np.uint64(1)) | _spread_bits(q2)


@njit(cache=True, parallel=True)
def _morton_codes(points, out):
    lo, span = _morton_frame(points)
    for i in prange(points.shape[0]):
        out[i] = _morton1(points, i, lo, span)


@njit(cache=True)
def _morton_codes_serial(points, out):
    lo, span = _morton_frame(points)
    for i in range(points.shape[0]):
        out[i] = _morton1(points, i, lo, span)


def morton_codes(points: np.ndarray) -> np.ndarray:
    """63-bit Morton codes (uint64) of points (n, 3), 21 bits per axis over their bounds:
    ``clip(int64((p - lo) / span * (2**21 - 1)), 0, 2**21 - 1)`` per axis, bits interleaved
    (axis 0 highest)."""
    out = np.empty(len(points), np.uint64)
    (_morton_codes_serial if len(points) < SERIAL_BELOW_TRIANGLES else _morton_codes)(points, out)
    return out


@njit(cache=True)
def _radix_argsort(ka, ia, kb, ib):
    """LSD radix sort of (key, index) pairs, 8-bit digits; ``ka`` holds the keys and ``ia``
    the indices on entry, both are scratch.  Returns the array holding the sorted indices."""
    n = ka.shape[0]
    npass = 8
    hist = np.zeros((npass, 256), np.int64)
    for i in range(n):
        k = ka[i]
        for p in range(npass):
            hist[p, np.int64((k >> np.uint64(8 * p)) & np.uint64(255))] += 1
    pos = np.empty(256, np.int64)
    for p in range(npass):
        trivial = False
        for b in range(256):
            if hist[p, b] != 0:
                trivial = hist[p, b] == n
                break
        if trivial or n == 0:
            continue  # every key has this digit: the pass would not move anything
        acc = 0
        for b in range(256):
            pos[b] = acc
            acc += hist[p, b]
        shift = np.uint64(8 * p)
        for i in range(n):
            k = ka[i]
            b = np.int64((k >> shift) & np.uint64(255))
            q = pos[b]
            kb[q] = k
            ib[q] = ia[i]
            pos[b] = q + 1
        ka, kb = kb, ka
        ia, ib = ib, ia
    return ia


def stable_argsort_u64(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for uint64 keys (int64 indices; equal keys keep
    their input order: the radix sort is stable)."""
    n = len(keys)
    return _radix_argsort(np.array(keys, np.uint64), np.arange(n, dtype=np.int64), np.empty(n, np.uint64), np.empty(n, np.int64))


def morton_order(centroids: np.ndarray) -> np.ndarray:
    """``np.argsort(morton_codes(centroids), kind="stable")`` (int64)."""
    n = len(centroids)
    keys = morton_codes(centroids)
    return _radix_argsort(keys, np.arange(n, dtype=np.int64), np.empty(n, np.uint64), np.empty(n, np.int64))


@njit(cache=True, inline="always")
def _corner_r2(S, p, c0, c1, c2):
    """Largest squared distance of the corners of sorted triangle ``p`` to ``(c0, c1, c2)``."""
    ra = _sq(S[p, 0] - c0, S[p, 1] - c1, S[p, 2] - c2)
    rb = _sq(S[p, 3] - c0, S[p, 4] - c1, S[p, 5] - c2)
    rc = _sq(S[p, 6] - c0, S[p, 7] - c1, S[p, 8] - c2)
    return max(max(ra, rb), rc)


@njit(cache=True, inline="always")
def _tri_box(S, p, d):
    """Box of sorted triangle ``p`` along axis ``d`` (as ``minimum(minimum(A, B), C)``)."""
    a = S[p, d]
    b = S[p, 3 + d]
    c = S[p, 6 + d]
    return min(min(a, b), c), max(max(a, b), c)


@njit(cache=True, inline="always")
def _gather(S, p, t, v, f):
    """Corners of triangle ``t`` into row ``p`` of ``S`` (A, B, C; 3 coordinates each)."""
    for j in range(3):
        w = f[t, j]
        S[p, 3 * j] = v[w, 0]
        S[p, 3 * j + 1] = v[w, 1]
        S[p, 3 * j + 2] = v[w, 2]


@njit(cache=True)
def _level_direct(k, nf, S, bmin, bmax, centre, radius):
    """All node values of level ``k`` from its triangles (``reduceat`` conventions)."""
    nn = 1 << k
    off = nn - 1
    for i in range(nn):
        s = (i * nf) // nn
        e = ((i + 1) * nf) // nn
        g = off + i
        for d in range(3):
            lo, hi = _tri_box(S, s, d)
            for p in range(s + 1, e):
                a, b = _tri_box(S, p, d)
                lo = min(lo, a)
                hi = max(hi, b)
            bmin[g, d] = lo
            bmax[g, d] = hi
            centre[g, d] = 0.5 * (lo + hi)
        c0, c1, c2 = centre[g, 0], centre[g, 1], centre[g, 2]
        r2 = -1.0
        for p in range(s, e):
            r2 = max(r2, _corner_r2(S, p, c0, c1, c2))
        radius[g] = math.sqrt(r2) if e > s else -1.0
    # empty nodes: the triangle at the start position, measured from the centre of the
    # (next non-empty) node that owns it
    owner = -1
    for i in range(nn - 1, -1, -1):
        s = (i * nf) // nn
        e = ((i + 1) * nf) // nn
        g = off + i
        if e > s:
            owner = g
        else:
            radius[g] = math.sqrt(_corner_r2(S, s, centre[owner, 0], centre[owner, 1], centre[owner, 2]))


@njit(cache=True, inline="always")
def _box_far_r2(bmin, bmax, h, c0, c1, c2):
    """Squared distance from ``c`` to the farthest corner of node ``h``'s box (a bound on
    every :func:`_corner_r2` inside it, with the same rounded operations)."""
    a = bmin[h, 0] - c0
    b = bmax[h, 0] - c0
    x = max(a * a, b * b)
    a = bmin[h, 1] - c1
    b = bmax[h, 1] - c1
    y = max(a * a, b * b)
    a = bmin[h, 2] - c2
    b = bmax[h, 2] - c2
    z = max(a * a, b * b)
    return (x + z) + y


@njit(cache=True)
def _build_tree_direct(depth, order, v, f, S, bmin, bmax, centre, radius):
    """Every level from its triangles (``reduceat`` conventions; used when some leaves are
    empty, which only ``leaf_size == 1`` allows: those conventions do not nest)."""
    nf = f.shape[0]
    for p in range(nf):
        _gather(S, p, order[p], v, f)
    for k in range(depth + 1):
        _level_direct(k, nf, S, bmin, bmax, centre, radius)


@njit(cache=True, inline="always")
def _leaf_chunk(c, nchunk, nleaf, first, order, v, f, S, bmin, bmax, centre, radius, starts, counts):
    """Leaves ``[c nleaf / nchunk, (c + 1) nleaf / nchunk)`` of :func:`_build_tree`: corners, box, centre, radius."""
    for i in range((c * nleaf) // nchunk, ((c + 1) * nleaf) // nchunk):
        s = starts[i]
        e = s + counts[i]
        g = first + i
        for p in range(s, e):
            _gather(S, p, order[p], v, f)
        for d in range(3):
            lo, hi = _tri_box(S, s, d)
            for p in range(s + 1, e):
                a, b = _tri_box(S, p, d)
                lo = min(lo, a)
                hi = max(hi, b)
            bmin[g, d] = lo
            bmax[g, d] = hi
            centre[g, d] = 0.5 * (lo + hi)
        c0, c1, c2 = centre[g, 0], centre[g, 1], centre[g, 2]
        r2 = -1.0
        for p in range(s, e):
            r2 = max(r2, _corner_r2(S, p, c0, c1, c2))
        radius[g] = math.sqrt(r2)


@njit(cache=True, inline="always")
def _boxes_up(first, bmin, bmax, centre):
    """Boxes bottom up (children partition their parent), then centres."""
    for g in range(first - 1, -1, -1):
        h1 = 2 * g + 1
        h2 = h1 + 1
        for d in range(3):
            bmin[g, d] = min(bmin[h1, d], bmin[h2, d])
            bmax[g, d] = max(bmax[h1, d], bmax[h2, d])
            centre[g, d] = 0.5 * (bmin[g, d] + bmax[g, d])


@njit(cache=True, inline="always")
def _radius_chunk(c, nchunk, first, depth, S, bmin, bmax, centre, radius, starts, counts):
    """Radii of the nodes ``c, c + nchunk, ...`` of :func:`_build_tree`: farthest corner by branch and bound."""
    stack = np.empty(2 * (depth + 2), np.int64)
    for g in range(c, first, nchunk):
        c0, cy, cz = centre[g, 0], centre[g, 1], centre[g, 2]
        best = -1.0
        top = 1
        stack[0] = g
        while top > 0:
            top -= 1
            h = stack[top]
            if _box_far_r2(bmin, bmax, h, c0, cy, cz) <= best:
                continue
            if h >= first:
                i = h - first
                for p in range(starts[i], starts[i] + counts[i]):
                    best = max(best, _corner_r2(S, p, c0, cy, cz))
            else:
                h1 = 2 * h + 1
                h2 = h1 + 1
                u1 = _box_far_r2(bmin, bmax, h1, c0, cy, cz)
                u2 = _box_far_r2(bmin, bmax, h2, c0, cy, cz)
                if u1 >= u2:  # farther-bounded child on top: popped first
                    stack[top] = h2
                    stack[top + 1] = h1
                else:
                    stack[top] = h1
                    stack[top + 1] = h2
                top += 2
        radius[g] = math.sqrt(best)


@njit(cache=True, parallel=True)
def _build_tree(depth, order, v, f, S, bmin, bmax, centre, radius, starts, counts):
    """No empty leaf.  ``S`` (F, 9) receives the corners in sorted order (so every scan of
    a node's triangles is sequential).  Nodes are independent given the boxes: leaves and
    radii are computed in parallel chunks, the results do not depend on the threads."""
    nleaf = 1 << depth
    first = nleaf - 1
    nchunk = min(nleaf, 64)
    # leaves: corners, box, centre, radius (contiguous runs of leaves per chunk)
    for c in prange(nchunk):
        _leaf_chunk(c, nchunk, nleaf, first, order, v, f, S, bmin, bmax, centre, radius, starts, counts)
    _boxes_up(first, bmin, bmax, centre)
    # radii: nodes dealt out to the chunks in turn (the costly top nodes are spread)
    nchunk = max(min(first, 64), 1)
    for c in prange(nchunk):
        _radius_chunk(c, nchunk, first, depth, S, bmin, bmax, centre, radius, starts, counts)


@njit(cache=True)
def _build_tree_serial(depth, order, v, f, S, bmin, bmax, centre, radius, starts, counts):
    """:func:`_build_tree` on the calling thread (small meshes: no thread start-up; the same arrays)."""
    nleaf = 1 << depth
    first = nleaf - 1
    nchunk = min(nleaf, 64)
    # leaves: corners, box, centre, radius (contiguous runs of leaves per chunk)
    for c in range(nchunk):
        _leaf_chunk(c, nchunk, nleaf, first, order, v, f, S, bmin, bmax, centre, radius, starts, counts)
    _boxes_up(first, bmin, bmax, centre)
    # radii: nodes dealt out to the chunks in turn (the costly top nodes are spread)
    nchunk = max(min(first, 64), 1)
    for c in range(nchunk):
        _radius_chunk(c, nchunk, first, depth, S, bmin, bmax, centre, radius, starts, counts)



def build_tree(depth: int, order: np.ndarray, v: np.ndarray, f: np.ndarray):
    """Node arrays of the hierarchy, flattened over the levels in heap order.

    Parameters
    ----------
    depth : int
        Leaf level (``2**depth`` leaves).
    order : (F,) int64
        Triangles in Morton order (:func:`morton_order`).
    v, f : (V, 3) float64, (F, 3) int64, C-contiguous
        The mesh.

    Returns
    -------
    bmin, bmax, centre : (2**(depth+1) - 1, 3) float64
    radius : (2**(depth+1) - 1,) float64
    starts, counts : (2**depth,) int64
        Sorted-position runs of the leaves.
    """
    nf = len(f)
    nnode = (1 << (depth + 1)) - 1
    nleaf = 1 << depth
    bmin, bmax, centre, radius = np.empty((nnode, 3)), np.empty((nnode, 3)), np.empty((nnode, 3)), np.empty(nnode)
    starts = (np.arange(nleaf, dtype=np.int64) * nf) // nleaf
    counts = np.diff(np.append(starts, nf))
    if nf < nleaf:  # some leaves are empty
        _build_tree_direct(int(depth), order, v, f, np.empty((nf, 9)), bmin, bmax, centre, radius)
    else:
        build = _build_tree_serial if nf < SERIAL_BELOW_TRIANGLES else _build_tree
        build(int(depth), order, v, f, np.empty((nf, 9)), bmin, bmax, centre, radius, starts, counts)
    return bmin, bmax, centre, radius, starts, counts
