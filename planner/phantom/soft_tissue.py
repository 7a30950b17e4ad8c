"""Soft tissues of a phantom: discs, canal contents, vessels, lungs, muscles, body outline.

:func:`build_soft_tissue` builds every non-bone, non-metal :class:`Structure` from the
vertebral frames, so everything follows the spine curve of the case:

* discs ``<L>_disc`` between consecutive bodies, bounded by both endplate planes;
* ``spinal_canal`` (epidural fat), ``thecal_sac`` (CSF), ``spinal_cord`` ending as the
  conus at L1-L2, exiting nerve roots ``<L>_nerve_root_<side>``;
* ``aorta`` with ``iliac_artery_left/right`` below the bifurcation at L4, ``vena_cava``;
* ``lung_left``/``lung_right`` with the parietal ``pleura``;
* ``muscle`` (erector spinae, psoas, body wall), ``skin``, ``fat``, ``soft_tissue``;
* ``fluid_collection`` (seroma / pseudomeningocele) per :class:`~planner.phantom.spec.FluidSpec`.

Geometry helpers
----------------
Tubular structures (canal, sac, cord, vessels, erector spinae, psoas) are *sweeps*: an
elliptic cross-section whose centre, axes and size are interpolated along a smooth curve
resampled every :data:`SWEEP_STEP_MM`.  The SDF finds each point's nearest curve sample
with a k-d tree (``O(n log m)``, no loop over segments) and measures the 2-D elliptic
distance in that sample's normal plane.  The body outline and the lungs are defined in
axial slices from per-level profiles interpolated over LPS ``z``.

Numbers carry their source key from ``morphometry.md`` / ``instruments.md`` and a
provenance tag ([V] read in the primary source, [S] secondary, [U] own estimate).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from planner.labels.registry import LEVELS
from planner.phantom.model import Structure, VertebraFrame
from planner.phantom.sdf import SDF, capsule, ellipsoid, superellipse_prism, tube, union
from planner.phantom.spec import CaseSpec, FluidSpec

log = logging.getLogger(__name__)
Array = np.ndarray

# ---- constants (with sources) -----------------------------------------------------------------
#: Curve resampling step of sweeps, mm [U: well below every cross-section radius].
SWEEP_STEP_MM: float = 1.0
#: Superellipse exponent of the disc footprint [U: same family as the body primitive].
DISC_EXPONENT: float = 2.5
#: Disc overlap into the bodies at the rim / centre, mm [U: fills the endplate concavity
#: (mid-disc ~22.7 % higher than the rims, Ku11 [V]) and small depressions; bone is drawn
#: on top of the disc].
DISC_OVERLAP_RIM_MM: float = 1.0
DISC_OVERLAP_CENTRE_MM: float = 3.0
#: Canal cross-section = bony canal minus this margin per side, mm [U: keeps epidural fat
#: off the cortex at the interpedicular narrowing].
CANAL_MARGIN_MM: float = 0.5
#: Clearance kept between bone and the structures drawn above it, mm [U].
BONE_CLEARANCE_MM: float = 0.3
#: Canal/sac extension beyond the end vertebrae, mm [U: half a level].
CANAL_EXTENSION_MM: float = 20.0
#: Dural-sac-to-canal ratio: Pi17 [V] mean 0.56-0.70 (men), 0.63-0.82 (women); midpoints [U].
SAC_RATIO: dict[str, float] = {"male": 0.63, "female": 0.72}
#: Fraction of the free epidural space put posterior to the sac [U: the dorsal epidural fat
#: pad is the largest epidural fat compartment; the sac lies against the posterior body].
SAC_POSTERIOR_SPACE_FRACTION: float = 0.75
#: Spinal cord transverse x sagittal diameters, mm: KMJ88 [V] at T1, T5, T9; lumbar
#: enlargement T10-L1 [U: slightly larger than T9].
CORD_DIAMETERS_MM: dict[str, tuple[float, float]] = {
    "T1": (9.1, 7.0), "T5": (7.9, 6.1), "T9": (7.3, 6.3), "T11": (8.0, 6.5), "L1": (7.5, 6.0),
}
#: Dorsal CSF layer behind the cord, mm: Ho94 [V] ranges 4.0-8.5 at T5-T6, 2.0-6.0 at T11,
#: 1.5-4.5 at T12 (supine); midpoints [U]; upper thoracic value [U].
DORSAL_CSF_MM: dict[str, float] = {"T1": 5.0, "T5": 6.25, "T6": 6.25, "T11": 4.0, "T12": 3.0, "L1": 3.0}
#: Conus taper length, mm [U].
CONUS_TAPER_MM: float = 20.0
#: Nerve root radius, mm [U: lumbar root + DRG about 5 mm across, thoracic about 3 mm].
ROOT_RADIUS_MM: dict[str, float] = {"T": 1.5, "L": 2.5, "S": 2.5}
#: Distal course of the root beyond the foramen, mm [U: brief 30-40 mm].
ROOT_LENGTH_MM: float = 35.0
#: Direction of the root beyond the foramen in the vertebra frame (lateral, anterior,
#: inferior weights) [U: lumbar roots run inferolaterally into psoas, intercostal nerves
#: laterally under the rib].
ROOT_DIRECTION: dict[str, tuple[float, float, float]] = {
    "T": (0.90, 0.25, 0.35), "L": (0.70, 0.45, 0.55), "S": (0.60, 0.50, 0.62),
}
#: Aortic direction from the body centre, degrees from left-lateral toward anterior.
#: T8/T9: centre 19.7 mm left and 41.7 mm anterior of the posterior body wall (Se96 [V];
#: reference line taken at the posterior body wall [U]) -> about 54 deg; T12 56.3 (M) /
#: 55 (F) (Sh02 [V]); smallest (closest to lateral) at T5-6 (Sh02 6.8 / 3.7 [V]; raised to
#: 25 [U] so the aorta stays clear of the rib heads); L3 70.9 (MS [V]); T4-T11 mean 40.6
#: (MS [V]) is matched by this table's T4-T11 mean (43); other levels interpolated [U].
AORTA_ANGLE_DEG: dict[str, float] = {
    "T4": 35.0, "T5": 25.0, "T6": 25.0, "T7": 40.0, "T8": 53.6, "T9": 53.6, "T10": 55.0,
    "T11": 56.0, "T12": 56.3, "L1": 62.0, "L2": 67.0, "L3": 70.9, "L4": 80.0,
}
#: Aortic outer diameter, mm: ARSM [V] ranges T4 20-33, T7 20-30, T12 18-28 (midpoints
#: [U]); abdominal aorta ~20 mm narrowing to the bifurcation [U].
AORTA_DIAMETER_MM: dict[str, float] = {"T4": 26.5, "T7": 25.0, "T12": 23.0, "L2": 20.0, "L4": 18.0}
#: Aortic wall-to-body gap, mm: shortest 3.18 +- 0.68 at T12 prone (BMC MSD 2020 [V]);
#: elsewhere [U].
AORTA_GAP_MM: dict[str, float] = {"T4": 3.0, "T12": 3.2, "L4": 4.0}
#: Aortic bifurcation level [U: common anatomy, L4].
AORTA_BIFURCATION_LEVEL: str = "L4"
#: Common iliac artery diameter and course (local u, v-beyond-body, w), mm [U].
ILIAC_DIAMETER_MM: float = 11.0
ILIAC_END_LOCAL_MM: tuple[float, float, float] = (40.0, 14.0, -50.0)
#: Vena cava: direction (deg from left-lateral toward anterior, 180 = right lateral) and
#: wall-to-body gap: > 5.4 mm at L3 (BMC MSD 2020 [V]); in the liver at T10-T12 [U].
IVC_ANGLE_DEG: float = 112.0
IVC_GAP_MM: dict[str, float] = {"T10": 12.0, "T12": 10.0, "L1": 6.0, "L3": 5.5, "L5": 5.0}
#: IVC cross-section, transverse x AP, mm [U: typical adult ~2 cm, flattened].
IVC_AXES_MM: tuple[float, float] = (24.0, 18.0)
#: IVC extent: from T10 (brief: below the heart out of scope) to the iliac confluence at L5 [U].
IVC_LEVELS: tuple[str, str] = ("T10", "L5")
#: Body outline (outer skin) width x AP at 20 mm fat, mm [U: brief; typical adult].
THORAX_AXES_MM: tuple[float, float] = (320.0, 230.0)
ABDOMEN_AXES_MM: tuple[float, float] = (330.0, 250.0)
#: Female in-plane scale (morphometry.md §10 rule, applied to the trunk [U]).
FEMALE_SCALE: float = 0.92
#: Skin thickness, mm [U].
SKIN_MM: float = 2.0
#: Tissue depth beyond the spinous tips excluding the fat, mm [U: brief; gives skin-to-canal
#: ~7-9 cm at 20-30 mm fat, matching 0.077 x BMI + 0.88 in (AJNR 2016 [V] abs,
#: instruments.md §5e) at BMI 25-30].
POSTERIOR_COVER_MM: float = 20.0
#: Body-outline extension beyond the modelled levels, mm (brief).
OUTLINE_EXTENSION_MM: float = 30.0
#: Body wall muscle thickness, mm [U: intercostals/ribs or abdominal wall ~1 cm].
WALL_MUSCLE_MM: float = 12.0
#: Midline posterior gap in the wall muscle (supraspinous ligament/fascia), half-width mm [U].
MIDLINE_GAP_MM: float = 5.0
#: Lateral reach of the posterior intercostal band beyond the TP tips, mm [U].
INTERCOSTAL_LATERAL_MM: float = 30.0
#: Erector spinae (+ multifidus) half-depth, mm [U: ~4-5 cm lumbar, ~3 cm thoracic].
ERECTOR_HALF_DEPTH_MM: dict[str, float] = {"T": 14.0, "L": 22.0, "S": 20.0}
#: Psoas half-width x half-depth by level, mm [U: CSA grows caudally].
PSOAS_HALF_MM: dict[str, tuple[float, float]] = {
    "T12": (5.0, 5.0), "L1": (8.0, 7.0), "L2": (11.0, 10.0), "L3": (15.0, 13.0),
    "L4": (19.0, 16.0), "L5": (22.0, 18.0), "S1": (22.0, 18.0),
}
#: Gap between lung (with pleura) and bone/aorta, mm: pleura + endothoracic fascia 1-2 mm
#: against the body (Im89 [V]); 1.5 mm soft tissue + 1.5 mm pleura [U].
LUNG_GAP_MM: float = 3.0
PLEURA_MM: float = 1.5
#: Posterior lung limit: this far anterior of the transverse-process tips, mm.  With the
#: TP's ~5 mm half-thickness (Jo23 [V]: TP 9-11 mm thick) and the pleura this puts the
#: pleura ~11.5 mm deep to the posterior surface of the TP tip: CT of 42 adults at T4
#: found 12 +- 2.7 mm from the TP tip to the pleura (and 21 +- 4.2 mm 25 mm from the
#: midline) ("Computerized tomographic anatomic relationships of the thoracic
#: paravertebral space", abstract [V]) [U: the phantom's value, inside that range].
LUNG_POSTERIOR_MARGIN_MM: float = 8.0
#: Posteromedial lung limit at the costovertebral junction.  The thoracic paravertebral
#: space is a wedge bounded anterolaterally by the parietal pleura, posteriorly by the
#: superior costotransverse ligament (TP above to the rib neck below) and cranio-caudally
#: by the rib heads and necks; its base is the vertebral body, disc and foramen (BAPA
#: thoracic paravertebral block page, cited in morphometry.md 7.2, and the paravertebral
#: block chapter of Clinical Anesthesia Procedures (MGH) [S]).  So the pleura covers the
#: lateral body anterior of the rib head and runs on along the anterior face of the rib
#: head and neck: no lung lies posteromedial of the rib-neck line (head to tubercle), i.e.
#: between rib head and pedicle, around the pedicle, foramen or canal.  The lung keeps
#: this far anterolateral of the head-tubercle axis, mm [U: rib-neck radius 3.5 mm
#: (vertebrae.RIB_RADII) plus LUNG_GAP_MM], interpolated over z between the levels' ribs
#: (between two necks the costotransverse ligament closes the space at the same depth).
#: Before this limit the lung filled the gaps between pedicle, rib neck and posterior
#: elements (measured on midthoracic_costovertebral: pleura 1.5 mm from the whole length
#: of every pedicle and from the TP), so no transpedicular path could keep 2 mm from it.
LUNG_COSTOVERTEBRAL_OFFSET_MM: float = 6.5
#: Rib neck envelope radius (rib head to TP tip), mm [U].
RIB_NECK_RADIUS_MM: float = 7.0
#: Diaphragm: posterior costophrenic recess at the T12/L1 junction (brief) rising anteriorly
#: with this slope (mm up per mm forward) [U]; right dome higher by [U].
DIAPHRAGM_SLOPE: float = 0.45
RIGHT_DOME_RAISE_MM: float = 10.0
#: Mediastinum (heart and great vessels) ellipse: centre offset (left, anterior of the body
#: front) and semi-axes, mm [U]; oesophagus strip semi-axes [U].
MEDIASTINUM: tuple[float, float, float, float] = (10.0, 75.0, 55.0, 75.0)
OESOPHAGUS: tuple[float, float, float, float] = (0.0, 12.0, 14.0, 14.0)
#: Fluid collection: extension beyond the canal centres of the end levels, mm [U].
FLUID_EXTENSION_MM: float = 10.0
#: Pseudomeningocele neck radius, mm [U].
FLUID_NECK_RADIUS_MM: float = 3.0
#: Envelope of intact posterior elements kept free of fluid: lamina margin, spinous radius [U].
LAMINA_ENVELOPE_MM: float = 3.0
SPINOUS_RADIUS_MM: float = 6.0

PRIORITY = {
    "skin": 0, "fat": 1, "soft_tissue": 2, "muscle": 20, "lung": 30, "pleura": 31,
    "vessel": 50, "disc": 58, "canal": 70, "sac": 71, "cord": 72, "root": 73, "fluid": 85,
}


# ---- small geometry helpers ---------------------------------------------------------------
def _region(level: str) -> str:
    return level[0]


def _level_table(table: Mapping[str, float], level: str) -> float | Array:
    """Linear interpolation of a sparse per-level table over the level index (clamped)."""
    keys = sorted(table, key=LEVELS.index)
    xs = np.array([LEVELS.index(k) for k in keys], float)
    vals = np.array([table[k] for k in keys], float)
    i = float(LEVELS.index(level))
    if vals.ndim == 1:
        return float(np.interp(i, xs, vals))
    return np.array([np.interp(i, xs, vals[:, j]) for j in range(vals.shape[1])])


def _ellipse2d(x: Array, y: Array, a: Array, b: Array) -> Array:
    """Approximate signed distance to an ellipse with semi-axes a, b (exact on the curve)."""
    k0 = np.hypot(x / a, y / b)
    k1 = np.hypot(x / (a * a), y / (b * b))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = k0 * (k0 - 1.0) / k1
    return np.where(k1 > 1e-12, d, -np.minimum(a, b))


def _combine(d_plane: Array, d_cap: Array) -> Array:
    """Intersection of an in-plane distance with a cap distance (exact box-like corner)."""
    outside = np.sqrt(np.maximum(d_plane, 0) ** 2 + np.maximum(d_cap, 0) ** 2)
    return outside + np.minimum(np.maximum(d_plane, d_cap), 0.0)


def _box_distance(p: Array, bounds: Array) -> Array:
    """Distance from points (n, 3) to an axis-aligned box (2, 3) (0 inside)."""
    return np.linalg.norm(np.maximum(np.maximum(bounds[0] - p, p - bounds[1]), 0.0), axis=1)


def _eval_near(s: SDF, p: Array, margin: float = 2.0) -> Array:
    """``s(p)`` inside ``s``'s box (+ margin); the box distance (a lower bound) elsewhere."""
    out = _box_distance(p, s.bounds)
    near = out <= margin
    if near.any():
        out[near] = s(p[near])
    return out


