"""CT synthesis for the phantom: tissue HU values and the finishing step.

The rasteriser (:mod:`planner.phantom.rasterize`) composites ``ct_value(tissue, params)``
with partial-volume fractions; :func:`finish_ct` then adds, in this order and from one seeded
generator: trabecular texture in cancellous bone, metal streaks (optional,
:mod:`planner.phantom.streaks`), correlated quantum noise, and the scanner's storage range.

Source tags (as in ``docs/morphometry.md``): **[V]** read in the primary source, **[S]** read in
a secondary source that quotes it, **[U]** our own choice or derivation, reason given.

Sources
-------
* ``domain``: project ``docs/domain.md``, "CT values" facts (metal clipped at 3071 HU with
  12-bit storage; titanium several thousand HU on extended-scale scanners; cortical bone
  several hundred to > 1000 HU; osteoporotic cancellous bone can fall below 100 HU).
* ``ITK``: ITK wiki "Hounsfield Units" table (https://itk.org/Wiki/ITK_Hounsfield_Units):
  blood 40, muscle 10-40, CSF 15, fat -50 to -100, air -1000.
* ``RS``: radiologystar.com "CT number or Hounsfield units": fat -120 to -90, cancellous bone
  +300 to +400, mu_water 0.195 /cm.
* ``16bit``: "Effect of 16-bit computed tomography imaging of metallic implants on dose
  distribution in radiotherapy" (abstract, via discovery.researcher.life): in 12-bit images
  steel and titanium rods both read 3071 HU; in 16-bit images at 100/120/140 kV the maximum
  CT values were 8420/7140/6310 HU for titanium and 13568/13127/12295 HU for stainless steel.
* ``Pickhardt``: Pickhardt et al. 2013 via morphometry.md §10: L1 trabecular attenuation
  <= 160 HU (90 % sensitive) and <= 110 HU (> 90 % specific) for osteoporosis [S].
* ``RT``: radiotherapy lecture slide (cld.bz, "extended CT number" metals): Co-Cr-Mo density
  7.9 g/cm3 and relative electron density 6.8, steel 8.1 and 6.7, titanium 4.3 and 3.6 [S].
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from scipy import ndimage

from planner.errors import PhantomSpecError
from planner.labels.registry import TISSUES
from planner.phantom.spec import ImagingSpec

log = logging.getLogger(__name__)

#: Mean HU per tissue (unenhanced CT at 120 kVp, true values before storage clipping).
HU_TABLE: dict[str, float] = {
    # air -1000 HU by definition of the HU scale [S: ITK]
    "air": -1000.0,
    # fat -50..-100 [S: ITK], -120..-90 [S: RS]; -100 sits in both ranges
    "fat": -100.0,
    # generic body contents: in the phantom this is everything the model does not draw
    # (viscera, bowel, retroperitoneal and visceral fat, fascia).  Organs read 30-60 HU
    # [S: ITK] and fat -100 HU; the unmodelled interior is given their mixture, -20 HU [U],
    # so that the modelled muscles (psoas, erector spinae), aorta and vena cava stand out
    # against it as they do against the fat planes of a real CT.
    "soft_tissue": -20.0,
    # muscle 10-40 [S: ITK] (older scanner table); modern unenhanced muscle is usually quoted
    # 40-60; 50 as the brief asks [U]
    "muscle": 50.0,
    # dermis is dense connective tissue, a little above generic soft tissue [U]
    "skin": 50.0,
    # unenhanced blood 40 [S: ITK]
    "blood": 40.0,
    # aerated lung parenchyma; a wiki table quotes -500 for lung including vessels, inflated
    # parenchyma away from vessels is about -850 [U: brief]
    "lung": -850.0,
    # visceral + parietal pleura with the thin extrapleural fat: soft tissue [U]
    "pleura": 30.0,
    # "several hundred to over 1000 HU" [S: domain]; 1100 is for a fully cortical voxel; the
    # thin vertebral shell is further lowered by partial volume at clinical voxel sizes [U]
    "cortical_bone": 1100.0,
    # healthy adult vertebral cancellous bone: above the 160 HU osteoporosis cut-off
    # [S: Pickhardt] and below the 300-400 HU textbook figure for dense cancellous bone
    # [S: RS]; 220 HU [U]
    "cancellous_bone": 220.0,
    # disc 80-100 HU [U: brief]; 90
    "disc": 90.0,
    # CSF 15 [S: ITK]; brief 5-15; 12 [U]
    "csf": 12.0,
    # cord / nerve 30-40 HU [U: brief]
    "spinal_cord": 35.0,
    "nerve": 35.0,
    # epidural fat is fat with a venous plexus: slightly above pure fat [U]
    "epidural_fat": -90.0,
    # seroma / pseudomeningocele fluid ~10 HU [U: brief; between water 0 and CSF 15 S: ITK]
    "fluid": 10.0,
    # lytic metastasis (soft-tissue attenuation) ~40 HU [U: brief]
    "tumour": 40.0,
    # titanium rod at 120 kV on a 16-bit (extended) scale: maximum 7140 HU [V: 16bit, abstract;
    # a maximum, so the mean is somewhat lower; used as the solid-metal value]
    "titanium": 7140.0,
    # cobalt-chrome: no extended-scale figure found; stainless steel reads 13127 HU at 120 kV
    # [V: 16bit] and Co-Cr-Mo has nearly the same density and electron density as steel
    # (7.9 vs 8.1 g/cm3, 6.8 vs 6.7 [S: RT]) with slightly higher Z (Co 27 vs Fe 26), so
    # 13500 HU [U]
    "cobalt_chrome": 13500.0,
}

#: Cancellous HU with ``osteoporotic`` set: 60 HU, well below both opportunistic-CT cut-offs
#: (160 / 110 HU, [S: Pickhardt]) and below the "< 100 HU" of [S: domain]; the value the
#: phantom spec documents (``PathologySpec.osteoporotic``).
OSTEOPOROTIC_CANCELLOUS_HU = 60.0

#: Trabecular texture: SD (HU) and correlation length (mm) of the band-limited modulation of
#: cancellous bone.  [U: clinical CT cannot resolve 0.1-0.3 mm trabeculae; what it shows is a
#: mottled texture a few tens of HU deep at about the resolution limit (~0.7 mm); chosen by
#: eye, not measured.]
TEXTURE_SD_HU = 35.0
TEXTURE_CORR_MM = 0.7

#: In-plane Gaussian sigma (mm) that shapes white noise into CT-like noise grain
#: [U: of the order of a standard soft-tissue kernel's resolution, ~0.5-0.7 mm].
NOISE_CORR_MM = 0.6

#: Storage ranges (HU).  12-bit: -1024..3071 [S: domain; a CT wiki page quotes the same
#: -1024..+3071 display scale].  "clip4095": scanners that store 0..5119 raw with an intercept
#: of -1024 clip at 4095 [U].  "extended": no upper clip below 30000 HU [U: above cobalt-chrome
#: and steel's ~13,000 HU at 120 kV (16bit); of the order of vendor extended scales, which
#: reach a few tens of thousands].  The lower bound -1024 is the usual rescale intercept: noise
#: never pushes air below it.
STORAGE_RANGES: dict[str, tuple[float, float]] = {
    "clip3071": (-1024.0, 3071.0),
    "clip4095": (-1024.0, 4095.0),
    "extended": (-1024.0, 30000.0),
}

_METAL = ("titanium", "cobalt_chrome")


def ct_value(tissue: str, params: dict[str, Any] | None = None) -> float:
    """Mean HU of a tissue, with per-structure overrides.

    Parameters
    ----------
    tissue : str
        A name from :data:`planner.labels.registry.TISSUES` (``"metal"`` is accepted as an
        alias of ``params["material"]``, default titanium).
    params : dict, optional
        ``hu``: explicit value for any tissue; ``cancellous_hu`` / ``cortical_hu``: bone
        overrides; ``osteoporotic`` (bool): cancellous bone at
        :data:`OSTEOPOROTIC_CANCELLOUS_HU` unless ``cancellous_hu`` is given; ``material``:
        ``"titanium"`` / ``"cobalt_chrome"`` for metal.

    Returns
    -------
    float
        HU.

    Raises
    ------
    PhantomSpecError
        Unknown tissue or material.
    """
    p = params or {}
    if "hu" in p:
        return float(p["hu"])
    if tissue == "metal" or (tissue in _METAL and "material" in p):
        mat = p.get("material", "titanium")
        if mat not in _METAL:
            raise PhantomSpecError(f"unknown metal material {mat!r}; use one of {', '.join(_METAL)}")
        return HU_TABLE[mat]
    if tissue == "cancellous_bone":
        if "cancellous_hu" in p:
            return float(p["cancellous_hu"])
        if p.get("osteoporotic"):
            return OSTEOPOROTIC_CANCELLOUS_HU
    if tissue == "cortical_bone" and "cortical_hu" in p:
        return float(p["cortical_hu"])
    try:
        return HU_TABLE[tissue]
    except KeyError:
        raise PhantomSpecError(
            f"no CT value for tissue {tissue!r}; known tissues: {', '.join(TISSUES)}"
        ) from None


def spacing_from_affine(lps_from_ijk: np.ndarray) -> np.ndarray:
    """Voxel size (3,) in mm: the column norms of the affine's 3x3 part."""
    return np.linalg.norm(np.asarray(lps_from_ijk, float)[:3, :3], axis=0)


