"""Solver settings: margins, angle limits, search density, score weights, procedure policy.

Every value is a documented, overridable default.  Marks follow ``docs/instruments.md`` (the
project's instrument and safety reference):

* **[S]** derived from a sourced figure,
* **[U]** a design choice with no published value -- a *setting*, to be reviewed per site.

No published minimum distance exists between a vertebroplasty/kyphoplasty needle and the
thecal sac, nerve roots, pleura or aorta (instruments.md 5b, "search negative").  The
defaults below follow the derived suggestion of instruments.md 5b: needle radius plus
about 2 mm, the Gertzbein-Robbins 2 mm breach step (5a) and the ~2 mm registration /
respiration error (5b).  Margins are measured from the needle's *outer surface* (the
needle radius is added by the solver) to the structure's surface.

Usage::

    from planner.solve.config import SolverOptions
    opts = SolverOptions().replace(margins={"canal": 3.0}, max_tilt_deg=50)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from planner.errors import SolverError

#: Obstacle classes, in reporting order.  Each registry structure maps to one class
#: (see :func:`planner.solve.scene.structure_class`).
OBSTACLE_CLASSES: tuple[str, ...] = (
    "hardware",  # pedicle screws (shank + tulip), rods, cross-links, other metal
    "canal",  # spinal canal, thecal sac, cord (also where posterior elements were resected)
    "nerve_root",  # exiting roots in the foramina
    "lung_pleura",  # lungs and pleura
    "vessel",  # aorta, vena cava, iliac arteries
    "fluid",  # seroma, pseudomeningocele, other collections
    "disc",  # intervertebral discs (an endplate crossing reaches the disc)
    "other_bone",  # vertebrae other than the target level
    "rib",  # ribs (thoracic); the parapedicular route passes between rib head and pedicle
)

#: Default clearance margins (mm) between needle surface and structure surface.
DEFAULT_MARGINS_MM: dict[str, float] = {
    # instruments.md 5b planner implication: ~2 mm registration/respiration error [S].
    "hardware": 2.0,
    # 2 mm medial-breach step (Gertzbein-Robbins grade I/II, instruments.md 5a) [S].
    "canal": 2.0,
    # Lumbar roots lie 2.4-9.6 mm lateral to the pedicle (instruments.md 5b) [S]: 2 mm.
    "nerve_root": 2.0,
    # No published value; same 2 mm error budget (instruments.md 5b) [S].
    "lung_pleura": 2.0,
    "vessel": 2.0,
    # Design choice [U].
    "fluid": 2.0,
    # An endplate is ~1 mm of cortex; the needle must not reach the disc: 1 mm [U].
    "disc": 1.0,
    # Neighbouring vertebrae: the needle must not touch them: 1 mm [U].
    "other_bone": 1.0,
    # Ribs: touching is acceptable in the costovertebral corridor, crossing is not: 0 mm [U].
    "rib": 0.0,
}


@dataclass(frozen=True)
class SolverOptions:
    """All solver settings (lengths in mm, angles in degrees).

    Attributes
    ----------
    margins : dict
        Class -> clearance margin (mm), see :data:`DEFAULT_MARGINS_MM`.
    target_margin_mm : float
        Needle tip distance from the body's outer surface (anterior / lateral cortex and
        endplates).  3 mm [U] (AO kyphoplasty step "do not breach the anterior cortex",
        instruments.md 3 [V], distance a design choice).
    target_u_fraction, target_v_range, target_w_fraction : floats
        Where targets are sampled, in the level's body frame normalised by the body's half
        width (u, left +), half depth (v, posterior +) and half height (w, superior +).
        Anterior and middle thirds: v in [-0.9, 0.33]; paramedian |u| <= 0.45; mid height
        |w| <= 0.45 [U].
    target_grid : (nu, nv, nw)
        Number of target samples along u, v, w per level.
    alpha_range_deg : (lo, hi)
        Axial angle of the needle from the sagittal plane, positive when the skin entry is
        lateral to the target on the approach side.  Transpedicular lumbar paths are
        10-20 deg, thoracic up to 35 deg (instruments.md 6, [V]/[S]); parapedicular and
        costotransverse paths are steeper: -10 .. 60 [U].
    beta_range_deg : (lo, hi)
        Cranio-caudal angle (positive: skin entry cranial to the target).  Extrapedicular
        superior/inferior routes need steep angles: -55 .. 55 [U].
    coarse_step_deg, fine_step_deg : float
        Direction sampling of the coarse search and of the refinement around the best
        candidates of each route.
    max_tilt_deg : float
        Largest angle between the needle and the vertical (the patient lies prone; vertical
        is the posterior direction).  60 deg [U]: a needle steeper than that cannot be held
        steady on the skin or seen end-on by the C-arm.
    max_craniocaudal_deg : float
        Largest cranio-caudal angle relative to the table.  45 deg [U].
    skin_allowance_mm : float
        Needle length that must stay outside the skin to hold it (hub and fingers): 15 mm
        [U].  Skin-to-target depth must be <= usable length - allowance.
    pedicle_min_inside_mm : float
        A path is *transpedicular* when its axis runs at least this long inside the pedicle:
        6 mm [U].
    field_tolerance_mm : float
        Bound on the distance-field error (half-voxel boundary placement and trilinear
        interpolation).  Stage 1 passes a candidate only when its sampled clearance exceeds
        the requirement by this much; those within +/- tolerance are *borderline* and
        decided by the exact check.  Default 1.0 mm; raised to the field grid's half
        diagonal when that is larger.
    field_spacing_mm : float
        Finest spacing of the stage-1 fields; finer label grids are strided by the integer
        factor that keeps spacing >= this (obstacle masks max-pooled).  2.0 mm.
    step_min_mm : float
        Smallest step of the sphere-traced clearance search; the sampled minimum is within
        ``step_min_mm / 2`` of the true field minimum (1-Lipschitz field).  0.5 mm.
    shortlist_per_route : int
        Candidates per (level, side, route) that go to the exact check and into the plan.
    needle, kyphoplasty, curved : str
        Instrument names from :mod:`planner.instruments`.
    weights : dict
        Score weights (sum need not be 1): ``clearance``, ``length``, ``entry_angle``,
        ``coverage``, ``kyphoplasty``, ``visibility`` (the viewer fills visibility; weight
        0 until then).
    clearance_saturation_mm : float
        Clearance excess over the margin at which the clearance score saturates (5 mm [U]).
    procedure : str
        ``"auto"`` (the domain decision rule) or a forced choice: ``"kyphoplasty"``,
        ``"vertebroplasty_curved"``, ``"vertebroplasty_straight"``.
    skin_entry_separation_mm : float
        Multi-level plans: least distance between two skin entries (20 mm [U]).
    needle_separation_mm : float
        Multi-level plans: least distance between two needle axes, beyond both radii
        (2 mm [U]).
    visibility_top_n : int
        With ``weights["visibility"] > 0``: how many of each level's best candidates (plus
        the recommended ones) get a C-arm view search over 629 poses
        (:func:`planner.fluoro.views.visibility_score`, 0.1-1 s each on the 2-core benchmark
        machine, depending on its load) whose best view's visibility enters the score.
        3 [U].
    coaxial_guide : str or None
        Coaxial technique: a thinner guide needle (an instrument name, e.g. ``"needle_13g"``)
        is placed first along the planned axis to the cannula tip, and the working cannula
        follows over it (domain.md, seed case L5).  ``None`` (default): direct access.  When
        set, each candidate's verdict carries the guide's own check (clearance of the
        cannula part at the guide's radius, length) and a recommendation lists the steps.
    bone_tamp_lengths_mm : tuple of float
        Bone-tamp (balloon) lengths available for kyphoplasty: the Kyphon 10, 15 and 20 mm
        sizes (instruments.md 3 [V]).  A kyphoplasty access is feasible when its straight
        channel beyond the cannula tip holds the shortest of them plus the cannula's
        ``min_channel_margin_mm``; the plan names the longest that fits.
    max_candidates : int
        Memory guard on the number of candidates of one level (raise for denser search).
    """

    margins: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MARGINS_MM))
    target_margin_mm: float = 3.0
    target_u_fraction: float = 0.45
    target_v_range: tuple[float, float] = (-0.9, 0.33)
    target_w_fraction: float = 0.45
    target_grid: tuple[int, int, int] = (5, 5, 3)
    alpha_range_deg: tuple[float, float] = (-10.0, 60.0)
    beta_range_deg: tuple[float, float] = (-55.0, 55.0)
    coarse_step_deg: float = 5.0
    fine_step_deg: float = 1.25
    max_tilt_deg: float = 60.0
    max_craniocaudal_deg: float = 45.0
    skin_allowance_mm: float = 15.0
    pedicle_min_inside_mm: float = 6.0
    field_tolerance_mm: float = 1.0
    field_spacing_mm: float = 2.0
    step_min_mm: float = 0.5
    shortlist_per_route: int = 5
    needle: str = "needle_11g"
    kyphoplasty: str = "kyphoplasty_cannula"
    curved: str = "curved_needle"
    weights: dict[str, float] = field(
        default_factory=lambda: {
            "clearance": 0.35,
            "length": 0.10,
            "entry_angle": 0.15,
            "coverage": 0.25,
            "kyphoplasty": 0.15,
            "visibility": 0.0,
        }
    )
    clearance_saturation_mm: float = 5.0
    procedure: str = "auto"
    skin_entry_separation_mm: float = 20.0
    needle_separation_mm: float = 2.0
    visibility_top_n: int = 3
    coaxial_guide: str | None = None
    bone_tamp_lengths_mm: tuple[float, ...] = (10.0, 15.0, 20.0)
    max_candidates: int = 2_000_000

    def __post_init__(self) -> None:
        m = dict(DEFAULT_MARGINS_MM)
        for k, v in dict(self.margins).items():
            if k not in DEFAULT_MARGINS_MM:
                raise SolverError(
                    f"unknown margin class {k!r}; use one of {', '.join(OBSTACLE_CLASSES)}",
                    code="PLN-SOL-002",
                )
            if not (float(v) >= 0.0):
                raise SolverError(f"margin {k!r} must be >= 0 mm, got {v!r}", code="PLN-SOL-002")
            m[k] = float(v)
        object.__setattr__(self, "margins", m)
        w = {"clearance": 0.0, "length": 0.0, "entry_angle": 0.0, "coverage": 0.0, "kyphoplasty": 0.0, "visibility": 0.0}
        for k, v in dict(self.weights).items():
            if k not in w:
                raise SolverError(f"unknown score weight {k!r}; use one of {', '.join(w)}", code="PLN-SOL-002")
            if not (float(v) >= 0.0):
                raise SolverError(f"weight {k!r} must be >= 0, got {v!r}", code="PLN-SOL-002")
            w[k] = float(v)
        object.__setattr__(self, "weights", w)
        if self.procedure not in ("auto", "kyphoplasty", "vertebroplasty_curved", "vertebroplasty_straight"):
            raise SolverError(
                f"procedure {self.procedure!r} must be auto, kyphoplasty, vertebroplasty_curved or "
                "vertebroplasty_straight",
                code="PLN-SOL-002",
            )
        for name in ("coarse_step_deg", "fine_step_deg", "step_min_mm", "field_tolerance_mm", "max_tilt_deg"):
            if not (float(getattr(self, name)) > 0):
                raise SolverError(f"{name} must be > 0, got {getattr(self, name)!r}", code="PLN-SOL-002")
        if self.coaxial_guide is not None:
            from planner.instruments import INSTRUMENTS

            if self.coaxial_guide not in INSTRUMENTS or getattr(INSTRUMENTS[self.coaxial_guide], "kind", "") == "curved_needle":
                raise SolverError(
                    f"coaxial_guide {self.coaxial_guide!r} is not a straight needle; use e.g. needle_13g",
                    code="PLN-SOL-002",
                )
        if not self.bone_tamp_lengths_mm or any(not (float(x) > 0) for x in self.bone_tamp_lengths_mm):
            raise SolverError(f"bone_tamp_lengths_mm must be positive lengths, got {self.bone_tamp_lengths_mm}", code="PLN-SOL-002")
        object.__setattr__(self, "bone_tamp_lengths_mm", tuple(sorted(float(x) for x in self.bone_tamp_lengths_mm)))
        if any(int(n) < 1 for n in self.target_grid):
            raise SolverError(f"target_grid entries must be >= 1, got {self.target_grid}", code="PLN-SOL-002")

    def replace(self, **changes: Any) -> SolverOptions:
        """A copy with ``changes``; ``margins`` / ``weights`` dicts update the defaults."""
        if "margins" in changes:
            changes["margins"] = {**self.margins, **changes["margins"]}
        if "weights" in changes:
            changes["weights"] = {**self.weights, **changes["weights"]}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SolverOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise SolverError(f"unknown solver option(s) {bad}", code="PLN-SOL-002")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)