def _cut_all(d: Array, p: Array, cuts: Sequence[SDF], gap: float = 0.0, band: float = 1.0) -> Array:
    """``max(d, -(cut - gap))`` for every cut, evaluating cuts only where ``d <= band``.

    Where ``d > band`` the result keeps ``d`` (an under-estimate of the outside distance, safe
    for the rasteriser's block test); elsewhere far cuts use their box distance.  A shell
    drawn from the result out to ``t`` mm (the pleura) needs ``band >= t``, or it appears
    inside the cuts wherever ``d`` alone lies in ``(band, t)``.
    """
    out = d.copy()
    inside = out <= band
    if not inside.any():
        return out
    q = p[inside]
    sub = out[inside]
    for c in cuts:
        sub = np.maximum(sub, -(_eval_near(c, q) - gap))
    out[inside] = sub
    return out


@dataclass
class _Curve:
    """A resampled smooth curve with per-sample interpolated attributes."""

    pts: Array  # (m, 3)
    s: Array  # (m,) arclength-like parameter (knot chord length; extensions negative/beyond)
    knots_s: Array  # (n,)
    tangents: Array  # (m, 3) unit

    def attr(self, values: Array) -> Array:
        """Interpolate knot values (n,) or (n, k) onto the samples (clamped at the ends)."""
        v = np.asarray(values, float)
        if v.ndim == 1:
            return np.interp(self.s, self.knots_s, v)
        return np.stack([np.interp(self.s, self.knots_s, v[:, j]) for j in range(v.shape[1])], 1)


