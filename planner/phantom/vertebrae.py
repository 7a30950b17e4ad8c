"""Vertebral anatomy of the parametric spine phantom: frames, bone SDFs, surgery, pathology.

Two public builders:

* :func:`build_frames` resolves each modelled level's dimensions for one patient
  (published mean + jitter, :mod:`planner.phantom.morphometry`), stacks the bodies and
  discs along a sagittal curve and fills every landmark of
  :data:`planner.phantom.model.LANDMARK_KEYS`;
* :func:`build_bone` turns the frames into SDF structures (one ``vertebra_<L>`` group per
  level with parts body / pedicles / posterior elements, ribs, lesions) with the case's
  surgery and pathology applied, and returns the ground-truth findings.

Geometry is defined in each vertebra's local frame (u = left, v = posterior, w = superior,
origin = body centre) and mapped to LPS with the frame.  Numbers that are not morphometry
(shape factors of the model) are marked ``[U]`` with their reason where they are defined.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from planner.labels.registry import LEVELS
from planner.phantom import morphometry as morph
from planner.phantom.model import Structure, VertebraFrame
from planner.phantom.sdf import SDF, box, capsule, halfspace, intersect, sphere, subtract, tube
from planner.phantom.spec import CaseSpec

log = logging.getLogger(__name__)

Array = np.ndarray
SIDES = ("left", "right")
SIGN = {"left": 1.0, "right": -1.0}  # u = patient left

# ---- shape constants of the model (not morphometry) ------------------------------------
#: Superellipse exponent of the body cross-section: lumbar bodies are boxier (kidney), thoracic
#: rounder (heart) [U, chosen from axial CT appearance].
BODY_EXPONENT = {"T": 2.2, "L": 2.6, "S": 2.6}
#: Mid-height narrowing of the lateral/anterior walls ("waist"), fraction of the half width [U].
BODY_WAIST = 0.06
#: Posterior-wall concavity depth, fraction of body depth (kidney shape; lumbar > thoracic) [U].
POSTERIOR_CONCAVITY = {"T": 0.04, "L": 0.08, "S": 0.06}
#: Anterior narrowing of thoracic bodies (heart shape), fraction of half width at the front [U].
ANTERIOR_TAPER = {"T": 0.15, "L": 0.0, "S": 0.0}
#: Normal central end-plate concavity (mm) of both end plates [U: 1-2 mm bowl on sagittal CT].
ENDPLATE_CONCAVITY = {"T": 1.0, "L": 1.5, "S": 1.0}
#: Pedicle isthmus lies this far behind the posterior body wall (mm) [U].
ISTHMUS_BEHIND_WALL = {"T": 4.0, "L": 5.0, "S": 5.0}
#: Gap between the top of the pedicle and the upper end plate, fraction of body height [U].
PEDICLE_TOP_GAP = 0.12
#: Facet joint space (mm) [U: normal CT joint space 1-2 mm].
FACET_GAP = 1.5
#: Facet size (width, height, mm): Panjabi's inferior facets ~10 x 11 mm at T6 and ~15 x 16 mm
#: at L4, as quoted by Patel et al. (Indian J Anat / indmedica 2007, Table 4) [S].
FACET_SIZE = {"T": (10.0, 11.0), "L": (14.0, 15.0), "S": (15.0, 16.0)}
#: Thickness of an articular process behind its facet (mm) [U].
FACET_THICKNESS = {"T": 5.0, "L": 7.0, "S": 7.0}
#: Superior-facet orientation to the sagittal plane (deg), per owner level: thoracic facets
#: face backward, slightly up and lateral (>90), lumbar facets turn from near-sagittal at L1
#: to ~50 deg at L5-S1 [U: textbook pattern, no per-level value in morphometry.md].
FACET_ANGLE = {
    **{f"T{i}": 100.0 for i in range(1, 11)},
    "T11": 90.0, "T12": 80.0, "L1": 30.0, "L2": 33.0, "L3": 38.0, "L4": 45.0, "L5": 50.0, "S1": 55.0,
}
#: Upward tilt of the thoracic superior facets (deg) [U: "facing backward and a little upward"].
FACET_TILT = {"T": 20.0, "L": 0.0, "S": 0.0}
#: Lamina slope: the inferior edge lies posterior to the superior edge (deg from vertical) [U].
LAMINA_SLOPE_DEG = {"T": 25.0, "L": 15.0, "S": 20.0}
#: Transverse-process direction behind the coronal plane (deg) and upward tilt [U].
TP_BACK_DEG = {"T": 30.0, "L": 10.0, "S": 0.0}
#: Fillet radius of the smooth unions between parts (mm) [U].
FILLET_MM = 2.0
#: Rib: head radius, neck radius, shaft radius (mm) and the arc of the modelled shaft [U:
#: adult rib head ~10 mm across, shaft ~9-13 mm tall; circular tubes as a simplification].
RIB_RADII = (5.0, 3.5, 4.5)
RIB_ARC_MM = 80.0
RIB_ARC_RADIUS_MM = 70.0
RIB_SLOPE = 0.35  # descent (mm) per mm of shaft [U: ribs run down and forward]
#: Lumbar lordosis share per segment L1/2 ... L5/S1 [U: about two thirds of lordosis sits at
#: L4-S1, a common finding in standing radiograph studies].
LORDOSIS_WEIGHTS = (0.10, 0.15, 0.20, 0.25, 0.30)
#: Correlation of a patient's deviations across levels: z = 0.6 z_patient + 0.8 z_level [U].
PATIENT_WEIGHT = 0.6


def _region(level: str) -> str:
    return level[0]


def _rot_x(angle: float) -> Array:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _unit(x: Array) -> Array:
    x = np.asarray(x, float)
    return x / np.linalg.norm(x)


# ======================================================================================
# Local primitives
# ======================================================================================
def _ellipsoid_dist(q: Array, r: Array) -> Array:
    """First-order ellipsoid distance of local points ``q`` (n, 3) with radii ``r`` (n, 3)."""
    k0 = np.linalg.norm(q / r, axis=1)
    k1 = np.linalg.norm(q / (r * r), axis=1)
    ok = k1 > 1e-9
    return np.where(ok, k0 * (k0 - 1.0) / np.where(ok, k1, 1.0), -r.min(axis=1))


def elliptic_capsule(
    a: Sequence[float],
    b: Sequence[float],
    e1: Sequence[float],
    r1: Sequence[float] | float,
    r2: Sequence[float] | float,
    s_knots: Sequence[float] | None = None,
    cap: float | None = None,
) -> SDF:
    """Tube of elliptic cross-section from ``a`` to ``b`` with rounded (ellipsoidal) ends.

    Parameters
    ----------
    a, b : (3,) float
        Axis end points, LPS mm.
    e1 : (3,) float
        Direction of the first cross-section radius (made perpendicular to the axis).
    r1, r2 : float or (k,) float
        Radii along ``e1`` and ``axis x e1``; arrays give a profile at ``s_knots`` (0..1).
    s_knots : (k,) float, optional
        Positions of the profile values along the axis (default evenly spaced).
    cap : float, optional
        Axial radius of the end caps (default the smaller cross-section radius there).

    Returns
    -------
    SDF
        Approximate signed distance (exact on the surface up to the ellipse approximation).
    """
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    ax = b - a
    L = float(np.linalg.norm(ax))
    ax = ax / L
    e1 = np.asarray(e1, float) - (np.asarray(e1, float) @ ax) * ax
    e1 = _unit(e1)
    e2 = np.cross(ax, e1)
    r1 = np.atleast_1d(np.asarray(r1, float))
    r2 = np.atleast_1d(np.asarray(r2, float))
    k = max(len(r1), len(r2))
    r1 = np.broadcast_to(r1, (k,)) if len(r1) == 1 else r1
    r2 = np.broadcast_to(r2, (k,)) if len(r2) == 1 else r2
    knots = np.linspace(0, 1, k) if s_knots is None else np.asarray(s_knots, float)

    def f(p: Array) -> Array:
        d = p - a
        t = d @ ax
        tc = np.clip(t, 0.0, L)
        s = tc / L
        ra = np.interp(s, knots, r1)
        rb = np.interp(s, knots, r2)
        rz = np.minimum(ra, rb) if cap is None else np.full_like(ra, cap)
        q = np.stack([d @ e1, d @ e2, t - tc], axis=1)
        return _ellipsoid_dist(q, np.stack([ra, rb, rz], axis=1))

    rmax = float(max(r1.max(), r2.max(), cap or 0.0))
    return SDF(f, np.stack([np.minimum(a, b) - rmax, np.maximum(a, b) + rmax]))


def _in_box(p: Array, lo: Array, hi: Array) -> Array:
    m = (p[:, 0] >= lo[0]) & (p[:, 0] <= hi[0])
    m &= (p[:, 1] >= lo[1]) & (p[:, 1] <= hi[1])
    m &= (p[:, 2] >= lo[2]) & (p[:, 2] <= hi[2])
    return m


def _box_distance(p: Array, bounds: Array) -> Array:
    return np.linalg.norm(np.maximum(np.maximum(bounds[0] - p, p - bounds[1]), 0), axis=1)


#: Children of :func:`blend` are evaluated only within this distance (mm) of their box; farther
#: points keep the other children's value (exact sign, distance exact within this band) [U].
BLEND_BAND_MM = 8.0


def blend(sdfs: Sequence[SDF], k: float = FILLET_MM) -> SDF:
    """Smooth union (polynomial smooth minimum, fillet radius ``k`` mm) of several SDFs.

    Each child is evaluated only on the points within ``k`` + :data:`BLEND_BAND_MM` of its
    box.  The sign of the result is exact; the distance is exact up to that band from the
    surface and a lower bound of at least the band beyond it, which is all the rasteriser
    (partial volume, cortical shells) needs.
    """
    sdfs = [s for s in sdfs if s is not None]
    if len(sdfs) == 1:
        return sdfs[0]
    lo = np.min([s.bounds[0] for s in sdfs], 0)
    hi = np.max([s.bounds[1] for s in sdfs], 0)
    margin = k + BLEND_BAND_MM

    def f(p: Array) -> Array:
        out = np.full(len(p), np.inf)
        for s in sdfs:
            idx = np.flatnonzero(_in_box(p, s.bounds[0] - margin, s.bounds[1] + margin))
            if idx.size == 0:
                continue
            d = s(p[idx])
            o = out[idx]
            h = np.clip(0.5 + 0.5 * (d - np.minimum(o, d + k)) / k, 0.0, 1.0)
            sm = d * (1 - h) + np.minimum(o, d + k) * h - k * h * (1 - h)
            out[idx] = np.where(np.isfinite(o), sm, d)
        rest = ~np.isfinite(out)
        if rest.any():
            out[rest] = np.maximum(_box_distance(p[rest], np.stack([lo, hi])), margin)
        return out

    return SDF(f, np.stack([lo, hi]))


def _local_box(frame: VertebraFrame, lo: Sequence[float], hi: Sequence[float], round_mm: float = 0.0) -> SDF:
    """Box given by local (u, v, w) corner ranges, oriented with the frame."""
    lo = np.asarray(lo, float)
    hi = np.asarray(hi, float)
    return box(frame.to_world((lo + hi) / 2), (hi - lo) / 2, frame.R, round_mm)


# ======================================================================================
# Vertebral body
# ======================================================================================
@dataclass
class BodyShape:
    """Resolved body geometry of one level in its local frame (mm)."""

    hw: float
    hd: float
    hh: float
    exponent: float
    concavity_post: float
    taper_ant: float
    waist: float
    top: Callable[[Array, Array], Array]
    bottom: Callable[[Array, Array], Array]

    def rho(self, u: Array, v: Array, w: Array) -> tuple[Array, Array, Array]:
        """Normalised superellipse radius, effective half width and depth at (u, v, w)."""
        e = self.exponent
        wn = np.clip(w / self.hh, -1.0, 1.0)
        waist = 1.0 - self.waist * (1.0 - wn * wn)
        hw = self.hw * waist * (1.0 - self.taper_ant * np.clip(-v / self.hd, 0.0, 1.0) ** 2)
        v_eff = v + self.concavity_post * np.exp(-((u / (0.45 * self.hw)) ** 2)) * np.clip(v / self.hd, 0.0, 1.0)
        hd = np.where(v < 0, self.hd * waist, self.hd)
        rho = (np.abs(u / hw) ** e + np.abs(v_eff / hd) ** e) ** (1.0 / e)
        return rho, hw, hd

    def local_sdf(self, q: Array) -> Array:
        """Signed distance of local points (n, 3)."""
        u, v, w = q[:, 0], q[:, 1], q[:, 2]
        rho, hw, hd = self.rho(u, v, w)
        d_plane = (rho - 1.0) * np.minimum(hw, hd)
        hi = self.hh - self.top(u, v)
        lo = -self.hh + self.bottom(u, v)
        mid = (hi + lo) / 2
        half = np.maximum((hi - lo) / 2, 0.1)
        d_h = np.abs(w - mid) - half
        outside = np.sqrt(np.maximum(d_plane, 0) ** 2 + np.maximum(d_h, 0) ** 2)
        return outside + np.minimum(np.maximum(d_plane, d_h), 0.0)

    def sdf(self, frame: VertebraFrame) -> SDF:
        c, R = frame.centre_lps, frame.R
        ext = np.abs(R) @ np.array([self.hw, self.hd, self.hh])
        return SDF(lambda p: self.local_sdf((p - c) @ R), np.stack([c - ext, c + ext]))

    def half_width_at(self, v: float) -> float:
        """Half width of the cross-section at depth ``v`` (mid height), by bisection."""
        lo, hi = 0.0, self.hw * 1.2
        for _ in range(40):
            m = (lo + hi) / 2
            r, _, _ = self.rho(np.array([m]), np.array([v]), np.array([0.0]))
            lo, hi = (m, hi) if r[0] < 1 else (lo, m)
        return lo

    def posterior_wall_v(self, u: float = 0.0) -> float:
        """Depth of the posterior wall at lateral position ``u`` (mid height)."""
        lo, hi = 0.0, self.hd * 1.2
        for _ in range(40):
            m = (lo + hi) / 2
            r, _, _ = self.rho(np.array([u]), np.array([m]), np.array([0.0]))
            lo, hi = (m, hi) if r[0] < 1 else (lo, m)
        return lo


def _raised_cosine(r: Array, radius: float) -> Array:
    x = np.clip(r / radius, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * x))


def _body_shape(level: str, dims: dict[str, float], spec: CaseSpec) -> BodyShape:
    """Body geometry with wedge, normal end-plate concavity, fractures and infractions."""
    reg = _region(level)
    hw, hd = dims["body_width_mm"] / 2, dims["body_depth_mm"] / 2
    ha, hp = dims["body_height_anterior_mm"], dims["body_height_posterior_mm"]
    h0 = (ha + hp) / 2
    hmid = dims.get("body_height_middle_mm", h0)
    hh = max(ha, hp) / 2
    e = BODY_EXPONENT[reg]
    conc = ENDPLATE_CONCAVITY[reg]
    central_extra = max(h0 - hmid, 0.0) / 2  # biconcave fracture: per end plate
    infr = [i for i in spec.pathology.infractions if i.level == level]

    def rho0(u: Array, v: Array) -> Array:
        return np.clip((np.abs(u / hw) ** e + np.abs(v / hd) ** e) ** (1.0 / e), 0.0, 1.0)

    def wedge(v: Array) -> Array:
        t = np.clip((v + hd) / (2 * hd), 0.0, 1.0)
        return (2 * hh - (ha + (hp - ha) * t)) / 2

    def make(which: str) -> Callable[[Array, Array], Array]:
        own = [i for i in infr if i.endplate == which]

        def dep(u: Array, v: Array) -> Array:
            r = rho0(u, v)
            out = wedge(v) + (conc + central_extra) * (1.0 - r * r)
            for i in own:
                out = out + i.depth_mm * _raised_cosine(np.hypot(u, v), i.radius_mm)
            return out

        return dep

    return BodyShape(
        hw=hw,
        hd=hd,
        hh=hh,
        exponent=e,
        concavity_post=POSTERIOR_CONCAVITY[reg] * 2 * hd,
        taper_ant=ANTERIOR_TAPER[reg] if level not in ("T1", "T11", "T12") else ANTERIOR_TAPER[reg] / 2,
        waist=BODY_WAIST,
        top=make("superior"),
        bottom=make("inferior"),
    )


# ======================================================================================
# Frames
# ======================================================================================
def _segment_increments(levels: list[str], spec: CaseSpec, wedge_extra: dict[str, float]) -> list[float]:
    """Change of the sagittal tilt (rad) from each modelled level to the next."""
    k_step = np.deg2rad(spec.kyphosis_deg) / 11.0
    out = []
    for a, b in zip(levels[:-1], levels[1:]):
        ia = LEVELS.index(a)
        if a.startswith("T") and a != "T12":
            inc = k_step
        elif a == "T12":
            inc = 0.0
        else:  # L1..L5 -> next
            inc = -np.deg2rad(spec.lordosis_deg) * LORDOSIS_WEIGHTS[ia - LEVELS.index("L1")]
        inc += wedge_extra.get(a, 0.0) / 2 + wedge_extra.get(b, 0.0) / 2
        out.append(float(inc))
    return out


def _resolve_dims(spec: CaseSpec, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per-level patient dimensions (all 18 levels are drawn so a level's anatomy does not
    depend on which range is modelled), fractures applied."""
    q = [k for k in morph.QUANTITIES if k != "disc_height_below_female_mm"]
    z_pat = morph.truncated_normal(rng, (len(q),))
    z_lev = morph.truncated_normal(rng, (len(LEVELS), len(q)))
    z = PATIENT_WEIGHT * z_pat[None, :] + np.sqrt(1 - PATIENT_WEIGHT**2) * z_lev
    # anterior and posterior heights of one body vary together (keeps the normal wedge) [U]
    z[:, q.index("body_height_posterior_mm")] = z[:, q.index("body_height_anterior_mm")]
    out: dict[str, dict[str, float]] = {}
    for i, lev in enumerate(LEVELS):
        d = morph.patient_dims(lev, dict(zip(q, z[i])), spec.variation, spec.sex)
        # physical floors (only reached with extreme variation) [U]
        d["pedicle_width_mm"] = max(d["pedicle_width_mm"], 3.0)
        d["pedicle_height_mm"] = max(d["pedicle_height_mm"], 7.0)
        d["canal_width_mm"] = max(d["canal_width_mm"], 13.0)
        d["canal_depth_mm"] = max(d["canal_depth_mm"], 10.0)
        d["disc_height_below_mm"] = max(d["disc_height_below_mm"], 0.0 if lev == "S1" else 2.0)
        reg = "sacral" if lev == "S1" else ("thoracic" if lev.startswith("T") else "lumbar")
        cortex = morph.CORTEX_MM[reg] * (morph.OSTEOPOROTIC_CORTEX_SCALE if spec.pathology.osteoporotic else 1.0)
        d["cortex_mm"] = cortex
        d["body_height_anterior_intact_mm"] = d["body_height_anterior_mm"]
        d["body_height_posterior_intact_mm"] = d["body_height_posterior_mm"]
        d["body_height_middle_mm"] = (d["body_height_anterior_mm"] + d["body_height_posterior_mm"]) / 2
        d["height_loss_fraction"] = 0.0
        out[lev] = d
    for fr in spec.pathology.fractures:
        d = out[fr.level]
        loss = float(fr.height_loss)
        d["height_loss_fraction"] = loss
        if fr.kind == "wedge":
            d["body_height_anterior_mm"] *= 1 - loss
            d["body_height_middle_mm"] = (d["body_height_anterior_mm"] + d["body_height_posterior_mm"]) / 2
        elif fr.kind == "crush":
            d["body_height_anterior_mm"] *= 1 - loss
            d["body_height_posterior_mm"] *= 1 - loss
            d["body_height_middle_mm"] *= 1 - loss
        else:  # biconcave: centre depressed, rims preserved
            d["body_height_middle_mm"] *= 1 - loss
    return out


