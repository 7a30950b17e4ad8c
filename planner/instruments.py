"""Instrument specifications: straight needles, kyphoplasty cannula + bone tamp, curved needle.

Every dimension is a documented, overridable dataclass field with its source in
``docs/instruments.md`` (the project's instrument reference; section numbers below refer
to it) and its verification mark:

* **[V]** read in a primary source or a manufacturer document,
* **[S]** secondary source or derived from a [V] figure,
* **[U]** unverified recollection -- a *per-device setting*: check the IFU of the device in
  use and override it (``get_instrument("curved_needle", arc_radius_mm=18.0)``).

All lengths are millimetres.  Geometry helpers work in patient LPS millimetres.

Registry
--------
:data:`INSTRUMENTS` maps a name to a default instance (``"needle_11g"``, ``"needle_13g"``,
``"kyphoplasty_cannula"``, ``"kyphoplasty_cannula_express"``, ``"curved_needle"`` ...);
:func:`get_instrument` returns a copy with overrides applied.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from planner.errors import GeometryError, PlannerError

log = logging.getLogger(__name__)

#: Gauge -> nominal outer diameter (mm), regular-wall hypodermic tubing.
#: instruments.md section 1a (Wikipedia needle gauge chart, ISO 9626-style nominal set) [S];
#: tolerance +/-0.025 mm for 7-14 G [S].
GAUGE_OD_MM: dict[int, float] = {
    8: 4.191,
    10: 3.404,
    11: 3.048,
    12: 2.769,
    13: 2.413,
    14: 2.108,
    15: 1.829,
}

#: Gauge -> nominal inner diameter (mm), *regular* wall; thin-wall bone needles have a larger
#: lumen.  instruments.md section 1a [S].
GAUGE_ID_MM: dict[int, float] = {
    8: 3.429,
    10: 2.692,
    11: 2.388,
    12: 2.159,
    13: 1.803,
    14: 1.600,
    15: 1.372,
}

#: Usual usable needle lengths on the market (mm): 10 cm, 12 cm, 15 cm.  instruments.md
#: section 1b ("Usual needle lengths", no catalogue read) [U]; 11 G 120 mm VP needle [V] abs
#: (Moon et al. 2022); 11 G 10 cm biopsy needle [S].
NEEDLE_LENGTHS_MM: tuple[float, ...] = (100.0, 120.0, 150.0)

#: Kyphon inflatable bone tamp balloon lengths (mm): 10/15/20 (Xpander, Xpander II) and
#: 10/15 (Express).  instruments.md section 3 (Medtronic IFU M708348B151E, M708348B164) [V].
BONE_TAMP_LENGTHS_MM: tuple[float, ...] = (10.0, 15.0, 20.0)


class InstrumentError(PlannerError, KeyError):
    """Unknown instrument name or invalid instrument parameter."""

    code = "PLN-INS-001"

    def __str__(self) -> str:  # KeyError would quote the message
        return PlannerError.__str__(self)


def gauge_outer_diameter_mm(gauge: int) -> float:
    """Nominal outer diameter (mm) of a needle gauge (instruments.md section 1a [S]).

    Parameters
    ----------
    gauge : int
        Needle gauge (8, 10-15).

    Returns
    -------
    float
        Outer diameter in mm.
    """
    try:
        return GAUGE_OD_MM[int(gauge)]
    except KeyError:
        raise InstrumentError(
            f"gauge {gauge} G is not in the gauge table; known gauges: "
            f"{', '.join(str(g) for g in sorted(GAUGE_OD_MM))}. Pass od_mm explicitly.",
            details={"gauge": gauge},
        ) from None


def gauge_inner_diameter_mm(gauge: int) -> float:
    """Nominal regular-wall inner diameter (mm) of a needle gauge (instruments.md 1a [S])."""
    try:
        return GAUGE_ID_MM[int(gauge)]
    except KeyError:
        raise InstrumentError(
            f"gauge {gauge} G is not in the gauge table", details={"gauge": gauge}
        ) from None


# ---- specifications ---------------------------------------------------------------------
@dataclass(frozen=True)
class StraightNeedle:
    """A straight vertebroplasty / bone-access needle (cannula with trocar stylet).

    Attributes
    ----------
    name : str
        Registry name.
    gauge : int
        Needle gauge; 11 G and 13 G are the usual VP sizes (instruments.md 1b [S]/[V] abs).
    usable_length_mm : float
        Length of the shaft that can enter the patient.  Default 120 mm: 11 G 120 mm VP
        needle, instruments.md 1b [V] abs; 100/150 mm also usual [U].
    od_mm : float or None
        Outer diameter; ``None`` takes the gauge table (instruments.md 1a [S]).
    id_mm : float or None
        Lumen diameter; ``None`` takes the regular-wall value (instruments.md 1a [S]; thin
        wall bone needles are larger).
    tip : str
        ``"trocar"`` (diamond) or ``"bevel"``; both sold widely (instruments.md 1c [U]).
    tip_length_mm : float or None
        Length of the sharpened tip; ``None`` = 1.5 x OD (modelling choice, not sourced).
    hub_diameter_mm, hub_length_mm : float
        Handle / Luer hub drawn outside the skin (modelling choice, not sourced).
    """

    name: str = "needle_11g"
    gauge: int = 11
    usable_length_mm: float = 120.0
    od_mm: float | None = None
    id_mm: float | None = None
    tip: str = "trocar"
    tip_length_mm: float | None = None
    hub_diameter_mm: float = 14.0
    hub_length_mm: float = 25.0
    kind: str = field(default="straight_needle", init=False)

    def __post_init__(self) -> None:
        if self.od_mm is None:
            object.__setattr__(self, "od_mm", gauge_outer_diameter_mm(self.gauge))
        if self.id_mm is None:
            object.__setattr__(self, "id_mm", GAUGE_ID_MM.get(int(self.gauge), 0.78 * float(self.od_mm)))
        if self.tip_length_mm is None:
            object.__setattr__(self, "tip_length_mm", 1.5 * float(self.od_mm))
        _check_positive(self, ("usable_length_mm", "od_mm", "id_mm", "tip_length_mm"))
        if self.id_mm >= self.od_mm:
            raise InstrumentError(f"{self.name}: id_mm {self.id_mm} must be < od_mm {self.od_mm}")

    @property
    def outer_diameter_mm(self) -> float:
        return float(self.od_mm)

    @property
    def radius_mm(self) -> float:
        """Outer radius (mm): the value for clearance checks (instruments.md 1a note)."""
        return 0.5 * float(self.od_mm)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(frozen=True)
class BoneTamp:
    """An inflatable bone tamp (kyphoplasty balloon).

    Attributes
    ----------
    balloon_length_mm : float
        Working length between the radiopaque markers: 10, 15 or 20 mm (Kyphon Xpander /
        Xpander II / Express IFUs, instruments.md 3 [V]).  Default 15 mm.
    inflated_diameter_mm : float
        Diameter at the planned inflation.  **[U]**: no source in instruments.md gives it;
        default 10 mm is a modelling choice.  Set it per device and per inflation volume.
    shaft_od_mm : float
        Catheter / deflated balloon outer diameter.  **[U]**: must pass the cannula lumen;
        default 2.8 mm (fits a ~3.3-4.2 mm access cannula, instruments.md 3 [S]/[U]).
    max_volume_ml : float
        Maximum inflation volume; commonly quoted 3-4 mL for 10-15 mm balloons (instruments.md
        3 [U]).  Informative only.
    max_pressure_psi : float
        Commonly quoted 400 psi (Xpander) (instruments.md 3 [U]).  Informative only.
    """

    balloon_length_mm: float = 15.0
    inflated_diameter_mm: float = 10.0
    shaft_od_mm: float = 2.8
    max_volume_ml: float = 4.0
    max_pressure_psi: float = 400.0

    def __post_init__(self) -> None:
        _check_positive(self, ("balloon_length_mm", "inflated_diameter_mm", "shaft_od_mm"))
        if self.balloon_length_mm not in BONE_TAMP_LENGTHS_MM:
            log.info(
                "bone tamp length %.1f mm is not a Kyphon size %s (instruments.md 3 [V])",
                self.balloon_length_mm,
                BONE_TAMP_LENGTHS_MM,
            )

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(frozen=True)
class KyphoplastyCannula:
    """A kyphoplasty working (access) cannula with its inflatable bone tamp.

    Attributes
    ----------
    name : str
        Registry name.
    od_mm : float
        Outer diameter.  Standard system ~4.2 mm is commonly quoted but unconfirmed
        (instruments.md 3, **[U]**); the Express ("Size 2") system is 3.3 mm (Interventional
        News 2009, instruments.md 3 [S]); the implied standard system >= ~4.1 mm [S].
    id_mm : float
        Lumen.  **[U]** (IFU specification tables not read, instruments.md 7.2); default
        ``od_mm - 0.8`` mm wall allowance (modelling choice).
    usable_length_mm : float
        Default 120 mm; bone-entry needles for kyphoplasty 10-15 cm (instruments.md 1b [S]).
    access_size : int
        Kyphon access size: 3 = standard, 2 = Express (instruments.md 3 [S] inference).
    tamp : BoneTamp
        The bone tamp used through it.
    min_channel_margin_mm : float
        Straight cancellous channel beyond the cannula tip must be at least balloon length +
        this margin (instruments.md 3, "Minimum straight channel", derived [S]); margin
        value is a design choice, default 3 mm.
    hub_diameter_mm, hub_length_mm : float
        Handle drawn outside the skin (modelling choice).
    """

    name: str = "kyphoplasty_cannula"
    od_mm: float = 4.2
    id_mm: float | None = None
    usable_length_mm: float = 120.0
    access_size: int = 3
    tamp: BoneTamp = field(default_factory=BoneTamp)
    min_channel_margin_mm: float = 3.0
    hub_diameter_mm: float = 16.0
    hub_length_mm: float = 25.0
    kind: str = field(default="kyphoplasty_cannula", init=False)

    def __post_init__(self) -> None:
        if self.id_mm is None:
            object.__setattr__(self, "id_mm", float(self.od_mm) - 0.8)
        _check_positive(self, ("od_mm", "id_mm", "usable_length_mm"))
        if self.id_mm >= self.od_mm:
            raise InstrumentError(f"{self.name}: id_mm {self.id_mm} must be < od_mm {self.od_mm}")

    @property
    def radius_mm(self) -> float:
        return 0.5 * float(self.od_mm)

    @property
    def min_straight_channel_mm(self) -> float:
        """Straight channel needed beyond the cannula tip (balloon length + margin) [S]."""
        return float(self.tamp.balloon_length_mm + self.min_channel_margin_mm)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(frozen=True)
class CurvedNeedle:
    """A curved (pre-shaped nitinol) needle advanced out of a straight access cannula.

    No verified curve radius, reach or gauge exists for any curved device (AVAflex,
    Osseoflex SN, StabiliT; instruments.md section 2 and 7.1): **every geometric value here is
    [U] and a per-device setting** to fill from the IFU.

    Attributes
    ----------
    name : str
        Registry name.
    cannula : StraightNeedle
        Straight access cannula; default 11 G ("~11 G access cannula", instruments.md 2 [U]).
    stylet_gauge : int
        Gauge of the curved nitinol needle; default 13 G ("13 G-class", instruments.md 2 [U]).
    stylet_od_mm : float or None
        ``None`` takes the gauge table value (instruments.md 1a [S]).
    arc_radius_mm : float
        Radius of the pre-formed curve.  Not found in any source (instruments.md 2 [U]);
        default 20 mm is a modelling choice consistent with a 20-30 mm reach.
    max_extension_mm : float
        Maximum arc length beyond the cannula tip; "roughly 2-3 cm" (instruments.md 2 [U]);
        default 25 mm.
    default_bend : str
        Planner hint for the bend direction relative to the access (``"medial"`` = toward
        the midline, the usual aim of a unipedicular curved approach, instruments.md 2 /
        domain.md).  The geometry helpers take an explicit direction vector.
    """

    name: str = "curved_needle"
    cannula: StraightNeedle = field(default_factory=lambda: StraightNeedle(name="curved_needle_cannula"))
    stylet_gauge: int = 13
    stylet_od_mm: float | None = None
    arc_radius_mm: float = 20.0
    max_extension_mm: float = 25.0
    default_bend: str = "medial"
    kind: str = field(default="curved_needle", init=False)

    def __post_init__(self) -> None:
        if self.stylet_od_mm is None:
            object.__setattr__(self, "stylet_od_mm", gauge_outer_diameter_mm(self.stylet_gauge))
        _check_positive(self, ("stylet_od_mm", "arc_radius_mm", "max_extension_mm"))
        if self.stylet_od_mm > self.cannula.id_mm + 0.3:
            log.warning(
                "%s: stylet OD %.3f mm is larger than the cannula lumen %.3f mm; check the IFU",
                self.name,
                self.stylet_od_mm,
                self.cannula.id_mm,
            )

    @property
    def radius_mm(self) -> float:
        """Outer radius of the curved part (mm)."""
        return 0.5 * float(self.stylet_od_mm)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


Instrument = StraightNeedle | KyphoplastyCannula | CurvedNeedle


def _check_positive(obj: Any, names: tuple[str, ...]) -> None:
    for n in names:
        v = getattr(obj, n)
        if not (np.isfinite(v) and v > 0):
            raise InstrumentError(f"{type(obj).__name__}.{n} must be a positive number, got {v!r}")


def _to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = v.to_dict() if hasattr(v, "to_dict") else v
    return out


def _build_registry() -> dict[str, Instrument]:
    reg: dict[str, Instrument] = {
        "needle_11g": StraightNeedle(name="needle_11g", gauge=11),
        "needle_13g": StraightNeedle(name="needle_13g", gauge=13),
        "kyphoplasty_cannula": KyphoplastyCannula(),
        "kyphoplasty_cannula_express": KyphoplastyCannula(
            name="kyphoplasty_cannula_express", od_mm=3.3, access_size=2
        ),
        "curved_needle": CurvedNeedle(),
    }
    for g in (11, 13, 15):
        for L in NEEDLE_LENGTHS_MM:
            name = f"needle_{g}g_{int(L)}mm"
            reg[name] = StraightNeedle(name=name, gauge=g, usable_length_mm=L)
    return reg


#: Named default instruments.  Values and sources: see each dataclass.
INSTRUMENTS: dict[str, Instrument] = _build_registry()


def get_instrument(name: str, **overrides: Any) -> Instrument:
    """Return the named default instrument, optionally with fields overridden.

    Parameters
    ----------
    name : str
        A key of :data:`INSTRUMENTS`.
    **overrides
        Dataclass fields to replace, e.g. ``arc_radius_mm=18.0`` from the device IFU.  For a
        straight needle, overriding ``gauge`` recomputes ``od_mm``/``id_mm`` unless given.

    Returns
    -------
    StraightNeedle or KyphoplastyCannula or CurvedNeedle
    """
    try:
        base = INSTRUMENTS[name]
    except KeyError:
        raise InstrumentError(
            f"unknown instrument {name!r}; known: {', '.join(sorted(INSTRUMENTS))}",
            details={"name": name},
        ) from None
    if not overrides:
        return base
    fields = {f.name for f in dataclasses.fields(base) if f.init}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise InstrumentError(f"{name}: unknown parameter(s) {bad}; valid: {sorted(fields)}")
    if isinstance(base, StraightNeedle) and "gauge" in overrides:
        overrides.setdefault("od_mm", None)
        overrides.setdefault("id_mm", None)
        overrides.setdefault("tip_length_mm", None)
    return dataclasses.replace(base, **overrides)


# ---- geometry -----------------------------------------------------------------------------
def _unit(v: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(v, dtype=float).reshape(3)
    n = float(np.linalg.norm(a))
    if not np.isfinite(n) or n < 1e-12:
        raise GeometryError(f"{what} must be a non-zero 3-vector, got {a}", code="PLN-GEO-005")
    return a / n


def bend_frame(direction: np.ndarray, bend_direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit axis and the unit bend vector orthogonal to it.

    Parameters
    ----------
    direction : (3,) float
        Cannula axis (toward the tip).
    bend_direction : (3,) float
        Desired bend; its component orthogonal to ``direction`` is used.

    Returns
    -------
    d, b : (3,) float
        Orthonormal axis and bend vectors.
    """
    d = _unit(direction, "direction")
    b = np.asarray(bend_direction, dtype=float).reshape(3)
    b = b - (b @ d) * d
    nb = float(np.linalg.norm(b))
    if nb < 1e-9:
        raise GeometryError(
            "bend_direction is parallel to the cannula direction; give a vector with a "
            "component perpendicular to it",
            code="PLN-GEO-005",
        )
    return d, b / nb