def _gauss_gain(sigma: tuple[float, ...]) -> float:
    """SD of white unit noise after ``ndimage.gaussian_filter`` with ``sigma`` (voxels)."""
    r = [int(np.ceil(4 * s)) + 1 for s in sigma]
    d = np.zeros([2 * x + 1 for x in r])
    d[tuple(r)] = 1.0
    k = ndimage.gaussian_filter(d, sigma, mode="constant")
    return float(np.sqrt((k**2).sum()))


def correlated_noise(shape: tuple[int, ...], sd: float, sigma_vox: tuple[float, float],
                     rng: np.random.Generator, chunk: int = 16) -> np.ndarray:
    """Gaussian noise smoothed in the (i, j) plane, rescaled to SD ``sd``.

    Parameters
    ----------
    shape : (ni, nj, nk)
    sd : float
        Target standard deviation.
    sigma_vox : (2,) float
        In-plane Gaussian sigma in voxels along i and j.
    rng : numpy Generator
    chunk : int
        Slices generated at a time (memory bound).

    Returns
    -------
    noise : (ni, nj, nk) float32
    """
    out = np.empty(shape, np.float32)
    sig = (float(sigma_vox[0]), float(sigma_vox[1]), 0.0)
    gain = _gauss_gain(sig[:2])
    for k0 in range(0, shape[2], chunk):
        k1 = min(shape[2], k0 + chunk)
        w = rng.standard_normal((shape[0], shape[1], k1 - k0), dtype=np.float32)
        out[:, :, k0:k1] = ndimage.gaussian_filter(w, sig, mode="reflect") * np.float32(sd / gain)
    return out


