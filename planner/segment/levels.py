"""Per-vertebra frames, part split, level naming, heights/fractures and resections.

Helpers of :func:`planner.segment.bone.segment_bone`; they work on the canonical work grid
(axes to patient left, posterior, superior; voxel size ``sp`` mm) where vertebra ``n``
(1-based, cranial to caudal) has id ``n`` in ``vert``.

Anchor API (:func:`parse_anchor`)
---------------------------------
* ``"L5"`` -- the lowest vertebral body that is not a detected sacrum is L5 (``"S1"``: the
  lowest body is S1).
* ``"L4@z=-80"`` (or ``"L4@-80"``) -- the body whose centre is nearest LPS z = -80 mm is L4.
* ``("L3", 1)`` -- the body with index 1 counted cranial to caudal (0-based; negative
  indices count from the bottom as in Python) is L3.
* ``("L3", (x, y, z))`` -- the body nearest that LPS point is L3.
* ``{"level": "L5", "which": "lowest" | "highest" | int, "point": (x, y, z)}`` -- the same
  as a dict.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from planner.errors import PlannerError
from planner.labels.registry import LEVELS
from planner.segment.morph import centroids, label_max

log = logging.getLogger(__name__)

#: Part codes inside one vertebra (``parts = 16 * n + code``).
PART_CODES: dict[str, int] = {
    "body": 1,
    "pedicle_left": 2,
    "pedicle_right": 3,
    "posterior": 4,
    "rib_left": 5,
    "rib_right": 6,
}

#: Half width (mm) of the slab around the body centre whose posterior bone gives the
#: vertebra's posterior axis (inside the pedicles' lateral edges, which lie at ~15-25 mm). [U]
POSTERIOR_AXIS_HALF_WIDTH_MM: float = 12.0

#: The body centre is the centroid of the seed voxels at least this fraction of the seed's
#: maximum depth inside the bone (a lens in the middle of the body; ribs and processes are
#: thinner). [U]
CORE_FRACTION: float = 0.6

#: Half width (mm) of the mid-sagittal strip used for the canal wall and the heights. [U]
MIDLINE_HALF_WIDTH_MM: float = 4.0

#: The body ends this far (mm) in front of the first sparse bin behind the posterior wall.
#: 0: the bin edge lies behind the wall's last bone voxel, and the partial-volume layer is
#: removed at the end (:func:`planner.segment.bone.surface_outside`); 1 mm lost the wall's
#: last voxel layer. [U]
BODY_WALL_INSET_MM: float = 0.0

#: Heights are measured this far (mm) inside the anterior / posterior body wall. [U]
HEIGHT_INSET_MM: float = 3.0

#: Lateral bone (beyond the body's half width + 3 mm, in front of the canal's mid depth)
#: larger than this (mm^3) on a side marks a rib (or a sacral ala on the lowest body). [U]
RIB_MIN_MM3: float = 250.0

#: Genant grades by height-loss fraction (Genant 1993: 20-25 %, 25-40 %, > 40 %).
GENANT_LIMITS: tuple[float, float, float] = (0.20, 0.25, 0.40)

#: Levels with a height loss above this are not used as references for their neighbours. [U]
REFERENCE_MAX_LOSS: float = 0.15


class SegmentationError(PlannerError):
    """The image cannot be segmented as asked (no vertebra, level not in image)."""

    code = "PLN-SEG-001"


def jsonable(d: dict) -> dict:
    """Round floats/arrays of a per-level record for ``info``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = jsonable(v)
        elif isinstance(v, np.ndarray):
            out[k] = [round(float(x), 3) for x in v.ravel()]
        elif isinstance(v, (float, np.floating)):
            out[k] = round(float(v), 3)
        elif isinstance(v, (int, np.integer, bool, np.bool_)):
            out[k] = v if isinstance(v, bool) else int(v)
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------- frames
def vertebra_frames(
    vert: np.ndarray, body: np.ndarray, n: int, sp: np.ndarray, edt: np.ndarray | None = None
) -> list[dict]:
    """Centre and axes per vertebra.

    Parameters
    ----------
    vert : (ni, nj, nk) int ndarray
        Vertebra ids 1..n.
    body : (ni, nj, nk) int ndarray
        Body seed ids 1..n (thick part found by the watershed).
    n : int
    sp : (3,) float
        Voxel size (mm) of the canonical work grid.
    edt : (ni, nj, nk) float ndarray, optional
        Distance to the nearest non-bone voxel (mm).  When given, the centre is the centroid
        of the seed's core (distance >= :data:`CORE_FRACTION` of the seed's maximum): a
        seed that swallowed rib or transverse-process bone (end vertebrae of the field of
        view) keeps its centre in the body.

    Returns
    -------
    list of dict
        ``{"centre_vox": (3,), "centre_mm": (3,), "R": (3, 3)}``; ``R`` columns u (left),
        v (posterior), w (superior) in canonical axes (= LPS for an axis-aligned CT).
    """
    idx = np.arange(1, n + 1)
    seed = np.where(vert == body, body, 0)
    cb = centroids(seed, idx)
    if edt is not None:
        emax = np.zeros(n + 1)
        emax[1:] = label_max(edt, seed, n)
        core = np.where(edt >= CORE_FRACTION * emax[seed], seed, 0)
        cc = centroids(core, idx)
        ok = np.all(np.isfinite(cc), axis=1)
        cb[ok] = cc[ok]
    # posterior direction: centroid of the non-body bone near the midline (ribs and
    # transverse processes are left out: they are lateral and often asymmetric)
    cx = np.zeros(n + 1)
    cx[1:] = cb[:, 0]
    xs = np.arange(vert.shape[0], dtype=float)[:, None, None]
    near = np.abs(xs - cx[vert]) * sp[0] < POSTERIOR_AXIS_HALF_WIDTH_MM
    post = np.where((seed == 0) & near, vert, 0)
    with np.errstate(invalid="ignore", divide="ignore"):  # no posterior bone (resected): NaN, handled below
        cv = centroids(post, idx)
    cmm = cb * sp
    frames = []
    for i in range(n):
        if n >= 2:
            a = cmm[max(i - 1, 0)]
            b = cmm[min(i + 1, n - 1)]
            w = a - b  # cranial minus caudal
        else:
            w = np.array([0.0, 0.0, 1.0])
        w = w / np.linalg.norm(w)
        if w[2] < 0:
            w = -w
        v = (cv[i] * sp - cmm[i]) if np.all(np.isfinite(cv[i])) else np.array([0.0, 1.0, 0.0])
        v = v - w * (v @ w)
        if np.linalg.norm(v) < 1e-6 or v[1] < 0:
            v = np.array([0.0, 1.0, 0.0]) - w * w[1]
        v = v / np.linalg.norm(v)
        u = np.cross(v, w)
        frames.append({"centre_vox": cb[i], "centre_mm": cmm[i], "R": np.stack([u, v, w], axis=1)})
    return frames


# ----------------------------------------------------------------------------- parts
#: The body reaches this far (mm) beyond the half widths measured on its central row
#: (the row lies at mid depth where the body is widest; 1 mm for the bin edge). [U]
BODY_SIDE_MARGIN_MM: float = 1.0

#: ... and this far beyond the end plates measured on its central column (end plates are
#: concave: the rim lies up to ~2 mm beyond the centre). [U]
BODY_END_MARGIN_MM: float = 3.0

#: A bin (1 mm, or a voxel on coarser grids) of the mid-sagittal strip behind the body
#: with fewer voxels than this fraction of the typical bin inside the body is the canal
#: (tolerates a tilted frame and one-voxel bridges). [U]
WALL_SPARSE_FRACTION: float = 0.2


def _bin_step(direction: np.ndarray, sp: np.ndarray) -> float:
    """Histogram bin width (mm) for voxel positions projected on ``direction``.

    Voxel centres projected on a unit direction ``d`` lie ``|d_a| * sp_a`` apart along grid
    axis ``a``: bins narrower than the largest of these are empty inside solid bone on a
    coarse grid (1 mm bins at 1.5 mm voxels: every third bin), and "first empty bin" would
    stop in the middle of the body.  The bins are therefore at least that wide (1 % margin
    for rounding) and never narrower than 1 mm (the width tuned on 1 mm grids).
    """
    m = float(np.max(np.abs(np.asarray(direction, float)) * np.asarray(sp, float)))
    return 1.01 * m if m > 1.0 else 1.0


def _first_sparse(vals: np.ndarray, start: float, step: float = 1.0, stop: float = 60.0) -> float | None:
    """First bin of width ``step`` (mm) from ``start`` upward holding
    < :data:`WALL_SPARSE_FRACTION` of the median count of the bins in the ~10 mm before
    ``start``."""
    if vals.size == 0:
        return None
    nref = max(3, int(round(10.0 / step)))
    bins = start + step * np.arange(-nref, int(np.ceil(stop / step)) + 2)
    h, _ = np.histogram(vals, bins)
    ref = float(np.median(h[:nref]))
    sparse = np.nonzero(h[nref:] < max(1.0, WALL_SPARSE_FRACTION * ref))[0]
    return float(bins[nref + sparse[0]]) if sparse.size else None


