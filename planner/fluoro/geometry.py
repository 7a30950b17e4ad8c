"""Shared geometry of the fluoroscopy package: the error type, metal attenuation, cylinders.

Hardware and needles enter the fluoroscopy simulation as *cylinders* (an axis segment
``p0 -> p1`` in LPS mm, a radius and a linear attenuation coefficient): a pedicle screw is
its shank (major thread diameter) plus its tulip head, a rod or cross-link one cylinder per
centre-line segment, a needle its straight shaft plus, optionally, one cylinder per segment
of its curved extension.  The DRR adds each cylinder's exact chord length along every
detector ray (:func:`cylinder_chords`); the view planner projects the same cylinders as 2-D
capsules (:mod:`planner.fluoro.views`).

Attenuation of metal
--------------------
Linear attenuation coefficients at an effective energy of 60 keV [S], interpolated
log-log between the 50 keV and 80 keV columns of the table "Calculated linear attenuation
coefficients (total minus Rayleigh scattering) of water, bone and selected metals"
(J Nucl Med, table of mu in cm^-1: water 0.21 / 0.18, bone 0.96 / 0.42, titanium 5.1 /
1.65, nickel 20.7 / 5.9 at 50 / 80 keV).  60 keV is taken as the effective energy of a
fluoroscopy beam of about 70-90 kVp with typical filtration [U].

* titanium: 0.33 /mm
* cobalt-chromium: 1.27 /mm (nickel as proxy: Z 27 / 24 vs 28, density 8.3 vs 8.9) [S]
* stainless steel (needles): 1.14 /mm (the nickel value scaled by density 8.0 / 8.9) [S]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from planner.errors import PlannerError

log = logging.getLogger(__name__)

#: Linear attenuation coefficient (1/mm) of implant and instrument materials at the
#: 60 keV effective energy; sources in the module docstring.
METAL_MU_PER_MM: dict[str, float] = {
    "titanium": 0.33,
    "cobalt_chrome": 1.27,
    "stainless_steel": 1.14,
}


class FluoroError(PlannerError):
    """The fluoroscopy simulation or view planning cannot run as asked."""

    code = "PLN-FLU-001"


def as_points(points: ArrayLike, name: str = "points") -> np.ndarray:
    """Return ``points`` as a finite float (n, 3) array or raise ``PLN-FLU-003``."""
    p = np.asarray(points, dtype=float)
    if p.ndim == 1 and p.shape[0] == 3:
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] != 3 or not np.all(np.isfinite(p)):
        raise FluoroError(
            f"{name} must be a finite (n, 3) array of LPS mm, got shape {p.shape}",
            code="PLN-FLU-003",
        )
    return p


def metal_mu(material: str) -> float:
    """Attenuation (1/mm) of a material name from :data:`METAL_MU_PER_MM`."""
    try:
        return METAL_MU_PER_MM[material]
    except KeyError:
        raise FluoroError(
            f"unknown implant material {material!r}; known: {', '.join(METAL_MU_PER_MM)}",
            code="PLN-FLU-003",
        ) from None


@dataclass(frozen=True)
class Cylinders:
    """A set of solid cylinders in LPS mm.

    Attributes
    ----------
    p0, p1 : (h, 3) float
        Axis end points.
    radius : (h,) float
        Radius, mm.
    mu : (h,) float
        Linear attenuation coefficient, 1/mm.
    names : tuple of str
        Owner of each cylinder (``"screw_L3_left"``, ``"rod_left"``, ``"needle"``).
    """

    p0: np.ndarray
    p1: np.ndarray
    radius: np.ndarray
    mu: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.p0.shape[0])

    @staticmethod
    def empty() -> Cylinders:
        z = np.zeros((0, 3))
        return Cylinders(z, z.copy(), np.zeros(0), np.zeros(0), ())

    @staticmethod
    def concat(items: list[Cylinders]) -> Cylinders:
        items = [c for c in items if len(c)]
        if not items:
            return Cylinders.empty()
        return Cylinders(
            np.concatenate([c.p0 for c in items]),
            np.concatenate([c.p1 for c in items]),
            np.concatenate([c.radius for c in items]),
            np.concatenate([c.mu for c in items]),
            tuple(n for c in items for n in c.names),
        )


def polyline_cylinders(
    points: ArrayLike, radius_mm: float, mu_per_mm: float, name: str, simplify_mm: float = 0.0
) -> Cylinders:
    """One cylinder per segment of a polyline (n, 3), optionally simplified first.

    Parameters
    ----------
    points : (n, 3) float
        Centre line, LPS mm, n >= 2.
    radius_mm, mu_per_mm : float
    name : str
    simplify_mm : float
        Douglas-Peucker tolerance: points closer than this to the simplified line are
        dropped (0 keeps every segment).
    """
    p = as_points(points, f"{name} centre line")
    if len(p) < 2:
        raise FluoroError(f"{name} centre line needs >= 2 points", code="PLN-FLU-003")
    if simplify_mm > 0:
        p = p[_douglas_peucker(p, simplify_mm)]
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1) > 1e-9
    a, b = p[:-1][seg], p[1:][seg]
    h = len(a)
    return Cylinders(a, b, np.full(h, float(radius_mm)), np.full(h, float(mu_per_mm)), (name,) * h)


def _douglas_peucker(p: np.ndarray, tol: float) -> np.ndarray:
    """Indices (sorted) of the points a Douglas-Peucker simplification keeps."""
    keep = np.zeros(len(p), bool)
    keep[[0, -1]] = True
    stack = [(0, len(p) - 1)]
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        a, b = p[i], p[j]
        ab = b - a
        L2 = float(ab @ ab)
        q = p[i + 1 : j]
        t = np.clip(((q - a) @ ab) / L2, 0, 1) if L2 > 0 else np.zeros(len(q))
        d = np.linalg.norm(q - (a + t[:, None] * ab), axis=1)
        k = int(np.argmax(d))
        if d[k] > tol:
            m = i + 1 + k
            keep[m] = True
            stack.extend([(i, m), (m, j)])
    return np.flatnonzero(keep)


def implant_cylinders(hardware: Iterable[Any] | None, rod_simplify_mm: float = 0.0) -> Cylinders:
    """Cylinders of implants: screws (shank and tulip), rods and cross-links.

    Parameters
    ----------
    hardware : iterable of Screw, Rod, CrossLink (``planner.implants``) or Cylinders
        Screws become their shank (``head_lps -> tip_lps``, radius ``diameter_mm / 2``, the
        major thread diameter) and their tulip (``tulip_top_lps -> head_lps``, radius
        ``tulip_diameter_mm / 2``); rods and cross-links one cylinder per centre-line
        segment of radius ``diameter_mm / 2``.  Attenuation from each ``material``.
    rod_simplify_mm : float
        Douglas-Peucker tolerance for rod / cross-link centre lines (0 keeps every segment).

    Returns
    -------
    Cylinders
    """
    from planner.implants import CrossLink, Rod, Screw

    out: list[Cylinders] = []
    for h in hardware or ():
        if isinstance(h, Cylinders):
            out.append(h)
        elif isinstance(h, Screw):
            mu = metal_mu(h.material)
            out.append(
                Cylinders(
                    np.stack([h.head_lps, h.tulip_top_lps]),
                    np.stack([h.tip_lps, h.head_lps]),
                    np.array([h.diameter_mm / 2.0, h.tulip_diameter_mm / 2.0]),
                    np.array([mu, mu]),
                    (h.name, h.name),
                )
            )
        elif isinstance(h, Rod | CrossLink):
            out.append(
                polyline_cylinders(
                    h.centreline_lps, h.diameter_mm / 2.0, metal_mu(h.material), h.name, rod_simplify_mm
                )
            )
        else:
            raise FluoroError(
                f"hardware item of type {type(h).__name__} is not a Screw, Rod, CrossLink or Cylinders",
                code="PLN-FLU-003",
            )
    return Cylinders.concat(out)


def cylinder_chords(
    origin: np.ndarray, ends: np.ndarray, p0: np.ndarray, p1: np.ndarray, radius: float
) -> np.ndarray:
    """Exact length of each segment ``origin -> ends[n]`` inside one solid finite cylinder.

    Parameters
    ----------
    origin : (3,) float
        Common start of the segments (the X-ray source), mm.
    ends : (n, 3) float
        Segment ends (detector pixel centres), mm.
    p0, p1 : (3,) float
        Cylinder axis end points (flat caps), mm.
    radius : float
        Cylinder radius, mm.

    Returns
    -------
    (n,) float
        Chord length inside the cylinder, mm (0 where the segment misses it).
    """
    D = np.asarray(ends, float) - origin
    axis = np.asarray(p1, float) - p0
    h = float(np.linalg.norm(axis))
    if h <= 0 or radius <= 0:
        return np.zeros(len(D))
    w = axis / h
    m = origin - p0
    dw = D @ w
    mw = float(m @ w)
    Dp = D - dw[:, None] * w
    mp = m - mw * w
    A = np.einsum("ij,ij->i", Dp, Dp)
    B = 2.0 * (Dp @ mp)
    C = float(mp @ mp) - radius * radius
    # lateral (infinite cylinder) interval
    disc = B * B - 4.0 * A * C
    par = A < 1e-12 * np.einsum("ij,ij->i", D, D)
    with np.errstate(divide="ignore", invalid="ignore"):
        sq = np.sqrt(np.maximum(disc, 0.0))
        t1 = np.where(par, -np.inf, (-B - sq) / (2.0 * A))
        t2 = np.where(par, np.inf, (-B + sq) / (2.0 * A))
        hit = np.where(par, C < 0, disc > 0)
        # slab between the caps
        ta = (0.0 - mw) / dw
        tb = (h - mw) / dw
    flat = np.abs(dw) < 1e-12
    s_lo = np.where(flat, np.where((mw >= 0) & (mw <= h), -np.inf, np.inf), np.minimum(ta, tb))
    s_hi = np.where(flat, np.where((mw >= 0) & (mw <= h), np.inf, -np.inf), np.maximum(ta, tb))
    lo = np.maximum(np.maximum(t1, s_lo), 0.0)
    hi = np.minimum(np.minimum(t2, s_hi), 1.0)
    L = np.where(hit, np.maximum(hi - lo, 0.0), 0.0)
    return L * np.linalg.norm(D, axis=1)
