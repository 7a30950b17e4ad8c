"""Classical soft-tissue segmentation of CT: body, skin, fat, lungs, pleura, spinal canal and
thecal sac, aorta and posterior fluid collections.

All thresholds are module constants with the reason for the value; values marked [U] are
working choices not taken from a reference (tuned on the phantom, checked on real CT).

The spinal canal is followed along the spine so that it stays continuous through levels
without a bony roof (laminectomy) and through disc levels where the bony ring is open:

1. bone (given labels or a HU threshold) plus metal is closed along the slice axis
   (:data:`CANAL_CLOSING_MM`) and small in-plane gaps, then holes of this ring are found per
   axial slice;
2. low-density holes of canal size are candidates; a smooth centreline is fitted robustly
   through them and the candidate on it is kept per slice ("enclosed" slices);
3. slices without an enclosed canal get a cross-section interpolated between the nearest
   enclosed slices above and below (signed-distance shape interpolation, shifted along the
   centreline), widened by the CSF-density region next to it (soft-tissue contrast of the
   sac where bone is missing).

The thecal sac is the CSF-density part of the canal (CSF ~0-15 HU against epidural fat);
the cord is not separated from CSF on CT and stays inside ``thecal_sac``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from planner.errors import CodedWarning, InputError
from planner.labels.registry import LABEL_IDS, LABEL_NAMES, is_bone
from planner.volume import Volume

log = logging.getLogger(__name__)

# ---- thresholds ------------------------------------------------------------------------
#: Gaussian smoothing (mm) of the HU image before soft-tissue thresholds: reduces quantum
#: noise (std ~10-20 HU) well below the CSF/fat/muscle contrasts used here. [U]
SMOOTH_MM = 1.2
#: Stronger smoothing (mm) for the fluid-collection window (0-20 HU is narrow). [U]
FLUID_SMOOTH_MM = 2.0
#: Body outline: air is ~-1000 HU, fat ~-100 HU; -300 separates them with margin and keeps
#: lung (~-850) outside the component (filled back per slice).
BODY_HU = -300.0
#: Skin thickness (mm): epidermis + dermis is ~1.5-3 mm on the trunk.
SKIN_MM = 2.0
#: Fat window (HU): adipose tissue -190..-30 (common CT fat window).
FAT_HU = (-190.0, -30.0)
#: Bone threshold (HU) when no bone labels are given: cortical bone reads several hundred
#: HU; 200 keeps cortex and lamina even in osteoporotic spines (cancellous bone, which may be
#: < 100 HU, is not needed to enclose the canal). [U]
BONE_HU = 150.0
#: Metal threshold (HU) when no metal mask is given (titanium reads > 2000 HU; domain.md).
METAL_HU = 2000.0
#: Lung / air inside the body (HU on the smoothed image): lung ~-850, soft tissue > -200.
AIR_HU = -400.0
#: Smallest lung component (mL); smaller air pockets are bowel gas or noise. [U]
LUNG_MIN_ML = 20.0
#: Lung parenchyma mean HU is above this; pure gas (bowel, outside air) reads ~-1000. [U]
LUNG_MIN_MEAN_HU = -975.0
#: Pleura: soft-tissue layer this thick (mm) around the lungs (parietal + visceral pleura
#: with the extrapleural fat line is a few mm on CT). [U]
PLEURA_MM = 3.0
#: Bone is closed along the spine over this length (mm) to bridge disc spaces (~5-12 mm)
#: and interlaminar gaps before the bony ring is filled per slice. [U]
CANAL_CLOSING_MM = 12.0
#: Cross-section area of canal candidates (mm^2): adult canals are ~120-400 mm^2
#: (Panjabi 1991/1992 canal dimensions ~14-25 mm); wide margins for stenosis / children. [U]
CANAL_AREA_MM2 = (40.0, 900.0)
#: Mean HU of canal candidates (smoothed): epidural fat ~-100, CSF ~0-15, cord ~30-40; the
#: canal average is far below cancellous bone even in osteoporosis (> ~50 HU). [U]
CANAL_MAX_MEAN_HU = 40.0
#: Tolerance (mm) of canal candidates around the fitted centreline, final pass. [U]
CANAL_TRACK_TOL_MM = 7.0
#: CSF-density window (HU) for the thecal sac: between epidural fat (~-100) and bone /
#: contrast; the lower limit is the fat/CSF midpoint. [U]
CSF_HU = (-40.0, 100.0)
#: Where the canal is interpolated, CSF-density voxels this close (mm) are added. [U]
CANAL_GROW_MM = 2.5
#: Stricter CSF window for that growth: core CSF (~0-15 HU), below muscle (~40-60 HU) and
#: above fat / soft-tissue mixtures. [U]
CANAL_GROW_HU = (-10.0, 25.0)
#: The canal is extrapolated at most this far (mm) beyond the last enclosed slice. [U]
CANAL_EXTRAPOLATE_MM = 20.0
#: Unenhanced blood 30-45 HU; window for the aorta mask. A contrast-enhanced aorta
#: (150-400 HU) is outside this window and is not found (reported). [U]
AORTA_HU = (15.0, 80.0)
#: Aortic radius (mm): abdominal 8-12, thoracic 11-16 mm; wider for ectasia; iliac arteries
#: (radius ~4-6 mm) are below the lower limit. [U]
AORTA_RADIUS_MM = (7.0, 19.0)
#: Aorta centre relative to the canal centre: anterior distance (mm) and left-right range
#: (mm, + = patient left) where it is searched: the aorta lies left-anterior of the bodies,
#: the vena cava right-anterior (excluded by the lateral lower limit). [U]
AORTA_ANTERIOR_MM = (25.0, 90.0)
AORTA_LATERAL_MM = (-5.0, 50.0)
#: The aorta is searched this far (mm) beyond the canal's slice range (centreline
#: extrapolated). [U]
AORTA_EXTEND_MM = 30.0
#: Fluid (seroma / pseudomeningocele) window (HU on the FLUID_SMOOTH_MM image). [U]
FLUID_HU = (-5.0, 25.0)
#: Smallest fluid collection reported (mL): "larger than a few mL". [U]
FLUID_MIN_ML = 3.0
#: Fluid is not searched within this depth (mm) under the skin (skin reads 0-60 HU). [U]
FLUID_SKIN_MARGIN_MM = 6.0


def _gauss(a: np.ndarray, sigma_mm: float, spacing: np.ndarray) -> np.ndarray:
    return ndi.gaussian_filter(a.astype(np.float32), sigma=sigma_mm / np.asarray(spacing))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    for s in range(mask.shape[2]):
        out[:, :, s] = ndi.binary_fill_holes(mask[:, :, s])
    return out


def _edt2d(mask: np.ndarray, sp2: np.ndarray) -> np.ndarray:
    """In-plane distance (mm) to the outside of ``mask`` (nu, nv, ns), per slice."""
    out = np.zeros(mask.shape, np.float32)
    for s in range(mask.shape[2]):
        if mask[:, :, s].any():
            out[:, :, s] = ndi.distance_transform_edt(
                np.pad(mask[:, :, s], 1), sampling=sp2)[1:-1, 1:-1]
    return out


def _disk(r_vox: np.ndarray) -> np.ndarray:
    ru, rv = (max(1, int(np.ceil(x))) for x in r_vox)
    u, v = np.mgrid[-ru:ru + 1, -rv:rv + 1]
    return (u / max(r_vox[0], 1e-6)) ** 2 + (v / max(r_vox[1], 1e-6)) ** 2 <= 1.0


class _Frame:
    """The image permuted so that the last axis is the one closest to LPS z (axial slices).

    ``lps(u, v, s)`` maps permuted indices to LPS mm; ``x`` (left) and ``y`` (posterior)
    give in-plane LPS coordinates per slice.
    """

    def __init__(self, vol: Volume) -> None:
        R = vol.direction
        s_ax = int(np.argmax(np.abs(R[2, :])))
        self.perm = [a for a in range(3) if a != s_ax] + [s_ax]
        self.inv = list(np.argsort(self.perm))
        A = vol.lps_from_ijk
        self.M = A[:3, :3][:, self.perm]
        self.o = A[:3, 3]
        self.spacing = vol.spacing[self.perm]
        self.sp2 = self.spacing[:2]
        self.shape = tuple(vol.shape[a] for a in self.perm)
        self.voxel_ml = float(np.prod(self.spacing)) / 1000.0
        # superior direction of increasing s
        self.s_sign = 1.0 if self.M[2, 2] >= 0 else -1.0

    def to_perm(self, a: np.ndarray) -> np.ndarray:
        return np.transpose(a, self.perm)

    def from_perm(self, a: np.ndarray) -> np.ndarray:
        return np.transpose(a, self.inv)

    def lps(self, uvs: np.ndarray) -> np.ndarray:
        return np.atleast_2d(np.asarray(uvs, float)) @ self.M.T + self.o

    def plane_xy(self, s: float) -> tuple[np.ndarray, np.ndarray]:
        """LPS x and y (mm) of the in-plane grid of slice ``s``, each (nu, nv)."""
        nu, nv = self.shape[:2]
        u = np.arange(nu, dtype=float)[:, None]
        v = np.arange(nv, dtype=float)[None, :]
        x = self.M[0, 0] * u + self.M[0, 1] * v + self.M[0, 2] * s + self.o[0]
        y = self.M[1, 0] * u + self.M[1, 1] * v + self.M[1, 2] * s + self.o[1]
        return x, y


def _check_ct(ct: Volume) -> None:
    if ct.modality != "CT":
        raise InputError(
            f"soft-tissue segmentation needs CT in Hounsfield units, got modality "
            f"{ct.modality!r}; for MR import labels (planner.segment.imported.import_labels)",
            code="PLN-SOFT-001", details={"modality": ct.modality})
    a = ct.array
    lo, hi = float(np.percentile(a, 1)), float(np.percentile(a, 99.5))
    if lo > -500 or hi < 0:
        raise InputError(
            f"image values ({lo:.0f}..{hi:.0f}) do not look like Hounsfield units (air "
            "-1000); an MR or rescaled image was given where CT is required",
            code="PLN-SOFT-001", details={"p1": lo, "p99.5": hi})


def _bone_mask(ct_p: np.ndarray, bone_p: np.ndarray | None, metal_p: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray]:
    if bone_p is not None:
        ids = np.unique(bone_p)
        bone_ids = [int(i) for i in ids if i and is_bone(int(i))]
        bone = np.isin(bone_p, bone_ids)
    else:
        bone = ct_p >= BONE_HU
    metal = (ct_p >= METAL_HU) if metal_p is None else metal_p.astype(bool)
    return bone | metal, metal


# ---- robust centreline ------------------------------------------------------------------
def _fit_track(s: np.ndarray, pts: np.ndarray, w: np.ndarray, tols: tuple[float, ...]
               ) -> tuple[np.ndarray | None, np.ndarray]:
    """Robust quadratic fit ``pts (n, 2)`` (mm) over ``s (n,)``; returns coefficients (3, 2)
    (or None) and the inlier mask of the last pass."""
    if len(s) == 0:
        return None, np.zeros(0, bool)
    centre = np.array([np.average(pts[:, 0], weights=w), np.average(pts[:, 1], weights=w)])
    med = np.median(pts, axis=0)
    pred = np.broadcast_to(med if np.linalg.norm(centre - med) < 20 else centre, pts.shape)
    inl = np.ones(len(s), bool)
    coef = None
    for tol in tols:
        inl = np.linalg.norm(pts - pred, axis=1) <= tol
        if inl.sum() < 3:
            return coef, inl
        deg = 2 if np.ptp(s[inl]) > 30 and inl.sum() >= 6 else (1 if inl.sum() >= 3 else 0)
        coef = np.stack([np.polyfit(s[inl], pts[inl, c], deg, w=np.sqrt(w[inl])) for c in (0, 1)],
                        axis=1)
        coef = np.vstack([np.zeros((3 - len(coef), 2)), coef])
        pred = _eval_track(coef, s)
    inl = np.linalg.norm(pts - pred, axis=1) <= tols[-1]
    return coef, inl


def _eval_track(coef: np.ndarray, s: np.ndarray | float) -> np.ndarray:
    s = np.atleast_1d(np.asarray(s, float))
    return np.stack([np.polyval(coef[:, c], s) for c in (0, 1)], axis=1)


# ---- canal -------------------------------------------------------------------------------
def _canal(fr: _Frame, hu_s: np.ndarray, bone: np.ndarray, body: np.ndarray
           ) -> tuple[np.ndarray, dict[str, Any], list[CodedWarning]]:
    nu, nv, ns = fr.shape
    sp2 = fr.sp2
    warns: list[CodedWarning] = []
    n_close = max(1, int(round(CANAL_CLOSING_MM / fr.spacing[2])))
    pad = n_close + 1
    b = np.pad(bone, ((1, 1), (1, 1), (pad, pad)), mode="edge")
    b = ndi.binary_closing(b, structure=np.ones((1, 1, n_close), bool))
    b = ndi.binary_closing(b, structure=np.ones((3, 3, 1), bool))
    ring = b[1:-1, 1:-1, pad:-pad] | bone
    pix_mm2 = float(sp2[0] * sp2[1])

    cands: list[dict[str, Any]] = []
    for s in range(ns):
        r = ring[:, :, s]
        if not r.any():
            continue
        holes = ndi.binary_fill_holes(r) & ~r
        lab, n = ndi.label(holes)
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        area = ndi.sum_labels(np.ones_like(lab), lab, idx) * pix_mm2
        mean = ndi.mean(hu_s[:, :, s], lab, idx)
        cent = ndi.center_of_mass(holes, lab, idx)
        for i in range(n):
            if CANAL_AREA_MM2[0] <= area[i] <= CANAL_AREA_MM2[1] and mean[i] <= CANAL_MAX_MEAN_HU:
                cu, cv = cent[i]
                cands.append({"s": s, "id": i + 1, "area": float(area[i]),
                              "lps": fr.lps([cu, cv, s])[0], "uv": (cu, cv), "lab": lab})
    info: dict[str, Any] = {"found": False}
    canal = np.zeros(fr.shape, bool)
    if len(cands) < 3:
        warns.append(CodedWarning("PLN-W-SOFT-001", "spinal canal not found: no bony ring "
                                  "encloses a low-density region of canal size",
                                  {"candidates": len(cands)}))
        return canal, info, warns
    s_arr = np.array([c["s"] for c in cands], float)
    s_mm = s_arr * fr.spacing[2]
    pts = np.array([c["lps"][:2] for c in cands])
    w = np.array([c["area"] for c in cands])
    coef, inl = _fit_track(s_mm, pts, w, (40.0, 20.0, 10.0, CANAL_TRACK_TOL_MM))
    if coef is None or inl.sum() < 3:
        warns.append(CodedWarning("PLN-W-SOFT-001", "spinal canal not found: canal candidates "
                                  "do not line up along the spine", {"candidates": len(cands)}))
        return canal, info, warns
    med_area = float(np.median(w[inl]))
    best: dict[int, dict[str, Any]] = {}
    for c, ok in zip(cands, inl):
        if not ok or not (0.35 * med_area <= c["area"] <= 2.5 * med_area):
            continue
        d = np.linalg.norm(c["lps"][:2] - _eval_track(coef, c["s"] * fr.spacing[2])[0])
        if c["s"] not in best or d < best[c["s"]]["d"]:
            best[c["s"]] = {**c, "d": d}
    enclosed = sorted(best)
    sections: dict[int, np.ndarray] = {}
    for s in enclosed:
        sections[s] = best[s]["lab"] == best[s]["id"]
        canal[:, :, s] = sections[s]

    csf = (hu_s >= CANAL_GROW_HU[0]) & (hu_s <= CANAL_GROW_HU[1]) & ~bone
    grow = _disk(CANAL_GROW_MM / sp2)
    interpolated: list[int] = []
    extrapolated: list[int] = []
    gaps_mm: list[float] = []

    def centre_uv(s: int) -> np.ndarray:
        xy = _eval_track(coef, s * fr.spacing[2])[0]
        # solve in-plane (u, v) for LPS x, y at slice s
        M2 = fr.M[:2, :2]
        rhs = xy - fr.o[:2] - fr.M[:2, 2] * s
        return np.linalg.solve(M2, rhs)

    sdf_cache: dict[int, np.ndarray] = {}

    def sdf2(s: int) -> np.ndarray:
        if s not in sdf_cache:
            m = sections[s]
            sdf_cache[s] = (ndi.distance_transform_edt(~m, sampling=sp2)
                            - ndi.distance_transform_edt(m, sampling=sp2)).astype(np.float32)
        return sdf_cache[s]

    def moved(s_from: int, s_to: int) -> np.ndarray:
        d = centre_uv(s_to) - centre_uv(s_from)
        return ndi.shift(sdf2(s_from), d, order=1, mode="nearest")

    def refine(s: int, m: np.ndarray) -> np.ndarray:
        if not m.any():
            return m
        near = ndi.binary_dilation(m, structure=grow)
        return (m | (csf[:, :, s] & near)) & ~bone[:, :, s] & body[:, :, s]

    for a, b2 in zip(enclosed[:-1], enclosed[1:]):
        if b2 - a <= 1:
            continue
        gaps_mm.append((b2 - a) * float(fr.spacing[2]))
        for s in range(a + 1, b2):
            t = (s - a) / (b2 - a)
            f = (1 - t) * moved(a, s) + t * moved(b2, s)
            canal[:, :, s] = refine(s, f < 0)
            interpolated.append(s)
    n_ext = int(CANAL_EXTRAPOLATE_MM / fr.spacing[2])
    for end, rng in ((enclosed[0], range(enclosed[0] - 1, max(-1, enclosed[0] - 1 - n_ext), -1)),
                     (enclosed[-1], range(enclosed[-1] + 1, min(ns, enclosed[-1] + 1 + n_ext)))):
        for s in rng:
            if not bone[:, :, s].any():
                break
            m = refine(s, moved(end, s) < 0)
            if not m.any():
                break
            canal[:, :, s] = m
            extrapolated.append(s)
    if gaps_mm and max(gaps_mm) > 60.0:
        warns.append(CodedWarning(
            "PLN-W-SOFT-002", f"spinal canal interpolated over {max(gaps_mm):.0f} mm without "
            "a bony ring; check the canal outline there", {"max_gap_mm": max(gaps_mm)}))
    info = {
        "found": True,
        "slices_enclosed": len(enclosed),
        "slices_interpolated": len(interpolated),
        "slices_extrapolated": len(extrapolated),
        "max_gap_mm": max(gaps_mm) if gaps_mm else 0.0,
        "median_area_mm2": med_area,
        "track_coef": coef,
        "slice_range": [int(min(enclosed + extrapolated)), int(max(enclosed + extrapolated))],
    }
    return canal, info, warns


def _midline_x(fr: _Frame, canal_info: dict, body: np.ndarray, s: int) -> float:
    if canal_info.get("found"):
        return float(_eval_track(canal_info["track_coef"], s * fr.spacing[2])[0, 0])
    x, _ = fr.plane_xy(s)
    m = body[:, :, s]
    return float(x[m].mean()) if m.any() else float(x.mean())


# ---- aorta -------------------------------------------------------------------------------
def _aorta(fr: _Frame, hu_s: np.ndarray, bone: np.ndarray, body: np.ndarray,
           canal_info: dict) -> tuple[np.ndarray, dict[str, Any], list[CodedWarning]]:
    out = np.zeros(fr.shape, bool)
    if not canal_info.get("found"):
        return out, {"found": False, "reason": "no spinal canal to search from"}, []
    coef = canal_info["track_coef"]
    lo, hi = canal_info["slice_range"]
    ext = int(round(AORTA_EXTEND_MM / fr.spacing[2]))
    lo, hi = max(0, lo - ext), min(fr.shape[2] - 1, hi + ext)
    blood = (hu_s >= AORTA_HU[0]) & (hu_s <= AORTA_HU[1]) & ~bone & body
    cands = []
    for s in range(lo, hi + 1):
        cx, cy = _eval_track(coef, s * fr.spacing[2])[0]
        x, y = fr.plane_xy(s)
        ant = cy - y
        lat = x - cx
        region = ((ant >= AORTA_ANTERIOR_MM[0]) & (ant <= AORTA_ANTERIOR_MM[1])
                  & (lat >= AORTA_LATERAL_MM[0]) & (lat <= AORTA_LATERAL_MM[1]))
        m = blood[:, :, s] & region
        if m.sum() < 10:
            continue
        d = ndi.distance_transform_edt(np.pad(m, 1), sampling=fr.sp2)[1:-1, 1:-1]
        # local maxima of the inscribed-circle radius within the aortic size range
        mx = ndi.maximum_filter(d, size=5)
        peaks = np.argwhere((d == mx) & (d >= AORTA_RADIUS_MM[0]) & (d <= AORTA_RADIUS_MM[1]))
        for u, v in peaks:
            cands.append((s, float(x[u, v]), float(y[u, v]), float(d[u, v]), u, v))
    if len(cands) < 3:
        return out, {"found": False, "reason": "no round blood-density tube anterior to the "
                     "spine (contrast-enhanced or absent aorta?)"}, []
    c = np.array([[a[0], a[1], a[2], a[3]] for a in cands])
    s_mm = c[:, 0] * fr.spacing[2]
    coef_a, inl = _fit_track(s_mm, c[:, 1:3], c[:, 3] ** 2, (40.0, 20.0, 10.0, 6.0))
    if coef_a is None or inl.sum() < 3:
        return out, {"found": False, "reason": "round candidates do not form a tube"}, []
    best: dict[int, tuple] = {}
    for a, ok in zip(cands, inl):
        if not ok:
            continue
        pred = _eval_track(coef_a, a[0] * fr.spacing[2])[0]
        dd = np.hypot(a[1] - pred[0], a[2] - pred[1])
        score = a[3] - 0.5 * dd
        if a[0] not in best or score > best[a[0]][0]:
            best[a[0]] = (score, a)
    radii = []
    for s, (_, a) in best.items():
        x, y = fr.plane_xy(s)
        r = a[3] + 0.5 * float(fr.sp2.min())
        disk = (x - a[1]) ** 2 + (y - a[2]) ** 2 <= r * r
        out[:, :, s] = disk & ~bone[:, :, s] & (hu_s[:, :, s] >= AORTA_HU[0] - 20)
        radii.append(r)
    return out, {"found": True, "slices": len(best), "median_radius_mm": float(np.median(radii))}, []


# ---- public ------------------------------------------------------------------------------
def segment_soft_tissue(
    ct: Volume,
    *,
    bone_labels: np.ndarray | None = None,
    metal_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Segment body outline, skin, fat, lungs, pleura, canal, sac, aorta and fluid on CT.

    Parameters
    ----------
    ct : Volume
        CT in HU, array (ni, nj, nk), any grid; slices are taken along the axis closest to
        LPS z.
    bone_labels : (ni, nj, nk) int, optional
        Registry label map of bone (vertebral parts, ribs, other bone; other ids ignored).
        Without it bone is ``HU >= BONE_HU``.
    metal_mask : (ni, nj, nk) bool, optional
        Metal voxels; without it ``HU >= METAL_HU``.

    Returns
    -------
    labels : (ni, nj, nk) uint16
        Registry ids: ``skin``, ``fat``, ``soft_tissue`` (other body voxels), ``lung_left``,
        ``lung_right``, ``pleura``, ``spinal_canal`` (canal outside the sac),
        ``thecal_sac`` (includes the cord), ``aorta``, ``fluid_collection``; 0 outside the
        body and on bone / metal.
    info : dict
        Per structure: what was found (voxel counts, volumes in mL, canal slices enclosed /
        interpolated / extrapolated, aorta radius, fluid collections with centroid in LPS),
        the thresholds used and ``warnings`` (list of :class:`CodedWarning`).

    Raises
    ------
    InputError
        ``PLN-SOFT-001`` when the image is not CT in HU (e.g. MR).
    """
    _check_ct(ct)
    fr = _Frame(ct)
    for name, a in (("bone_labels", bone_labels), ("metal_mask", metal_mask)):
        if a is not None and tuple(np.shape(a)) != ct.shape:
            raise InputError(f"{name} shape {np.shape(a)} does not match the CT {ct.shape}",
                             code="PLN-GEO-003")
    hu = fr.to_perm(np.asarray(ct.array))
    hu_s = _gauss(hu, SMOOTH_MM, fr.spacing)
    bone, metal = _bone_mask(hu, None if bone_labels is None else fr.to_perm(bone_labels),
                             None if metal_mask is None else fr.to_perm(metal_mask))
    warns: list[CodedWarning] = []
    info: dict[str, Any] = {"thresholds": {
        "smooth_mm": SMOOTH_MM, "body_hu": BODY_HU, "skin_mm": SKIN_MM, "fat_hu": FAT_HU,
        "bone_hu": None if bone_labels is not None else BONE_HU, "air_hu": AIR_HU,
        "csf_hu": CSF_HU, "aorta_hu": AORTA_HU, "fluid_hu": FLUID_HU,
        "canal_closing_mm": CANAL_CLOSING_MM}}

    # body and skin
    body = _fill_slices(_largest_component(hu_s > BODY_HU))
    depth = _edt2d(body, fr.sp2)
    skin = body & (depth < SKIN_MM + 0.5 * float(fr.sp2.min()))
    info["body"] = {"volume_ml": float(body.sum() * fr.voxel_ml)}

    # lungs
    air = (hu_s < AIR_HU) & body
    lab, n = ndi.label(air)
    lungs = np.zeros(fr.shape, bool)
    if n:
        idx = np.arange(1, n + 1)
        vol_ml = ndi.sum_labels(np.ones_like(lab), lab, idx) * fr.voxel_ml
        mean = ndi.mean(hu, lab, idx)
        keep = idx[(vol_ml >= LUNG_MIN_ML) & (mean >= LUNG_MIN_MEAN_HU)]
        lungs = np.isin(lab, keep)

    # canal and sac
    canal, cinfo, w = _canal(fr, hu_s, bone, body)
    warns += w
    sac = canal & (hu_s >= CSF_HU[0]) & (hu_s <= CSF_HU[1])

    # left / right lungs by the midline (canal centreline, else body centroid)
    lung_left = np.zeros(fr.shape, bool)
    for s in np.nonzero(lungs.any(axis=(0, 1)))[0]:
        x, _ = fr.plane_xy(s)
        lung_left[:, :, s] = lungs[:, :, s] & (x > _midline_x(fr, cinfo, body, s))
    lung_right = lungs & ~lung_left
    pleura = np.zeros(fr.shape, bool)
    if lungs.any():
        r = np.maximum(1, np.round(PLEURA_MM / fr.spacing)).astype(int)
        st = np.ones(tuple(2 * r + 1), bool)
        pleura = ndi.binary_dilation(lungs, structure=st) & body & ~lungs & ~bone & ~skin
    info["lungs"] = {"left_ml": float(lung_left.sum() * fr.voxel_ml),
                     "right_ml": float(lung_right.sum() * fr.voxel_ml)}

    # aorta
    aorta, ainfo, w = _aorta(fr, hu_s, bone, body, cinfo)
    warns += w
    if not ainfo.get("found"):
        warns.append(CodedWarning("PLN-W-SOFT-003", f"aorta not found: {ainfo.get('reason')}",
                                  {}))
    aorta &= ~canal

    # posterior fluid collections
    fluid, finfo = _fluid(fr, hu, bone, body, depth, canal, lungs, cinfo)

    # fat and the rest
    fat = body & (hu_s >= FAT_HU[0]) & (hu_s <= FAT_HU[1])
    out = np.zeros(fr.shape, np.uint16)
    out[body & ~bone] = LABEL_IDS["soft_tissue"]
    out[fat & ~bone] = LABEL_IDS["fat"]
    out[pleura] = LABEL_IDS["pleura"]
    out[lung_left] = LABEL_IDS["lung_left"]
    out[lung_right] = LABEL_IDS["lung_right"]
    out[aorta] = LABEL_IDS["aorta"]
    out[fluid] = LABEL_IDS["fluid_collection"]
    out[skin & ~bone] = LABEL_IDS["skin"]
    out[canal] = LABEL_IDS["spinal_canal"]
    out[sac] = LABEL_IDS["thecal_sac"]
    out[bone | metal] = 0

    cinfo = {k: v for k, v in cinfo.items() if k != "track_coef"}
    if cinfo.get("found"):
        cinfo["volume_ml"] = float(canal.sum() * fr.voxel_ml)
        cinfo["sac_volume_ml"] = float(sac.sum() * fr.voxel_ml)
    info.update({"canal": cinfo, "aorta": ainfo, "fluid_collections": finfo,
                 "counts": {LABEL_NAMES[int(i)]: int(c) for i, c in
                            zip(*np.unique(out, return_counts=True)) if i},
                 "warnings": warns})
    for wr in warns:
        log.warning("[%s] %s", wr.code, wr.message)
    return np.ascontiguousarray(fr.from_perm(out)), info