def _make_curve(points: Array, step: float = SWEEP_STEP_MM, ext_start: float = 0.0,
                ext_end: float = 0.0, start_dir: Array | None = None) -> _Curve:
    """Cubic spline (chord-length parameter) through ordered points, with straight extensions.

    Parameters
    ----------
    points : (n, 3) float
        Ordered knots (cranial to caudal by convention); ``n >= 1``.
    step : float
        Sample spacing, mm.
    ext_start, ext_end : float
        Straight extensions before the first / after the last knot, mm.
    start_dir : (3,) float, optional
        Direction of travel when ``n == 1``.
    """
    from scipy.interpolate import CubicSpline

    P = np.atleast_2d(np.asarray(points, float))
    if len(P) == 1:
        d = np.asarray(start_dir if start_dir is not None else [0, 0, -1.0], float)
        P = np.vstack([P[0] - d * 1e-3, P[0]])
    seg = np.maximum(np.linalg.norm(np.diff(P, axis=0), axis=1), 1e-9)
    ks = np.concatenate([[0.0], np.cumsum(seg)])
    total = ks[-1]
    ss = np.linspace(0.0, total, max(int(np.ceil(total / step)), 1) + 1)
    if len(P) >= 3:
        cs = CubicSpline(ks, P, bc_type="natural", axis=0)
        mid = cs(ss)
        t0, t1 = cs(0.0, 1), cs(total, 1)
    else:
        mid = P[0] + (ss / total)[:, None] * (P[1] - P[0])
        t0 = t1 = (P[1] - P[0]) / total
    t0 = t0 / np.linalg.norm(t0)
    t1 = t1 / np.linalg.norm(t1)
    parts_p, parts_s = [mid], [ss]
    if ext_start > 0:
        e = np.arange(np.ceil(ext_start / step), 0, -1) * (ext_start / np.ceil(ext_start / step))
        parts_p.insert(0, P[0] - e[:, None] * t0)
        parts_s.insert(0, -e)
    if ext_end > 0:
        e = np.arange(1, np.ceil(ext_end / step) + 1) * (ext_end / np.ceil(ext_end / step))
        parts_p.append(mid[-1] + e[:, None] * t1)
        parts_s.append(total + e)
    pts = np.vstack(parts_p)
    s = np.concatenate(parts_s)
    tan = np.gradient(pts, axis=0)
    tan /= np.maximum(np.linalg.norm(tan, axis=1, keepdims=True), 1e-12)
    return _Curve(pts=pts, s=s, knots_s=ks, tangents=tan)


def sweep_sdf(centres: Array, tangents: Array, u_axes: Array, half_a: Array, half_b: Array,
              capped: bool = True) -> SDF:
    """SDF of an elliptic tube swept along a densely sampled curve.

    Parameters
    ----------
    centres : (m, 3) float
        Cross-section centres, spaced well below the smallest radius.
    tangents : (m, 3) float
        Unit tangents.
    u_axes : (m, 3) float
        First in-plane axis (made orthonormal to the tangent); the second is
        ``tangent x u``.
    half_a, half_b : (m,) float
        Semi-axes along u and along ``tangent x u``.
    capped : bool
        Flat caps at both ends (planes normal to the end tangents).

    Returns
    -------
    SDF
        Nearest-sample elliptic distance (first-order, exact on the surface up to the
        sampling step); evaluation is ``O(n log m)`` via a k-d tree.
    """
    from scipy.spatial import cKDTree

    C = np.asarray(centres, float)
    T = np.asarray(tangents, float)
    U = np.asarray(u_axes, float)
    U = U - np.einsum("ij,ij->i", U, T)[:, None] * T
    U /= np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)
    V = np.cross(T, U)
    A = np.maximum(np.broadcast_to(np.asarray(half_a, float), (len(C),)), 1e-3).copy()
    B = np.maximum(np.broadcast_to(np.asarray(half_b, float), (len(C),)), 1e-3).copy()
    tree = cKDTree(C)

    def f(p: Array) -> Array:
        _, k = tree.query(p)
        q = p - C[k]
        d = _ellipse2d(np.einsum("ij,ij->i", q, U[k]), np.einsum("ij,ij->i", q, V[k]), A[k], B[k])
        if capped:
            cap = np.maximum(-(p - C[0]) @ T[0], (p - C[-1]) @ T[-1])
            d = _combine(d, cap)
        return d

    r = np.maximum(A, B)[:, None]
    return SDF(f, np.stack([(C - r).min(0), (C + r).max(0)]))


def _offset_sweep(s: SDF, mm: float) -> SDF:
    """Grow an SDF by ``mm`` with matching bounds."""
    f = s
    return SDF(lambda p: f(p) - mm, s.bounds + np.array([[-mm] * 3, [mm] * 3]))


# ---- the spine as ordered frames ------------------------------------------------------------
class _Spine:
    """Frames ordered cranial to caudal, with helpers for per-level profiles."""

    def __init__(self, spec: CaseSpec, frames: Mapping[str, VertebraFrame]):
        self.spec = spec
        self.levels = [lev for lev in LEVELS if lev in frames]
        if not self.levels:
            raise ValueError("no vertebral frames")
        self.frames = [frames[lev] for lev in self.levels]
        self.by_level = dict(frames)

    def lm(self, key: str) -> Array:
        """Landmark ``key`` of every level, (n, 3)."""
        return np.array([f.landmarks[key] for f in self.frames], float)

    def dim(self, key: str, default: float = 0.0) -> Array:
        return np.array([f.dims.get(key, default) for f in self.frames], float)

    def local(self, f: VertebraFrame, pt: Array) -> Array:
        return f.to_world(np.asarray(pt, float))

    def top_z(self) -> float:
        f = self.frames[0]
        return float(max(f.landmarks["endplate_superior_centre"][2], f.landmarks["spinous_tip"][2],
                         f.centre_lps[2]))

    def bottom_z(self) -> float:
        f = self.frames[-1]
        return float(min(f.landmarks["endplate_inferior_centre"][2], f.landmarks["spinous_tip"][2]))

    def profile(self, z_pts: Array, values: Array) -> Callable[[Array], Array]:
        """Function z -> value interpolated from knots at heights ``z_pts`` (clamped)."""
        z = np.asarray(z_pts, float)
        v = np.asarray(values, float)
        order = np.argsort(z)
        z, v = z[order], v[order]

        def g(zq: Array) -> Array:
            return np.interp(zq, z, v)

        return g


def _body_halfwidths(f: VertebraFrame) -> tuple[float, float, float]:
    d = f.dims
    H = 0.5 * (d.get("body_height_anterior_mm", 25.0) + d.get("body_height_posterior_mm", 25.0))
    return d.get("body_width_mm", 40.0) / 2, d.get("body_depth_mm", 30.0) / 2, H / 2


def _superellipse_radius(hw: float, hd: float, ang: float, e: float = DISC_EXPONENT) -> float:
    """Distance from the centre to a superellipse boundary along direction ``ang`` (rad)."""
    c, s = abs(np.cos(ang)), abs(np.sin(ang))
    return float(1.0 / ((c / hw) ** e + (s / hd) ** e) ** (1.0 / e))


# ---- intact bone (for carving) -----------------------------------------------------------------
def _intact_bone(frames: Mapping[str, VertebraFrame]
                 ) -> tuple[dict[str, dict[str, SDF]], list[SDF], dict[str, list[tuple[Array, Array]]]]:
    """Intact bone parts per level (body, pedicles, posterior), the ribs as SDFs, and the
    rib-neck axes.

    Soft tissues drawn above bone (canal, sac, cord, roots, fluid) are carved with these
    so they never erase bone, and the lungs keep clear of them.  Uses the bone builder's
    intact-anatomy helpers (``intact_parts``, ``rib_sdf``).

    Returns
    -------
    parts : dict level -> dict part -> SDF
    ribs : list of SDF
    necks : dict side -> list of (head, tubercle)
        LPS points (3,) of each intact rib's head and tubercle (the neck axis), cranial to
        caudal; a resected rib head keeps its intact position (the parietal pleura stays
        where it was after an extrapleural resection [U]).
    """
    from planner.phantom import vertebrae as vb

    parts: dict[str, dict[str, SDF]] = {}
    ribs: list[SDF] = []
    necks: dict[str, list[tuple[Array, Array]]] = {"left": [], "right": []}
    fr = dict(frames)
    for lev in fr:
        ip = vb.intact_parts(fr, lev)
        parts[lev] = {k: ip[k] for k in ("body", "pedicle_left", "pedicle_right", "posterior") if k in ip}
        if lev.startswith("T"):
            for side in ("left", "right"):
                if f"_rib_head_{side}" in ip:
                    sdf, info = vb.rib_sdf(fr, lev, side, ip)
                    ribs.append(sdf)
                    necks[side].append((np.asarray(info["head"], float), np.asarray(info["tubercle"], float)))
    return parts, ribs, necks


