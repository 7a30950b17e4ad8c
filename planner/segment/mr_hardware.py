"""Pedicle screws and rods on MR: signal voids fitted as implant axes, with MR uncertainty.

Metal gives no MR signal, and titanium's susceptibility (about 190 ppm above tissue)
dephases and displaces the signal around it (see :mod:`planner.phantom.mr`): the void is
**larger** than the implant (blooming) and **shifted along the readout** direction.  A void
therefore tells where an implant lies and along which axis, but not its diameter; and a
void is not proof of metal (air, lung, cortex and flowing blood are dark too).

Method (:func:`segment_hardware_mr`)
------------------------------------
1. **Body outline**: signal above :data:`BODY_FRACTION` of the 99th percentile, largest
   component, holes filled slice by slice (lungs and voids inside the body count as body).
   No outline -> :class:`planner.errors.PlannerError` ``PLN-SEG-005``.
2. **Noise**: Rayleigh statistics of the air outside the outline (``sd = median / 1.1774``);
   without air in the field of view, the median absolute difference of neighbouring body
   voxels (``sd = MAD / (0.6745 * sqrt(2))``).
3. **Voids**: the lightly smoothed image below :data:`VOID_NOISE_SD` noise SDs, at least
   :data:`BODY_MARGIN_MM` inside the outline, where the **local tissue background** (the
   image averaged over non-void body voxels, Gaussian :data:`BACKGROUND_SIGMA_MM`) is at
   least :data:`BACKGROUND_CONTRAST` times the void threshold (a void *within* tissue).
   Components thicker than :data:`MAX_VOID_RADIUS_MM` (lung, bowel gas) or smaller than
   :data:`MIN_VOID_MM3` (noise, thin cortex) are dropped.
4. **Splitting a construct**: screws, tulips and rods of one side form one void.  In each
   slice across the long axis (the grid axis closest to patient z), a component's void
   area below :data:`ROD_SECTION_MAX_MM2` is rod (a rod runs along B0, blooms little and
   is partly filled by readout-shifted signal) and is removed: the screws separate.
5. **Screws**: occupancy-weighted PCA of each piece (occupancy ``1 - signal / local
   background``); a piece is a screw when its extent along the axis is within
   :data:`SCREW_VOID_LENGTH_MM`, it is roughly straight (second / first PCA SD below
   :data:`SCREW_MAX_SPREAD_RATIO`, the tulip bloom makes one end thick) and it runs across
   the spine (more than :data:`SCREW_MIN_ANGLE_DEG` from the long axis).  The axis is
   refitted on the anterior part (beyond :data:`SHANK_SKIP_FRACTION`), away from the tulip
   bloom.  Head -> tip points anteriorly (patient +y is posterior).  **Tip**: the anterior
   end of the void minus :data:`TIP_BLOOM_MM` (a lower bound: the void may end before the
   tip, :data:`TIP_SHORTFALL_MM`).  **Head**: walking back from the tip, where the void's
   cross-section first exceeds :data:`HEAD_AREA_RATIO` times the shank's (the tulip's bloom).
   **Rods**: per side with two or more screws, the centre line through the screws' rod
   seats (implant model, :attr:`planner.implants.Screw.rod_seat_lps`) with
   :data:`ROD_OVERHANG_MM` overhang, kept when the image along it is dark (median below
   :data:`ROD_BG_FRACTION` of the local tissue background).
6. Levels from ``vertebrae`` / ``level_of`` (nearest body centre to the tip), sides from the
   offset of the head from the midline (as :mod:`planner.segment.hardware`).

Uncertainty
-----------
Diameters are not measurable from voids: screws carry :data:`ASSUMED_SCREW_DIAMETER_MM`
and rods :data:`ASSUMED_ROD_DIAMETER_MM`, flagged ``"diameter": "assumed"`` in
``info["screws"]`` / ``info["rods"]`` together with the measured void width.  The axis and
end-point uncertainties reported (:data:`AXIS_UNCERTAINTY_DEG`,
:data:`POSITION_UNCERTAINTY_MM`) are what the phantom study measured, rounded up (see the
constants); the CT targets (1 deg / 1 mm) do not apply to MR.

Thresholds carry their reason or **[U]** (our choice, reason given).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from planner.errors import PlannerError
from planner.implants import CrossLink, Rod, Screw
from planner.segment.hardware import _frames, _level_for, _side_of_point, hardware_label_id
from planner.segment.result import MetalObject
from planner.volume import Volume

log = logging.getLogger(__name__)

#: Body outline: fraction of the 99th signal percentile [U: air is noise (a few % of tissue
#: signal); fat and muscle are 20-95 % of the bright end on T1/T2 spin echo].
BODY_FRACTION: float = 0.10
#: Smallest body outline accepted, cm^3 [U: a few slices through a trunk are litres].
MIN_BODY_CM3: float = 50.0
#: Air voxels needed to estimate the noise from the background [U].
MIN_AIR_VOXELS: int = 2000
#: Gaussian smoothing before thresholding, mm [U: ~half a voxel at 1.5 mm; reduces the
#: spread of the Rayleigh noise floor without closing 6 mm voids].
SMOOTH_MM: float = 1.0
#: Void: smoothed signal below this many noise SDs [U: a void is Rayleigh noise, mean
#: 1.25 SD; smoothing narrows it; blood flow voids (~5 SD on the phantom) and cortex
#: partial-volumed with marrow stay above].
VOID_NOISE_SD: float = 3.0
#: Voids are searched this far inside the outline, mm [U: skin folds and the air border].
BODY_MARGIN_MM: float = 4.0
#: Local tissue background: Gaussian over non-void body voxels, mm [U: a few void radii,
#: so the background of a void is the tissue around it].
BACKGROUND_SIGMA_MM: float = 8.0
#: The local background must exceed the void threshold by this factor [U: tissue is
#: 10-60 noise SDs on routine spine MR; 2x keeps voids in muscle (T2 ~ 15 SD)].
BACKGROUND_CONTRAST: float = 2.0
#: Smallest void component, mm^3 [U: a 25 mm screw void of 4 mm diameter is ~300 mm^3].
MIN_VOID_MM3: float = 150.0
#: Voids thicker than this inner radius are lung or gas, not hardware, mm [U: a bloomed
#: 12 mm tulip reaches ~10 mm radius on the phantom at 1.5 T; lungs are far thicker].
MAX_VOID_RADIUS_MM: float = 14.0
#: A rod is accepted when the image between the seats reads at most this fraction of the
#: local tissue background (median) [U: on the phantom T2 the rods read 0.3-0.6 (the
#: readout shift partly fills them); tissue reads ~1].
ROD_BG_FRACTION: float = 0.7
#: Largest void cross-section (mm^2) across the long axis that is rod, not screw [U: a
#: rod void (5.5 mm rod, little bloom as it runs along B0) is ~25-60 mm^2; an axial
#: section through a screw void is its length x width, >= 25 x 5 mm].
ROD_SECTION_MAX_MM2: float = 90.0
#: The screw axis is refitted on the void beyond this fraction of its length from the
#: posterior end (the tulip bloom is asymmetric) [U].
SHANK_SKIP_FRACTION: float = 0.3
#: Axial bin of the void cross-section profile, mm [U: one voxel at 1.5 mm].
PROFILE_BIN_MM: float = 1.5
#: The tulip bloom starts where the section exceeds this multiple of the shank's [U].
HEAD_AREA_RATIO: float = 1.6
#: Head = start of the tulip bloom plus this, mm [U: 0; on the phantom the head then lies
#: 0-10 mm in front of the true one along the axis, median ~3.5 mm].
HEAD_SHIFT_MM: float = 0.0
#: Rod overhang beyond the end seats, mm [U: as the phantom's rods].
ROD_OVERHANG_MM: float = 5.0
#: Screw void extent along its axis, mm: 25-65 mm screws (domain catalogue) minus the part
#: hidden in the rod/tulip void, plus blooming [U].
SCREW_VOID_LENGTH_MM: tuple[float, float] = (20.0, 80.0)
#: Straightness: second / first PCA SD [U: a cylinder of 5-10 mm void diameter and 30 mm
#: length gives ~0.2-0.3; blobs are ~1].
SCREW_MAX_SPREAD_RATIO: float = 0.8
#: Screws run across the spine: angle to the long axis at least this, deg [U: as the CT
#: fit's ROD_MAX_ANGLE_DEG].
SCREW_MIN_ANGLE_DEG: float = 45.0
#: The tip is this far inside the anterior end of the void, mm [U: one voxel of blooming;
#: on the phantom most voids end *before* the tip instead, see TIP_SHORTFALL_MM].
TIP_BLOOM_MM: float = 1.5
#: Head inside the posterior end of the void when no tulip bloom is seen in the section
#: profile, mm [U: tulip height minus blooming].
HEAD_BLOOM_MM: float = 10.0
#: Nominal diameters reported when the true one cannot be measured, mm [U: mid catalogue].
ASSUMED_SCREW_DIAMETER_MM: float = 6.0
ASSUMED_ROD_DIAMETER_MM: float = 5.5
#: Stated uncertainty of MR screw axes (deg) and heads (mm) [U: the phantom study
#: (case_example T2, 1.5 T, 1.5 mm voxels, readout L-R at 200 Hz/pixel) gave axis errors
#: 0.1-5.6 deg (median ~2.6) and head errors 6-11 mm, dominated by a ~6 mm readout shift of
#: the voids along the readout (x) axis; rounded up].
AXIS_UNCERTAINTY_DEG: float = 6.0
POSITION_UNCERTAINTY_MM: float = 12.0
#: Tips are a lower bound: the void can stop short of the tip (thin cone, weaker field
#: near the tip): on the phantom 3-26 mm short [measured].
TIP_SHORTFALL_MM: float = 30.0


def segment_hardware_mr(
    mr: Volume,
    *,
    vertebrae: Mapping[str, Any] | Volume | None = None,
    level_of: Callable[[np.ndarray], str | None] | None = None,
) -> tuple[list[Screw], list[Rod], list[CrossLink], list[MetalObject], np.ndarray, dict]:
    """Find pedicle screws and rods as signal voids in an MR and fit their axes.

    Parameters
    ----------
    mr : Volume
        MR image (modality ``"MR"``), any grid orientation.
    vertebrae : dict level -> frame, or label Volume, optional
        As :func:`planner.segment.hardware.segment_hardware`: levels of screws from the
        nearest body centre to the tip.
    level_of : callable, optional
        ``level_of(point_lps) -> level or None``, tried first.

    Returns
    -------
    screws : list of Screw
        Fitted axes; ``diameter_mm`` is :data:`ASSUMED_SCREW_DIAMETER_MM` (not measured).
    rods : list of Rod
        ``diameter_mm`` is :data:`ASSUMED_ROD_DIAMETER_MM` (not measured).
    crosslinks : list of CrossLink
        Always empty (cross-links are not separated from the rod voids on MR).
    other : list of MetalObject
        Void components that are neither (``kind="unknown"``).
    labels : (ni, nj, nk) uint16
        Registry ids painted on the **void** voxels (bloomed: larger than the metal).
    info : dict
        ``modality``, ``fitted``, noise SD, thresholds, counts, per-screw and per-rod void
        measurements with ``"diameter": "assumed"``, stated uncertainties, timing.

    Raises
    ------
    PlannerError
        ``PLN-SEG-003`` when the image is not MR; ``PLN-SEG-005`` when no body outline is
        found (empty or all-air image).
    """
    t0 = time.perf_counter()
    if mr.modality != "MR":
        raise PlannerError(
            f"segment_hardware_mr needs an MR image, got modality {mr.modality!r}; for CT use "
            "planner.segment.hardware.segment_hardware",
            code="PLN-SEG-003",
        )
    a = np.asarray(mr.array, dtype=np.float32)
    sp = mr.spacing
    vox_mm3 = float(np.prod(sp))
    A = mr.lps_from_ijk
    R = mr.direction
    long_ax = int(np.argmax(np.abs(R[2, :])))  # grid axis closest to LPS z

    body = _body_outline(a, sp, long_ax)
    if body is None:
        raise PlannerError(
            "no body outline found in the MR (no connected region of tissue signal); check "
            "that the image is not empty, all noise or a mask",
            code="PLN-SEG-005",
        )
    sd, noise_how = _noise_sd(a, body, sp)
    thr = VOID_NOISE_SD * sd
    s = ndimage.gaussian_filter(a, SMOOTH_MM / sp)
    inner = ndimage.distance_transform_edt(body, sampling=sp) > BODY_MARGIN_MM
    void = (s < thr) & inner
    w = (body & ~void).astype(np.float32)
    sig = BACKGROUND_SIGMA_MM / sp
    bg = ndimage.gaussian_filter(a * w, sig) / np.maximum(ndimage.gaussian_filter(w, sig), 1e-3)
    void &= bg > BACKGROUND_CONTRAST * thr
    del w, inner

    lab, n = ndimage.label(void, structure=np.ones((3, 3, 3), bool))
    keep = np.zeros(n + 1, bool)
    dropped = {"small": 0, "thick": 0}
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        m = lab[sl] == i
        if m.sum() * vox_mm3 < MIN_VOID_MM3:
            dropped["small"] += 1
            continue
        r = ndimage.distance_transform_edt(np.pad(m, 1), sampling=sp).max()
        if r > MAX_VOID_RADIUS_MM:
            dropped["thick"] += 1
            continue
        keep[i] = True
    void = keep[lab]
    del lab

    # occupancy weight: how far below the tissue background (1 = no signal)
    occ = np.clip(1.0 - a / np.maximum(bg, 1e-3), 0.0, 1.0).astype(np.float32)

    e_long = R[:, long_ax] * np.sign(R[2, long_ax] or 1.0)  # LPS direction of the long axis
    frames = _frames(vertebrae)
    pieces = _cut_rod_slices(void, sp, long_ax)
    screws, screw_info, other = _find_screws(pieces, occ, A, sp, e_long, vox_mm3)
    body_x = _midline_x(body, A, long_ax)
    if frames:
        body_x = float(np.mean([f["centre"][0] for f in frames.values()]))
    sides = [_side_of_point(sc.head_lps, frames, body_x) for sc in screws]
    rods, rod_info = _rods_through_seats(screws, sides, a, bg, mr, long_ax)

    for sc, si, side in zip(screws, screw_info, sides):
        sc.level = _level_for(sc.tip_lps, frames, level_of)
        sc.side = side
        si["name"] = sc.name
    for rd, ri in zip(rods, rod_info):
        ri["name"] = rd.name

    labels = _paint(void, A, screws, rods, other_mask=None)
    info: dict[str, Any] = {
        "modality": "MR",
        "fitted": True,
        "present": bool(screws or rods),
        "method": "signal voids (blooming and readout shift: larger and displaced)",
        "noise_sd": round(float(sd), 3),
        "noise_from": noise_how,
        "void_threshold": round(float(thr), 3),
        "dropped_void_components": dropped,
        "counts": {"screws": len(screws), "rods": len(rods), "crosslinks": 0, "other": len(other)},
        "screws": screw_info,
        "rods": rod_info,
        "diameter": "assumed",
        "assumed_screw_diameter_mm": ASSUMED_SCREW_DIAMETER_MM,
        "assumed_rod_diameter_mm": ASSUMED_ROD_DIAMETER_MM,
        "axis_uncertainty_deg": AXIS_UNCERTAINTY_DEG,
        "position_uncertainty_mm": POSITION_UNCERTAINTY_MM,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    log.info("MR hardware: %d screws, %d rods, %d other void(s) in %.1f s",
             len(screws), len(rods), len(other), info["seconds"])
    return screws, rods, [], other, labels, info


# ---- steps ---------------------------------------------------------------------------------
def _body_outline(a: np.ndarray, sp: np.ndarray, long_ax: int) -> np.ndarray | None:
    """Largest bright component, holes filled slice by slice; None when there is none."""
    hi = float(np.percentile(a, 99))
    if not np.isfinite(hi) or hi <= 0:
        return None
    m = a > BODY_FRACTION * hi
    m = ndimage.binary_opening(m, iterations=1)
    lab, n = ndimage.label(m)
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    big = int(np.argmax(sizes)) + 1
    if sizes[big - 1] * float(np.prod(sp)) < MIN_BODY_CM3 * 1000.0:
        return None
    body = lab == big
    body = np.moveaxis(body, long_ax, 2)
    for k in range(body.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return np.moveaxis(body, 2, long_ax)


def _noise_sd(a: np.ndarray, body: np.ndarray, sp: np.ndarray) -> tuple[float, str]:
    """Noise SD from the air (Rayleigh) or, without air, from neighbour differences."""
    air = ~ndimage.binary_dilation(body, iterations=3)
    if air.sum() >= MIN_AIR_VOXELS:
        v = a[air]
        sd = float(np.median(v)) / 1.1774  # Rayleigh median = sd sqrt(2 ln 2)
        if sd > 0:
            return sd, "air (Rayleigh median)"
    ax = int(np.argmin(sp))
    d = np.diff(a, axis=ax)
    inb = np.take(body, range(d.shape[ax]), axis=ax)
    v = d[inb]
    sd = float(np.median(np.abs(v - np.median(v)))) / (0.6745 * np.sqrt(2.0))
    return max(sd, 1e-6), "neighbour differences (MAD)"


def _pts(idx: np.ndarray, A: np.ndarray) -> np.ndarray:
    return idx @ A[:3, :3].T + A[:3, 3]


def _pca(p: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted centroid, principal directions (columns, largest first), SDs."""
    ws = w / w.sum()
    c = ws @ p
    q = p - c
    C = (q * ws[:, None]).T @ q
    ev, evec = np.linalg.eigh(C)
    order = np.argsort(ev)[::-1]
    return c, evec[:, order], np.sqrt(np.maximum(ev[order], 0.0))


