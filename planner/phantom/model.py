"""Data model of a phantom scene: structures as SDFs, vertebral frames, hardware.

This module is the contract between the phantom's builders:

* ``planner.phantom.vertebrae`` builds :class:`VertebraFrame` s (pose, resolved dimensions,
  landmarks) and the bone :class:`Structure` s (with surgery and pathology applied);
* ``planner.phantom.soft_tissue`` builds discs, canal, sac, cord, roots, vessels, lungs,
  muscles, fat, skin and fluid collections from the frames;
* ``planner.phantom.hardware`` builds screws, rods and cross-links from the frames;
* ``planner.phantom.rasterize`` turns the structures into a label map and tissue layers on
  any (oblique, anisotropic) grid, and ``planner.phantom.ct`` / ``.mr`` into images.

Local vertebral frame
---------------------
``R`` columns are the vertebra's own axes expressed in LPS: ``u`` = patient left, ``v`` =
posterior, ``w`` = superior (equal to LPS x, y, z for an upright, untilted vertebra).  The
origin is the centre of the vertebral body.  Curvature tilts ``R`` about the left axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from planner.implants import CrossLink, Rod, Screw
from planner.phantom.sdf import SDF

#: Landmark keys every VertebraFrame provides (LPS mm).  ``*_left``/``*_right`` per side.
LANDMARK_KEYS = (
    "body_centre",  # centre of the vertebral body
    "endplate_superior_centre",  # centre of the upper endplate surface
    "endplate_inferior_centre",  # centre of the lower endplate surface
    "body_posterior_centre",  # mid-height point on the posterior body wall (midline)
    "canal_centre",  # centre of the spinal canal at mid-pedicle height
    "pedicle_entry_left",  # posterior end of the pedicle axis on the bone surface (screw entry)
    "pedicle_entry_right",
    "pedicle_isthmus_left",  # narrowest point (centre) of the pedicle
    "pedicle_isthmus_right",
    "pedicle_target_left",  # where the pedicle axis meets the anterior body cortex (inner)
    "pedicle_target_right",
    "spinous_tip",  # posterior tip of the spinous process
    "lamina_centre",  # midline point on the lamina's posterior surface
    "tp_tip_left",  # lateral tip of the transverse process
    "tp_tip_right",
    "foramen_left",  # centre of the intervertebral foramen below this level's pedicle
    "foramen_right",
    "rib_head_left",  # thoracic only: centre of the rib head at the costovertebral joint
    "rib_head_right",
)


@dataclass
class VertebraFrame:
    """Pose, dimensions and landmarks of one vertebra in LPS mm.

    Attributes
    ----------
    level : str
        ``"T1"`` ... ``"S1"``.
    centre_lps : (3,) float
        Body centre.
    R : (3, 3) float
        Columns u (left), v (posterior), w (superior) in LPS.
    dims : dict[str, float]
        This patient's resolved dimensions (mm / deg) after variation, e.g.
        ``body_width_mm``, ``body_depth_mm``, ``body_height_anterior_mm``,
        ``body_height_posterior_mm``, ``pedicle_width_mm``, ``pedicle_height_mm``,
        ``pedicle_transverse_angle_deg``, ``pedicle_sagittal_angle_deg``,
        ``canal_width_mm``, ``canal_depth_mm``, ``disc_height_below_mm``,
        ``cortex_mm``, ``height_loss_fraction`` (0 if not fractured).
    landmarks : dict[str, (3,) float]
        Keys from :data:`LANDMARK_KEYS` (rib keys only at thoracic levels).
    pedicle_axis : dict[str, (3,) float]
        Unit vector per side, from ``pedicle_entry_*`` toward ``pedicle_target_*``.
    """

    level: str
    centre_lps: np.ndarray
    R: np.ndarray
    dims: dict[str, float]
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    pedicle_axis: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def u(self) -> np.ndarray:
        return self.R[:, 0]

    @property
    def v(self) -> np.ndarray:
        return self.R[:, 1]

    @property
    def w(self) -> np.ndarray:
        return self.R[:, 2]

    def to_world(self, local: np.ndarray) -> np.ndarray:
        """Local (u, v, w) mm (n, 3) or (3,) -> LPS mm."""
        loc = np.asarray(local, float)
        return loc @ self.R.T + self.centre_lps

    def to_local(self, lps: np.ndarray) -> np.ndarray:
        return (np.asarray(lps, float) - self.centre_lps) @ self.R

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "centre_lps_mm": [round(float(x), 4) for x in self.centre_lps],
            "axes_lps": {k: [round(float(x), 6) for x in self.R[:, i]] for i, k in enumerate("uvw")},
            "dims": {k: round(float(v), 4) for k, v in sorted(self.dims.items())},
            "landmarks_lps_mm": {
                k: [round(float(x), 4) for x in v] for k, v in sorted(self.landmarks.items())
            },
            "pedicle_axis_lps": {
                k: [round(float(x), 6) for x in v] for k, v in sorted(self.pedicle_axis.items())
            },
        }


@dataclass
class Structure:
    """One object of the scene, as a signed distance function.

    Attributes
    ----------
    name : str
        Unique name.  When ``parts`` is None it must be a registry label name
        (``planner.labels.registry.LABEL_IDS``); otherwise it is a group name
        (``"vertebra_L4"``) and voxels take the label of the nearest part.
    tissue : str
        Tissue class (``planner.labels.registry.TISSUES``) of the shape, or of its cortical
        shell when ``cortex_mm`` is set.
    sdf : SDF
        Signed distance, mm, negative inside, with bounds.
    priority : int
        Draw order: a higher priority overwrites lower ones in labels and images.
        Guide: body outline 0-10, muscle/organs 20-40, vessels 50, bone 60-69,
        discs 58, canal/sac/cord/roots 70-79, lesions/fluid 80-89, hardware 100+.
    parts : dict[str, SDF] or None
        Registry label name -> SDF of that part (need not be exact outside the union).
    cortex_mm : float or None
        For bone: shell thickness; the interior gets ``inner_tissue``.
    inner_tissue : str or None
        Tissue of the interior when ``cortex_mm`` is set (``"cancellous_bone"``).
    tissue_params : dict
        Per-structure overrides for synthesis, e.g. ``{"cancellous_hu": 60}`` for an
        osteoporotic vertebra, ``{"material": "cobalt_chrome"}``.
    mesh : bool
        Export a ground-truth mesh for it (and for each part).
    meta : dict
        Free JSON-ready facts (level, side, kind).
    """

    name: str
    tissue: str
    sdf: SDF
    priority: int
    parts: dict[str, SDF] | None = None
    cortex_mm: float | None = None
    inner_tissue: str | None = None
    tissue_params: dict[str, Any] = field(default_factory=dict)
    mesh: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def bounds(self) -> np.ndarray:
        return self.sdf.bounds


@dataclass
class PhantomScene:
    """Everything a phantom case is made of, before imaging."""

    spec: Any  # planner.phantom.spec.CaseSpec
    vertebrae: dict[str, VertebraFrame]
    structures: list[Structure]
    screws: list[Screw] = field(default_factory=list)
    rods: list[Rod] = field(default_factory=list)
    crosslinks: list[CrossLink] = field(default_factory=list)
    findings: dict[str, list[dict]] = field(default_factory=dict)
    """Ground-truth findings: ``resections``, ``fractures``, ``lesions``,
    ``fluid_collections``, each a list of JSON-ready dicts with ``level`` etc."""

    def structure(self, name: str) -> Structure:
        for s in self.structures:
            if s.name == name:
                return s
        raise KeyError(name)

    def bounds(self) -> np.ndarray:
        """LPS box (2, 3) around every structure."""
        b = np.array([s.bounds for s in self.structures])
        return np.stack([b[:, 0].min(0), b[:, 1].max(0)])