def _carved(s: SDF, cuts: Sequence[SDF], gap: float) -> SDF:
    """``s`` minus every cut grown by ``gap`` mm (bounds of ``s``)."""
    cuts = [c for c in cuts if np.all(c.bounds[0] - gap - 2 <= s.bounds[1])
            and np.all(c.bounds[1] + gap + 2 >= s.bounds[0])]
    if not cuts:
        return s
    return SDF(lambda p: _cut_all(s(p), p, cuts, gap), s.bounds.copy())


# ---- discs ---------------------------------------------------------------------------------
def _depression_depth(spec: CaseSpec, f: VertebraFrame, endplate: str) -> tuple[float, str]:
    """Extra fill depth (mm) and shape for a fractured / infracted endplate of ``f``."""
    depth, kind = 0.0, "none"
    hw, hd, hh = _body_halfwidths(f)
    for fr in spec.pathology.fractures:
        if fr.level == f.level:
            loss = f.dims.get("height_loss_fraction", 0.0) or fr.height_loss
            Ha = f.dims.get("body_height_anterior_mm", 2 * hh)
            depth = min(loss * Ha, hh) if fr.kind == "wedge" else min(loss * Ha / 2, hh)
            kind = fr.kind
    for inf in spec.pathology.infractions:
        if inf.level == f.level and inf.endplate == endplate:
            depth = max(depth, inf.depth_mm + 0.5)
            kind = kind if kind != "none" else "infraction"
    return depth, kind


def build_discs(spec: CaseSpec, spine: _Spine) -> list[Structure]:
    """One disc ``<upper>_disc`` between each pair of consecutive bodies.

    The disc is a superellipse prism (mean footprint of the two bodies) bounded by the
    upper body's inferior endplate plane and the lower body's superior endplate plane, each
    pushed into the body by a dome-shaped overlap (rim :data:`DISC_OVERLAP_RIM_MM`, centre
    :data:`DISC_OVERLAP_CENTRE_MM`) plus the depth of any fracture or infraction of that
    endplate, so depressions fill with disc wherever the bone is not (bone has priority 60).
    """
    return [_disc(spec, fa, fb) for fa, fb in zip(spine.frames[:-1], spine.frames[1:])]


def _disc(spec: CaseSpec, fa: VertebraFrame, fb: VertebraFrame) -> Structure:
    """The disc between the bodies of ``fa`` (upper) and ``fb`` (lower)."""
    pa = np.asarray(fa.landmarks["endplate_inferior_centre"], float)
    pb = np.asarray(fb.landmarks["endplate_superior_centre"], float)
    c = (pa + pb) / 2
    Uq, _, Vt = np.linalg.svd(fa.R + fb.R)
    R = Uq @ Vt  # nearest rotation to the mean axes
    hwa, hda, _ = _body_halfwidths(fa)
    hwb, hdb, _ = _body_halfwidths(fb)
    hw, hd = (hwa + hwb) / 2, (hda + hdb) / 2
    gap = float((pa - pb) @ R[:, 2])
    dep_a, kind_a = _depression_depth(spec, fa, "inferior")
    dep_b, kind_b = _depression_depth(spec, fb, "superior")

    def plane_h(P: Array, n: Array) -> Callable[[Array, Array], Array]:
        pl = (P - c) @ R
        nl = n @ R
        return lambda u, v: (pl @ nl - u * nl[0] - v * nl[1]) / nl[2]

    h_top = plane_h(pa, fa.w)
    h_bot = plane_h(pb, fb.w)

    def overlap(u: Array, v: Array) -> Array:
        rho2 = np.clip((u / hw) ** 2 + (v / hd) ** 2, 0, 1)
        return DISC_OVERLAP_RIM_MM + (DISC_OVERLAP_CENTRE_MM - DISC_OVERLAP_RIM_MM) * (1 - rho2)

    def fill(u: Array, v: Array, depth: float, kind: str) -> Array:
        if depth <= 0:
            return np.zeros_like(u)
        if kind == "wedge":  # most depressed anteriorly (v < 0), none at the posterior wall
            return depth * np.clip((hd - v) / (2 * hd), 0, 1)
        if kind == "crush":
            return np.full_like(u, depth)
        return depth * np.clip(1 - (u / hw) ** 2 - (v / hd) ** 2, 0, 1) ** 0.5

    cu = np.array([-hw, hw, -hw, hw, 0.0])
    cv = np.array([-hd, -hd, hd, hd, 0.0])
    extent = max(np.abs(h_top(cu, cv)).max() + DISC_OVERLAP_CENTRE_MM + dep_a,
                 np.abs(h_bot(cu, cv)).max() + DISC_OVERLAP_CENTRE_MM + dep_b) + 0.5

    def top(u: Array, v: Array) -> Array:
        return extent - (h_top(u, v) + overlap(u, v) + fill(u, v, dep_a, kind_a))

    def bottom(u: Array, v: Array) -> Array:
        return h_bot(u, v) - overlap(u, v) - fill(u, v, dep_b, kind_b) + extent

    s = superellipse_prism(c, hw, hd, extent, R=R, exponent=DISC_EXPONENT, top=top, bottom=bottom)
    return Structure(
        name=f"{fa.level}_disc", tissue="disc", sdf=s, priority=PRIORITY["disc"],
        meta={"kind": "disc", "level": fa.level, "level_below": fb.level,
              "height_centre_mm": round(gap, 3),
              "height_spec_mm": round(float(fa.dims.get("disc_height_below_mm", gap)), 3)},
    )


# ---- canal, sac, cord, roots ------------------------------------------------------------------
@dataclass
class _Neural:
    curve: _Curve
    U: Array
    canal_a: Array
    canal_b: Array
    sac_a: Array
    sac_b: Array
    sac_off: Array  # (m,) shift of the sac centre along the curve's v axis (negative = anterior)
    Vref: Array  # (m, 3) interpolated frame v (posterior) axes, for the sign of v_axes

    def v_axes(self) -> Array:
        """Unit posterior axes (m, 3) normal to the curve."""
        T = self.curve.tangents
        U = self.U - np.einsum("ij,ij->i", self.U, T)[:, None] * T
        U /= np.linalg.norm(U, axis=1, keepdims=True)
        V = np.cross(T, U)
        return V * np.sign(np.einsum("ij,ij->i", V, self.Vref))[:, None]


def build_neural(spec: CaseSpec, spine: _Spine, bone: Sequence[SDF] = ()) -> tuple[list[Structure], _Neural]:
    """Spinal canal, thecal sac, spinal cord (with conus) and exiting nerve roots.

    All are carved :data:`BONE_CLEARANCE_MM` clear of the intact ``bone`` SDFs (they are
    drawn above bone).
    """
    cc = spine.lm("canal_centre")
    ext_end = CANAL_EXTENSION_MM
    curve = _make_curve(cc, ext_start=CANAL_EXTENSION_MM, ext_end=ext_end,
                        start_dir=spine.frames[0].w * -1)
    U = curve.attr(np.array([f.u for f in spine.frames]))
    canal_a = curve.attr(spine.dim("canal_width_mm", 20.0) / 2 - CANAL_MARGIN_MM)
    canal_b = curve.attr(spine.dim("canal_depth_mm", 16.0) / 2 - CANAL_MARGIN_MM)
    ratio = SAC_RATIO.get(spec.sex, SAC_RATIO["male"])
    sac_a, sac_b = ratio * canal_a, ratio * canal_b
    free = canal_b - sac_b
    sac_off = -(SAC_POSTERIOR_SPACE_FRACTION - 0.5) * free  # more fat behind the sac
    # the sac ends at S2 [U]: taper it below S1 when S1 is modelled
    if "S1" in spine.levels:
        s_end = curve.knots_s[spine.levels.index("S1")] + 10.0
        taper = np.clip((s_end - curve.s) / 15.0, 0.05, 1.0)
        sac_a, sac_b = sac_a * taper, sac_b * taper
        keep_sac = curve.s <= s_end
    else:
        keep_sac = np.ones(len(curve.s), bool)
    Vref = curve.attr(np.array([f.v for f in spine.frames]))
    neural = _Neural(curve, U, canal_a, canal_b, sac_a, sac_b, sac_off, Vref)
    V = neural.v_axes()
    T = curve.tangents
    out = [Structure(
        name="spinal_canal", tissue="epidural_fat",
        sdf=_carved(sweep_sdf(curve.pts, T, U, canal_a, canal_b), bone, BONE_CLEARANCE_MM),
        priority=PRIORITY["canal"],
        meta={"kind": "canal"},
    )]
    sac_c = curve.pts + sac_off[:, None] * V
    k = keep_sac
    out.append(Structure(
        name="thecal_sac", tissue="csf",
        sdf=_carved(sweep_sdf(sac_c[k], T[k], U[k], sac_a[k], sac_b[k]), bone, BONE_CLEARANCE_MM),
        priority=PRIORITY["sac"],
        meta={"kind": "thecal_sac", "sac_to_canal_ratio": ratio},
    ))
    cord = _build_cord(spine, neural, sac_c)
    if cord is not None:
        cord.sdf = _carved(cord.sdf, bone, BONE_CLEARANCE_MM)
        out.append(cord)
    for root in _build_roots(spine, neural, sac_c):
        root.sdf = _carved(root.sdf, bone, BONE_CLEARANCE_MM)
        out.append(root)
    return out, neural