def _ray_exit(f_local: Callable[[Array], Array], origin: Array, direction: Array, tmax: float = 120.0,
              step: float = 0.05) -> float:
    """Distance along ``direction`` from ``origin`` to where the ray leaves ``f < 0`` after
    having entered it (local coordinates)."""
    t = np.arange(0.0, tmax, step)
    d = f_local(origin[None, :] + t[:, None] * direction[None, :])
    inside = d < 0
    if not inside.any():
        return float("nan")
    first = int(np.argmax(inside))
    after = ~inside[first:]
    if not after.any():
        return float(t[-1])
    return float(t[first + int(np.argmax(after))] - step / 2)


@dataclass
class LocalGeometry:
    """Key points of one level in its local frame (mm); per-side entries keyed by side."""

    body: BodyShape
    isthmus: dict[str, Array]
    target: dict[str, Array]
    entry: dict[str, Array]
    axis: dict[str, Array]
    v_post_wall: float
    v_lamina_front: float
    lamina_top: float
    lamina_bottom: float


def _local_geometry(level: str, dims: dict[str, float], spec: CaseSpec) -> LocalGeometry:
    reg = _region(level)
    body = _body_shape(level, dims, spec)
    cortex = dims["cortex_mm"]
    pw, ph = dims["pedicle_width_mm"], dims["pedicle_height_mm"]
    if level == "S1":
        pw = min(pw, 16.0)  # the Ok03 S1 "width" is an AP measure; the tube uses <= 16 mm [U]
    cw = dims["canal_width_mm"]
    alpha = np.deg2rad(dims["pedicle_transverse_angle_deg"])
    beta = np.deg2rad(dims["pedicle_sagittal_angle_deg"])
    w_i = body.hh - ph / 2 - PEDICLE_TOP_GAP * 2 * body.hh
    v_pw0 = body.posterior_wall_v(0.0)

    def core(q: Array) -> Array:
        return body.local_sdf(q) + cortex

    # the pedicle centre may not lie beyond the body's lateral outline (1 mm inside); a
    # pedicle wider than the room left beside the canal is narrowed to fit (dims updated) [U]
    u_c = cw / 2 + pw / 2 if level == "S1" else min(cw / 2 + pw / 2, body.hw - 1.0)  # S1: alae beside
    if pw > 2 * (u_c - cw / 2):
        pw = 2 * (u_c - cw / 2)
        dims["pedicle_width_mm"] = float(pw)
    isth, tgt, ent, axd = {}, {}, {}, {}
    for side in SIDES:
        s = SIGN[side]
        u_i = s * u_c
        v_i = body.posterior_wall_v(abs(u_i)) + ISTHMUS_BEHIND_WALL[reg]
        p_i = np.array([u_i, v_i, w_i])
        # converge more when the axis would miss the body (wide, lateral L5/S1 pedicles)
        a = alpha
        for _ in range(30):
            d = np.array([-s * np.sin(a) * np.cos(beta), -np.cos(a) * np.cos(beta), -np.sin(beta)])
            t_exit = _ray_exit(core, p_i, d)
            if np.isfinite(t_exit) and t_exit > body.hd:
                break
            a += np.deg2rad(1.0)
        if a != alpha:
            dims["pedicle_transverse_angle_deg"] = float(np.rad2deg(a))
        if not np.isfinite(t_exit):  # pragma: no cover - geometry always enters the body
            t_exit = 2 * body.hd
        target = p_i + t_exit * d
        chord = max(dims["pedicle_chord_mm"], t_exit + ISTHMUS_BEHIND_WALL[reg] + 6.0)
        isth[side], tgt[side], ent[side], axd[side] = p_i, target, target - chord * d, d
    v_front = v_pw0 + dims["canal_depth_mm"]
    lam_top = w_i + ph / 2
    lam_bottom = -body.hh - 0.5 * dims["disc_height_below_mm"] if level != "S1" else -body.hh
    return LocalGeometry(body, isth, tgt, ent, axd, v_pw0, v_front, lam_top, lam_bottom)


