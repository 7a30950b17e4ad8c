"""Typed errors and coded warnings.

Every error a user can hit is a :class:`PlannerError` subclass with a stable ``code``
(``PLN-<AREA>-<NNN>``) and a message that says what to do.  Codes never change meaning once
released; new situations get new codes.  Warnings are not Python warnings only: they are
:class:`CodedWarning` records that steps append to a :class:`planner.volume.Provenance`
so they travel with the output.

The full table of codes is :data:`ERROR_CODES` / :data:`WARNING_CODES`; ``planner info --json``
prints it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: code -> one-line meaning.  Pure data; the CLI prints it.
ERROR_CODES: dict[str, str] = {
    "PLN-IN-001": "input path does not exist",
    "PLN-IN-002": "file format not recognised",
    "PLN-IN-003": "file is truncated or unreadable",
    "PLN-IN-004": "volume too large for the memory limit",
    "PLN-DCM-001": "no DICOM image series found",
    "PLN-DCM-002": "several series in the folder; choose one",
    "PLN-DCM-003": "gantry/detector tilt present",
    "PLN-DCM-004": "non-uniform slice spacing",
    "PLN-DCM-005": "missing slice (gap in positions)",
    "PLN-DCM-006": "two slices at one position with different pixels",
    "PLN-DCM-007": "mixed orientations in one series",
    "PLN-DCM-008": "compressed transfer syntax needs a codec package",
    "PLN-DCM-009": "multi-frame geometry cannot be derived",
    "PLN-DCM-010": "requested series not found",
    "PLN-GEO-001": "invalid affine / direction matrix",
    "PLN-GEO-002": "invalid voxel spacing",
    "PLN-GEO-003": "array shape does not match the geometry",
    "PLN-GEO-004": "label map does not overlap the image",
    "PLN-GEO-005": "point array has the wrong shape",
    "PLN-NII-001": "neither qform nor sform is valid",
    "PLN-PH-001": "invalid phantom specification",
    "PLN-PH-002": "unknown phantom preset",
    "PLN-LBL-001": "unknown label name or id",
    "PLN-OPT-001": "optional dependency missing",
    "PLN-INS-001": "unknown instrument or invalid instrument parameter",
    "PLN-SOFT-001": "CT-only soft-tissue segmentation given a non-CT image",
    "PLN-SEG-001": "no vertebra found, or the requested level is not in the image",
    "PLN-SEG-002": "vertebral levels cannot be named (no anchor, no sacrum, no ribs)",
    "PLN-SEG-003": "segmentation input is not a CT or MR image",
    "PLN-SEG-004": "classical bone segmentation needs CT; MR needs imported labels",
    "PLN-SEG-005": "MR hardware: no body outline found in the image",
    "PLN-SOL-001": "requested level is not in the scene",
    "PLN-SOL-002": "invalid solver option",
    "PLN-SOL-003": "scene input cannot be used (missing labels, summary or case file)",
    "PLN-SOL-004": "trajectory is malformed (entry equals target, wrong shape, not finite)",
    "PLN-SOL-005": "plan file fails its schema",
    "PLN-SOL-006": "trajectory target is not inside the target level's vertebral body",
    "PLN-MRK-001": "Slicer markups file cannot be read as trajectories (markup type, control points, coordinate system, units)",
    "PLN-FLU-001": "invalid C-arm geometry or fluoroscopy setting",
    "PLN-FLU-002": "volume cannot be projected (a DRR needs a CT volume in HU)",
    "PLN-FLU-003": "malformed fluoroscopy input (trajectory, hardware, points or poses)",
    "PLN-FLU-004": "no posterior-wall points (level body label absent from the label map)",
    "PLN-VIEW-001": "plan folder has no readable plan.json (not a planner plan)",
    "PLN-VIEW-002": "case folder of the plan not found (pass --case CASE_DIR)",
    "PLN-VIEW-003": "unknown level, candidate, structure group or view requested",
    "PLN-VIEW-004": "slice or reformat cannot be made (no CT image, degenerate plane or path)",
    "PLN-VIEW-005": "interactive display not available (use --off-screen --screenshot)",
}

#: code -> one-line meaning for coded warnings recorded in provenance.
WARNING_CODES: dict[str, str] = {
    "PLN-W-DCM-001": "localizer/scout images excluded",
    "PLN-W-DCM-002": "non-image DICOM objects skipped",
    "PLN-W-DCM-003": "non-DICOM files skipped",
    "PLN-W-DCM-004": "exact duplicate slice removed",
    "PLN-W-DCM-005": "instance numbers inconsistent; sorted by position",
    "PLN-W-DCM-006": "gantry tilt corrected by resampling",
    "PLN-W-DCM-007": "non-uniform spacing resampled",
    "PLN-W-DCM-008": "gantry tilt tag set but slice positions are orthogonal; used as stored",
    "PLN-W-CT-001": "metal saturates the stored range",
    "PLN-W-NII-001": "qform and sform differ",
    "PLN-W-GEO-001": "left-handed direction matrix",
    "PLN-W-LBL-001": "label map resampled onto the image grid",
    "PLN-W-PH-001": "phantom option adjusted",
    "PLN-W-SEG-001": "hardware fitted from MR signal voids is approximate",
    "PLN-W-SEG-002": "no hardware taken from MR (use a CT, or opt in to void fitting)",
    "PLN-W-SOFT-001": "spinal canal not found",
    "PLN-W-SOFT-002": "spinal canal interpolated over a long gap without a bony ring",
    "PLN-W-SOFT-003": "aorta not found",
    "PLN-W-IMP-001": "whole-vertebra label used as the vertebral body until split",
    "PLN-W-IMP-002": "vertebra levels unknown (one-class map, no anchor)",
    "PLN-W-IMP-003": "external label classes without a registry counterpart left out",
    "PLN-W-SOL-001": "structure class absent from the scene; its constraint cannot be checked",
    "PLN-W-SOL-002": "target level has a resection or missing part; landmarks estimated",
    "PLN-W-SOL-003": "no safe route at a requested level",
}


class PlannerError(Exception):
    """Base of all errors the planner raises on purpose.

    Parameters
    ----------
    message : str
        What went wrong and what to do about it.
    code : str, optional
        Stable code; defaults to the class attribute ``code``.
    details : dict, optional
        Machine-readable context (paths, counts, positions).
    """

    code: str = "PLN-000"

    def __init__(self, message: str, *, code: str | None = None, details: dict | None = None):
        if code is not None:
            self.code = code
        self.message = message
        self.details = dict(details or {})
        super().__init__(f"[{self.code}] {message}")

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InputError(PlannerError):
    """The input file or folder cannot be used as given."""

    code = "PLN-IN-002"


class DicomError(InputError):
    """A DICOM series is inconsistent or ambiguous."""

    code = "PLN-DCM-001"


class GeometryError(PlannerError):
    """Spatial metadata is invalid or inconsistent."""

    code = "PLN-GEO-001"


class PhantomSpecError(PlannerError):
    """A phantom specification is invalid."""

    code = "PLN-PH-001"


class LabelError(PlannerError):
    """An unknown label name or id."""

    code = "PLN-LBL-001"


class SolverError(PlannerError):
    """The solver cannot run as asked (unknown level, bad option, bad trajectory)."""

    code = "PLN-SOL-002"


class MissingDependencyError(PlannerError, ImportError):
    """An optional dependency is not installed."""

    code = "PLN-OPT-001"


@dataclass(frozen=True)
class CodedWarning:
    """A warning that is recorded in an output's provenance.

    Attributes
    ----------
    code : str
        Stable code from :data:`WARNING_CODES`.
    message : str
        Human-readable text.
    details : dict
        Machine-readable context.
    """

    code: str
    message: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": dict(self.details)}


def optional_import(module: str, feature: str, extra: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra.

    Parameters
    ----------
    module : str
        Module to import, e.g. ``"pyvista"``.
    feature : str
        What the user tried to do, for the message.
    extra : str
        The pip extra that installs it, e.g. ``"render"``.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError(
            f"{feature} needs the Python package '{module}', which is not installed. "
            f"Install it with: pip install 'spine-augment-planner[{extra}]'",
            details={"module": module, "extra": extra},
        ) from exc
