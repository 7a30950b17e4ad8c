"""MR synthesis for the phantom: relative tissue signals and the finishing step.

Signal model
------------
Each tissue gets a relative signal (0-1) for a T1-weighted and a T2-weighted fast-spin-echo
contrast (:data:`MR_TABLE`); images are on a 0-1000 arbitrary-unit scale.  :func:`finish_mr`
then adds, from one seeded generator:

1. **Susceptibility field of metal**: ``df = gamma_bar * B0 * IFFT(D(k) * FFT(dchi * f))``
   with the Fourier dipole kernel ``D(k) = 1/3 - (k.b)^2 / |k|^2`` (Salomir et al. 2003;
   Marques & Bowtell 2005 [U: standard in quantitative susceptibility mapping, quoted from
   memory]), ``f`` the metal fraction and ``b`` the B0 direction, LPS z (superior-inferior).
   Its real-space form is the ``(3 cos^2 theta - 1) / r^3`` dipole.  Computed by FFT in a box
   around the metal with zero padding.
2. **Signal loss** where ``|df|`` exceeds :data:`LOSS_THRESHOLD_HZ`: for spin-echo sequences
   the excited slice moves by ``df / G_slice``; beyond about half the RF bandwidth the voxel's
   spins are no longer excited (through-plane void).  A smooth step
   ``1 / (1 + (|df| / threshold)^4)``.
3. **Readout misregistration**: each voxel's signal moves along the readout axis by
   ``df / BW_pixel`` voxels, splatted linearly: compressed regions pile up (bright rim),
   stretched regions empty (dark).
4. Smooth multiplicative **bias field** (coil sensitivity), seeded.
5. **Rician noise**: magnitude of (signal + complex Gaussian noise).

Source tags: **[V]** read in the primary source, **[S]** in a secondary source, **[U]** our own
choice, reason given.  Qualitative contrast facts used for :data:`MR_TABLE` [S]:
``78steps``: "MRI appearance of the normal spine" (78stepshealth.us): T1 disc slightly darker
than marrow, epidural fat bright, CSF darker than nerve; T2 nucleus bright, outer annulus dark,
CSF bright, nerve dark, epidural fat fairly bright.  ``alpf``: alpfmedical.info cervical
spine: cortical bone and air very low signal on both; medullary bone brighter than cortex on
both; fat bright on T2 FSE, as bright as CSF.  ``aword``: theaword.org "T1 and T2 explained":
fat bright on both, CSF dark on T1 / bright on T2, muscle intermediate, bone and tendon dark.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import fft as sfft

from planner.errors import PhantomSpecError
from planner.labels.registry import TISSUES
from planner.phantom.spec import ImagingSpec

log = logging.getLogger(__name__)

#: Relative signal (0-1) per tissue: {"T1": ..., "T2": ...} for spin-echo / fast-spin-echo.
#: The ordering is from the sources above [S]; the numbers themselves are [U] (chosen to
#: reproduce that ordering on a 0-1 scale; no quantitative source).
MR_TABLE: dict[str, dict[str, float]] = {
    "air": {"T1": 0.0, "T2": 0.0},  # no protons [S: alpf]
    "fat": {"T1": 0.95, "T2": 0.80},  # bright on T1, bright on T2 FSE [S: alpf, aword]
    "soft_tissue": {"T1": 0.45, "T2": 0.35},  # intermediate [U]
    "muscle": {"T1": 0.35, "T2": 0.22},  # intermediate on T1, darker on T2 [S: aword; U]
    "skin": {"T1": 0.50, "T2": 0.40},  # intermediate [U]
    # flowing blood: flow void in the aorta / cava on spin echo [U: common knowledge]
    "blood": {"T1": 0.08, "T2": 0.08},
    "lung": {"T1": 0.02, "T2": 0.02},  # air-filled, near void [U]
    "pleura": {"T1": 0.30, "T2": 0.30},  # thin fibrous membrane [U]
    "cortical_bone": {"T1": 0.03, "T2": 0.03},  # signal void on both [S: alpf]
    # adult (fatty) marrow: bright on T1, intermediate-bright on T2 FSE [S: 78steps, alpf]
    "cancellous_bone": {"T1": 0.75, "T2": 0.55},
    # disc: T1 slightly below marrow; T2 bright nucleus [S: 78steps]
    "disc": {"T1": 0.55, "T2": 0.85},
    "csf": {"T1": 0.12, "T2": 1.00},  # dark on T1, bright on T2 [S: aword, 78steps]
    # cord: intermediate on T1 (brighter than CSF), dark against CSF on T2 [S: 78steps]
    "spinal_cord": {"T1": 0.50, "T2": 0.40},
    "nerve": {"T1": 0.45, "T2": 0.35},  # low on T2, above CSF on T1 [S: 78steps]
    "epidural_fat": {"T1": 0.90, "T2": 0.75},  # bright [S: 78steps]
    "fluid": {"T1": 0.15, "T2": 0.95},  # seroma: fluid signal [U, like CSF]
    # lytic metastasis: T1 dark against fatty marrow, T2 bright [U: common radiology rule]
    "tumour": {"T1": 0.30, "T2": 0.70},
    "titanium": {"T1": 0.0, "T2": 0.0},  # no signal from metal [U]
    "cobalt_chrome": {"T1": 0.0, "T2": 0.0},
}

#: Output scale: relative signal 1.0 -> 1000 arbitrary units.
SCALE = 1000.0

#: Osteoporotic marrow is fattier: T1 / T2 marrow signal [U: higher marrow fat fraction in
#: osteoporosis is a known finding; the values are chosen, not measured].
OSTEOPOROTIC_MARROW = {"T1": 0.85, "T2": 0.62}

#: Gyromagnetic ratio of 1H / 2 pi, Hz/T (CODATA 42.577 MHz/T) [S].
GAMMA_BAR_HZ_PER_T = 42.577e6
#: Field strength, T [U: 1.5 T is the usual choice for imaging spinal hardware].
B0_T = 1.5
#: Volume susceptibility difference titanium - tissue (SI, dimensionless): titanium ~182 ppm,
#: tissue ~ -9 ppm (Schenck 1996, Med Phys 23:815, from memory [U]); consistent with a dental
#: MR study classing titanium alloy as differing from water by < 200 ppm and CoCr / steel by
#: > 200 ppm (PMC3667526, abstract [V]).
DELTA_CHI_TITANIUM = 190e-6
#: Offset (Hz) at which signal is lost: about half of a ~2 kHz slice-selective RF bandwidth
#: (the slice moves by more than half its thickness) [U].
LOSS_THRESHOLD_HZ = 1000.0
#: Readout bandwidth per pixel (Hz/pixel) [U: typical spine FSE 130-300 Hz/pixel].
BW_PER_PIXEL_HZ = 200.0
#: Largest readout displacement modelled, voxels [U: beyond this the signal is lost anyway].
MAX_SHIFT_VOX = 10.0
#: Margin (mm) around metal inside which the field is computed [U: a 6.5 mm screw's field
#: falls below 10 Hz within ~30 mm for titanium at 1.5 T].
FIELD_MARGIN_MM = 30.0
#: Rician noise SD on the 0-1000 scale [U: SNR ~ 40 for tissue at ~600, a routine spine FSE].
NOISE_SD = 15.0
#: Peak relative amplitude of the smooth bias field [U: +-10 %, typical of surface coils
#: after vendor intensity normalisation].
BIAS_AMPLITUDE = 0.10


def mr_value(tissue: str, params: dict[str, Any] | None = None, weighting: str = "T2") -> float:
    """Signal (0-1000) of a tissue for a weighting.

    Parameters
    ----------
    tissue : str
        A name from :data:`planner.labels.registry.TISSUES` (``"metal"`` accepted).
    params : dict, optional
        ``mr_t1`` / ``mr_t2``: relative (0-1) overrides; ``osteoporotic`` (bool): fattier
        marrow for cancellous bone.
    weighting : {"T1", "T2"}

    Returns
    -------
    float
        Signal on the 0-1000 scale.

    Raises
    ------
    PhantomSpecError
        Unknown tissue or weighting.
    """
    if weighting not in ("T1", "T2"):
        raise PhantomSpecError(f"MR weighting must be T1 or T2, got {weighting!r}")
    p = params or {}
    key = f"mr_{weighting.lower()}"
    if key in p:
        return float(p[key]) * SCALE
    if tissue == "metal":
        return 0.0
    if tissue == "cancellous_bone" and p.get("osteoporotic"):
        return OSTEOPOROTIC_MARROW[weighting] * SCALE
    try:
        return MR_TABLE[tissue][weighting] * SCALE
    except KeyError:
        raise PhantomSpecError(
            f"no MR value for tissue {tissue!r}; known tissues: {', '.join(TISSUES)}"
        ) from None


def _box(mask: np.ndarray, pad: tuple[int, int, int]) -> tuple[slice, slice, slice] | None:
    idx = [np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    if any(len(x) == 0 for x in idx):
        return None
    return tuple(slice(max(0, int(x[0]) - p), min(n, int(x[-1]) + p + 1))
                 for x, p, n in zip(idx, pad, mask.shape))  # type: ignore[return-value]


def field_offset_hz(
    chi: np.ndarray,
    lps_from_ijk: np.ndarray,
    b0_t: float = B0_T,
    pad_vox: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Off-resonance (Hz) of a susceptibility distribution, B0 along LPS z.

    Parameters
    ----------
    chi : (ni, nj, nk) float
        Volume susceptibility difference from tissue (SI, dimensionless).
    lps_from_ijk : (4, 4) float
        Grid affine; spacing and direction set the k-space geometry.
    b0_t : float
        Field strength, tesla.
    pad_vox : (3,) int, optional
        Zero padding per side against FFT wrap-around (default: a quarter of each axis).

    Returns
    -------
    df : (ni, nj, nk) float32
        Frequency offset, Hz.
    """
    A = np.asarray(lps_from_ijk, float)
    spacing = np.linalg.norm(A[:3, :3], axis=0)
    R = A[:3, :3] / spacing[None, :]
    b = R[2, :]  # B0 (LPS z) in grid-axis components
    shape = chi.shape
    pad = pad_vox or tuple(max(4, n // 4) for n in shape)
    full = tuple(int(sfft.next_fast_len(n + 2 * p, real=True)) for n, p in zip(shape, pad))
    X = np.zeros(full, np.float32)
    X[: shape[0], : shape[1], : shape[2]] = chi
    F = sfft.rfftn(X, workers=1)
    del X
    k0 = np.fft.fftfreq(full[0], spacing[0]).astype(np.float32)[:, None, None]
    k1 = np.fft.fftfreq(full[1], spacing[1]).astype(np.float32)[None, :, None]
    k2 = np.fft.rfftfreq(full[2], spacing[2]).astype(np.float32)[None, None, :]
    kb = k0 * np.float32(b[0]) + k1 * np.float32(b[1]) + k2 * np.float32(b[2])
    k2sum = k0 * k0 + k1 * k1 + k2 * k2
    with np.errstate(invalid="ignore", divide="ignore"):
        D = np.float32(1.0 / 3.0) - kb * kb / k2sum
    D[0, 0, 0] = 0.0
    F *= D
    out = sfft.irfftn(F, s=full, workers=1)[: shape[0], : shape[1], : shape[2]]
    return (out * (GAMMA_BAR_HZ_PER_T * b0_t)).astype(np.float32)


def readout_shift(img: np.ndarray, shift_vox: np.ndarray, axis: int = 0) -> np.ndarray:
    """Move each voxel's signal by ``shift_vox`` along ``axis`` (linear splatting).

    Parameters
    ----------
    img : (ni, nj, nk) float
    shift_vox : (ni, nj, nk) float
        Displacement in voxels (positive = towards higher index).
    axis : int
        Readout axis.

    Returns
    -------
    out : (ni, nj, nk) float32
        Signal is conserved except what leaves the array.
    """
    a = np.moveaxis(np.asarray(img, np.float32), axis, 0)
    s = np.moveaxis(np.asarray(shift_vox, np.float32), axis, 0)
    n = a.shape[0]
    rest = int(np.prod(a.shape[1:]))
    pos = np.arange(n, dtype=np.float32)[:, None] + s.reshape(n, rest)
    i0 = np.floor(pos).astype(np.int64)
    fr = (pos - i0).astype(np.float32)
    col = np.arange(rest, dtype=np.int64)[None, :]
    v = a.reshape(n, rest)
    out = np.zeros(n * rest, np.float64)
    for off, w in ((0, 1.0 - fr), (1, fr)):
        ii = i0 + off
        ok = (ii >= 0) & (ii < n)
        out += np.bincount((ii * rest + col)[ok], weights=(v * w)[ok], minlength=n * rest)
    return np.moveaxis(out.reshape(a.shape).astype(np.float32), 0, axis)


def bias_field(shape: tuple[int, int, int], rng: np.random.Generator,
               amplitude: float = BIAS_AMPLITUDE) -> np.ndarray:
    """Smooth multiplicative field ``1 + amplitude * g`` with ``|g| <= 1``.

    ``g`` is a sum of random low-order (degree <= 2) Legendre polynomials per axis, so the
    field is separable-additive and costs one broadcast.

    Returns
    -------
    (ni, nj, nk) float32
    """
    terms = []
    for ax, n in enumerate(shape):
        u = np.linspace(-1.0, 1.0, n)
        c = rng.uniform(-1.0, 1.0, 2)
        g = (c[0] * u + c[1] * 0.5 * (3 * u * u - 1)) / 2.0  # |g| <= 1
        sh = [1, 1, 1]
        sh[ax] = n
        terms.append(g.reshape(sh).astype(np.float32))
    g = (terms[0] + terms[1] + terms[2]) / np.float32(3.0)
    return np.float32(1.0) + np.float32(amplitude) * g


def rician_noise(img: np.ndarray, sd: float, rng: np.random.Generator, chunk: int = 32) -> np.ndarray:
    """Magnitude of ``img + n1 + i n2`` with ``n1, n2 ~ N(0, sd)``; float32, same shape."""
    out = np.empty(img.shape, np.float32)
    for k0 in range(0, img.shape[-1], chunk):
        sl = (Ellipsis, slice(k0, min(img.shape[-1], k0 + chunk)))
        s = np.asarray(img[sl], np.float32)
        n1 = rng.standard_normal(s.shape, dtype=np.float32) * np.float32(sd)
        n2 = rng.standard_normal(s.shape, dtype=np.float32) * np.float32(sd)
        out[sl] = np.hypot(s + n1, n2)
    return out


def finish_mr(
    img: np.ndarray,
    grid_lps_from_ijk: np.ndarray,
    imaging: ImagingSpec,
    rng: np.random.Generator,
    *,
    metal: np.ndarray | None,
    b0_t: float = B0_T,
    delta_chi: float = DELTA_CHI_TITANIUM,
    readout_axis: int = 0,
    noise_sd: float = NOISE_SD,
    bias: bool = True,
) -> tuple[np.ndarray, list[dict]]:
    """Susceptibility artefacts, bias field and Rician noise on a composited MR image.

    Parameters
    ----------
    img : (ni, nj, nk) float
        Composited signal (0-1000 scale) from :func:`mr_value`.
    grid_lps_from_ijk : (4, 4) float
        Grid affine.
    imaging : ImagingSpec
        ``mr_weighting`` is recorded in the notes.
    rng : numpy Generator
        Same seed -> identical output.
    metal : (ni, nj, nk) float or None
        Effective metal fraction.
    b0_t, delta_chi : float
        Field strength (T) and metal-tissue susceptibility difference (SI).
    readout_axis : int
        Grid axis of the frequency-encoding direction.
    noise_sd : float
        Rician noise SD (0 = none).
    bias : bool
        Apply the smooth bias field.

    Returns
    -------
    img : (ni, nj, nk) float32, >= 0
    notes : list of dict
        JSON-ready record of each step.
    """
    out = np.array(img, dtype=np.float32, copy=True)
    if out.ndim != 3:
        raise PhantomSpecError(f"finish_mr needs a 3-D image, got shape {out.shape}")
    notes: list[dict] = []
    spacing = np.linalg.norm(np.asarray(grid_lps_from_ijk, float)[:3, :3], axis=0)
    if metal is not None and np.any(metal > 0.01):
        pad = tuple(int(np.ceil(FIELD_MARGIN_MM / s)) for s in spacing)
        box = _box(metal > 0.01, pad)
        assert box is not None
        chi = np.asarray(metal[box], np.float32) * np.float32(delta_chi)
        df = field_offset_hz(chi, grid_lps_from_ijk, b0_t, pad_vox=pad)
        sub = out[box]
        sub *= 1.0 / (1.0 + (np.abs(df) / np.float32(LOSS_THRESHOLD_HZ)) ** 4)
        shift = np.clip(df / np.float32(BW_PER_PIXEL_HZ), -MAX_SHIFT_VOX, MAX_SHIFT_VOX)
        out[box] = readout_shift(sub, shift, axis=readout_axis)
        notes.append({
            "step": "susceptibility", "b0_t": b0_t, "delta_chi": delta_chi,
            "loss_threshold_hz": LOSS_THRESHOLD_HZ, "bw_per_pixel_hz": BW_PER_PIXEL_HZ,
            "readout_axis": readout_axis, "max_abs_offset_hz": float(np.abs(df).max()),
            "voxels_lost": int(np.count_nonzero(np.abs(df) > LOSS_THRESHOLD_HZ)),
        })
    if bias:
        out *= bias_field(out.shape, rng)
        notes.append({"step": "bias_field", "amplitude": BIAS_AMPLITUDE})
    if noise_sd > 0:
        out = rician_noise(out, noise_sd, rng)
        notes.append({"step": "rician_noise", "sd": noise_sd})
    np.maximum(out, 0.0, out=out)
    notes.append({"step": "mr_weighting", "weighting": imaging.mr_weighting, "scale": SCALE})
    return out, notes