def _conus_s(spine: _Spine, curve: _Curve) -> float | None:
    """Curve parameter of the conus tip (L1-L2 disc, [U] usual adult level); None = above."""
    lv = spine.levels
    first = LEVELS.index(lv[0])
    if first > LEVELS.index("L2"):
        return None  # whole span below the conus: cauda equina only
    if "L1" in lv and "L2" in lv:
        i = lv.index("L1")
        return float((curve.knots_s[i] + curve.knots_s[i + 1]) / 2)
    if "L1" in lv:  # L1 is the last level
        i = lv.index("L1")
        return float(curve.knots_s[i] + 15.0)
    if first == LEVELS.index("L2"):
        return float(curve.knots_s[0] - 15.0)
    return float(curve.s[-1]) + 1.0  # span ends above L1: the cord runs through


def _build_cord(spine: _Spine, nr: _Neural, sac_c: Array) -> Structure | None:
    curve = nr.curve
    s_tip = _conus_s(spine, curve)
    if s_tip is None or s_tip <= curve.s[0] + 2:
        return None
    lv_idx = np.array([LEVELS.index(lev) for lev in spine.levels], float)
    lev_at = np.interp(curve.s, curve.knots_s, lv_idx)  # fractional level index per sample
    tab = {k: CORD_DIAMETERS_MM[k] for k in CORD_DIAMETERS_MM}
    keys = sorted(tab, key=LEVELS.index)
    xs = np.array([LEVELS.index(k) for k in keys], float)
    ca = np.interp(lev_at, xs, [tab[k][0] for k in keys]) / 2
    cb = np.interp(lev_at, xs, [tab[k][1] for k in keys]) / 2
    dk = sorted(DORSAL_CSF_MM, key=LEVELS.index)
    dorsal = np.interp(lev_at, [LEVELS.index(k) for k in dk], [DORSAL_CSF_MM[k] for k in dk])
    taper = np.clip((s_tip - curve.s) / CONUS_TAPER_MM, 0.0, 1.0) ** 0.7
    ca = np.maximum(ca * taper, 0.3)
    cb = np.maximum(cb * taper, 0.3)
    ca = np.minimum(ca, nr.sac_a - 0.5)
    cb = np.minimum(cb, nr.sac_b - 0.5)
    # cord centre: dorsal CSF behind it, at least 0.5 mm of CSF in front
    off = np.clip(nr.sac_b - dorsal - cb, -(nr.sac_b - cb - 0.5), nr.sac_b - cb - 0.5)
    keep = curve.s <= s_tip
    if keep.sum() < 2:
        return None
    V = nr.v_axes()
    C = sac_c + off[:, None] * V
    return Structure(
        name="spinal_cord", tissue="spinal_cord",
        sdf=sweep_sdf(C[keep], curve.tangents[keep], nr.U[keep], ca[keep], cb[keep]),
        priority=PRIORITY["cord"],
        meta={"kind": "spinal_cord", "conus_tip_lps_mm": [round(float(x), 3) for x in C[keep][-1]]},
    )


def _build_roots(spine: _Spine, nr: _Neural, sac_c: Array) -> list[Structure]:
    """Exiting roots: from the sac's lateral edge through the foramen, then laterally,
    anteriorly and inferiorly for :data:`ROOT_LENGTH_MM`."""
    out = []
    V = nr.v_axes()
    for f in spine.frames:
        if f.level == "S1":
            continue  # sacral roots leave through the sacral foramina (not modelled)
        reg = _region(f.level)
        r = ROOT_RADIUS_MM[reg]
        wl, wa, wi = ROOT_DIRECTION[reg]
        for side, sg in (("left", 1.0), ("right", -1.0)):
            key = f"foramen_{side}"
            if key not in f.landmarks:
                continue
            fo = np.asarray(f.landmarks[key], float)
            k = int(np.argmin(np.linalg.norm(nr.curve.pts - fo, axis=1)))
            start = sac_c[k] + nr.U[k] * sg * max(nr.sac_a[k] - r, 0.5) + V[k] * 0.0
            d = sg * wl * f.u - wa * f.v - wi * f.w
            d /= np.linalg.norm(d)
            end = fo + d * ROOT_LENGTH_MM
            pts = np.vstack([start, fo, end])
            out.append(Structure(
                name=f"{f.level}_nerve_root_{side}", tissue="nerve", sdf=tube(pts, r),
                priority=PRIORITY["root"],
                meta={"kind": "nerve_root", "level": f.level, "side": side,
                      "radius_mm": r, "foramen_lps_mm": [round(float(x), 3) for x in fo]},
            ))
    return out


# ---- vessels ---------------------------------------------------------------------------------
def _around_body(f: VertebraFrame, angle_deg: float, gap: float, radius: float) -> Array:
    """Centre of a vessel of ``radius`` whose wall is ``gap`` mm from the body of ``f``,
    in direction ``angle_deg`` from left-lateral toward anterior (LPS)."""
    hw, hd, _ = _body_halfwidths(f)
    a = np.deg2rad(angle_deg)
    rho = _superellipse_radius(hw, hd, a) + gap + radius
    return f.to_world(np.array([rho * np.cos(a), -rho * np.sin(a), 0.0]))


def build_vessels(spec: CaseSpec, spine: _Spine, rng: np.random.Generator) -> tuple[list[Structure], list[SDF]]:
    """Aorta (+ iliac arteries below the bifurcation) and vena cava.

    Returns the structures and the vessel SDFs the lungs must keep clear of.
    """
    jit = rng.standard_normal(4) * spec.variation
    d_angle = 5.0 * jit[0]  # [U: Se96 aorto-vertebral angle SD 6.9 deg]
    d_scale = 1.0 + 0.05 * jit[1]  # [U: ~5 % diameter spread]
    out: list[Structure] = []
    clear: list[SDF] = []
    lv = spine.levels
    i_top = LEVELS.index("T4")
    i_bif = LEVELS.index(AORTA_BIFURCATION_LEVEL)
    aorta_levels = [lev for lev in lv if i_top <= LEVELS.index(lev) <= i_bif]
    ext_top = OUTLINE_EXTENSION_MM if LEVELS.index(lv[0]) > i_top else 10.0
    if aorta_levels:
        pts, radii = [], []
        for lev in aorta_levels:
            f = spine.by_level[lev]
            r = _level_table(AORTA_DIAMETER_MM, lev) / 2 * d_scale
            ang = _level_table(AORTA_ANGLE_DEG, lev) + d_angle
            pts.append(_around_body(f, ang, _level_table(AORTA_GAP_MM, lev), r))
            radii.append(r)
        pts, radii = np.array(pts), np.array(radii)
        bif_here = AORTA_BIFURCATION_LEVEL in lv
        ext_end = 0.0 if bif_here else OUTLINE_EXTENSION_MM
        if LEVELS.index(lv[-1]) < i_bif:
            ext_end = OUTLINE_EXTENSION_MM
        c = _make_curve(pts, ext_start=ext_top, ext_end=ext_end, start_dir=-spine.frames[0].w)
        rr = c.attr(radii)
        U = c.attr(np.array([spine.by_level[lev].u for lev in aorta_levels]))
        s = sweep_sdf(c.pts, c.tangents, U, rr, rr)
        out.append(Structure(name="aorta", tissue="blood", sdf=s, priority=PRIORITY["vessel"],
                             meta={"kind": "artery", "levels": aorta_levels,
                                   "diameter_mm": [round(2 * float(x), 2) for x in radii]}))
        clear.append(s)
        if bif_here:
            f = spine.by_level[AORTA_BIFURCATION_LEVEL]
            bif = c.pts[-1]
            hw, hd, _ = _body_halfwidths(f)
            ri = ILIAC_DIAMETER_MM / 2 * d_scale
            for side, sg in (("left", 1.0), ("right", -1.0)):
                lu, lv_, lw = ILIAC_END_LOCAL_MM
                end = f.to_world(np.array([sg * lu, -(hd + lv_), lw]))
                mid = 0.5 * (bif + end) + (-f.v) * 3.0
                ic = _make_curve(np.vstack([bif, mid, end]), ext_end=5.0)
                si = sweep_sdf(ic.pts, ic.tangents, np.tile(f.u, (len(ic.pts), 1)),
                               np.full(len(ic.pts), ri), np.full(len(ic.pts), ri))
                out.append(Structure(name=f"iliac_artery_{side}", tissue="blood", sdf=si,
                                     priority=PRIORITY["vessel"], meta={"kind": "artery", "side": side}))
    # vena cava
    a, b = (LEVELS.index(x) for x in IVC_LEVELS)
    ivc_levels = [lev for lev in lv if a <= LEVELS.index(lev) <= b]
    if ivc_levels:
        hA, hB = IVC_AXES_MM[0] / 2 * d_scale, IVC_AXES_MM[1] / 2 * d_scale
        pts = []
        for lev in ivc_levels:
            f = spine.by_level[lev]
            ang = IVC_ANGLE_DEG - d_angle
            pts.append(_around_body(f, ang, _level_table(IVC_GAP_MM, lev), hB))
        pts = np.array(pts)
        e0 = OUTLINE_EXTENSION_MM if LEVELS.index(lv[0]) > a else 0.0
        e1 = OUTLINE_EXTENSION_MM if LEVELS.index(lv[-1]) < b else 0.0
        c = _make_curve(pts, ext_start=e0, ext_end=e1, start_dir=-spine.frames[0].w)
        U = c.attr(np.array([spine.by_level[lev].u for lev in ivc_levels]))
        s = sweep_sdf(c.pts, c.tangents, U, np.full(len(c.pts), hA), np.full(len(c.pts), hB))
        out.append(Structure(name="vena_cava", tissue="blood", sdf=s, priority=PRIORITY["vessel"],
                             meta={"kind": "vein", "levels": ivc_levels}))
        clear.append(s)
    return out, clear


