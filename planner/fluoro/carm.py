"""C-arm geometry: source, detector and the perspective projection of LPS points.

Frame and conventions
---------------------
Everything is patient LPS millimetres (x to the patient's left, y posterior, z superior) and
degrees.  The patient lies **prone** on the table.  The C-arm is isocentric: source and
detector turn about the *isocentre* (an LPS point, usually the needle target) and the
central ray always passes through it.

* **Beam direction** ``d`` (unit, source -> detector).  At ``lao_deg = cran_deg = 0`` (the
  "AP" view of a prone patient) the beam travels vertically upward, ``d = +y``: the
  **source is under the table (anterior)** and the **detector is above the back
  (posterior)**.  In general::

      d = (sin(lao) cos(cran), cos(lao) cos(cran), sin(cran))  =  Rz(-lao) @ Rx(cran) @ (0, 1, 0)

  (``Rz``, ``Rx``: right-handed rotations about LPS z and x, :func:`planner.volume.rotation_matrix`).
* **LAO / RAO** (``lao_deg``, rotation of the C-arm about the patient's long axis z): each
  angle names where the **detector** moves, as in the DICOM Positioner Primary Angle
  convention.  ``lao_deg > 0`` ("LAO") turns the detector toward the **patient's left** and
  the source toward the patient's right; ``lao_deg < 0`` ("RAO") the reverse.  ``lao_deg =
  +90`` is a **lateral** view with the source on the patient's right and the detector on
  the left (``d = +x``); ``-90`` the opposite lateral.
* **Cranial / caudal** (``cran_deg``, rotation about the patient's left-right axis x,
  applied after LAO/RAO): ``cran_deg > 0`` ("cranial") tilts the detector toward the
  patient's **head** (``d`` gains ``+z``) and the source toward the feet; ``< 0`` is caudal.
* **Detector axes** (``u`` along image columns, left -> right; ``v`` along image rows,
  top -> bottom) are ``u0 = -x`` and ``v0 = -z`` at (0, 0), rotated with ``d``.  The image is
  therefore seen from the detector side looking toward the source, as the operator standing
  over a prone patient sees the back: head at the top, the patient's left on the image
  left.  ``u x v = -d``.
* **Pixels**: coordinates ``(col, row)``; the centre of the top-left pixel is ``(0, 0)``,
  the detector centre ``((ncol - 1) / 2, (nrow - 1) / 2)``.  Images are arrays indexed
  ``[row, col]``.

Default geometry (documented settings)
--------------------------------------
* source-to-detector distance (SDD, DICOM "Distance Source to Detector" (0018,1110)):
  1000 mm.  A typical mobile C-arm: the Siemens ARCADIS Varic service manual gives a
  source-to-image distance of 96.8 cm [S]; 1000 mm is the round figure [U].
* source-to-isocentre distance (SID, DICOM "Distance Source to Patient" (0018,1111)):
  600 mm [U] (magnification at the isocentre ``SDD / SID = 1.67``).
* detector 300 x 300 mm, the flat-panel size of the mobile isocentric Siemens Cios Spin
  (Sheth et al., Med Phys 2020;47:958-974: "30 x 30 cm2 FPD") [S]; 512 x 512 pixels
  (0.586 mm pitch) [U].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from planner.fluoro.geometry import FluoroError, as_points

log = logging.getLogger(__name__)


def beam_direction(lao_deg: ArrayLike, cran_deg: ArrayLike) -> np.ndarray:
    """Unit source -> detector direction(s) for C-arm angles.

    Parameters
    ----------
    lao_deg, cran_deg : float or (p,) float
        LAO (+) / RAO (-) and cranial (+) / caudal (-) angles, degrees.

    Returns
    -------
    (3,) or (p, 3) float
    """
    a = np.deg2rad(np.asarray(lao_deg, float))
    c = np.deg2rad(np.asarray(cran_deg, float))
    a, c = np.broadcast_arrays(a, c)
    return np.stack([np.sin(a) * np.cos(c), np.cos(a) * np.cos(c), np.sin(c)], axis=-1)


def rotation_from_angles(lao_deg: ArrayLike, cran_deg: ArrayLike) -> np.ndarray:
    """Rotation(s) ``Rz(-lao) @ Rx(cran)`` taking the AP frame to the posed frame.

    Returns
    -------
    (3, 3) or (p, 3, 3) float
        Maps ``u0 = -x``, ``v0 = -z`` and ``d0 = +y`` to the posed detector axes and beam.
    """
    a = np.deg2rad(np.asarray(lao_deg, float))
    c = np.deg2rad(np.asarray(cran_deg, float))
    a, c = np.broadcast_arrays(a, c)
    ca, sa, cc, sc = np.cos(a), np.sin(a), np.cos(c), np.sin(c)
    z, o = np.zeros_like(a), np.ones_like(a)
    Rz = np.stack([np.stack([ca, sa, z], -1), np.stack([-sa, ca, z], -1), np.stack([z, z, o], -1)], -2)
    Rx = np.stack([np.stack([o, z, z], -1), np.stack([z, cc, -sc], -1), np.stack([z, sc, cc], -1)], -2)
    return Rz @ Rx


def angles_from_direction(direction: ArrayLike) -> tuple[float, float]:
    """C-arm angles ``(lao_deg, cran_deg)`` whose beam is along ``direction`` (source -> detector).

    Inverse of :func:`beam_direction`: ``cran = asin(d_z)``, ``lao = atan2(d_x, d_y)``.
    """
    d = np.asarray(direction, float).reshape(3)
    n = float(np.linalg.norm(d))
    if not n > 0:
        raise FluoroError("beam direction must be a non-zero vector", code="PLN-FLU-003")
    d = d / n
    cran = float(np.degrees(np.arcsin(np.clip(d[2], -1.0, 1.0))))
    lao = float(np.degrees(np.arctan2(d[0], d[1]))) if np.hypot(d[0], d[1]) > 1e-12 else 0.0
    return lao, cran


@dataclass(frozen=True)
class Pose:
    """Where source and detector are for one C-arm setting (all LPS mm).

    Attributes
    ----------
    source_lps : (3,) float
        Focal spot.
    detector_centre_lps : (3,) float
        Centre of the detector's sensitive surface.
    u_axis, v_axis : (3,) float
        Unit vectors along image columns (left -> right) and rows (top -> bottom).
    beam_axis : (3,) float
        Unit source -> detector direction (the detector normal, pointing away from the source).
    """

    source_lps: np.ndarray
    detector_centre_lps: np.ndarray
    u_axis: np.ndarray
    v_axis: np.ndarray
    beam_axis: np.ndarray


@dataclass(frozen=True)
class CArm:
    """An isocentric C-arm: geometry settings plus the current angles and isocentre.

    Parameters
    ----------
    source_to_detector_mm : float
        SDD, 1000 mm (see the module docstring for sources).
    source_to_isocentre_mm : float
        SID, 600 mm [U].  Must be < SDD.
    detector_size_mm : (2,) float
        Width (along u) and height (along v), 300 x 300 mm.
    detector_pixels : (2,) int
        Columns and rows, 512 x 512.
    lao_deg, cran_deg : float
        Angles (conventions in the module docstring).
    isocentre_lps : (3,) float
        Point the central ray passes through, SID from the source.
    """

    source_to_detector_mm: float = 1000.0
    source_to_isocentre_mm: float = 600.0
    detector_size_mm: tuple[float, float] = (300.0, 300.0)
    detector_pixels: tuple[int, int] = (512, 512)
    lao_deg: float = 0.0
    cran_deg: float = 0.0
    isocentre_lps: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))

    def __post_init__(self) -> None:
        sdd, sid = float(self.source_to_detector_mm), float(self.source_to_isocentre_mm)
        if not (np.isfinite(sdd) and np.isfinite(sid) and 0 < sid < sdd):
            raise FluoroError(
                f"C-arm needs 0 < source-to-isocentre ({sid} mm) < source-to-detector ({sdd} mm)",
                code="PLN-FLU-001",
            )
        size = tuple(float(s) for s in np.asarray(self.detector_size_mm, float).reshape(2))
        pix = tuple(int(p) for p in np.asarray(self.detector_pixels).reshape(2))
        if min(size) <= 0 or min(pix) < 1:
            raise FluoroError(
                f"detector size {size} mm and pixels {pix} must be positive", code="PLN-FLU-001"
            )
        iso = tuple(float(x) for x in as_points(self.isocentre_lps, "isocentre")[0])
        if not (np.isfinite(self.lao_deg) and np.isfinite(self.cran_deg)):
            raise FluoroError("C-arm angles must be finite", code="PLN-FLU-001")
        object.__setattr__(self, "source_to_detector_mm", sdd)
        object.__setattr__(self, "source_to_isocentre_mm", sid)
        object.__setattr__(self, "detector_size_mm", size)
        object.__setattr__(self, "detector_pixels", pix)
        object.__setattr__(self, "isocentre_lps", iso)
        object.__setattr__(self, "lao_deg", float(self.lao_deg))
        object.__setattr__(self, "cran_deg", float(self.cran_deg))

    # ---- derived geometry ---------------------------------------------------------------
    @property
    def magnification(self) -> float:
        """Magnification of an object at the isocentre, ``SDD / SID``."""
        return self.source_to_detector_mm / self.source_to_isocentre_mm

    @property
    def pixel_pitch_mm(self) -> tuple[float, float]:
        """Pixel size (along u, along v), mm at the detector."""
        return (
            self.detector_size_mm[0] / self.detector_pixels[0],
            self.detector_size_mm[1] / self.detector_pixels[1],
        )

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of images on this detector."""
        return (self.detector_pixels[1], self.detector_pixels[0])

    def posed(self, lao_deg: float, cran_deg: float, isocentre_lps: ArrayLike | None = None) -> CArm:
        """This C-arm at other angles (and optionally another isocentre)."""
        iso = self.isocentre_lps if isocentre_lps is None else isocentre_lps
        return replace(self, lao_deg=lao_deg, cran_deg=cran_deg, isocentre_lps=tuple(np.ravel(iso)))

    def pose(self) -> Pose:
        """Source, detector centre and axes for the current angles and isocentre."""
        R = rotation_from_angles(self.lao_deg, self.cran_deg)
        u, v, d = R @ np.array([-1.0, 0, 0]), R @ np.array([0, 0, -1.0]), R @ np.array([0, 1.0, 0])
        iso = np.asarray(self.isocentre_lps, float)
        s = iso - self.source_to_isocentre_mm * d
        return Pose(s, s + self.source_to_detector_mm * d, u, v, d)

    def pixel_from_lps(self) -> np.ndarray:
        """3x4 projection matrix: homogeneous ``(col w, row w, w) = P @ (x, y, z, 1)``.

        ``w`` is the depth of the point along the beam axis from the source, mm.
        """
        return projection_matrices(self, self.lao_deg, self.cran_deg, self.isocentre_lps)[0]

    def project(self, points_lps: ArrayLike) -> np.ndarray:
        """Detector pixel coordinates ``(col, row)`` of LPS points.

        Parameters
        ----------
        points_lps : (n, 3) float

        Returns
        -------
        (n, 2) float
            ``nan`` for points at or behind the source plane.
        """
        p = as_points(points_lps, "points_lps")
        P = self.pixel_from_lps()
        h = p @ P[:, :3].T + P[:, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            out = h[:, :2] / h[:, 2:3]
        out[h[:, 2] <= 0] = np.nan
        return out

    def depth(self, points_lps: ArrayLike) -> np.ndarray:
        """Distance of points from the source along the beam axis, mm, shape (n,)."""
        p = as_points(points_lps, "points_lps")
        ps = self.pose()
        return (p - ps.source_lps) @ ps.beam_axis

    def pixel_centres_lps(self, rows: slice | None = None, cols: slice | None = None) -> np.ndarray:
        """LPS positions of detector pixel centres, shape (nrow, ncol, 3) (optionally a sub-block)."""
        ps = self.pose()
        nc, nr = self.detector_pixels
        pu, pv = self.pixel_pitch_mm
        c = np.arange(nc)[cols if cols is not None else slice(None)]
        r = np.arange(nr)[rows if rows is not None else slice(None)]
        du = (c - (nc - 1) / 2.0) * pu
        dv = (r - (nr - 1) / 2.0) * pv
        return (
            ps.detector_centre_lps[None, None, :]
            + dv[:, None, None] * ps.v_axis[None, None, :]
            + du[None, :, None] * ps.u_axis[None, None, :]
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary of geometry and pose."""
        ps = self.pose()
        return {
            "source_to_detector_mm": self.source_to_detector_mm,
            "source_to_isocentre_mm": self.source_to_isocentre_mm,
            "detector_size_mm": list(self.detector_size_mm),
            "detector_pixels": list(self.detector_pixels),
            "lao_deg": round(self.lao_deg, 4),
            "cran_deg": round(self.cran_deg, 4),
            "isocentre_lps_mm": [round(x, 4) for x in self.isocentre_lps],
            "source_lps_mm": [round(float(x), 4) for x in ps.source_lps],
            "beam_axis_lps": [round(float(x), 6) for x in ps.beam_axis],
        }


def pose(lao_deg: float, cran_deg: float, isocentre: ArrayLike, carm: CArm | None = None) -> Pose:
    """Source position, detector centre and detector axes for C-arm angles.

    Parameters
    ----------
    lao_deg, cran_deg : float
        Angles, degrees (module docstring).
    isocentre : (3,) float
        LPS mm.
    carm : CArm, optional
        Geometry (SDD, SID, detector); defaults to :class:`CArm` ``()``.

    Returns
    -------
    Pose
    """
    return (carm or CArm()).posed(lao_deg, cran_deg, isocentre).pose()


def projection_matrices(carm: CArm, lao_deg: ArrayLike, cran_deg: ArrayLike, isocentre_lps: ArrayLike) -> np.ndarray:
    """3x4 ``pixel_from_lps`` projection matrices of many poses at once.

    Parameters
    ----------
    carm : CArm
        Geometry (its own angles and isocentre are ignored).
    lao_deg, cran_deg : (p,) float or float
    isocentre_lps : (3,) or (p, 3) float

    Returns
    -------
    (p, 3, 4) float
    """
    lao = np.atleast_1d(np.asarray(lao_deg, float))
    cran = np.atleast_1d(np.asarray(cran_deg, float))
    lao, cran = np.broadcast_arrays(lao, cran)
    R = rotation_from_angles(lao, cran)  # (p, 3, 3)
    u = R @ np.array([-1.0, 0, 0])
    v = R @ np.array([0, 0, -1.0])
    d = R @ np.array([0, 1.0, 0])
    iso = np.broadcast_to(np.asarray(isocentre_lps, float), d.shape)
    s = iso - carm.source_to_isocentre_mm * d
    rows = np.stack([u, v, d], axis=1)  # (p, 3, 3): world -> (u, v, depth) about the source
    pu, pv = carm.pixel_pitch_mm
    nc, nr = carm.detector_pixels
    K = np.array(
        [
            [carm.source_to_detector_mm / pu, 0.0, (nc - 1) / 2.0],
            [0.0, carm.source_to_detector_mm / pv, (nr - 1) / 2.0],
            [0.0, 0.0, 1.0],
        ]
    )
    M = K @ rows  # (p, 3, 3)
    t = -np.einsum("pij,pj->pi", M, s)
    return np.concatenate([M, t[:, :, None]], axis=2)


def project_many(P: np.ndarray, points_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project points with many projection matrices.

    Parameters
    ----------
    P : (p, 3, 4) float
        From :func:`projection_matrices`.
    points_lps : (n, 3) float

    Returns
    -------
    pix : (p, n, 2) float
        ``(col, row)``.
    depth : (p, n) float
        Distance from the source along each beam axis, mm.
    """
    h = np.einsum("pij,nj->pni", P[:, :, :3], points_lps) + P[:, None, :, 3]
    depth = h[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        pix = h[..., :2] / depth[..., None]
    return pix, depth
