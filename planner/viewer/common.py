"""Shared pieces of the viewer: its error type, colours and small geometry helpers.

Everything here is light (numpy only) so that :mod:`planner.viewer` imports instantly; the
heavy optional pieces (pyvista / VTK, matplotlib, Pillow) are imported inside the functions
that need them, with an error naming the ``render`` extra when they are missing.
"""

from __future__ import annotations

import colorsys
import logging
from typing import Any

import numpy as np

from planner.errors import PlannerError, optional_import

log = logging.getLogger(__name__)

RGB = tuple[float, float, float]


class ViewerError(PlannerError):
    """The viewer cannot show what was asked (missing plan or case, unknown level or
    candidate, a slice outside the image)."""

    code = "PLN-VIEW-001"


#: Metallic grey-blue of screws, rods and cross-links (as :mod:`planner.render`).
METAL_RGB: RGB = (0.62, 0.67, 0.76)
#: Colour of the recommended needle (a saturated orange, apart from the score colormap
#: and from bone, metal and the soft-tissue colours).
NEEDLE_RGB: RGB = (1.0, 0.42, 0.05)
#: Colour of the curved needle's extension beyond the cannula tip.
CURVED_RGB: RGB = (1.0, 0.85, 0.10)
#: Colour of blocked routes' closest candidates (thin, dim red).
BLOCKED_RGB: RGB = (0.85, 0.25, 0.25)
#: Colour of skin entry spheres of the recommended candidates.
ENTRY_RGB: RGB = (1.0, 1.0, 1.0)
#: Colormap of candidate scores (perceptually uniform, colour-blind safe).
SCORE_CMAP = "viridis"

#: Viewer background: dark blue-grey gradient (top, bottom) as radiology viewers use.
BACKGROUND: tuple[RGB, RGB] = ((0.02, 0.03, 0.06), (0.20, 0.22, 0.28))
TEXT_RGB: RGB = (0.93, 0.94, 0.97)


def level_rgb(level: str | None) -> RGB:
    """A distinct pastel colour per vertebral level (neighbours differ in hue).

    The hue steps by about 0.38 of the colour circle per level (close to the golden angle)
    so adjacent levels are far apart in hue, at fixed lightness and saturation so that
    no level dominates.

    Parameters
    ----------
    level : str or None
        Level name (``"L4"``); unknown levels get a neutral bone colour.

    Returns
    -------
    (3,) tuple of float
        RGB in 0-1.
    """
    from planner.labels.registry import LEVELS

    if level not in LEVELS:
        return (0.89, 0.85, 0.74)
    i = LEVELS.index(level)
    h = (0.08 + 0.382 * i) % 1.0
    return colorsys.hls_to_rgb(h, 0.70, 0.55)


