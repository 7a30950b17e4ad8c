"""Phantom case specification: anatomy, surgery, pathology and imaging options.

A :class:`CaseSpec` is plain data (JSON round-trip with :meth:`CaseSpec.to_dict` /
:meth:`CaseSpec.from_dict`), validated when built.  Presets live in
:mod:`planner.phantom.presets`.  Every default is documented where it is defined; the
anatomical numbers themselves live in :mod:`planner.phantom.morphometry` with sources.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from planner.errors import PhantomSpecError
from planner.labels.registry import LEVELS, SIDES

SCHEMA_VERSION = "1.0"


def _check_level(level: str, what: str) -> None:
    if level not in LEVELS:
        raise PhantomSpecError(f"{what}: unknown level {level!r}; use one of {', '.join(LEVELS)}")


def _check_side(side: str, what: str) -> None:
    if side not in SIDES:
        raise PhantomSpecError(f"{what}: side must be 'left' or 'right', got {side!r}")


@dataclass
class ScrewSpec:
    """One pedicle screw.  ``diameter_mm``/``length_mm`` None = chosen from the pedicle.

    Default sizing (see ``planner.phantom.hardware``): diameter about 80 % of the pedicle
    width (Solitro et al., IJSS 2019, [V] abs) clamped to 4.5-7.5 mm (domain facts), length
    about 80 % of the pedicle-axis chord to the anterior cortex.
    """

    level: str
    side: str
    diameter_mm: float | None = None
    length_mm: float | None = None
    material: str = "titanium"


@dataclass
class FractureSpec:
    """Compression fracture: ``height_loss`` fraction (0-0.8) of the anterior (wedge) or
    central (biconcave) body height; ``crush`` compresses the whole body uniformly."""

    level: str
    height_loss: float = 0.3
    kind: str = "wedge"  # "wedge" | "biconcave" | "crush"


@dataclass
class InfractionSpec:
    """Endplate infraction: a local depression of one endplate."""

    level: str
    endplate: str = "superior"  # "superior" | "inferior"
    depth_mm: float = 3.0
    radius_mm: float = 8.0


@dataclass
class LesionSpec:
    """Lytic lesion: an ellipsoid of tumour inside the body.

    ``offset_mm`` is (u, v, w) from the body centre in the vertebra's frame.
    """

    level: str
    radius_mm: float = 8.0
    offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    breach_posterior: bool = False


@dataclass
class FluidSpec:
    """Posterior fluid collection (seroma or pseudomeningocele) spanning levels."""

    level_from: str
    level_to: str
    kind: str = "seroma"  # "seroma" | "pseudomeningocele"
    width_mm: float = 30.0
    depth_mm: float = 20.0


@dataclass
class SurgerySpec:
    """What was done at operation.

    Attributes
    ----------
    screws : list of ScrewSpec
    rods : bool
        Join screw heads on each side with a rod (one rod per side with >= 2 screws).
    rod_diameter_mm : float
        5.5 mm default: the commonest adult thoracolumbar rod (instruments.md §4b, [S]).
    crosslinks : list of str
        Levels at which a transverse connector joins the rods.
    laminectomy : list of str
        Levels whose lamina and spinous process were removed.
    facetectomy : list of (level, side)
        Removal of the articular processes of the joint *below* ``level`` on ``side``
        (the inferior process of ``level`` and the superior process of the next level).
    vertebrectomy : list of (level, side, fraction)
        Partial vertebrectomy: posterolateral wedge of the body on ``side`` removed,
        ``fraction`` (0-0.6) of the body depth; also removes that pedicle.
    rib_head_resection : list of (level, side)
        Costovertebral resection: rib head and neck, transverse-process tip and the
        lateral pedicle wall of that side (thoracic levels only).
    pediclectomy : list of (level, side)
        Pedicle removed (part of a transpedicular decompression).
    """

    screws: list[ScrewSpec] = field(default_factory=list)
    rods: bool = True
    rod_diameter_mm: float = 5.5
    crosslinks: list[str] = field(default_factory=list)
    laminectomy: list[str] = field(default_factory=list)
    facetectomy: list[tuple[str, str]] = field(default_factory=list)
    vertebrectomy: list[tuple[str, str, float]] = field(default_factory=list)
    rib_head_resection: list[tuple[str, str]] = field(default_factory=list)
    pediclectomy: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class PathologySpec:
    fractures: list[FractureSpec] = field(default_factory=list)
    infractions: list[InfractionSpec] = field(default_factory=list)
    lesions: list[LesionSpec] = field(default_factory=list)
    fluid: list[FluidSpec] = field(default_factory=list)
    osteoporotic: bool = False
    """Lower cancellous HU to 60 (opportunistic-CT osteoporosis threshold is <= 110-160 HU
    at L1, Pickhardt 2013 via morphometry.md §10 [S]) and thin the cortex."""


@dataclass
class ImagingSpec:
    """How the phantom is imaged.

    Attributes
    ----------
    modality : "CT" | "MR"
    spacing_mm : (3,) float
        Voxel size along the grid axes i, j, k.
    margin_mm : float
        Field of view = bounding box of the levels of interest plus this margin in the
        superior-inferior direction; in-plane the FOV covers the body outline.
    fov_mm : (3,) float or None
        Explicit field of view (overrides the automatic one).
    rotation_deg : (3,) float
        Grid orientation: rotations about LPS x, y, z applied to the identity direction
        (oblique acquisitions); (0, 0, 0) = axial LPS.
    left_handed : bool
        Flip the grid's k axis (left-handed direction matrix, as some scanners write).
    noise_hu : float
        Standard deviation of additive noise in CT (HU).  15 HU is typical of a clinical
        abdominal CT at standard dose [U].
    metal_storage : "clip3071" | "clip4095" | "extended"
        12-bit storage clips metal at 3071 HU; some scanners store 4095; extended-scale CT
        keeps titanium's several thousand HU (domain.md facts).
    streaks : bool
        Simulate metal streak artefacts by forward projection and reconstruction.
    mr_weighting : "T1" | "T2"
    supersample : int
        Not used for CT edges (partial volume is analytic from the SDF); kept for MR.
    """

    modality: str = "CT"
    spacing_mm: tuple[float, float, float] = (0.8, 0.8, 0.8)
    margin_mm: float = 20.0
    fov_mm: tuple[float, float, float] | None = None
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    left_handed: bool = False
    noise_hu: float = 15.0
    metal_storage: str = "clip3071"
    streaks: bool = False
    mr_weighting: str = "T2"
    supersample: int = 1


@dataclass
class CaseSpec:
    """A whole phantom case.

    Attributes
    ----------
    name : str
    levels : (str, str)
        First and last vertebra modelled (inclusive), e.g. ("T11", "S1").
    seed : int
        Seeds every random choice: same spec, same phantom, byte for byte.
    sex : "male" | "female"
        Female in-plane dimensions scaled by 0.92 (morphometry.md §10, [U] rule).
    variation : float
        Multiplier on the published SDs for per-patient jitter (0 = the mean anatomy).
    kyphosis_deg, lordosis_deg : float
        Thoracic kyphosis (T1-T12) and lumbar lordosis (L1-S1) Cobb-like angles spread
        over the modelled levels.
    body_fat_mm : float
        Subcutaneous fat thickness (body habitus).
    """

    name: str = "custom"
    levels: tuple[str, str] = ("T12", "S1")
    seed: int = 0
    sex: str = "male"
    variation: float = 1.0
    kyphosis_deg: float = 40.0
    lordosis_deg: float = 45.0
    body_fat_mm: float = 20.0
    surgery: SurgerySpec = field(default_factory=SurgerySpec)
    pathology: PathologySpec = field(default_factory=PathologySpec)
    imaging: ImagingSpec = field(default_factory=ImagingSpec)
    description: str = ""

    def __post_init__(self) -> None:
        self.validate()

    # ---- validation ---------------------------------------------------------------
    def level_list(self) -> list[str]:
        a, b = LEVELS.index(self.levels[0]), LEVELS.index(self.levels[1])
        return list(LEVELS[a : b + 1])

    def validate(self) -> None:
        for lev in self.levels:
            _check_level(lev, "levels")
        if LEVELS.index(self.levels[0]) > LEVELS.index(self.levels[1]):
            raise PhantomSpecError(f"levels must run cranial to caudal, got {self.levels}")
        present = set(self.level_list())

        def need(level: str, what: str) -> None:
            _check_level(level, what)
            if level not in present:
                raise PhantomSpecError(
                    f"{what}: level {level} is outside the modelled levels "
                    f"{self.levels[0]}-{self.levels[1]}; widen 'levels' or drop it"
                )

        if self.sex not in ("male", "female"):
            raise PhantomSpecError(f"sex must be 'male' or 'female', got {self.sex!r}")
        if not 0 <= self.variation <= 3:
            raise PhantomSpecError(f"variation must be in [0, 3], got {self.variation}")
        s = self.surgery
        seen = set()
        for sc in s.screws:
            need(sc.level, "screw")
            _check_side(sc.side, "screw")
            if (sc.level, sc.side) in seen:
                raise PhantomSpecError(f"two screws at {sc.level} {sc.side}")
            seen.add((sc.level, sc.side))
            if sc.diameter_mm is not None and not 3.0 <= sc.diameter_mm <= 9.0:
                raise PhantomSpecError(f"screw diameter {sc.diameter_mm} mm outside 3-9 mm")
            if sc.length_mm is not None and not 20.0 <= sc.length_mm <= 70.0:
                raise PhantomSpecError(f"screw length {sc.length_mm} mm outside 20-70 mm")
            if sc.material not in ("titanium", "cobalt_chrome"):
                raise PhantomSpecError("screw material must be titanium or cobalt_chrome")
        for lev in s.crosslinks + s.laminectomy:
            need(lev, "crosslink/laminectomy")
        for lev, side in s.facetectomy + s.rib_head_resection + s.pediclectomy:
            need(lev, "facetectomy/rib head/pediclectomy")
            _check_side(side, "resection")
        for lev, _side in s.rib_head_resection:
            if not lev.startswith("T"):
                raise PhantomSpecError(f"rib head resection at {lev}: only thoracic levels have ribs")
        for lev, side, frac in s.vertebrectomy:
            need(lev, "vertebrectomy")
            _check_side(side, "vertebrectomy")
            if not 0 < frac <= 0.6:
                raise PhantomSpecError(f"vertebrectomy fraction must be in (0, 0.6], got {frac}")
        p = self.pathology
        for f in p.fractures:
            need(f.level, "fracture")
            if not 0 <= f.height_loss <= 0.8:
                raise PhantomSpecError(f"fracture height_loss must be in [0, 0.8], got {f.height_loss}")
            if f.kind not in ("wedge", "biconcave", "crush"):
                raise PhantomSpecError(f"fracture kind must be wedge, biconcave or crush, got {f.kind!r}")
        for i in p.infractions:
            need(i.level, "infraction")
            if i.endplate not in ("superior", "inferior"):
                raise PhantomSpecError("infraction endplate must be 'superior' or 'inferior'")
        for les in p.lesions:
            need(les.level, "lesion")
        for fl in p.fluid:
            need(fl.level_from, "fluid collection")
            need(fl.level_to, "fluid collection")
            if fl.kind not in ("seroma", "pseudomeningocele"):
                raise PhantomSpecError("fluid kind must be 'seroma' or 'pseudomeningocele'")
        im = self.imaging
        if im.modality not in ("CT", "MR"):
            raise PhantomSpecError(f"imaging modality must be CT or MR, got {im.modality!r}")
        if len(im.spacing_mm) != 3 or min(im.spacing_mm) <= 0:
            raise PhantomSpecError(f"spacing_mm must be three positive numbers, got {im.spacing_mm}")
        if min(im.spacing_mm) < 0.2:
            raise PhantomSpecError("spacing below 0.2 mm is not supported (memory); use >= 0.2 mm")
        if im.metal_storage not in ("clip3071", "clip4095", "extended"):
            raise PhantomSpecError("metal_storage must be clip3071, clip4095 or extended")
        if im.mr_weighting not in ("T1", "T2"):
            raise PhantomSpecError("mr_weighting must be T1 or T2")
        if im.noise_hu < 0:
            raise PhantomSpecError("noise_hu must be >= 0")

    # ---- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["schema_version"] = SCHEMA_VERSION
        return _tuples_to_lists(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaseSpec:
        d = dict(d)
        d.pop("schema_version", None)
        try:
            s = dict(d.pop("surgery", {}))
            surgery = SurgerySpec(
                screws=[ScrewSpec(**x) for x in s.pop("screws", [])],
                facetectomy=[tuple(x) for x in s.pop("facetectomy", [])],
                vertebrectomy=[tuple(x) for x in s.pop("vertebrectomy", [])],
                rib_head_resection=[tuple(x) for x in s.pop("rib_head_resection", [])],
                pediclectomy=[tuple(x) for x in s.pop("pediclectomy", [])],
                **s,
            )
            p = dict(d.pop("pathology", {}))
            pathology = PathologySpec(
                fractures=[FractureSpec(**x) for x in p.pop("fractures", [])],
                infractions=[InfractionSpec(**x) for x in p.pop("infractions", [])],
                lesions=[
                    LesionSpec(**{**x, "offset_mm": tuple(x.get("offset_mm", (0, 0, 0)))})
                    for x in p.pop("lesions", [])
                ],
                fluid=[FluidSpec(**x) for x in p.pop("fluid", [])],
                **p,
            )
            im = dict(d.pop("imaging", {}))
            for k in ("spacing_mm", "fov_mm", "rotation_deg"):
                if im.get(k) is not None:
                    im[k] = tuple(im[k])
            imaging = ImagingSpec(**im)
            if "levels" in d:
                d["levels"] = tuple(d["levels"])
            return cls(surgery=surgery, pathology=pathology, imaging=imaging, **d)
        except TypeError as exc:
            raise PhantomSpecError(f"invalid case specification: {exc}") from exc

    def replace_imaging(self, **changes: Any) -> CaseSpec:
        """Copy with imaging options changed (validated)."""
        d = self.to_dict()
        d["imaging"].update({k: (list(v) if isinstance(v, tuple) else v) for k, v in changes.items()})
        return CaseSpec.from_dict(d)


def _tuples_to_lists(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _tuples_to_lists(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_tuples_to_lists(v) for v in x]
    return x
