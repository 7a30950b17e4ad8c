"""Off-screen 3D rendering of a scene to PNG (pyvista / VTK, imported lazily).

:func:`render_scene` draws a :class:`planner.phantom.model.PhantomScene` (meshed with
:mod:`planner.meshing`) or a folder written by :func:`planner.meshing.mesh_scene`:
vertebrae translucent bone-coloured with a slightly different tint per level, ribs
translucent, implants opaque metallic grey-blue, the canal / thecal sac light yellow,
aorta red, vena cava blue, lungs very faint, fluid collections cyan, level labels beside
each vertebral body, and a posterolateral oblique camera by default.

Off-screen rendering
--------------------
No display is needed.  The VTK >= 9.4 wheels pick the OpenGL window at run time; on a
headless Linux machine (no ``DISPLAY``/``WAYLAND_DISPLAY``) this module sets
``VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow`` when ``libEGL`` is present (Mesa EGL with
the llvmpipe software driver works without a GPU or ``/dev/dri``), else
``vtkOSOpenGLRenderWindow`` when ``libOSMesa`` is present, unless the variable is already
set.  On Debian 12 the EGL route needs ``libegl1 libegl-mesa0 libgl1-mesa-dri``
(``.ci/apt-packages.txt``).
"""

from __future__ import annotations

import colorsys
import ctypes.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from planner.errors import InputError, optional_import

log = logging.getLogger(__name__)

#: Camera direction (focal point -> camera, LPS) and view-up for each named view.
#: "oblique": posterolateral from the patient's left, slightly cranial (the view a
#: surgeon has of a prone patient from the left side of the table).
VIEWS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "oblique": ((0.62, 1.0, 0.30), (0.0, 0.0, 1.0)),
    "lateral": ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "ap": ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
    "posterior": ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
}

BONE_RGB = (0.89, 0.85, 0.74)
METAL_RGB = (0.60, 0.65, 0.74)

#: Style (colour RGB 0-1, opacity) of global structures by name; None = not drawn.
GLOBAL_STYLES: dict[str, tuple[tuple[float, float, float], float] | None] = {
    "spinal_canal": ((1.0, 0.96, 0.62), 0.30),
    "thecal_sac": ((1.0, 0.93, 0.50), 0.45),
    "spinal_cord": ((0.96, 0.82, 0.35), 0.70),
    "aorta": ((0.80, 0.08, 0.08), 0.85),
    "iliac_artery_left": ((0.80, 0.08, 0.08), 0.85),
    "iliac_artery_right": ((0.80, 0.08, 0.08), 0.85),
    "vena_cava": ((0.18, 0.30, 0.85), 0.85),
    "lung_left": ((0.90, 0.65, 0.65), 0.06),
    "lung_right": ((0.90, 0.65, 0.65), 0.06),
    "pleura": None,
    "fluid_collection": ((0.10, 0.85, 0.90), 0.55),
    "other_bone": (BONE_RGB, 0.25),
    "muscle": None,
    "fat": None,
    "skin": None,
    "soft_tissue": None,
}

#: Opacity of vertebral bone and of ribs.
BONE_OPACITY = 0.5
RIB_OPACITY = 0.35

#: Default background: a dark vertical gradient (top, bottom), as radiology viewers use,
#: against which translucent bone and metal both read well.
BACKGROUND = ((0.02, 0.03, 0.06), (0.22, 0.24, 0.30))
TEXT_RGB = (0.92, 0.93, 0.96)


def _configure_offscreen() -> str | None:
    """Pick a headless OpenGL window for VTK when there is no display (see module doc)."""
    if os.environ.get("VTK_DEFAULT_OPENGL_WINDOW"):
        return os.environ["VTK_DEFAULT_OPENGL_WINDOW"]
    if not sys.platform.startswith("linux") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    if ctypes.util.find_library("EGL"):
        choice = "vtkEGLRenderWindow"
    elif ctypes.util.find_library("OSMesa"):
        choice = "vtkOSOpenGLRenderWindow"
    else:
        log.warning(
            "no display and neither libEGL nor libOSMesa found; install libegl1 libegl-mesa0 "
            "libgl1-mesa-dri (Debian) for off-screen rendering"
        )
        return None
    os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = choice
    log.debug("headless: VTK_DEFAULT_OPENGL_WINDOW=%s", choice)
    return choice


def _pyvista():
    _configure_offscreen()
    pv = optional_import("pyvista", "rendering", "render")
    pv.OFF_SCREEN = True
    return pv


def _level_tint(level: str | None) -> tuple[float, float, float]:
    """Bone colour with a hue/lightness shift per level so neighbours are told apart."""
    from planner.labels.registry import LEVELS

    if level not in LEVELS:
        return BONE_RGB
    i = LEVELS.index(level)
    h, lgt, s = colorsys.rgb_to_hls(*BONE_RGB)
    h = (h + (0.035 if i % 2 else -0.02) + 0.006 * (i % 5)) % 1.0
    lgt = float(np.clip(lgt + (0.04 if i % 3 == 0 else -0.03 if i % 3 == 1 else 0.0), 0, 1))
    return colorsys.hls_to_rgb(h, lgt, s)


