"""Standard, bull's-eye and progression C-arm views of a trajectory, and view planning.

Views (angles as in :mod:`planner.fluoro.carm`; the isocentre is the needle target)
-----------------------------------------------------------------------------------
* **AP**: ``lao = cran = 0`` (beam vertical, source under the table).
* **lateral**: ``lao = +90`` (source on the patient's right, detector on the left) or
  ``-90`` with ``side="right"``.
* **bull's-eye**: the beam runs along the needle axis, from the target side toward the
  skin entry (``d = (entry - target) / |entry - target|``).  With the isocentre on the
  axis the source lies on the axis line too, so every point of the needle projects to the
  detector centre (it is seen end-on, as for entry-point guidance).
* **progression**: the beam is perpendicular to the needle, and of those directions the one
  closest to the patient's left-right axis (``d = a - (a . n) n`` normalised, ``a`` the
  lateral axis, ``n`` the needle direction): the C-arm is turned from a true lateral just
  enough to see the needle at full length, so its depth toward the anterior body and the
  posterior wall shows.  Of the two opposite beams the one with the source below the table
  (``d_y >= 0``) is used.

View planning
-------------
:func:`plan_views` scores a grid of C-arm poses (default LAO/RAO -90..90 deg x cranial /
caudal -40..40 deg in 5 deg steps: 629 poses, from one lateral over AP to the other) for
one trajectory, *analytically*: each hardware cylinder (screw shank and tulip, rod and
cross-link segments) projects to a 2-D capsule on the detector (the segment between its
projected end points, half-width its radius times the magnification at each end, linearly
tapered); three kinds of query discs are tested against the capsules:

* ``path``: ``path_samples`` points along the needle (skin entry -> target, then the curved
  extension), each a disc of the needle's radius;
* ``tip``: the needle tip, a disc of ``tip_radius_mm``;
* ``wall``: posterior-wall points of the target vertebral body, discs of ``wall_radius_mm``
  (:func:`posterior_wall_points` extracts them from a label map: by default the wall
  between the pedicles, the canal-facing part, and with the tip given only the band at
  the tip's height).

Overlap is what the operator sees: hardware anywhere along the ray counts, however far in
depth from the tip or the wall it lies.  Radii are in mm at the object, projected with
each point's own magnification.  The fraction of a disc (radius ``rho``) covered by one
capsule is that of the strip ``|distance to the capsule axis| <= R`` treating the axis as
straight across the disc: ``g((dist - R) / rho) - g((dist + R) / rho)`` with
``g(x) = (acos x - x sqrt(1 - x^2)) / pi`` (the disc fraction beyond a chord at signed
distance ``x rho``); several capsules combine as ``1 - prod(1 - f)``.  A term is the mean
covered fraction of its discs; the weighted ``overlap`` is the weighted mean of the three
(``path 0.3, tip 0.35, wall 0.35`` [U]).  Everything is vectorised over poses, query points
and capsules.

Ranking and suggestions.  A weighted sum trades one component for another (a clear path can
buy a hidden wall), so poses are ranked *minimax* by default: the poses in which no
component is measurably worse than in the better of AP and lateral first; within that, by
the larger of the tip and wall overlaps, then by the path overlap (each in steps of
``rank_tolerance``, 0.01), then by the room left between the tip and the nearest hardware
shadow (``tip_gap_mm``, more first, in 0.5 mm steps up to 6 mm), then by the weighted
overlap and closeness to AP (``ViewSearchSettings.criterion``).  Poses
whose beam is within ``min_needle_angle_deg`` (30 deg) of the needle axis see the needle
foreshortened and are never suggested: end-on is the bull's-eye view, a view type of its
own.  :meth:`ViewPlan.suggest` returns two views by purpose, each with its overlaps next to
AP's and lateral's, their ratios and a verdict per component (``reduced``, ``clear in
both``, ``not reduced``, ``increased``), and findings that say so when no pose reduces a
component:

* ``tip_wall`` (:attr:`ViewPlan.best`): the tip/wall monitoring view, the best-ranked pose;
* ``wall_edge_on`` (:attr:`ViewPlan.best_edge_on`): the best-ranked pose whose beam is within
  ``edge_on_max_deg`` (15 deg) of the posterior wall's plane, the lateral-type view that
  shows the wall as a line.

``visibility = 1 - overlap`` (weighted) of the best-ranked view, in [0, 1], is the solver's
score term.

Plain overlap does not ask whether a view shows the wall at all (a radiograph shows the
posterior wall as a line only where the beam is tangent to it, in near-lateral views; in
AP it is seen en face): a near-AP view can have the least wall overlap, which is why the
edge-on wall view is suggested apart.  ``ViewSearchSettings(wall_term="seen_edge_on")``
scores the wall as *not seen* instead: each point counts as seen by
``sin(beam, normal) x (1 - covered)``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from numpy.typing import ArrayLike

from planner.fluoro.carm import CArm, angles_from_direction, project_many, projection_matrices
from planner.fluoro.geometry import (
    Cylinders,
    FluoroError,
    as_points,
    implant_cylinders,
    metal_mu,
    polyline_cylinders,
)
from planner.volume import Volume

if TYPE_CHECKING:
    from planner.fluoro.drr import DRRSettings

log = logging.getLogger(__name__)

#: A trajectory as :class:`Trajectory`, a plan candidate dict or an ``(entry, target)`` pair.
TrajectoryLike = Union["Trajectory", dict, tuple, list]


def _default_needle_radius() -> float:
    from planner.instruments import get_instrument

    return float(get_instrument("needle_11g").radius_mm)


@dataclass(frozen=True)
class Trajectory:
    """A needle path in LPS mm.

    Attributes
    ----------
    entry_lps : (3,) float
        Skin entry.
    target_lps : (3,) float
        End of the straight needle (its tip, or the cannula tip a curved needle leaves);
        the isocentre of the standard views.  The working tip is :attr:`tip_lps`.
    radius_mm : float
        Needle outer radius: the 11 G needle of :mod:`planner.instruments` (1.525 mm).
    curve_lps : (n, 3) float or None
        Curved extension beyond ``target_lps`` (its first point at the target), e.g. from
        :func:`planner.instruments.curved_needle_centreline`.
    curve_radius_mm : float or None
        Radius of the curved part; ``None`` = ``radius_mm``.
    material : str
        Needle material for the DRR (``stainless_steel``).
    name : str
    """

    entry_lps: np.ndarray
    target_lps: np.ndarray
    radius_mm: float = field(default_factory=_default_needle_radius)
    curve_lps: np.ndarray | None = None
    curve_radius_mm: float | None = None
    material: str = "stainless_steel"
    name: str = "needle"

    def __post_init__(self) -> None:
        e = as_points(self.entry_lps, "trajectory entry")[0]
        t = as_points(self.target_lps, "trajectory target")[0]
        if np.linalg.norm(e - t) < 1e-6:
            raise FluoroError("trajectory entry and target coincide", code="PLN-FLU-003")
        if not self.radius_mm > 0:
            raise FluoroError("needle radius must be > 0", code="PLN-FLU-003")
        object.__setattr__(self, "entry_lps", e)
        object.__setattr__(self, "target_lps", t)
        if self.curve_lps is not None:
            c = as_points(self.curve_lps, "curved extension")
            if len(c) < 2:
                raise FluoroError("curved extension needs >= 2 points", code="PLN-FLU-003")
            object.__setattr__(self, "curve_lps", c)
        metal_mu(self.material)

    @property
    def direction(self) -> np.ndarray:
        """Unit vector entry -> target, (3,)."""
        d = self.target_lps - self.entry_lps
        return d / np.linalg.norm(d)

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(self.target_lps - self.entry_lps))

    @property
    def tip_lps(self) -> np.ndarray:
        """The working tip, (3,): where the needle ends and the cement leaves it.

        For a curved-needle vertebroplasty that is the curved stylet's tip at the end of
        the planned arc (``curve_lps[-1]``), not the cannula tip ``target_lps`` the stylet
        leaves; for a straight needle (or kyphoplasty cannula) it is ``target_lps``.  The
        view search's ``tip`` term and the posterior-wall band
        (:func:`posterior_wall_points` with ``tip_lps``) use it.
        """
        return self.curve_lps[-1].copy() if self.curve_lps is not None else self.target_lps.copy()

    def path_points(self, n: int) -> np.ndarray:
        """``n`` points along the needle (entry -> target -> curve), equally spaced by arc length, (n, 3)."""
        pts = np.vstack([self.entry_lps, self.target_lps] + ([self.curve_lps[1:]] if self.curve_lps is not None else []))
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        q = np.linspace(0.0, s[-1], max(2, int(n)))
        return np.stack([np.interp(q, s, pts[:, i]) for i in range(3)], axis=1)

    def cylinders(self) -> Cylinders:
        """The needle as cylinders (straight shaft, then the curve's segments)."""
        mu = metal_mu(self.material)
        shaft = Cylinders(
            self.entry_lps[None], self.target_lps[None], np.array([self.radius_mm]), np.array([mu]), (self.name,)
        )
        if self.curve_lps is None:
            return shaft
        r = self.curve_radius_mm or self.radius_mm
        return Cylinders.concat([shaft, polyline_cylinders(self.curve_lps, r, mu, self.name)])

    @classmethod
    def from_candidate(cls, cand: dict[str, Any], procedure: str | None = None, **kw: Any) -> Trajectory:
        """From a plan candidate with ``skin_entry_lps_mm`` and ``target_lps_mm`` keys.

        With ``procedure="vertebroplasty_curved"`` (or, without a procedure, a candidate
        only that instrument reaches) and the candidate's ``curved`` arc, the needle is the
        straight cannula to ``cannula_tip_lps_mm`` plus that arc (``curved.path_lps_mm``) at
        the curved needle's radius (:mod:`planner.instruments`), as it is placed; otherwise
        the straight needle to the target.
        """
        instruments = (cand.get("verdict") or {}).get("instruments")
        curved = procedure == "vertebroplasty_curved" or (procedure is None and instruments == ["vertebroplasty_curved"])
        try:
            if curved and cand.get("curved") and "cannula_tip_lps_mm" in cand:
                from planner.instruments import get_instrument

                kw.setdefault("curve_radius_mm", float(get_instrument("curved_needle").radius_mm))
                kw.setdefault("name", str(cand.get("id", "needle")))
                return cls(
                    np.asarray(cand["skin_entry_lps_mm"], float),
                    np.asarray(cand["cannula_tip_lps_mm"], float),
                    curve_lps=np.asarray(cand["curved"]["path_lps_mm"], float),
                    **kw,
                )
            return cls(np.asarray(cand["skin_entry_lps_mm"], float), np.asarray(cand["target_lps_mm"], float), **kw)
        except KeyError as exc:
            raise FluoroError(
                f"plan candidate lacks {exc.args[0]!r}; it needs skin_entry_lps_mm and target_lps_mm",
                code="PLN-FLU-003",
            ) from None


def as_trajectory(t: TrajectoryLike) -> Trajectory:
    """A :class:`Trajectory` from itself, a plan candidate dict or an ``(entry, target)`` pair."""
    if isinstance(t, Trajectory):
        return t
    if isinstance(t, dict):
        return Trajectory.from_candidate(t)
    try:
        e, g = t
    except (TypeError, ValueError):
        raise FluoroError(
            "trajectory must be a Trajectory, a plan candidate or an (entry, target) pair", code="PLN-FLU-003"
        ) from None
    return Trajectory(np.asarray(e, float), np.asarray(g, float))


# ---- standard views ----------------------------------------------------------------------
def ap_view(isocentre_lps: ArrayLike, carm: CArm | None = None) -> CArm:
    """AP view of a prone patient (beam vertical, source under the table) at an isocentre."""
    return (carm or CArm()).posed(0.0, 0.0, isocentre_lps)


def lateral_view(isocentre_lps: ArrayLike, carm: CArm | None = None, side: str = "left") -> CArm:
    """Lateral view: ``side`` is where the detector is (``"left"``: ``lao = +90``)."""
    if side not in ("left", "right"):
        raise FluoroError(f"side must be 'left' or 'right', got {side!r}", code="PLN-FLU-003")
    return (carm or CArm()).posed(90.0 if side == "left" else -90.0, 0.0, isocentre_lps)


def bullseye_view(trajectory: TrajectoryLike, carm: CArm | None = None) -> CArm:
    """Beam along the needle axis (module docstring); isocentre at the target."""
    t = as_trajectory(trajectory)
    lao, cran = angles_from_direction(t.entry_lps - t.target_lps)
    return (carm or CArm()).posed(lao, cran, t.target_lps)


def progression_view(
    trajectory: TrajectoryLike, carm: CArm | None = None, lateral_axis: ArrayLike = (1.0, 0.0, 0.0)
) -> CArm:
    """Beam perpendicular to the needle, closest to ``lateral_axis`` (module docstring).

    Parameters
    ----------
    trajectory : Trajectory, candidate dict or (entry, target)
    carm : CArm, optional
    lateral_axis : (3,) float
        The patient's (or the vertebra's) left-right axis in LPS; default LPS x.
    """
    t = as_trajectory(trajectory)
    n = t.direction
    a = np.asarray(lateral_axis, float).reshape(3)
    d = a - (a @ n) * n
    if np.linalg.norm(d) < 1e-6:  # needle along the lateral axis: fall back to AP-perpendicular
        y = np.array([0.0, 1.0, 0.0])
        d = y - (y @ n) * n
    d = d / np.linalg.norm(d)
    if d[1] < 0:
        d = -d
    lao, cran = angles_from_direction(d)
    return (carm or CArm()).posed(lao, cran, t.target_lps)


# ---- posterior wall -----------------------------------------------------------------------
#: Half-height of the posterior-wall band around the needle tip, mm [U]: about a third of a
#: lumbar body's posterior height (25-30 mm) on each side of the tip, the wall the cement
#: front injected at the tip reaches first.
WALL_BAND_MM = 8.0


def posterior_wall_points(
    labels: Volume,
    level: str,
    posterior_lps: ArrayLike = (0.0, 1.0, 0.0),
    max_points: int = 150,
    max_normal_angle_deg: float = 50.0,
    smoothing_vox: float = 1.0,
    return_normals: bool = False,
    between_pedicles: bool = True,
    tip_lps: ArrayLike | None = None,
    band_mm: float = WALL_BAND_MM,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Points on the posterior wall of a vertebral body from a label map.

    The ``<level>_body`` voxels (registry id from ``planner.labels.registry.LABEL_IDS``)
    on the body's outer boundary (screw, rod and other metal labels and the level's lesion
    count as inside the body, so a screw channel's surface is not wall) whose outward
    normal (gradient of the Gaussian-smoothed mask, ``smoothing_vox`` voxels) is within
    ``max_normal_angle_deg`` of ``posterior_lps`` and which lie behind the body's centroid,
    leaving out voxels that touch the level's pedicle labels (the pedicle roots are not
    wall).  Then:

    * ``between_pedicles`` (default): only the wall between the medial borders of the two
      pedicles, i.e. the canal-facing wall where a cement leak reaches the spinal canal.
      The left-right axis is the line through the two pedicles' centroids; a pedicle's
      medial border is the 5th percentile of its voxels' distance from the midpoint along
      that axis (robust to single stray voxels).  Without both pedicle labels, or when no
      point lies between them, the whole posterior surface is kept (logged).
    * ``tip_lps`` given: only the band ``|(p - tip) . w| <= band_mm`` around the needle tip,
      ``w`` the body's cranio-caudal axis (left-right axis x posterior axis): the wall at the
      level of the tip, which the cement front reaches first.

    What is left is thinned to at most ``max_points`` by farthest-point sampling
    (deterministic, starting next to the centroid of the candidates).

    Parameters
    ----------
    labels : Volume
        Label map (registry ids), any grid.
    level : str
        ``"L3"`` etc.
    posterior_lps : (3,) float
        The posterior direction: LPS +y, or a vertebral frame's ``v`` axis.
    max_points : int
    max_normal_angle_deg : float
        50 deg [U].
    smoothing_vox : float
        1 voxel [U].
    return_normals : bool
        Also return the unit outward surface normals.
    between_pedicles : bool
        Keep only the wall between the pedicles (above).
    tip_lps : (3,) float, optional
        Needle tip: keep only the band of ``band_mm`` either side of it (above).
    band_mm : float
        Half-height of that band, :data:`WALL_BAND_MM` (8 mm) [U].

    Returns
    -------
    (n, 3) float
        LPS mm; with ``return_normals`` a tuple ``(points, normals)``, both (n, 3).
    """
    from scipy import ndimage

    from planner.labels.registry import HARDWARE_BASE, OTHER_METAL, label_id, level_label

    body_id = label_id(level_label(level, "body"))
    lesion_id = label_id(level_label(level, "lesion"))
    ped_ids = [label_id(level_label(level, p)) for p in ("pedicle_left", "pedicle_right")]
    arr = np.asarray(labels.array)
    mask_full = arr == body_id
    if not mask_full.any():
        raise FluoroError(
            f"label {level}_body (id {body_id}) is absent from the label map; segment the level first",
            code="PLN-FLU-004",
            details={"level": level},
        )
    idx = np.argwhere(mask_full)
    lo = np.maximum(idx.min(0) - 3, 0)
    hi = np.minimum(idx.max(0) + 4, arr.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    mask = mask_full[sl]
    sub = arr[sl]
    ped = np.isin(sub, ped_ids)
    # the body's outer surface: hardware (screw channels) and the level's lesion count as
    # inside, so the surfaces of a screw's channel or a lesion are not taken for wall
    solid = mask | ((sub >= HARDWARE_BASE) & (sub <= OTHER_METAL)) | (sub == lesion_id)
    boundary = mask & ~ndimage.binary_erosion(solid)
    boundary &= ~ndimage.binary_dilation(ped)
    sm = ndimage.gaussian_filter(solid.astype(np.float32), smoothing_vox)
    g = np.stack(np.gradient(sm), axis=-1)[boundary]  # (n, 3) d/d(ijk)
    B = labels.ijk_from_lps[:3, :3]
    n_lps = -(g @ B)  # outward normal = -grad in LPS (grad_x = B^T grad_ijk)
    nrm = np.linalg.norm(n_lps, axis=1)
    ok = nrm > 1e-9
    ijk = np.argwhere(boundary) + lo
    pts = labels.lps_from_index(ijk.astype(float))
    post = np.asarray(posterior_lps, float).reshape(3)
    post = post / np.linalg.norm(post)
    centroid = labels.lps_from_index(idx.mean(0)[None])[0]
    cosang = np.where(ok, (n_lps @ post) / np.where(ok, nrm, 1.0), -1.0)
    keep = (cosang >= np.cos(np.deg2rad(max_normal_angle_deg))) & ((pts - centroid) @ post > 0)
    pts = pts[keep]
    normals = n_lps[keep] / nrm[keep][:, None]
    if len(pts) == 0:
        raise FluoroError(
            f"no posterior-facing surface found on {level}_body", code="PLN-FLU-004", details={"level": level}
        )
    lr, borders = (None, None)
    if between_pedicles or tip_lps is not None:
        # the pedicles lie within a body's size behind the body: search a box that much larger
        pad = np.ceil(np.ptp(idx, axis=0) + 1).astype(int)
        box = tuple(slice(int(a), int(b)) for a, b in zip(np.maximum(lo - pad, 0), np.minimum(hi + pad, arr.shape)))
        lr, borders = _pedicle_axis(labels, arr[box], ped_ids, np.array([s.start for s in box]))
    if between_pedicles:
        if borders is None:
            log.warning("%s: pedicle labels missing; the posterior wall is not limited to between the pedicles", level)
        else:
            mid, right_medial, left_medial = borders
            s = (pts - mid) @ lr
            sel = (s > right_medial) & (s < left_medial)
            if sel.any():
                pts, normals = pts[sel], normals[sel]
            else:
                log.warning("%s: no posterior-wall point between the pedicles; the whole posterior surface is kept", level)
    if tip_lps is not None:
        if not band_mm > 0:
            raise FluoroError("band_mm must be > 0", code="PLN-FLU-003")
        u = lr if lr is not None else np.array([1.0, 0.0, 0.0])
        v = post - (post @ u) * u
        w = np.cross(u, v / np.linalg.norm(v))
        tip = as_points(tip_lps, "tip_lps")[0]
        sel = np.abs((pts - tip) @ w) <= band_mm
        pts, normals = pts[sel], normals[sel]
    if len(pts) == 0:
        raise FluoroError(
            f"no posterior-wall point of {level}_body lies within {band_mm:g} mm of the needle tip's height; "
            "is the tip in this vertebral body?",
            code="PLN-FLU-004",
            details={"level": level},
        )
    sel = farthest_point_indices(pts, max_points)
    return (pts[sel], normals[sel]) if return_normals else pts[sel]


def _pedicle_axis(
    labels: Volume, arr: np.ndarray, ped_ids: list[int], offset: np.ndarray
) -> tuple[np.ndarray | None, tuple[np.ndarray, float, float] | None]:
    """Left-right axis through the two pedicles' centroids (unit, toward the left pedicle)
    and ``(midpoint, right medial border, left medial border)`` along it (mm from the
    midpoint); ``(None, None)`` when a pedicle label is absent or the borders overlap.
    ``arr`` is a block of the label map starting at voxel ``offset``."""
    found = []
    for pid in ped_ids:
        ijk = np.argwhere(arr == pid)
        if len(ijk) == 0:
            return None, None
        found.append(labels.lps_from_index((ijk + offset).astype(float)))
    left, right = found
    mid = 0.5 * (left.mean(0) + right.mean(0))
    u = left.mean(0) - right.mean(0)
    if np.linalg.norm(u) < 1e-6:
        return None, None
    u = u / np.linalg.norm(u)
    left_medial = float(np.percentile((left - mid) @ u, 5.0))
    right_medial = float(np.percentile((right - mid) @ u, 95.0))
    if not right_medial < left_medial:
        return u, None
    return u, (mid, right_medial, left_medial)


def farthest_point_sample(points: np.ndarray, k: int) -> np.ndarray:
    """At most ``k`` of ``points`` (n, 3) spread evenly (deterministic farthest-point sampling)."""
    p = np.asarray(points, float)
    return p[farthest_point_indices(p, k)]


def farthest_point_indices(points: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of at most ``k`` of ``points`` (n, 3) by farthest-point sampling.

    Starts at the point nearest the centroid; deterministic.
    """
    p = np.asarray(points, float)
    if len(p) <= k:
        return np.arange(len(p))
    i = int(np.argmin(np.linalg.norm(p - p.mean(0), axis=1)))
    chosen = [i]
    d = np.linalg.norm(p - p[i], axis=1)
    for _ in range(k - 1):
        i = int(np.argmax(d))
        chosen.append(i)
        d = np.minimum(d, np.linalg.norm(p - p[i], axis=1))
    return np.sort(chosen)


# ---- view planning ----------------------------------------------------------------------------
#: Overlap components a view is judged by, in the order they are reported.
COMPONENTS = ("tip", "wall", "path")


@dataclass(frozen=True)
class ViewSearchSettings:
    """Settings of the C-arm view search (all documented, overridable).

    Attributes
    ----------
    lao_range_deg, cran_range_deg : (2,) float
        Searched angles: LAO/RAO -90..90 (the whole orbit from one lateral over AP to the
        other: a near-lateral view is the one that shows the posterior wall edge-on, and
        it lies beyond 60 deg), cranial/caudal -40..40 deg [U] (what a mobile C-arm
        reaches over a prone patient without collision).
    lao_step_deg, cran_step_deg : float
        Grid steps: 5 deg (37 x 17 = 629 poses).
    tip_radius_mm : float
        Disc around the tip that must be seen: 3 mm [U] (about two needle diameters).
    wall_radius_mm : float
        Disc around each posterior-wall point: 2 mm [U].
    path_samples : int
        Points along the needle: 32.
    weights : dict
        ``path``, ``tip``, ``wall``: 0.3, 0.35, 0.35 [U], for the weighted ``overlap``
        (reported for every pose, the solver's visibility) and ``criterion="weighted"``.
    criterion : str
        How poses are ranked.  ``"minimax"`` (default): first the poses in which no
        component (tip, wall, path) is *increased* (``reduction_abs``, ``reduction_ratio``)
        against the better of AP and lateral for that component, then the others; within
        each, by the larger of the tip and wall overlaps, then by the path overlap (each in
        steps of ``rank_tolerance``), then by the weighted overlap.  So a view is not chosen
        for a clear path while the tip or the wall stays hidden, nor for a clear wall while
        the needle path is lost (a weighted sum trades one for the other).  ``"weighted"``:
        by the weighted overlap alone.
    rank_tolerance : float
        Overlap step below which two poses count as equal in the ranking: 0.01 (1 % of a
        disc's area) [U].
    min_needle_angle_deg : float
        Poses whose beam is closer than this to the needle shaft are ranked after all
        others and never suggested: 30 deg [U] (the needle shows at less than half its
        length; seen end-on it is the bull's-eye view, a separate view type for the entry
        point, not a view to follow the needle and the cement).
    edge_on_max_deg : float
        A pose shows the posterior wall *edge-on* (as the line a radiograph shows, what
        the operator watches the cement front against) when its beam is within this angle
        of the wall's plane (mean of the wall normals, else LPS +y): 15 deg [U].  The
        wall between the pedicles is 25-30 mm wide, so a beam at angle ``a`` to its plane
        spreads it over ``width x sin a`` in depth: 6-8 mm at 15 deg, still read as the
        wall's line, but 12-15 mm at 30 deg, where the DRRs show the wall as a patch, not
        a line.  The suggested wall view is the best edge-on pose.
    reduction_abs, reduction_ratio : float
        A view *reduces* an overlap component relative to a reference view when its
        overlap is at least ``reduction_abs`` (0.01) lower and at most ``reduction_ratio``
        (0.8) times the reference's; when both are below ``reduction_abs`` the component is
        *clear in both* (nothing to reduce) [U].
    rod_simplify_mm : float
        Douglas-Peucker tolerance for rod centre lines in the scoring: 0.5 mm.
    angle_tiebreak_per_deg : float
        Added to the weighted overlap per degree of ``|lao| + |cran|`` in the last ranking
        key so that of equally clear views the one closer to AP ranks first: 1e-4.
    min_separation_deg : float
        Suggested views differ by at least this much in one of the angles: 15 deg.
    tip_gap_step_mm, tip_gap_rank_mm : float
        The tip's projected gap to the nearest hardware shadow (``tip_gap_mm`` of
        :func:`score_poses`) ranks poses after the overlaps: of two poses equal in the
        overlap steps, the one that leaves more room between tip and shadow ranks first, in
        steps of ``tip_gap_step_mm`` (0.5 mm) up to ``tip_gap_rank_mm`` (6 mm: twice the tip
        disc, room for the tip to advance or stray by a needle diameter or two and still be
        seen) [U].  It is also compared with AP's and lateral's (``wider`` when at least one
        step more, ``ample in both`` when both views leave ``tip_gap_rank_mm`` or more).
    tip_gap_cap_mm : float
        Reported gaps are capped here (also with no hardware at all): 25 mm, about a lumbar
        body's half-width in front of and beside the tip [U].
    wall_term : str
        ``"overlap"`` (default): the wall term is the hardware-covered fraction of the wall
        discs, as specified.  ``"seen_edge_on"``: a wall point only counts as seen to the
        degree the beam is tangent to the wall there (``sin`` of the angle between beam
        and surface normal; a radiograph shows a wall as a line only edge-on) and is not
        covered: the term is the mean of ``1 - sin(angle) (1 - covered)``.  Needs the wall
        normals (:func:`posterior_wall_points` with ``return_normals=True``).
    """

    lao_range_deg: tuple[float, float] = (-90.0, 90.0)
    lao_step_deg: float = 5.0
    cran_range_deg: tuple[float, float] = (-40.0, 40.0)
    cran_step_deg: float = 5.0
    tip_radius_mm: float = 3.0
    wall_radius_mm: float = 2.0
    path_samples: int = 32
    weights: dict[str, float] = field(default_factory=lambda: {"path": 0.3, "tip": 0.35, "wall": 0.35})
    criterion: str = "minimax"
    rank_tolerance: float = 0.01
    min_needle_angle_deg: float = 30.0
    edge_on_max_deg: float = 15.0
    reduction_abs: float = 0.01
    reduction_ratio: float = 0.8
    rod_simplify_mm: float = 0.5
    angle_tiebreak_per_deg: float = 1e-4
    min_separation_deg: float = 15.0
    tip_gap_step_mm: float = 0.5
    tip_gap_rank_mm: float = 6.0
    tip_gap_cap_mm: float = 25.0
    wall_term: str = "overlap"

    def __post_init__(self) -> None:
        if self.wall_term not in ("overlap", "seen_edge_on"):
            raise FluoroError("wall_term must be 'overlap' or 'seen_edge_on'", code="PLN-FLU-001")
        if self.criterion not in ("minimax", "weighted"):
            raise FluoroError("criterion must be 'minimax' or 'weighted'", code="PLN-FLU-001")
        for name in ("lao_step_deg", "cran_step_deg", "tip_radius_mm", "wall_radius_mm", "rank_tolerance",
                     "tip_gap_step_mm", "tip_gap_rank_mm", "tip_gap_cap_mm"):
            if not float(getattr(self, name)) > 0:
                raise FluoroError(f"{name} must be > 0", code="PLN-FLU-001")
        if not (0.0 <= self.min_needle_angle_deg < 90.0 and 0.0 < self.edge_on_max_deg <= 90.0):
            raise FluoroError("min_needle_angle_deg must be in [0, 90), edge_on_max_deg in (0, 90]", code="PLN-FLU-001")
        if not (self.reduction_abs >= 0.0 and 0.0 < self.reduction_ratio <= 1.0):
            raise FluoroError("reduction_abs must be >= 0 and reduction_ratio in (0, 1]", code="PLN-FLU-001")
        if self.path_samples < 2:
            raise FluoroError("path_samples must be >= 2", code="PLN-FLU-001")
        w = {"path": 0.0, "tip": 0.0, "wall": 0.0}
        for k, v in dict(self.weights).items():
            if k not in w or not float(v) >= 0:
                raise FluoroError(f"weights: unknown key {k!r} or negative value", code="PLN-FLU-001")
            w[k] = float(v)
        if sum(w.values()) <= 0:
            raise FluoroError("weights must not all be 0", code="PLN-FLU-001")
        object.__setattr__(self, "weights", w)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lao, cran)`` of every searched pose, each (p,), LAO-major order."""
        la = np.arange(self.lao_range_deg[0], self.lao_range_deg[1] + 1e-9, self.lao_step_deg)
        cr = np.arange(self.cran_range_deg[0], self.cran_range_deg[1] + 1e-9, self.cran_step_deg)
        A, C = np.meshgrid(la, cr, indexing="ij")
        return A.ravel(), C.ravel()


def _g(x: np.ndarray) -> np.ndarray:
    """Fraction of a unit disc beyond the chord at signed distance ``x``."""
    x = np.clip(x, -1.0, 1.0)
    return (np.arccos(x) - x * np.sqrt(1.0 - x * x)) / np.pi


def _coverage(q: np.ndarray, rho: np.ndarray, a: np.ndarray, b: np.ndarray, ra: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """Covered fraction of query discs by the union of capsules, per pose.

    Parameters
    ----------
    q : (p, m, 2) float
        Disc centres, pixels.
    rho : (p, m) float
        Disc radii, pixels.
    a, b : (p, h, 2) float
        Capsule axis end points, pixels.
    ra, rb : (p, h) float
        Capsule half-widths at ``a`` and ``b``, pixels.

    Returns
    -------
    (p, m) float
    """
    if a.shape[1] == 0:
        return np.zeros(q.shape[:2])
    f32 = np.float32
    qx, qy = q[:, :, None, 0].astype(f32), q[:, :, None, 1].astype(f32)  # (p, m, 1)
    ax, ay = a[:, None, :, 0].astype(f32), a[:, None, :, 1].astype(f32)  # (p, 1, h)
    abx, aby = (b[:, None, :, 0] - a[:, None, :, 0]).astype(f32), (b[:, None, :, 1] - a[:, None, :, 1]).astype(f32)
    L2 = abx * abx + aby * aby
    dx, dy = qx - ax, qy - ay  # (p, m, h)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(L2 > 1e-12, (dx * abx + dy * aby) / L2, f32(0.0))
    np.clip(t, 0.0, 1.0, out=t)
    dx -= t * abx
    dy -= t * aby
    dist = np.sqrt(dx * dx + dy * dy)
    R = ra[:, None, :].astype(f32) + t * (rb - ra)[:, None, :].astype(f32)
    r = rho[:, :, None].astype(f32)
    near = dist - R < r  # only these discs touch the capsule's strip
    f = np.zeros(dist.shape, np.float64)
    if near.any():
        rn = np.broadcast_to(r, dist.shape)[near].astype(float)
        dn, Rn = dist[near].astype(float), R[near].astype(float)
        f[near] = np.clip(_g((dn - Rn) / rn) - _g((dn + Rn) / rn), 0.0, 1.0)
    return 1.0 - np.prod(1.0 - f, axis=2)


#: Points per end ellipse in :func:`_shadow_gap` (distance error below 0.3 % of the radius).
_GAP_ELLIPSE_POINTS = 48


def _shadow_gap(
    q: np.ndarray, a: np.ndarray, b: np.ndarray, ra: np.ndarray, rb: np.ndarray, ca: np.ndarray, cb: np.ndarray
) -> np.ndarray:
    """Distance from one point per pose to the nearest cylinder shadow, 0 inside one.

    A solid cylinder projects (seen from a point source) to the strip between its two
    projected side lines, closed by its end discs, each an ellipse: half-axis ``r`` across
    the projected axis and ``r |cos|`` along it (``cos`` of the angle between the cylinder
    axis and the ray through that end).  The shadow is the tapered flat-ended strip
    ``a..b`` joined with the two ellipses; the distance is the least of the three (each
    ellipse sampled at :data:`_GAP_ELLIPSE_POINTS` points).

    Parameters
    ----------
    q : (p, 2) float
        Points, pixels.
    a, b : (p, h, 2) float
        Projected axis ends, pixels.
    ra, rb : (p, h) float
        Projected radii at ``a`` and ``b``, pixels.
    ca, cb : (p, h) float
        ``|cos|`` of the axis-to-ray angle at ``a`` and ``b``.

    Returns
    -------
    (p,) float
        Pixels; ``inf`` without cylinders.
    """
    if a.shape[1] == 0:
        return np.full(q.shape[0], np.inf)
    ab = b - a
    L = np.linalg.norm(ab, axis=2)
    e = np.where(L[..., None] > 1e-9, ab / np.maximum(L, 1e-9)[..., None], np.array([1.0, 0.0]))
    n = np.stack([-e[..., 1], e[..., 0]], axis=2)
    d = q[:, None, :] - a
    s_ = (d * e).sum(axis=2)
    w = (d * n).sum(axis=2)
    sc = np.clip(s_, 0.0, L)
    half = ra + (rb - ra) * np.where(L > 1e-9, sc / np.maximum(L, 1e-9), 0.0)
    strip = np.hypot(s_ - sc, np.maximum(np.abs(w) - half, 0.0))
    phi = np.linspace(0.0, 2.0 * np.pi, _GAP_ELLIPSE_POINTS, endpoint=False)
    cphi, sphi = np.cos(phi), np.sin(phi)
    best = strip.min(axis=1)
    for centre, r, c in ((a, ra, ca), (b, rb, cb)):
        dc = q[:, None, :] - centre  # (p, h, 2)
        x, y = (dc * e).sum(axis=2), (dc * n).sum(axis=2)  # along, across
        ry = np.maximum(r, 1e-12)
        rx = np.maximum(r * c, 1e-12)
        inside = (x / rx) ** 2 + (y / ry) ** 2 <= 1.0
        ex = rx[..., None] * sphi  # (p, h, k)
        ey = ry[..., None] * cphi
        dist = np.hypot(x[..., None] - ex, y[..., None] - ey).min(axis=2)
        best = np.minimum(best, np.where(inside, 0.0, dist).min(axis=1))
    return best


def score_poses(
    trajectory: TrajectoryLike,
    hardware: Iterable[Any],
    wall_points: ArrayLike | None,
    lao_deg: ArrayLike,
    cran_deg: ArrayLike,
    settings: ViewSearchSettings | None = None,
    carm: CArm | None = None,
    wall_normals: ArrayLike | None = None,
    per_point: bool = False,
) -> dict[str, np.ndarray]:
    """Hardware overlap terms of C-arm poses for one trajectory (module docstring).

    Parameters
    ----------
    trajectory : Trajectory, candidate dict or (entry, target)
    hardware : iterable of Screw, Rod, CrossLink or Cylinders
    wall_points : (w, 3) float or None
        Posterior-wall points (LPS mm); ``None`` or empty scores the wall term 0.
    lao_deg, cran_deg : (p,) float
    settings : ViewSearchSettings, optional
    carm : CArm, optional
        Geometry (SDD, SID, detector); angles and isocentre are replaced.
    wall_normals : (w, 3) float, optional
        Unit outward normals at the wall points (for ``wall_term="seen_edge_on"``).
    per_point : bool
        Also return ``wall_covered`` (p, w) and ``path_covered`` (p, path_samples): the
        covered fraction of each wall disc and needle-path disc (for overlays).

    Returns
    -------
    dict
        ``lao``, ``cran`` (p,), ``path``, ``tip``, ``wall`` (covered fractions in [0, 1]),
        ``overlap`` (their weighted mean), ``tip_gap_mm`` (the tip point's distance on the
        detector to the nearest hardware shadow edge, in mm at the tip's magnification: 0
        when the tip is in a shadow, below ``tip_radius_mm`` when the tip disc is partly
        covered; capped at ``tip_gap_cap_mm``), and two angles of the beam, degrees:
        ``needle_deg`` to the needle shaft (90 = the needle seen at full length, 0 =
        end-on) and ``wall_plane_deg`` to the posterior wall's plane (0 = the wall seen
        edge-on, 90 = en face; the plane's normal is the mean of ``wall_normals``, else
        LPS +y), each (p,).
    """
    s = settings or ViewSearchSettings()
    c = carm or CArm()
    t = as_trajectory(trajectory)
    lao = np.atleast_1d(np.asarray(lao_deg, float))
    cran = np.atleast_1d(np.asarray(cran_deg, float))
    lao, cran = np.broadcast_arrays(lao, cran)
    if lao.ndim != 1 or lao.size == 0 or not (np.all(np.isfinite(lao)) and np.all(np.isfinite(cran))):
        raise FluoroError("poses must be finite 1-D angle arrays", code="PLN-FLU-003")
    cyl = implant_cylinders(hardware, s.rod_simplify_mm)
    W = np.zeros((0, 3)) if wall_points is None or len(wall_points) == 0 else as_points(wall_points, "wall_points")
    path = t.path_points(s.path_samples)
    tip = t.tip_lps[None]
    h = len(cyl)
    pts = np.vstack([cyl.p0, cyl.p1, path, tip, W])
    P = projection_matrices(c, lao, cran, t.target_lps)
    pix, depth = project_many(P, pts)
    if np.any(depth <= 1.0):
        raise FluoroError(
            "a hardware or query point lies at or behind the X-ray source in some pose; "
            "check the trajectory and hardware coordinates (LPS mm)",
            code="PLN-FLU-003",
        )
    scale = c.source_to_detector_mm / (depth * (0.5 * sum(c.pixel_pitch_mm)))  # px per mm at each point
    beam = P[:, 2, :3] / np.linalg.norm(P[:, 2, :3], axis=1, keepdims=True)  # (p, 3) unit source -> detector
    a, b = pix[:, :h], pix[:, h : 2 * h]
    ra, rb = cyl.radius[None] * scale[:, :h], cyl.radius[None] * scale[:, h : 2 * h]
    o = 2 * h
    n_path = len(path)
    q = pix[:, o:]
    rho = np.concatenate(
        [
            np.full((1, n_path), t.radius_mm),
            np.full((1, 1), s.tip_radius_mm),
            np.full((1, len(W)), s.wall_radius_mm),
        ],
        axis=1,
    ) * scale[:, o:]
    cov = _coverage(q, rho, a, b, ra, rb)
    path_c = cov[:, :n_path].mean(axis=1)
    tip_c = cov[:, n_path]
    i_tip = o + n_path
    tip_gap = np.full(len(lao), np.inf)
    if h:
        src = t.target_lps - c.source_to_isocentre_mm * beam  # (p, 3) the X-ray source (isocentre: target)
        u3 = cyl.p1 - cyl.p0
        u3 = u3 / np.maximum(np.linalg.norm(u3, axis=1, keepdims=True), 1e-12)

        def _cos(ends: np.ndarray) -> np.ndarray:
            ray = ends[None] - src[:, None]  # (p, h, 3)
            return np.abs((ray * u3[None]).sum(axis=2)) / np.linalg.norm(ray, axis=2)

        tip_gap = _shadow_gap(pix[:, i_tip], a, b, ra, rb, _cos(cyl.p0), _cos(cyl.p1))
    tip_gap = np.minimum(tip_gap / scale[:, i_tip], s.tip_gap_cap_mm)
    wall_cov = cov[:, n_path + 1 :]
    if len(W) and s.wall_term == "seen_edge_on":
        if wall_normals is None or np.shape(wall_normals) != W.shape:
            raise FluoroError(
                "wall_term 'seen_edge_on' needs wall_normals of the wall points' shape", code="PLN-FLU-003"
            )
        nrm = np.asarray(wall_normals, float)
        nrm = nrm / np.linalg.norm(nrm, axis=1, keepdims=True)
        sin = np.sqrt(np.clip(1.0 - (beam @ nrm.T) ** 2, 0.0, 1.0))  # (p, w)
        wall_c = (1.0 - sin * (1.0 - wall_cov)).mean(axis=1)
    else:
        wall_c = wall_cov.mean(axis=1) if len(W) else np.zeros(len(lao))
    w = s.weights
    if len(W):
        overlap = (w["path"] * path_c + w["tip"] * tip_c + w["wall"] * wall_c) / (w["path"] + w["tip"] + w["wall"])
    else:
        overlap = (w["path"] * path_c + w["tip"] * tip_c) / max(w["path"] + w["tip"], 1e-12)
    needle_deg = np.degrees(np.arccos(np.clip(np.abs(beam @ t.direction), 0.0, 1.0)))
    n_wall = np.array([0.0, 1.0, 0.0])
    if wall_normals is not None and len(W) and np.shape(wall_normals) == W.shape:
        m = np.asarray(wall_normals, float).mean(axis=0)
        if np.linalg.norm(m) > 1e-9:
            n_wall = m / np.linalg.norm(m)
    wall_plane_deg = np.degrees(np.arcsin(np.clip(np.abs(beam @ n_wall), 0.0, 1.0)))
    out = {
        "lao": lao.copy(), "cran": cran.copy(), "path": path_c, "tip": tip_c, "wall": wall_c, "overlap": overlap,
        "tip_gap_mm": tip_gap, "needle_deg": needle_deg, "wall_plane_deg": wall_plane_deg,
    }
    if per_point:
        out["wall_covered"] = wall_cov.copy()
        out["path_covered"] = cov[:, :n_path].copy()
    return out


def _verdict(v: float, ref: float, s: ViewSearchSettings) -> str:
    """How overlap ``v`` of a view compares with a reference view's ``ref`` (settings' thresholds)."""
    a, q = s.reduction_abs, s.reduction_ratio
    if v < a and ref < a:
        return "clear in both"
    if v <= ref - a and v <= q * ref:
        return "reduced"
    if v >= ref + a and ref <= q * v:
        return "increased"
    return "not reduced"


def _gap_verdict(g: float, ref: float, s: ViewSearchSettings) -> str:
    """How the tip gap ``g`` of a view compares with a reference view's ``ref`` (mm): ``"ample
    in both"`` when both leave at least ``tip_gap_rank_mm``, else ``"wider"``, ``"narrower"``
    (by ``tip_gap_step_mm`` or more) or ``"same"``."""
    if g >= s.tip_gap_rank_mm and ref >= s.tip_gap_rank_mm:
        return "ample in both"
    if g >= ref + s.tip_gap_step_mm:
        return "wider"
    if g <= ref - s.tip_gap_step_mm:
        return "narrower"
    return "same"


def _rank_order(
    sc: dict[str, np.ndarray], s: ViewSearchSettings, has_wall: bool, reference: dict[str, float]
) -> np.ndarray:
    """Pose indices, best first, by ``s.criterion`` (:class:`ViewSearchSettings`);
    ``reference`` holds per component the overlap a pose must not measurably exceed to be
    in the first tier (the better of AP and lateral, or the lateral for the wall view)."""
    lao, cran = sc["lao"], sc["cran"]
    unusable = sc["needle_deg"] < s.min_needle_angle_deg
    last = np.round(sc["overlap"] + s.angle_tiebreak_per_deg * (np.abs(lao) + np.abs(cran)), 9)
    if s.criterion == "weighted":
        return np.lexsort((cran, lao, last, unusable.astype(int)))
    comps = COMPONENTS if has_wall else ("tip", "path")
    worse = np.zeros(len(lao), bool)  # some component "increased" against the better standard view
    for c in comps:
        r = float(reference[c])
        v = sc[c]
        worse |= (v >= r + s.reduction_abs) & (r <= s.reduction_ratio * v)
    tier = np.where(unusable, 2, np.where(worse, 1, 0))
    step = s.rank_tolerance
    k1 = np.floor((np.maximum(sc["tip"], sc["wall"]) if has_wall else sc["tip"]) / step + 1e-9)
    k2 = np.floor(sc["path"] / step + 1e-9)
    k3 = (-np.floor(np.minimum(sc["tip_gap_mm"], s.tip_gap_rank_mm) / s.tip_gap_step_mm + 1e-9)
          if "tip_gap_mm" in sc else np.zeros(len(lao)))
    return np.lexsort((cran, lao, last, k3, k2, k1, tier))


@dataclass
class ViewPlan:
    """Result of :func:`plan_views`.

    Attributes
    ----------
    scores : dict of (p,) arrays
        ``lao``, ``cran``, ``path``, ``tip``, ``wall``, ``overlap``, ``needle_deg``,
        ``wall_plane_deg`` of every searched pose (:func:`score_poses`).
    order : (p,) int
        Pose indices, best first (``settings.criterion``; poses that see the needle
        foreshortened, closer than ``min_needle_angle_deg``, last).
    reference : dict
        The same terms for the AP and lateral views (``"ap"``, ``"lateral"``).
    settings : ViewSearchSettings
    seconds : float
        Time of the search (scoring every pose).
    has_wall : bool
        Whether posterior-wall points were scored.
    """

    scores: dict[str, np.ndarray]
    order: np.ndarray
    reference: dict[str, dict[str, float]]
    settings: ViewSearchSettings
    seconds: float
    has_wall: bool = True

    @property
    def n_poses(self) -> int:
        return int(len(self.order))

    def view(self, i: int) -> dict[str, float]:
        """Angles and terms of pose ``i`` (an index into ``scores``)."""
        return {k: round(float(v[i]), 6) for k, v in self.scores.items()}

    @property
    def usable(self) -> np.ndarray:
        """(p,) bool: poses that see the needle at ``>= min_needle_angle_deg`` from its axis."""
        return self.scores["needle_deg"] >= self.settings.min_needle_angle_deg

    @property
    def edge_on(self) -> np.ndarray:
        """(p,) bool: poses whose beam is within ``edge_on_max_deg`` of the posterior wall's plane."""
        return self.scores["wall_plane_deg"] <= self.settings.edge_on_max_deg

    @property
    def best(self) -> dict[str, float]:
        """The first-ranked pose: the suggested tip/wall monitoring view."""
        return self.view(int(self.order[0]))

    @property
    def best_edge_on(self) -> dict[str, float] | None:
        """The best usable pose that shows the posterior wall edge-on (``None`` without wall
        points or when no usable pose of the grid is edge-on): the suggested wall view.

        Ranked as :attr:`order` but with the lateral as the reference of the first tier
        (the edge-on view replaces the lateral, and any edge-on view has more wall overlap
        than AP), so a pose that buys a slightly clearer wall with a measurably more hidden
        path or tip does not displace the lateral."""
        if not self.has_wall:
            return None
        ok = self.usable & self.edge_on
        if not ok.any():
            return None
        order = _rank_order(self.scores, self.settings, True, self.reference["lateral"])
        return self.view(int(order[np.argmax(ok[order])]))

    @property
    def visibility(self) -> float:
        """``1 - overlap`` (weighted) of the best view, in [0, 1]."""
        return float(np.clip(1.0 - self.scores["overlap"][self.order[0]], 0.0, 1.0))

    def ranked(self, n: int | None = None) -> list[dict[str, float]]:
        """The ``n`` best poses (all when ``None``), best first."""
        idx = self.order if n is None else self.order[:n]
        return [self.view(int(i)) for i in idx]

    def suggestions(self, k: int = 3) -> list[dict[str, float]]:
        """The best ``k`` usable views that differ pairwise by ``min_separation_deg`` in an angle."""
        sep = self.settings.min_separation_deg
        out: list[int] = []
        la, cr = self.scores["lao"], self.scores["cran"]
        usable = self.usable
        for i in self.order:
            if not usable[i]:
                break
            if all(max(abs(la[i] - la[j]), abs(cr[i] - cr[j])) >= sep for j in out):
                out.append(int(i))
            if len(out) == k:
                break
        return [self.view(i) for i in out]

    @property
    def has_tip_gap(self) -> bool:
        """Whether the poses and both reference views carry ``tip_gap_mm``."""
        return "tip_gap_mm" in self.scores and all("tip_gap_mm" in self.reference[r] for r in ("ap", "lateral"))

    def components(self) -> tuple[str, ...]:
        """The overlap components judged: tip, wall (with wall points) and path."""
        return COMPONENTS if self.has_wall else ("tip", "path")

    def compare(self, view: dict[str, float]) -> dict[str, dict[str, Any]]:
        """Each overlap component of ``view`` against the AP and the lateral view.

        Returns
        -------
        dict
            Component -> ``view``, ``ap``, ``lateral`` (overlaps), ``ratio_ap``,
            ``ratio_lateral`` (view / reference, ``None`` when the reference is 0) and
            ``vs_ap``, ``vs_lateral``: ``"reduced"``, ``"clear in both"``, ``"not reduced"``
            or ``"increased"`` (thresholds ``reduction_abs``, ``reduction_ratio``).  When the
            scores have it, ``tip_gap_mm`` too: the tip's projected gap to the nearest
            hardware shadow in the view, AP and lateral (mm), with ``vs_ap``, ``vs_lateral``
            ``"wider"``, ``"same"`` or ``"narrower"`` (by ``tip_gap_step_mm`` or more), or
            ``"ample in both"`` (both at least ``tip_gap_rank_mm``).
        """
        out: dict[str, dict[str, Any]] = {}
        for c in self.components():
            v = float(view[c])
            row: dict[str, Any] = {"view": round(v, 6)}
            for ref in ("ap", "lateral"):
                r = float(self.reference[ref][c])
                row[ref] = round(r, 6)
                row[f"ratio_{ref}"] = round(v / r, 4) if r > 0 else None
                row[f"vs_{ref}"] = _verdict(v, r, self.settings)
            out[c] = row
        if self.has_tip_gap and "tip_gap_mm" in view:
            g = float(view["tip_gap_mm"])
            row = {"view": round(g, 3)}
            for ref in ("ap", "lateral"):
                r = float(self.reference[ref]["tip_gap_mm"])
                row[ref] = round(r, 3)
                row[f"vs_{ref}"] = _gap_verdict(g, r, self.settings)
            out["tip_gap_mm"] = row
        return out

    def suggest(self) -> dict[str, Any]:
        """The suggested views with their angles, compared with AP and lateral, and findings.

        * ``tip_wall``: the best-ranked usable pose (:attr:`best`), the tip/wall monitoring
          view to follow the needle, its tip and the cement against the posterior wall;
        * ``wall_edge_on``: the best-ranked usable pose that shows the posterior wall edge-on
          (:attr:`best_edge_on`), the lateral-type view; ``None`` without one.

        Each has the pose's terms and its :meth:`compare` table.  ``findings`` states, per
        component, whether the suggested views reduce it relative to AP and lateral, and
        when no pose of the grid does.
        """
        s = self.settings
        views: dict[str, dict[str, Any] | None] = {"tip_wall": self.best, "wall_edge_on": self.best_edge_on}
        out: dict[str, Any] = {}
        for name, v in views.items():
            out[name] = None if v is None else {**v, "compare": self.compare(v)}
        findings: list[str] = []
        usable = self.usable
        b = self.best
        for c in self.components():
            for ref in ("ap", "lateral"):
                r = float(self.reference[ref][c])
                got = [
                    f"{name} {views[name][c]:.3f} ({_verdict(float(views[name][c]), r, s)})"  # type: ignore[index]
                    for name in views
                    if views[name] is not None
                ]
                line = f"{c} vs {ref} {r:.3f}: " + ", ".join(got)
                possible = float(self.scores[c][usable].min()) if usable.any() else float("nan")
                if _verdict(possible, r, s) not in ("reduced", "clear in both"):
                    line += f"; no pose of the grid reduces it (least {possible:.3f})"
                elif c in ("tip", "wall") and _verdict(float(b[c]), r, s) not in ("reduced", "clear in both"):
                    line += "; " + self._trade_off(c, r)
                findings.append(line)
        if self.has_tip_gap:
            for ref in ("ap", "lateral"):
                r = float(self.reference[ref]["tip_gap_mm"])
                got = [
                    f"{name} {views[name]['tip_gap_mm']:.1f} mm ({_gap_verdict(float(views[name]['tip_gap_mm']), r, s)})"  # type: ignore[index]
                    for name in views
                    if views[name] is not None
                ]
                findings.append(f"tip gap to the nearest hardware shadow vs {ref} {r:.1f} mm: " + ", ".join(got))
        if (b["lao"], b["cran"]) == (0.0, 0.0):
            findings.append(
                "the best tip/wall view is AP itself: no oblique reduces the tip or wall overlap without "
                "measurably hiding another component"
            )
        if self.has_wall and views["wall_edge_on"] is None:
            findings.append(f"no usable pose of the grid sees the posterior wall within {s.edge_on_max_deg:g} deg of edge-on")
        elif self.has_wall:
            lat = float(self.reference["lateral"]["wall"])
            least = float(self.scores["wall"][usable & self.edge_on].min())
            if _verdict(least, lat, s) not in ("reduced", "clear in both"):
                findings.append(
                    f"wall: no edge-on pose (beam within {s.edge_on_max_deg:g} deg of the wall's plane) reduces the "
                    f"wall overlap below the lateral's {lat:.3f} (least {least:.3f}): hardware projects onto the wall "
                    "in every such view"
                )
        out["findings"] = findings
        return out

    def _trade_off(self, c: str, ref_value: float) -> str:
        """The clearest usable pose that reduces component ``c`` below ``ref_value``, and what
        it hides more than the better of AP and lateral (for the findings)."""
        s = self.settings
        rank = np.empty(self.n_poses, int)
        rank[self.order] = np.arange(self.n_poses)
        v = self.scores[c]
        ok = self.usable & (v <= ref_value - s.reduction_abs) & (v <= s.reduction_ratio * ref_value)
        i = int(np.lexsort((rank, np.round(v, 9), ~ok))[0])
        worse = [
            f"{k} {self.scores[k][i]:.3f} vs {min(self.reference['ap'][k], self.reference['lateral'][k]):.3f}"
            for k in self.components()
            if _verdict(float(self.scores[k][i]), min(self.reference["ap"][k], self.reference["lateral"][k]), s)
            == "increased"
        ]
        cost = f" at the cost of {', '.join(worse)}" if worse else ""
        return (f"reducible to {v[i]:.3f} at LAO {self.scores['lao'][i]:+.0f} CRAN {self.scores['cran'][i]:+.0f}"
                f"{cost}")

    def to_dict(self, n: int = 10) -> dict[str, Any]:
        """JSON-ready summary (deterministic: no timings)."""
        return {
            "n_poses": self.n_poses,
            "criterion": self.settings.criterion,
            "best": self.best,
            "visibility": round(self.visibility, 6),
            "suggested": self.suggest(),
            "suggestions": self.suggestions(),
            "top": self.ranked(n),
            "reference": self.reference,
        }


