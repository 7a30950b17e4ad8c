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
import time
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from planner.errors import CodedWarning, InputError
from planner.labels.registry import LABEL_IDS, LABEL_NAMES, is_bone
from planner.segment.morph import bbox, close_line, dilate_box, erode_box, fill_holes
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
#: Canal sections of enclosed slices are opened with a disk of this radius (mm): keeps the
#: union of 6 mm disks that fit in the bony hole, i.e. the round / oval canal (adult
#: semi-axes ~7-12 mm), and removes the lateral recesses and foraminal wings between
#: pedicle and body.  Where no such disk fits (small canal, stenosis) the hole is kept
#: as is.  Tuned on the phantoms (3 / 5 / 6 / 8 mm: mean canal Dice 0.82 / 0.83 / 0.86 /
#: 0.83). [U]
CANAL_OPEN_MM = 6.0
#: Canal holes with a bounding-box aspect ratio above this are not canals (canals are
#: round to oval, at most ~2:1 in the lumbar spine). [U]
CANAL_MAX_EXTENT = 3.0
#: Half-width (mm) of the in-plane box around the rough canal centreline in which the canal
#: is segmented at full resolution: the bony ring (laminae, pedicles) lies within ~30 mm
#: of the canal centre. [U]
CANAL_BOX_MM = 45.0
#: Block grid (mm) for body outline, lungs, pleura, fat, fluid and the aorta search. [U]
COARSE_MM = 2.0
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
    """Gaussian smoothing with ``sigma_mm`` (mm) on a grid of ``spacing`` (mm), float32."""
    a = a.astype(np.float32, copy=False)
    if sigma_mm <= 0:
        return a.copy()
    return ndi.gaussian_filter(a, sigma=sigma_mm / np.asarray(spacing, float), truncate=3.0)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


