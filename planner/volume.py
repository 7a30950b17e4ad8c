"""The one spatial image type: a voxel array in patient LPS millimetres.

Conventions
-----------
* ``array`` axis order is **(i, j, k)**: ``i`` runs along the first column of the direction
  matrix, ``k`` is the slice index for a DICOM series.  This is the transpose of
  SimpleITK's ``GetArrayFromImage`` (which returns ``(k, j, i)``).
* ``lps_from_ijk`` is a 4x4 affine mapping voxel indices (centres at integers) to patient
  LPS millimetres: ``x_lps = R @ diag(spacing) @ ijk + origin``.
* The direction matrix ``R`` must be orthonormal; it may be left-handed (``det R = -1``),
  which is kept as is and flagged by :attr:`Volume.is_left_handed`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from planner.errors import CodedWarning, GeometryError

MODALITIES = ("CT", "MR", "LABEL", "OTHER")

#: Tolerance on orthonormality of direction matrices (DICOM stores 6-10 significant digits).
ORTHO_TOL = 1e-4


@dataclass
class Provenance:
    """Where a volume came from and what was done to it.

    Attributes
    ----------
    source_files : list of str
        Files read (basenames or relative paths; never patient data).
    skipped_files : list of dict
        ``{"file": ..., "reason": ...}`` for every file passed over.
    series_uid, study_uid, frame_of_reference_uid : str or None
        DICOM identifiers carried to every output.
    corrections : list of dict
        Every change made to geometry or values (resampling, flips), with parameters.
    warnings : list of CodedWarning
        Coded warnings raised while loading or processing.
    extra : dict
        Free-form, JSON-serialisable facts (scanner, transfer syntax, phantom seed).
    """

    source_files: list[str] = field(default_factory=list)
    skipped_files: list[dict] = field(default_factory=list)
    series_uid: str | None = None
    study_uid: str | None = None
    frame_of_reference_uid: str | None = None
    corrections: list[dict] = field(default_factory=list)
    warnings: list[CodedWarning] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def warn(self, code: str, message: str, **details: Any) -> CodedWarning:
        """Record a coded warning and log it; returns the record.

        A warning identical to one already recorded (same code, message and details, as when
        a step runs twice on the same image) is not recorded or logged again.
        """
        import logging

        w = CodedWarning(code, message, details)
        if w in self.warnings:
            return w
        self.warnings.append(w)
        logging.getLogger("planner").warning("[%s] %s", code, message)
        return w

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_files": list(self.source_files),
            "skipped_files": [dict(s) for s in self.skipped_files],
            "series_uid": self.series_uid,
            "study_uid": self.study_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "corrections": [dict(c) for c in self.corrections],
            "warnings": [w.to_dict() for w in self.warnings],
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Provenance:
        return cls(
            source_files=list(d.get("source_files", [])),
            skipped_files=list(d.get("skipped_files", [])),
            series_uid=d.get("series_uid"),
            study_uid=d.get("study_uid"),
            frame_of_reference_uid=d.get("frame_of_reference_uid"),
            corrections=list(d.get("corrections", [])),
            warnings=[CodedWarning(**w) for w in d.get("warnings", [])],
            extra=dict(d.get("extra", {})),
        )


def make_affine(spacing, direction=None, origin=None) -> np.ndarray:
    """Build ``lps_from_ijk`` from spacing (3,), direction (3, 3) columns and origin (3,)."""
    spacing = np.asarray(spacing, dtype=float).reshape(3)
    R = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    o = np.zeros(3) if origin is None else np.asarray(origin, dtype=float).reshape(3)
    A = np.eye(4)
    A[:3, :3] = R * spacing[None, :]
    A[:3, 3] = o
    return A


def decompose_affine(lps_from_ijk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split an affine into ``(spacing (3,), direction (3, 3), origin (3,))``."""
    A = np.asarray(lps_from_ijk, dtype=float)
    M = A[:3, :3]
    spacing = np.linalg.norm(M, axis=0)
    if np.any(~np.isfinite(spacing)) or np.any(spacing <= 0):
        raise GeometryError(
            f"voxel spacing must be positive and finite, got {spacing.tolist()}; "
            "check the header's pixel spacing / slice positions",
            code="PLN-GEO-002",
        )
    return spacing, M / spacing[None, :], A[:3, 3].copy()


def check_points(points: np.ndarray, name: str = "points") -> np.ndarray:
    """Return ``points`` as a float (n, 3) array or raise ``PLN-GEO-005``."""
    p = np.asarray(points, dtype=float)
    if p.ndim == 1 and p.shape[0] == 3:
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] != 3:
        raise GeometryError(
            f"{name} must be an (n, 3) array, got shape {p.shape}", code="PLN-GEO-005"
        )
    return p


