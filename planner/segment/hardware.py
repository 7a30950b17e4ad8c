"""Hardware segmentation: pedicle screws, rods, cross-links and other metal from CT.

:func:`segment_hardware` finds metal, splits the connected construct (screws held by rods,
rods joined by cross-links) into implant objects fitted with sub-voxel accuracy, and paints
their voxels with registry ids.

Method
------
1. **Metal level and thresholds** (:func:`metal_thresholds`).  The stored maximum and the
   bright tail of the histogram give the metal level ``M``: when many voxels sit exactly at
   the maximum the scanner clipped (3071 / 4095 HU, domain.md "CT values") and ``M`` is the
   stored maximum (warning ``PLN-W-CT-001``); otherwise (extended scale, titanium several
   thousand HU) ``M`` is the 90th percentile of the voxels above half the maximum.  Core
   and grow thresholds are fractions of ``M`` floored above cortical bone (hysteresis), and
   components smaller than :data:`MIN_COMPONENT_MM3` are dropped (streak speckle).
2. **Tulips first**.  Inside each component the Euclidean distance to the background
   (mm) exceeds :data:`TULIP_CORE_MM` only inside polyaxial tulip heads, which are thicker
   than any shank, rod or cross-link; every such core is one screw.
3. **Shanks**.  Removing a sphere of :data:`TULIP_ZONE_MM` around each tulip centre leaves
   the shanks as pieces that touch one tulip zone, point away from it along the tulip axis
   and run across the spine (more than :data:`ROD_MAX_ANGLE_DEG` from its long axis).
4. **Screw fit** (:func:`_fit_screw`).  Axis = occupancy-weighted PCA of the shank; the
   metal cross-section area profile along the axis (occupancy from HU, so partial volume
   counts fractionally) gives the shank diameter (plateau), the head (half-way step from
   shank to tulip area, i.e. where the tulip's base sits, as ``Screw.head_lps`` is defined)
   and the tip (tail volume beyond the plateau, with a conical point, see
   :data:`TIP_CONE_FRACTION`).
5. **Rods** (:func:`_fit_rod`).  Metal outside the fitted tulip and shank cylinders is
   assigned to the nearest side's provisional rod (a curve through that side's tulip
   centres); occupancy-weighted centroids of 2 mm slabs along it are fitted with a
   smoothing spline (which bridges the tulips), twice.
6. **Cross-links**: the left-over pieces that run across the spine between the two rods.
7. **Levels and sides**: nearest vertebral body centre to the screw tip when ``vertebrae``
   or ``level_of`` are given (else ``"unknown"``); side from the head's offset from the
   midline along the vertebra's left axis (LPS +x without frames; the midline is then the
   median x of bone voxels).

Label map: every metal voxel of a construct gets the id of the nearest fitted object
surface.  Objects whose level is ``"unknown"`` cannot carry a per-level registry id and are
painted ``other_metal`` (499) until levels are known (see :func:`hardware_label_id`).

Thresholds carry their reason: facts from ``docs/domain.md`` or **[U]** (our choice, reason
given).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from planner.implants import CrossLink, Rod, Screw
from planner.labels.registry import (
    CROSSLINK_BASE,
    HARDWARE_BASE,
    LEVEL_PARTS,
    LEVELS,
    OTHER_METAL,
    ROD_IDS,
)
from planner.segment.morph import bbox
from planner.segment.result import MetalObject
from planner.volume import Volume

log = logging.getLogger(__name__)

# ---- thresholds ---------------------------------------------------------------------------
#: Lowest core (seed) threshold, HU.  Cortical bone reads several hundred to over 1000 HU
#: (domain.md); with noise and metal streaks (a few hundred HU above tissue) bone stays
#: below ~1700 HU [U: margin over 1100 + 300 + 3 SD noise].
CORE_FLOOR_HU: float = 2000.0
#: Lowest grow threshold of the hysteresis, HU [U: above cortical bone + noise (~1200-1400
#: HU) so the grown region never leaks into bone; still takes voxels ~15 % titanium].
GROW_FLOOR_HU: float = 1600.0
#: Core / grow thresholds as fractions of the metal level M [U: 0.4 M keeps voxels about
#: half filled with titanium on an extended scale; 0.2 M the partial-volume rim].
CORE_FRACTION: float = 0.4
GROW_FRACTION: float = 0.2
#: Stored maxima below this are not metal at all [U: = CORE_FLOOR_HU; bone never reaches it].
MIN_METAL_HU: float = CORE_FLOOR_HU
#: Background HU for fractional occupancy ``w = (HU - BG) / (M - BG)`` [U: between soft
#: tissue (~0-50 HU) and cancellous bone (~60-220 HU, domain.md osteoporotic < 100)].
BACKGROUND_HU: float = 100.0
#: Saturation: at least this many voxels exactly at the stored maximum ... [U]
SATURATION_MIN_VOXELS: int = 20
#: ... making at least this fraction of the core voxels [U: extended-scale noise makes ties
#: at the maximum rare; a clipped scanner puts most solid metal there].
SATURATION_MIN_FRACTION: float = 0.02
#: Components smaller than this are dropped, mm^3 [U: streak speckle is a few voxels; the
#: smallest catalogue shank (4.5 x 25 mm, domain.md) is ~400 mm^3].
MIN_COMPONENT_MM3: float = 60.0

# ---- shape ---------------------------------------------------------------------------------
#: Inner distance (mm) above which metal is a tulip head [U: the widest catalogue shank is
#: 7.5 mm (domain.md, radius 3.75) plus ~0.5 mm partial-volume inflation; tulips are
#: ~10-15 mm wide (instruments.md §4b), radius >= 5].
TULIP_CORE_MM: float = 4.6
#: Tulip cores closer than this (mm) are one tulip [U: a tulip is ~12 mm across].
TULIP_MERGE_MM: float = 8.0
#: Radius of the sphere around a tulip centre removed to free the shank, mm [U: covers a
#: 12 x 13 mm tulip (corner at 8.8 mm) plus the rim].
TULIP_ZONE_MM: float = 10.0
#: Largest angle (deg) between a rod piece and the spine's long axis [U: rods follow the
#: spine (kyphosis tilts them < 30 deg locally); shanks run within ~30 deg of the axial plane].
ROD_MAX_ANGLE_DEG: float = 45.0
#: A shank's axis passes this close (mm) to its tulip centre [U: tulip is coaxial].
SHANK_TO_TULIP_MM: float = 4.0
#: Profile bin (mm) along screw and rod axes [U: below half the finest voxel].
PROFILE_BIN_MM: float = 0.25
#: Cone length of the screw tip as a fraction of the diameter [U: common self-tapping screw
#: drawings, cone about half to one diameter long; the phantom uses the same 0.6].
TIP_CONE_FRACTION: float = 0.6
#: Radius of the blunt point, mm [U: as the phantom and common drawings].
TIP_POINT_RADIUS_MM: float = 0.5
#: Rod seat depth as a fraction of the tulip height behind the head [U: the rod rests at
#: the bottom of the U-slot under the set screw, a little above mid-height of the tulip;
#: the phantom uses 0.6].
ROD_SEAT_FRACTION: float = 0.6
#: Screw plausibility: length and shank diameter ranges, mm [U: domain.md 30-55 mm and
#: 4.5-7.5 mm widened for partial volume and short/long catalogue screws].
SCREW_LENGTH_MM: tuple[float, float] = (15.0, 70.0)
SCREW_DIAMETER_MM: tuple[float, float] = (3.0, 9.5)
#: Rod slab (bin) length for cross-section centroids, mm [U].
ROD_BIN_MM: float = 2.0
#: Rod-voxel capture radius beyond the rod radius, mm, first and second pass [U: first pass
#: tolerates the ~1-2 mm offset of tulip centres from the seat].
ROD_CAPTURE_MM: tuple[float, float] = (3.5, 1.2)
#: Knot spacing of the rod's least-squares spline, mm [U: rods are bent smoothly between
#: seats 20-35 mm apart; a knot every 12 mm follows that without fitting slab noise].
ROD_KNOT_MM: float = 12.0
#: A screw's seat counts for a rod when within this distance of the provisional curve, mm,
#: and weighs this many median slabs [U: the seat is measured on the tulip axis, precise
#: laterally; it bridges the tulip where no rod voxel is visible].
SEAT_TO_ROD_MM: float = 6.0
SEAT_WEIGHT: float = 3.0
#: Rod output sampling step, mm [U].
ROD_STEP_MM: float = 2.0
#: Cross-link pieces must run at least this angle (deg) from the spine axis [U].
CROSSLINK_MIN_ANGLE_DEG: float = 60.0
#: A cross-link's ends lie this close (mm) to a rod centre line [U].
CROSSLINK_END_MM: float = 8.0


# ---- public API ----------------------------------------------------------------------------
def segment_hardware(
    ct: Volume,
    *,
    vertebrae: Mapping[str, Any] | Volume | None = None,
    level_of: Callable[[np.ndarray], str | None] | None = None,
) -> tuple[list[Screw], list[Rod], list[CrossLink], list[MetalObject], np.ndarray, dict]:
    """Find and fit pedicle screws, rods, cross-links and other metal in a CT.

    Parameters
    ----------
    ct : Volume
        CT in HU, any storage (clipped at 3071 / 4095 HU or extended scale), any grid
        orientation.  Coded warnings are appended to ``ct.provenance``.
    vertebrae : dict level -> frame, or Volume, optional
        Vertebral bodies for level and side assignment.  Dict values may be objects with
        ``centre_lps`` (and optionally ``R``, columns left/posterior/superior), dicts with
        ``"centre_lps"`` / ``"body_centre"``, or (3,) points.  A label Volume (registry
        ids) gives body centres from the ``<L>_body`` labels.
    level_of : callable, optional
        ``level_of(point_lps (3,)) -> level or None``; used for the screw tip before
        ``vertebrae``.

    Returns
    -------
    screws : list of Screw
        Level ``"unknown"`` when neither ``vertebrae`` nor ``level_of`` tell it.
    rods : list of Rod
    crosslinks : list of CrossLink
    other : list of MetalObject
    labels : (ni, nj, nk) uint16
        Registry ids on the CT grid (0 elsewhere); unknown-level screws and cross-links
        are painted ``other_metal``.
    metal : dict
        Thresholds and how they were derived, stored maximum, saturation, counts, timing.
    """
    t0 = time.perf_counter()
    arr = ct.array
    labels = np.zeros(arr.shape, np.uint16)
    info, found = _metal_components(ct, warn=True)
    counts = {"components": 0, "screws": 0, "rods": 0, "crosslinks": 0, "other_metal": 0}
    info["counts"] = counts
    if found is None:
        info["seconds"] = round(time.perf_counter() - t0, 3)
        return [], [], [], [], labels, info
    box, lab, keep = found
    spacing = ct.spacing
    vox_mm3 = float(np.prod(spacing))
    A = ct.lps_from_ijk
    m_hu = info["metal_level_hu"]
    counts["components"] = int(len(keep))
    offs = np.array([s.start for s in box])

    frames = _frames(vertebrae)
    spine_axis_default = np.array([0.0, 0.0, 1.0])
    midline_x = _midline_x(arr, A, box, frames)

    screws: list[Screw] = []
    rods: list[Rod] = []
    crosslinks: list[CrossLink] = []
    other: list[MetalObject] = []
    objs = find_objects_ids(lab, keep)
    for cid, sl in objs:
        m = lab[sl] == cid
        ijk = np.argwhere(m) + offs + np.array([s.start for s in sl])
        hu = arr[tuple(ijk.T)].astype(float)
        w = np.clip((hu - BACKGROUND_HU) / (m_hu - BACKGROUND_HU), 0.0, 1.0)
        pts = ijk @ A[:3, :3].T + A[:3, 3]
        edt = ndimage.distance_transform_edt(np.pad(m, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        edt_v = edt[m]
        spine_axis = _spine_axis(frames, pts.mean(0), spine_axis_default)
        comp = _Component(pts, w, edt_v, ijk, vox_mm3, spacing)
        def side_of(p: np.ndarray) -> str:
            return _side_of_point(p, frames, midline_x)

        c_screws, c_rods, c_cls, c_other, owner = _split_component(comp, spine_axis, side_of)
        # levels / sides
        for s in c_screws:
            s.level = _level_for(s.tip_lps, frames, level_of)
            s.side = _side_for(s, frames, midline_x)
        for c in c_cls:
            mid = c.centreline_lps.mean(0)
            c.level = _level_for(mid, frames, level_of)
        screws += c_screws
        rods += c_rods
        crosslinks += c_cls
        other += c_other
        ids = _object_ids(c_screws, c_rods, c_cls, len(c_other))
        if len(ids):
            labels[tuple(ijk.T)] = ids[owner]
    rods = _dedupe_rod_sides(rods)
    counts.update(screws=len(screws), rods=len(rods), crosslinks=len(crosslinks),
                  other_metal=len(other))
    info["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("hardware: %d screws, %d rods, %d cross-links, %d other in %.2f s",
             len(screws), len(rods), len(crosslinks), len(other), info["seconds"])
    return screws, rods, crosslinks, other, labels, info


def metal_thresholds(array: np.ndarray) -> dict[str, Any]:
    """Derive metal thresholds from the data (stored maximum and bright tail).

    Parameters
    ----------
    array : (ni, nj, nk) int or float
        CT in HU.

    Returns
    -------
    dict
        ``present`` (bool), ``stored_max_hu``, ``n_at_max``, ``saturated`` (bool),
        ``metal_level_hu`` (M), ``threshold_core_hu``, ``threshold_grow_hu``,
        ``derivation`` (text).
    """
    a = np.asarray(array)
    mx = float(a.max())
    out: dict[str, Any] = {"stored_max_hu": mx, "present": mx >= MIN_METAL_HU,
                           "saturated": False, "n_at_max": 0}
    if not out["present"]:
        out.update(metal_level_hu=None, threshold_core_hu=None, threshold_grow_hu=None,
                   derivation=f"stored maximum {mx:.0f} HU < {MIN_METAL_HU:.0f} HU: no metal")
        return out
    n_at_max = int(np.count_nonzero(a == a.max()))
    bright = a[a >= max(0.5 * mx, CORE_FLOOR_HU)].astype(np.float64)
    n_core = max(int(bright.size), 1)
    saturated = n_at_max >= SATURATION_MIN_VOXELS and n_at_max / n_core >= SATURATION_MIN_FRACTION
    if saturated:
        m = mx
        how = (f"{n_at_max} voxels ({100 * n_at_max / n_core:.0f} % of the bright tail) at the "
               f"stored maximum {mx:.0f} HU: storage clipped, metal level = stored maximum")
    else:
        m = float(np.percentile(bright, 90))
        how = (f"extended scale: metal level = 90th percentile of the {bright.size} voxels "
               f">= {max(0.5 * mx, CORE_FLOOR_HU):.0f} HU (half the stored maximum)")
    core = max(CORE_FLOOR_HU, CORE_FRACTION * m)
    grow = min(max(GROW_FLOOR_HU, GROW_FRACTION * m), core)
    out.update(saturated=bool(saturated), n_at_max=n_at_max, metal_level_hu=m,
               threshold_core_hu=core, threshold_grow_hu=grow,
               derivation=how + f"; core = max({CORE_FLOOR_HU:.0f}, {CORE_FRACTION} M), "
               f"grow = max({GROW_FLOOR_HU:.0f}, {GROW_FRACTION} M), hysteresis")
    return out


def metal_mask(ct: Volume) -> np.ndarray:
    """Voxels (ni, nj, nk) bool of the metal objects :func:`segment_hardware` labels.

    The same hysteresis components (every kept component becomes a screw, rod, cross-link
    or other metal, so its voxels are exactly the non-zero labels), without fitting them:
    what the bone step needs before the levels are known.  No warnings are recorded.
    """
    mask = np.zeros(ct.shape, bool)
    _, found = _metal_components(ct, warn=False)
    if found is not None:
        box, lab, keep = found
        lut = np.zeros(int(lab.max()) + 1, bool)
        lut[keep] = True
        mask[box] = lut[lab]
    return mask


def _metal_components(ct: Volume, *, warn: bool):
    """Thresholds (dict) and, when metal is present, ``(box, labels in box, kept ids)``.

    Hysteresis inside the padded bounding box of the core: components of the grow
    threshold (26-connected) that hold a core voxel and reach :data:`MIN_COMPONENT_MM3`.
    """
    arr = ct.array
    info = metal_thresholds(arr)
    if warn and info["saturated"]:
        ct.provenance.warn(
            "PLN-W-CT-001",
            f"metal saturates the stored range: {info['n_at_max']} voxels at "
            f"{info['stored_max_hu']:.0f} HU; metal shapes are fitted from the clipped image",
            stored_max_hu=info["stored_max_hu"], n_at_max=info["n_at_max"],
        )
    if not info["present"]:
        return info, None
    core_hu, grow_hu = info["threshold_core_hu"], info["threshold_grow_hu"]
    box = _bbox(arr >= core_hu, pad=4)
    sub = arr[box]
    lab, n = ndimage.label(sub >= grow_hu, structure=np.ones((3, 3, 3), bool))
    core_ids = np.unique(lab[sub >= core_hu])
    core_ids = core_ids[core_ids > 0]
    sizes = np.bincount(lab.ravel(), minlength=n + 1) * float(np.prod(ct.spacing))
    keep = core_ids[sizes[core_ids] >= MIN_COMPONENT_MM3]
    return info, (box, lab, keep)


def hardware_label_id(kind: str, level: str = "unknown", side: str = "left") -> int:
    """Registry id of a hardware object (``other_metal`` when the level is unknown).

    Parameters
    ----------
    kind : {"screw", "rod", "crosslink", "other"}
    level : str
        ``"T1"`` ... ``"S1"`` or ``"unknown"``.
    side : {"left", "right"}
    """
    if kind == "rod":
        return ROD_IDS.get(side, OTHER_METAL)
    if level not in LEVELS:
        return OTHER_METAL
    n = LEVELS.index(level)
    if kind == "screw":
        return HARDWARE_BASE + 2 * n + (0 if side == "left" else 1)
    if kind == "crosslink":
        return CROSSLINK_BASE + n
    return OTHER_METAL


# ---- component splitting ------------------------------------------------------------------
class _Component:
    """Voxels of one metal component: LPS points (n, 3), occupancy (n,), inner distance (n,)."""

    def __init__(self, pts, w, edt, ijk, vox_mm3, spacing):
        self.pts = pts
        self.w = w
        self.edt = edt
        self.ijk = ijk
        self.vox_mm3 = vox_mm3
        self.spacing = np.asarray(spacing, float)


def find_objects_ids(lab: np.ndarray, ids: np.ndarray) -> list[tuple[int, tuple[slice, ...]]]:
    """``(id, slices)`` of the given label ids (``ndimage.find_objects`` restricted)."""
    sls = ndimage.find_objects(lab)
    return [(int(i), sls[int(i) - 1]) for i in ids if sls[int(i) - 1] is not None]


def _split_component(comp: _Component, s_axis: np.ndarray, side_of):
    pts, w = comp.pts, comp.w
    tulips = _tulip_centres(comp)
    screws: list[Screw] = []
    if len(tulips):
        d_t = np.linalg.norm(pts[:, None, :] - tulips[None, :, :], axis=2)  # (n, nt)
        zone = d_t.min(1) < TULIP_ZONE_MM
        pieces = _pieces(comp, ~zone)
        shank_of: dict[int, list[np.ndarray]] = {}
        for idx in pieces:
            c, d, _ = _pca(pts[idx], w[idx])
            near = np.nonzero(d_t[idx].min(0) < TULIP_ZONE_MM + 1.5 * comp.spacing.max())[0]
            if len(near) != 1:
                continue
            j = int(near[0])
            if _angle(d, s_axis) < ROD_MAX_ANGLE_DEG:
                continue
            v = tulips[j] - c
            if np.linalg.norm(v - (v @ d) * d) > SHANK_TO_TULIP_MM:
                continue
            shank_of.setdefault(j, []).append(idx)
        fitted = []
        for j, idxs in shank_of.items():
            idx = np.concatenate(idxs)
            s = _fit_screw(comp, idx, tulips[j])
            if s is not None:
                fitted.append(s)
        screws = [f[0] for f in fitted]
    elif _looks_like_screw(comp):
        s = _fit_screw_no_tulip(comp)
        if s is not None:
            screws = [s[0]]
            fitted = [s]
    if not screws:
        fitted = []

    # metal not explained by screws -> rods / cross-links
    covered = np.zeros(len(pts), bool)
    for s, extra in fitted:
        covered |= _inside_screw(pts, s, extra, margin=1.0)
    rest = ~covered
    rods: list[Rod] = []
    cls: list[CrossLink] = []
    if rest.sum() * comp.vox_mm3 >= MIN_COMPONENT_MM3:
        rods = _fit_rods(comp, rest, fitted, s_axis, side_of)
        if rods:
            on_rod = np.zeros(len(pts), bool)
            for r in rods:
                on_rod |= _dist_polyline(pts, r.centreline_lps) < r.diameter_mm / 2 + 1.5
            left = rest & ~on_rod
            cls = _fit_crosslinks(comp, left, rods, s_axis)
    other: list[MetalObject] = []
    if not screws and not rods and not cls:
        other = [_other_metal(comp)]
    owner = _owner(pts, screws, fitted, rods, cls, len(other))
    return screws, rods, cls, other, owner


def _tulip_centres(comp: _Component) -> np.ndarray:
    """Centres (nt, 3) of the tulip cores (inner distance > TULIP_CORE_MM), merged."""
    core = comp.edt >= TULIP_CORE_MM
    if not core.any():
        return np.zeros((0, 3))
    pc, ec = comp.pts[core], comp.edt[core]
    # single-linkage clustering of core voxels within TULIP_MERGE_MM
    from scipy.cluster.hierarchy import fcluster, linkage

    if len(pc) == 1:
        return pc.copy()
    cl = fcluster(linkage(pc, "single"), TULIP_MERGE_MM, criterion="distance")
    out = []
    for k in np.unique(cl):
        sel = cl == k
        wt = ec[sel] - TULIP_CORE_MM + 0.1
        out.append((pc[sel] * wt[:, None]).sum(0) / wt.sum())
    return np.array(out)


def _pieces(comp: _Component, sel: np.ndarray) -> list[np.ndarray]:
    """Connected pieces (26-neighbourhood) of the selected voxels, as index arrays."""
    idx = np.nonzero(sel)[0]
    if len(idx) == 0:
        return []
    ijk = comp.ijk[idx]
    lo = ijk.min(0)
    shape = ijk.max(0) - lo + 1
    g = np.zeros(shape, np.int32)
    g[tuple((ijk - lo).T)] = 1
    lab, n = ndimage.label(g, structure=np.ones((3, 3, 3), bool))
    pl = lab[tuple((ijk - lo).T)]
    order = np.argsort(pl, kind="stable")
    bounds = np.searchsorted(pl[order], np.arange(1, n + 2))
    out = []
    for k in range(n):
        part = idx[order[bounds[k]:bounds[k + 1]]]
        if len(part) * comp.vox_mm3 >= 0.25 * MIN_COMPONENT_MM3:
            out.append(part)
    return out


def _pca(p: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted centroid (3,), principal direction (3,) and eigenvalues (3,) descending."""
    ws = w.sum()
    if ws <= 0:
        w = np.ones(len(p))
        ws = float(len(p))
    c = (p * w[:, None]).sum(0) / ws
    q = p - c
    cov = (q * w[:, None]).T @ q / ws
    ev, evec = np.linalg.eigh(cov)
    return c, evec[:, -1], ev[::-1]


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (deg, 0-90) between two lines."""
    c = abs(float(a @ b)) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(min(c, 1.0))))


def _profile(t: np.ndarray, w: np.ndarray, vox_mm3: float, smooth_mm: float):
    """Area profile (mm^2) along an axis: linear binning then box smoothing.

    Parameters
    ----------
    t : (n,) float
        Axial coordinate of each voxel, mm.
    w : (n,) float
        Occupancy 0-1.
    vox_mm3 : float
    smooth_mm : float
        Box width (the voxel footprint along the axis).

    Returns
    -------
    tb : (m,) float
        Bin centres.
    a : (m,) float
        Area, mm^2 (metal volume per mm of axis).
    """
    h = PROFILE_BIN_MM
    t0 = float(t.min()) - 2 * smooth_mm
    n = int(np.ceil((float(t.max()) + 2 * smooth_mm - t0) / h)) + 2
    x = (t - t0) / h
    i0 = np.floor(x).astype(int)
    f = x - i0
    hist = np.bincount(i0, w * (1 - f), minlength=n) + np.bincount(i0 + 1, w * f, minlength=n)
    hist = hist[:n]
    k = max(int(round(smooth_mm / h)), 1)
    a = ndimage.uniform_filter1d(hist, k, mode="constant") * vox_mm3 / h
    return t0 + np.arange(n) * h, a


def _crossing(tb: np.ndarray, a: np.ndarray, level: float, start: int, step: int) -> float | None:
    """First position from bin ``start`` walking by ``step`` where ``a`` crosses ``level``."""
    i = start
    above = a[i] > level
    while 0 <= i + step < len(a):
        j = i + step
        if (a[j] > level) != above:
            f = (level - a[i]) / (a[j] - a[i])
            return float(tb[i] + f * (tb[j] - tb[i]))
        i = j
    return None


def _fit_screw(comp: _Component, shank_idx: np.ndarray, tulip: np.ndarray):
    """Fit one screw from its shank voxels and tulip centre; returns (Screw, extra) or None."""
    pts, w = comp.pts, comp.w
    c, d, _ = _pca(pts[shank_idx], w[shank_idx])
    if (c - tulip) @ d < 0:
        d = -d
    smooth = float(np.abs(comp.spacing * np.ones(3)).max())
    for _ in range(2):
        q = pts - c
        t = q @ d
        r = np.linalg.norm(q - t[:, None] * d, axis=1)
        t_tul = float((tulip - c) @ d)
        # shank: voxels near the axis beyond the tulip zone
        sel_all = r < 9.0
        tb, a = _profile(t[sel_all], w[sel_all], comp.vox_mm3, smooth)
        in_shank = (tb > t_tul + TULIP_ZONE_MM) & (a > 0)
        if in_shank.sum() < 4:
            return None
        t_sh = tb[in_shank]
        mid = (t_sh > np.percentile(t_sh, 20)) & (t_sh < np.percentile(t_sh, 70))
        a_sh = float(np.median(a[in_shank][mid])) if mid.any() else float(np.median(a[in_shank]))
        near_t = np.abs(tb - t_tul) < 3.0
        a_tu = float(np.median(a[near_t])) if near_t.any() else 4 * a_sh
        if a_tu < 1.5 * a_sh:
            return None
        # head: walking from the shank toward the tulip, where area reaches the mid level
        i_start = int(np.nonzero(in_shank)[0][0] + np.argmax(mid))
        t_head = _crossing(tb, a, 0.5 * (a_sh + a_tu), i_start, -1)
        # end of plateau toward the tip
        t_end = _crossing(tb, a, 0.8 * a_sh, i_start, +1)
        if t_head is None or t_end is None:
            return None
        # refine the axis on the shank between head and plateau end
        shank = sel_all & (t > t_head + 1.5) & (t < t_end - 0.5) & (r < np.sqrt(a_sh / np.pi) + 2.0)
        if shank.sum() < 10:
            break
        c_new, d_new, _ = _pca(pts[shank], w[shank])
        if d_new @ d < 0:
            d_new = -d_new
        c, d = c_new, d_new
    r_sh = float(np.sqrt(a_sh / np.pi))
    diameter = 2 * r_sh
    # tip: tail volume beyond t_b (2 mm inside the plateau) = cylinder + cone with a point
    t_b = t_end - 2.0
    tail = tb > t_b
    v_tail = float(a[tail].sum() * PROFILE_BIN_MM)
    h_c = TIP_CONE_FRACTION * diameter
    r_t = min(TIP_POINT_RADIUS_MM, r_sh)
    v_cone = np.pi * h_c / 3.0 * (r_sh**2 + r_sh * r_t + r_t**2)
    l_cyl = (v_tail - v_cone) / a_sh
    t_tip = t_b + max(l_cyl, 0.0) + h_c
    head = c + d * t_head
    tip = c + d * t_tip
    # tulip: diameter from the area just behind the head, height from its far end
    behind = (tb < t_head - 1.0) & (tb > t_head - 4.0)
    a_tb = float(np.median(a[behind])) if behind.any() else a_tu
    t_top = _crossing(tb, a, 0.5 * a_tb, int(np.searchsorted(tb, t_head - 2.0)), -1)
    tul_d = 2 * np.sqrt(a_tb / np.pi)
    tul_h = (t_head - t_top) if t_top is not None else 2 * (t_head - t_tul)
    # rod seat: on the tulip axis (the rod lies in the tulip's U-slot, centred on the axis)
    # at ROD_SEAT_FRACTION of the tulip height behind the head.  Nothing in the image shows
    # the rod inside the tulip (both are solid metal), and the rod stubs outside the tulip
    # are too short at end screws to locate it, hence a design prior.
    seat = head - d * (ROD_SEAT_FRACTION * tul_h)
    length = float(np.linalg.norm(tip - head))
    if not (SCREW_LENGTH_MM[0] <= length <= SCREW_LENGTH_MM[1]) or not (
        SCREW_DIAMETER_MM[0] <= diameter <= SCREW_DIAMETER_MM[1]
    ):
        log.debug("screw candidate rejected: length %.1f mm, diameter %.1f mm", length, diameter)
        return None
    s = Screw(level="unknown", side="left", head_lps=head, tip_lps=tip,
              diameter_mm=round(float(diameter), 2), tulip_diameter_mm=round(float(tul_d), 2),
              tulip_height_mm=round(float(tul_h), 2))
    return s, {"tulip_centre": tulip, "seat": seat}


def _looks_like_screw(comp: _Component) -> bool:
    c, d, ev = _pca(comp.pts, comp.w)
    t = (comp.pts - c) @ d
    length = float(t.max() - t.min())
    vol = float(comp.w.sum() * comp.vox_mm3)
    dia = 2 * np.sqrt(vol / max(length, 1e-6) / np.pi)
    return (SCREW_LENGTH_MM[0] <= length <= SCREW_LENGTH_MM[1]
            and SCREW_DIAMETER_MM[0] <= dia <= SCREW_DIAMETER_MM[1] and ev[1] < 0.1 * ev[0])


def _fit_screw_no_tulip(comp: _Component):
    """A straight screw without a tulip (monoaxial or loose): head = posterior end."""
    c, d, _ = _pca(comp.pts, comp.w)
    if d[1] > 0:  # LPS +y is posterior: make d point anterior (head -> tip)
        d = -d
    t = (comp.pts - c) @ d
    smooth = float(comp.spacing.max())
    tb, a = _profile(t, comp.w, comp.vox_mm3, smooth)
    a_sh = float(np.median(a[a > 0.3 * a.max()]))
    i_mid = int(np.argmin(np.abs(tb)))
    t_head = _crossing(tb, a, 0.5 * a_sh, i_mid, -1)
    t_tip = _crossing(tb, a, 0.5 * a_sh, i_mid, +1)
    if t_head is None or t_tip is None:
        return None
    s = Screw("unknown", "left", c + d * t_head, c + d * t_tip,
              diameter_mm=round(2 * float(np.sqrt(a_sh / np.pi)), 2),
              tulip_diameter_mm=0.0, tulip_height_mm=0.0)
    return s, {"tulip_centre": None, "seat": None}


def _inside_screw(pts: np.ndarray, s: Screw, extra: dict, margin: float) -> np.ndarray:
    """Voxels within ``margin`` mm of a fitted screw's shank or tulip cylinder, (n,) bool."""
    d = s.axis
    q = pts - s.head_lps
    t = q @ d
    r = np.linalg.norm(q - t[:, None] * d, axis=1)
    shank = (t > -margin) & (t < s.length_mm + margin) & (r < s.diameter_mm / 2 + margin)
    tul = (t > -s.tulip_height_mm - margin) & (t <= 0.5) & (r < s.tulip_diameter_mm / 2 + margin)
    return shank | tul