#: 3-D structure connecting only within an axial slice (axis 2 = slice axis).
_ST2 = np.zeros((3, 3, 3), bool)
_ST2[:, :, 1] = ndi.generate_binary_structure(2, 1)


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Fill holes of every axial slice (one 3-D call with in-plane connectivity)."""
    return fill_holes(mask, _ST2)


def _factors(spacing: np.ndarray) -> np.ndarray:
    """Integer block factors per axis giving a grid of about :data:`COARSE_MM`."""
    return np.maximum(1, np.round(COARSE_MM / np.asarray(spacing, float))).astype(int)


def _block(a: np.ndarray, f: np.ndarray, how: str) -> np.ndarray:
    """Block-reduce ``a`` by factors ``f``: ``mean`` (float32) or ``any`` (bool).

    The grid has ``n // f`` blocks per axis; the last ``n % f`` voxels are left out (they
    take the last block's value in :func:`_up`).  Strided sums: one pass over ``a``.
    """
    f = [int(k) for k in f]
    if all(k == 1 for k in f):
        return a.astype(np.float32) if how == "mean" else a.astype(bool, copy=True)
    nc = [n // k for n, k in zip(a.shape, f)]
    n = [c * k for c, k in zip(nc, f)]
    acc = np.zeros(nc, np.float32 if how == "mean" else bool)
    for i in range(f[0]):
        for j in range(f[1]):
            for k in range(f[2]):
                part = a[i:n[0]:f[0], j:n[1]:f[1], k:n[2]:f[2]]
                if how == "mean":
                    acc += part
                else:
                    acc |= part
    if how == "mean":
        acc *= np.float32(1.0 / (f[0] * f[1] * f[2]))
    return acc


def _up(c: np.ndarray, f: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """Nearest-neighbour upsampling of a :func:`_block` array onto the full-resolution
    voxels ``box`` (three slices with explicit start and stop)."""
    out = c
    for ax in range(3):
        idx = np.minimum(np.arange(box[ax].start, box[ax].stop) // int(f[ax]),
                         c.shape[ax] - 1)
        if not (len(idx) == out.shape[ax] and (idx == np.arange(len(idx))).all()):
            out = np.take(out, idx, axis=ax)
    return out


def _erode_inplane(mask: np.ndarray, r_vox: float) -> np.ndarray:
    """In-plane erosion by an octagon approximating a disk of ``r_vox`` voxels.

    The octagon is the Minkowski sum of ``k`` 3x3 squares and ``n - k`` 4-neighbour crosses
    (``k ~ 0.414 n``: equal axial and diagonal reach); the in-plane array border counts as
    outside.  Numpy slice operations only: fast on full-resolution volumes.
    """
    n = int(np.floor(r_vox + 1e-6))
    out = mask.copy()
    if n <= 0:
        return out
    out[0] = out[-1] = False
    out[:, 0] = out[:, -1] = False
    k = int(round(0.414 * n))
    steps = ["sq" if (i * k) // n != ((i + 1) * k) // n else "cr" for i in range(n)]
    for st in steps:
        src = out
        if st == "cr":
            out = src.copy()
            out[1:] &= src[:-1]
            out[:-1] &= src[1:]
            out[:, 1:] &= src[:, :-1]
            out[:, :-1] &= src[:, 1:]
        else:
            t = src.copy()
            t[1:] &= src[:-1]
            t[:-1] &= src[1:]
            out = t.copy()
            out[:, 1:] &= t[:, :-1]
            out[:, :-1] &= t[:, 1:]
    return out


def _disk(r_vox: np.ndarray) -> np.ndarray:
    ru, rv = (max(1, int(np.ceil(x))) for x in r_vox)
    u, v = np.mgrid[-ru:ru + 1, -rv:rv + 1]
    return (u / max(r_vox[0], 1e-6)) ** 2 + (v / max(r_vox[1], 1e-6)) ** 2 <= 1.0


def _disk3(r_vox: np.ndarray) -> np.ndarray:
    """:func:`_disk` as a 3-D in-plane structure (one slice thick)."""
    return _disk(r_vox)[:, :, None]


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

    def plane_xy(self, s: float, box: tuple[slice, slice] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """LPS x and y (mm) of the in-plane grid of slice ``s`` (optionally a sub-box)."""
        nu, nv = self.shape[:2]
        bu, bv = box if box is not None else (slice(0, nu), slice(0, nv))
        u = np.arange(bu.start, bu.stop, dtype=float)[:, None]
        v = np.arange(bv.start, bv.stop, dtype=float)[None, :]
        x = self.M[0, 0] * u + self.M[0, 1] * v + self.M[0, 2] * s + self.o[0]
        y = self.M[1, 0] * u + self.M[1, 1] * v + self.M[1, 2] * s + self.o[1]
        return x, y

    def grid_xy(self, f: np.ndarray, cshape: tuple[int, ...], coef: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """In-plane LPS offsets (mm) of the centres of a block grid (factors ``f``, shape
        ``cshape``) from a centreline ``coef``: (x - cx(s), y - cy(s)), each ``cshape``."""
        u = (np.arange(cshape[0]) * f[0] + (f[0] - 1) / 2.0)[:, None, None]
        v = (np.arange(cshape[1]) * f[1] + (f[1] - 1) / 2.0)[None, :, None]
        s = np.arange(cshape[2]) * f[2] + (f[2] - 1) / 2.0
        c = _eval_track(coef, s * self.spacing[2])
        out = []
        for a in (0, 1):
            off = (self.M[a, 2] * s + self.o[a] - c[:, a])[None, None, :]
            out.append((self.M[a, 0] * u + self.M[a, 1] * v + off).astype(np.float32))
        return out[0], out[1]


def _check_ct(ct: Volume) -> None:
    if ct.modality != "CT":
        raise InputError(
            f"soft-tissue segmentation needs CT in Hounsfield units, got modality "
            f"{ct.modality!r}; for MR import labels (planner.segment.imported.import_labels)",
            code="PLN-SOFT-001", details={"modality": ct.modality})
    a = np.asarray(ct.array)
    sub = a[tuple(slice(None, None, max(1, n // 96)) for n in a.shape)]  # ~1e6 samples
    lo, hi = float(np.percentile(sub, 1)), float(np.percentile(sub, 99.5))
    if lo > -500 or hi < 0:
        raise InputError(
            f"image values ({lo:.0f}..{hi:.0f}) do not look like Hounsfield units (air "
            "-1000); an MR or rescaled image was given where CT is required",
            code="PLN-SOFT-001", details={"p1": lo, "p99.5": hi})


def _bone_mask(ct_p: np.ndarray, bone_p: np.ndarray | None, metal_p: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray]:
    if bone_p is not None:
        top = int(bone_p.max()) if bone_p.size else 0
        lut = np.zeros(top + 1, bool)
        lut[[i for i in range(1, top + 1) if is_bone(i)]] = True
        bone = lut[bone_p]
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
def _hole_candidates(bone: np.ndarray, hu_s: np.ndarray, spacing: np.ndarray
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Holes of the bony ring per axial slice and their statistics.

    Bone is closed along the slice axis over :data:`CANAL_CLOSING_MM` and by 3x3 in-plane,
    then the holes of every slice are labelled (in-plane connectivity, so every label lies
    in one slice).  Returns the label map and per label (index ``label - 1``): ``id``,
    ``s`` (slice), ``area`` (mm^2), ``mean`` (HU of ``hu_s``), ``u``, ``v`` (centroid,
    voxels), ``extent`` (largest / smallest bounding-box side, a roundness proxy).
    """
    n_close = max(1, int(round(CANAL_CLOSING_MM / spacing[2])))
    # both closings of the bone extended by its edge values beyond the array
    b = np.pad(close_line(bone, n_close, axis=2), ((1, 1), (1, 1), (0, 0)), mode="edge")
    b = erode_box(dilate_box(b, (3, 3, 1)), (3, 3, 1))
    ring = b[1:-1, 1:-1, :] | bone
    holes = _fill_slices(ring) & ~ring
    lab, n = ndi.label(holes, structure=_ST2)
    keys = ("id", "s", "area", "mean", "u", "v", "extent")
    if n == 0:
        return lab, {k: np.zeros(0) for k in keys}
    iu, iv, is_ = np.nonzero(lab)
    lv = lab[iu, iv, is_]
    cnt = np.bincount(lv, minlength=n + 1)[1:].astype(float)
    st = {
        "id": np.arange(1, n + 1),
        "area": cnt * float(spacing[0] * spacing[1]),
        "mean": np.bincount(lv, weights=hu_s[iu, iv, is_], minlength=n + 1)[1:] / cnt,
        "u": np.bincount(lv, weights=iu, minlength=n + 1)[1:] / cnt,
        "v": np.bincount(lv, weights=iv, minlength=n + 1)[1:] / cnt,
    }
    core = ndi.binary_erosion(holes, structure=_ST2)
    cl = lab[core]
    ccnt = np.bincount(cl, minlength=n + 1)[1:].astype(float)
    cmean = np.bincount(cl, weights=hu_s[core], minlength=n + 1)[1:] / np.maximum(ccnt, 1)
    # density of the hole away from its rim: partial volume with the cortex (and labelled
    # bone that stops short of it) raises the rim
    st["mean"] = np.where(ccnt >= 0.25 * cnt, cmean, st["mean"])
    objs = ndi.find_objects(lab)
    st["s"] = np.array([o[2].start for o in objs], float)
    ext = np.array([((o[0].stop - o[0].start) * spacing[0], (o[1].stop - o[1].start) * spacing[1])
                    for o in objs])
    st["extent"] = ext.max(axis=1) / np.maximum(ext.min(axis=1), 1e-6)
    return lab, st