def build_frames(spec: CaseSpec, rng: np.random.Generator) -> dict[str, VertebraFrame]:
    """Resolve one patient's vertebrae: dimensions, poses along the sagittal curve, landmarks.

    Parameters
    ----------
    spec : CaseSpec
        Levels, sex, variation, kyphosis/lordosis and the pathology (fractures change the
        body heights and the local kyphosis).
    rng : numpy.random.Generator
        Source of the per-patient jitter; the same seed gives the same frames.

    Returns
    -------
    dict[str, VertebraFrame]
        Level -> frame, cranial to caudal.  Body centres lie on LPS x = 0, the spine runs
        along z (the chord from the first to the last body centre is vertical) and the mean
        of the body centres is the origin.
    """
    all_dims = _resolve_dims(spec, rng)
    levels = spec.level_list()
    geo = {lev: _local_geometry(lev, all_dims[lev], spec) for lev in levels}

    wedge_extra: dict[str, float] = {}
    for fr in spec.pathology.fractures:
        d = all_dims[fr.level]
        depth = d["body_depth_mm"]
        before = np.arctan2(d["body_height_posterior_intact_mm"] - d["body_height_anterior_intact_mm"], depth)
        after = np.arctan2(d["body_height_posterior_mm"] - d["body_height_anterior_mm"], depth)
        wedge_extra[fr.level] = float(after - before)
    incs = _segment_increments(levels, spec, wedge_extra)
    phis = np.concatenate([[0.0], np.cumsum(incs)])

    Rs = [_rot_x(-phi) for phi in phis]  # w = (0, sin phi, cos phi): phi tilts w posteriorly
    centres = [np.zeros(3)]
    for i in range(len(levels) - 1):
        a, b = levels[i], levels[i + 1]
        da, db = all_dims[a], all_dims[b]
        wa, wb = Rs[i][:, 2], Rs[i + 1][:, 2]
        ha0 = (da["body_height_anterior_mm"] + da["body_height_posterior_mm"]) / 2
        hb0 = (db["body_height_anterior_mm"] + db["body_height_posterior_mm"]) / 2
        n = _unit(wa + wb)
        inf_a = centres[i] - wa * ha0 / 2
        sup_b = inf_a - n * da["disc_height_below_mm"]
        centres.append(sup_b - wb * hb0 / 2)
    centres_a = np.array(centres)
    if len(levels) > 1:
        chord = centres_a[0] - centres_a[-1]
        psi = np.arctan2(chord[1], chord[2])  # rotate the chord onto +z
        G = _rot_x(psi)
    else:
        G = np.eye(3)
    centres_a = centres_a @ G.T
    centres_a -= centres_a.mean(axis=0)
    centres_a[:, 0] = 0.0

    frames: dict[str, VertebraFrame] = {}
    for i, lev in enumerate(levels):
        dims = dict(all_dims[lev])
        frames[lev] = VertebraFrame(level=lev, centre_lps=centres_a[i].copy(), R=G @ Rs[i], dims=dims)
        frames[lev]._planner_geo = (_geo_key(frames[lev], spec), geo[lev])  # type: ignore[attr-defined]
    for lev in levels:
        _fill_landmarks(frames, lev, geo[lev], spec)
    log.debug("built %d vertebral frames %s-%s", len(frames), levels[0], levels[-1])
    return frames