# ---- rods ------------------------------------------------------------------------------------
def _dist_polyline(p: np.ndarray, poly: np.ndarray, return_s: bool = False):
    """Distance (n,) of points (n, 3) to a polyline (m, 3); optionally arc length (n,).

    Exact.  Long polylines (rods: a vertex every :data:`ROD_STEP_MM`) are not looped over
    in full for every point: each point is tested against the segments whose midpoints are
    its :data:`_POLY_K` nearest (k-d tree), and only a point whose k-th midpoint is not
    provably farther than the best distance found (midpoint distance minus the longest
    half segment) is tested against every segment.
    """
    p = np.asarray(p, float)
    poly = np.asarray(poly, float)
    a = poly[:-1]
    ab = poly[1:] - a
    L2 = np.maximum((ab * ab).sum(1), 1e-12)
    L = np.sqrt(L2)
    cum = np.concatenate([[0.0], np.cumsum(L)])
    best = np.full(len(p), np.inf)
    s_best = np.zeros(len(p))

    def test(q, seg, b, sb) -> None:
        # points q (r, 3) against segment seg (an int, or one index per point): b, sb in place
        d = q - a[seg]
        dot = d @ ab[seg] if np.ndim(seg) == 0 else np.einsum("ij,ij->i", d, ab[seg])
        tt = np.clip(dot / L2[seg], 0.0, 1.0)
        dd = np.linalg.norm(d - tt[:, None] * ab[seg], axis=1)
        upd = dd < b
        b[upd] = dd[upd]
        sb[upd] = cum[seg] + tt[upd] * L[seg] if np.ndim(seg) == 0 else (cum[seg] + tt * L[seg])[upd]

    if len(a) <= 2 * _POLY_K or len(p) == 0:
        for k in range(len(a)):
            test(p, k, best, s_best)
    else:
        from scipy.spatial import cKDTree

        dm, near = cKDTree(a + 0.5 * ab).query(p, k=_POLY_K)
        for j in range(_POLY_K):
            test(p, near[:, j], best, s_best)
        full = np.nonzero(dm[:, -1] - 0.5 * L.max() <= best)[0]
        if full.size:
            q, b, sb = p[full], best[full], s_best[full]
            for k in range(len(a)):
                test(q, k, b, sb)
            best[full], s_best[full] = b, sb
    return (best, s_best) if return_s else best