# ---- body outline -----------------------------------------------------------------------------
@dataclass
class _Outline:
    """Axial-slice body outline: d(p) of the outer skin surface; interior = d + SKIN + fat."""

    x0: Callable[[Array], Array]
    yc: Callable[[Array], Array]
    a: Callable[[Array], Array]
    b: Callable[[Array], Array]
    z_lo: float
    z_hi: float
    fat: float

    def d_skin(self, p: Array) -> Array:
        z = p[:, 2]
        d = _ellipse2d(p[:, 0] - self.x0(z), p[:, 1] - self.yc(z), self.a(z), self.b(z))
        cap = np.maximum(self.z_lo - z, z - self.z_hi)
        return _combine(d, cap)

    def d_interior(self, p: Array) -> Array:
        return self.d_skin(p) + SKIN_MM + self.fat

    def bounds(self, shrink: float = 0.0) -> Array:
        zs = np.linspace(self.z_lo, self.z_hi, 64)
        x0, yc, a, b = self.x0(zs), self.yc(zs), self.a(zs) - shrink, self.b(zs) - shrink
        lo = np.array([(x0 - a).min(), (yc - b).min(), self.z_lo])
        hi = np.array([(x0 + a).max(), (yc + b).max(), self.z_hi])
        return np.stack([lo, hi])


def build_outline(spec: CaseSpec, spine: _Spine) -> tuple[list[Structure], _Outline]:
    """Skin, subcutaneous fat and the body interior as elliptic axial sections."""
    fat = float(spec.body_fat_mm)
    scale = FEMALE_SCALE if spec.sex == "female" else 1.0
    zc = np.array([f.centre_lps[2] for f in spine.frames])
    thor = np.array([1.0 if lev.startswith("T") and LEVELS.index(lev) <= LEVELS.index("T10") else
                     (0.5 if lev in ("T11", "T12") else 0.0) for lev in spine.levels])
    a = scale * (thor * THORAX_AXES_MM[0] + (1 - thor) * ABDOMEN_AXES_MM[0]) / 2 + (fat - 20.0)
    b = scale * (thor * THORAX_AXES_MM[1] + (1 - thor) * ABDOMEN_AXES_MM[1]) / 2 + (fat - 20.0)
    tips = spine.lm("spinous_tip")
    y_post = tips[:, 1] + POSTERIOR_COVER_MM + fat
    if len(tips) >= 3:  # smooth the back over the spinous tips (low-order fit) [U]
        deg = min(3, len(tips) - 2)
        y_post = np.polyval(np.polyfit(tips[:, 2], y_post, deg), tips[:, 2])
    fa = spine.profile(zc, a)
    fb = spine.profile(zc, b)
    fyp = spine.profile(tips[:, 2], y_post)
    fx = spine.profile(zc, np.array([f.centre_lps[0] for f in spine.frames]))

    def yc(z: Array) -> Array:
        return fyp(z) - fb(z)

    ol = _Outline(x0=fx, yc=yc, a=fa, b=fb, z_lo=spine.bottom_z() - OUTLINE_EXTENSION_MM,
                  z_hi=spine.top_z() + OUTLINE_EXTENSION_MM, fat=fat)
    bnd = ol.bounds()
    out = [
        Structure(name="skin", tissue="skin", sdf=SDF(ol.d_skin, bnd), priority=PRIORITY["skin"],
                  mesh=False, meta={"kind": "skin", "thickness_mm": SKIN_MM}),
        Structure(name="fat", tissue="fat", sdf=SDF(lambda p: ol.d_skin(p) + SKIN_MM, bnd),
                  priority=PRIORITY["fat"], mesh=False, meta={"kind": "fat", "thickness_mm": fat}),
        Structure(name="soft_tissue", tissue="soft_tissue", sdf=SDF(ol.d_interior, bnd),
                  priority=PRIORITY["soft_tissue"], mesh=False, meta={"kind": "soft_tissue"}),
    ]
    return out, ol


# ---- muscles ----------------------------------------------------------------------------------
def build_muscles(spec: CaseSpec, spine: _Spine, ol: _Outline) -> Structure:
    """Erector spinae, psoas (lumbar), thoracic posterior intercostal band and the body wall."""
    parts: list[SDF] = []
    for sg in (1.0, -1.0):
        side = "left" if sg > 0 else "right"
        pts, ha, hb, us = [], [], [], []
        for f in spine.frames:
            tp = f.to_local(f.landmarks[f"tp_tip_{side}"])
            lam = f.to_local(f.landmarks["lamina_centre"])
            hd = ERECTOR_HALF_DEPTH_MM[_region(f.level)]
            w = max(abs(tp[0]), 15.0)
            pts.append(f.to_world(np.array([sg * 0.55 * w, lam[1] + hd - 6.0, lam[2]])))
            ha.append(0.55 * w + 4.0)
            hb.append(hd)
            us.append(f.u)
        c = _make_curve(np.array(pts), ext_start=OUTLINE_EXTENSION_MM, ext_end=OUTLINE_EXTENSION_MM,
                        start_dir=-spine.frames[0].w)
        parts.append(sweep_sdf(c.pts, c.tangents, c.attr(np.array(us)), c.attr(np.array(ha)),
                               c.attr(np.array(hb))))
        lumbar = [f for f in spine.frames if f.level in PSOAS_HALF_MM]
        if len(lumbar) >= 1:
            pts, ha, hb, us = [], [], [], []
            for f in lumbar:
                hw, hd, _ = _body_halfwidths(f)
                pa, pb = PSOAS_HALF_MM[f.level]
                pts.append(f.to_world(np.array([sg * (hw + pa - 3.0), 2.0, 0.0])))
                ha.append(pa)
                hb.append(pb)
                us.append(f.u)
            e1 = OUTLINE_EXTENSION_MM if lumbar[-1].level != "S1" else 10.0
            c = _make_curve(np.array(pts), ext_start=10.0, ext_end=e1, start_dir=-lumbar[0].w)
            parts.append(sweep_sdf(c.pts, c.tangents, c.attr(np.array(us)), c.attr(np.array(ha)),
                                   c.attr(np.array(hb))))
    deep = union(*parts)
    deep_bounds = deep.bounds.copy()
    zc = np.array([f.centre_lps[2] for f in spine.frames])
    thor = np.array([1.0 if lev.startswith("T") else 0.0 for lev in spine.levels])
    f_thor = spine.profile(zc, thor)
    y_tp = spine.profile(spine.lm("tp_tip_left")[:, 2], 0.5 * (spine.lm("tp_tip_left")[:, 1]
                                                               + spine.lm("tp_tip_right")[:, 1]))
    hw_body = spine.profile(zc, np.array([_body_halfwidths(f)[0] for f in spine.frames]))
    x_tp = spine.profile(zc, 0.5 * np.abs(spine.lm("tp_tip_left")[:, 0] - spine.lm("tp_tip_right")[:, 0]))
    y_spine = spine.profile(zc, np.array([f.centre_lps[1] for f in spine.frames]))

    def f(p: Array) -> Array:
        z = p[:, 2]
        d_int = ol.d_interior(p)
        wall = np.maximum(d_int, -(d_int + WALL_MUSCLE_MM))
        dx = np.abs(p[:, 0] - ol.x0(z))
        midline = np.maximum(MIDLINE_GAP_MM - dx, y_spine(z) - p[:, 1])  # < 0 inside the gap
        wall = np.maximum(wall, -midline)
        # thoracic posterior intercostal band at rib-neck depth, lateral to the body
        band = np.maximum(np.abs(p[:, 1] - y_tp(z)) - 8.0, hw_body(z) + 2.0 - dx)
        band = np.maximum(band, dx - (x_tp(z) + INTERCOSTAL_LATERAL_MM))
        band = np.maximum(np.maximum(band, d_int), np.where(f_thor(z) > 0.5, -1.0, 1.0) * 1e3)
        out = np.minimum(wall, band)
        dd = _eval_near(deep, p)
        out = np.minimum(out, np.maximum(dd, d_int))
        return out

    bnd = ol.bounds()
    log.debug("deep muscle bounds %s", deep_bounds.tolist())
    return Structure(name="muscle", tissue="muscle", sdf=SDF(f, bnd), priority=PRIORITY["muscle"],
                     mesh=False, meta={"kind": "muscle",
                                       "parts": ["erector_spinae", "psoas", "intercostal", "body_wall"]})