def score_rgb(scores: np.ndarray, lo: float, hi: float, cmap: str = SCORE_CMAP) -> np.ndarray:
    """Colours (n, 3) of scores on the score colormap between ``lo`` and ``hi``.

    Parameters
    ----------
    scores : (n,) float
        Candidate scores.
    lo, hi : float
        Colormap range; equal bounds map everything to the top colour.
    cmap : str
        Matplotlib colormap name.

    Returns
    -------
    (n, 3) float
        RGB in 0-1.
    """
    mpl = optional_import("matplotlib", "candidate colours", "render")
    s = np.asarray(scores, float).reshape(-1)
    t = np.ones_like(s) if hi <= lo else np.clip((s - lo) / (hi - lo), 0.0, 1.0)
    return np.asarray(mpl.colormaps[cmap](t))[:, :3]


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` normalised (raises :class:`ViewerError` for a zero vector)."""
    v = np.asarray(v, float)
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n < 1e-12:
        raise ViewerError("zero or non-finite direction", code="PLN-VIEW-004", details={"vector": v.tolist()})
    return v / n


def perpendicular(d: np.ndarray) -> np.ndarray:
    """A unit vector perpendicular to unit ``d`` (deterministic)."""
    d = unit(d)
    ref = np.eye(3)[int(np.argmin(np.abs(d)))]
    return unit(np.cross(d, ref))


def tube_mesh(polyline: np.ndarray, radius: float, sections: int = 16, caps: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Triangle mesh of a tube of ``radius`` along a polyline (rotation-minimising frames).

    Parameters
    ----------
    polyline : (n, 3) float
        Centre line, n >= 2 (repeated points are dropped).
    radius : float
        Tube radius in mm.
    sections : int
        Vertices per ring.
    caps : bool
        Close both ends with fans.

    Returns
    -------
    vertices : (m, 3) float
    faces : (f, 3) int
        Outward-facing triangles.
    """
    c = np.asarray(polyline, float).reshape(-1, 3)
    keep = np.r_[True, np.linalg.norm(np.diff(c, axis=0), axis=1) > 1e-9]
    c = c[keep]
    if len(c) < 2:
        raise ViewerError("a tube needs two distinct points", code="PLN-VIEW-004")
    seg = np.diff(c, axis=0)
    seg /= np.linalg.norm(seg, axis=1)[:, None]
    tang = np.vstack([seg[:1], seg[:-1] + seg[1:], seg[-1:]]) if len(c) > 2 else np.vstack([seg, seg])
    tang /= np.maximum(np.linalg.norm(tang, axis=1), 1e-12)[:, None]
    e1 = perpendicular(tang[0])
    ang = 2 * np.pi * np.arange(sections) / sections
    rings = []
    for p, t in zip(c, tang):
        e1 = unit(e1 - (e1 @ t) * t)
        e2 = np.cross(t, e1)
        rings.append(p + radius * (np.cos(ang)[:, None] * e1 + np.sin(ang)[:, None] * e2))
    verts = np.vstack(rings)
    faces = []
    S = sections
    for r in range(len(c) - 1):
        a0, b0 = r * S, (r + 1) * S
        for k in range(S):
            k1 = (k + 1) % S
            faces.append((a0 + k, a0 + k1, b0 + k1))
            faces.append((a0 + k, b0 + k1, b0 + k))
    if caps:
        # the caps get their own copies of the end rings, so smooth vertex normals of the
        # side are not bent toward the axis by the cap fans
        n = len(verts)
        verts = np.vstack([verts, rings[0], rings[-1], c[:1], c[-1:]])
        r0, r1, m0, m1 = n, n + S, n + 2 * S, n + 2 * S + 1
        for k in range(S):
            k1 = (k + 1) % S
            faces.append((m0, r0 + k1, r0 + k))
            faces.append((m1, r1 + k, r1 + k1))
    return verts, np.asarray(faces, dtype=np.int64)


def sphere_mesh(centre: np.ndarray, radius: float, subdivisions: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Icosphere (vertices (m, 3), faces (f, 3)) of ``radius`` at ``centre``."""
    import trimesh

    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=float(radius))
    return np.asarray(s.vertices, float) + np.asarray(centre, float), np.asarray(s.faces, np.int64)


def decimate(vertices: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a triangle mesh to at most about ``max_faces`` faces (quadric decimation by
    ``fast_simplification``); meshes already small enough are returned unchanged.

    Returns
    -------
    vertices : (m, 3) float
    faces : (f, 3) int
    """
    v = np.asarray(vertices, float)
    f = np.asarray(faces, np.int64)
    if len(f) <= max_faces or max_faces <= 0:
        return v, f
    fs = optional_import("fast_simplification", "mesh decimation", "render")
    reduction = 1.0 - max_faces / len(f)
    v2, f2 = fs.simplify(v.astype(np.float32), f.astype(np.int32), target_reduction=float(reduction))
    if len(f2) == 0:  # pragma: no cover - degenerate input
        return v, f
    return np.asarray(v2, float), np.asarray(f2, np.int64)


def fmt_mm(x: Any, nd: int = 1) -> str:
    """A length for text panels: ``12.3`` or ``-`` when undefined."""
    if x is None:
        return "-"
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    return f"{xf:.{nd}f}" if np.isfinite(xf) else "-"