#: Nearest segment midpoints tested per point by :func:`_dist_polyline` before the exact check.
_POLY_K = 6


def _smooth_curve(s: np.ndarray, xyz: np.ndarray, wts: np.ndarray, s_out: np.ndarray) -> np.ndarray:
    """Least-squares cubic spline x(s), y(s), z(s) through weighted samples, at ``s_out``.

    Interior knots sit at quantiles of ``s`` every :data:`ROD_KNOT_MM` of arc length, so
    every knot interval holds data (Schoenberg-Whitney) and gaps (tulips) are bridged by a
    cubic without oscillation.

    Parameters
    ----------
    s : (n,) float
        Arc length of the samples.
    xyz : (n, 3) float
    wts : (n,) float
        Sample weights.
    s_out : (m,) float

    Returns
    -------
    (m, 3) float
    """
    from scipy.interpolate import make_lsq_spline

    order = np.argsort(s)
    s, xyz, wts = s[order], xyz[order], wts[order]
    keep = np.concatenate([[True], np.diff(s) > 1e-6])
    s, xyz, wts = s[keep], xyz[keep], wts[keep]
    n = len(s)
    if n < 2:
        return np.repeat(xyz[:1], len(s_out), 0)
    length = float(s[-1] - s[0])
    n_int = min(int(length / ROD_KNOT_MM), max(n - 5, 0))
    k = 3 if n >= n_int + 4 else 1
    inner = np.quantile(s, np.linspace(0, 1, n_int + 2)[1:-1]) if n_int > 0 else np.zeros(0)
    t = np.concatenate([[s[0]] * (k + 1), inner, [s[-1]] * (k + 1)])
    try:
        spl = make_lsq_spline(s, xyz, t, k=k, w=np.sqrt(wts / wts.max()), axis=0)
    except (ValueError, np.linalg.LinAlgError):
        spl = make_lsq_spline(s, xyz, np.r_[[s[0]] * 2, [s[-1]] * 2], k=1, axis=0)
    return spl(s_out)