def plan_views(
    trajectory: TrajectoryLike,
    hardware: Iterable[Any],
    wall_points: ArrayLike | None,
    settings: ViewSearchSettings | None = None,
    carm: CArm | None = None,
    lateral_side: str = "left",
    wall_normals: ArrayLike | None = None,
) -> ViewPlan:
    """Search the C-arm pose grid for the views that best show the needle, tip and wall.

    Parameters
    ----------
    trajectory : Trajectory, candidate dict or (entry, target)
    hardware : iterable of Screw, Rod, CrossLink or Cylinders
    wall_points : (w, 3) float or None
        Posterior-wall points, e.g. :func:`posterior_wall_points`.
    settings : ViewSearchSettings, optional
    carm : CArm, optional
    lateral_side : str
        Detector side of the reference lateral view.
    wall_normals : (w, 3) float, optional
        Outward normals at the wall points: their mean is the wall's normal for the
        edge-on test (else LPS +y); needed for ``settings.wall_term = "seen_edge_on"``.

    Returns
    -------
    ViewPlan
    """
    s = settings or ViewSearchSettings()
    lao, cran = s.grid()
    has_wall = wall_points is not None and len(wall_points) > 0
    t0 = time.perf_counter()
    sc = score_poses(trajectory, hardware, wall_points, lao, cran, s, carm, wall_normals)
    ref_angles = {"ap": (0.0, 0.0), "lateral": (90.0 if lateral_side == "left" else -90.0, 0.0)}
    ref = score_poses(
        trajectory, hardware, wall_points, [a for a, _ in ref_angles.values()], [c for _, c in ref_angles.values()],
        s, carm, wall_normals,
    )
    reference = {
        name: {k: round(float(v[i]), 6) for k, v in ref.items()} for i, name in enumerate(ref_angles)
    }
    better = {c: min(reference["ap"][c], reference["lateral"][c]) for c in COMPONENTS}
    order = _rank_order(sc, s, has_wall, better)
    seconds = time.perf_counter() - t0
    log.debug("view search: %d poses in %.3f s", len(lao), seconds)
    return ViewPlan(sc, order, reference, s, seconds, has_wall)