def _style(name: str, info: dict[str, Any]) -> dict[str, Any] | None:
    """pyvista ``add_mesh`` keyword arguments for one mesh, or None to skip it."""
    kind = info.get("kind", "")
    if (
        kind in ("screw", "rod", "crosslink")
        or name.startswith(("screw_", "rod_", "crosslink_"))
        or name == "other_metal"
    ):
        return {
            "color": METAL_RGB,
            "opacity": 1.0,
            "smooth_shading": True,
            "specular": 0.9,
            "specular_power": 40.0,
            "diffuse": 0.65,
            "ambient": 0.18,
        }
    if name in GLOBAL_STYLES:
        st = GLOBAL_STYLES[name]
        if st is None:
            return None
        return {"color": st[0], "opacity": st[1], "smooth_shading": True, "specular": 0.2}
    level = info.get("level")
    part = name.split("_", 1)[1] if "_" in name else ""
    if "rib" in part:
        return {"color": _level_tint(level), "opacity": RIB_OPACITY, "smooth_shading": True}
    if part == "disc":
        return {"color": (0.70, 0.80, 0.92), "opacity": 0.30, "smooth_shading": True}
    if part == "lesion":
        return {"color": (0.75, 0.35, 0.15), "opacity": 0.65, "smooth_shading": True}
    if part.startswith("nerve_root"):
        return {"color": (0.98, 0.85, 0.30), "opacity": 0.8, "smooth_shading": True}
    if name.startswith("vertebra_") or part in ("body", "pedicle_left", "pedicle_right", "posterior"):
        return {"color": _level_tint(level), "opacity": BONE_OPACITY, "smooth_shading": True, "specular": 0.1}
    tissue = info.get("tissue")
    if tissue in ("cortical_bone", "cancellous_bone"):
        return {"color": _level_tint(level), "opacity": BONE_OPACITY, "smooth_shading": True}
    if tissue in ("titanium", "cobalt_chrome"):
        return _style("other_metal", {})
    log.debug("no style for %s (tissue %s); skipped", name, tissue)
    return None


def _collect(
    scene_or_mesh_dir: Any, spacing_mm: float
) -> tuple[dict[str, tuple[Any, dict]], dict[str, np.ndarray]]:
    """Meshes to draw and level-label anchor points (body centres, LPS mm)."""
    from planner import meshing

    if isinstance(scene_or_mesh_dir, str | os.PathLike):
        d = Path(scene_or_mesh_dir)
        if not d.is_dir():
            raise InputError(f"mesh folder not found: {d}", code="PLN-IN-001", details={"path": str(d)})
        meshes = meshing.load_mesh_dir(d)
        centres: dict[str, np.ndarray] = {}
    else:
        meshes = meshing.scene_meshes(scene_or_mesh_dir, spacing_mm, parts=False)
        centres = {
            lev: np.asarray(fr.centre_lps, float)
            for lev, fr in getattr(scene_or_mesh_dir, "vertebrae", {}).items()
        }
    drawn_groups = {n for n, (_, i) in meshes.items() if i.get("kind") != "part"}
    out = {
        n: (m, i)
        for n, (m, i) in meshes.items()
        if not (i.get("kind") == "part" and i.get("group") in drawn_groups)
    }
    # label anchors from body meshes where the scene did not give frames
    for n, (m, i) in meshes.items():
        lev = i.get("level")
        if not lev or lev in centres or not len(m.vertices):
            continue
        if n == f"{lev}_body" or n == f"vertebra_{lev}":
            centres[lev] = np.asarray(m.bounds, float).mean(0)
    return out, centres


def _to_polydata(pv, mesh) -> Any:
    faces = np.asarray(mesh.faces, dtype=np.int64)
    cells = np.hstack([np.full((len(faces), 1), 3, dtype=np.int64), faces]).ravel()
    return pv.PolyData(np.asarray(mesh.vertices, dtype=float), cells)