def _fit_rods(comp: _Component, rest: np.ndarray, fitted, s_axis, side_of) -> list[Rod]:
    """Rod centre lines from the metal outside the screws, seeded by the tulip centres."""
    pts, w = comp.pts, comp.w
    seeds: list[np.ndarray | None] = []
    sides: list[str | None] = []
    if fitted:
        cen = np.array([_seed_point(f) for f in fitted])
        lab = np.array([side_of(p) for p in cen])
        for side in ("left", "right"):
            if (lab == side).any():
                seeds.append(cen[lab == side])
                sides.append(side)
    else:
        seeds.append(None)  # a rod on its own: seed with the PCA line
        sides.append(None)
    rods = []
    idx_rest = np.nonzero(rest)[0]
    prov = []
    for sd in seeds:
        if sd is None:
            c, d, _ = _pca(pts[rest], w[rest])
            t = (pts[rest] - c) @ d
            prov.append(np.stack([c + d * t.min(), c + d * t.max()]))
            continue
        order = np.argsort(sd @ s_axis)
        sd = sd[order]
        if len(sd) == 1:
            sd = np.stack([sd[0] - 10 * s_axis, sd[0] + 10 * s_axis])
        tan0 = sd[1] - sd[0]
        tan1 = sd[-1] - sd[-2]
        ext = np.vstack([sd[0] - 20 * tan0 / np.linalg.norm(tan0), sd,
                         sd[-1] + 20 * tan1 / np.linalg.norm(tan1)])
        prov.append(ext)
    if not prov:
        return rods
    p_rest = pts[idx_rest]
    dists = np.stack([_dist_polyline(p_rest, pl) for pl in prov], 1)
    nearest = np.argmin(dists, 1)
    for k, pl in enumerate(prov):
        cap = ROD_CAPTURE_MM[0] + 3.0
        curve = pl
        diameter = 5.5
        ok = True
        for pas in range(2):
            dd, ss = _dist_polyline(p_rest, curve, return_s=True)
            sel = (dd < cap) & (nearest == k) if pas == 0 else (dd < cap)
            if sel.sum() * comp.vox_mm3 < MIN_COMPONENT_MM3:
                ok = False
                break
            # reject pieces that run across the spine (shank stubs, cross-link ends) per slab
            sb = np.floor(ss[sel] / ROD_BIN_MM).astype(int)
            sb -= sb.min()
            nb = sb.max() + 1
            wv = w[idx_rest][sel]
            W = np.bincount(sb, wv, nb)
            C = np.stack([np.bincount(sb, wv * p_rest[sel][:, i], nb) for i in range(3)], 1)
            S = np.bincount(sb, wv * ss[sel], nb)
            good = W > 0.35 * np.median(W[W > 0])
            cen = C[good] / W[good, None]
            s_c = S[good] / W[good]
            area = W[good] * comp.vox_mm3 / ROD_BIN_MM
            # seats of the screws on this rod are samples too (they bridge the tulips)
            seats = np.array([f[1]["seat"] for f in fitted if f[1].get("seat") is not None])
            if len(seats):
                ds, s_s = _dist_polyline(seats, curve, return_s=True)
                on = ds < SEAT_TO_ROD_MM
                if on.any():
                    s_c = np.concatenate([s_c, s_s[on]])
                    cen = np.vstack([cen, seats[on]])
                    W_seat = np.full(int(on.sum()), SEAT_WEIGHT * float(np.median(W[good])))
                else:
                    W_seat = np.zeros(0)
            else:
                W_seat = np.zeros(0)
            wts = np.concatenate([W[good], W_seat])
            # full slabs (not the end caps) set the diameter
            inner = area > 0.5 * np.median(area)
            diameter = 2 * float(np.sqrt(np.median(area[inner]) / np.pi))
            # rod ends: rounded caps, the centre line stops one radius before the metal's
            # extreme [U: as the phantom's capsule; a flat-ended rod comes out one radius short]
            s_lo = float(ss[sel].min()) + diameter / 2
            s_hi = float(ss[sel].max()) - diameter / 2
            if s_hi <= s_lo:
                ok = False
                break
            s_out = np.linspace(s_lo, s_hi, max(int(np.ceil((s_hi - s_lo) / ROD_STEP_MM)) + 1, 2))
            curve = _smooth_curve(s_c, cen, wts, s_out)
            log.debug("rod pass %d: samples %s", pas, np.round(np.c_[s_c, cen], 1).tolist())
            cap = diameter / 2 + ROD_CAPTURE_MM[1]
        if not ok or len(curve) < 2:
            continue
        length = float(np.linalg.norm(np.diff(curve, axis=0), axis=1).sum())
        if length < 20.0 or _angle(curve[-1] - curve[0], s_axis) > ROD_MAX_ANGLE_DEG:
            continue
        side = sides[k] or side_of(curve.mean(0))
        rods.append(Rod(side=side, centreline_lps=curve, diameter_mm=round(diameter, 2)))
    return rods


