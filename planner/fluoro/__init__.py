"""Fluoroscopy simulation and C-arm view planning.

* :mod:`planner.fluoro.carm`: C-arm geometry (source, detector, LAO/RAO and cranial/caudal
  angles for a prone patient) and the perspective projection of LPS points.
* :mod:`planner.fluoro.drr`: digitally reconstructed radiographs from a CT with screws,
  rods and needles drawn in analytically.
* :mod:`planner.fluoro.views`: standard, bull's-eye and progression views of a trajectory;
  view planning that scores C-arm poses by how much projected hardware hides the needle
  path, its tip and the posterior body wall; the visibility score for the solver.
"""

from planner.fluoro.carm import CArm, Pose, angles_from_direction, beam_direction, pose
from planner.fluoro.geometry import Cylinders, FluoroError

__all__ = [
    "CArm",
    "Cylinders",
    "FluoroError",
    "Pose",
    "angles_from_direction",
    "beam_direction",
    "pose",
]