def _fluid(fr: _Frame, hu: np.ndarray, bone: np.ndarray, body: np.ndarray, depth: np.ndarray,
           canal: np.ndarray, lungs: np.ndarray, cinfo: dict
           ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    out = np.zeros(fr.shape, bool)
    if not cinfo.get("found"):
        return out, []
    hf = _gauss(hu, FLUID_SMOOTH_MM, fr.spacing)
    m = (hf >= FLUID_HU[0]) & (hf <= FLUID_HU[1]) & body & (depth > FLUID_SKIN_MARGIN_MM)
    m &= ~ndi.binary_dilation(bone, iterations=1) & ~canal
    if lungs.any():
        m &= ~ndi.binary_dilation(lungs, iterations=max(1, int(round(6.0 / fr.spacing.min()))))
    coef = cinfo["track_coef"]
    for s in range(fr.shape[2]):
        if not m[:, :, s].any():
            continue
        cx, cy = _eval_track(coef, s * fr.spacing[2])[0]
        _, y = fr.plane_xy(s)
        m[:, :, s] &= y > cy
    m = ndi.binary_opening(m, structure=ndi.generate_binary_structure(3, 1), iterations=1)
    lab, n = ndi.label(m)
    found = []
    if n:
        idx = np.arange(1, n + 1)
        vol_ml = ndi.sum_labels(np.ones_like(lab), lab, idx) * fr.voxel_ml
        keep = idx[vol_ml >= FLUID_MIN_ML]
        cents = ndi.center_of_mass(m, lab, keep) if len(keep) else []
        for i, c in zip(keep, cents):
            out |= lab == i
            found.append({"volume_ml": float(vol_ml[i - 1]),
                          "centroid_lps": [round(float(v), 2) for v in fr.lps(np.array(c))[0]]})
    return out, found