def curved_needle_centreline(
    entry: np.ndarray,
    direction: np.ndarray,
    bend_direction: np.ndarray,
    radius_mm: float,
    extension_mm: float,
    n: int = 50,
) -> np.ndarray:
    """Centre line of a pre-curved needle leaving a straight cannula, as a circular arc.

    The arc starts at ``entry`` (the cannula tip) tangent to ``direction`` and bends toward
    ``bend_direction`` with constant radius; ``extension_mm`` is its arc length.

    Parameters
    ----------
    entry : (3,) float
        Cannula tip, LPS mm (where the curved part leaves the cannula).
    direction : (3,) float
        Cannula axis toward the tip (need not be unit).
    bend_direction : (3,) float
        Direction to bend toward; only the part orthogonal to ``direction`` is used.
    radius_mm : float
        Arc radius (> 0); ``np.inf`` gives a straight extension.
    extension_mm : float
        Arc length beyond the cannula tip (>= 0, at most a half circle ``pi * radius_mm``).
    n : int
        Number of points (>= 2).

    Returns
    -------
    (n, 3) float
        Points from ``entry`` to the needle tip, equally spaced in arc length.
    """
    p0 = np.asarray(entry, dtype=float).reshape(3)
    d, b = bend_frame(direction, bend_direction)
    if n < 2:
        raise ValueError("n must be >= 2")
    if not radius_mm > 0:
        raise InstrumentError(f"radius_mm must be > 0, got {radius_mm}")
    if extension_mm < 0:
        raise InstrumentError(f"extension_mm must be >= 0, got {extension_mm}")
    s = np.linspace(0.0, float(extension_mm), int(n))
    if np.isinf(radius_mm):
        return p0 + s[:, None] * d
    if extension_mm > np.pi * radius_mm + 1e-9:
        raise InstrumentError(
            f"extension {extension_mm} mm exceeds a half circle of radius {radius_mm} mm",
            details={"extension_mm": extension_mm, "radius_mm": radius_mm},
        )
    th = s / float(radius_mm)
    return p0 + radius_mm * (np.sin(th)[:, None] * d + (1.0 - np.cos(th))[:, None] * b)


def curved_needle_tip(
    entry: np.ndarray,
    direction: np.ndarray,
    bend_direction: np.ndarray,
    radius_mm: float,
    extension_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Tip position (3,) and unit tip tangent (3,) of :func:`curved_needle_centreline`."""
    d, b = bend_frame(direction, bend_direction)
    p = curved_needle_centreline(entry, d, b, radius_mm, extension_mm, n=2)[-1]
    if np.isinf(radius_mm):
        return p, d
    th = extension_mm / radius_mm
    return p, np.cos(th) * d + np.sin(th) * b