def _fill_landmarks(frames: dict[str, VertebraFrame], level: str, g: LocalGeometry, spec: CaseSpec) -> None:
    """Landmarks and pedicle axes of one level (uses the intact bone shape of the level)."""
    fr = frames[level]
    d = fr.dims
    b = g.body
    z0 = np.zeros(1)
    top0 = float(b.top(z0, z0)[0])
    bot0 = float(b.bottom(z0, z0)[0])
    lm: dict[str, Array] = {
        "body_centre": np.zeros(3),
        "endplate_superior_centre": np.array([0.0, 0.0, b.hh - top0]),
        "endplate_inferior_centre": np.array([0.0, 0.0, -b.hh + bot0]),
        "body_posterior_centre": np.array([0.0, g.v_post_wall, 0.0]),
    }
    w_i = float(g.isthmus["left"][2])
    lm["canal_centre"] = np.array([0.0, g.v_post_wall + d["canal_depth_mm"] / 2, w_i])
    parts = intact_parts(frames, level, g)
    group = blend([parts["body"], parts["pedicle_left"], parts["pedicle_right"], parts["posterior"]])
    for side in SIDES:
        s = SIGN[side]
        lm[f"pedicle_isthmus_{side}"] = g.isthmus[side]
        lm[f"pedicle_target_{side}"] = g.target[side]
        # entry: walk back from the isthmus along the axis to the bone surface
        ax_w = fr.R @ g.axis[side]
        p_i = fr.to_world(g.isthmus[side])
        t = np.arange(0.0, 60.0, 0.05)
        pts = p_i[None, :] - t[:, None] * ax_w[None, :]
        out = group(pts) > 0
        t_e = float(t[int(np.argmax(out))]) if out.any() else float(np.linalg.norm(g.entry[side] - g.isthmus[side]))
        lm[f"pedicle_entry_{side}"] = fr.to_local(p_i - t_e * ax_w)
        fr.pedicle_axis[side] = ax_w.copy()
        lm[f"tp_tip_{side}"] = fr.to_local(parts[f"_tp_tip_{side}"])
        # foramen: below the pedicle, between the posterior body wall and the facet
        v_f = b.posterior_wall_v(abs(g.isthmus[side][0])) + 0.35 * (g.entry[side][1] - b.hd)
        w_f = 0.5 * ((w_i - d["pedicle_height_mm"] / 2) + (-b.hh - 0.5 * d["disc_height_below_mm"]))
        lm[f"foramen_{side}"] = np.array([g.isthmus[side][0], v_f, w_f])
        if level.startswith("T"):
            lm[f"rib_head_{side}"] = fr.to_local(parts[f"_rib_head_{side}"])
        del s
    lm["spinous_tip"] = fr.to_local(parts["_spinous_tip"])
    lm["lamina_centre"] = fr.to_local(parts["_lamina_centre"])
    fr.landmarks = {k: fr.to_world(v) for k, v in lm.items()}
    # chord actually realised (entry on the bone surface to the target)
    for side in SIDES:
        fr.dims[f"pedicle_chord_{side}_mm"] = float(
            np.linalg.norm(fr.landmarks[f"pedicle_target_{side}"] - fr.landmarks[f"pedicle_entry_{side}"])
        )