@dataclass
class Volume:
    """Voxel array + ``lps_from_ijk`` + modality + provenance, validated when built.

    Parameters
    ----------
    array : (ni, nj, nk) ndarray
        Voxel values; CT in Hounsfield units, labels as integers.
    lps_from_ijk : (4, 4) ndarray
        Voxel index -> patient LPS mm.
    modality : {"CT", "MR", "LABEL", "OTHER"}
    provenance : Provenance
    """

    array: np.ndarray
    lps_from_ijk: np.ndarray
    modality: str = "CT"
    provenance: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        A = np.asarray(self.lps_from_ijk, dtype=float)
        if A.shape != (4, 4) or not np.all(np.isfinite(A)):
            raise GeometryError(f"lps_from_ijk must be a finite 4x4 matrix, got shape {A.shape}")
        if not np.allclose(A[3], [0, 0, 0, 1]):
            raise GeometryError("lps_from_ijk bottom row must be [0, 0, 0, 1]")
        self.lps_from_ijk = A
        if self.array.ndim != 3 or min(self.array.shape) < 1:
            raise GeometryError(
                f"volume array must be 3-D with every axis >= 1, got shape {self.array.shape}",
                code="PLN-GEO-003",
            )
        spacing, R, _ = decompose_affine(A)
        if not np.allclose(R.T @ R, np.eye(3), atol=ORTHO_TOL):
            raise GeometryError(
                "direction matrix is not orthonormal (sheared geometry, e.g. an uncorrected "
                "gantry tilt); load with the tilt correction option or fix the header",
                details={"direction": R.tolist()},
            )
        if self.modality not in MODALITIES:
            raise GeometryError(
                f"modality must be one of {MODALITIES}, got {self.modality!r}",
                code="PLN-GEO-003",
            )

    # ---- geometry -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along (i, j, k) in mm, shape (3,)."""
        return decompose_affine(self.lps_from_ijk)[0]

    @property
    def direction(self) -> np.ndarray:
        """Direction cosines as columns, shape (3, 3)."""
        return decompose_affine(self.lps_from_ijk)[1]

    @property
    def origin(self) -> np.ndarray:
        """LPS position of voxel (0, 0, 0), shape (3,)."""
        return self.lps_from_ijk[:3, 3].copy()

    @property
    def ijk_from_lps(self) -> np.ndarray:
        return np.linalg.inv(self.lps_from_ijk)

    @property
    def is_left_handed(self) -> bool:
        return bool(np.linalg.det(self.direction) < 0)

    def lps_from_index(self, ijk: np.ndarray) -> np.ndarray:
        """Map voxel indices (n, 3) (float allowed) to LPS mm (n, 3)."""
        p = check_points(ijk, "ijk")
        A = self.lps_from_ijk
        return p @ A[:3, :3].T + A[:3, 3]

    def index_from_lps(self, lps: np.ndarray) -> np.ndarray:
        """Map LPS mm (n, 3) to continuous voxel indices (n, 3)."""
        p = check_points(lps, "lps")
        B = self.ijk_from_lps
        return p @ B[:3, :3].T + B[:3, 3]

    def bounds_lps(self) -> np.ndarray:
        """Axis-aligned LPS box (2, 3) around all voxel centres."""
        n = np.array(self.shape) - 1
        corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])])
        pts = self.lps_from_index(corners)
        return np.stack([pts.min(0), pts.max(0)])

    def voxel_centres_lps(self, sl: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """LPS coordinates of voxel centres in a sub-box, shape (ni, nj, nk, 3), float64."""
        sl = sl or (slice(None),) * 3
        idx = [np.arange(s)[k] for s, k in zip(self.shape, sl)]
        A = self.lps_from_ijk
        out = np.broadcast_to(A[:3, 3], (len(idx[0]), len(idx[1]), len(idx[2]), 3)).copy()
        for ax in range(3):
            shape = [1, 1, 1, 1]
            shape[ax] = -1
            out += idx[ax].reshape(shape[:3] + [1]) * A[:3, ax].reshape(1, 1, 1, 3)
        return out

    def same_grid(self, other: Volume, atol: float = 1e-5) -> bool:
        return self.shape == other.shape and np.allclose(
            self.lps_from_ijk, other.lps_from_ijk, atol=atol
        )

    def with_array(self, array: np.ndarray, modality: str | None = None) -> Volume:
        """A new volume on the same grid with another array (provenance deep-copied)."""
        return Volume(
            np.asarray(array),
            self.lps_from_ijk.copy(),
            modality or self.modality,
            copy.deepcopy(self.provenance),
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready geometry summary."""
        s, R, o = decompose_affine(self.lps_from_ijk)
        return {
            "shape": list(self.shape),
            "spacing_mm": [float(x) for x in s],
            "direction": [[float(x) for x in row] for row in R],
            "origin_lps_mm": [float(x) for x in o],
            "modality": self.modality,
            "dtype": str(self.array.dtype),
            "left_handed": self.is_left_handed,
        }


# ---- frame conversions at file boundaries ----------------------------------------------
#: LPS <-> RAS: flip x and y.  The matrix is its own inverse.
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
LPS_FROM_RAS = RAS_FROM_LPS


def grid_affine(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    centre_lps: np.ndarray,
    direction: np.ndarray | None = None,
) -> np.ndarray:
    """``lps_from_ijk`` for a grid of ``shape`` and ``spacing`` centred on ``centre_lps``."""
    R = np.eye(3) if direction is None else np.asarray(direction, float)
    spacing = np.asarray(spacing, float)
    half = (np.asarray(shape, float) - 1) / 2.0
    origin = np.asarray(centre_lps, float) - (R * spacing[None, :]) @ half
    return make_affine(spacing, R, origin)


def rotation_matrix(axis: str | np.ndarray, angle_deg: float) -> np.ndarray:
    """Right-handed rotation about an LPS axis ('x', 'y', 'z' or a 3-vector)."""
    if isinstance(axis, str):
        axis = {"x": [1, 0, 0], "y": [0, 1, 0], "z": [0, 0, 1]}[axis]
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    t = np.deg2rad(angle_deg)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * (K @ K)
