"""Viewer of a plan: 3D scene, CT slices and needle-aligned reformats, standalone HTML, report images.

* :mod:`planner.viewer.plandata`: a plan folder (``plan.json``) and the case it was made on,
  as levels and candidates with the points the viewer draws; the text-panel lines.
* :mod:`planner.viewer.structures`: the case's anatomy and hardware meshes with their display
  group and style.
* :mod:`planner.viewer.scene3d`: the pyvista scene (:class:`~planner.viewer.scene3d.PlanViewer`),
  interactive (``planner view PLAN_DIR``) or off-screen, and screenshots.
* :mod:`planner.viewer.slices`: axial, sagittal and coronal CT slices through the target and
  the needle-aligned reformats, sampled from any (oblique, anisotropic) grid, as images with
  the path, orientation letters and a scale bar.
* :mod:`planner.viewer.html`: one self-contained HTML file per plan (inline WebGL, no network).
* :mod:`planner.viewer.report`: the per-level report images and their ``manifest.json``.

Importing this package is light (numpy only); pyvista / VTK, matplotlib and Pillow are
imported when a function needs them and their absence is reported naming the ``render``
extra.
"""

from planner.viewer.common import ViewerError
from planner.viewer.plandata import Candidate, LevelData, PlanData, candidate_lines, load_plan

__all__ = ["Candidate", "LevelData", "PlanData", "ViewerError", "candidate_lines", "load_plan"]
