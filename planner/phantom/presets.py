"""Named phantom presets mirroring the clinical scenarios of the domain notes.

Each preset is a function returning a fresh :class:`CaseSpec`; :data:`PRESETS` maps the
CLI names to them, and the CLI's ``--preset`` choices come from this table.
"""

from __future__ import annotations

from collections.abc import Callable

from planner.phantom.spec import (
    CaseSpec,
    FluidSpec,
    FractureSpec,
    InfractionSpec,
    PathologySpec,
    ScrewSpec,
    SurgerySpec,
)


def _bilateral(*levels: str) -> list[ScrewSpec]:
    return [ScrewSpec(lev, side) for lev in levels for side in ("left", "right")]


def case_example() -> CaseSpec:
    """The seed series' case example.

    L3-L5 fixation extended to T12 (screws T12, L1, L2, L3 and L5 bilateral, L4 right only),
    left L4-L5 facetectomy, L4 compression fracture with endplate infractions at L3
    (inferior) and L5 (superior).  Expected practice: L4 kyphoplasty through the free left
    pedicle; L3 and L5 (bilateral screws) curved-needle vertebroplasty by a parapedicular or
    extrapedicular route.
    """
    return CaseSpec(
        name="case_example",
        levels=("T11", "S1"),
        seed=1,
        sex="female",
        surgery=SurgerySpec(
            screws=_bilateral("T12", "L1", "L2", "L3", "L5") + [ScrewSpec("L4", "right")],
            rods=True,
            facetectomy=[("L4", "left")],
        ),
        pathology=PathologySpec(
            fractures=[FractureSpec("L4", height_loss=0.35, kind="wedge")],
            infractions=[
                InfractionSpec("L3", endplate="inferior", depth_mm=3.0),
                InfractionSpec("L5", endplate="superior", depth_mm=3.0),
            ],
            osteoporotic=True,
        ),
        description=(
            "L3-L5 fixation extended to T12; left L4-L5 facetectomy; L4 compression fracture "
            "with endplate infractions at L3 and L5; bilateral screws at L3 and L5, L4 right only."
        ),
    )


def t11_l3_laminectomy() -> CaseSpec:
    """T11-L3 fixation skipping L1, L1 laminectomy (separation surgery) and L1 collapse."""
    return CaseSpec(
        name="t11_l3_laminectomy",
        levels=("T10", "L4"),
        seed=2,
        sex="male",
        surgery=SurgerySpec(
            screws=_bilateral("T11", "T12", "L2", "L3"),
            rods=True,
            crosslinks=["T12"],
            laminectomy=["L1"],
            facetectomy=[("T12", "left"), ("T12", "right")],
        ),
        pathology=PathologySpec(
            fractures=[FractureSpec("L1", height_loss=0.5, kind="crush")],
        ),
        description="T11-L3 fixation, L1 laminectomy with bilateral T12-L1 facetectomy, L1 collapse (50 %).",
    )


def midthoracic_costovertebral() -> CaseSpec:
    """Mid-thoracic fixation (T4-T8, skipping T6) with a resected left T6 costovertebral
    junction, T6 laminectomy and a posterior seroma."""
    return CaseSpec(
        name="midthoracic_costovertebral",
        levels=("T3", "T9"),
        seed=3,
        sex="male",
        kyphosis_deg=45.0,
        surgery=SurgerySpec(
            screws=_bilateral("T4", "T5", "T7", "T8"),
            rods=True,
            laminectomy=["T6"],
            rib_head_resection=[("T6", "left")],
            vertebrectomy=[("T6", "left", 0.3)],
        ),
        pathology=PathologySpec(
            fractures=[FractureSpec("T6", height_loss=0.25, kind="wedge")],
            fluid=[FluidSpec("T5", "T7", kind="seroma", width_mm=35.0, depth_mm=18.0)],
        ),
        description="T4-T8 fixation (no T6 screws), T6 laminectomy, left T6 rib-head/costovertebral "
        "resection with partial vertebrectomy, T6 wedge fracture, T5-T7 posterior seroma.",
    )


def osteoporotic_no_hardware() -> CaseSpec:
    """Osteoporotic L1 wedge fracture, no hardware."""
    return CaseSpec(
        name="osteoporotic_no_hardware",
        levels=("T11", "L3"),
        seed=4,
        sex="female",
        surgery=SurgerySpec(screws=[], rods=False),
        pathology=PathologySpec(
            fractures=[FractureSpec("L1", height_loss=0.3, kind="wedge")],
            osteoporotic=True,
        ),
        description="Osteoporotic L1 wedge fracture (30 % anterior height loss), no hardware.",
    )


PRESETS: dict[str, Callable[[], CaseSpec]] = {
    "case_example": case_example,
    "t11_l3_laminectomy": t11_l3_laminectomy,
    "midthoracic_costovertebral": midthoracic_costovertebral,
    "osteoporotic_no_hardware": osteoporotic_no_hardware,
}


def get_preset(name: str) -> CaseSpec:
    """A fresh spec for preset ``name`` (error code PLN-PH-002 lists the choices)."""
    from planner.errors import PhantomSpecError

    try:
        return PRESETS[name]()
    except KeyError:
        raise PhantomSpecError(
            f"unknown phantom preset {name!r}; choose one of: {', '.join(PRESETS)}",
            code="PLN-PH-002",
        ) from None