def _candidate_mask(st: dict[str, np.ndarray]) -> np.ndarray:
    """Holes of canal size, low mean density and not elongated."""
    return ((st["area"] >= CANAL_AREA_MM2[0]) & (st["area"] <= CANAL_AREA_MM2[1])
            & (st["mean"] <= CANAL_MAX_MEAN_HU) & (st["extent"] <= CANAL_MAX_EXTENT))


def _rough_track(fr: _Frame, f: np.ndarray, hc_s: np.ndarray, bone_c: np.ndarray
                 ) -> np.ndarray | None:
    """Canal centreline (LPS x, y over slice mm) from holes on the block grid, or None."""
    csp = fr.spacing * f
    _, st = _hole_candidates(bone_c, hc_s, csp)
    ok = _candidate_mask(st)
    if ok.sum() < 3:
        return None
    uvs = np.stack([st["u"][ok] * f[0] + (f[0] - 1) / 2, st["v"][ok] * f[1] + (f[1] - 1) / 2,
                    st["s"][ok] * f[2] + (f[2] - 1) / 2], axis=1)
    pts = fr.lps(uvs)[:, :2]
    coef, inl = _fit_track(uvs[:, 2] * fr.spacing[2], pts, st["area"][ok], (40.0, 20.0, 10.0))
    if coef is None or inl.sum() < 3:
        return None
    return coef


def _track_uv(fr: _Frame, coef: np.ndarray, s: np.ndarray) -> np.ndarray:
    """In-plane voxel coordinates (u, v) of the centreline at slices ``s`` (n, 2)."""
    s = np.atleast_1d(np.asarray(s, float))
    xy = _eval_track(coef, s * fr.spacing[2])
    rhs = xy - fr.o[:2] - np.outer(s, fr.M[:2, 2])
    return np.linalg.solve(fr.M[:2, :2], rhs.T).T