# ---- lungs -------------------------------------------------------------------------------------
def _recess_z(spine: _Spine) -> float | None:
    """z of the posterior costophrenic recess (T12/L1 junction); -inf when below the span,
    None when the whole span lies below it."""
    lv = spine.levels
    if LEVELS.index(lv[0]) >= LEVELS.index("L1"):
        return None
    if "T12" in lv and "L1" in lv:
        return float(0.5 * (spine.by_level["T12"].landmarks["endplate_inferior_centre"][2]
                            + spine.by_level["L1"].landmarks["endplate_superior_centre"][2]))
    if "T12" in lv:
        return float(spine.by_level["T12"].landmarks["endplate_inferior_centre"][2]) - 4.0
    return -np.inf


def _neck_limit(necks: Sequence[tuple[Array, Array]], sg: float) -> Callable[[Array], Array] | None:
    """Lower bound of the lung's signed distance from the posteromedial limit of one side.

    In the axial slice of each point, the rib-neck line runs from the head to the tubercle,
    both interpolated over z from the levels' ribs (clamped beyond the end ribs).  The
    excluded region lies posteromedial of that line, offset anterolaterally by
    :data:`LUNG_COSTOVERTEBRAL_OFFSET_MM`, and posterior of the rib head; the returned
    value is positive inside it (a conservative distance, as the other cuts).
    """
    if not necks:
        return None
    H = np.array([h for h, _ in necks], float)
    T = np.array([t for _, t in necks], float)
    oh, ot = np.argsort(H[:, 2]), np.argsort(T[:, 2])

    def g(p: Array) -> Array:
        z = p[:, 2]
        hx, hy = np.interp(z, H[oh, 2], H[oh, 0]), np.interp(z, H[oh, 2], H[oh, 1])
        tx, ty = np.interp(z, T[ot, 2], T[ot, 0]), np.interp(z, T[ot, 2], T[ot, 1])
        ax, ay = tx - hx, ty - hy
        n = np.maximum(np.hypot(ax, ay), 1e-9)
        # unit normal pointing posteromedially (LPS: +x left, +y posterior)
        nx, ny = -sg * ay / n, sg * ax / n
        s = (p[:, 0] - hx) * nx + (p[:, 1] - hy) * ny + LUNG_COSTOVERTEBRAL_OFFSET_MM
        return np.minimum(s, p[:, 1] - hy)

    return g


def build_lungs(spec: CaseSpec, spine: _Spine, ol: _Outline, vessels: Sequence[SDF],
                bone: Sequence[SDF] = (), necks: Mapping[str, Sequence[tuple[Array, Array]]] | None = None
                ) -> list[Structure]:
    """Left and right lungs and the parietal pleura (axial-slice hemithorax minus envelopes).

    ``necks`` (side -> list of rib (head, tubercle) LPS points, from :func:`_intact_bone`)
    adds the posteromedial limit at the costovertebral junction (:func:`_neck_limit`).
    """
    z_rec = _recess_z(spine)
    if z_rec is None:
        return []
    zc = np.array([f.centre_lps[2] for f in spine.frames])
    y_tp = spine.profile(spine.lm("tp_tip_left")[:, 2], 0.5 * (spine.lm("tp_tip_left")[:, 1]
                                                               + spine.lm("tp_tip_right")[:, 1]))
    y_ant = spine.profile(zc, np.array([f.to_world(np.array([0, -_body_halfwidths(f)[1], 0]))[1]
                                        for f in spine.frames]))
    y_post_body = spine.profile(zc, spine.lm("body_posterior_centre")[:, 1])
    env: list[SDF] = []
    for f in spine.frames:
        if not f.level.startswith("T") and f.level != "L1":
            continue
        hw, hd, hh = _body_halfwidths(f)
        disc = f.dims.get("disc_height_below_mm", 5.0)
        env.append(superellipse_prism(f.centre_lps, hw + LUNG_GAP_MM, hd + LUNG_GAP_MM,
                                      hh + disc / 2 + LUNG_GAP_MM, R=f.R, exponent=DISC_EXPONENT))
        for side in ("left", "right"):
            if f"rib_head_{side}" in f.landmarks:
                env.append(capsule(f.landmarks[f"rib_head_{side}"], f.landmarks[f"tp_tip_{side}"],
                                   RIB_NECK_RADIUS_MM + LUNG_GAP_MM))
    env.extend(_offset_sweep(v, LUNG_GAP_MM) for v in vessels)
    env.extend(_offset_sweep(b, LUNG_GAP_MM) for b in bone)
    y_ref = float(np.interp(z_rec, np.sort(zc), y_post_body(np.sort(zc)))) if np.isfinite(z_rec) else 0.0

    def make(sg: float) -> Callable[[Array], Array]:
        raise_mm = RIGHT_DOME_RAISE_MM if sg < 0 else 0.0
        neck = _neck_limit((necks or {}).get("left" if sg > 0 else "right", ()), sg)

        def f(p: Array) -> Array:
            z = p[:, 2]
            x = p[:, 0] - ol.x0(z)
            y = p[:, 1]
            d = ol.d_interior(p) + WALL_MUSCLE_MM
            # thoracic cavity: ellipse from the anterior wall to the rib necks (rounded corners)
            y_back = y_tp(z) - LUNG_POSTERIOR_MARGIN_MM
            y_front = ol.yc(z) - ol.b(z) + SKIN_MM + ol.fat + WALL_MUSCLE_MM
            bc = np.maximum((y_back - y_front) / 2, 1.0)
            ac = ol.a(z) - SKIN_MM - ol.fat - WALL_MUSCLE_MM
            d = np.maximum(d, _ellipse2d(x, y - (y_back - bc), ac, bc))
            d = np.maximum(d, 2.0 - sg * x)
            ya = y_ant(z)
            mx, my, ma, mb = MEDIASTINUM
            d = np.maximum(d, -_ellipse2d(x - mx, y - (ya - my), ma, mb))
            ox, oy, oa, ob = OESOPHAGUS
            d = np.maximum(d, -_ellipse2d(x - ox, y - (ya - oy), oa, ob))
            if np.isfinite(z_rec):
                floor = z_rec + raise_mm + DIAPHRAGM_SLOPE * np.maximum(y_ref - y, 0.0)
                d = np.maximum(d, (floor - z) / np.sqrt(1 + DIAPHRAGM_SLOPE ** 2))
            # cuts evaluated over the whole pleura shell (band), else a pleura sheet
            # appears inside bone wherever the cavity bound alone is 1-1.5 mm outside
            d = _cut_all(d, p, env, band=PLEURA_MM + 0.5)
            return d if neck is None else np.maximum(d, neck(p))

        return f

    obnd = ol.bounds(shrink=SKIN_MM + ol.fat + WALL_MUSCLE_MM)
    z_lo = obnd[0, 2] if not np.isfinite(z_rec) else max(obnd[0, 2], z_rec)
    out = []
    lungs = {}
    for side, sg in (("left", 1.0), ("right", -1.0)):
        fn = make(sg)
        x0 = float(ol.x0(np.array([np.mean(zc)]))[0])
        lo = np.array([x0 if sg > 0 else obnd[0, 0], obnd[0, 1], z_lo])
        hi = np.array([obnd[1, 0] if sg > 0 else x0, float(y_tp(zc).max()), obnd[1, 2]])
        lungs[side] = SDF(fn, np.stack([lo, hi]))
        out.append(Structure(name=f"lung_{side}", tissue="lung", sdf=lungs[side],
                             priority=PRIORITY["lung"], meta={"kind": "lung", "side": side}))

    def pleura(p: Array) -> Array:
        dl = np.minimum(lungs["left"](p), lungs["right"](p))
        return np.maximum(dl - PLEURA_MM, -dl)

    pb = np.stack([np.minimum(lungs["left"].bounds[0], lungs["right"].bounds[0]) - PLEURA_MM,
                   np.maximum(lungs["left"].bounds[1], lungs["right"].bounds[1]) + PLEURA_MM])
    out.append(Structure(name="pleura", tissue="pleura", sdf=SDF(pleura, pb), priority=PRIORITY["pleura"],
                         meta={"kind": "pleura", "thickness_mm": PLEURA_MM, "gap_to_bone_mm": LUNG_GAP_MM}))
    return out


