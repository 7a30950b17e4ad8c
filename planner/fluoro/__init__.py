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
from planner.fluoro.drr import DRRImage, DRRRenderer, DRRSettings, drr, raycast_reference
from planner.fluoro.geometry import Cylinders, FluoroError
from planner.fluoro.views import (
    Trajectory,
    ViewPlan,
    ViewSearchSettings,
    ap_view,
    bullseye_view,
    lateral_view,
    plan_views,
    posterior_wall_points,
    progression_view,
    score_poses,
    visibility_score,
    write_view_pngs,
)

__all__ = [
    "CArm",
    "Cylinders",
    "DRRImage",
    "DRRRenderer",
    "DRRSettings",
    "FluoroError",
    "Pose",
    "Trajectory",
    "ViewPlan",
    "ViewSearchSettings",
    "angles_from_direction",
    "ap_view",
    "beam_direction",
    "bullseye_view",
    "drr",
    "lateral_view",
    "plan_views",
    "pose",
    "posterior_wall_points",
    "progression_view",
    "raycast_reference",
    "score_poses",
    "visibility_score",
    "write_view_pngs",
]
