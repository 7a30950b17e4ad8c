"""Metal streak artefacts in CT by forward projection, corruption and filtered back projection.

Physics (per axial slice, parallel-beam geometry over 180 degrees)
------------------------------------------------------------------
1. HU -> linear attenuation ``mu = MU_WATER * (1 + HU / 1000)`` (definition of the HU scale).
2. Line integrals of the slice, ``p``, and of the metal part alone, ``p_m`` (the metal's
   attenuation, estimated per voxel from its HU and its metal fraction).
3. **Beam hardening**: a polychromatic beam hardens as it crosses metal, so the measured line
   integral falls short of the linear one.  Second-order cumulant expansion of
   ``-ln <exp(-mu(E) L)>_spectrum`` gives ``p' = p - beta * p_m**2`` with
   ``beta = (sigma_mu / mu_mean)**2 / 2`` the relative spread of the metal's attenuation
   across the spectrum (:data:`DEFAULT_BETA`).  That quadratic grows without bound (and
   would make ``p'`` negative along a screw's axis, ``p_m`` ~ 7), so the code uses the exact
   result for a two-component spectrum with attenuations ``mu (1 +- delta)``:
   ``p' = p - ln cosh(delta * p_m)``, ``delta = sqrt(2 beta)``, which equals
   ``p - beta p_m**2`` for small ``p_m`` and tends to the hard component's ``(1 - delta) p_m``
   (plus ln 2) for large ``p_m``.
4. **Photon starvation**: counts ``N ~ Poisson(I0 * exp(-p'))`` on every ray that crosses
   metal; ``N`` is floored at :data:`COUNT_FLOOR` (scanners clamp zero counts before the log)
   and ``p'' = -ln(N / I0)``.  Rays that miss metal are left exact: the ordinary quantum
   noise is added to the whole volume later by :func:`planner.phantom.ct.finish_ct`.
5. **Reconstruction**: FBP is linear, so ``recon(p'') - recon(p) = FBP(p'' - p)``: only the
   error sinogram is filtered (Ram-Lak kernel, Kak & Slaney ch. 3, with a Hann window) and
   back-projected, on a grid of at most ``max_px`` pixels across, then the artefact image
   (HU) is interpolated back onto the slice and added.

Speed comes from working on a coarse grid (<= 256 px), from computing the metal projection by
splatting only the metal pixels, from projecting the (smooth) body on a further 2x coarser
grid, and from a vectorised back projection.  Slices without metal are skipped.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

#: Linear attenuation of water at the effective energy of a 120 kVp beam, 1/mm.
#: 0.195 /cm as quoted by radiologystar.com "CT number or Hounsfield units" [S]
#: (NIST XCOM gives 0.194 /cm at 70 keV).
MU_WATER = 0.0195

#: Beam-hardening coefficient (dimensionless), ``beta = (sigma_mu/mu)^2 / 2``.  0.15 means a
#: relative spread of the metal's attenuation across the filtered 120 kVp spectrum of about
#: 0.55 [U: order of magnitude from the steep, photoelectric (~E^-3) fall of titanium's
#: attenuation over 40-100 keV; tuned so that two 6 mm titanium rods 50 mm apart in a 30 cm
#: body give a dark band of about -100 HU between them, as on clinical scans; not fitted to a
#: measured spectrum].
DEFAULT_BETA = 0.15

#: Unattenuated photons per detector bin and view of the simulated (coarse) detector.  [U:
#: the simulated detector has ~180 views and ~1.4 mm bins where a clinical scanner has
#: ~1000 views and ~0.6 mm elements at isocentre, so equal image noise needs about 15x the
#: per-element count; 1e6 here ~ 7e4 photons per real element and view, a routine-dose
#: order of magnitude (not measured).  Rays along a titanium screw inside a 30 cm body then
#: keep only tens of photons: photon starvation.]
DEFAULT_I0 = 1.0e6

#: Counts below this are clamped before the logarithm (a zero count has no logarithm) [U].
COUNT_FLOOR = 1.0

#: Metal fraction above which a voxel counts as metal for the projection.
METAL_MIN_FRACTION = 0.02

#: Reconstruction grid: at most this many pixels across the slice.
DEFAULT_MAX_PX = 256


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    """Linear attenuation (1/mm) from HU, ``MU_WATER * (1 + HU/1000)``, floored at 0."""
    return np.maximum(MU_WATER * (1.0 + np.asarray(hu, dtype=np.float32) / 1000.0), 0.0)


def ramlak_filter(n_det: int, d: float, window: str = "hann") -> np.ndarray:
    """Frequency response of the band-limited ramp (Ram-Lak) filter, zero-padded length.

    Built from the spatial kernel (Kak & Slaney 1988, eq. 61: ``h[0] = 1/(4 d^2)``,
    ``h[n odd] = -1/(n pi d)^2``, 0 otherwise), which gets the DC term right.

    Parameters
    ----------
    n_det : int
        Detector bins.
    d : float
        Bin width (mm).
    window : {"hann", "none"}

    Returns
    -------
    H : (n_pad // 2 + 1,) float
        rfft-domain filter for sinograms zero-padded to ``n_pad = 2 ** ceil(log2(2 n_det))``.
    """
    n_pad = int(2 ** np.ceil(np.log2(2 * n_det)))
    n = np.concatenate([np.arange(0, n_pad // 2 + 1), np.arange(n_pad // 2 - 1, 0, -1)])
    h = np.zeros(n_pad)
    h[0] = 1.0 / (4 * d * d)
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd] * d) ** 2
    H = np.abs(np.fft.rfft(h)) * d  # continuous convolution = d * discrete sum
    if window == "hann":
        f = np.fft.rfftfreq(n_pad)  # cycles per bin, 0..0.5
        H *= 0.5 * (1.0 + np.cos(2 * np.pi * f))
    return H


class _Geometry:
    """Parallel-beam geometry on a square coarse grid centred on the slice."""

    def __init__(self, shape_ij: tuple[int, int], spacing_ij: tuple[float, float], n_views: int,
                 max_px: int) -> None:
        si, sj = float(spacing_ij[0]), float(spacing_ij[1])
        ext = np.array([shape_ij[0] * si, shape_ij[1] * sj])
        self.spacing = (si, sj)
        self.shape = tuple(int(x) for x in shape_ij)
        self.pix = max(float(ext.max()) / max_px, min(si, sj))
        self.centre = np.array([(shape_ij[0] - 1) * si / 2.0, (shape_ij[1] - 1) * sj / 2.0])
        self.n_rec = (np.ceil(ext / self.pix).astype(int) + 1)
        diag = float(np.hypot(*ext))
        self.n_det = int(np.ceil(diag / self.pix)) + 3
        self.t0 = -(self.n_det - 1) / 2.0 * self.pix  # position of bin 0, mm
        th = np.arange(n_views) * np.pi / n_views
        self.cos, self.sin = np.cos(th), np.sin(th)
        self.n_views = n_views
        self.H = ramlak_filter(self.n_det, self.pix)


def _splat(geom: _Geometry, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pixel-driven projection: each point of weight ``w`` (mu * area, mm) is shared linearly
    between its two nearest bins in every view.

    Parameters
    ----------
    x, y : (n,) float
        Point positions (mm, relative to the slice centre).
    w : (n,) float
        Attenuation times pixel area (mm).

    Returns
    -------
    p : (n_views, n_det) float64
        Line integrals (dimensionless).
    """
    nv, nd = geom.n_views, geom.n_det
    out = np.zeros(nv * nd, dtype=np.float64)
    if len(w) == 0:
        return out.reshape(nv, nd)
    wb = (np.asarray(w, np.float64) / geom.pix)[None, :]
    step = max(1, 2_000_000 // len(w))
    for v0 in range(0, nv, step):
        v1 = min(nv, v0 + step)
        t = geom.cos[v0:v1, None] * x[None, :] + geom.sin[v0:v1, None] * y[None, :]
        u = (t - geom.t0) / geom.pix
        i0 = np.floor(u).astype(np.int64)
        fr = u - i0
        idx = i0 + (np.arange(v0, v1) * nd)[:, None]  # inside the detector by construction
        out += np.bincount(idx.ravel(), weights=(wb * (1 - fr)).ravel(), minlength=nv * nd)
        out += np.bincount((idx + 1).ravel(), weights=(wb * fr).ravel(), minlength=nv * nd)
    return out.reshape(nv, nd)


def _backproject(geom: _Geometry, q: np.ndarray) -> np.ndarray:
    """Back-project filtered sinogram ``q`` (n_views, n_det) onto the coarse grid.

    Returns (n_rec_i, n_rec_j) float32 (same units as ``q`` times radians).
    """
    ni, nj = geom.n_rec
    xi = (np.arange(ni) - (ni - 1) / 2.0) * geom.pix
    yj = (np.arange(nj) - (nj - 1) / 2.0) * geom.pix
    X = np.repeat(xi, nj).astype(np.float32)
    Y = np.tile(yj, ni).astype(np.float32)
    acc = np.zeros(ni * nj, dtype=np.float32)
    qf = np.ascontiguousarray(q, dtype=np.float32)
    nd = geom.n_det
    inv = np.float32(1.0 / geom.pix)
    t0 = np.float32(geom.t0)
    for v in range(geom.n_views):
        u = (X * np.float32(geom.cos[v]) + Y * np.float32(geom.sin[v]) - t0) * inv
        i0 = u.astype(np.int32)  # u >= 0 inside the detector by construction
        np.clip(i0, 0, nd - 2, out=i0)
        fr = u - i0
        row = qf[v]
        a = row[i0]
        acc += a + fr * (row[i0 + 1] - a)
    return (acc * np.float32(np.pi / geom.n_views)).reshape(ni, nj)


def slice_artefact(
    hu: np.ndarray,
    metal: np.ndarray,
    spacing_ij: tuple[float, float],
    rng: np.random.Generator,
    *,
    beta: float = DEFAULT_BETA,
    i0: float = DEFAULT_I0,
    n_views: int = 180,
    max_px: int = DEFAULT_MAX_PX,
    _geom: _Geometry | None = None,
) -> np.ndarray:
    """Streak artefact (HU) of one axial slice.

    Parameters
    ----------
    hu : (ni, nj) float
        Slice in HU (metal at its true, unclipped value).
    metal : (ni, nj) float
        Metal fraction 0-1.
    spacing_ij : (2,) float
        Pixel size (mm) along i and j.
    rng : numpy Generator
        Source of the Poisson counts.
    beta, i0, n_views, max_px
        See module constants.

    Returns
    -------
    artefact : (ni, nj) float32
        ``recon(corrupted) - recon(clean)`` in HU on the slice grid.
    """
    geom = _geom or _Geometry(hu.shape, spacing_ij, n_views, max_px)
    si, sj = geom.spacing
    mu = hu_to_mu(hu)
    f = np.asarray(metal, dtype=np.float32)
    # metal attenuation per voxel: mu(hu) minus the non-metal share, assumed water-like
    mu_m = np.where(f > METAL_MIN_FRACTION, np.maximum(mu - (1.0 - f) * MU_WATER, 0.0), 0.0)
    ii, jj = np.nonzero(mu_m)
    if len(ii) == 0:
        return np.zeros(hu.shape, np.float32)
    xm = ii * si - geom.centre[0]
    ym = jj * sj - geom.centre[1]
    p_m = _splat(geom, xm, ym, mu_m[ii, jj] * (si * sj))
    # body (non-metal) projection on a grid 2x coarser than the reconstruction grid
    mu_b = mu - mu_m
    fac = max(1, int(np.floor(2 * geom.pix / min(si, sj))))
    if fac > 1:
        zi, zj = max(2, hu.shape[0] // fac), max(2, hu.shape[1] // fac)
        mb = ndimage.zoom(mu_b, (zi / hu.shape[0], zj / hu.shape[1]), order=1, prefilter=False)
        ci, cj = si * hu.shape[0] / zi, sj * hu.shape[1] / zj
    else:
        mb, ci, cj = mu_b, si, sj
    bi, bj = np.nonzero(mb > 1e-6)
    xb = (bi + 0.5) * ci - 0.5 * si - geom.centre[0]
    yb = (bj + 0.5) * cj - 0.5 * sj - geom.centre[1]
    p_b = _splat(geom, xb, yb, mb[bi, bj] * (ci * cj))
    p = p_b + p_m
    # corruption on rays that cross metal
    rays = p_m > 1e-4
    delta = np.sqrt(2.0 * beta)
    p_bh = p[rays] - np.log(np.cosh(delta * p_m[rays]))
    counts = rng.poisson(i0 * np.exp(-p_bh)).astype(np.float64)
    p_meas = -np.log(np.maximum(counts, COUNT_FLOOR) / i0)
    err = np.zeros_like(p)
    err[rays] = p_meas - p[rays]
    # filter and back-project the error sinogram
    n_pad = 2 * (len(geom.H) - 1)
    q = np.fft.irfft(np.fft.rfft(err, n=n_pad, axis=1) * geom.H[None, :], n=n_pad, axis=1)[:, : geom.n_det]
    d_mu = _backproject(geom, q)
    d_hu = d_mu * np.float32(1000.0 / MU_WATER)
    # coarse grid -> slice grid
    ni, nj = geom.n_rec
    gi = (np.arange(hu.shape[0]) * si - geom.centre[0]) / geom.pix + (ni - 1) / 2.0
    gj = (np.arange(hu.shape[1]) * sj - geom.centre[1]) / geom.pix + (nj - 1) / 2.0
    GI, GJ = np.meshgrid(gi.astype(np.float32), gj.astype(np.float32), indexing="ij")
    return ndimage.map_coordinates(d_hu, [GI, GJ], order=1, mode="nearest").astype(np.float32)


def add_metal_streaks(
    hu: np.ndarray,
    metal_fraction: np.ndarray,
    spacing_ij: tuple[float, float],
    rng: np.random.Generator,
    *,
    beta: float = DEFAULT_BETA,
    i0: float = DEFAULT_I0,
    n_views: int = 180,
    max_px: int = DEFAULT_MAX_PX,
) -> np.ndarray:
    """Add beam-hardening and photon-starvation streaks to every axial slice with metal.

    Parameters
    ----------
    hu : (ni, nj, nk) or (ni, nj) float
        Image in HU; axis k is the scanner axis (slices are (i, j) planes).  Metal must carry
        its true (unclipped) HU.
    metal_fraction : same shape as ``hu``
        Metal fraction 0-1 per voxel.
    spacing_ij : (2,) float
        In-plane voxel size (mm) along i and j.
    rng : numpy Generator
        Same seed -> identical output.
    beta : float
        Beam-hardening coefficient, ``p' = p - beta * p_metal**2`` (:data:`DEFAULT_BETA`).
    i0 : float
        Unattenuated counts per bin and view (:data:`DEFAULT_I0`).
    n_views : int
        Projection angles over 180 degrees.
    max_px : int
        Reconstruction grid size cap (pixels across the slice).

    Returns
    -------
    out : same shape as ``hu``, float32
        ``hu`` plus the artefact.
    """
    hu = np.asarray(hu)
    two_d = hu.ndim == 2
    h3 = hu[:, :, None] if two_d else hu
    m3 = np.asarray(metal_fraction)
    m3 = m3[:, :, None] if two_d else m3
    if m3.shape != h3.shape:
        raise ValueError(f"metal_fraction shape {m3.shape} differs from hu shape {h3.shape}")
    out = h3.astype(np.float32, copy=True)
    ks = np.nonzero((m3 > METAL_MIN_FRACTION).any(axis=(0, 1)))[0]
    if len(ks) == 0:
        return out[:, :, 0] if two_d else out
    geom = _Geometry(h3.shape[:2], spacing_ij, n_views, max_px)
    t = time.perf_counter()
    for k in ks:
        out[:, :, k] += slice_artefact(h3[:, :, k], m3[:, :, k], spacing_ij, rng, beta=beta, i0=i0,
                                       n_views=n_views, max_px=max_px, _geom=geom)
    log.debug("metal streaks on %d slices in %.2f s", len(ks), time.perf_counter() - t)
    return out[:, :, 0] if two_d else out