def _connected_to_centre(sel: np.ndarray, ijk: tuple[np.ndarray, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Keep the largest 6-connected component of the voxels ``sel`` (given as a mask over
    the voxel list ``ijk`` of a box of ``shape``)."""
    if not sel.any():
        return sel
    m = np.zeros(shape, bool)
    m[tuple(a[sel] for a in ijk)] = True
    lab, k = ndi.label(m)
    if k <= 1:
        return sel
    big = int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
    keep = lab[ijk] == big
    return sel & keep


#: The posterior wall is followed across the body (kidney-shaped bodies have a concave back
#: wall, 1-3 mm deeper laterally than at the midline); a column whose first sparse bin lies
#: more than this (mm) behind the midline wall runs into a pedicle and takes the wall of its
#: neighbours. [U: lumbar concavity 0.08 x body depth ~ 3 mm]
WALL_PROFILE_MAX_BEHIND_MM: float = 4.0

#: Width (mm) of the columns of the wall profile (at least two voxels). [U]
WALL_COLUMN_MM: float = 3.0

#: Pedicle roots inside the body: the pedicle's cross-section is taken in this slab (mm)
#: behind the posterior wall (before the isthmus, beyond the 2 mm fillet) and extended into
#: the body; a body voxel lies in the pedicle root when it is deeper inside the pedicle's
#: cross-section than inside the body (the part whose surface is farther away owns it).
PEDICLE_SLAB_MM: tuple[float, float] = (1.0, 5.0)

#: ... the pedicle's depth counts at most this much (mm; half the widest pedicles, L5/S1
#: ~18 mm): bone bridged by streaks behind the wall is not a pedicle. [U]
PEDICLE_MAX_RADIUS_MM: float = 9.0

#: ... and widens into the body up to this factor at the root's end, linearly from the slab
#: (the cross-section is taken near the isthmus, the narrowest part; pedicles flare towards
#: the body, by about a quarter of their width where their cortex meets the body's). [U]
PEDICLE_ROOT_WIDENING: float = 1.25

#: Slab (mm behind the posterior wall) whose cross-section centroids give the pedicle's
#: axis: the pedicle proper, in front of the articular and transverse processes, which
#: spring from it ~8-12 mm behind the wall. [U]
PEDICLE_AXIS_SLAB_MM: tuple[float, float] = (0.5, 7.0)

#: Pedicle bone lies at most this far (mm) beyond the body's half width (the pedicle's
#: centre is inside the body's outline; its lateral wall may bulge ~half a width out). [U]
PEDICLE_LATERAL_MARGIN_MM: float = 3.0

#: Largest pedicle axis slopes (du/dv, dw/dv): tan 35 deg transverse (L5/S1 converge up to
#: ~30 deg), tan 25 deg sagittal. [U]
PEDICLE_MAX_SLOPE: tuple[float, float] = (0.70, 0.47)

#: Smallest sagittal slope dw/dv: the pedicle axis descends from its entry towards the
#: body (published sagittal angles T1-S1 are 0.3-19 deg caudal, none cranial; the
#: morphometry table of the phantoms).  The fitted slope scatters by +-0.4 about the truth
#: (articular processes and the wall's fillet move the cross-sections' centroids); a
#: cranial one is always such an error (osteoporotic_no_hardware L2: -0.44 / -0.47 for
#: +0.11 true; its body Dice 0.957 -> 0.972 with the floor). [U]
PEDICLE_MIN_SAGITTAL_SLOPE: float = 0.0

#: Smallest transverse slope |du/dv| outward: pedicles converge towards the body (published
#: transverse angles T1-S1 are all medial, 5-42 deg; the morphometry table of the
#: phantoms), i.e. going back each runs laterally.  The fit's sign was wrong on
#: midthoracic_costovertebral T3 with streaks (-0.26 / +0.27 for +0.40 / -0.30 true) and
#: its roots missed the body's corners. [U]
PEDICLE_MIN_DIVERGENCE_SLOPE: float = 0.0

#: ... and roots start this fraction of the wall's depth behind the body centre (the
#: pedicle's cortex reaches about half way into the body). [U]
PEDICLE_ROOT_START: float = 0.4


def _wall_profile(u: np.ndarray, v: np.ndarray, half_width: float, wall0: float, st_u: float, st_v: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior-wall depth per lateral position (mm), from the first sparse bin (width
    ``st_v``) of every column (:data:`WALL_COLUMN_MM`, at least two voxels ``st_u``) of the
    voxels ``(u, v)`` going back from the centre.

    Columns whose wall lies more than :data:`WALL_PROFILE_MAX_BEHIND_MM` behind the midline
    wall ``wall0`` (pedicles) or that have no sparse bin take the wall interpolated from the
    valid columns (constant beyond the outermost).

    Returns
    -------
    centres, walls : (m,) ndarrays
        Column centres (u, mm) and wall depth (v, mm); use with :func:`numpy.interp`.
    """
    cw = max(2.0 * st_u, WALL_COLUMN_MM)
    n = max(1, int(np.ceil(half_width / cw)))
    ue = cw * np.arange(-n, n + 1)
    centres = 0.5 * (ue[1:] + ue[:-1])
    nref = max(3, int(round(10.0 / st_v)))
    ve = st_v * np.arange(-nref, int(np.ceil((wall0 + 12.0) / st_v)) + 2)
    if u.size == 0 or ve.size < nref + 2:
        return centres, np.full(centres.shape, wall0)
    h, _, _ = np.histogram2d(u, v, [ue, ve])
    ref = np.median(h[:, :nref], axis=1)
    sparse = h[:, nref:] < np.maximum(1.0, WALL_SPARSE_FRACTION * ref)[:, None]
    has = sparse.any(axis=1) & (ref >= 2)
    first = ve[nref + np.argmax(sparse, axis=1)]
    ok = has & (first <= wall0 + WALL_PROFILE_MAX_BEHIND_MM) & (first >= wall0 - WALL_PROFILE_MAX_BEHIND_MM)
    if ok.sum() < 2:
        return centres, np.full(centres.shape, wall0)
    return centres, np.interp(centres, centres[ok], first[ok])


#: A quarter of the body's height whose midline posterior wall lies at least this far (mm)
#: behind the wall of the central half moves the wall back there (:func:`_wall_shift`):
#: S1 carries the fused S2 segment, whose posterior wall lies further back (the sacral
#: kyphosis; case_example S1 walls 12 / 12 / 13 / 15 mm top to bottom, every other phantom
#: body within 1 mm).  Less is noise of the first sparse bin. [U]
WALL_SHIFT_MIN_MM: float = 2.0


def _wall_shift(u: np.ndarray, v: np.ndarray, w: np.ndarray, up: float, dn: float, wall: float, st_v: float) -> np.ndarray:
    """How far (mm, >= 0) the posterior wall lies behind ``wall`` at each voxel's height.

    The midline wall (first sparse bin going back, :func:`_first_sparse`) of each quarter
    of the body's height (``up`` above and ``dn`` below the centre), counted where it lies
    at least :data:`WALL_SHIFT_MIN_MM` and at most :data:`WALL_PROFILE_MAX_BEHIND_MM` behind
    ``wall`` (else 0), interpolated linearly over w between the quarters' centres.
    """
    edges = ((0.5 * up, up), (0.0, 0.5 * up), (-0.5 * dn, 0.0), (-dn, -0.5 * dn))
    centres, shifts = [], []
    midline = np.abs(u) < MIDLINE_HALF_WIDTH_MM
    for lo, hi in edges:
        sel = midline & (w >= lo) & (w < hi)
        b = _first_sparse(v[sel], 0.0, st_v) if sel.sum() >= 10 else None
        d = 0.0 if b is None else b - wall
        centres.append(0.5 * (lo + hi))
        shifts.append(d if WALL_SHIFT_MIN_MM <= d <= WALL_PROFILE_MAX_BEHIND_MM else 0.0)
    if not any(shifts):
        return np.zeros(w.shape)
    return np.interp(w, centres[::-1], shifts[::-1])


#: Rows (mm, at least two voxels) of the lateral body outline, and how much wider (mm) a row
#: may be than its neighbour nearer the centre: the body narrows away from its widest row, so
#: a row that is suddenly wider runs into a rib head, pedicle or transverse process. [U]
OUTLINE_ROW_MM: float = 2.0
OUTLINE_SLACK_MM: float = 0.5

#: The central row and the rows behind it are at most this much (mm) wider than the row as
#: far in front of the centre: rib heads and pedicle bases join the body behind its mid
#: depth and widened those rows (thoracic half widths of 24 mm for 14.5 true on
#: midthoracic_costovertebral T4).  Measured at 1.0 mm (worst level body Dice
#: midthoracic_costovertebral / osteoporotic_no_hardware): no cap 0.923 / 0.943, slack 2.5
#: 0.953 / 0.951, 1.5 0.956 / 0.955, 1.0 0.956 / 0.957, 0.0 0.959 / 0.961; 1.0 leaves room
#: for real bodies, which are less symmetric than the phantoms'. [U]
OUTLINE_MIRROR_SLACK_MM: float = 1.0

#: A lowest body whose mid row is more than OUTLINE_MAX_GROWTH x as wide as the body above
#: runs into the sacral alae on that row too (they reach the body's mid depth; ala tips lie
#: ~1.8 x the body's half width out); its outline is capped at OUTLINE_CAP_GROWTH x the
#: width above (adjacent bodies differ by < 10 % in width; S1 is about as wide as L5), and
#: the rows the alae join grow slowly from the rows in front of them
#: (:func:`_lateral_outline`); bone of the alae inside that outline is body. [U]
OUTLINE_MAX_GROWTH: float = 1.5
OUTLINE_CAP_GROWTH: float = 1.08


def _outline_rows(u: np.ndarray, v: np.ndarray, st_u: float, st_v: float, side: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows of :data:`OUTLINE_ROW_MM` (at least two voxels ``st_v``) over v and, per row, the
    first gap going outward from the midline on one side (``side`` +1 left, -1 right) among
    the voxels ``u, v``.

    Returns
    -------
    centres, half_widths : (m,) ndarrays
    c : int
        Index of the row of v = 0.
    """
    rs = max(2.0 * st_v, OUTLINE_ROW_MM)
    n = int(np.ceil(40.0 / rs))
    ve = rs * (np.arange(-n, n + 1) - 0.5)
    centres = 0.5 * (ve[1:] + ve[:-1])
    ue = st_u * np.arange(0, int(np.ceil(70.0 / st_u)) + 1)
    h, _, _ = np.histogram2d(v, side * u, [ve, ue])
    empty = h == 0
    hw = ue[np.argmax(empty, axis=1)]
    hw[~empty.any(axis=1)] = ue[-1]
    return centres, hw, n


def _ala_top(hw: np.ndarray, c: int, limit: float, st_u: float) -> float | None:
    """Widest row (mm) in front of the sacral alae among the rows ``hw`` of
    :func:`_outline_rows` (row of v = 0 at ``c``); None when no row in front of the centre
    is wider than ``limit``.

    The alae begin at the front-most row that is wider than ``limit`` or that grows by
    more than a voxel (``st_u``) more than the row in front of it did: going back from the
    front, a body's outline widens ever more slowly (its front is convex), and a row that
    widens faster already meets an ala's front edge in part of the slab.
    """
    if not (hw[: c + 1] > limit).any():
        return None
    g = np.diff(hw[: c + 1], prepend=0.0)
    for r in range(c + 1):
        if hw[r] > limit or (r >= 2 and hw[r - 2] > 0 and g[r] > g[r - 1] + st_u):
            return float(hw[:r].max()) if r > 0 and hw[:r].max() > 0 else None
    return None


def _lateral_outline(
    u: np.ndarray,
    v: np.ndarray,
    st_u: float,
    st_v: float,
    side: float,
    ala: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Half width of the body per depth row on one side (``side`` +1 left, -1 right).

    The first gap going outward from the midline in every row (voxels ``u, v`` of the
    mid-height slab, :func:`_outline_rows`), then capped outward from the central row: a
    row is at most :data:`OUTLINE_SLACK_MM` wider than its neighbour nearer the centre
    (v = 0), and the central row and those behind it at most
    :data:`OUTLINE_MIRROR_SLACK_MM` wider than the row as far in front.

    ``ala = (limit, top)`` (mm; the lowest body, see :data:`OUTLINE_MAX_GROWTH`): rows from
    the front-most one wider than ``limit`` back run into the sacral alae, and those wider
    than ``limit`` are cut to ``top``, the widest row in front of the alae
    (:func:`_ala_top`): the alae join the body from its mid depth back, the rows in front of
    them are the body's own outline, and the rows they join are no wider (measured on
    case_example S1, worst-level body Dice at 1.0 mm / with streaks / 1.5 mm: ``top`` 0.952 /
    0.949 / 0.919, ``top`` + 0.5 mm 0.949 / 0.942 / 0.919, + 1.0 mm 0.942 / 0.937 / 0.919).

    Returns
    -------
    centres, half_widths : (m,) ndarrays, for :func:`numpy.interp` over v.
    """
    centres, hw, c = _outline_rows(u, v, st_u, st_v, side)
    if ala is not None:
        limit, top = ala
        rows = np.flatnonzero(hw[: c + 1] > limit)
        if rows.size:
            wide = hw > limit
            wide[: rows[0]] = False
            hw[wide] = np.minimum(hw[wide], top)
    # rib heads and pedicle bases join the body behind its mid depth: the central row and
    # those behind it are no wider than the row as far in front (a body's outline is about
    # symmetric front to back about its centre) plus OUTLINE_MIRROR_SLACK_MM
    hw[c] = min(hw[c], hw[c - 1] + OUTLINE_MIRROR_SLACK_MM)
    for r in range(c + 1, len(hw)):
        hw[r] = min(hw[r], hw[r - 1] + OUTLINE_SLACK_MM)
        if 2 * c - r >= 0:
            hw[r] = min(hw[r], hw[2 * c - r] + OUTLINE_MIRROR_SLACK_MM)
    for r in range(c - 1, -1, -1):
        hw[r] = min(hw[r], hw[r + 1] + OUTLINE_SLACK_MM)
    return centres, hw


def _body_depth(body: np.ndarray, ijk: tuple[np.ndarray, ...], sp: np.ndarray) -> np.ndarray:
    """Distance (mm) of every body voxel (``body`` over the voxel list ``ijk``) to the
    nearest voxel outside the body, on the body's bounding box."""
    bi = tuple(a[body] for a in ijk)
    blo = [int(a.min()) for a in bi]
    bhi = [int(a.max()) + 1 for a in bi]
    m = np.zeros([h - lo_ + 2 for lo_, h in zip(blo, bhi)], bool)
    at = tuple(a - lo_ + 1 for a, lo_ in zip(bi, blo))
    m[at] = True
    return ndi.distance_transform_edt(m, sampling=sp)[at]


def _extruded_depth(a: np.ndarray, b: np.ndarray, slab: np.ndarray, body: np.ndarray, step: float) -> np.ndarray:
    """Depth (mm) of every body voxel inside the cross-section of the bone ``slab``,
    projected on the plane of coordinates (``a``, ``b``) and extended through the body
    along the third axis (2-D distance map of the filled cross-section; 0 outside it)."""
    lo = np.array([min(a[body].min(), a[slab].min()), min(b[body].min(), b[slab].min())]) - 3 * step
    hi = np.array([max(a[body].max(), a[slab].max()), max(b[body].max(), b[slab].max())]) + 3 * step
    dims = np.ceil((hi - lo) / step).astype(int) + 1
    cs = np.zeros(dims, bool)
    cs[np.round((a[slab] - lo[0]) / step).astype(int), np.round((b[slab] - lo[1]) / step).astype(int)] = True
    cs = ndi.binary_fill_holes(ndi.binary_closing(cs, iterations=1, border_value=0))
    d = ndi.distance_transform_edt(cs, sampling=step)
    return d[np.round((a[body] - lo[0]) / step).astype(int), np.round((b[body] - lo[1]) / step).astype(int)]


def _pedicle_axis(u: np.ndarray, v: np.ndarray, w: np.ndarray, sel: np.ndarray, step: float, side: float = 0.0) -> tuple[float, float]:
    """Slopes ``(du/dv, dw/dv)`` of a pedicle's axis from the centroids of its cross-sections
    (bins of ``step`` mm along v) of the voxels ``sel`` behind the wall; 0 when too few bins.

    Pedicles converge towards the body (transverse angle ~5-10 deg thoracic, 10-30 deg
    lumbar) and tilt in the sagittal plane: an extrusion straight along v puts the root of
    a converging pedicle several mm lateral of where it meets the body.  Slopes are clipped
    to :data:`PEDICLE_MAX_SLOPE`, the sagittal one from below at
    :data:`PEDICLE_MIN_SAGITTAL_SLOPE`, and for a pedicle on ``side`` (+1 left, -1 right,
    0 unknown) the transverse one at :data:`PEDICLE_MIN_DIVERGENCE_SLOPE` outward.
    """
    if sel.sum() < 10:
        return 0.0, 0.0
    vs, us, ws = v[sel], u[sel], w[sel]
    k = np.floor((vs - vs.min()) / step).astype(int)
    n = np.bincount(k)
    good = n >= 3
    if good.sum() < 3:
        return 0.0, 0.0
    cv = np.bincount(k, vs)[good] / n[good]
    cu = np.bincount(k, us)[good] / n[good]
    cw = np.bincount(k, ws)[good] / n[good]
    wt = n[good].astype(float)
    su = float(np.polyfit(cv, cu, 1, w=np.sqrt(wt))[0])
    sw = float(np.polyfit(cv, cw, 1, w=np.sqrt(wt))[0])
    su = float(np.clip(su, -PEDICLE_MAX_SLOPE[0], PEDICLE_MAX_SLOPE[0]))
    if side:
        su = side * max(side * su, PEDICLE_MIN_DIVERGENCE_SLOPE)  # runs laterally going back
    return su, float(np.clip(sw, PEDICLE_MIN_SAGITTAL_SLOPE, PEDICLE_MAX_SLOPE[1]))


def _pedicle_roots(
    u: np.ndarray,
    v: np.ndarray,
    w: np.ndarray,
    body: np.ndarray,
    wall_at: np.ndarray,
    depth: np.ndarray,
    step: float,
    half_widths: tuple[float, float] = (np.inf, np.inf),
) -> np.ndarray:
    """Body voxels that belong to a pedicle root (see :data:`PEDICLE_SLAB_MM`).

    Only bone within the body's half width (``half_widths``: left, right, mm) plus
    :data:`PEDICLE_LATERAL_MARGIN_MM` counts as pedicle (rib heads and transverse processes
    beside the pedicle would pull its axis and widen its cross-section).  Per side, the pedicle's axis is fitted to its cross-sections behind the wall
    (:func:`_pedicle_axis`, slab :data:`PEDICLE_AXIS_SLAB_MM`).  The cross-section of the
    bone in the slab :data:`PEDICLE_SLAB_MM` behind the wall, projected along that axis on
    a plane normal to v, gives every body voxel (projected the same way) its depth inside
    the pedicle (2-D distance map), widened towards the body (:data:`PEDICLE_ROOT_WIDENING`
    at the root's end, linear from 1 at the slab); the root ends
    :data:`PEDICLE_ROOT_START` x the wall's depth behind the body centre with a round cap.
    The body voxel's depth (``depth``) is its 3-D distance to the body's surface.  The
    deeper one wins (the part whose surface is farther away owns the voxel).
    """
    out = np.zeros(body.shape, bool)
    behind = v - wall_at
    bw = w[body]
    inw = (w >= bw.min()) & (w <= bw.max())
    wall0 = float(np.min(wall_at))
    v_end = PEDICLE_ROOT_START * wall0
    bidx = np.flatnonzero(body)
    ub, vb, wb = u[body], v[body], w[body]
    for side, hw_side in zip((1.0, -1.0), half_widths):
        # pedicles flank the canal: the midline strip is never a pedicle root
        lateral = (side * u >= MIDLINE_HALF_WIDTH_MM) & (side * u <= hw_side + PEDICLE_LATERAL_MARGIN_MM) & ~body & inw
        slab = lateral & (behind > PEDICLE_SLAB_MM[0]) & (behind <= PEDICLE_SLAB_MM[1])
        if slab.sum() < 5:
            continue
        ax_sel = lateral & (behind > PEDICLE_AXIS_SLAB_MM[0]) & (behind <= PEDICLE_AXIS_SLAB_MM[1])
        su, sw = _pedicle_axis(u, v, w, ax_sel, step, side)
        v_ref = float(np.median(v[slab]))
        a_s, b_s = u[slab] - su * (v[slab] - v_ref), w[slab] - sw * (v[slab] - v_ref)
        cand = (side * ub >= MIDLINE_HALF_WIDTH_MM) & (vb > v_end - PEDICLE_MAX_RADIUS_MM)
        if not cand.any():
            continue
        a_b, b_b = ub[cand] - su * (vb[cand] - v_ref), wb[cand] - sw * (vb[cand] - v_ref)
        d2 = _extruded_depth_pts(a_s, b_s, a_b, b_b, step)
        r = float(d2.max()) if d2.size else 0.0
        t = np.clip((v_ref - vb[cand]) / max(v_ref - v_end, 1.0), 0.0, 1.0)
        grow = 1.0 + (PEDICLE_ROOT_WIDENING - 1.0) * t
        dp = np.minimum(grow * d2, PEDICLE_MAX_RADIUS_MM)
        # round end: beyond v_end the depth is that inside a sphere cap of the tube
        beyond = np.maximum(v_end - vb[cand], 0.0)
        rr = np.minimum(grow * r, PEDICLE_MAX_RADIUS_MM)
        dp = np.where(beyond > 0, rr - np.sqrt(np.maximum(rr - dp, 0.0) ** 2 + beyond**2), dp)
        root = dp > depth[cand]
        out[bidx[np.flatnonzero(cand)[root]]] = True
    return out


def _extruded_depth_pts(a_s: np.ndarray, b_s: np.ndarray, a: np.ndarray, b: np.ndarray, step: float) -> np.ndarray:
    """2-D depth (mm) of points ``(a, b)`` inside the filled cross-section of the points
    ``(a_s, b_s)`` (rasterised at ``step`` mm, closed once, holes filled); 0 outside."""
    lo = np.array([min(a.min(), a_s.min()), min(b.min(), b_s.min())]) - 3 * step
    hi = np.array([max(a.max(), a_s.max()), max(b.max(), b_s.max())]) + 3 * step
    dims = np.ceil((hi - lo) / step).astype(int) + 1
    cs = np.zeros(dims, bool)
    cs[np.round((a_s - lo[0]) / step).astype(int), np.round((b_s - lo[1]) / step).astype(int)] = True
    cs = ndi.binary_fill_holes(ndi.binary_closing(cs, iterations=1, border_value=0))
    d = ndi.distance_transform_edt(cs, sampling=step)
    return d[np.round((a - lo[0]) / step).astype(int), np.round((b - lo[1]) / step).astype(int)]


#: A central column whose extent up or down is below this fraction of the median over a
#: 3 x 3 grid of thin columns this far apart (mm) runs into a hole in the cancellous bone
#: (osteoporotic_no_hardware L3 at 1.5 mm: its lower 5 voxels unfilled, the end plate
#: below them taken for posterior elements); the grid's median is used there
#: (:func:`_column_extent`). [U]
COLUMN_HOLE_FRACTION: float = 0.75
COLUMN_GRID_MM: float = 6.0
COLUMN_HALF_WIDTH_MM: float = 2.0


def _column_extent(u: np.ndarray, v: np.ndarray, w: np.ndarray, step: float) -> tuple[float | None, float | None]:
    """Body extent (mm) above and below the centre along w from the vertebra's voxels
    ``(u, v, w)``: the first empty bin (:func:`_first_gap`) up and down the central column
    (half width :data:`MIDLINE_HALF_WIDTH_MM`).  Where that is less than
    :data:`COLUMN_HOLE_FRACTION` of the median over a 3 x 3 grid of thin columns
    (:data:`COLUMN_GRID_MM` apart, half width :data:`COLUMN_HALF_WIDTH_MM`) the central
    column runs into a hole in the cancellous bone and the grid's median is used.  None
    when no column reaches the centre."""
    col = (np.abs(u) < MIDLINE_HALF_WIDTH_MM) & (np.abs(v) < MIDLINE_HALF_WIDTH_MM)
    up = _first_gap(w[col], 0.0, step) if col.any() else None
    dn = _first_gap(-w[col], 0.0, step) if col.any() else None
    ups, dns = [], []
    for cu in (-COLUMN_GRID_MM, 0.0, COLUMN_GRID_MM):
        for cv in (-COLUMN_GRID_MM, 0.0, COLUMN_GRID_MM):
            sel = (np.abs(u - cu) < COLUMN_HALF_WIDTH_MM) & (np.abs(v - cv) < COLUMN_HALF_WIDTH_MM)
            if not sel.any():
                continue
            a, b = _first_gap(w[sel], 0.0, step), _first_gap(-w[sel], 0.0, step)
            if a is None or b is None or a + b <= 2 * step:
                continue  # no bone at the centre height in this column
            ups.append(a)
            dns.append(b)
    if ups:
        gu, gd = float(np.median(ups)), float(np.median(dns))
        if up is None or up < COLUMN_HOLE_FRACTION * gu:
            up = gu
        if dn is None or dn < COLUMN_HOLE_FRACTION * gd:
            dn = gd
    return up, dn


def _first_gap(vals: np.ndarray, start: float, step: float = 1.0, stop: float = 60.0) -> float | None:
    """First empty bin (width ``step`` mm) of ``vals`` going from ``start`` upward (None if
    none before ``stop``)."""
    if vals.size == 0:
        return None
    bins = np.arange(start, start + stop + step, step)
    h, _ = np.histogram(vals, bins)
    empty = np.nonzero(h == 0)[0]
    return float(bins[empty[0]]) if empty.size else None


#: Interior holes of a body (:func:`_body_holes`): voxels of no vertebra above this (HU; not
#: fat or air) ... [U]
HOLE_MIN_HU: float = -50.0

#: ... at least this far (mm) inside the body's envelope (wall, lateral outline, end plates,
#: front) ... [U]
HOLE_ENVELOPE_DEPTH_MM: float = 0.5

#: ... and at least this far (mm) from any voxel outside the body and its holes: more than one
#: voxel at 1.5 mm, so the concave waist between two end-plate rims is never filled (with
#: 0: soft tissue beside every midthoracic_costovertebral body at 1.0 mm, worst-level body
#: Dice 0.961 -> 0.959). [U]
HOLE_MIN_DEPTH_MM: float = 1.6


def _body_holes(
    free: np.ndarray,
    ijk: tuple[np.ndarray, ...],
    body: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    w: np.ndarray,
    envelope: tuple,
    fr: dict,
    origin: np.ndarray,
    sp: np.ndarray,
) -> np.ndarray:
    """Voxels of ``free`` (no vertebra, on a vertebra's box) inside the body's holes.

    Osteoporotic cancellous bone (~60-100 HU) at 1.5 mm voxels lies below the cortical
    threshold, and where the thin posterior wall is below it too the bone mask's fill leaves
    the body's interior open to the canal (osteoporotic_no_hardware L3: 677 body voxels
    missing, body Dice 0.920).  A free voxel is a hole of the body when it lies
    :data:`HOLE_ENVELOPE_DEPTH_MM` inside the envelope of the split (in front of the
    posterior wall, within the lateral outline and the end plates, behind the body's front),
    has body voxels above and below it (same u, v column) and left and right of it (same v,
    w row), and lies :data:`HOLE_MIN_DEPTH_MM` inside the body and its holes together.

    Parameters
    ----------
    free : (bi, bj, bk) bool ndarray
        Candidate voxels on the vertebra's box.
    ijk, body, u, v, w
        The vertebra's voxel indices on the box, its body mask and local coordinates (mm).
    envelope : tuple
        ``(cu, cwall, wall, cl, hl, cr, hr, hw_l, hw_r, up, dn)`` of :func:`split_parts`.
    fr : dict
        The vertebra's frame (``centre_mm``, ``R``).
    origin : (3,) int
        The box's first voxel on the work grid.
    sp : (3,) float

    Returns
    -------
    (bi, bj, bk) bool ndarray
    """
    out = np.zeros(free.shape, bool)
    if not body.any():
        return out
    # holes lie between body voxels: only the body's own box holds candidates
    bi = tuple(a[body] for a in ijk)
    blo = np.array([int(a.min()) for a in bi])
    box = tuple(slice(lo_, int(a.max()) + 1) for lo_, a in zip(blo, bi))
    fijk = tuple(a + lo_ for a, lo_ in zip(np.nonzero(free[box]), blo))
    if fijk[0].size == 0:
        return out
    cu, cwall, wall, cl, hl, cr, hr, hw_l, hw_r, up, dn = envelope
    loc = ((np.stack(fijk, 1) + origin) * sp - fr["centre_mm"]) @ fr["R"]
    uf, vf, wf = loc[:, 0], loc[:, 1], loc[:, 2]
    depth = np.minimum.reduce(
        [
            np.maximum(np.interp(uf, cu, cwall), wall) - vf,
            np.minimum(hw_l, np.interp(vf, cl, hl)) - uf,
            uf + np.minimum(hw_r, np.interp(vf, cr, hr)),
            up - wf,
            wf + dn,
            vf - float(v[body].min()),
        ]
    )
    take = depth >= HOLE_ENVELOPE_DEPTH_MM
    step = float(np.max(sp))

    def keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.round(a / step).astype(np.int64) * 100003 + np.round(b / step).astype(np.int64)

    bu, bv, bw = u[body], v[body], w[body]
    for (ba, bb, bc), (fa, fb, fc) in (((bu, bv, bw), (uf, vf, wf)), ((bv, bw, bu), (vf, wf, uf))):
        uk, inv = np.unique(keys(ba, bb), return_inverse=True)
        lo = np.full(uk.size, np.inf)
        hi = np.full(uk.size, -np.inf)
        np.minimum.at(lo, inv, bc)
        np.maximum.at(hi, inv, bc)
        fk = keys(fa, fb)
        pos = np.clip(np.searchsorted(uk, fk), 0, uk.size - 1)
        take &= (uk[pos] == fk) & (lo[pos] < fc) & (fc < hi[pos])
    if not take.any():
        return out
    m = np.zeros(free.shape, bool)
    m[bi] = True
    m[tuple(a[take] for a in fijk)] = True
    inside = ndi.distance_transform_edt(np.pad(m[box], 1), sampling=sp)[1:-1, 1:-1, 1:-1]
    take &= inside[tuple(a - lo_ for a, lo_ in zip(fijk, blo))] >= HOLE_MIN_DEPTH_MM
    out[tuple(a[take] for a in fijk)] = True
    return out


def split_parts(
    vert: np.ndarray,
    body_seed: np.ndarray,
    frames: list[dict],
    bone: np.ndarray,
    hu: np.ndarray,
    metal: np.ndarray,
    sp: np.ndarray,
) -> tuple[np.ndarray, list[dict]]:
    """Split every vertebra into body, pedicles, posterior elements and ribs.

    The body is the vertebra's bone in front of the posterior wall profile
    (:func:`_wall_profile`), inside the lateral outline per depth row
    (:func:`_lateral_outline`), within the end plates found on the central column, minus
    the pedicle roots (:func:`_pedicle_roots`).

    Parameters
    ----------
    vert, body_seed : (ni, nj, nk) int ndarrays
        Vertebra ids and body seeds (1..n) on the work grid.
    frames : list of dict
        From :func:`vertebra_frames`.
    bone, metal : (ni, nj, nk) bool ndarrays
    hu : (ni, nj, nk) float ndarray
    sp : (3,) float

    Returns
    -------
    parts : (ni, nj, nk) int32 ndarray
        ``16 * n + code`` with code from :data:`PART_CODES` (0 outside vertebrae).
    info : list of dict
        Per vertebra: canal wall, widths, heights, part volumes (mm^3) for findings.
    """
    parts = np.zeros(vert.shape, np.int32)
    prev_half: float | None = None  # outline half width of the vertebra above (mid row)
    objs = ndi.find_objects(vert)
    vox = float(np.prod(sp))
    info: list[dict] = []
    for n, fr in enumerate(frames, start=1):
        rec: dict[str, Any] = {}
        info.append(rec)
        ob = objs[n - 1] if n - 1 < len(objs) else None
        if ob is None:
            continue
        sub = vert[ob] == n
        ijk = np.nonzero(sub)
        pts = (np.stack(ijk, 1) + np.array([s.start for s in ob])) * sp
        loc = (pts - fr["centre_mm"]) @ fr["R"]
        u, v, w = loc[:, 0], loc[:, 1], loc[:, 2]
        seed = body_seed[ob][ijk] == n
        is_metal = metal[ob][ijk]
        if seed.sum() < 10:
            seed = np.abs(u) < 15
        # body extent from the bone around the centre (not from the seed, which may hold
        # rib or process bone): first gaps up/down the central column, unless it runs into
        # a hole (:func:`_column_extent`), and left/right along the central row
        # bins at least as wide as the voxels seen along each axis (coarse scans)
        st_u, st_v, st_w = (_bin_step(fr["R"][:, k], sp) for k in range(3))
        up, dn = _column_extent(u, v, w, st_w)
        hh_seed = float(np.percentile(np.abs(w[seed]), 99))
        up = hh_seed if up is None else up
        dn = hh_seed if dn is None else dn
        hh = 0.5 * (up + dn)
        row = (np.abs(v) < 3.0) & (w < 0.5 * up) & (w > -0.5 * dn)
        hw_l = _first_gap(u[row], 0.0, st_u) if row.any() else None
        hw_r = _first_gap(-u[row], 0.0, st_u) if row.any() else None
        hw_seed = float(np.percentile(np.abs(u[seed]), 98)) + 0.5
        hw_l = hw_seed if hw_l is None else hw_l
        hw_r = hw_seed if hw_r is None else hw_r
        hw = 0.5 * (hw_l + hw_r)
        mid = (np.abs(u) < MIDLINE_HALF_WIDTH_MM) & (w < 0.5 * up) & (w > -0.5 * dn)
        wall = _first_sparse(v[mid], 0.0, st_v)
        if wall is None:
            wall = float(np.percentile(v[seed], 98))
        # canal depth: next bone behind the wall at the midline
        behind = np.sort(v[mid & (v > wall)])
        canal_back = float(behind[0]) if behind.size else None
        canal_depth = (canal_back - wall) if canal_back is not None else 16.0
        canal_depth = float(np.clip(canal_depth, 8.0, 25.0))
        hrow = (w < 0.5 * up) & (w > -0.5 * dn)
        cu, cwall = _wall_profile(u[hrow], v[hrow], max(hw_l, hw_r) + BODY_SIDE_MARGIN_MM, wall, st_u, st_v)
        # a concave back wall is nowhere in front of its midline depth (corners are cut by the
        # lateral outline); lower down it may lie further back (:func:`_wall_shift`)
        shift = _wall_shift(u, v, w, up, dn, wall, st_v)
        wall_at = np.maximum(np.interp(u, cu, cwall), wall) + shift
        cl, hl = _lateral_outline(u[hrow], v[hrow], st_u, st_v, 1.0)
        cr, hr = _lateral_outline(u[hrow], v[hrow], st_u, st_v, -1.0)
        # the narrower side: streaks, screws or a bridged rib head widen one side only
        half = min(float(np.interp(0.0, cl, hl)), float(np.interp(0.0, cr, hr)))
        if n == len(frames) and prev_half is not None and half > OUTLINE_MAX_GROWTH * prev_half:
            # the widest row itself runs into the sacral alae: the body is about as wide as
            # the one above
            cap = OUTLINE_CAP_GROWTH * prev_half
            tops = [t for t in (_ala_top(*_outline_rows(u[hrow], v[hrow], st_u, st_v, sd)[1:], cap, st_u) for sd in (1.0, -1.0)) if t is not None]
            if tops:
                # the body is symmetric: both sides from the mean of their rows in front
                ala = (cap, float(np.mean(tops)))
                cl, hl = _lateral_outline(u[hrow], v[hrow], st_u, st_v, 1.0, ala)
                cr, hr = _lateral_outline(u[hrow], v[hrow], st_u, st_v, -1.0, ala)
            hl, hr = np.minimum(hl, cap), np.minimum(hr, cap)
            half = cap
        prev_half = half
        ol = np.interp(v, cl, hl)
        orr = np.interp(v, cr, hr)
        body = (
            (v < wall_at - BODY_WALL_INSET_MM)
            & (u <= np.minimum(hw_l, ol) + BODY_SIDE_MARGIN_MM)
            & (u >= -np.minimum(hw_r, orr) - BODY_SIDE_MARGIN_MM)
            & (w <= up + BODY_END_MARGIN_MM)
            & (w >= -dn - BODY_END_MARGIN_MM)
        )
        body = _connected_to_centre(body, ijk, sub.shape)
        root = np.zeros(body.shape, bool)
        if body.any():
            depth = _body_depth(body, ijk, sp)
            root = _pedicle_roots(u, v, w, body, wall_at, depth, max(st_u, st_w), (hw_l, hw_r))
        body_outline = body  # for the left/right balance (roots depend on screws and streaks)
        body = body & ~root
        # keep the body connected to its centre (drop rib-head bits touching the corner)
        lat = ((u > hw_l + 3.0) | (u < -hw_r - 3.0)) & ~body
        ant_lat = lat & (v < wall + 0.5 * canal_depth) & ~is_metal
        ped = (((v > wall + shift) & (v <= wall + shift + 0.5 * canal_depth) & (u <= hw_l) & (u >= -hw_r)) | root) & ~body
        code = np.full(u.shape, PART_CODES["posterior"], np.int32)
        code[ant_lat & (u > 0)] = PART_CODES["rib_left"]
        code[ant_lat & (u < 0)] = PART_CODES["rib_right"]
        code[ped & (u > 0)] = PART_CODES["pedicle_left"]
        code[ped & (u <= 0)] = PART_CODES["pedicle_right"]
        code[body] = PART_CODES["body"]
        blk = parts[ob]
        blk[ijk] = 16 * n + code
        if body.any():
            # cancellous bone below the threshold that the bone mask left open
            free = (vert[ob] == 0) & ~metal[ob] & (hu[ob] > HOLE_MIN_HU)
            envelope = (cu, cwall, wall, cl, hl, cr, hr, hw_l, hw_r, up, dn)
            hole = _body_holes(free, ijk, body, u, v, w, envelope, fr, np.array([q.start for q in ob]), sp)
            blk[hole] = 16 * n + PART_CODES["body"]
        parts[ob] = blk
        # measurements
        bu, bv, bw = u[body], v[body], w[body]
        strip = np.abs(bu) < MIDLINE_HALF_WIDTH_MM
        hts = {}
        if strip.sum() > 20:
            vmin = float(np.percentile(bv[strip], 1))
            # the body's own back edge when the canal wall was read too far back (streaks)
            back = min(wall, float(np.percentile(bv[strip], 99)) + 0.5 * st_v)
            step = float(np.mean(sp))
            for key, pos in (
                ("anterior_height_mm", vmin + HEIGHT_INSET_MM),
                ("middle_height_mm", 0.5 * (vmin + back)),
                ("posterior_height_mm", back - HEIGHT_INSET_MM),
            ):
                sel = strip & (np.abs(bv - pos) <= 1.5)
                if sel.sum() >= 3:
                    hts[key] = float(bw[sel].max() - bw[sel].min() + step)
        post_mask = code == PART_CODES["posterior"]
        nm = ~is_metal
        rec.update(
            {
                "wall_mm": wall,
                "canal_depth_mm": canal_depth,
                "canal_closed": canal_back is not None,
                "half_width_mm": hw,
                "half_height_mm": hh,
                "heights": hts,
                "body_mm3": float(body.sum() * vox),
                **_posterior_halves(u[body_outline], v[body_outline], vox),
                "body_left_mm3": float((body_outline & (u > 0)).sum() * vox),
                "body_right_mm3": float((body_outline & (u < 0)).sum() * vox),
                # behind the wall only: the roots inside the body follow the body's resections
                "pedicle_left_mm3": float((ped & ~root & (u > 0) & nm).sum() * vox),
                "pedicle_right_mm3": float((ped & ~root & (u <= 0) & nm).sum() * vox),
                "rib_left_mm3": float((ant_lat & (u > 0)).sum() * vox),
                "rib_right_mm3": float((ant_lat & (u < 0)).sum() * vox),
                "max_lateral_mm": float(np.abs(u).max()),
                # bone closing the canal behind: midline, behind the canal's front half
                "arch_mm3": float((post_mask & nm & (np.abs(u) < 6.0) & (v > wall + 0.5 * canal_depth)).sum() * vox),
                # any bone there, whichever vertebra it was assigned to, and how much of the
                # region lies outside the image (see detect_resections)
                **_arch_region_bone(bone, fr, sp, wall + 0.5 * canal_depth, up, dn),
                **_joint_region_bone(bone, fr, sp, wall, hw, hh, dn),
                # articular regions: lateral posterior bone in the caudal / cranial third
                "facet_inf_left_mm3": float((post_mask & nm & (u > 6) & (u < hw + 10) & (v > wall) & (w < -hh / 3)).sum() * vox),
                "facet_inf_right_mm3": float((post_mask & nm & (u < -6) & (u > -hw - 10) & (v > wall) & (w < -hh / 3)).sum() * vox),
                "facet_sup_left_mm3": float((post_mask & nm & (u > 6) & (u < hw + 10) & (v > wall) & (w > hh / 3)).sum() * vox),
                "facet_sup_right_mm3": float((post_mask & nm & (u < -6) & (u > -hw - 10) & (v > wall) & (w > hh / 3)).sum() * vox),
            }
        )
    return parts, info


#: Region behind the canal probed for any bone (:func:`_arch_region_bone`): half width (mm)
#: and depth (mm) from the canal's mid depth (laminae and spinous process). [U]
ARCH_REGION_HALF_WIDTH_MM: float = 6.0
ARCH_REGION_DEPTH_MM: float = 40.0


def _arch_region_bone(bone: np.ndarray, fr: dict, sp: np.ndarray, v0: float, up: float, dn: float) -> dict[str, float]:
    """Bone volume (mm^3) in the midline region behind the canal of one vertebra, whatever
    vertebra the bone was assigned to, and the fraction of that region outside the image.

    The region is a 1 mm lattice in the vertebra's frame: ``|u| <``
    :data:`ARCH_REGION_HALF_WIDTH_MM`, ``v0 <= v < v0 +`` :data:`ARCH_REGION_DEPTH_MM`,
    ``-dn <= w <= up`` (the body's height).  A laminectomy leaves it nearly empty; an arch
    that the flood gave to a neighbour is still there.
    """
    uu = np.arange(-ARCH_REGION_HALF_WIDTH_MM + 0.5, ARCH_REGION_HALF_WIDTH_MM, 1.0)
    vv = np.arange(v0, v0 + ARCH_REGION_DEPTH_MM, 1.0)
    ww = np.arange(-dn, up + 1e-6, 1.0)
    g = np.stack(np.meshgrid(uu, vv, ww, indexing="ij"), -1).reshape(-1, 3)
    idx = np.round((fr["centre_mm"] + g @ fr["R"].T) / sp).astype(int)
    inside = np.all((idx >= 0) & (idx < np.array(bone.shape)), axis=1)
    hit = np.zeros(len(g), bool)
    hit[inside] = bone[tuple(idx[inside].T)]
    return {"arch_any_mm3": float(hit.sum()), "arch_region_outside": float(1.0 - inside.mean()) if len(g) else 1.0}


def _joint_region_bone(bone: np.ndarray, fr: dict, sp: np.ndarray, wall: float, hw: float, hh: float, dn: float) -> dict[str, float]:
    """Bone volume (mm^3) per side in the region of the facet joint below a vertebra, whatever
    vertebra it was assigned to: a 1 mm lattice in the vertebra's frame with
    ``6 <= |u| <= hw + 10``, ``wall <= v < wall + 40``, ``-dn - 10 <= w <= -hh / 3`` (the
    inferior articular process and the superior one of the level below)."""
    out: dict[str, float] = {}
    ww = np.arange(-dn - 10.0, -hh / 3.0 + 1e-6, 1.0)
    vv = np.arange(wall, wall + 40.0, 1.0)
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        uu = sgn * np.arange(6.0, hw + 10.0 + 1e-6, 1.0)
        g = np.stack(np.meshgrid(uu, vv, ww, indexing="ij"), -1).reshape(-1, 3)
        idx = np.round((fr["centre_mm"] + g @ fr["R"].T) / sp).astype(int)
        inside = np.all((idx >= 0) & (idx < np.array(bone.shape)), axis=1)
        hit = np.zeros(len(g), bool)
        hit[inside] = bone[tuple(idx[inside].T)]
        out[f"joint_any_{side}_mm3"] = float(hit.sum())
    return out


#: A level whose arch region lies more than this fraction outside the image is not judged
#: for a laminectomy (the image's end vertebrae). [U]
ARCH_REGION_MAX_OUTSIDE: float = 0.25


def _posterior_halves(u: np.ndarray, v: np.ndarray, vox: float) -> dict[str, float]:
    """Volume (mm^3) of the body's posterior half (v >= 0) left and right of the midline
    of its anterior half (the middle of the anterior half's lateral extent).

    A partial vertebrectomy removes the posterolateral body on one side; the frame's centre
    (the core's centroid) moves away from the resected side and the halves about it stay
    balanced (T6 on midthoracic_costovertebral: 5008 / 4009 mm^3 with the left resected).
    The anterior half is intact and gives the midline.
    """
    ant = v < 0
    if ant.sum() < 20 or (~ant).sum() < 20:
        return {}
    u_mid = 0.5 * (float(np.percentile(u[ant], 2)) + float(np.percentile(u[ant], 98)))
    up = u[~ant]
    return {"body_post_left_mm3": float((up > u_mid).sum() * vox), "body_post_right_mm3": float((up < u_mid).sum() * vox)}


# ----------------------------------------------------------------------------- naming
def parse_anchor(anchor: Any) -> dict[str, Any]:
    """Normalise an anchor to ``{"level": str, "which": "lowest"|"highest"|int|None,
    "point": (3,) or None, "z": float or None}``.

    Raises
    ------
    SegmentationError
        ``PLN-SEG-001`` for an unknown level name or malformed anchor.
    """
    out: dict[str, Any] = {"level": None, "which": None, "point": None, "z": None}
    if isinstance(anchor, dict):
        out.update({k: anchor.get(k) for k in ("level", "which", "point", "z")})
    elif isinstance(anchor, str):
        m = re.fullmatch(r"\s*([TLS]\d{1,2})\s*(?:@\s*(?:z\s*=\s*)?(-?\d+(?:\.\d*)?))?\s*", anchor, re.I)
        if not m:
            raise SegmentationError(f"cannot read anchor {anchor!r}; use e.g. 'L5' or 'L4@z=-80'")
        out["level"] = m.group(1).upper()
        out["z"] = float(m.group(2)) if m.group(2) is not None else None
    elif isinstance(anchor, (tuple, list)) and len(anchor) == 2:
        out["level"] = str(anchor[0]).upper()
        if isinstance(anchor[1], (int, np.integer)):
            out["which"] = int(anchor[1])
        else:
            out["point"] = np.asarray(anchor[1], float).reshape(3)
    else:
        raise SegmentationError(f"cannot read anchor {anchor!r}; use e.g. 'L5', 'L4@z=-80' or ('L3', 1)")
    if out["level"] not in LEVELS:
        raise SegmentationError(f"unknown anchor level {out['level']!r}; valid levels: {', '.join(LEVELS)}")
    if out["which"] is None and out["point"] is None and out["z"] is None:
        out["which"] = "lowest"
    return out


def _ribbed(rec: dict) -> tuple[bool, bool]:
    return rec.get("rib_left_mm3", 0.0) > RIB_MIN_MM3, rec.get("rib_right_mm3", 0.0) > RIB_MIN_MM3


def name_levels(
    frames: list[dict],
    info: list[dict],
    centres_lps: list[np.ndarray],
    anchor: Any,
    sp: np.ndarray,
) -> tuple[list[str | None], dict[str, Any]]:
    """Name the vertebrae (cranial to caudal) by level.

    Parameters
    ----------
    frames, info : lists from :func:`vertebra_frames` / :func:`split_parts`.
    centres_lps : list of (3,) ndarray
        Body centres in LPS mm.
    anchor : see :func:`parse_anchor`, or None for anatomical naming.
    sp : (3,) float

    Returns
    -------
    names : list of str or None
        One per vertebra (None for bodies outside T1-S1).
    how : dict
        How the naming was done (anchor, sacrum / T12 evidence).
    """
    n = len(frames)
    ribs = [_ribbed(r) for r in info]
    has_rib = [a or b for a, b in ribs]
    # sacrum: lowest body, both sides' lateral bone and wider than any body above
    lowest = info[-1]
    sacrum = bool(
        n >= 2
        and all(ribs[-1])
        and not has_rib[-2]
        and lowest.get("max_lateral_mm", 0) > 1.15 * max(r.get("max_lateral_mm", 0) for r in info[:-1])
    )
    how: dict[str, Any] = {"sacrum_detected": sacrum, "rib_bearing": [bool(x) for x in has_rib]}
    if anchor is not None:
        a = parse_anchor(anchor)
        how["anchor"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in a.items()}
        if a["z"] is not None:
            ref = int(np.argmin([abs(c[2] - a["z"]) for c in centres_lps]))
        elif a["point"] is not None:
            ref = int(np.argmin([np.linalg.norm(c - a["point"]) for c in centres_lps]))
        elif a["which"] == "lowest":
            ref = n - 1 if (a["level"] == "S1" or not sacrum) else n - 2
        elif a["which"] == "highest":
            ref = 0
        else:
            ref = int(a["which"])
            if not -n <= ref < n:
                raise SegmentationError(
                    f"anchor index {ref} is outside the {n} vertebral bodies found",
                    details={"n_bodies": n},
                )
            ref %= n
        start = LEVELS.index(a["level"]) - ref
        how["method"] = "anchor"
    else:
        t12 = None
        # T12: the last of >= 2 rib-bearing bodies followed by >= 2 rib-free bodies (or by
        # the image end / sacrum after one rib-free body); single flips are noise
        top = n - 1 if sacrum else n
        for i in range(1, top - 1):
            below = has_rib[i + 1 : min(i + 3, top)]
            if has_rib[i] and has_rib[i - 1] and not any(below) and (len(below) >= 2 or i + 2 >= top):
                t12 = i
        if sacrum:
            start = LEVELS.index("S1") - (n - 1)
            how["method"] = "sacrum"
            if t12 is not None and LEVELS.index("T12") - t12 != start:
                how["conflict"] = f"last rib-bearing body is index {t12}, sacrum count gives {LEVELS[start + t12] if 0 <= start + t12 < len(LEVELS) else '?'}"
        elif t12 is not None:
            start = LEVELS.index("T12") - t12
            how["method"] = "ribs"
        else:
            raise PlannerError(
                "cannot name the vertebral levels: no anchor given and neither a sacrum nor a "
                f"last rib-bearing vertebra was found among the {n} bodies; pass anchor='L5' "
                "(lowest body) or anchor='L3@z=<mm>'",
                code="PLN-SEG-002",
                details={"n_bodies": n, "rib_bearing": how["rib_bearing"]},
            )
    names: list[str | None] = []
    for i in range(n):
        k = start + i
        names.append(LEVELS[k] if 0 <= k < len(LEVELS) else None)
    if all(x is None for x in names):
        raise SegmentationError("the anchor puts every body found outside T1-S1", details={"n_bodies": n})
    how["first_index"] = int(start)
    return names, how


def require_level(levels: list[str], level: str) -> None:
    """Raise ``PLN-SEG-001`` naming what was found when ``level`` is not in ``levels``."""
    if level not in levels:
        raise SegmentationError(
            f"level {level} is not in the image; levels found: {', '.join(levels) or 'none'}",
            details={"requested": level, "found": list(levels)},
        )


# ----------------------------------------------------------------------------- findings
def _expected(level: str) -> dict[str, float]:
    from planner.phantom.morphometry import level_dims

    d = level_dims(level)
    a, p = d["body_height_anterior_mm"], d["body_height_posterior_mm"]
    return {"anterior_height_mm": a, "middle_height_mm": 0.5 * (a + p), "posterior_height_mm": p}


def genant_grade(loss: float) -> int:
    """Genant semi-quantitative grade 0-3 from a height-loss fraction."""
    return int(np.searchsorted(np.array(GENANT_LIMITS), loss, side="right"))


def fractures_from_heights(
    heights: dict[str, dict[str, float]], levels: list[str], cut: set[str] | None = None
) -> tuple[list[dict], dict[str, float]]:
    """Height loss per level against the neighbours' heights, and the fractured levels.

    The reference for each of the anterior / middle / posterior heights of level L is the
    median over up to two intact levels on each side of ``h(n) * E(L) / E(n)`` where E is
    the expected (morphometry) height: the patient's own scale, corrected for the normal
    change of height along the spine.  Only levels with intact references both above and
    below are compared with neighbours; the end levels of the column and levels in ``cut``
    (touching the field of view) are judged on internal evidence only: anterior and middle
    height against the posterior one, divided by the expected ratios.
    Loss = 1 - min(ratio).

    Parameters
    ----------
    heights : dict
        Per level ``anterior_height_mm``, ``middle_height_mm``, ``posterior_height_mm``.
    levels : list of str
        Cranial to caudal.
    cut : set of str, optional
        Levels whose body touches the edge of the image.

    Returns
    -------
    fractures : list of dict
        Levels with Genant grade >= 1.
    loss : dict[str, float]
        Height-loss fraction per level.
    """
    keys = ("anterior_height_mm", "middle_height_mm", "posterior_height_mm")
    cut = cut or set()
    ok = [lv for lv in levels if all(k in heights.get(lv, {}) for k in keys) and lv != "S1"]
    exp = {lv: _expected(lv) for lv in ok}
    loss: dict[str, float] = {}
    excluded: set[str] = set()
    for _ in range(2):
        for lv in ok:
            i = levels.index(lv)
            nb = [levels[j] for j in (i - 2, i - 1, i + 1, i + 2) if 0 <= j < len(levels) and levels[j] in ok and levels[j] not in excluded]
            above = any(levels.index(m) < i for m in nb)
            below = any(levels.index(m) > i for m in nb)
            h = heights[lv]
            if above and below and lv not in cut:
                ratios = [h[k] / np.median([heights[m][k] * exp[lv][k] / exp[m][k] for m in nb]) for k in keys]
            else:
                # end of the column or cut by the field of view: internal evidence only
                # (anterior / middle height against the posterior one, expected wedge removed)
                e = exp[lv]
                ratios = [
                    (h["anterior_height_mm"] / h["posterior_height_mm"]) / (e["anterior_height_mm"] / e["posterior_height_mm"]),
                    (h["middle_height_mm"] / h["posterior_height_mm"]) / (e["middle_height_mm"] / e["posterior_height_mm"]),
                ]
            loss[lv] = float(max(0.0, 1.0 - min(ratios)))
        excluded = {lv for lv, x in loss.items() if x > REFERENCE_MAX_LOSS}
    fractures = []
    for lv in ok:
        g = genant_grade(loss[lv])
        if g >= 1:
            h = heights[lv]
            fractures.append(
                {
                    "level": lv,
                    "anterior_height_mm": round(h["anterior_height_mm"], 2),
                    "middle_height_mm": round(h["middle_height_mm"], 2),
                    "posterior_height_mm": round(h["posterior_height_mm"], 2),
                    "height_loss_fraction": round(loss[lv], 3),
                    "grade": g,
                }
            )
    return fractures, {k: round(v, 3) for k, v in loss.items()}


#: Partial vertebrectomy: one posterior half of the body below this fraction of the other
#: (intact levels on the phantoms: 0.84-1.0; a resection of 30 % of the depth: 0.33). [U]
VERTEBRECTOMY_HALF_FRACTION: float = 0.6

#: A facet joint region holding at least this fraction of the neighbouring joints' bone (any
#: vertebra's) is not a facetectomy (on the phantoms: resected joints 0.28-0.47, intact ones
#: >= 0.7). [U]
JOINT_KEPT_FRACTION: float = 0.6

#: Resection calls: a measure below this fraction of the reference (other side and/or the
#: neighbouring levels) counts as missing bone. [U]
MISSING_FRACTION: float = 0.45

#: Bilateral facetectomy: the two joints of a level together below this fraction of the
#: neighbouring levels' joints together, neither above BILATERAL_SIDE_MAX of its own
#: neighbours.  Measured on the phantoms (joint / neighbours' median): resected joints
#: 0.32-0.50 (t11_l3_laminectomy T12-L1 both sides 0.41-0.50, which a side alone misses
#: at 0.45), intact ones >= 0.47 only on one side beside a resected level (midthoracic T6
#: left: vertebrectomy, rib head, laminectomy) with the other side >= 0.65. [U]
BILATERAL_FRACTION: float = 0.5
BILATERAL_SIDE_MAX: float = 0.6


def detect_resections(info: list[dict], names: list[str | None]) -> list[dict]:
    """Resections by comparing each level with its neighbours and its other side.

    Parameters
    ----------
    info : list of dict
        Per-vertebra measurements from :func:`split_parts`.
    names : list of str or None

    Returns
    -------
    list of dict
        ``{"level", "kind", "side", "confidence"}``.
    """
    out: list[dict] = []
    n = len(info)

    def nb_median(key: str, i: int) -> float | None:
        vals = [info[j][key] for j in (i - 1, i + 1) if 0 <= j < n and key in info[j] and names[j] not in (None, "S1")]
        return float(np.median(vals)) if vals else None

    for i, rec in enumerate(info):
        name = names[i]
        if name is None or name == "S1" or "arch_mm3" not in rec:
            continue
        # laminectomy: no midline bone behind the canal at this level's height while the
        # neighbours have it.  Any bone counts, whichever vertebra the flood gave it to (an
        # arch assigned to a neighbour is not a laminectomy: the sacrum took L5's on
        # case_example); the vertebra's own arch measure is not used (thoracic spinous
        # processes of the level above reach behind a resected level and are given to it).
        # A region mostly outside the image (end vertebrae) is not judged.
        ref_any = nb_median("arch_any_mm3", i)
        if (
            ref_any is not None
            and ref_any > 300
            and rec.get("arch_any_mm3", 0.0) < MISSING_FRACTION * ref_any
            and rec.get("arch_region_outside", 0.0) <= ARCH_REGION_MAX_OUTSIDE
        ):
            out.append({"level": name, "kind": "laminectomy", "side": "both",
                        "confidence": round(float(1.0 - rec["arch_any_mm3"] / ref_any), 2)})
        # facetectomy at the joint below this level: inferior process of i + superior of i+1
        if i + 1 < n and names[i + 1] is not None and "facet_sup_left_mm3" in info[i + 1]:
            joint = {s: rec[f"facet_inf_{s}_mm3"] + info[i + 1][f"facet_sup_{s}_mm3"] for s in ("left", "right")}
            nrefs: dict[str, float | None] = {}
            for s in ("left", "right"):
                refs = []
                for j in (i - 1, i + 1):
                    if 0 <= j and j + 1 < n and "facet_inf_left_mm3" in info[j] and "facet_sup_left_mm3" in info[j + 1] and names[j + 1] != "S1":
                        refs.append(info[j][f"facet_inf_{s}_mm3"] + info[j + 1][f"facet_sup_{s}_mm3"])
                nrefs[s] = float(np.median(refs)) if refs else None
            # both joints low together (a bilateral facetectomy): their sum against the
            # neighbours' sums, which averages the two sides' noise
            both = all(x is not None and x > 200 for x in nrefs.values()) and (
                joint["left"] + joint["right"] < BILATERAL_FRACTION * (nrefs["left"] + nrefs["right"])
                and max(joint[s] / nrefs[s] for s in ("left", "right")) < BILATERAL_SIDE_MAX
            )
            for s, o in (("left", "right"), ("right", "left")):
                nref = nrefs[s]
                # low against the other side: the two processes, or any bone in the joint's
                # region whichever vertebra it was assigned to (how the processes of the
                # two sides were split between the vertebrae then does not matter)
                any_s, any_o = rec.get(f"joint_any_{s}_mm3", 0.0), rec.get(f"joint_any_{o}_mm3", 0.0)
                low_side = (joint[s] < MISSING_FRACTION * joint[o] if joint[o] > 200 else False) or (
                    any_o > 200 and any_s < MISSING_FRACTION * any_o
                )
                low_nb = nref is not None and nref > 200 and joint[s] < MISSING_FRACTION * nref
                # any bone in the joint's region, whichever vertebra it was given to: a joint
                # that still holds most of its neighbours' bone was assigned away, not resected
                # (case_example L4/L5 right: the sacrum's flood took L5's processes)
                any_ref = [info[j][f"joint_any_{s}_mm3"] for j in (i - 1, i + 1) if 0 <= j < n and f"joint_any_{s}_mm3" in info[j] and names[j] not in (None, "S1")]
                kept = bool(any_ref) and rec.get(f"joint_any_{s}_mm3", 0.0) >= JOINT_KEPT_FRACTION * float(np.median(any_ref))
                if ((low_nb and (low_side or joint[o] < MISSING_FRACTION * nref)) or both) and not kept:
                    out.append({"level": name, "kind": "facetectomy", "side": s,
                                "confidence": round(float(1.0 - joint[s] / nref), 2)})
        # vertebrectomy (partial): one posterior half of the body much smaller than the other
        # (halves about the anterior half's midline, :func:`_posterior_halves`); it also
        # removes that side's pedicle, which is then not reported as a pediclectomy
        vert_side = None
        if "body_post_left_mm3" in rec:
            bl, br = rec["body_post_left_mm3"], rec["body_post_right_mm3"]
            limit = VERTEBRECTOMY_HALF_FRACTION
        else:
            bl, br = rec["body_left_mm3"], rec["body_right_mm3"]
            limit = 0.8
        if max(bl, br) > 0 and min(bl, br) < limit * max(bl, br):
            vert_side = "left" if bl < br else "right"
            out.append({"level": name, "kind": "vertebrectomy", "side": vert_side,
                        "confidence": round(float(1.0 - min(bl, br) / max(bl, br)), 2)})
        # pediclectomy: pedicle volume far below the other side
        pl, pr = rec["pedicle_left_mm3"], rec["pedicle_right_mm3"]
        if max(pl, pr) > 150 and min(pl, pr) < 0.25 * max(pl, pr):
            s = "left" if pl < pr else "right"
            if s != vert_side:
                out.append({"level": name, "kind": "pediclectomy", "side": s,
                            "confidence": round(float(1.0 - min(pl, pr) / max(pl, pr)), 2)})
        # rib-head resection: thoracic, rib on one side only while neighbours have both
        if name.startswith("T"):
            rl, rr = _ribbed(rec)
            nbs = [j for j in (i - 1, i + 1) if 0 <= j < n and names[j] and str(names[j]).startswith("T")]
            if rl != rr and nbs and all(all(_ribbed(info[j])) for j in nbs):
                s = "left" if not rl else "right"
                out.append({"level": name, "kind": "rib_head_resection", "side": s, "confidence": 0.7})
    return out