# ======================================================================================
# Bone parts
# ======================================================================================
def _facet_frame(frames: dict[str, VertebraFrame], owner: str, side: str) -> tuple[Array, Array, Array]:
    """Joint centre J, normal N (from the superior process of ``owner`` toward the inferior
    process of the level above) and the owner's superior axis, all in LPS."""
    fr = frames[owner]
    g = _geo_cache(frames, owner)
    reg = _region(owner)
    s = SIGN[side]
    e = g.entry[side]
    u_j = g.isthmus[side][0]
    v_j = e[1] + (1.0 if reg == "T" else -2.0)
    disc_above = _disc_above(frames, owner)
    w_j = g.body.hh + 0.5 * disc_above + 1.0
    beta = np.deg2rad(FACET_ANGLE[owner])
    tau = np.deg2rad(FACET_TILT[reg] if owner not in ("T11", "T12") else (10.0 if owner == "T11" else 0.0))
    n_loc = np.array([-s * np.cos(beta) * np.cos(tau), np.sin(beta) * np.cos(tau), np.sin(tau)])
    return fr.to_world(np.array([u_j, v_j, w_j])), fr.R @ _unit(n_loc), fr.w


def _disc_above(frames: dict[str, VertebraFrame], level: str) -> float:
    i = LEVELS.index(level)
    if i == 0:
        return 5.0  # C7/T1 disc [U], only used to place the top facet of T1
    above = LEVELS[i - 1]
    if above in frames:
        return frames[above].dims["disc_height_below_mm"]
    return morph.level_dims(above)["disc_height_below_mm"]


def _joint_below(frames: dict[str, VertebraFrame], level: str, side: str) -> tuple[Array, Array, Array]:
    """The facet joint below ``level`` (its inferior process's joint)."""
    i = LEVELS.index(level)
    below = LEVELS[i + 1] if i + 1 < len(LEVELS) else None
    if below is not None and below in frames:
        return _facet_frame(frames, below, side)
    # extrapolate: the same rule expressed in this level's own frame, one segment lower
    fr = frames[level]
    J, N, up = _facet_frame(frames, level, side)
    g = _geo_cache(frames, level)
    drop = 2 * g.body.hh + fr.dims["disc_height_below_mm"]
    return J - fr.w * drop, N, up


def _geo_key(fr: VertebraFrame, spec: CaseSpec | None) -> tuple:
    """Cache key: the shape-defining dims (+ the level's infractions when a spec is given)."""
    dims = tuple(sorted((k, v) for k, v in fr.dims.items() if not k.startswith(("pedicle_chord_left", "pedicle_chord_right"))))
    if spec is None:
        return dims, None
    infr = tuple((i.endplate, i.depth_mm, i.radius_mm) for i in spec.pathology.infractions if i.level == fr.level)
    return dims, infr


def _geo_cache(frames: dict[str, VertebraFrame], level: str, spec: CaseSpec | None = None) -> LocalGeometry:
    """Local geometry of a level, recomputed from its frame dims (cached on the frame).

    ``spec`` supplies the end-plate infractions; without it the geometry stored by
    :func:`build_frames` is reused when the dims still match (else recomputed without
    infractions).
    """
    fr = frames[level]
    key = _geo_key(fr, spec)
    hit = getattr(fr, "_planner_geo", None)
    if hit is not None and hit[0][0] == key[0] and (spec is None or hit[0][1] == key[1]):
        return hit[1]
    g = _local_geometry(level, fr.dims, spec if spec is not None else CaseSpec(levels=(level, level)))
    fr._planner_geo = (_geo_key(fr, spec), g)  # dims may have been adjusted to fit  # type: ignore[attr-defined]
    return g


def _process(base: Array, J: Array, N: Array, up: Array, reg: str, sign: float) -> tuple[SDF, SDF]:
    """Articular process: capsule from ``base`` to a facet plate at joint ``J``.

    ``sign`` = -1 for a superior process (on the -N side of the joint plane), +1 for an
    inferior process.  Returns (process cut to its side of the joint, raw process).
    """
    t = FACET_THICKNESS[reg]
    fw, fh = FACET_SIZE[reg]
    C = J + sign * N * (FACET_GAP / 2 + t / 2)
    a_up = _unit(up - (up @ N) * N)
    a_side = np.cross(a_up, N)
    Rb = np.stack([N, a_side, a_up], axis=1)
    plate = box(C, (t / 2, fw / 2, fh / 2), Rb, round_mm=min(2.0, t / 2 - 0.2))
    stem = capsule(base, C, t / 2)
    raw = blend([stem, plate], k=2.0)
    cut = halfspace(J + sign * N * FACET_GAP / 2, -sign * N, raw.bounds)
    return intersect(raw, cut), raw