def _box(mask: np.ndarray, pad: int = 2) -> tuple[slice, ...] | None:
    idx = [np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != ax)))[0]
           for ax in range(mask.ndim)]
    if any(len(x) == 0 for x in idx):
        return None
    return tuple(slice(max(0, int(x[0]) - pad), min(n, int(x[-1]) + pad + 1))
                 for x, n in zip(idx, mask.shape))


def add_trabecular_texture(hu: np.ndarray, cancellous: np.ndarray, spacing: np.ndarray,
                           rng: np.random.Generator, sd: float = TEXTURE_SD_HU,
                           corr_mm: float = TEXTURE_CORR_MM) -> int:
    """Add band-limited texture inside cancellous bone, in place.

    Parameters
    ----------
    hu : (ni, nj, nk) float32
        Modified in place.
    cancellous : (ni, nj, nk) float
        Effective cancellous fraction 0-1 (scales the texture).
    spacing : (3,) float
        Voxel size, mm.
    rng : numpy Generator
    sd, corr_mm : float
        Texture SD (HU) and Gaussian correlation length (mm).

    Returns
    -------
    int
        Voxels touched.
    """
    box = _box(cancellous > 0.01)
    if box is None:
        return 0
    sub = np.asarray(cancellous[box], np.float32)
    sig = tuple(float(corr_mm / s) for s in spacing)
    w = rng.standard_normal(sub.shape, dtype=np.float32)
    # difference of Gaussians: band-pass (removes the slow drift a low-pass alone leaves)
    t = ndimage.gaussian_filter(w, sig) - ndimage.gaussian_filter(w, tuple(3 * s for s in sig))
    t *= np.float32(sd / max(float(t.std()), 1e-6))
    hu[box] += t * sub
    return int((sub > 0.01).sum())


