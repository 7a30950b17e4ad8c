"""Implants as objects with geometry, not voxels.

Shared by the phantom (ground truth), the segmentation (fitted objects) and the solver
(clearance queries).  All coordinates are patient LPS millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _vec(v) -> np.ndarray:
    a = np.asarray(v, dtype=float).reshape(3)
    return a


@dataclass
class Screw:
    """A pedicle screw.

    Attributes
    ----------
    level, side : str
        Vertebral level (``"L4"``) and side (``"left"`` / ``"right"``).
    head_lps, tip_lps : (3,) float
        Shank entry at the bone (where the thread starts, under the tulip head) and tip.
    diameter_mm : float
        Major (outer thread) diameter.
    tulip_diameter_mm, tulip_height_mm : float
        Polyaxial head modelled as a cylinder on the axis behind ``head_lps``.
    material : str
        ``"titanium"`` or ``"cobalt_chrome"``.
    """

    level: str
    side: str
    head_lps: np.ndarray
    tip_lps: np.ndarray
    diameter_mm: float
    tulip_diameter_mm: float = 12.0
    tulip_height_mm: float = 13.0
    material: str = "titanium"

    def __post_init__(self) -> None:
        self.head_lps = _vec(self.head_lps)
        self.tip_lps = _vec(self.tip_lps)

    @property
    def name(self) -> str:
        return f"screw_{self.level}_{self.side}"

    @property
    def axis(self) -> np.ndarray:
        """Unit vector head -> tip."""
        d = self.tip_lps - self.head_lps
        return d / np.linalg.norm(d)

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(self.tip_lps - self.head_lps))

    @property
    def tulip_top_lps(self) -> np.ndarray:
        """Far end of the tulip head (the rod seat lies inside the tulip)."""
        return self.head_lps - self.axis * self.tulip_height_mm

    @property
    def rod_seat_lps(self) -> np.ndarray:
        """Where the rod centre line passes through the tulip."""
        return self.head_lps - self.axis * (0.6 * self.tulip_height_mm)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "level": self.level,
            "side": self.side,
            "head_lps_mm": [round(float(x), 4) for x in self.head_lps],
            "tip_lps_mm": [round(float(x), 4) for x in self.tip_lps],
            "axis_lps": [round(float(x), 6) for x in self.axis],
            "diameter_mm": float(self.diameter_mm),
            "length_mm": round(self.length_mm, 4),
            "tulip_diameter_mm": float(self.tulip_diameter_mm),
            "tulip_height_mm": float(self.tulip_height_mm),
            "material": self.material,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Screw:
        return cls(
            level=d["level"],
            side=d["side"],
            head_lps=d["head_lps_mm"],
            tip_lps=d["tip_lps_mm"],
            diameter_mm=d["diameter_mm"],
            tulip_diameter_mm=d.get("tulip_diameter_mm", 12.0),
            tulip_height_mm=d.get("tulip_height_mm", 13.0),
            material=d.get("material", "titanium"),
        )


@dataclass
class Rod:
    """A rod: a centre line polyline (n, 3) with a diameter."""

    side: str
    centreline_lps: np.ndarray
    diameter_mm: float = 5.5
    material: str = "titanium"

    def __post_init__(self) -> None:
        c = np.asarray(self.centreline_lps, dtype=float)
        if c.ndim != 2 or c.shape[1] != 3 or len(c) < 2:
            from planner.errors import GeometryError

            raise GeometryError(
                f"rod centre line must be (n>=2, 3), got {c.shape}", code="PLN-GEO-005"
            )
        self.centreline_lps = c

    @property
    def name(self) -> str:
        return f"rod_{self.side}"

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(np.diff(self.centreline_lps, axis=0), axis=1).sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "side": self.side,
            "centreline_lps_mm": [[round(float(x), 4) for x in p] for p in self.centreline_lps],
            "diameter_mm": float(self.diameter_mm),
            "length_mm": round(self.length_mm, 4),
            "material": self.material,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rod:
        return cls(d["side"], d["centreline_lps_mm"], d["diameter_mm"], d.get("material", "titanium"))


@dataclass
class CrossLink:
    """A transverse connector between the two rods, modelled as a bar (n, 3) centre line."""

    level: str
    centreline_lps: np.ndarray
    diameter_mm: float = 5.0
    material: str = "titanium"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.centreline_lps = np.asarray(self.centreline_lps, dtype=float)

    @property
    def name(self) -> str:
        return f"crosslink_{self.level}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "level": self.level,
            "centreline_lps_mm": [[round(float(x), 4) for x in p] for p in self.centreline_lps],
            "diameter_mm": float(self.diameter_mm),
            "material": self.material,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CrossLink:
        return cls(d["level"], d["centreline_lps_mm"], d["diameter_mm"], d.get("material", "titanium"))


def point_segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance from points (n, 3) to segment a-b; returns (n,)."""
    p = np.asarray(points, dtype=float)
    ab = b - a
    denom = float(ab @ ab)
    t = np.clip(((p - a) @ ab) / denom, 0.0, 1.0) if denom > 0 else np.zeros(len(p))
    closest = a + t[:, None] * ab
    return np.linalg.norm(p - closest, axis=1)