def intact_parts(frames: dict[str, VertebraFrame], level: str, g: LocalGeometry | None = None) -> dict:
    """SDFs of the intact level (before surgery) plus a few construction points.

    Keys: ``body``, ``pedicle_left/right``, ``posterior`` (SDFs); sub-shapes
    ``_lamina``, ``_spinous``, ``_sap_<side>``, ``_iap_<side>`` (raw processes),
    ``_tp_<side>``, ``_pedicle_raw_<side>``; points ``_tp_tip_<side>``, ``_spinous_tip``,
    ``_lamina_centre``, ``_rib_head_<side>`` (LPS), ``_tp_dir_<side>``.
    """
    fr = frames[level]
    if g is None:
        g = _geo_cache(frames, level)
    d = fr.dims
    reg = _region(level)
    b = g.body
    W = fr.to_world
    out: dict = {}
    body = b.sdf(fr)
    lt = d["lamina_thickness_mm"]
    cw = d["canal_width_mm"]
    pw, ph = d["pedicle_width_mm"], d["pedicle_height_mm"]
    if level == "S1":
        pw = min(pw, 16.0)
        # start of the sacrum: S2 segment fused below, curving posteriorly [U]
        s2c = np.array([0.0, 0.2 * b.hd, -b.hh - 10.0])
        s2 = box(W(s2c), (0.75 * b.hw, 0.8 * b.hd, 10.0), fr.R @ _rot_x(np.deg2rad(-15)), round_mm=5.0)
        body = blend([body, s2], k=4.0)
    out["body"] = body

    posterior: list[SDF] = []
    # hemilaminae: from the pedicle-lamina junction to the midline, sloping down and back
    v_mid = g.v_lamina_front + lt / 2
    lam_h = g.lamina_top - g.lamina_bottom
    w_c = (g.lamina_top + g.lamina_bottom) / 2
    slope = np.deg2rad(LAMINA_SLOPE_DEG[reg])
    lam_parts = []
    for side in SIDES:
        s = SIGN[side]
        e = g.entry[side]
        # lateral end over the lateral recess: canal roof lower laterally (triangular lumbar
        # canal, rounder thoracic canal) [U]
        lat_depth = (0.55 if reg == "L" else 0.75) * d["canal_depth_mm"]
        pl = np.array([s * (cw / 2 + 1.0 + lt / 2), g.v_post_wall + lat_depth + lt / 2, w_c])
        pm = np.array([0.0, v_mid, w_c])
        a1 = _unit(pm - pl)
        a3 = np.array([0.0, -np.sin(slope), np.cos(slope)])
        a3 = _unit(a3 - (a3 @ a1) * a1)
        a2 = np.cross(a3, a1)
        Rl = fr.R @ np.stack([a1, a2, a3], axis=1)
        L = float(np.linalg.norm(pm - pl))
        centre = (pl + pm) / 2 + a1 * lt / 4
        lam_parts.append(box(W(centre), (L / 2 + lt / 2, lt / 2, lam_h / 2), Rl, round_mm=min(2.0, lt / 2 - 0.3)))
    lamina = blend(lam_parts, k=2.0)
    out["_lamina"] = lamina
    out["_lamina_centre"] = W(np.array([0.0, v_mid + lt / 2, w_c]))
    posterior.append(lamina)

    # spinous process: blade pointing posterior-inferior
    gam = np.deg2rad(d["spinous_angle_deg"])
    sp_dir = np.array([0.0, np.cos(gam), -np.sin(gam)])
    base = np.array([0.0, v_mid, w_c])
    tip = base + sp_dir * (d["spinous_length_mm"] + lt / 2)
    e1 = fr.u
    if reg == "L":
        r1, r2, cap = (lt * 0.45, 3.5), (lam_h * 0.38, 9.0), 4.0
    elif reg == "S":
        r1, r2, cap = (lt * 0.45, 3.0), (lam_h * 0.3, 5.0), 3.0
    else:
        r1, r2, cap = (lt * 0.45, 3.0), (lam_h * 0.3, 4.0), 3.0
    spin = elliptic_capsule(W(base), W(tip), e1, r1, r2, cap=cap)
    out["_spinous"] = spin
    out["_spinous_tip"] = W(tip + sp_dir * cap)
    posterior.append(spin)

    for side in SIDES:
        s = SIGN[side]
        e = g.entry[side]
        ax = g.axis[side]
        # pedicle: hourglass elliptic tube from inside the body to the entry
        v_start = b.hd * 0.45
        t_start = (g.isthmus[side][1] - v_start) / max(-ax[1], 1e-3)
        p0 = g.isthmus[side] + ax * t_start
        p1 = e.copy()
        Lp = float(np.linalg.norm(p1 - p0))
        s_i = float(np.clip(np.linalg.norm(g.isthmus[side] - p0) / Lp, 0.1, 0.9))
        rw, rh = pw / 2, ph / 2
        knots = [0.0, s_i, 1.0]
        ped = elliptic_capsule(W(p0), W(p1), fr.u, [rw * 1.25, rw, rw * 1.2], [rh * 1.1, rh, rh * 1.1], knots)
        out[f"pedicle_{side}"] = ped
        out[f"_pedicle_raw_{side}"] = ped

        # transverse process
        if reg == "S":
            # sacral ala (fused transverse and costal elements) [U]
            c_ala = np.array([s * (b.hw * 0.85 + 12.0), b.hd * 0.35, b.hh * 0.05])
            ala = elliptic_capsule(
                W(np.array([s * b.hw * 0.5, b.hd * 0.2, b.hh * 0.1])), W(c_ala), fr.w, 12.0, 11.0, cap=13.0
            )
            out[f"_tp_{side}"] = ala
            out[f"_tp_dir_{side}"] = fr.u * s
            out[f"_tp_tip_{side}"] = W(c_ala + np.array([s * 13.0, 0, 0]))
            posterior.append(ala)
        else:
            th = np.deg2rad(TP_BACK_DEG[reg] if level not in ("T11", "T12") else 15.0)
            tp_dir = _unit(np.array([s * np.cos(th), np.sin(th), 0.05 if reg == "T" else 0.0]))
            # the process springs from the pedicle-lamina junction at pedicle height [U]
            w_tp = e[2] - 0.5 if reg == "L" else g.isthmus[side][2] + 1.5
            tp_base = np.array([e[0] - s * 1.0, e[1] - (4.0 if reg == "L" else 1.5), w_tp])
            tp_end = tp_base + tp_dir * d["transverse_length_mm"]
            if reg == "L":
                tp = elliptic_capsule(W(tp_base), W(tp_end), fr.w, [5.0, 4.5], [3.0, 2.5], cap=2.5)
                tip_r = 2.5
            else:
                tp = elliptic_capsule(W(tp_base), W(tp_end), fr.w, [5.0, 4.5], [4.0, 3.5], cap=3.5)
                bulb_r = 5.0 if level not in ("T11", "T12") else 3.5
                tp = blend([tp, sphere(W(tp_end), bulb_r)], k=1.5)
                tip_r = bulb_r
            out[f"_tp_{side}"] = tp
            out[f"_tp_dir_{side}"] = fr.R @ tp_dir
            out[f"_tp_tip_{side}"] = W(tp_end + tp_dir * tip_r)
            out[f"_tp_end_{side}"] = W(tp_end)
            posterior.append(tp)

        # articular processes
        J, N, up = _facet_frame(frames, level, side)
        sap_base = np.array([e[0] - s * 0.5, e[1] - 1.0, e[2] + ph * 0.3])
        sap, sap_raw = _process(W(sap_base), J, N, up, reg, -1.0)
        out[f"_sap_{side}"] = sap_raw
        posterior.append(sap)
        if level != "S1":
            Jb, Nb, upb = _joint_below(frames, level, side)
            iap_base = np.array([s * (cw / 2 + lt * 0.4), v_mid + 0.5, g.lamina_bottom + lam_h * 0.3])
            regb = _region(LEVELS[LEVELS.index(level) + 1])
            iap, iap_raw = _process(W(iap_base), Jb, Nb, upb, regb, +1.0)
            out[f"_iap_{side}"] = iap_raw
            posterior.append(iap)

        # rib head position (thoracic): beside the upper posterolateral body
        if reg == "T":
            v_h = b.hd * 0.45
            hwv = b.half_width_at(v_h)
            w_h = b.hh - 3.0 if level not in ("T11", "T12") else b.hh * 0.3
            out[f"_rib_head_{side}"] = W(np.array([s * (hwv + RIB_RADII[0] + 1.0), v_h, w_h]))
    out["posterior"] = blend(posterior, k=FILLET_MM)
    return out


