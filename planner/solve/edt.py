"""Compiled distance-field kernels of the solver's scene (numba): exact Euclidean distance
transforms on anisotropic 3-D grids, pooled label reductions, signed distances.

* :func:`edt_sq`: squared Euclidean distance (mm^2) from every voxel to the nearest feature
  voxel, with spacing per axis, and optionally the feature transform (flat C-order index of
  that nearest feature voxel).  Separable and exact: a two-scan nearest feature along the
  first axis, then lower envelopes of parabolas along the second and the third
  (Felzenszwalb-Huttenlocher, with the site test of Maurer et al. that scipy uses).  Same
  distances as ``scipy.ndimage.distance_transform_edt(~features, sampling=spacing)`` (to
  rounding) and, in practice, the same features: where several feature voxels are equally
  near, each pass keeps the smaller index along its axis, in scipy's axis order and with
  scipy's arithmetic where it decides (``tests/test_solve_edt.py`` finds them identical on
  random anisotropic masks and on a phantom scene).  Deterministic; the distance to the
  returned feature is the transform's.  Without any feature voxel the distance is ``+inf``
  and the feature ``-1`` (scipy returns meaningless values there; the callers never ask).
* :func:`edt`: the distance (mm, float64) and feature index of :func:`edt_sq`.
* :func:`pool_groups`: in one pass over full-resolution labels, per coarse cell of a block
  stride and per group of a lookup table ``id -> group``: whether a member is present and
  the largest member id; also whether any label is positive and which ids occur.
* :func:`merge_group`: ``min`` of an obstacle-group distance (half-voxel placed, capped,
  minus the group margin) into a running field and the id of the structure attaining it.
* :func:`signed_distance`: the signed distance of :func:`planner.segment.fields._sdf_array`
  (outside minus inside distance, zero level moved to the voxel boundary along the local
  normal) from two transforms, clipped to ``+/- cap``.

Loops over independent lines run in parallel (``prange``) for arrays of at least
:data:`PARALLEL_MIN_VOXELS` voxels, on the calling thread for smaller ones; each line's
result depends on that line only, so results do not depend on the thread count.  Compilation is cached on
disk (``cache=True``).  ``tests/test_solve_edt.py`` checks everything against scipy/numpy.
"""

from __future__ import annotations

import contextlib
import math

import numba
import numpy as np
from numba import njit, prange

_INF = np.inf

#: Arrays smaller than this (voxels) run the parallel kernels on the calling thread only.
#: A parallel loop ends at a barrier: on a loaded machine a worker thread that has lost its
#: core costs a scheduler time slice per loop, which small arrays cannot repay.
PARALLEL_MIN_VOXELS = 750_000


@contextlib.contextmanager
def _threads(nvox: int):
    """Run the enclosed kernels single-threaded when ``nvox`` is small (results do not
    depend on the thread count; only the time does)."""
    if nvox >= PARALLEL_MIN_VOXELS:
        yield
        return
    prev = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(prev)
#: Intersections this near an integer position (index units) are decided by the values.
_TIE = 1e-6


