"""Parametric phantom of the instrumented, operated, fractured spine with exact ground truth.

Entry points: :func:`get_preset` / :class:`CaseSpec` to describe a case, :func:`build_scene`
for the geometry, :func:`generate` for images and labels, :func:`write_case` for the folder.
"""

from planner.phantom.generate import PhantomCase, build_scene, generate, write_case
from planner.phantom.presets import PRESETS, get_preset
from planner.phantom.spec import CaseSpec

__all__ = ["PRESETS", "CaseSpec", "PhantomCase", "build_scene", "generate", "get_preset", "write_case"]