# ---- fluid collections -------------------------------------------------------------------------
def _sdf_volume_ml(s: SDF, step: float = 1.0) -> float:
    lo, hi = s.bounds
    axes = [np.arange(lo[i] + step / 2, hi[i], step) for i in range(3)]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return float((s(g) < 0).sum() * step ** 3 / 1000.0)


def build_fluid(spec: CaseSpec, spine: _Spine, nr: _Neural,
                bone_parts: Mapping[str, Mapping[str, SDF]] | None = None) -> tuple[list[Structure], list[dict]]:
    """Posterior fluid collections (one ``fluid_collection`` structure) and their findings."""
    if not spec.pathology.fluid:
        return [], []
    canal = sweep_sdf(nr.curve.pts, nr.curve.tangents, nr.U, nr.canal_a + 0.5, nr.canal_b + 0.5)
    V = nr.v_axes()
    shapes: list[SDF] = []
    findings: list[dict] = []
    lam_set = set(spec.surgery.laminectomy)
    for fs in spec.pathology.fluid:
        shapes_i, info = _one_collection(fs, spine, nr, canal, V, lam_set, bone_parts or {})
        s = union(*shapes_i)
        shapes.append(s)
        info["volume_ml"] = round(_sdf_volume_ml(s), 2)
        findings.append(info)
    sdf = union(*shapes)
    return [Structure(name="fluid_collection", tissue="fluid", sdf=sdf, priority=PRIORITY["fluid"],
                      meta={"kind": "fluid_collection",
                            "collections": [dict(x) for x in findings]})], findings


def _one_collection(fs: FluidSpec, spine: _Spine, nr: _Neural, canal: SDF, V: Array,
                    lam_set: set[str], bone_parts: Mapping[str, Mapping[str, SDF]]
                    ) -> tuple[list[SDF], dict]:
    ia, ib = LEVELS.index(fs.level_from), LEVELS.index(fs.level_to)
    ia, ib = min(ia, ib), max(ia, ib)
    span = [f for f in spine.frames if ia <= LEVELS.index(f.level) <= ib]
    fa, fb = span[0], span[-1]
    # dura (posterior canal edge) at the ends of the span
    ka = int(np.argmin(np.linalg.norm(nr.curve.pts - fa.landmarks["canal_centre"], axis=1)))
    kb = int(np.argmin(np.linalg.norm(nr.curve.pts - fb.landmarks["canal_centre"], axis=1)))
    pa = nr.curve.pts[ka] + V[ka] * nr.canal_b[ka]
    pb = nr.curve.pts[kb] + V[kb] * nr.canal_b[kb]
    w_ax = pa - pb
    half_len = 0.5 * float(np.linalg.norm(w_ax)) + FLUID_EXTENSION_MM
    w_ax = w_ax / max(np.linalg.norm(w_ax), 1e-9)
    u_ax = np.mean([f.u for f in span], axis=0)
    u_ax -= (u_ax @ w_ax) * w_ax
    u_ax /= np.linalg.norm(u_ax)
    v_ax = np.cross(w_ax, u_ax)
    centre = 0.5 * (pa + pb)  # half-ellipsoid on the dura: depth_mm measured from the dura
    R = np.stack([u_ax, v_ax, w_ax], 1)
    lens = ellipsoid(centre, (fs.width_mm / 2, fs.depth_mm, half_len), R=R)
    # keep intact posterior elements (levels without laminectomy) and the canal free of fluid
    cuts: list[SDF] = [canal]
    for f in spine.frames:
        if f.level in lam_set or abs(LEVELS.index(f.level) - 0.5 * (ia + ib)) > (ib - ia) / 2 + 1.5:
            continue
        if f.level in bone_parts:  # exact intact posterior elements and pedicles
            cuts.extend(_offset_sweep(bone_parts[f.level][k], 1.0) for k in
                        ("posterior", "pedicle_left", "pedicle_right") if k in bone_parts[f.level])
            continue
        lam = np.asarray(f.landmarks["lamina_centre"], float)
        cc = np.asarray(f.landmarks["canal_centre"], float)
        el = [np.asarray(f.landmarks[f"pedicle_entry_{s}"], float) for s in ("left", "right")]
        half_u = abs((el[0] - el[1]) @ f.u) / 2 + LAMINA_ENVELOPE_MM
        v0 = (cc - f.centre_lps) @ f.v
        v1 = (lam - f.centre_lps) @ f.v + LAMINA_ENVELOPE_MM
        hh = _body_halfwidths(f)[2] + 2.0
        from planner.phantom.sdf import box

        cen = f.to_world(np.array([0.0, (v0 + v1) / 2, (lam - f.centre_lps) @ f.w]))
        cuts.append(box(cen, (half_u, (v1 - v0) / 2, hh), R=f.R))
        cuts.append(capsule(lam, f.landmarks["spinous_tip"], SPINOUS_RADIUS_MM))

    dura = 0.5 * (pa + pb)

    def lens_cut(p: Array, lens: SDF = lens, cuts: list[SDF] = cuts) -> Array:
        # flat anterior face on the dura line (a lens behind the canal), then the cuts
        d = np.maximum(lens(p), -((p - dura) @ v_ax))
        return _cut_all(d, p, cuts)

    shapes = [SDF(lens_cut, lens.bounds)]
    if fs.kind == "pseudomeningocele":
        k = (ka + kb) // 2
        sac_back = nr.curve.pts[k] + V[k] * (nr.sac_off[k] + nr.sac_b[k] - 1.0)
        shapes.append(capsule(sac_back, centre + v_ax * 2.0, FLUID_NECK_RADIUS_MM))
    info = {"level_from": fs.level_from, "level_to": fs.level_to, "kind": fs.kind,
            "width_mm": fs.width_mm, "depth_mm": fs.depth_mm,
            "centre_lps_mm": [round(float(x), 3) for x in centre],
            "laminectomy_levels": [f.level for f in span if f.level in lam_set]}
    return shapes, info


# ---- entry point -------------------------------------------------------------------------------
def build_soft_tissue(
    spec: CaseSpec, frames: Mapping[str, VertebraFrame], rng: np.random.Generator
) -> tuple[list[Structure], dict[str, list[dict]]]:
    """Every soft-tissue structure of a case, built from the vertebral frames.

    Parameters
    ----------
    spec : CaseSpec
        Uses ``sex``, ``body_fat_mm``, ``variation``, ``surgery.laminectomy`` and
        ``pathology`` (fractures, infractions, fluid).
    frames : dict level -> VertebraFrame
    rng : numpy.random.Generator
        Only a fixed number of draws (vessel jitter), so the result is deterministic.

    Returns
    -------
    structures : list of Structure
        Discs, canal, sac, cord, roots, vessels, lungs, pleura, muscle, skin, fat,
        soft tissue and fluid collections.
    findings : dict
        ``{"fluid_collections": [{"level_from", "level_to", "kind", "volume_ml", ...}]}``.
    """
    spine = _Spine(spec, frames)
    parts, ribs, necks = _intact_bone(frames)
    bone = [sdf for lev in parts for sdf in parts[lev].values()] + ribs
    structures: list[Structure] = []
    structures += build_discs(spec, spine)
    neural, nr = build_neural(spec, spine, bone)
    structures += neural
    vessels, clear = build_vessels(spec, spine, rng)
    structures += vessels
    outline, ol = build_outline(spec, spine)
    structures += outline
    structures.append(build_muscles(spec, spine, ol))
    structures += build_lungs(spec, spine, ol, clear, bone, necks)
    fluid, fl_findings = build_fluid(spec, spine, nr, parts)
    structures += fluid
    log.info("soft tissue: %d structures", len(structures))
    return structures, {"fluid_collections": fl_findings}