@njit(cache=True, nogil=True)
def _envelope(f, n, h, v, z, out, arg):
    """1-D lower envelope: ``out[p] = min_q f[q] + (h (p - q))^2`` and its argmin ``arg[p]``
    (``inf`` / -1 where every ``f`` is infinite; an exact tie keeps the smaller ``q``).
    ``v`` (int), ``z`` (n + 1) are scratch.

    The envelope is built as in Felzenszwalb-Huttenlocher, dropping a site by scipy's test
    (Maurer et al.), and queried by the intersections of consecutive sites; where one is within :data:`_TIE` of a query position the query compares the
    values ``f[q] + (h (p - q))^2`` themselves (summed in axis order like scipy's), so exact
    ties break as in ``scipy.ndimage`` whatever the rounding of the intersections."""
    w = h * h
    k = -1
    for q in range(n):
        fq = f[q]
        if fq == _INF:
            continue
        if k < 0:
            k = 0
            v[0] = q
            z[0] = -_INF
            z[1] = _INF
            continue
        # drop the last site while the new one hides it: scipy's (Maurer's) test and
        # arithmetic, so the envelope is scipy's also where rounding decides
        while k >= 1:
            u = v[k - 1]
            r = v[k]
            a = h * (r - u)
            b = h * (q - r)
            c = a + b
            if c * f[r] - b * f[u] - a * fq - a * b * c <= 0.0:
                break
            k -= 1
        r = v[k]
        s = (fq - f[r]) / (2.0 * w * (q - r)) + 0.5 * (q + r)  # where q takes over from r
        k += 1
        v[k] = q
        z[k] = s
        z[k + 1] = _INF
    if k < 0:
        for p in range(n):
            out[p] = _INF
            arg[p] = -1
        return
    j = 0
    for p in range(n):
        # advance by the intersections; near one (an exact tie, or its rounding) decide by
        # the values: a tie keeps the earlier (smaller) site
        while j < k:
            zz = z[j + 1]
            if zz > p + _TIE:
                break
            if zz >= p - _TIE:
                r, r2 = v[j], v[j + 1]
                t, t2 = h * (p - r), h * (p - r2)
                if f[r] + t * t <= f[r2] + t2 * t2:
                    break
            j += 1
        r = v[j]
        t = h * (p - r)
        out[p] = f[r] + t * t
        arg[p] = r


@njit(cache=True, nogil=True, parallel=True)
def _edt_sq(feat_mask, invert, s0, s1, s2, want_feat):
    nx, ny, nz = feat_mask.shape
    sq = np.empty((nx, ny, nz), np.float64)
    if want_feat:
        ft = np.empty((nx, ny, nz), np.int32)
    else:
        ft = np.empty((1, 1, 1), np.int32)
    # pass 1, first axis: nearest feature along each line (two scans; a tie keeps the
    # smaller index), one (i, k) plane per j
    for j in prange(ny):
        near = np.empty((nx, nz), np.int64)
        last = np.full(nz, -1, np.int64)
        for i in range(nx):
            for k in range(nz):
                if (feat_mask[i, j, k] != 0) != invert:
                    last[k] = i
                near[i, k] = last[k]
        for k in range(nz):
            last[k] = -1
        for i in range(nx - 1, -1, -1):
            for k in range(nz):
                if (feat_mask[i, j, k] != 0) != invert:
                    last[k] = i
                q = near[i, k]
                nxt = last[k]
                if nxt >= 0 and (q < 0 or nxt - i < i - q):
                    q = nxt
                if q < 0:
                    sq[i, j, k] = _INF
                    if want_feat:
                        ft[i, j, k] = -1
                else:
                    t = s0 * (i - q)
                    sq[i, j, k] = t * t
                    if want_feat:
                        ft[i, j, k] = (q * ny + j) * nz + k
    # pass 2, middle axis (gathered lines)
    if ny > 1:
        for i in prange(nx):
            f = np.empty(ny, np.float64)
            out = np.empty(ny, np.float64)
            arg = np.empty(ny, np.int64)
            v = np.empty(ny, np.int64)
            z = np.empty(ny + 1, np.float64)
            fb = np.empty(ny, np.int32)
            for k in range(nz):
                anyf = False
                for j in range(ny):
                    f[j] = sq[i, j, k]
                    if f[j] != _INF:
                        anyf = True
                if not anyf:
                    continue
                _envelope(f, ny, s1, v, z, out, arg)
                if want_feat:
                    for j in range(ny):
                        fb[j] = ft[i, j, k]
                    for j in range(ny):
                        sq[i, j, k] = out[j]
                        ft[i, j, k] = fb[arg[j]]
                else:
                    for j in range(ny):
                        sq[i, j, k] = out[j]
    # pass 3, last axis (contiguous lines)
    if nz > 1:
        for i in prange(nx):
            f = np.empty(nz, np.float64)
            out = np.empty(nz, np.float64)
            arg = np.empty(nz, np.int64)
            v = np.empty(nz, np.int64)
            z = np.empty(nz + 1, np.float64)
            fb = np.empty(nz, np.int32)
            for j in range(ny):
                anyf = False
                for k in range(nz):
                    f[k] = sq[i, j, k]
                    if f[k] != _INF:
                        anyf = True
                if not anyf:
                    continue
                _envelope(f, nz, s2, v, z, out, arg)
                if want_feat:
                    for k in range(nz):
                        fb[k] = ft[i, j, k]
                    for k in range(nz):
                        sq[i, j, k] = out[k]
                        ft[i, j, k] = fb[arg[k]]
                else:
                    for k in range(nz):
                        sq[i, j, k] = out[k]
    return sq, ft


