"""Digitally reconstructed radiographs (DRRs) from a CT, with hardware and needles drawn in.

Physics
-------
A detector pixel records ``I = I0 exp(-p)`` with the line integral ``p = integral mu dl``
along the ray from the source to the pixel centre.  CT numbers are converted to linear
attenuation at the fluoroscopy beam's effective energy with the usual linear model (air
``mu = 0``, water ``mu_water``)::

    mu = mu_water * (1 + HU / 1000),      HU clipped to >= -1000

``mu_water = 0.0198 /mm``: water's 0.21 /cm at 50 keV and 0.18 /cm at 80 keV (J Nucl Med
table "Calculated linear attenuation coefficients (total minus Rayleigh scattering) of
water, bone and selected metals") interpolated log-log at a 60 keV effective energy [S];
the widely quoted "about 0.2 /cm" for diagnostic beams.  CT voxels at or above
``ct_metal_threshold_hu`` (the CT's own, usually clipped, picture of the metal) are replaced
by ``ct_metal_replacement_hu`` before conversion, and the hardware is *drawn in* instead:
every screw, rod, cross-link and needle is a set of cylinders
(:mod:`planner.fluoro.geometry`) whose exact chord length along each detector ray is
multiplied by the metal's attenuation and added to ``p``.  So metal shows with its true
shape and density even where the CT clipped it at 3071 HU.

Fast projector (:class:`DRRRenderer`)
-------------------------------------
1. *Prepare once* (cached on the renderer): HU -> mu, block-averaged in index space by an
   integer factor per axis to about ``target_spacing_mm`` (1.6 mm; the mean of mu over a
   block is exact because the map is linear after clipping), then smoothed by half a voxel
   (``prefilter_sigma_vox``, against interpolation stripes).  The grid may be oblique,
   anisotropic and left-handed: the projector works in the volume's own index space, where
   a perspective projection is still a perspective projection (affine maps keep lines).
2. *Per view*, a perspective **shear-warp / Joseph** projector: choose the index axis ``k``
   most aligned with the central ray; every slice ``k = const`` projects from the source onto
   the base slice (the one farthest from the source) by a pure scaling about the source's
   foot point, which is separable.  Each slice is resampled onto an intermediate base-plane
   grid (one voxel pitch, ``supersample`` finer on request) with bilinear interpolation
   (a row gather, then a batched matrix product with a 2-tap interpolation matrix) and the
   slices are summed.  Along one ray the step between consecutive slices has a constant
   length ``l = |A r| / |r_k|`` (``A`` the voxel-to-mm matrix, ``r`` the ray in index space),
   so the intermediate image times ``l`` is the line integral.
3. The intermediate image is warped to the detector: each pixel's ray meets the base plane
   at one point, sampled bilinearly.

The cost is set by the CT grid (slices x intermediate pixels), not the detector: a
512 x 512 DRR of the case-example CT (0.8 mm, 41 Mvoxel, prepared at 1.6 mm) takes about
0.2-0.3 s on a 2-core machine.  :func:`raycast_reference` is the straightforward
full-resolution ray caster (trilinear ``scipy.ndimage.map_coordinates`` along every ray)
the benchmark and the tests compare against.

Assumptions: the source lies outside the volume along the chosen axis or slices behind it
are skipped (they are not in the beam); the whole volume between the source and the
detector plane is integrated (the detector is not inside the patient).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from planner.fluoro.carm import CArm
from planner.fluoro.geometry import Cylinders, FluoroError, cylinder_chords, implant_cylinders
from planner.volume import Volume

log = logging.getLogger(__name__)

#: Display polarities: "fluoroscopy" shows attenuation dark (metal black, as on a C-arm
#: monitor); "radiograph" shows it bright (bone and metal white, as on film).
POLARITIES = ("fluoroscopy", "radiograph")


@dataclass(frozen=True)
class DRRSettings:
    """Settings of the DRR (every value documented, all overridable).

    Attributes
    ----------
    mu_water_per_mm : float
        Attenuation of water at the effective energy: 0.0198 /mm [S] (module docstring).
    ct_metal_threshold_hu : float
        CT voxels at or above this are the CT's picture of metal: 2500 HU [U] (above
        dense cortical bone, which stays below about 2000 HU; below the 3071 HU clip).
    ct_metal_replacement_hu : float
        Value given to those voxels, the drawn-in hardware standing for the metal itself:
        300 HU [U] (the bone and blooming halo around an implant, not air).
    target_spacing_mm : float
        Spacing the CT is block-averaged to before projection: 1.6 mm [U] (the integer
        factor per axis is ``round(target / spacing)``, at least 1; detail finer than this
        is below a C-arm's visible resolution at 0.35 mm / pixel at the isocentre anyway).
        Set 0 to project the CT at its own resolution.
    prefilter_sigma_vox : float
        Gaussian smoothing (in prepared voxels) of the attenuation volume before
        projection: 0.5 [U].  Linear interpolation smooths by an amount that varies with
        a sample's sub-voxel offset, which shows as fine stripes in oblique views of a
        noisy CT (in the full-resolution reference ray caster too); half a voxel of
        smoothing makes it uniform at little loss of sharpness.  0 disables it.
    supersample : float
        Intermediate-image pixels per voxel on the base plane: 1.0 [U] (2.0 doubles the
        sampling for a sharper image at about four times the cost).
    slab_chunk : int
        Slices resampled at once (memory bound): 64.
    window : (2,) float or None
        Display window in line-integral units (``p``); ``None`` takes it from
        ``window_percentiles`` of the CT part of the image.
    window_percentiles : (2,) float
        Percentiles of the CT line integral over the pixels that see the patient, used as
        the window: (1, 99.5) [U].
    window_min_fraction : float
        Pixels whose CT line integral is below this fraction of the image maximum (air
        beside the patient) are left out of the automatic window: 0.02 [U].
    window_region : float
        Side of the central square of the detector (fraction of each side) whose pixels
        set the automatic window, as a C-arm's automatic exposure and brightness control
        meters the centre of the field: 0.5 [U].
    gamma : float
        Display gamma applied to the windowed value: 1.0.
    rod_simplify_mm : float
        Douglas-Peucker tolerance for drawing rod / cross-link centre lines (fewer
        cylinders, no visible change): 0.05 mm.
    polarity : str
        ``"fluoroscopy"`` (default; attenuation dark, metal black) or ``"radiograph"``.
    """

    mu_water_per_mm: float = 0.0198
    ct_metal_threshold_hu: float = 2500.0
    ct_metal_replacement_hu: float = 300.0
    target_spacing_mm: float = 1.6
    prefilter_sigma_vox: float = 0.5
    supersample: float = 1.0
    slab_chunk: int = 64
    window: tuple[float, float] | None = None
    window_percentiles: tuple[float, float] = (1.0, 99.5)
    window_min_fraction: float = 0.02
    window_region: float = 0.5
    gamma: float = 1.0
    rod_simplify_mm: float = 0.05
    polarity: str = "fluoroscopy"

    def __post_init__(self) -> None:
        if not self.mu_water_per_mm > 0:
            raise FluoroError("mu_water_per_mm must be > 0", code="PLN-FLU-001")
        if (
            not self.target_spacing_mm >= 0
            or not self.prefilter_sigma_vox >= 0
            or not self.supersample > 0
            or self.slab_chunk < 1
        ):
            raise FluoroError(
                "target_spacing_mm and prefilter_sigma_vox must be >= 0, supersample > 0 and slab_chunk >= 1",
                code="PLN-FLU-001",
            )
        if self.polarity not in POLARITIES:
            raise FluoroError(f"polarity must be one of {POLARITIES}, got {self.polarity!r}", code="PLN-FLU-001")
        if not 0 < self.window_region <= 1 or self.rod_simplify_mm < 0 or not 0 <= self.window_min_fraction < 1:
            raise FluoroError(
                "window_region must be in (0, 1], window_min_fraction in [0, 1) and rod_simplify_mm >= 0",
                code="PLN-FLU-001",
            )
        if not self.gamma > 0:
            raise FluoroError("gamma must be > 0", code="PLN-FLU-001")
        lo, hi = self.window_percentiles
        if not 0 <= lo < hi <= 100:
            raise FluoroError("window_percentiles must satisfy 0 <= lo < hi <= 100", code="PLN-FLU-001")
        if self.window is not None and not float(self.window[1]) > float(self.window[0]):
            raise FluoroError("window must be (lo, hi) with hi > lo", code="PLN-FLU-001")


@dataclass
class DRRImage:
    """A simulated radiograph.

    Attributes
    ----------
    ct_line_integral : (rows, cols) float32
        ``integral mu dl`` of the CT along each pixel's ray (dimensionless).
    metal_line_integral : (rows, cols) float32
        The drawn-in hardware and needles' contribution.
    carm : CArm
        Geometry and pose of the view.
    settings : DRRSettings
    timings_s : dict
        ``ct``, ``metal``, ``total`` seconds.
    """

    ct_line_integral: np.ndarray
    metal_line_integral: np.ndarray
    carm: CArm
    settings: DRRSettings
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def line_integral(self) -> np.ndarray:
        """Total ``p`` per pixel, (rows, cols) float32."""
        return self.ct_line_integral + self.metal_line_integral

    @property
    def transmission(self) -> np.ndarray:
        """``I / I0 = exp(-p)``, (rows, cols) float32."""
        return np.exp(-self.line_integral)

    def window(self) -> tuple[float, float]:
        """The display window ``(lo, hi)`` in line-integral units."""
        if self.settings.window is not None:
            return float(self.settings.window[0]), float(self.settings.window[1])
        ct = self.ct_line_integral
        f = self.settings.window_region
        rows, cols = ct.shape
        r0, c0 = int(rows * (1 - f) / 2), int(cols * (1 - f) / 2)
        ct = ct[r0 : rows - r0, c0 : cols - c0] if 0 < f < 1 else ct
        seen = ct[ct > self.settings.window_min_fraction * float(ct.max())] if ct.max() > 0 else ct.ravel()
        if seen.size == 0:
            return 0.0, 1.0
        lo, hi = np.percentile(seen, self.settings.window_percentiles)
        if not hi > lo:
            hi = lo + 1.0
        return float(lo), float(hi)

    def intensity(self) -> np.ndarray:
        """Displayed image in [0, 1], (rows, cols) float32 (window, gamma, polarity)."""
        lo, hi = self.window()
        x = np.clip((self.line_integral - lo) / (hi - lo), 0.0, 1.0) ** self.settings.gamma
        if self.settings.polarity == "fluoroscopy":
            x = 1.0 - x
        return x.astype(np.float32)

    def to_uint8(self) -> np.ndarray:
        """Displayed image as (rows, cols) uint8."""
        return np.rint(self.intensity() * 255.0).astype(np.uint8)


# ---- HU -> mu --------------------------------------------------------------------------
def _hu_clean(hu: np.ndarray, s: DRRSettings) -> np.ndarray:
    """HU with air clipped at -1000 and CT metal replaced (dtype kept when integer)."""
    a = np.asarray(hu)
    lo = -1000
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        thr = int(np.ceil(s.ct_metal_threshold_hu))
        rep = int(np.rint(s.ct_metal_replacement_hu))
        a = np.maximum(a, max(lo, info.min)).astype(a.dtype, copy=False)
        if thr <= info.max:
            a = np.where(a >= thr, np.asarray(rep, a.dtype), a)
        return a
    a = np.maximum(a.astype(np.float32), lo)
    return np.where(a >= s.ct_metal_threshold_hu, np.float32(s.ct_metal_replacement_hu), a)


def mu_from_hu(hu: np.ndarray, settings: DRRSettings | None = None) -> np.ndarray:
    """Linear attenuation (1/mm, float32) from HU, CT metal replaced (module docstring)."""
    s = settings or DRRSettings()
    a = _hu_clean(hu, s).astype(np.float32)
    return (s.mu_water_per_mm * (1.0 + a / 1000.0)).astype(np.float32)


def downsample_factors(spacing: np.ndarray, target_mm: float) -> tuple[int, int, int]:
    """Integer block factor per axis taking ``spacing`` (3,) to about ``target_mm``."""
    if target_mm <= 0:
        return (1, 1, 1)
    return tuple(max(1, int(np.floor(target_mm / float(sp) + 0.5))) for sp in spacing)  # type: ignore[return-value]


def _block_mean(a: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """Mean over f0 x f1 x f2 blocks (trailing remainders dropped), float64 accumulation-free."""
    n = [s // k for s, k in zip(a.shape, f)]
    a = a[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]]
    acc = np.int32 if np.issubdtype(a.dtype, np.integer) else np.float32
    for ax, k in enumerate(f):
        if k == 1:
            continue
        shp = list(a.shape)
        shp[ax : ax + 1] = [shp[ax] // k, k]
        a = a.reshape(shp).sum(axis=ax + 1, dtype=acc)
    return a.astype(np.float32) / float(np.prod(f))


# ---- the fast projector ------------------------------------------------------------------
class DRRRenderer:
    """DRRs of one CT: prepares (and caches) the attenuation volume, then projects views.

    Parameters
    ----------
    ct : Volume
        CT in HU (modality ``"CT"``), any oblique / anisotropic / left-handed grid.
    settings : DRRSettings, optional

    Attributes
    ----------
    mu : (n0, n1, n2) float32
        Block-averaged attenuation, 1/mm.
    lps_from_ijk : (4, 4) float
        Geometry of ``mu``.
    factors : (3,) int
        Block factor per axis.
    prepare_s : float
        Seconds spent preparing.
    """

    def __init__(self, ct: Volume, settings: DRRSettings | None = None) -> None:
        if not isinstance(ct, Volume) or ct.modality != "CT":
            raise FluoroError(
                "a DRR needs a CT Volume in HU (modality 'CT'); convert MR or label maps first",
                code="PLN-FLU-002",
            )
        self.settings = settings or DRRSettings()
        t0 = time.perf_counter()
        f = downsample_factors(ct.spacing, self.settings.target_spacing_mm)
        if any(s < k for s, k in zip(ct.shape, f)):
            f = tuple(min(s, k) for s, k in zip(ct.shape, f))
        s = self.settings
        hu = _hu_clean(ct.array, s)
        hu_mean = _block_mean(hu, f) if f != (1, 1, 1) else hu.astype(np.float32)
        mu = (s.mu_water_per_mm * (1.0 + hu_mean / 1000.0)).astype(np.float32)
        if s.prefilter_sigma_vox > 0:
            mu = ndimage.gaussian_filter(mu, s.prefilter_sigma_vox, mode="nearest")
        self.mu = mu
        A = np.array(ct.lps_from_ijk, float)
        B = np.eye(4)
        B[:3, :3] = np.diag(np.asarray(f, float))
        B[:3, 3] = (np.asarray(f, float) - 1.0) / 2.0
        self.lps_from_ijk = A @ B
        self.ijk_from_lps = np.linalg.inv(self.lps_from_ijk)
        self.factors = tuple(int(k) for k in f)
        self._slabs: dict[int, np.ndarray] = {}
        self.prepare_s = time.perf_counter() - t0
        log.debug("DRR volume %s -> %s (factors %s) in %.3f s", ct.shape, self.mu.shape, f, self.prepare_s)

    def _slab_volume(self, ax: int) -> np.ndarray:
        """``mu`` with axis ``ax`` first and a zero border on the other two, (nk, n0+2, n1+2)."""
        V = self._slabs.get(ax)
        if V is None:
            others = [i for i in range(3) if i != ax]
            src = self.mu.transpose(ax, others[0], others[1])
            V = np.zeros((src.shape[0], src.shape[1] + 2, src.shape[2] + 2), np.float32)
            V[:, 1:-1, 1:-1] = src
            self._slabs[ax] = V
        return V

    def ct_line_integrals(self, carm: CArm) -> np.ndarray:
        """Line integral of the CT's attenuation for every detector pixel.

        Parameters
        ----------
        carm : CArm

        Returns
        -------
        (rows, cols) float32
        """
        rows, cols = carm.image_shape
        out = np.zeros((rows, cols), np.float32)
        ps = carm.pose()
        B = self.ijk_from_lps
        s_ijk = B[:3, :3] @ ps.source_lps + B[:3, 3]
        r0 = B[:3, :3] @ ps.beam_axis
        ax = int(np.argmax(np.abs(r0)))
        others = [i for i in range(3) if i != ax]
        perm = [others[0], others[1], ax]
        V = self._slab_volume(ax)
        nk, n0p, n1p = V.shape
        n0, n1 = n0p - 2, n1p - 2
        sp, sq, sk = (float(x) for x in s_ijk[perm])
        sign = 1.0 if r0[ax] > 0 else -1.0
        k_all = np.arange(nk, dtype=float)
        kk = k_all[(k_all - sk) * sign > 1.0]
        if kk.size == 0:
            log.warning("DRR: the volume lies behind the source; image is empty")
            return out
        if kk.size < nk:
            log.debug("DRR: %d of %d slices lie behind the source and are skipped", nk - kk.size, nk)
        kb = float(kk[-1] if sign > 0 else kk[0])
        lam = (kb - sk) / (kk - sk)  # >= 1: slice -> base-plane scaling about the source

        # detector pixel rays in permuted index space, r = pixel - source (separable in u, v)
        nc, nr = carm.detector_pixels
        pu, pv = carm.pixel_pitch_mm
        du = (np.arange(nc) - (nc - 1) / 2.0) * pu
        dv = (np.arange(nr) - (nr - 1) / 2.0) * pv
        Bp = B[:3, :3][perm]  # permuted index from LPS (linear part)
        base = Bp @ (ps.detector_centre_lps - ps.source_lps)
        bu, bv = Bp @ ps.u_axis, Bp @ ps.v_axis
        r = [base[i] + dv[:, None] * bv[i] + du[None, :] * bu[i] for i in range(3)]  # 3 x (nr, nc)
        rk = r[2]
        valid = rk * sign > 1e-9
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(valid, (kb - sk) / rk, 0.0)
        pb_pix = sp + t * r[0]
        qb_pix = sq + t * r[1]
        if not valid.any():
            return out

        # intermediate grid: volume footprint on the base plane, clipped to the detector's
        lam_ends = np.array([lam.min(), lam.max()])
        vp = sp + (np.array([-1.0, n0])[:, None] - sp) * lam_ends[None, :]
        vq = sq + (np.array([-1.0, n1])[:, None] - sq) * lam_ends[None, :]
        p_lo = max(vp.min(), pb_pix[valid].min()) - 1.0
        p_hi = min(vp.max(), pb_pix[valid].max()) + 1.0
        q_lo = max(vq.min(), qb_pix[valid].min()) - 1.0
        q_hi = min(vq.max(), qb_pix[valid].max()) + 1.0
        if not (p_hi > p_lo and q_hi > q_lo):
            log.debug("DRR: the beam misses the volume")
            return out
        h = 1.0 / self.settings.supersample
        M = int(np.floor((p_hi - p_lo) / h)) + 1
        L = int(np.floor((q_hi - q_lo) / h)) + 1
        pb = p_lo + h * np.arange(M)
        qb = q_lo + h * np.arange(L)

        # resample every slice onto the base-plane grid and sum (transposed: (L, M))
        inter_t = np.zeros((L, M), np.float32)
        chunk = self.settings.slab_chunk
        for c0 in range(0, kk.size, chunk):
            ks = kk[c0 : c0 + chunk].astype(np.intp)
            lm = lam[c0 : c0 + chunk]
            c = np.arange(len(ks))[:, None]
            # pass 1: along p, a 2-tap row gather -> (c, M, n1p)
            p = np.clip(sp + (pb[None, :] - sp) / lm[:, None], -1.0, float(n0))
            i0 = np.clip(np.floor(p), -1, n0 - 1).astype(np.intp)
            w = (p - i0).astype(np.float32)[:, :, None]
            i0 += 1
            g0 = V[ks[:, None], i0]
            g1 = V[ks[:, None], i0 + 1]
            g1 -= g0
            g1 *= w
            g1 += g0
            # pass 2: along q, the same on the transposed rows -> (c, L, M)
            T = np.ascontiguousarray(g1.transpose(0, 2, 1))
            q = np.clip(sq + (qb[None, :] - sq) / lm[:, None], -1.0, float(n1))
            j0 = np.clip(np.floor(q), -1, n1 - 1).astype(np.intp)
            wq = (q - j0).astype(np.float32)[:, :, None]
            j0 += 1
            h0 = T[c, j0]
            h1 = T[c, j0 + 1]
            h1 -= h0
            h1 *= wq
            h1 += h0
            inter_t += h1.sum(axis=0)

        # warp to the detector (bilinear, zero outside) and scale by the per-ray step length
        Z = np.zeros((L + 2, M + 2), np.float32)
        Z[1:-1, 1:-1] = inter_t
        x = np.clip((pb_pix - p_lo) / h + 1.0, 0.0, M + 1.0)
        y = np.clip((qb_pix - q_lo) / h + 1.0, 0.0, L + 1.0)
        x0 = np.minimum(np.floor(x), M).astype(np.intp)
        y0 = np.minimum(np.floor(y), L).astype(np.intp)
        fx = (x - x0).astype(np.float32)
        fy = (y - y0).astype(np.float32)
        flat = Z.ravel()
        idx = y0 * (M + 2) + x0
        top = flat[idx] + fx * (flat[idx + 1] - flat[idx])
        bot = flat[idx + M + 2] + fx * (flat[idx + M + 3] - flat[idx + M + 2])
        img = top + fy * (bot - top)
        A_perm = self.lps_from_ijk[:3, :3][:, perm]
        mm = [A_perm[i, 0] * r[0] + A_perm[i, 1] * r[1] + A_perm[i, 2] * r[2] for i in range(3)]
        with np.errstate(divide="ignore", invalid="ignore"):
            ell = np.sqrt(mm[0] ** 2 + mm[1] ** 2 + mm[2] ** 2) / np.abs(rk)
        return np.where(valid, img * ell, 0.0).astype(np.float32)

    def render(self, carm: CArm, hardware: Iterable[Any] = (), needles: Iterable[Any] = ()) -> DRRImage:
        """A DRR with hardware and needles drawn in.

        Parameters
        ----------
        carm : CArm
        hardware : iterable of Screw, Rod, CrossLink or Cylinders
        needles : iterable of :class:`planner.fluoro.views.Trajectory` (or anything with a
            ``cylinders()`` method returning :class:`Cylinders`)

        Returns
        -------
        DRRImage
        """
        t0 = time.perf_counter()
        ct = self.ct_line_integrals(carm)
        t1 = time.perf_counter()
        cyl = Cylinders.concat(
            [implant_cylinders(hardware, self.settings.rod_simplify_mm)] + [n.cylinders() for n in needles or ()]
        )
        metal = metal_line_integrals(carm, cyl)
        t2 = time.perf_counter()
        return DRRImage(ct, metal, carm, self.settings, {"ct": t1 - t0, "metal": t2 - t1, "total": t2 - t0})


def metal_line_integrals(carm: CArm, cylinders: Cylinders, margin_px: int = 2) -> np.ndarray:
    """Sum over cylinders of ``mu x chord length`` along every detector ray.

    Each cylinder is evaluated only on the pixels inside the projection of its bounding
    box (plus ``margin_px``).

    Parameters
    ----------
    carm : CArm
    cylinders : Cylinders
    margin_px : int

    Returns
    -------
    (rows, cols) float32
    """
    rows, cols = carm.image_shape
    out = np.zeros((rows, cols), np.float64)
    if not len(cylinders):
        return out.astype(np.float32)
    ps = carm.pose()
    s = ps.source_lps
    P = carm.pixel_from_lps()
    nc, nr = carm.detector_pixels
    pu, pv = carm.pixel_pitch_mm
    sgn = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    for a, b, r, mu in zip(cylinders.p0, cylinders.p1, cylinders.radius, cylinders.mu):
        centre = (a + b) / 2.0
        half = np.abs(b - a) / 2.0 + r
        corners = centre + sgn * half
        hom = corners @ P[:, :3].T + P[:, 3]
        if np.any(hom[:, 2] <= 1e-6):
            r0, r1, c0, c1 = 0, rows, 0, cols
        else:
            uv = hom[:, :2] / hom[:, 2:3]
            c0 = int(max(0, np.floor(uv[:, 0].min()) - margin_px))
            c1 = int(min(cols, np.ceil(uv[:, 0].max()) + margin_px + 1))
            r0 = int(max(0, np.floor(uv[:, 1].min()) - margin_px))
            r1 = int(min(rows, np.ceil(uv[:, 1].max()) + margin_px + 1))
            if c1 <= c0 or r1 <= r0:
                continue
        du = (np.arange(c0, c1) - (nc - 1) / 2.0) * pu
        dv = (np.arange(r0, r1) - (nr - 1) / 2.0) * pv
        X = (
            ps.detector_centre_lps[None, None, :]
            + dv[:, None, None] * ps.v_axis[None, None, :]
            + du[None, :, None] * ps.u_axis[None, None, :]
        ).reshape(-1, 3)
        out[r0:r1, c0:c1] += mu * cylinder_chords(s, X, a, b, float(r)).reshape(r1 - r0, c1 - c0)
    return out.astype(np.float32)


# ---- reference ray caster --------------------------------------------------------------
def raycast_reference(
    ct: Volume, carm: CArm, settings: DRRSettings | None = None, step_mm: float | None = None,
    rows_per_chunk: int = 8,
) -> np.ndarray:
    """Straightforward DRR: march every detector ray through the full-resolution CT.

    Each ray is clipped to the volume's box (voxel centres +/- half a voxel), sampled every
    ``step_mm`` (default: the smallest voxel spacing) with trilinear interpolation
    (``scipy.ndimage.map_coordinates``, order 1, zero outside) of mu (same HU -> mu map
    as :class:`DRRRenderer`, no downsampling), and summed times the step.

    Parameters
    ----------
    ct : Volume
    carm : CArm
    settings : DRRSettings, optional
    step_mm : float, optional
    rows_per_chunk : int
        Detector rows traced at once (memory bound).

    Returns
    -------
    (rows, cols) float32
        CT line integrals (no hardware).
    """
    if ct.modality != "CT":
        raise FluoroError("a DRR needs a CT Volume in HU", code="PLN-FLU-002")
    s = settings or DRRSettings()
    mu = mu_from_hu(ct.array, s)
    step = float(step_mm or ct.spacing.min())
    B = ct.ijk_from_lps
    ps = carm.pose()
    src = B[:3, :3] @ ps.source_lps + B[:3, 3]
    n = np.array(ct.shape, float)
    box_lo, box_hi = -0.5 * np.ones(3), n - 0.5
    rows, cols = carm.image_shape
    out = np.zeros((rows, cols), np.float32)
    A3 = ct.lps_from_ijk[:3, :3]
    for r0 in range(0, rows, rows_per_chunk):
        X = carm.pixel_centres_lps(slice(r0, min(rows, r0 + rows_per_chunk))).reshape(-1, 3)
        D = X @ B[:3, :3].T + B[:3, 3] - src  # index-space ray, t in [0, 1] source -> pixel
        with np.errstate(divide="ignore", invalid="ignore"):
            ta = (box_lo - src) / D
            tb = (box_hi - src) / D
        t_in = np.nanmax(np.where(np.isfinite(ta), np.minimum(ta, tb), -np.inf), axis=1)
        t_out = np.nanmin(np.where(np.isfinite(ta), np.maximum(ta, tb), np.inf), axis=1)
        t_in = np.maximum(t_in, 0.0)
        t_out = np.minimum(t_out, 1.0)
        length_mm = np.linalg.norm(D @ A3.T, axis=1)  # mm per unit t
        hit = (t_out > t_in) & (length_mm > 0)
        if not hit.any():
            continue
        seg_mm = np.where(hit, (t_out - t_in) * length_mm, 0.0)
        nsteps = np.where(hit, np.maximum(np.ceil(seg_mm / step), 1), 0).astype(int)
        kmax = int(nsteps.max())
        j = (np.arange(kmax) + 0.5)[None, :]
        dt = np.where(hit, (t_out - t_in) / np.maximum(nsteps, 1), 0.0)  # midpoint rule per ray
        tt = t_in[:, None] + j * dt[:, None]
        inside = j < nsteps[:, None]
        pts = src[None, None, :] + tt[:, :, None] * D[:, None, :]
        vals = ndimage.map_coordinates(
            mu, pts[inside].T, order=1, mode="constant", cval=0.0, prefilter=False
        )
        acc = np.zeros(inside.shape, np.float64)
        acc[inside] = vals
        w_mm = np.where(hit, seg_mm / np.maximum(nsteps, 1), 0.0)
        out.reshape(-1)[r0 * cols : r0 * cols + len(X)] = acc.sum(axis=1) * w_mm
    return out


_CACHE: dict[str, tuple] = {}


def renderer_for(ct: Volume, settings: DRRSettings | None = None) -> DRRRenderer:
    """A :class:`DRRRenderer` for ``ct``, reused while the same array and settings are passed."""
    s = settings or DRRSettings()
    prep = (
        s.mu_water_per_mm, s.ct_metal_threshold_hu, s.ct_metal_replacement_hu, s.target_spacing_mm,
        s.prefilter_sigma_vox,
    )
    hit = _CACHE.get("last")
    if hit is not None:
        ref, affine, key, rend = hit
        if ref() is ct.array and np.array_equal(affine, ct.lps_from_ijk) and key == prep:
            if rend.settings != s:
                rend.settings = s
            return rend
    rend = DRRRenderer(ct, s)
    _CACHE["last"] = (weakref.ref(ct.array), ct.lps_from_ijk.copy(), prep, rend)
    return rend


def drr(
    ct: Volume, carm: CArm, hardware: Iterable[Any] = (), needles: Iterable[Any] = (),
    settings: DRRSettings | None = None,
) -> DRRImage:
    """A DRR of ``ct`` seen by ``carm`` with hardware and needles drawn in.

    The prepared attenuation volume is cached for the last CT passed (see
    :func:`renderer_for`), so repeated views of one CT pay the preparation once.
    """
    return renderer_for(ct, settings).render(carm, hardware, needles)