def finish_ct(
    hu: np.ndarray,
    grid_lps_from_ijk: np.ndarray,
    imaging: ImagingSpec,
    rng: np.random.Generator,
    *,
    metal: np.ndarray | None,
    cancellous: np.ndarray | None,
) -> tuple[np.ndarray, list[dict]]:
    """Texture, metal streaks, noise and storage range applied to a composited CT.

    Parameters
    ----------
    hu : (ni, nj, nk) float
        Composited HU with metal at its true value (not clipped).  Axis k is the scanner
        axis; slices are (i, j) planes.
    grid_lps_from_ijk : (4, 4) float
        Grid affine (voxel size = column norms).
    imaging : ImagingSpec
        Uses ``noise_hu``, ``streaks`` and ``metal_storage``.
    rng : numpy Generator
        Every random step draws from it in a fixed order: same seed, same output.
    metal : (ni, nj, nk) float or None
        Effective metal fraction (titanium + cobalt-chrome).
    cancellous : (ni, nj, nk) float or None
        Effective cancellous-bone fraction.

    Returns
    -------
    hu : (ni, nj, nk) float32
        Final HU, clamped to the storage range (clamping, never wrap-around).
    notes : list of dict
        JSON-ready record of every step and its parameters.  The storage note carries
        ``warning_code`` ``PLN-W-CT-001`` when metal saturated the stored range.
    """
    out = np.array(hu, dtype=np.float32, copy=True)
    if out.ndim != 3:
        raise PhantomSpecError(f"finish_ct needs a 3-D image, got shape {out.shape}")
    spacing = spacing_from_affine(grid_lps_from_ijk)
    notes: list[dict] = []

    if cancellous is not None:
        n = add_trabecular_texture(out, cancellous, spacing, rng)
        notes.append({"step": "trabecular_texture", "sd_hu": TEXTURE_SD_HU,
                      "corr_mm": TEXTURE_CORR_MM, "voxels": n})

    if imaging.streaks and metal is not None and np.any(metal > 0.02):
        from planner.phantom import streaks

        t = time.perf_counter()
        n_sl = int(np.count_nonzero((metal > streaks.METAL_MIN_FRACTION).any(axis=(0, 1))))
        out = streaks.add_metal_streaks(out, metal, (float(spacing[0]), float(spacing[1])), rng)
        notes.append({"step": "metal_streaks", "slices": n_sl, "beta": streaks.DEFAULT_BETA,
                      "i0": streaks.DEFAULT_I0, "n_views": 180})
        log.info("metal streaks: %d slices in %.2f s", n_sl, time.perf_counter() - t)
    elif imaging.streaks:
        notes.append({"step": "metal_streaks", "slices": 0, "reason": "no metal in the volume"})

    if imaging.noise_hu > 0:
        sig = (NOISE_CORR_MM / float(spacing[0]), NOISE_CORR_MM / float(spacing[1]))
        out += correlated_noise(out.shape, float(imaging.noise_hu), sig, rng)
        notes.append({"step": "noise", "sd_hu": float(imaging.noise_hu),
                      "inplane_sigma_mm": NOISE_CORR_MM})

    lo, hi = STORAGE_RANGES[imaging.metal_storage]
    n_hi = int(np.count_nonzero(out > hi))
    n_lo = int(np.count_nonzero(out < lo))
    np.clip(out, lo, hi, out=out)
    note = {"step": "storage", "mode": imaging.metal_storage, "range_hu": [lo, hi],
            "saturated_high": n_hi, "clipped_low": n_lo}
    if n_hi and metal is not None:
        note["warning_code"] = "PLN-W-CT-001"
        log.info("%d voxels saturate the %s range at %g HU", n_hi, imaging.metal_storage, hi)
    notes.append(note)
    return out, notes