def _seed_point(f) -> np.ndarray:
    """Best guess of where the rod crosses a fitted screw: seat, tulip centre or head."""
    s, extra = f
    for k in ("seat", "tulip_centre"):
        if extra.get(k) is not None:
            return np.asarray(extra[k], float)
    return s.head_lps


def _fit_crosslinks(comp: _Component, sel: np.ndarray, rods: list[Rod], s_axis) -> list[CrossLink]:
    out: list[CrossLink] = []
    if len(rods) < 2 or sel.sum() == 0:
        return out
    for idx in _pieces(comp, sel):
        if len(idx) * comp.vox_mm3 < MIN_COMPONENT_MM3:
            continue
        c, d, _ = _pca(comp.pts[idx], comp.w[idx])
        if _angle(d, s_axis) < CROSSLINK_MIN_ANGLE_DEG:
            continue
        t = (comp.pts[idx] - c) @ d
        ends = np.stack([c + d * t.min(), c + d * t.max()])
        near = [int(np.argmin([_dist_polyline(e[None], r.centreline_lps)[0] for r in rods]))
                for e in ends]
        dmin = [min(_dist_polyline(e[None], r.centreline_lps)[0] for r in rods) for e in ends]
        if near[0] == near[1] or max(dmin) > CROSSLINK_END_MM:
            continue
        # centre line: slab centroids along the bar, ends snapped to the rods
        nb = 5
        edges = np.linspace(t.min(), t.max(), nb + 1)
        b = np.clip(np.searchsorted(edges, t) - 1, 0, nb - 1)
        W = np.bincount(b, comp.w[idx], nb)
        cen = np.stack([np.bincount(b, comp.w[idx] * comp.pts[idx][:, i], nb) for i in range(3)], 1)
        cen = cen[W > 0] / W[W > 0, None]
        e0 = _closest_on(rods[near[0]].centreline_lps, ends[0])
        e1 = _closest_on(rods[near[1]].centreline_lps, ends[1])
        line = np.vstack([e0, cen[1:-1], e1])
        area = comp.w[idx].sum() * comp.vox_mm3 / max(float(t.max() - t.min()), 1.0)
        out.append(CrossLink(level="unknown", centreline_lps=line,
                             diameter_mm=round(2 * float(np.sqrt(area / np.pi)), 2)))
    return out