def rib_sdf(frames: dict[str, VertebraFrame], level: str, side: str, parts: dict) -> tuple[SDF, dict]:
    """Rib of a thoracic level: head at the costovertebral joint, neck to the transverse-process
    tip (costotransverse joint, T1-T10), then a shaft curving laterally and anteriorly."""
    fr = frames[level]
    s = SIGN[side]
    H = fr.to_local(parts[f"_rib_head_{side}"])
    costotransverse = level not in ("T11", "T12")
    if costotransverse:
        tp_end = fr.to_local(parts[f"_tp_end_{side}"])
        # tubercle sits against the anterior (-v) face of the TP tip with a 1 mm joint space
        T = tp_end + np.array([s * 1.0, -(5.0 + 1.0 + RIB_RADII[1] + 0.5), -2.0])
    else:
        T = H + np.array([s * 18.0, 8.0, -4.0])
    A = T + np.array([s * 16.0, 3.0, -4.0])
    pts = [H, 0.5 * (H + T), T, A]
    heading = np.deg2rad(-10.0)  # from lateral toward posterior (negative = posterior)
    n_arc = 10
    ds = RIB_ARC_MM / n_arc
    p = A.copy()
    for _ in range(n_arc):
        heading += ds / RIB_ARC_RADIUS_MM
        step = np.array([s * np.cos(heading), -np.sin(heading), -RIB_SLOPE])
        p = p + ds * step / np.linalg.norm(step[:2])
        pts.append(p.copy())
    pts = np.array(pts)
    radii = np.array([RIB_RADII[0], RIB_RADII[1], RIB_RADII[1] + 0.5] + [RIB_RADII[2]] * (len(pts) - 3))
    world = fr.to_world(pts)
    info = {"head": world[0], "tubercle": world[2], "angle": world[3]}
    return tube(world, radii), info