def _as3d(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"expected a 3-D mask, got shape {m.shape}")
    if m.dtype == np.bool_:
        m = m.view(np.uint8) if m.flags.c_contiguous else np.ascontiguousarray(m).view(np.uint8)
    return m


def edt_sq(features: np.ndarray, spacing, *, invert: bool = False, return_features: bool = False):
    """Squared distance (mm^2, float64) from every voxel to the nearest feature voxel.

    Parameters
    ----------
    features : (nx, ny, nz) array
        Feature voxels are the non-zero ones (the zero ones with ``invert``), i.e. this is
        ``distance_transform_edt(~features, sampling=spacing) ** 2``.
    spacing : 3 floats (mm per index step along each axis).
    return_features : also return the flat C-order index (int32) of the nearest feature
        voxel (-1 without any feature).

    Returns ``sq`` or ``(sq, index)``; ``+inf`` everywhere when there is no feature voxel.
    """
    m = _as3d(features)
    sp = np.asarray(spacing, float).reshape(3)
    if return_features and m.size >= 2**31:
        raise ValueError("feature indices are int32: at most 2**31 - 1 voxels")
    with _threads(m.size):
        sq, ft = _edt_sq(m, bool(invert), float(sp[0]), float(sp[1]), float(sp[2]), bool(return_features))
    return (sq, ft) if return_features else sq


def edt(features: np.ndarray, spacing, *, invert: bool = False, return_features: bool = False):
    """Distance (mm, float64) of :func:`edt_sq` (and the feature index when asked)."""
    out = edt_sq(features, spacing, invert=invert, return_features=return_features)
    if return_features:
        return np.sqrt(out[0]), out[1]
    return np.sqrt(out)


# ---------------------------------------------------------------------------- pooling
@njit(cache=True, nogil=True, parallel=True)
def _pool_groups(lab, stride, cshape, lut, ngroups):
    sx, sy, sz = stride[0], stride[1], stride[2]
    cx, cy, cz = cshape[0], cshape[1], cshape[2]
    nl = lut.shape[0]
    anyg = np.zeros((ngroups, cx, cy, cz), np.uint8)
    maxg = np.zeros((ngroups, cx, cy, cz), np.int32)
    nonzero = np.zeros((cx, cy, cz), np.uint8)
    seen_rows = np.zeros((cx, nl + 1), np.uint8)
    for ci in prange(cx):
        for di in range(sx):
            i = ci * sx + di
            for cj in range(cy):
                for dj in range(sy):
                    j = cj * sy + dj
                    for ck in range(cz):
                        nzf = nonzero[ci, cj, ck]
                        for dk in range(sz):
                            lv = np.int64(lab[i, j, ck * sz + dk])
                            if lv > 0:
                                nzf = 1
                            if 0 <= lv < nl:
                                seen_rows[ci, lv] = 1
                                g = lut[lv]
                                if g >= 0:
                                    anyg[g, ci, cj, ck] = 1
                                    if lv > maxg[g, ci, cj, ck]:
                                        maxg[g, ci, cj, ck] = lv
                            else:
                                seen_rows[ci, nl] = 1
                        nonzero[ci, cj, ck] = nzf
    return anyg, maxg, nonzero, seen_rows