def render_scene(
    scene_or_mesh_dir: Any,
    out_png: str | os.PathLike,
    *,
    view: str = "oblique",
    window_size: tuple[int, int] = (1200, 1000),
    title: str | None = None,
    spacing_mm: float = 1.0,
    labels: bool = True,
    background: tuple[float, float, float] | tuple[tuple[float, float, float], tuple[float, float, float]] = BACKGROUND,
    camera_info: dict[str, Any] | None = None,
    depth_peeling: bool = False,
) -> Path:
    """Render a scene off-screen to a PNG file.

    Parameters
    ----------
    scene_or_mesh_dir : PhantomScene or path-like
        A phantom scene (meshed here, structures only, at ``spacing_mm``) or a folder
        written by :func:`planner.meshing.mesh_scene` (its ``manifest.json`` is used).
    out_png : path-like
        Output PNG.
    view : {"oblique", "lateral", "ap", "posterior"}
        Camera direction (:data:`VIEWS`); "oblique" is posterolateral from the left.
    window_size : (int, int)
        Width, height in pixels.
    title : str, optional
        Text in the upper-left corner.
    spacing_mm : float
        Marching-cubes spacing when meshing a scene.
    labels : bool
        Draw level names beside each vertebral body.
    background : (3,) float or ((3,), (3,))
        RGB 0-1, or a (top, bottom) pair for a vertical gradient (default :data:`BACKGROUND`).
    depth_peeling : bool
        Order-independent transparency by depth peeling.  Off by default: with VTK 9.7 on
        Mesa EGL/llvmpipe (headless) depth peeling dropped every translucent actor; without
        it VTK draws translucent actors after opaque ones, unsorted (small artefacts where
        translucent shells overlap).
    camera_info : dict, optional
        If given, filled with ``position``, ``focal_point``, ``view_up``, ``window_size`` and
        ``world_to_ndc`` (4, 4): LPS mm -> normalised device coordinates, so callers can find
        where a point projects (pixel column ``(x+1)/2*W``, row from top ``(1-y)/2*H``).

    Returns
    -------
    Path
        ``out_png``.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {sorted(VIEWS)}, got {view!r}")
    pv = _pyvista()
    meshes, centres = _collect(scene_or_mesh_dir, spacing_mm)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)

    plotter = pv.Plotter(off_screen=True, window_size=list(window_size))
    try:
        bg = np.asarray(background, float)
        if bg.ndim == 2:
            plotter.set_background(tuple(bg[1]), top=tuple(bg[0]))
        else:
            plotter.set_background(tuple(bg))
        dark = float(bg.reshape(-1, 3).mean()) < 0.5
        text_rgb = TEXT_RGB if dark else (0.1, 0.1, 0.15)
        frame_pts = []
        for name in sorted(meshes):
            mesh, info = meshes[name]
            st = _style(name, info)
            if st is None or not len(mesh.faces):
                continue
            plotter.add_mesh(_to_polydata(pv, mesh), name=name, **st)
            if st["opacity"] >= 0.2 or info.get("kind") in ("screw", "rod", "crosslink"):
                frame_pts.append(np.asarray(mesh.bounds))
        if not frame_pts:
            raise InputError("nothing to render: no drawable meshes in the scene", code="PLN-IN-002")
        fb = np.concatenate(frame_pts)
        lo, hi = fb.min(0), fb.max(0)
        focal = (lo + hi) / 2
        direction, up = (np.asarray(v, float) for v in VIEWS[view])
        direction /= np.linalg.norm(direction)
        if labels and centres:
            lat = np.cross(up, direction)  # screen-right in the view
            lat = lat / (np.linalg.norm(lat) or 1.0)
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
            edge = float((corners @ lat).max()) + 6.0  # just beyond the framed box, screen-right
            pts = np.array([c + lat * (edge - float(c @ lat)) for c in centres.values()])
            plotter.add_point_labels(
                pts,
                list(centres),
                font_size=max(10, int(window_size[1] / 55)),
                bold=True,
                text_color=text_rgb,
                shape=None,
                show_points=False,
                always_visible=True,
            )
        diag = float(np.linalg.norm(hi - lo))
        plotter.camera_position = [tuple(focal + direction * 3 * diag), tuple(focal), tuple(up)]
        plotter.reset_camera(bounds=(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]))
        plotter.camera.zoom(1.15)
        if depth_peeling:
            plotter.enable_depth_peeling(number_of_peels=6)
        if title:
            import textwrap

            fs = max(8, int(window_size[1] / 70))
            width = max(20, int(window_size[0] / (fs * 0.95)))
            plotter.add_text(
                "\n".join(textwrap.wrap(title, width)), position="upper_left", font_size=fs, color=text_rgb
            )
        with pv.VtkErrorCatcher(raise_errors=False, send_to_logging=True):
            img = plotter.screenshot(return_img=True)
        if camera_info is not None:
            cam = plotter.renderer.GetActiveCamera()
            aspect = window_size[0] / window_size[1]
            m = cam.GetCompositeProjectionTransformMatrix(aspect, -1, 1)
            camera_info.update(
                position=list(cam.GetPosition()),
                focal_point=list(cam.GetFocalPoint()),
                view_up=list(cam.GetViewUp()),
                window_size=tuple(window_size),
                world_to_ndc=np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)]),
            )
    finally:
        plotter.close()
    _write_png(img, out)
    log.info("rendered %d meshes to %s (%s view)", len(meshes), out, view)
    return out


def _write_png(img: np.ndarray, path: Path) -> None:
    """Write an (H, W, 3|4) uint8 image atomically."""
    import tempfile

    from PIL import Image

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(np.ascontiguousarray(img)).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def project_points(points: np.ndarray, camera_info: dict[str, Any]) -> np.ndarray:
    """Pixel (column, row-from-top) of LPS points (n, 3) under a ``camera_info`` from
    :func:`render_scene`; returns (n, 2) float."""
    p = np.asarray(points, float).reshape(-1, 3)
    h = np.c_[p, np.ones(len(p))] @ np.asarray(camera_info["world_to_ndc"]).T
    ndc = h[:, :3] / h[:, 3:4]
    W, H = camera_info["window_size"]
    return np.c_[(ndc[:, 0] + 1) / 2 * W, (1 - ndc[:, 1]) / 2 * H]