def visibility_score(
    trajectory: TrajectoryLike,
    hardware: Iterable[Any],
    wall_points: ArrayLike | None,
    settings: ViewSearchSettings | None = None,
    carm: CArm | None = None,
    wall_normals: ArrayLike | None = None,
) -> float:
    """Fluoroscopic visibility of a trajectory in [0, 1]: ``1 - overlap`` of its best view.

    1 means some C-arm pose of the search grid shows the needle path, tip and posterior
    wall free of hardware shadow; 0 that every pose hides them completely.  For the
    solver's ``visibility`` score term.
    """
    return plan_views(trajectory, hardware, wall_points, settings, carm, wall_normals=wall_normals).visibility


# ---- images -----------------------------------------------------------------------------------
def standard_views(trajectory: TrajectoryLike, carm: CArm | None = None, view_plan: ViewPlan | None = None) -> dict[str, CArm]:
    """AP, lateral, bull's-eye, progression and, with a plan, the suggested views of a trajectory.

    The suggested views are ``best_oblique`` (:attr:`ViewPlan.best`, the suggested
    tip/wall monitoring view) and ``wall_edge_on`` (:attr:`ViewPlan.best_edge_on`, when there is one).
    """
    t = as_trajectory(trajectory)
    views = {
        "ap": ap_view(t.target_lps, carm),
        "lateral": lateral_view(t.target_lps, carm),
        "bullseye": bullseye_view(t, carm),
        "progression": progression_view(t, carm),
    }
    if view_plan is not None:
        b = view_plan.best
        views["best_oblique"] = (carm or CArm()).posed(b["lao"], b["cran"], t.target_lps)
        e = view_plan.best_edge_on
        if e is not None:
            views["wall_edge_on"] = (carm or CArm()).posed(e["lao"], e["cran"], t.target_lps)
    return views


