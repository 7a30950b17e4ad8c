"""Implanted hardware of a phantom: pedicle screws, rods and cross-links.

:func:`build_hardware` turns the :class:`~planner.phantom.spec.SurgerySpec` into implant
objects (:class:`~planner.implants.Screw`, :class:`~planner.implants.Rod`,
:class:`~planner.implants.CrossLink`, the ground truth) and into the SDF
:class:`~planner.phantom.model.Structure` s the rasteriser draws.  The SDF of every implant
is built from exactly the recorded geometry, so the metal in the images lies inside the
recorded solid (screw shank cylinder + tulip cylinder, rod and bar tubes).

Sizing rules (instruments.md §4)
--------------------------------
* Screw diameter: about 80 % of the pedicle width (Solitro et al., IJSS 2019 [V] abs),
  clamped to the common catalogue range 4.5-7.5 mm (domain.md facts; instruments.md §4a,
  catalogue [S]) and rounded *down* to a 0.5 mm catalogue step [U: catalogue steps are
  0.5 mm; rounding down keeps the screw at or below 80 % of the pedicle].
* Screw length: about 80 % of the pedicle-axis chord from the entry point to the inner
  anterior cortex [U: common teaching, keeps the tip in the anterior third without
  breaching], rounded to a 5 mm catalogue step and kept within the catalogue 25-60 mm
  (instruments.md §4a [S]) but never longer than the chord minus :data:`ANTERIOR_MARGIN_MM`.
* Tulip (polyaxial head): 12 mm wide x 13 mm high [U: instruments.md §4b gives
  "roughly 10-15 mm", no published number].
* Rod: ``spec.surgery.rod_diameter_mm`` (5.5 mm default, instruments.md §4b [S]); a cubic
  spline through the rod seats, extended :data:`ROD_OVERHANG_MM` beyond the end screws.
* Cross-link: a 5 mm bar [U: instruments.md §4b "dimensions not found"] over the lamina or
  spinous-process base between the two rods (instruments.md §4b [U]).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from planner.errors import PhantomSpecError
from planner.implants import CrossLink, Rod, Screw
from planner.labels.registry import LEVELS, crosslink_label, rod_label, screw_label
from planner.phantom.model import Structure, VertebraFrame
from planner.phantom.sdf import SDF, cylinder, tube, union
from planner.phantom.spec import CaseSpec, ScrewSpec

log = logging.getLogger(__name__)

#: Screw diameter as a fraction of the pedicle width (Solitro et al., IJSS 2019 [V] abs).
DIAMETER_FRACTION: float = 0.80
#: Catalogue diameter range, mm (domain.md facts; instruments.md §4a catalogue [S]).
DIAMETER_RANGE_MM: tuple[float, float] = (4.5, 7.5)
#: Diameter catalogue step, mm [U: usual 0.5 mm steps of screw sets].
DIAMETER_STEP_MM: float = 0.5
#: Screw length as a fraction of the entry-to-anterior-cortex chord [U: common teaching].
LENGTH_FRACTION: float = 0.80
#: Catalogue length range, mm (instruments.md §4a, "length ≈25-60 mm" [S]).
LENGTH_RANGE_MM: tuple[float, float] = (25.0, 60.0)
#: Length catalogue step, mm [U: usual 5 mm steps of screw sets].
LENGTH_STEP_MM: float = 5.0
#: Minimum bone left between the tip and the inner anterior cortex, mm [U: no breach].
ANTERIOR_MARGIN_MM: float = 2.0
#: Tulip head diameter and height, mm [U: instruments.md §4b "roughly 10-15 mm"].
TULIP_DIAMETER_MM: float = 12.0
TULIP_HEIGHT_MM: float = 13.0
#: Length of the conical tip as a multiple of the screw diameter [U: drawing of common
#: self-tapping screws, cone about half to one diameter long].
TIP_CONE_FRACTION: float = 0.6
#: Radius of the blunt point of the cone, mm [U].
TIP_POINT_RADIUS_MM: float = 0.5
#: Rod overhang beyond the end screws' seats, mm [U: usual 5-10 mm trimmed overhang].
ROD_OVERHANG_MM: float = 8.0
#: Rod centre-line resampling step, mm [U: far below the rod radius; sag < 0.01 mm].
ROD_STEP_MM: float = 2.0
#: Cross-link bar diameter, mm [U: instruments.md §4b, dimensions not found].
CROSSLINK_DIAMETER_MM: float = 5.0
#: Clearance of the cross-link bar surface over the lamina / spinous base, mm [U].
CROSSLINK_CLEARANCE_MM: float = 3.0

PRIORITY_SCREW = 100
PRIORITY_ROD = 101


# ---- sizing -----------------------------------------------------------------------------
def default_diameter_mm(pedicle_width_mm: float) -> float:
    """Catalogue screw diameter for a pedicle.

    Parameters
    ----------
    pedicle_width_mm : float
        Transverse pedicle width at the isthmus.

    Returns
    -------
    float
        ``floor(0.8 * width / 0.5) * 0.5`` clamped to 4.5-7.5 mm.
    """
    d = DIAMETER_FRACTION * float(pedicle_width_mm)
    d = np.floor(d / DIAMETER_STEP_MM + 1e-9) * DIAMETER_STEP_MM
    return float(np.clip(d, *DIAMETER_RANGE_MM))


def default_length_mm(chord_mm: float) -> float:
    """Catalogue screw length for an entry-to-anterior-cortex chord.

    Parameters
    ----------
    chord_mm : float
        Distance from the pedicle entry to the inner anterior cortex along the axis.

    Returns
    -------
    float
        80 % of the chord rounded to 5 mm, within 25-60 mm, and never more than the chord
        minus :data:`ANTERIOR_MARGIN_MM` (then rounded down; may fall below 25 mm in a very
        short chord, with a warning).
    """
    limit = float(chord_mm) - ANTERIOR_MARGIN_MM
    L = np.round(LENGTH_FRACTION * chord_mm / LENGTH_STEP_MM) * LENGTH_STEP_MM
    L = float(np.clip(L, *LENGTH_RANGE_MM))
    if L > limit:
        L = float(np.floor(limit / LENGTH_STEP_MM) * LENGTH_STEP_MM)
        if L < LENGTH_RANGE_MM[0]:
            log.warning("chord %.1f mm shorter than the shortest catalogue screw; using %.1f mm",
                        chord_mm, max(limit, 5.0))
            L = max(limit, 5.0)
    return L


def make_screw(ss: ScrewSpec, frame: VertebraFrame) -> Screw:
    """A screw on the standard trajectory of ``frame`` for one :class:`ScrewSpec`.

    Parameters
    ----------
    ss : ScrewSpec
        Level, side, optional diameter/length, material.
    frame : VertebraFrame
        The level's frame; uses ``pedicle_entry_<side>``, ``pedicle_target_<side>``,
        ``pedicle_axis[side]`` and ``dims["pedicle_width_mm"]``.

    Returns
    -------
    Screw
        ``head_lps`` = the entry point on the bone surface, ``tip_lps`` on the pedicle axis.
    """
    side = ss.side
    entry = np.asarray(frame.landmarks[f"pedicle_entry_{side}"], float)
    target = np.asarray(frame.landmarks[f"pedicle_target_{side}"], float)
    axis = np.asarray(frame.pedicle_axis.get(side, target - entry), float)
    axis = axis / np.linalg.norm(axis)
    chord = float((target - entry) @ axis)
    if chord <= 0:
        raise PhantomSpecError(f"{ss.level} {side}: pedicle target lies behind the entry point")
    diameter = ss.diameter_mm if ss.diameter_mm is not None else default_diameter_mm(
        frame.dims["pedicle_width_mm"]
    )
    if ss.length_mm is not None:
        length = float(ss.length_mm)
        if length > chord - ANTERIOR_MARGIN_MM:
            log.warning(
                "%s %s: requested %.1f mm screw would breach the anterior cortex (chord %.1f mm);"
                " shortened to %.1f mm", ss.level, side, length, chord, chord - ANTERIOR_MARGIN_MM,
            )
            length = chord - ANTERIOR_MARGIN_MM
    else:
        length = default_length_mm(chord)
    return Screw(
        level=ss.level,
        side=side,
        head_lps=entry,
        tip_lps=entry + axis * length,
        diameter_mm=float(diameter),
        tulip_diameter_mm=TULIP_DIAMETER_MM,
        tulip_height_mm=TULIP_HEIGHT_MM,
        material=ss.material,
    )


# ---- SDFs -------------------------------------------------------------------------------
def capped_cone(a: Sequence[float], b: Sequence[float], ra: float, rb: float) -> SDF:
    """Exact SDF of a capped cone (frustum) from ``a`` (radius ``ra``) to ``b`` (``rb``).

    Parameters
    ----------
    a, b : (3,) float
        End centres, LPS mm.
    ra, rb : float
        End radii, mm.

    Returns
    -------
    SDF
        Exact Euclidean signed distance (Inigo Quilez's capped-cone formula).
    """
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    ba = b - a
    baba = float(ba @ ba)
    rba = rb - ra
    k = rba * rba + baba

    def f(p: np.ndarray) -> np.ndarray:
        pa = p - a
        papa = np.einsum("ij,ij->i", pa, pa)
        paba = (pa @ ba) / baba
        x = np.sqrt(np.maximum(papa - paba * paba * baba, 0.0))
        cax = np.maximum(0.0, x - np.where(paba < 0.5, ra, rb))
        cay = np.abs(paba - 0.5) - 0.5
        t = np.clip((rba * (x - ra) + paba * baba) / k, 0.0, 1.0)
        cbx = x - ra - t * rba
        cby = paba - t
        s = np.where((cbx < 0.0) & (cay < 0.0), -1.0, 1.0)
        return s * np.sqrt(np.minimum(cax * cax + cay * cay * baba, cbx * cbx + cby * cby * baba))

    r = max(ra, rb)
    return SDF(f, np.stack([np.minimum(a, b) - r, np.maximum(a, b) + r]))


def screw_sdf(screw: Screw) -> SDF:
    """SDF of a screw: shank cylinder, conical tip and tulip head.

    The shank is a cylinder of ``diameter_mm`` from ``head_lps`` to the cone base, the tip a
    cone of length ``TIP_CONE_FRACTION * diameter`` ending at ``tip_lps`` with a
    :data:`TIP_POINT_RADIUS_MM` point, and the tulip a cylinder of ``tulip_diameter_mm``
    from ``head_lps`` back to ``tulip_top_lps``.  Every point of the solid lies inside the
    recorded solid (shank cylinder head-to-tip + tulip cylinder).
    """
    r = screw.diameter_mm / 2
    cone = min(TIP_CONE_FRACTION * screw.diameter_mm, 0.5 * screw.length_mm)
    base = screw.tip_lps - screw.axis * cone
    parts = [
        cylinder(screw.head_lps, base, r),
        capped_cone(base, screw.tip_lps, r, min(TIP_POINT_RADIUS_MM, r)),
        cylinder(screw.tulip_top_lps, screw.head_lps, screw.tulip_diameter_mm / 2),
    ]
    return union(*parts)


def recorded_screw_sdf(screw: Screw) -> SDF:
    """SDF of the recorded screw solid (shank cylinder head-to-tip + tulip cylinder).

    The reference the phantom's metal is checked against (ground truth for clearance).
    """
    return union(
        cylinder(screw.head_lps, screw.tip_lps, screw.diameter_mm / 2),
        cylinder(screw.tulip_top_lps, screw.head_lps, screw.tulip_diameter_mm / 2),
    )


# ---- rods and cross-links ------------------------------------------------------------------
def rod_centreline(seats: np.ndarray, overhang_mm: float = ROD_OVERHANG_MM,
                   step_mm: float = ROD_STEP_MM) -> np.ndarray:
    """Smooth rod centre line through ordered seats.

    Parameters
    ----------
    seats : (n, 3) float
        Rod seats ordered cranial to caudal, ``n >= 2``.
    overhang_mm : float
        Straight extension beyond the first and last seat along the end tangents.
    step_mm : float
        Approximate spacing of the output samples.

    Returns
    -------
    (m, 3) float
        Polyline that contains every seat as a vertex (a cubic spline with chord-length
        parameter and natural ends for ``n >= 3``, a straight line for ``n == 2``).
    """
    from scipy.interpolate import CubicSpline

    seats = np.asarray(seats, float)
    seg = np.linalg.norm(np.diff(seats, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    total = s[-1]
    n_samp = max(int(np.ceil(total / step_mm)), 1)
    ss = np.union1d(np.linspace(0, total, n_samp + 1), s)
    if len(seats) >= 3:
        cs = CubicSpline(s, seats, bc_type="natural", axis=0)
        mid = cs(ss)
        t0 = cs(0.0, 1)
        t1 = cs(total, 1)
    else:
        mid = seats[0] + (ss / total)[:, None] * (seats[1] - seats[0])
        t0 = t1 = (seats[1] - seats[0]) / total
    t0 = t0 / np.linalg.norm(t0)
    t1 = t1 / np.linalg.norm(t1)
    n_ext = max(int(np.ceil(overhang_mm / step_mm)), 1)
    e = np.linspace(overhang_mm, 0, n_ext + 1)[:-1]
    head = seats[0] - e[:, None] * t0
    tail = seats[-1] + e[::-1][:, None] * t1
    return np.vstack([head, mid, tail])


def _plane_crossing(poly: np.ndarray, point: np.ndarray, normal: np.ndarray) -> np.ndarray | None:
    """First intersection of a polyline (m, 3) with a plane; None if it does not cross."""
    d = (poly - point) @ normal
    idx = np.nonzero(np.sign(d[:-1]) != np.sign(d[1:]))[0]
    if len(idx) == 0:
        return None
    i = idx[np.argmin(np.abs(d[idx]))]
    t = d[i] / (d[i] - d[i + 1])
    return poly[i] + t * (poly[i + 1] - poly[i])


def make_crosslink(level: str, frame: VertebraFrame, rods: Mapping[str, Rod]) -> CrossLink | None:
    """A transverse bar between the two rods at ``level``, arched over the spinous base.

    Parameters
    ----------
    level : str
    frame : VertebraFrame
        Uses ``lamina_centre`` and ``canal_centre``; the bar lies in the plane through the
        canal centre normal to the frame's ``w`` axis.
    rods : dict side -> Rod

    Returns
    -------
    CrossLink or None
        None when a rod does not reach the level.
    """
    pts = {}
    for side in ("left", "right"):
        c = _plane_crossing(rods[side].centreline_lps, frame.landmarks["canal_centre"], frame.w)
        if c is None:
            return None
        pts[side] = c
    mid = (pts["left"] + pts["right"]) / 2
    lam = np.asarray(frame.landmarks["lamina_centre"], float)
    # arch: the apex at the midline clears the lamina/spinous base by a bar radius + margin
    need = (lam - mid) @ frame.v + CROSSLINK_DIAMETER_MM / 2 + CROSSLINK_CLEARANCE_MM
    apex = mid + frame.v * max(need, 0.0)
    bar = np.vstack([pts["left"], apex, pts["right"]])
    return CrossLink(level=level, centreline_lps=bar, diameter_mm=CROSSLINK_DIAMETER_MM,
                     material="titanium", meta={"arch_mm": float(max(need, 0.0))})


# ---- entry point ---------------------------------------------------------------------------
def build_hardware(
    spec: CaseSpec, frames: Mapping[str, VertebraFrame]
) -> tuple[list[Screw], list[Rod], list[CrossLink], list[Structure]]:
    """Screws, rods and cross-links of a case, with their SDF structures.

    Parameters
    ----------
    spec : CaseSpec
        Uses ``spec.surgery`` (screws, rods, rod_diameter_mm, crosslinks).
    frames : dict level -> VertebraFrame

    Returns
    -------
    screws : list of Screw
        In spec order.
    rods : list of Rod
        One per side with at least two screws (when ``spec.surgery.rods``).
    crosslinks : list of CrossLink
    structures : list of Structure
        ``screw_<L>_<side>`` (priority 100), ``rod_<side>`` and ``crosslink_<L>``
        (priority 101); tissue = material.
    """
    surg = spec.surgery
    screws: list[Screw] = []
    structures: list[Structure] = []
    for ss in surg.screws:
        if ss.level not in frames:
            raise PhantomSpecError(f"screw at {ss.level}: no vertebral frame for that level")
        sc = make_screw(ss, frames[ss.level])
        screws.append(sc)
        structures.append(Structure(
            name=screw_label(sc.level, sc.side),
            tissue=sc.material,
            sdf=screw_sdf(sc),
            priority=PRIORITY_SCREW,
            tissue_params={"material": sc.material},
            meta={"kind": "screw", "level": sc.level, "side": sc.side,
                  "diameter_mm": sc.diameter_mm, "length_mm": round(sc.length_mm, 3),
                  "material": sc.material},
        ))
        log.debug("screw %s %s: %.1f x %.1f mm", sc.level, sc.side, sc.diameter_mm, sc.length_mm)

    rods: list[Rod] = []
    if surg.rods:
        for side in ("left", "right"):
            mine = sorted((s for s in screws if s.side == side), key=lambda s: LEVELS.index(s.level))
            if len(mine) < 2:
                continue
            seats = np.array([s.rod_seat_lps for s in mine])
            material = "cobalt_chrome" if all(s.material == "cobalt_chrome" for s in mine) else "titanium"
            rod = Rod(side=side, centreline_lps=rod_centreline(seats),
                      diameter_mm=float(surg.rod_diameter_mm), material=material)
            rods.append(rod)
            structures.append(Structure(
                name=rod_label(side), tissue=material,
                sdf=tube(rod.centreline_lps, rod.diameter_mm / 2), priority=PRIORITY_ROD,
                tissue_params={"material": material},
                meta={"kind": "rod", "side": side, "levels": [s.level for s in mine],
                      "length_mm": round(rod.length_mm, 3)},
            ))

    crosslinks: list[CrossLink] = []
    by_side = {r.side: r for r in rods}
    for level in surg.crosslinks:
        if len(by_side) < 2:
            log.warning("cross-link at %s skipped: it needs a rod on both sides", level)
            continue
        cl = make_crosslink(level, frames[level], by_side)
        if cl is None:
            log.warning("cross-link at %s skipped: the rods do not reach that level", level)
            continue
        crosslinks.append(cl)
        structures.append(Structure(
            name=crosslink_label(level), tissue=cl.material,
            sdf=tube(cl.centreline_lps, cl.diameter_mm / 2), priority=PRIORITY_ROD,
            tissue_params={"material": cl.material},
            meta={"kind": "crosslink", "level": level},
        ))
    log.info("hardware: %d screws, %d rods, %d cross-links", len(screws), len(rods), len(crosslinks))
    return screws, rods, crosslinks, structures