# ======================================================================================
# Bone, surgery, pathology
# ======================================================================================
def build_bone(
    spec: CaseSpec, frames: dict[str, VertebraFrame], rng: np.random.Generator
) -> tuple[list[Structure], dict[str, list[dict]]]:
    """Bone structures of every modelled level with surgery and pathology applied.

    Parameters
    ----------
    spec : CaseSpec
    frames : dict[str, VertebraFrame]
        From :func:`build_frames` with the same spec.
    rng : numpy.random.Generator
        Accepted for interface symmetry; the bone shapes are fully determined by the frames
        (all randomness is drawn in :func:`build_frames`), so output is deterministic.

    Returns
    -------
    structures : list of Structure
        ``vertebra_<L>`` groups (parts ``<L>_body``, ``<L>_pedicle_left/right``,
        ``<L>_posterior``), ``<L>_rib_left/right`` at thoracic levels and ``<L>_lesion``.
    findings : dict[str, list[dict]]
        ``resections``, ``fractures``, ``lesions``, ``infractions`` (ground truth).
    """
    del rng
    for lev in frames:
        _geo_cache(frames, lev, spec)
    sur, pat = spec.surgery, spec.pathology
    parts = {lev: intact_parts(frames, lev) for lev in frames}
    cuts: dict[str, list[SDF]] = {lev: [] for lev in frames}
    rib_cuts: dict[tuple[str, str], list[SDF]] = {}
    resections: list[dict] = []

    for lev in sur.laminectomy:
        fr = frames[lev]
        g = _geo_cache(frames, lev)
        half_u = fr.dims["canal_width_mm"] / 2 + 1.0
        lo = [-half_u, g.v_lamina_front - 1.0, -g.body.hh - 70.0]
        hi = [half_u, g.v_lamina_front + 90.0, g.body.hh + 20.0]
        cuts[lev].append(_local_box(fr, lo, hi))
        resections.append({"level": lev, "kind": "laminectomy", "side": "both"})
    for lev, side in sur.facetectomy:
        cuts[lev].append(parts[lev][f"_iap_{side}"].offset(1.0))
        nxt = LEVELS[LEVELS.index(lev) + 1] if lev != "S1" else None
        if nxt is not None and nxt in frames:
            cuts[nxt].append(parts[nxt][f"_sap_{side}"].offset(1.0))
        resections.append({"level": lev, "kind": "facetectomy", "side": side})
    for lev, side, frac in sur.vertebrectomy:
        fr = frames[lev]
        g = _geo_cache(frames, lev)
        s = SIGN[side]
        b = g.body
        u_lo, u_hi = 0.1 * b.hw, b.hw + 8.0
        lo = [min(s * u_lo, s * u_hi), b.hd - frac * 2 * b.hd, -b.hh - 1.0]
        hi = [max(s * u_lo, s * u_hi), b.hd + 8.0, b.hh + 1.0]
        cuts[lev].append(_local_box(fr, lo, hi))
        cuts[lev].append(parts[lev][f"_pedicle_raw_{side}"].offset(1.5))
        resections.append({"level": lev, "kind": "vertebrectomy", "side": side, "fraction": float(frac)})
    for lev, side in sur.pediclectomy:
        cuts[lev].append(parts[lev][f"_pedicle_raw_{side}"].offset(1.0))
        resections.append({"level": lev, "kind": "pediclectomy", "side": side})
    for lev, side in sur.rib_head_resection:
        fr = frames[lev]
        g = _geo_cache(frames, lev)
        P = parts[lev]
        head = P[f"_rib_head_{side}"]
        cuts[lev].append(sphere(head, 7.0))  # costovertebral joint region
        cuts[lev].append(sphere(P[f"_tp_tip_{side}"] - 3.0 * P[f"_tp_dir_{side}"], 7.0))  # TP tip
        # lateral pedicle wall: the pedicle lateral of its axis + pw/5
        s = SIGN[side]
        ax = g.axis[side]
        lat = _unit(np.cross(np.array([0.0, 0.0, 1.0]), ax))
        if lat[0] * s < 0:
            lat = -lat
        e, i = g.entry[side], g.isthmus[side]
        mid = (e + i) / 2 - ax * 4.0
        Lh = float(np.linalg.norm(e - i)) / 2 + 8.0
        pw, ph = fr.dims["pedicle_width_mm"], fr.dims["pedicle_height_mm"]
        up = np.cross(lat, ax)
        Rb = fr.R @ np.stack([lat, ax, up], axis=1)
        cuts[lev].append(box(fr.to_world(mid + lat * (pw / 5 + 6.0)), (6.0, Lh, ph / 2 + 3.0), Rb))
        rib_cuts[(lev, side)] = [capsule(head, _rib_neck_end(frames, lev, side, P), 7.5)]
        resections.append({"level": lev, "kind": "rib_head_resection", "side": side})

    structures: list[Structure] = []
    for lev, fr in frames.items():
        P = parts[lev]
        c = cuts[lev]
        group_intact = blend([P["body"], P["pedicle_left"], P["pedicle_right"], P["posterior"]], k=FILLET_MM)
        group = subtract(group_intact, *c)
        part_sdfs = {
            f"{lev}_body": subtract(P["body"], *c),
            f"{lev}_pedicle_left": subtract(P["pedicle_left"], *c),
            f"{lev}_pedicle_right": subtract(P["pedicle_right"], *c),
            f"{lev}_posterior": subtract(P["posterior"], P["body"], *c),
        }
        hu = morph.CANCELLOUS_HU["osteoporotic" if pat.osteoporotic else "normal"]
        structures.append(
            Structure(
                name=f"vertebra_{lev}",
                tissue="cortical_bone",
                sdf=group,
                priority=60,
                parts=part_sdfs,
                cortex_mm=fr.dims["cortex_mm"],
                inner_tissue="cancellous_bone",
                tissue_params={"cancellous_hu": hu},
                meta={"level": lev, "kind": "vertebra"},
            )
        )
        if lev.startswith("T"):
            for side in SIDES:
                rib, _ = rib_sdf(frames, lev, side, P)
                rib = subtract(rib, *rib_cuts.get((lev, side), []))
                structures.append(
                    Structure(
                        name=f"{lev}_rib_{side}",
                        tissue="cortical_bone",
                        sdf=rib,
                        priority=61,
                        cortex_mm=1.0,  # rib cortex ~1 mm on CT [U]
                        inner_tissue="cancellous_bone",
                        tissue_params={"cancellous_hu": hu},
                        meta={"level": lev, "side": side, "kind": "rib"},
                    )
                )

    # lesions
    lesions: list[dict] = []
    for les in pat.lesions:
        fr = frames[les.level]
        g = _geo_cache(frames, les.level)
        off = np.asarray(les.offset_mm, float)
        r = float(les.radius_mm)
        shape = sphere(fr.to_world(off), r)
        if les.breach_posterior:
            wall = np.array([off[0], g.body.posterior_wall_v(abs(off[0])) + 2.5, off[2]])
            shape = blend([shape, capsule(fr.to_world(off), fr.to_world(wall), 0.6 * r)], k=2.0)
        structures.append(
            Structure(
                name=f"{les.level}_lesion",
                tissue="tumour",
                sdf=shape,
                priority=80,
                meta={"level": les.level, "kind": "lesion"},
            )
        )
        lesions.append(
            {
                "level": les.level,
                "centre_lps": [round(float(x), 4) for x in fr.to_world(off)],
                "radius_mm": r,
                "breach_posterior": bool(les.breach_posterior),
                "volume_mm3": round(4.0 / 3.0 * np.pi * r**3, 2),
            }
        )

    fractures = []
    for f in pat.fractures:
        fr = frames[f.level]
        fractures.append(
            {
                "level": f.level,
                "kind": f.kind,
                "height_loss": float(f.height_loss),
                **{k: round(v, 3) for k, v in measure_heights(frames, f.level).items()},
            }
        )
    infractions = []
    for i in pat.infractions:
        fr = frames[i.level]
        key = "endplate_superior_centre" if i.endplate == "superior" else "endplate_inferior_centre"
        infractions.append(
            {
                "level": i.level,
                "endplate": i.endplate,
                "depth_mm": float(i.depth_mm),
                "radius_mm": float(i.radius_mm),
                "centre_lps": [round(float(x), 4) for x in fr.landmarks[key]],
            }
        )
    findings = {"resections": resections, "fractures": fractures, "lesions": lesions, "infractions": infractions}
    log.debug("bone: %d structures, %d resections", len(structures), len(resections))
    return structures, findings


def _rib_neck_end(frames: dict[str, VertebraFrame], level: str, side: str, parts: dict) -> Array:
    """A point 8 mm lateral of the rib tubercle (end of the resected head-neck segment)."""
    _, info = rib_sdf(frames, level, side, parts)
    t, a = info["tubercle"], info["angle"]
    return t + 8.0 * _unit(a - t)


def measure_heights(frames: dict[str, VertebraFrame], level: str) -> dict[str, float]:
    """Anterior, middle and posterior body heights (mm) of the modelled body.

    Measured on the body shape (including fractures, infractions and the normal end-plate
    concavity) along the local w axis at 3 mm inside the anterior and posterior walls and at
    the centre.
    """
    g = _geo_cache(frames, level)
    b = g.body
    out = {}
    for key, v in (
        ("anterior_height_mm", -b.hd + 3.0),
        ("middle_height_mm", 0.0),
        ("posterior_height_mm", b.posterior_wall_v(0.0) - 3.0),
    ):
        z = np.zeros(1)
        vv = np.array([v])
        out[key] = float(2 * b.hh - b.top(z, vv)[0] - b.bottom(z, vv)[0])
    return out


def articular_process_centres(frames: dict[str, VertebraFrame], level: str) -> dict[str, Array]:
    """Centres (LPS) of the articular facets of ``level``: ``sap_<side>`` (its superior
    process, at the joint above) and ``iap_<side>`` (its inferior process, at the joint
    below), each 1 mm inside the process behind its facet."""
    out = {}
    reg = _region(level)
    for side in SIDES:
        J, N, _ = _facet_frame(frames, level, side)
        out[f"sap_{side}"] = J - N * (FACET_GAP / 2 + FACET_THICKNESS[reg] / 2)
        if level != "S1":
            Jb, Nb, _ = _joint_below(frames, level, side)
            regb = _region(LEVELS[LEVELS.index(level) + 1])
            out[f"iap_{side}"] = Jb + Nb * (FACET_GAP / 2 + FACET_THICKNESS[regb] / 2)
    return out