#: Overlay colours: the tip ring and the wall points are drawn in these when clear of
#: hardware shadow (covered fraction below ``OVERLAY_CLEAR_BELOW``), orange when partly
#: covered (below ``OVERLAY_COVERED_FROM``) and red when mostly covered.
OVERLAY_TIP_CLEAR = (255, 220, 0)
OVERLAY_WALL_CLEAR = (0, 200, 255)
OVERLAY_PARTLY = (255, 140, 0)
OVERLAY_COVERED = (255, 0, 0)
OVERLAY_CLEAR_BELOW = 0.01
OVERLAY_COVERED_FROM = 0.5
OVERLAY_LEGEND = "tip ring yellow / wall points cyan: clear; orange: partly, red: mostly under hardware shadow"


def _coverage_colour(f: float, clear: tuple[int, int, int]) -> tuple[int, int, int]:
    """Overlay colour of a disc with covered fraction ``f`` (constants above)."""
    if f < OVERLAY_CLEAR_BELOW:
        return clear
    return OVERLAY_PARTLY if f < OVERLAY_COVERED_FROM else OVERLAY_COVERED


def _caption(img: Any, lines: list[str]) -> None:
    """Write ``lines`` top left on a PIL RGB image in place (white on a dark band)."""
    from PIL import ImageDraw

    d = ImageDraw.Draw(img)
    h = 11
    d.rectangle([0, 0, img.width, h * len(lines) + 2], fill=(0, 0, 0))
    for k, line in enumerate(lines):
        d.text((3, 1 + h * k), line, fill=(255, 255, 255))


