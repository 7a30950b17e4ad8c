"""The anatomy and hardware meshes the viewer draws, with their display group and style.

:func:`collect_meshes` reads the meshes of a case folder: the ``meshes/manifest.json`` a
phantom case carries (whole vertebrae rather than their parts), or, for a ``planner segment``
folder without a manifest, the meshes :class:`planner.solve.scene.Scene` gives for every
structure present in the label map plus exact implant meshes.  Each becomes a
:class:`ViewMesh` in one display group of :data:`GROUPS` (what the viewer's toggles switch)
with its colour and opacity: vertebrae translucent and coloured by level, hardware metallic
and opaque, the canal / thecal sac and the other critical structures semi-transparent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from planner.viewer.common import METAL_RGB, RGB, decimate, level_rgb

log = logging.getLogger(__name__)

#: Display groups of anatomy and hardware, in the order the viewer lists them, with the
#: label shown beside their toggle.
GROUPS: dict[str, str] = {
    "vertebrae": "vertebrae",
    "hardware": "screws / rods",
    "canal": "canal / sac",
    "roots": "nerve roots",
    "vessels": "vessels",
    "lungs": "lungs",
    "discs": "discs",
    "ribs": "ribs",
    "fluid": "fluid",
}

#: Display groups of the plan's paths.
PATH_GROUPS: dict[str, str] = {
    "candidates": "candidates",
    "needle": "needle",
    "entries": "skin entries",
    "blocked": "blocked routes",
}

#: Colour and opacity of named global structures (None: not drawn).
_GLOBAL: dict[str, tuple[str, RGB, float] | None] = {
    "spinal_canal": ("canal", (1.0, 0.95, 0.55), 0.25),
    "thecal_sac": ("canal", (1.0, 0.88, 0.35), 0.45),
    "spinal_cord": ("canal", (0.95, 0.75, 0.25), 0.70),
    "aorta": ("vessels", (0.85, 0.10, 0.10), 0.35),
    "iliac_artery_left": ("vessels", (0.85, 0.10, 0.10), 0.35),
    "iliac_artery_right": ("vessels", (0.85, 0.10, 0.10), 0.35),
    "vena_cava": ("vessels", (0.20, 0.32, 0.90), 0.35),
    "lung_left": ("lungs", (0.95, 0.62, 0.68), 0.12),
    "lung_right": ("lungs", (0.95, 0.62, 0.68), 0.12),
    "fluid_collection": ("fluid", (0.10, 0.85, 0.90), 0.45),
    "pleura": None,
    "other_bone": ("vertebrae", (0.89, 0.85, 0.74), 0.2),
    "muscle": None,
    "fat": None,
    "skin": None,
    "soft_tissue": None,
}

#: Opacity of vertebrae, and of ribs.
VERTEBRA_OPACITY = 0.35
RIB_OPACITY = 0.25


@dataclass
class ViewMesh:
    """One mesh to draw.

    Attributes
    ----------
    name : str
        Registry or implant name (``vertebra_L4``, ``screw_L3_left``, ``aorta``).
    group : str
        Display group (a key of :data:`GROUPS`).
    level : str or None
    vertices : (n, 3) float
        LPS mm.
    faces : (m, 3) int
    rgb : (3,) float
    opacity : float
    metallic : bool
    """

    name: str
    group: str
    level: str | None
    vertices: np.ndarray
    faces: np.ndarray
    rgb: RGB
    opacity: float
    metallic: bool = False

    @property
    def bounds(self) -> np.ndarray:
        """(2, 3) LPS box."""
        return np.stack([self.vertices.min(0), self.vertices.max(0)])


def style_for(name: str, info: dict[str, Any] | None = None) -> tuple[str, RGB, float, bool] | None:
    """Display group, colour, opacity and metallic flag of a structure; None to skip it.

    Parameters
    ----------
    name : str
        Mesh name.
    info : dict, optional
        Manifest entry (``kind``, ``level``, ``tissue``).

    Returns
    -------
    (group, rgb, opacity, metallic) or None
    """
    info = info or {}
    kind = info.get("kind", "")
    if kind in ("screw", "rod", "crosslink") or name.startswith(("screw_", "rod_", "crosslink_", "tulip_")) or name == "other_metal":
        return "hardware", METAL_RGB, 1.0, True
    if name in _GLOBAL:
        st = _GLOBAL[name]
        return None if st is None else (st[0], st[1], st[2], False)
    level = info.get("level")
    if name.startswith("vertebra_"):
        return "vertebrae", level_rgb(level or name[9:]), VERTEBRA_OPACITY, False
    part = name.split("_", 1)[1] if "_" in name else ""
    level = level or name.split("_", 1)[0]
    if "rib" in part:
        return "ribs", level_rgb(level), RIB_OPACITY, False
    if part == "disc":
        return "discs", (0.62, 0.76, 0.95), 0.25, False
    if part.startswith("nerve_root"):
        return "roots", (0.95, 0.78, 0.25), 0.50, False
    if part == "lesion":
        return "vertebrae", (0.75, 0.35, 0.15), 0.65, False
    if part in ("body", "pedicle_left", "pedicle_right", "posterior"):
        return "vertebrae", level_rgb(level), VERTEBRA_OPACITY, False
    if info.get("tissue") in ("titanium", "cobalt_chrome"):
        return "hardware", METAL_RGB, 1.0, True
    return None


def _from_manifest(mesh_dir: Path) -> list[tuple[str, Any, dict[str, Any]]]:
    from planner.meshing import load_mesh_dir

    meshes = load_mesh_dir(mesh_dir)
    drawn = {n for n, (_, i) in meshes.items() if i.get("kind") != "part"}
    return [
        (n, m, i)
        for n, (m, i) in sorted(meshes.items())
        if not (i.get("kind") == "part" and i.get("group") in drawn)
    ]


def _from_scene(case_dir: Path) -> list[tuple[str, Any, dict[str, Any]]]:
    from planner import meshing
    from planner.solve.api import load_scene

    scene = load_scene(case_dir)
    out = []
    for name in sorted(scene.present_names):
        if style_for(name) is None or name.startswith(("screw_", "rod_", "crosslink_")):
            continue
        m = scene.mesh(name)
        if m is not None and len(m.faces):
            out.append((name, m, {}))
    for s in scene.screws:
        out.append((s.name, meshing.screw_mesh(s), {"kind": "screw", "level": s.level}))
    for r in scene.rods:
        out.append((r.name, meshing.rod_mesh(r), {"kind": "rod"}))
    for x in scene.crosslinks:
        out.append((x.name, meshing.crosslink_mesh(x), {"kind": "crosslink"}))
    return out


def collect_meshes(case_dir: str | Path, *, max_faces: int = 20000, groups: tuple[str, ...] | None = None) -> list[ViewMesh]:
    """Meshes of a case folder to draw, styled and decimated.

    Parameters
    ----------
    case_dir : path-like
        Phantom case folder (with ``meshes/manifest.json``) or a ``planner segment`` folder.
    max_faces : int
        Each mesh is decimated to about this many faces (0: keep all).
    groups : tuple of str, optional
        Only these display groups.

    Returns
    -------
    list of ViewMesh
        In a deterministic order (by name).
    """
    case = Path(case_dir)
    mesh_dir = case / "meshes"
    raw = _from_manifest(mesh_dir) if (mesh_dir / "manifest.json").is_file() else _from_scene(case)
    out = []
    for name, mesh, info in raw:
        st = style_for(name, info)
        if st is None:
            log.debug("no style for %s; not drawn", name)
            continue
        group, rgb, opacity, metallic = st
        if groups is not None and group not in groups:
            continue
        v, f = np.asarray(mesh.vertices, float), np.asarray(mesh.faces, np.int64)
        if not len(f):
            continue
        # implants are exact primitive meshes with few faces: keep them exact
        if not metallic:
            v, f = decimate(v, f, max_faces)
        level = info.get("level") or (name[9:] if name.startswith("vertebra_") else None)
        out.append(ViewMesh(name, group, level, v, f, tuple(float(x) for x in rgb), float(opacity), metallic))
    log.info("collected %d meshes from %s", len(out), case)
    return out
