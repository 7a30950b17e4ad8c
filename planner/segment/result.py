"""The output of segmentation: a label map plus objects and findings, as plain data.

Whatever produced the anatomy (the classical segmentation here, or labels imported from
TotalSegmentator / VerSe), the rest of the pipeline reads a :class:`Segmentation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from planner.errors import CodedWarning
from planner.implants import CrossLink, Rod, Screw
from planner.volume import Volume

SCHEMA_VERSION = "1.0"


@dataclass
class MetalObject:
    """Metal that is not a screw, rod or cross-link (cage, prosthesis, cement, unknown)."""

    kind: str  # "cage" | "prosthesis" | "cement" | "unknown"
    centroid_lps: np.ndarray
    volume_mm3: float
    bounds_lps: np.ndarray  # (2, 3)
    label: int = 499

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "centroid_lps_mm": [round(float(x), 3) for x in self.centroid_lps],
            "volume_mm3": round(float(self.volume_mm3), 1),
            "bounds_lps_mm": [[round(float(x), 3) for x in b] for b in np.asarray(self.bounds_lps)],
        }


@dataclass
class Segmentation:
    """Labels on the image grid plus fitted hardware and per-level findings.

    Attributes
    ----------
    labels : Volume
        uint16 registry ids on the image grid (modality "LABEL").
    screws, rods, crosslinks : lists of implant objects (LPS mm).
    other_metal : list of MetalObject
    levels : list of str
        Vertebral levels found, cranial to caudal.
    resections : list of dict
        ``{"level", "kind", "side", "confidence"}`` with kind in laminectomy, facetectomy,
        pediclectomy, rib_head_resection, vertebrectomy.
    fractures : list of dict
        ``{"level", "anterior_height_mm", "middle_height_mm", "posterior_height_mm",
        "height_loss_fraction", "grade"}`` (Genant grade 0-3 by height loss 20/25/40 %).
    metal : dict
        How metal was found: threshold used, stored maximum, saturation, component counts.
    source : dict
        Where anatomy came from (``{"anatomy": "classical" | "totalsegmentator:<task>" |
        "verse", "hardware": "image"}``), options, timings.
    warnings : list of CodedWarning
    """

    labels: Volume
    screws: list[Screw] = field(default_factory=list)
    rods: list[Rod] = field(default_factory=list)
    crosslinks: list[CrossLink] = field(default_factory=list)
    other_metal: list[MetalObject] = field(default_factory=list)
    levels: list[str] = field(default_factory=list)
    resections: list[dict] = field(default_factory=list)
    fractures: list[dict] = field(default_factory=list)
    metal: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    warnings: list[CodedWarning] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (what ``planner segment`` writes as ``segmentation.json``)."""
        return {
            "schema": "planner.segmentation",
            "schema_version": SCHEMA_VERSION,
            "frame": "LPS",
            "units": "mm",
            "image": self.labels.describe(),
            "levels": list(self.levels),
            "screws": [s.to_dict() for s in self.screws],
            "rods": [r.to_dict() for r in self.rods],
            "crosslinks": [c.to_dict() for c in self.crosslinks],
            "other_metal": [m.to_dict() for m in self.other_metal],
            "resections": list(self.resections),
            "fractures": list(self.fractures),
            "metal": dict(self.metal),
            "source": dict(self.source),
            "warnings": [w.to_dict() for w in self.warnings],
            "provenance": self.labels.provenance.to_dict(),
        }