def _canal(fr: _Frame, hu_s: np.ndarray, bone: np.ndarray, body: np.ndarray,
           box: tuple[slice, slice]
           ) -> tuple[np.ndarray, dict[str, Any], list[CodedWarning]]:
    """Canal in an in-plane ``box`` (all slices); arrays are the box crops."""
    shape = hu_s.shape
    ns = shape[2]
    u0, v0 = box[0].start, box[1].start
    sp2 = fr.sp2
    warns: list[CodedWarning] = []
    lab, st = _hole_candidates(bone, hu_s, fr.spacing)
    ok = _candidate_mask(st)
    canal = np.zeros(shape, bool)
    info: dict[str, Any] = {"found": False}
    if ok.sum() < 3:
        warns.append(CodedWarning("PLN-W-SOFT-001", "spinal canal not found: no bony ring "
                                  "encloses a low-density region of canal size",
                                  {"candidates": int(ok.sum())}))
        return canal, info, warns
    ids = st["id"][ok]
    s_arr = st["s"][ok]
    uvs = np.stack([st["u"][ok] + u0, st["v"][ok] + v0, s_arr], axis=1)
    pts = fr.lps(uvs)[:, :2]
    w = st["area"][ok]
    coef, inl = _fit_track(s_arr * fr.spacing[2], pts, w, (40.0, 20.0, 10.0, CANAL_TRACK_TOL_MM))
    if coef is None or inl.sum() < 3:
        warns.append(CodedWarning("PLN-W-SOFT-001", "spinal canal not found: canal candidates "
                                  "do not line up along the spine", {"candidates": len(ids)}))
        return canal, info, warns
    med_area = float(np.median(w[inl]))
    d = np.linalg.norm(pts - _eval_track(coef, s_arr * fr.spacing[2]), axis=1)
    good = inl & (w >= 0.35 * med_area) & (w <= 2.5 * med_area)
    best: dict[int, tuple[float, int]] = {}
    for i in np.nonzero(good)[0]:
        s = int(s_arr[i])
        if s not in best or d[i] < best[s][0]:
            best[s] = (float(d[i]), int(ids[i]))
    enclosed = sorted(best)
    sel = np.zeros(int(lab.max()) + 1, bool)
    sel[[best[s][1] for s in enclosed]] = True
    canal = sel[lab]
    # the canal is round / oval: an opening removes the lateral recesses (narrow wings of
    # the hole between pedicle and body) and foraminal extensions
    if CANAL_OPEN_MM > 0:
        disk = _disk3(CANAL_OPEN_MM / sp2)
        opened = np.zeros_like(canal)
        if canal.any():
            # on the canal's bounding box padded by the disk (the same result, a fraction
            # of the voxels)
            bb = tuple(slice(max(0, b.start - r - 1), b.stop + r + 1) for b, r in zip(bbox(canal), np.array(disk.shape) // 2))
            opened[bb] = ndi.binary_opening(canal[bb], structure=disk)
        keep = opened.any(axis=(0, 1))
        canal[:, :, keep] = opened[:, :, keep]
    sections = {s: canal[:, :, s] for s in enclosed}

    csf = (hu_s >= CANAL_GROW_HU[0]) & (hu_s <= CANAL_GROW_HU[1]) & ~bone
    grow = _disk(CANAL_GROW_MM / sp2)
    interpolated: list[int] = []
    extrapolated: list[int] = []
    gaps_mm: list[float] = []

    def centre_uv(s: int) -> np.ndarray:
        return _track_uv(fr, coef, s)[0] - (u0, v0)

    sdf_cache: dict[int, np.ndarray] = {}

    def sdf2(s: int) -> np.ndarray:
        if s not in sdf_cache:
            m = sections[s]
            sdf_cache[s] = (ndi.distance_transform_edt(~m, sampling=sp2)
                            - ndi.distance_transform_edt(m, sampling=sp2)).astype(np.float32)
        return sdf_cache[s]

    def moved(s_from: int, s_to: int) -> np.ndarray:
        dd = centre_uv(s_to) - centre_uv(s_from)
        return ndi.shift(sdf2(s_from), dd, order=1, mode="nearest")

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


def _canal_box(fr: _Frame, coef: np.ndarray | None) -> tuple[slice, slice]:
    """In-plane box (voxel slices) of :data:`CANAL_BOX_MM` around the rough centreline."""
    nu, nv, ns = fr.shape
    if coef is None:
        return slice(0, nu), slice(0, nv)
    uv = _track_uv(fr, coef, np.arange(ns))
    r = CANAL_BOX_MM / fr.sp2
    lo = np.floor(uv.min(axis=0) - r).astype(int)
    hi = np.ceil(uv.max(axis=0) + r).astype(int) + 1
    lo = np.clip(lo, 0, [nu, nv])
    hi = np.clip(hi, 0, [nu, nv])
    if (hi - lo < 8).any():
        return slice(0, nu), slice(0, nv)
    return slice(int(lo[0]), int(hi[0])), slice(int(lo[1]), int(hi[1]))


# ---- aorta -------------------------------------------------------------------------------
def _aorta(fr: _Frame, f: np.ndarray, hc_s: np.ndarray, bone_c: np.ndarray,
           body_c: np.ndarray, dxy: tuple[np.ndarray, np.ndarray], canal_info: dict
           ) -> tuple[list[tuple[int, float, float, float]], dict[str, Any]]:
    """Aorta on the block grid: per full-resolution slice (s, x, y, radius mm)."""
    if not canal_info.get("found"):
        return [], {"found": False, "reason": "no spinal canal to search from"}
    csp = fr.spacing * f
    cs = hc_s.shape
    lo, hi = canal_info["slice_range"]
    ext = AORTA_EXTEND_MM / fr.spacing[2]
    klo = max(0, int(np.floor((lo - ext) / f[2])))
    khi = min(cs[2] - 1, int(np.ceil((hi + ext) / f[2])))
    dx, dy = dxy
    ant = -dy
    region = ((ant >= AORTA_ANTERIOR_MM[0]) & (ant <= AORTA_ANTERIOR_MM[1])
              & (dx >= AORTA_LATERAL_MM[0]) & (dx <= AORTA_LATERAL_MM[1]))
    m = (hc_s >= AORTA_HU[0]) & (hc_s <= AORTA_HU[1]) & ~bone_c & body_c & region
    m[:, :, :klo] = False
    m[:, :, khi + 1:] = False
    nz = ndi.find_objects(m.astype(np.uint8))
    if not nz or nz[0] is None:
        return [], {"found": False, "reason": "no blood-density tissue anterior to the spine"}
    bx = nz[0]
    mb = np.pad(m[bx], ((1, 1), (1, 1), (0, 0)))
    # in-plane distance: a huge slice spacing keeps the nearest background in-plane
    d = ndi.distance_transform_edt(mb, sampling=(csp[0], csp[1], 1e4))[1:-1, 1:-1]
    size = max(3, 2 * int(round(3.75 / float(csp[:2].min()))) + 1)
    mx = ndi.maximum_filter(d, size=(size, size, 1))
    pk = np.argwhere((d == mx) & (d >= AORTA_RADIUS_MM[0]) & (d <= AORTA_RADIUS_MM[1]))
    if len(pk) < 3:
        return [], {"found": False, "reason": "no round blood-density tube anterior to the "
                    "spine (contrast-enhanced or absent aorta?)"}
    pk_full = pk + [bx[0].start, bx[1].start, bx[2].start]
    uvs = pk_full * f + (f - 1) / 2.0
    xy = fr.lps(uvs)[:, :2]
    r = d[pk[:, 0], pk[:, 1], pk[:, 2]]
    s_mm = uvs[:, 2] * fr.spacing[2]
    coef_a, inl = _fit_track(s_mm, xy, r ** 2, (40.0, 20.0, 10.0, 6.0))
    if coef_a is None or inl.sum() < 3:
        return [], {"found": False, "reason": "round candidates do not form a tube"}
    pred = _eval_track(coef_a, s_mm)
    score = r - 0.5 * np.linalg.norm(xy - pred, axis=1)
    best: dict[int, int] = {}
    for i in np.nonzero(inl)[0]:
        k = int(pk_full[i, 2])
        if k not in best or score[i] > score[best[k]]:
            best[k] = i
    out = []
    half = 0.5 * float(csp[:2].min())
    for k, i in sorted(best.items()):
        for s in range(k * f[2], min(fr.shape[2], (k + 1) * f[2])):
            out.append((s, float(xy[i, 0]), float(xy[i, 1]), float(r[i] + half)))
    radii = [o[3] for o in out]
    return out, {"found": True, "slices": len(out), "median_radius_mm": float(np.median(radii))}


def _aorta_mask(fr: _Frame, disks: list[tuple[int, float, float, float]], hu: np.ndarray,
                bone: np.ndarray, out: np.ndarray) -> None:
    """Rasterise the aorta disks at full resolution into ``out`` (in place)."""
    if not disks:
        return
    Minv = np.linalg.inv(fr.M[:2, :2])
    nu, nv = fr.shape[:2]
    for s, x, y, r in disks:
        c = Minv @ (np.array([x, y]) - fr.o[:2] - fr.M[:2, 2] * s)
        h = (r + 2.0) / fr.sp2
        bu = slice(max(0, int(c[0] - h[0])), min(nu, int(c[0] + h[0]) + 2))
        bv = slice(max(0, int(c[1] - h[1])), min(nv, int(c[1] + h[1]) + 2))
        if bu.start >= bu.stop or bv.start >= bv.stop:
            continue
        xx, yy = fr.plane_xy(s, (bu, bv))
        disk = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
        hs = ndi.uniform_filter(hu[bu, bv, s].astype(np.float32), size=3)
        out[bu, bv, s] |= disk & ~bone[bu, bv, s] & (hs >= AORTA_HU[0] - 20)


# ---- public ------------------------------------------------------------------------------
def segment_soft_tissue(
    ct: Volume,
    *,
    bone_labels: np.ndarray | None = None,
    metal_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Segment body outline, skin, fat, lungs, pleura, canal, sac, aorta and fluid on CT.

    Body outline, lungs, pleura, fat, fluid and the aorta search run on a block grid of
    about :data:`COARSE_MM` (block means); outline and lung borders are then refined at
    full resolution within one block of the coarse border.  The canal runs at full
    resolution in a box of :data:`CANAL_BOX_MM` around a centreline found on the block
    grid.

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
        the thresholds used, ``timings_s`` and ``warnings`` (list of :class:`CodedWarning`).

    Raises
    ------
    InputError
        ``PLN-SOFT-001`` when the image is not CT in HU (e.g. MR).
    """
    t0 = time.perf_counter()
    tim: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal t0
        t = time.perf_counter()
        tim[name] = round(t - t0, 3)
        t0 = t

    _check_ct(ct)
    fr = _Frame(ct)
    for name, a in (("bone_labels", bone_labels), ("metal_mask", metal_mask)):
        if a is not None and tuple(np.shape(a)) != ct.shape:
            raise InputError(f"{name} shape {np.shape(a)} does not match the CT {ct.shape}",
                             code="PLN-GEO-003")
    hu = fr.to_perm(np.asarray(ct.array))
    shape = fr.shape
    bone, metal = _bone_mask(hu, None if bone_labels is None else fr.to_perm(bone_labels),
                             None if metal_mask is None else fr.to_perm(metal_mask))
    f = _factors(fr.spacing)
    csp = fr.spacing * f
    cvox_ml = float(np.prod(csp)) / 1000.0
    hc = _block(hu, f, "mean")
    # block means already average f^3 voxels (box of f*spacing ~ Gaussian sigma f*sp/sqrt(12))
    hc_s = _gauss(hc, float(np.sqrt(max(0.0, SMOOTH_MM ** 2 - float(np.mean(csp ** 2)) / 12))),
                  csp)
    bone_c = _block(bone, f, "any")
    ring_c = bone_c | (hc >= BONE_HU) if bone_labels is not None else bone_c
    warns: list[CodedWarning] = []
    info: dict[str, Any] = {"thresholds": {
        "smooth_mm": SMOOTH_MM, "coarse_mm": COARSE_MM, "body_hu": BODY_HU,
        "skin_mm": SKIN_MM, "fat_hu": FAT_HU,
        "bone_hu": None if bone_labels is not None else BONE_HU, "air_hu": AIR_HU,
        "csf_hu": CSF_HU, "aorta_hu": AORTA_HU, "fluid_hu": FLUID_HU,
        "canal_closing_mm": CANAL_CLOSING_MM, "canal_open_mm": CANAL_OPEN_MM}}
    lap("prepare")

    # body on the block grid
    body_c = _fill_slices(_largest_component(hc_s > BODY_HU))
    # lungs on the block grid
    air = (hc_s < AIR_HU) & body_c
    lab, n = ndi.label(air)
    lungs_c = np.zeros(air.shape, bool)
    if n:
        idx = np.arange(1, n + 1)
        flat = lab.ravel()
        cnt = np.bincount(flat, minlength=n + 1)[1:]
        mean = np.bincount(flat, weights=hc.ravel(), minlength=n + 1)[1:] / np.maximum(cnt, 1)
        keep = np.zeros(n + 1, bool)
        keep[idx[(cnt * cvox_ml >= LUNG_MIN_ML) & (mean >= LUNG_MIN_MEAN_HU)]] = True
        lungs_c = keep[lab]
    lap("body_lungs_coarse")

    # canal: rough centreline on the block grid, then full resolution in a box
    coef0 = _rough_track(fr, f, hc_s, ring_c)
    box = _canal_box(fr, coef0)
    bb = (box[0], box[1], slice(None))
    hu_box = _gauss(hu[bb], SMOOTH_MM, fr.spacing)
    body_box = _up(body_c, f, (box[0], box[1], slice(0, shape[2])))
    # the ring also takes bone-density voxels: labelled bone may stop short of the
    # partial-volume cortex edge, which would otherwise raise the mean HU of the hole
    ring_box = bone[bb] | (hu[bb] >= BONE_HU) if bone_labels is not None else bone[bb]
    canal_box, cinfo, w = _canal(fr, hu_box, ring_box, body_box, box)
    warns += w
    canal = np.zeros(shape, bool)
    canal[bb] = canal_box
    sac = np.zeros(shape, bool)
    sac[bb] = canal_box & (hu_box >= CSF_HU[0]) & (hu_box <= CSF_HU[1])
    lap("canal")

    # block-grid offsets from the midline (canal centreline, else the body centroid)
    coef = cinfo.get("track_coef")
    if coef is None:
        pts = np.argwhere(body_c)
        cen = fr.lps(pts.mean(axis=0) * f + (f - 1) / 2.0)[0] if len(pts) else fr.o
        coef = np.array([[0.0, 0.0], [0.0, 0.0], [cen[0], cen[1]]])
    dxy = fr.grid_xy(f, body_c.shape, coef)
    left_c = dxy[0] > 0

    # pleura zone, aorta, fluid on the block grid
    r = np.maximum(1, np.round(PLEURA_MM / csp)).astype(int)
    pleura_c = (dilate_box(lungs_c, tuple(2 * r + 1))
                if lungs_c.any() else lungs_c)
    disks, ainfo = _aorta(fr, f, hc_s, bone_c, body_c, dxy, cinfo)
    if not ainfo.get("found"):
        warns.append(CodedWarning("PLN-W-SOFT-003", f"aorta not found: {ainfo.get('reason')}",
                                  {}))
    canal_c = canal[tuple(slice((k - 1) // 2, n * k, k) for k, n in zip(f, body_c.shape))]
    canal_c = ndi.binary_dilation(canal_c, structure=_ST2)
    fluid_c, finfo = _fluid(fr, f, hc, bone_c, body_c, canal_c, lungs_c, dxy, cinfo)
    fat_c = body_c & (hc_s >= FAT_HU[0]) & (hc_s <= FAT_HU[1])
    lap("coarse_rest")

    # full resolution, in the body's bounding box: one upsampled code volume, outline and
    # lung borders refined on the raw HU within one block of the coarse border
    one = (3, 3, 3)
    code = (_erode_border(body_c).astype(np.uint8)
            | (dilate_box(body_c, one).astype(np.uint8) << 1)
            | (_erode_border(lungs_c).astype(np.uint8) << 2)
            | (dilate_box(lungs_c, one).astype(np.uint8) << 3)
            | (left_c.astype(np.uint8) << 4) | (pleura_c.astype(np.uint8) << 5)
            | (fluid_c.astype(np.uint8) << 6) | (fat_c.astype(np.uint8) << 7))
    nzc = np.nonzero(code & 2)
    if len(nzc[0]):
        cbox = tuple(slice(int(z.min()) * int(k), min(n, (int(z.max()) + 1) * int(k))
                           if z.max() + 1 < cn else n)
                     for z, k, n, cn in zip(nzc, f, shape, body_c.shape))
    else:
        cbox = tuple(slice(0, 0) for _ in shape)
    cu = _up(code, f, cbox)
    hb, nb = hu[cbox], ~bone[cbox]
    canal_b, sac_b = canal[cbox], sac[cbox]
    if (f == 1).all():
        # no block grid: the coarse masks are the full-resolution masks
        body = body_c[cbox]
        lungs = lungs_c[cbox]
    else:
        body = ((cu & 1) > 0) | (((cu & 2) > 0) & (hb > BODY_HU))
        lungs = (((cu & 4) > 0) | (((cu & 8) > 0) & (hb < AIR_HU))) & body
    lap("upsample")
    skin = body & ~_erode_inplane(body, (SKIN_MM + 0.5 * float(fr.sp2.min()))
                                  / float(fr.sp2.mean()))
    lung_left = lungs & ((cu & 16) > 0)
    lung_right = lungs & ~lung_left
    pleura = ((cu & 32) > 0) & body & ~lungs & nb & ~skin
    fluid = ((cu & 64) > 0) & nb & ~canal_b
    fat = ((cu & 128) > 0) & body
    aorta_full = np.zeros(shape, bool)
    _aorta_mask(fr, disks, hu, bone, aorta_full)
    aorta = aorta_full[cbox] & ~canal_b
    info["body"] = {"volume_ml": float(np.count_nonzero(body) * fr.voxel_ml)}
    info["lungs"] = {"left_ml": float(np.count_nonzero(lung_left) * fr.voxel_ml),
                     "right_ml": float(np.count_nonzero(lung_right) * fr.voxel_ml)}

    ob = np.zeros(body.shape, np.uint16)
    for mask, name in ((body, "soft_tissue"), (fat, "fat"), (pleura, "pleura"),
                       (lung_left, "lung_left"), (lung_right, "lung_right"), (aorta, "aorta"),
                       (fluid, "fluid_collection"), (skin, "skin"), (canal_b, "spinal_canal"),
                       (sac_b, "thecal_sac")):
        np.copyto(ob, np.uint16(LABEL_IDS[name]), where=mask)
    np.copyto(ob, np.uint16(0), where=~nb)
    out = np.zeros(shape, np.uint16)
    out[cbox] = ob
    lap("assemble")

    cinfo = {k: v for k, v in cinfo.items() if k != "track_coef"}
    if cinfo.get("found"):
        cinfo["volume_ml"] = float(canal.sum() * fr.voxel_ml)
        cinfo["sac_volume_ml"] = float(sac.sum() * fr.voxel_ml)
        cinfo["box"] = [[box[0].start, box[0].stop], [box[1].start, box[1].stop]]
    ids = [LABEL_IDS[k] for k in ("soft_tissue", "fat", "pleura", "lung_left", "lung_right",
                                  "aorta", "fluid_collection", "skin", "spinal_canal",
                                  "thecal_sac")]
    counts = {LABEL_NAMES[i]: int(c) for i in ids if (c := np.count_nonzero(ob == i))}
    info.update({"canal": cinfo, "aorta": ainfo, "fluid_collections": finfo,
                 "counts": counts,
                 "warnings": warns})
    lap("report")
    info["timings_s"] = tim
    log.debug("soft-tissue timings (s): %s", tim)
    for wr in warns:
        log.warning("[%s] %s", wr.code, wr.message)
    return np.ascontiguousarray(fr.from_perm(out)), info


def _erode_border(m: np.ndarray) -> np.ndarray:
    """``m`` minus its 26-connected border voxels (array border counts as inside)."""
    return erode_box(m, (3, 3, 3), border_value=1)


def _fluid(fr: _Frame, f: np.ndarray, hc: np.ndarray, bone_c: np.ndarray, body_c: np.ndarray,
           canal_c: np.ndarray, lungs_c: np.ndarray, dxy: tuple[np.ndarray, np.ndarray],
           cinfo: dict) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Posterior fluid collections on the block grid (``hc``: block-mean HU)."""
    out = np.zeros(hc.shape, bool)
    if not cinfo.get("found"):
        return out, []
    csp = fr.spacing * f
    sig = float(np.sqrt(max(0.0, FLUID_SMOOTH_MM ** 2 - float(np.mean(csp ** 2)) / 12)))
    hf = _gauss(hc, sig, csp)
    deep = _erode_inplane(body_c, FLUID_SKIN_MARGIN_MM / float(csp[:2].mean()))
    m = (hf >= FLUID_HU[0]) & (hf <= FLUID_HU[1]) & deep
    m &= ~ndi.binary_dilation(bone_c, iterations=1) & ~canal_c
    if lungs_c.any():
        m &= ~ndi.binary_dilation(lungs_c, iterations=max(1, int(round(6.0 / csp.min()))))
    m &= dxy[1] > 0  # posterior of the canal centreline
    m = ndi.binary_opening(m, structure=ndi.generate_binary_structure(3, 1), iterations=1)
    lab, n = ndi.label(m)
    found = []
    if n:
        cvox_ml = float(np.prod(csp)) / 1000.0
        iu, iv, is_ = np.nonzero(lab)
        lv = lab[iu, iv, is_]
        cnt = np.bincount(lv, minlength=n + 1).astype(float)
        keep = np.nonzero(cnt * cvox_ml >= FLUID_MIN_ML)[0]
        keep = keep[keep > 0]
        sel = np.zeros(n + 1, bool)
        sel[keep] = True
        out = sel[lab]
        for i in keep:
            c = np.array([np.bincount(lv, weights=a, minlength=n + 1)[i] for a in (iu, iv, is_)])
            c = c / cnt[i] * f + (f - 1) / 2.0
            found.append({"volume_ml": float(cnt[i] * cvox_ml),
                          "centroid_lps": [round(float(v), 2) for v in fr.lps(c)[0]]})
    return out, found