def _closest_on(poly: np.ndarray, p: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(poly - p, axis=1)
    return poly[int(np.argmin(d))]


def _other_metal(comp: _Component) -> MetalObject:
    vol = float(comp.w.sum() * comp.vox_mm3)
    # [U] crude size classes: interbody cages / vertebral body prostheses are bulky
    kind = "cage" if vol > 3000.0 else "unknown"
    return MetalObject(kind=kind, centroid_lps=(comp.pts * comp.w[:, None]).sum(0) / comp.w.sum(),
                       volume_mm3=vol, bounds_lps=np.stack([comp.pts.min(0), comp.pts.max(0)]))


# ---- labels -----------------------------------------------------------------------------------
def _owner(pts, screws, fitted, rods, cls, n_other) -> np.ndarray:
    """Index of the nearest object surface for every voxel (order: screws, rods, cls, other)."""
    cols = []
    for s in screws:
        d = s.axis
        q = pts - s.head_lps
        t = q @ d
        r = np.linalg.norm(q - t[:, None] * d, axis=1)
        dsh = np.hypot(np.maximum(r - s.diameter_mm / 2, 0),
                       np.maximum(np.maximum(-t, t - s.length_mm), 0))
        dtu = np.hypot(np.maximum(r - s.tulip_diameter_mm / 2, 0),
                       np.maximum(np.maximum(t, -t - s.tulip_height_mm), 0))
        cols.append(np.minimum(dsh, dtu))
    for r_ in list(rods) + list(cls):
        # rods and bars win inside a tulip they pass through (as the registry's label
        # priority does): -1 inside their radius + half a voxel [U]
        dd = _dist_polyline(pts, r_.centreline_lps) - r_.diameter_mm / 2
        cols.append(np.where(dd < 0.5, -1.0, np.maximum(dd, 0.0)))
    if not cols:
        return np.zeros(len(pts), int)
    return np.argmin(np.stack(cols, 1), 1)


def _object_ids(screws, rods, cls, n_other) -> np.ndarray:
    ids = [hardware_label_id("screw", s.level, s.side) for s in screws]
    ids += [hardware_label_id("rod", side=r.side) for r in rods]
    ids += [hardware_label_id("crosslink", c.level) for c in cls]
    ids += [OTHER_METAL] * n_other
    return np.array(ids, np.uint16)


# ---- levels and sides ----------------------------------------------------------------------
def _frames(vertebrae) -> dict[str, dict[str, np.ndarray]]:
    """Normalise ``vertebrae`` to ``{level: {"centre": (3,), "R": (3, 3) or None}}``."""
    if vertebrae is None:
        return {}
    if isinstance(vertebrae, Volume):
        lab = vertebrae.array
        out = {}
        body = LEVEL_PARTS.index("body")
        ids = np.unique(lab)
        for n, lev in enumerate(LEVELS):
            i = 100 + 10 * n + body
            if i in ids:
                cen = ndimage.center_of_mass(lab == i)
                out[lev] = {"centre": vertebrae.lps_from_index(np.array(cen))[0], "R": None}
        return out
    out = {}
    for lev, f in vertebrae.items():
        if isinstance(f, Mapping):
            c = f.get("centre_lps", f.get("body_centre"))
            if c is None and "landmarks" in f:
                c = f["landmarks"].get("body_centre")
            R = f.get("R")
        elif hasattr(f, "centre_lps"):
            c, R = f.centre_lps, getattr(f, "R", None)
        else:
            c, R = f, None
        out[str(lev)] = {"centre": np.asarray(c, float).reshape(3),
                         "R": None if R is None else np.asarray(R, float)}
    return out


def _nearest_frame(frames, p):
    if not frames:
        return None, None
    levs = list(frames)
    d = [np.linalg.norm(frames[k]["centre"] - p) for k in levs]
    k = levs[int(np.argmin(d))]
    return k, frames[k]


def _level_for(p: np.ndarray, frames, level_of) -> str:
    if level_of is not None:
        lev = level_of(np.asarray(p, float))
        if lev:
            return str(lev)
    lev, _ = _nearest_frame(frames, p)
    return lev or "unknown"


def _spine_axis(frames, p, default):
    _, f = _nearest_frame(frames, p)
    if f is not None and f["R"] is not None:
        return f["R"][:, 2] / np.linalg.norm(f["R"][:, 2])
    return default


def _side_for(s: Screw, frames, midline_x: float) -> str:
    """Side of a screw: its head's offset from the midline (heads are lateral)."""
    return _side_of_point(s.head_lps, frames, midline_x)


def _side_of_point(p: np.ndarray, frames, midline_x: float) -> str:
    """Side of a point: offset from the nearest body centre along its left axis, else x."""
    _, f = _nearest_frame(frames, p)
    if f is not None:
        u = f["R"][:, 0] if f["R"] is not None else np.array([1.0, 0.0, 0.0])
        return "left" if (np.asarray(p) - f["centre"]) @ u > 0 else "right"
    return "left" if float(p[0]) > midline_x else "right"


def _dedupe_rod_sides(rods: list[Rod]) -> list[Rod]:
    """Two pieces of rod on one side stay separate objects; nothing to merge here."""
    return rods


def _midline_x(arr: np.ndarray, A: np.ndarray, box, frames) -> float:
    """LPS x of the midline: mean frame centre, else median x of bone voxels near the metal.

    Bone: 300-1500 HU [U: cancellous/cortical range of domain.md, below metal], sampled
    every 2nd voxel in the metal's slab.
    """
    if frames:
        return float(np.mean([f["centre"][0] for f in frames.values()]))
    sl = tuple(slice(None) if ax < 2 else box[ax] for ax in range(3))
    sub = arr[sl][::2, ::2, ::2]
    ijk = np.argwhere((sub > 300) & (sub < 1500)) * 2
    if len(ijk) < 50:
        return 0.0
    ijk[:, 2] += box[2].start
    x = ijk @ A[0, :3] + A[0, 3]
    return float(np.median(x))


def _bbox(mask: np.ndarray, pad: int) -> tuple[slice, slice, slice]:
    """:func:`planner.segment.morph.bbox` of ``mask`` padded by ``pad`` voxels (clipped)."""
    return tuple(slice(max(0, b.start - pad), min(n, b.stop + pad))
                 for b, n in zip(bbox(mask), mask.shape))  # type: ignore[return-value]