def pool_groups(labels: np.ndarray, stride, lut: np.ndarray, ngroups: int | None = None):
    """Pooled reductions of a label array over blocks of ``stride`` voxels, in one pass.

    Parameters
    ----------
    labels : (nx, ny, nz) integer array (any strides); each axis a whole number of strides
        (a remainder is ignored).
    stride : 3 ints.
    lut : (L,) integer array, ``lut[id]`` = group of label ``id`` (``-1``: none); ids
        ``>= L`` or negative belong to no group.
    ngroups : number of groups G (default ``lut.max() + 1``).

    Returns
    -------
    any : (G, cx, cy, cz) bool, ``any(label in group g)`` per coarse cell,
    max : (G, cx, cy, cz) int32, ``max(label where label in group g)`` (0 where none),
    nonzero : (cx, cy, cz) bool, ``any(label > 0)``,
    seen : (L,) bool, which ids ``0 <= id < L`` occur.

    With stride (1, 1, 1) these are the masks and masked labels themselves.
    """
    lab = np.asarray(labels)
    st = np.asarray(stride, np.int64).reshape(3)
    cshape = np.array([n // s for n, s in zip(lab.shape, st)], np.int64)
    lut = np.ascontiguousarray(lut, np.int32)
    if ngroups is None:
        ngroups = int(lut.max()) + 1 if lut.size else 0
    if lut.size and int(lut.max()) >= ngroups:
        raise ValueError("lookup table names a group >= ngroups")
    with _threads(lab.size):
        anyg, maxg, nonzero, seen_rows = _pool_groups(lab, st, cshape, lut, max(int(ngroups), 0))
    seen = seen_rows[:, : lut.size].any(axis=0)
    return anyg.view(np.bool_), maxg, nonzero.view(np.bool_), seen


# ---------------------------------------------------------------------------- fields
@njit(cache=True, nogil=True, parallel=True)
def _merge_group(sq, ft, mask, labmax, half, margin, cap, F, ID):
    nx, ny, nz = sq.shape
    m32 = np.float32(margin)
    for i in prange(nx):
        for j in range(ny):
            for k in range(nz):
                if mask[i, j, k]:
                    d = -half
                else:
                    d = math.sqrt(sq[i, j, k]) - half
                    if d < 0.0:
                        d = 0.0
                if d > cap:
                    d = cap
                d32 = np.float32(d) - m32
                if d32 < F[i, j, k]:
                    F[i, j, k] = d32
                    f = ft[i, j, k]
                    ID[i, j, k] = labmax.flat[f]


def outside_distance(mask: np.ndarray, spacing, cap: float, *, return_features: bool = False):
    """Distance (mm, float32) from each voxel to the surface of ``mask``: the centre-to-centre
    distance to the nearest mask voxel less half the smallest spacing, at least 0, and
    ``-half`` inside; capped at ``cap``.  The mask must not be empty."""
    m = _as3d(mask)
    sp = np.asarray(spacing, float).reshape(3)
    half = 0.5 * float(sp.min())
    sq, ft = edt_sq(m, sp, return_features=True)
    F = np.full(m.shape, np.inf, np.float32)
    ID = np.zeros(m.shape, np.int32)
    idx = np.arange(m.size, dtype=np.int32).reshape(m.shape)
    with _threads(m.size):
        _merge_group(sq, ft, m, idx, half, 0.0, float(cap), F, ID)
    return (F, ID) if return_features else F


def merge_group(mask, labmax, spacing, margin: float, cap: float, F, ID) -> None:
    """``F = min(F, d - margin)`` in place, ``ID`` = ``labmax`` at the nearest mask voxel
    where it got smaller (strictly), for ``d`` the capped surface distance of
    :func:`outside_distance` (float32 arithmetic as ``d.astype(float32) - float32(margin)``).
    """
    m = _as3d(mask)
    sp = np.asarray(spacing, float).reshape(3)
    sq, ft = edt_sq(m, sp, return_features=True)
    with _threads(m.size):
        _merge_group(sq, ft, m, np.ascontiguousarray(labmax, np.int32), 0.5 * float(sp.min()), float(margin),
                     float(cap), F, ID)


@njit(cache=True, nogil=True, parallel=True)
def _sdf_finish(sq_out, sq_in, lo, mask, s0, s1, s2, halfmin, cap):
    nx, ny, nz = mask.shape
    bx, by, bz = sq_in.shape
    lx, ly, lz = lo[0], lo[1], lo[2]
    raw = np.empty((nx, ny, nz), np.float32)
    for i in prange(nx):
        for j in range(ny):
            for k in range(nz):
                r = np.float32(math.sqrt(sq_out[i, j, k]))
                a, b, c = i - lx, j - ly, k - lz
                if 0 <= a < bx and 0 <= b < by and 0 <= c < bz:
                    r = r - np.float32(math.sqrt(sq_in[a, b, c]))
                raw[i, j, k] = r
    out = np.empty((nx, ny, nz), np.float32)
    # np.gradient (edge_order 1) in float32, as planner.segment.fields._sdf_array
    c2x, c2y, c2z = np.float32(2.0 * s0), np.float32(2.0 * s1), np.float32(2.0 * s2)
    c1x, c1y, c1z = np.float32(s0), np.float32(s1), np.float32(s2)
    wx, wy, wz = np.float32(s0 * s0), np.float32(s1 * s1), np.float32(s2 * s2)
    eps = np.float32(1e-12)
    hm = np.float32(halfmin)
    c32 = np.float32(cap)
    for i in prange(nx):
        for j in range(ny):
            for k in range(nz):
                num = np.float32(0.0)
                den = np.float32(0.0)
                if nx > 1:
                    if i == 0:
                        g = np.float32(raw[1, j, k] - raw[0, j, k]) / c1x
                    elif i == nx - 1:
                        g = np.float32(raw[i, j, k] - raw[i - 1, j, k]) / c1x
                    else:
                        g = np.float32(raw[i + 1, j, k] - raw[i - 1, j, k]) / c2x
                    g = np.float32(g * g)
                    den = np.float32(den + g)
                    num = np.float32(num + np.float32(g * wx))
                if ny > 1:
                    if j == 0:
                        g = np.float32(raw[i, 1, k] - raw[i, 0, k]) / c1y
                    elif j == ny - 1:
                        g = np.float32(raw[i, j, k] - raw[i, j - 1, k]) / c1y
                    else:
                        g = np.float32(raw[i, j + 1, k] - raw[i, j - 1, k]) / c2y
                    g = np.float32(g * g)
                    den = np.float32(den + g)
                    num = np.float32(num + np.float32(g * wy))
                if nz > 1:
                    if k == 0:
                        g = np.float32(raw[i, j, 1] - raw[i, j, 0]) / c1z
                    elif k == nz - 1:
                        g = np.float32(raw[i, j, k] - raw[i, j, k - 1]) / c1z
                    else:
                        g = np.float32(raw[i, j, k + 1] - raw[i, j, k - 1]) / c2z
                    g = np.float32(g * g)
                    den = np.float32(den + g)
                    num = np.float32(num + np.float32(g * wz))
                if den <= eps:
                    h = hm
                else:
                    h = np.float32(np.float32(0.5) * np.float32(math.sqrt(np.float32(num / den))))
                r = raw[i, j, k]
                r = np.float32(r + h) if mask[i, j, k] else np.float32(r - h)
                if r > c32:
                    r = c32
                elif r < -c32:
                    r = -c32
                out[i, j, k] = r
    return out


def signed_distance(mask: np.ndarray, spacing, cap: float = np.inf) -> np.ndarray:
    """Signed distance (mm, float32, negative inside) of a boolean mask, the convention of
    :func:`planner.segment.fields._sdf_array`, clipped to ``[-cap, cap]``: ``+cap`` (``+inf``
    uncapped) for an empty mask, ``-cap`` for a full one."""
    m = _as3d(mask)
    sp = np.asarray(spacing, float).reshape(3)
    if not m.any():
        return np.full(m.shape, cap, np.float32)
    if m.all():
        return np.full(m.shape, -cap, np.float32)
    sq_out = edt_sq(m, sp)
    # inside distances: only mask voxels have one (the others are 0), and the nearest
    # outside voxel of a mask voxel lies in the mask's bounding box grown by one voxel
    # (clamping any outside voxel onto that box brings it nearer), so transform that box only
    lo = np.empty(3, np.int64)
    sl = []
    for ax in range(3):
        nzr = np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != ax)))
        lo[ax] = max(int(nzr[0]) - 1, 0)
        sl.append(slice(int(lo[ax]), min(int(nzr[-1]) + 2, m.shape[ax])))
    sq_in = edt_sq(np.ascontiguousarray(m[tuple(sl)]), sp, invert=True)
    with _threads(m.size):
        return _sdf_finish(sq_out, sq_in, lo, m, float(sp[0]), float(sp[1]), float(sp[2]), 0.5 * float(sp.min()),
                           float(cap))