def _cut_rod_slices(void: np.ndarray, sp: np.ndarray, long_ax: int) -> np.ndarray:
    """Label array of void pieces after removing thin cross-sections (the rod between screws).

    In each slice across the long axis, a component's void area below
    :data:`ROD_SECTION_MAX_MM2` is rod (or a screw's upper/lower fringe) and is removed; what
    is left separates the screws of one construct.
    """
    lab, n = ndimage.label(void, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return lab
    px = float(np.prod([sp[i] for i in range(3) if i != long_ax]))
    L = np.moveaxis(lab, long_ax, 2)
    keep = np.zeros(L.shape, bool)
    for k in range(L.shape[2]):
        sl = L[:, :, k]
        if not sl.any():
            continue
        cnt = np.bincount(sl.ravel(), minlength=n + 1) * px
        big = cnt >= ROD_SECTION_MAX_MM2
        big[0] = False
        keep[:, :, k] = big[sl]
    keep = np.moveaxis(keep, 2, long_ax)
    out, _ = ndimage.label(keep, structure=np.ones((3, 3, 3), bool))
    return out


def _find_screws(lab, occ, A, sp, e_long, vox_mm3):
    screws: list[Screw] = []
    infos: list[dict] = []
    other: list[MetalObject] = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        m = lab[sl] == i
        vol = float(m.sum()) * vox_mm3
        if vol < MIN_VOID_MM3:
            continue
        idx = np.argwhere(m) + np.array([s.start for s in sl])
        p = _pts(idx.astype(float), A)
        w = occ[tuple(idx.T)] + 1e-3
        c, V, sds = _pca(p, w)
        u = V[:, 0]
        if u[1] > 0:  # head -> tip points anteriorly (LPS -y)
            u = -u
        t = (p - c) @ u
        lo, hi = float(t.min()), float(t.max())
        ext = hi - lo
        ang = float(np.degrees(np.arccos(min(1.0, abs(float(u @ e_long))))))
        ratio = float(sds[1] / max(sds[0], 1e-6))
        why = None
        if not (SCREW_VOID_LENGTH_MM[0] <= ext <= SCREW_VOID_LENGTH_MM[1]):
            why = f"extent {ext:.0f} mm"
        elif ratio > SCREW_MAX_SPREAD_RATIO:
            why = f"not straight (spread ratio {ratio:.2f})"
        elif ang < SCREW_MIN_ANGLE_DEG:
            why = f"runs along the spine ({ang:.0f} deg)"
        if why:
            log.debug("void piece %d (%.0f mm^3) not a screw: %s", i, vol, why)
            other.append(MetalObject("unknown", c, vol, np.stack([p.min(0), p.max(0)])))
            continue
        # refit the axis on the shank (anterior part, away from the tulip bloom)
        shank = t > lo + SHANK_SKIP_FRACTION * ext
        if shank.sum() >= 20:
            c2, V2, _ = _pca(p[shank], w[shank])
            u2 = V2[:, 0] * (1.0 if V2[:, 0] @ u > 0 else -1.0)
            c, u = c2, u2
            t = (p - c) @ u
            lo, hi = float(t.min()), float(t.max())
        head_t, width = _head_from_profile(t, lo, hi, vox_mm3)
        tip = c + u * (hi - TIP_BLOOM_MM)
        head = c + u * (head_t + HEAD_SHIFT_MM)
        sc = Screw("unknown", "left", head, tip, ASSUMED_SCREW_DIAMETER_MM)
        screws.append(sc)
        infos.append({
            "diameter": "assumed",
            "void_volume_mm3": round(vol, 1),
            "void_length_mm": round(ext, 1),
            "void_width_mm": round(width, 1),
            "axis_uncertainty_deg": AXIS_UNCERTAINTY_DEG,
            "position_uncertainty_mm": POSITION_UNCERTAINTY_MM,
            "tip": f"lower bound: the void may end up to {TIP_SHORTFALL_MM:.0f} mm before the tip",
        })
    return screws, infos, other


def _head_from_profile(t: np.ndarray, lo: float, hi: float, vox_mm3: float) -> tuple[float, float]:
    """Axial position of the head: walking from the tip back, where the void's cross-section
    first exceeds :data:`HEAD_AREA_RATIO` times the shank's (the tulip's bloom begins).

    Returns the position along the axis and the shank void width (equivalent diameter, mm).
    """
    nb = max(2, int(np.ceil((hi - lo) / PROFILE_BIN_MM)))
    h = (hi - lo) / nb
    area = np.bincount(np.clip(((t - lo) / h).astype(int), 0, nb - 1), minlength=nb) * vox_mm3 / h
    area = ndimage.uniform_filter1d(area.astype(float), 3)
    front = area[nb // 2:]
    shank = float(np.median(front)) if len(front) else float(np.median(area))
    width = 2.0 * np.sqrt(max(shank, 0.0) / np.pi)
    for b in range(nb - 1, -1, -1):
        if area[b] > HEAD_AREA_RATIO * shank and b < nb // 2:
            return lo + (b + 1) * h, width
    return lo + HEAD_BLOOM_MM, width


def _rods_through_seats(screws, sides, a, bg, mr: Volume, long_ax: int) -> tuple[list[Rod], list[dict]]:
    """One rod per side with at least two screws: the centre line through their rod seats
    (the implant model), kept when the image is dark along it (a void, not air between)."""
    rods: list[Rod] = []
    infos: list[dict] = []
    for side in ("left", "right"):
        ss = [s for s, sd in zip(screws, sides) if sd == side]
        if len(ss) < 2:
            continue
        seats = np.array([s.rod_seat_lps for s in ss])
        seats = seats[np.argsort(-seats[:, 2])]  # cranial first
        d = np.diff(seats, axis=0)
        e0 = seats[0] + d[0] / np.linalg.norm(d[0]) * ROD_OVERHANG_MM
        e1 = seats[-1] - d[-1] / np.linalg.norm(d[-1]) * ROD_OVERHANG_MM
        cl = np.vstack([e0, seats, e1])
        # darkness along the line between the seats
        pts = np.concatenate([s0 + np.outer(np.linspace(0, 1, 20), s1 - s0) for s0, s1 in zip(seats[:-1], seats[1:])])
        ijk = mr.index_from_lps(pts).T
        v = ndimage.map_coordinates(a, ijk, order=1, mode="nearest")
        b = ndimage.map_coordinates(bg, ijk, order=1, mode="nearest")
        dark = float(np.median(v / np.maximum(b, 1e-3)))
        if dark > ROD_BG_FRACTION:
            log.info("no %s rod: image along the seats at %.2f of the tissue background", side, dark)
            continue
        rods.append(Rod(side, cl, ASSUMED_ROD_DIAMETER_MM))
        infos.append({
            "diameter": "assumed",
            "centreline_from": "screw rod seats (implant model), checked for a void",
            "signal_over_background": round(dark, 3),
            "n_screws": len(ss),
        })
    return rods, infos


def _midline_x(body: np.ndarray, A: np.ndarray, long_ax: int) -> float:
    """LPS x of the body outline's centre (the midline when no vertebrae are given)."""
    idx = np.argwhere(body[::2, ::2, ::2]) * 2
    return float(np.median(_pts(idx.astype(float), A)[:, 0])) if len(idx) else 0.0


def _paint(void, A, screws, rods, other_mask) -> np.ndarray:
    """Registry ids on void voxels: nearest fitted object axis (screw segment / rod line)."""
    labels = np.zeros(void.shape, np.uint16)
    idx = np.argwhere(void)
    if not len(idx) or not (screws or rods):
        return labels
    p = _pts(idx.astype(float), A)
    cols, ids = [], []
    from planner.implants import point_segment_distance

    for s in screws:
        cols.append(point_segment_distance(p, s.head_lps - s.axis * 13.0, s.tip_lps))
        ids.append(hardware_label_id("screw", s.level, s.side))
    for r in rods:
        d = np.full(len(p), np.inf)
        for a, b in zip(r.centreline_lps[:-1], r.centreline_lps[1:]):
            d = np.minimum(d, point_segment_distance(p, a, b))
        cols.append(d)
        ids.append(hardware_label_id("rod", side=r.side))
    D = np.stack(cols, 1)
    near = D.min(1) < 20.0
    lab = np.array(ids, np.uint16)[np.argmin(D, 1)]
    labels[tuple(idx[near].T)] = lab[near]
    return labels