def _paint_disc(
    rgb: np.ndarray, centre: ArrayLike, radius: float, colour: tuple[int, int, int], inner: float | None = None
) -> None:
    """Paint a disc (or a ring outside ``inner``) of ``colour`` into an (r, c, 3) image in place."""
    cu, cv = float(centre[0]), float(centre[1])
    if not (np.isfinite(cu) and np.isfinite(cv)):
        return
    r0, r1 = max(0, int(np.floor(cv - radius))), min(rgb.shape[0], int(np.ceil(cv + radius)) + 1)
    c0, c1 = max(0, int(np.floor(cu - radius))), min(rgb.shape[1], int(np.ceil(cu + radius)) + 1)
    if r1 <= r0 or c1 <= c0:
        return
    rr, cc = np.mgrid[r0:r1, c0:c1]
    d2 = (cc - cu) ** 2 + (rr - cv) ** 2
    m = d2 <= radius**2
    if inner is not None:
        m &= d2 > inner**2
    rgb[r0:r1, c0:c1][m] = colour


def write_view_pngs(
    ct: Volume,
    trajectory: TrajectoryLike,
    hardware: Iterable[Any],
    out_dir: str | Path,
    wall_points: ArrayLike | None = None,
    carm: CArm | None = None,
    drr_settings: DRRSettings | None = None,
    search_settings: ViewSearchSettings | None = None,
    overlay: bool = True,
    wall_normals: ArrayLike | None = None,
) -> dict[str, Path]:
    """Write DRR PNGs of the AP, lateral, bull's-eye, progression and suggested views.

    The suggested views are ``best_oblique`` (the tip/wall monitoring view,
    :attr:`ViewPlan.best`) and, with wall points and an edge-on pose, ``wall_edge_on``
    (:attr:`ViewPlan.best_edge_on`); ``views.json`` holds their comparison with AP and
    lateral (:meth:`ViewPlan.suggest`).

    Parameters
    ----------
    ct : Volume
        CT in HU.
    trajectory : Trajectory, candidate dict or (entry, target)
    hardware : iterable of Screw, Rod, CrossLink
    out_dir : path
        Created if needed; gets ``<view>.png`` (grey DRR), with ``overlay`` also
        ``<view>_overlay.png`` (the tip disc's outline yellow and the wall points cyan where
        clear of hardware shadow, orange where partly and red where mostly covered, as
        scored; a caption with the view's angles and overlaps) and ``views.json`` (angles,
        overlap terms, window; no timings, so it is deterministic).
    wall_points : (w, 3) float, optional
    carm : CArm, optional
    drr_settings : DRRSettings, optional
    search_settings : ViewSearchSettings, optional
    overlay : bool
    wall_normals : (w, 3) float, optional
        For ``search_settings.wall_term = "seen_edge_on"``.

    Returns
    -------
    dict
        View name -> PNG path.
    """
    from planner.errors import optional_import
    from planner.fluoro.drr import renderer_for

    Image = optional_import("PIL.Image", "writing fluoroscopy PNGs", "render")
    t = as_trajectory(trajectory)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = search_settings or ViewSearchSettings()
    vp = plan_views(t, hardware, wall_points, s, carm, wall_normals=wall_normals)
    views = standard_views(t, carm, vp)
    rend = renderer_for(ct, drr_settings)
    written: dict[str, Path] = {}
    meta: dict[str, Any] = {"views": {}, "view_search": vp.to_dict(5)}
    for name, c in views.items():
        im = rend.render(c, hardware, [t])
        g = im.to_uint8()
        p = out / f"{name}.png"
        Image.fromarray(g).save(p)
        written[name] = p
        terms = score_poses(t, hardware, wall_points, [c.lao_deg], [c.cran_deg], s, carm, wall_normals, per_point=True)
        meta["views"][name] = {
            "carm": c.describe(),
            "overlap": {k: round(float(terms[k][0]), 6) for k in ("path", "tip", "wall", "overlap")},
            "tip_gap_mm": round(float(terms["tip_gap_mm"][0]), 3),
            "angles_deg": {k: round(float(terms[k][0]), 4) for k in ("needle_deg", "wall_plane_deg")},
            "window": [round(x, 4) for x in im.window()],
        }
        if overlay:
            rgb = np.repeat(g[:, :, None], 3, axis=2)
            scale = c.magnification / (0.5 * sum(c.pixel_pitch_mm))
            tip_px = c.project(t.tip_lps[None])[0]
            rr = s.tip_radius_mm * scale
            _paint_disc(rgb, tip_px, rr + 1.5, _coverage_colour(float(terms["tip"][0]), OVERLAY_TIP_CLEAR),
                        inner=max(rr - 0.5, 0.0))
            if wall_points is not None and len(wall_points):
                cov = terms["wall_covered"][0]
                for uv, f in zip(c.project(as_points(wall_points, "wall_points")), cov):
                    _paint_disc(rgb, uv, 1.6, _coverage_colour(float(f), OVERLAY_WALL_CLEAR))
            caption = (f"{name}  LAO {c.lao_deg:+.0f} CRAN {c.cran_deg:+.0f}  hardware overlap: "
                       f"tip {terms['tip'][0]:.3f} wall {terms['wall'][0]:.3f} path {terms['path'][0]:.3f}  "
                       f"tip gap {terms['tip_gap_mm'][0]:.1f} mm")
            img = Image.fromarray(rgb)
            _caption(img, [caption, OVERLAY_LEGEND])
            img.save(out / f"{name}_overlay.png")
    (out / "views.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    log.info("wrote %d view PNGs to %s", len(written), out)
    return written
