"""Triangle meshes of anatomy (from SDFs) and of instruments and implants (exact primitives).

Everything is in patient LPS millimetres unless a function says otherwise.

* :func:`sdf_to_mesh`: marching cubes of a signed distance function on a narrow-band grid,
  directly in LPS mm, closed (watertight) wherever the shape is closed.
* Exact primitive meshes built from rings of vertices (lofts): :func:`screw_mesh`,
  :func:`rod_mesh`, :func:`crosslink_mesh`, :func:`needle_mesh`, :func:`cannula_mesh`,
  :func:`curved_needle_mesh`, :func:`bone_tamp_mesh`.  Each component is a closed surface
  with outward normals; a mesh of several components (screw shank + tulip) is a
  concatenation, watertight edge-wise but not a boolean union.
* :func:`write_mesh` / :func:`read_mesh`: binary STL (frame and units in the 80-byte
  header), binary PLY (``comment`` lines) and VTK XML PolyData ``.vtp`` (field-data arrays
  ``frame``, ``units``, ``planner_meta``), written atomically and byte-for-byte
  deterministically without VTK.
* :func:`mesh_scene`: one file per phantom structure, per part and per implant, plus a
  ``manifest.json``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import struct
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from planner.errors import GeometryError, InputError
from planner.implants import CrossLink, Rod, Screw
from planner.instruments import (
    BoneTamp,
    CurvedNeedle,
    KyphoplastyCannula,
    StraightNeedle,
    curved_needle_centreline,
    get_instrument,
)

log = logging.getLogger(__name__)

#: Points evaluated per SDF call (bounds memory: ~24 bytes x 3 per point).
SDF_CHUNK_POINTS = 1 << 18
#: Largest fine grid :func:`sdf_to_mesh` builds before coarsening the spacing.
MAX_GRID_POINTS = 24_000_000
#: Formats :func:`write_mesh` and :func:`mesh_scene` write.
MESH_FORMATS = ("stl", "ply", "vtp")

#: Thread pitch (mm) of the modelled pedicle-screw thread.  Not in instruments.md (screw
#: thread geometry was not researched): [U], a drawing parameter only.
SCREW_THREAD_PITCH_MM = 2.75
#: Thread depth (mm) = major minus minor radius; [U], drawing parameter only.
SCREW_THREAD_DEPTH_MM = 1.0
#: Width of the rod slot in the tulip (mm); fits 5.5-6.35 mm rods (instruments.md 4b [V]/[S]);
#: tulip dimensions themselves are [U] (instruments.md 4b).
TULIP_SLOT_WIDTH_MM = 6.5


# =========================================================================================
# SDF -> mesh
# =========================================================================================
def _eval_chunked(sdf, points: np.ndarray, chunk: int = SDF_CHUNK_POINTS) -> np.ndarray:
    """Evaluate ``sdf`` on points (n, 3) in chunks; returns (n,) float64."""
    out = np.empty(len(points), dtype=float)
    for i in range(0, len(points), chunk):
        out[i : i + chunk] = sdf(points[i : i + chunk])
    return out


def _grid_points(origin: np.ndarray, spacing: float, idx: tuple[np.ndarray, ...]) -> np.ndarray:
    return origin + np.stack(idx, axis=1).astype(float) * spacing


def _evaluate_narrow_band(
    sdf, origin: np.ndarray, shape: tuple[int, int, int], spacing: float, coarse: int = 4
) -> np.ndarray:
    """SDF on a regular grid (nx, ny, nz), exact only within a band around the surface.

    A grid ``coarse`` times coarser is evaluated first; fine points are evaluated only in
    coarse blocks whose corners lie within ``band`` of the surface.  Elsewhere the value
    is ``+-band`` with the block's sign, which keeps marching cubes exact because every cell
    the surface crosses lies in an evaluated block (the SDF is 1-Lipschitz; a safety factor
    of 1.5 covers the first-order approximate SDFs).
    """
    nx, ny, nz = shape
    n_total = nx * ny * nz
    if n_total <= 300_000 or min(shape) <= 2 * coarse:
        idx = np.indices(shape).reshape(3, -1)
        return _eval_chunked(sdf, _grid_points(origin, spacing, tuple(idx))).reshape(shape)
    k = coarse
    cshape = tuple(int(np.ceil((n - 1) / k)) + 1 for n in shape)
    cidx = np.indices(cshape).reshape(3, -1)
    dc = _eval_chunked(sdf, _grid_points(origin, spacing * k, tuple(cidx))).reshape(cshape)
    band = 1.5 * np.sqrt(3.0) * (k + 1) * spacing
    a = np.abs(dc)
    corner_min = a[:-1, :-1, :-1]
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                if dx or dy or dz:
                    corner_min = np.minimum(
                        corner_min,
                        a[dx : dx + cshape[0] - 1, dy : dy + cshape[1] - 1, dz : dz + cshape[2] - 1],
                    )
    near = corner_min < band
    fill = np.where(dc[:-1, :-1, :-1] > 0, band, -band).astype(np.float32)
    bi = [np.minimum(np.arange(n) // k, c - 2) for n, c in zip(shape, cshape)]
    grid = fill[np.ix_(*bi)].astype(float)
    near_fine = near[np.ix_(*bi)]
    idx = np.nonzero(near_fine)
    log.debug("narrow band: %d of %d grid points evaluated", len(idx[0]), n_total)
    grid[idx] = _eval_chunked(sdf, _grid_points(origin, spacing, idx))
    return grid


def sdf_to_mesh(
    sdf,
    spacing_mm: float = 0.5,
    bounds: np.ndarray | None = None,
    *,
    margin_mm: float | None = None,
    smooth_iterations: int = 0,
    decimate_fraction: float | None = None,
    max_grid_points: int = MAX_GRID_POINTS,
) -> trimesh.Trimesh:
    """Mesh the zero level set of a signed distance function, in LPS mm.

    Parameters
    ----------
    sdf : callable
        ``sdf(points (n, 3)) -> (n,)`` signed distance in mm, negative inside, with a
        ``bounds`` attribute (2, 3) unless ``bounds`` is given
        (:class:`planner.phantom.sdf.SDF`).
    spacing_mm : float
        Grid spacing (isotropic).  The grid is snapped to multiples of the spacing, so
        meshes of touching structures sample the same points.
    bounds : (2, 3) float, optional
        LPS box to mesh; default ``sdf.bounds``.
    margin_mm : float, optional
        Added around the box; default ``2 * spacing_mm``.
    smooth_iterations : int
        Taubin (volume-preserving, non-shrinking) smoothing iterations
        (``trimesh.smoothing.filter_taubin``); 0 = none.
    decimate_fraction : float, optional
        Keep this fraction of faces with quadric decimation.  Needs the optional package
        ``fast-simplification``; skipped with a log message when it is missing.
    max_grid_points : int
        If the grid would be larger, the spacing is coarsened (logged) to bound memory.

    Returns
    -------
    trimesh.Trimesh
        Vertices (v, 3) LPS mm, faces (f, 3) with outward normals.  The grid is padded with
        an "outside" layer, so the surface is closed (watertight) even when the shape is cut
        by ``bounds``.  Empty if the level set does not cross the box.
    """
    from skimage.measure import marching_cubes

    if not spacing_mm > 0:
        raise GeometryError(f"spacing_mm must be > 0, got {spacing_mm}", code="PLN-GEO-002")
    b = np.asarray(sdf.bounds if bounds is None else bounds, dtype=float).reshape(2, 3)
    if not np.all(np.isfinite(b)) or np.any(b[1] < b[0]):
        raise GeometryError(f"invalid mesh bounds {b.tolist()}", code="PLN-GEO-001")
    spacing = float(spacing_mm)
    margin = 2.0 * spacing if margin_mm is None else float(margin_mm)
    while True:
        lo = np.floor((b[0] - margin) / spacing) * spacing
        hi = np.ceil((b[1] + margin) / spacing) * spacing
        shape = tuple(int(round(x)) + 1 for x in (hi - lo) / spacing)
        if int(np.prod(shape)) <= max_grid_points:
            break
        new = spacing * (np.prod(shape) / max_grid_points) ** (1 / 3) * 1.01
        log.info("grid %s too large; spacing %.3f -> %.3f mm", shape, spacing, new)
        spacing = float(new)
    grid = _evaluate_narrow_band(sdf, lo, shape, spacing)
    pad = float(np.sqrt(3.0) * spacing * 2)
    grid = np.pad(grid, 1, mode="constant", constant_values=pad)
    origin = lo - spacing
    if not (grid.min() < 0.0 < grid.max()):
        log.warning("SDF has no surface inside bounds %s; returning an empty mesh", b.tolist())
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), process=False)
    verts, faces, _, _ = marching_cubes(
        grid, level=0.0, spacing=(spacing,) * 3, gradient_direction="ascent", allow_degenerate=False
    )
    mesh = trimesh.Trimesh(verts.astype(float) + origin, faces.astype(np.int64), process=False)
    mesh.merge_vertices()
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    if mesh.volume < 0:
        mesh.invert()
    if smooth_iterations > 0:
        trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=0.53, iterations=int(smooth_iterations))
    if decimate_fraction is not None and 0 < decimate_fraction < 1:
        mesh = _decimate(mesh, decimate_fraction)
    mesh.metadata.update({"frame": "LPS", "units": "mm", "spacing_mm": spacing})
    return mesh


def _decimate(mesh: trimesh.Trimesh, fraction: float) -> trimesh.Trimesh:
    """Quadric decimation if ``fast_simplification`` is installed, else the input."""
    try:
        import fast_simplification  # noqa: F401
    except ImportError:
        log.info("decimation skipped: optional package 'fast-simplification' is not installed")
        return mesh
    target = max(4, int(len(mesh.faces) * fraction))
    return mesh.simplify_quadric_decimation(face_count=target)


# =========================================================================================
# primitive meshes (lofts of rings)
# =========================================================================================
def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=float).reshape(3)
    n = float(np.linalg.norm(v))
    if n < 1e-12:
        raise GeometryError("zero-length axis", code="PLN-GEO-005")
    return v / n


def _basis(axis: np.ndarray, ref: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors e1, e2 with (e1, e2, axis) right-handed; e1 follows ``ref`` if given."""
    a = _unit(axis)
    cands = [] if ref is None else [np.asarray(ref, float)]
    cands += [np.eye(3)[i] for i in np.argsort(np.abs(a))]
    for c in cands:
        e1 = c - (c @ a) * a
        if np.linalg.norm(e1) > 1e-6:
            e1 = e1 / np.linalg.norm(e1)
            return e1, np.cross(a, e1)
    raise GeometryError("cannot build a frame", code="PLN-GEO-005")  # pragma: no cover


def _loft(rows: Sequence[np.ndarray], closed: bool = False) -> trimesh.Trimesh:
    """Stitch rings of vertices into a triangle surface.

    Parameters
    ----------
    rows : sequence of (S, 3) or (1, 3) float
        Rings with the same S, ordered so that (ring direction, row direction) gives the
        outward normal; a (1, 3) row is a pole (cap centre or apex).
    closed : bool
        Stitch the last row to the first (a torus-like loop, e.g. a hollow tube).
    """
    S = max(len(r) for r in rows)
    verts, starts = [], []
    n = 0
    for r in rows:
        r = np.asarray(r, float).reshape(-1, 3)
        starts.append(n)
        verts.append(r)
        n += len(r)
    V = np.concatenate(verts)
    j = np.arange(S)
    jn = (j + 1) % S
    faces = []
    pairs = list(zip(range(len(rows) - 1), range(1, len(rows))))
    if closed:
        pairs.append((len(rows) - 1, 0))
    for a, b in pairs:
        pa, pb = len(verts[a]) == 1, len(verts[b]) == 1
        A = starts[a] + (0 if pa else j)
        An = starts[a] + (0 if pa else jn)
        B = starts[b] + (0 if pb else j)
        Bn = starts[b] + (0 if pb else jn)
        A, An, B, Bn = (np.broadcast_to(x, (S,)) for x in (A, An, B, Bn))
        if pa and pb:
            continue
        if not pa:
            faces.append(np.stack([A, An, B], axis=1))
        if not pb:
            faces.append(np.stack([An, Bn, B], axis=1))
    F = np.concatenate(faces).astype(np.int64)
    return trimesh.Trimesh(V, F, process=False)


def _ring(centre: np.ndarray, e1: np.ndarray, e2: np.ndarray, r: float | np.ndarray, S: int) -> np.ndarray:
    phi = 2 * np.pi * np.arange(S) / S
    r = np.broadcast_to(np.asarray(r, float), (S,))
    return centre + (r * np.cos(phi))[:, None] * e1 + (r * np.sin(phi))[:, None] * e2


def _revolve(
    z: np.ndarray,
    r: np.ndarray,
    origin: np.ndarray,
    axis: np.ndarray,
    sections: int = 32,
    ref: np.ndarray | None = None,
    closed: bool = False,
) -> trimesh.Trimesh:
    """Surface of revolution of the profile (z_i, r_i) about ``axis`` through ``origin``.

    ``r`` is (m,) or (m, sections) (angle-dependent radius, e.g. a helical thread); rows with
    r == 0 everywhere become poles.  For a solid, start and end the profile at r = 0 and
    traverse it from the ``-axis`` end to the ``+axis`` end along the outside.
    """
    a = _unit(axis)
    e1, e2 = _basis(a, ref)
    o = np.asarray(origin, float)
    z = np.asarray(z, float)
    r = np.asarray(r, float)
    if r.ndim == 1:
        r = np.repeat(r[:, None], sections, axis=1)
    rows = []
    for zi, ri in zip(z, r):
        c = o + zi * a
        rows.append(c[None, :] if np.all(ri <= 0) else _ring(c, e1, e2, ri, sections))
    return _loft(rows, closed=closed)


def _sweep(centreline: np.ndarray, radius: float, sections: int = 24, caps: bool = True) -> trimesh.Trimesh:
    """Tube of ``radius`` along a polyline (n, 3) with rotation-minimising frames."""
    c = np.asarray(centreline, float).reshape(-1, 3)
    keep = np.r_[True, np.linalg.norm(np.diff(c, axis=0), axis=1) > 1e-9]
    c = c[keep]
    if len(c) < 2:
        raise GeometryError("centre line needs two distinct points", code="PLN-GEO-005")
    seg = np.diff(c, axis=0)
    seg /= np.linalg.norm(seg, axis=1)[:, None]
    tang = np.empty_like(c)
    tang[0], tang[-1] = seg[0], seg[-1]
    if len(c) > 2:
        mid = seg[:-1] + seg[1:]
        nm = np.linalg.norm(mid, axis=1)
        mid = np.where(nm[:, None] > 1e-9, mid / np.maximum(nm, 1e-12)[:, None], seg[1:])
        tang[1:-1] = mid
    e1, _ = _basis(tang[0])
    rows = []
    if caps:
        rows.append(c[:1])
    for p, t in zip(c, tang):
        e1 = e1 - (e1 @ t) * t
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(t, e1)
        # miter: keep the tube radius perpendicular to the segments at a bend
        rows.append(_ring(p, e1, e2, radius, sections))
    if caps:
        rows.append(c[-1:])
    return _loft(rows)


def _convex_prism(
    poly: np.ndarray,
    origin: np.ndarray,
    e1: np.ndarray,
    e2: np.ndarray,
    axis: np.ndarray,
    z0: float,
    z1: float,
) -> trimesh.Trimesh:
    """Closed prism of a convex CCW polygon (k, 2) in the (e1, e2) plane, z0 < z1 along axis."""
    P = np.asarray(poly, float)
    k = len(P)
    base = origin + P[:, :1] * e1 + P[:, 1:2] * e2
    V = np.concatenate([base + z0 * axis, base + z1 * axis])
    i = np.arange(k)
    inn = (i + 1) % k
    side = np.concatenate([np.stack([i, inn, k + i], 1), np.stack([inn, k + inn, k + i], 1)])
    fan = np.arange(1, k - 1)
    bottom = np.stack([np.zeros_like(fan), fan + 1, fan], 1)
    top = np.stack([k + np.zeros_like(fan), k + fan, k + fan + 1], 1)
    return trimesh.Trimesh(V, np.concatenate([side, bottom, top]).astype(np.int64), process=False)


def _concat(meshes: Sequence[trimesh.Trimesh], **metadata: Any) -> trimesh.Trimesh:
    V, F, n = [], [], 0
    for m in meshes:
        V.append(np.asarray(m.vertices))
        F.append(np.asarray(m.faces) + n)
        n += len(m.vertices)
    out = trimesh.Trimesh(np.concatenate(V), np.concatenate(F), process=False)
    out.metadata.update({"frame": "LPS", "units": "mm", **metadata})
    return out


def _tulip(
    head: np.ndarray,
    axis: np.ndarray,
    diameter: float,
    height: float,
    slot_dir: np.ndarray,
    slot_width: float = TULIP_SLOT_WIDTH_MM,
    sections: int = 32,
) -> list[trimesh.Trimesh]:
    """U-shaped polyaxial head: a solid base plus two arms either side of the rod slot.

    The tulip sits on the axis behind ``head`` (toward ``-axis``) over ``height`` mm; the rod
    seat is at 0.6 x height (:attr:`planner.implants.Screw.rod_seat_lps`); the slot (width
    ``slot_width``) runs along ``slot_dir`` with its floor under the seat by half a slot.
    """
    a = _unit(axis)
    back = -a
    R = 0.5 * diameter
    e1, e2 = _basis(back, slot_dir)
    w2 = 0.5 * slot_width
    base_h = float(np.clip(0.6 * height - w2, 0.2 * height, height))
    if w2 >= 0.9 * R or base_h >= height:
        return [_revolve([0, 0, height, height], [0, R, R, 0], head, back, sections, ref=e1)]
    base = _revolve([0, 0, base_h, base_h], [0, R, R, 0], head, back, sections, ref=e1)
    phi0 = np.arcsin(w2 / R)
    phis = np.linspace(phi0, np.pi - phi0, max(6, sections // 2))
    arc = np.stack([R * np.cos(phis), R * np.sin(phis)], 1)  # y >= w2, CCW; chord closes it
    arms = []
    for sgn in (1.0, -1.0):
        poly = arc * np.array([1.0, sgn])
        if sgn < 0:
            poly = poly[::-1]
        arms.append(_convex_prism(poly, head, e1, e2, back, base_h, height))
    return [base, *arms]


def screw_mesh(
    screw: Screw,
    threads: bool = True,
    *,
    rod_direction: np.ndarray | None = None,
    pitch_mm: float = SCREW_THREAD_PITCH_MM,
    thread_depth_mm: float = SCREW_THREAD_DEPTH_MM,
    sections: int = 36,
    tulip: bool = True,
) -> trimesh.Trimesh:
    """Pedicle screw: threaded shank with conical tip plus a U-shaped tulip head.

    Parameters
    ----------
    screw : Screw
        Head point (thread start), tip point, major diameter, tulip diameter and height.
    threads : bool
        Model a helical thread (radius between ``D/2 - thread_depth_mm`` and ``D/2``); if
        False, a plain cylinder of the major diameter.
    rod_direction : (3,) float, optional
        Direction of the rod slot; default the LPS superior axis projected perpendicular to
        the screw.
    pitch_mm, thread_depth_mm : float
        Thread geometry, drawing parameters only ([U], not in instruments.md).
    sections : int
        Vertices per ring.
    tulip : bool
        Include the tulip head.

    Returns
    -------
    trimesh.Trimesh
        LPS mm.  Every vertex lies within ``diameter/2`` of the head-tip segment (shank) or
        inside the tulip cylinder ``tulip_diameter/2`` x ``tulip_height`` behind the head;
        the tip vertex is ``screw.tip_lps``.
    """
    a = screw.axis
    L = screw.length_mm
    R = 0.5 * float(screw.diameter_mm)
    tip_len = min(1.2 * screw.diameter_mm, 0.4 * L)
    ref = np.array([0.0, 0.0, 1.0]) if rod_direction is None else np.asarray(rod_direction, float)
    if threads:
        rows_per_pitch = 12
        nz = max(8, int(np.ceil(L / pitch_mm * rows_per_pitch)))
        z = np.linspace(0.0, L, nz + 1)
        phi = 2 * np.pi * np.arange(sections) / sections
        t = np.mod(z[:, None] / pitch_mm - phi[None, :] / (2 * np.pi), 1.0)
        tooth = np.clip(1.5 * (1.0 - np.abs(2.0 * t - 1.0)) - 0.25, 0.0, 1.0)
        depth = min(float(thread_depth_mm), 0.45 * R)
        r = (R - depth) + depth * tooth
        env = np.clip((L - z) / tip_len, 0.0, 1.0)[:, None]
        r = r * env
        z = np.r_[0.0, z]
        r = np.vstack([np.zeros((1, sections)), r])
    else:
        z = np.array([0.0, 0.0, L - tip_len, L])
        r = np.array([0.0, R, R, 0.0])
    parts = [_revolve(z, r, screw.head_lps, a, sections, ref=ref)]
    if tulip:
        parts += _tulip(screw.head_lps, a, screw.tulip_diameter_mm, screw.tulip_height_mm, ref)
    return _concat(parts, name=screw.name, kind="screw")


def rod_mesh(rod: Rod, sections: int = 24) -> trimesh.Trimesh:
    """Rod: a tube of ``rod.diameter_mm`` swept along its centre line, with flat end caps."""
    m = _sweep(rod.centreline_lps, 0.5 * float(rod.diameter_mm), sections)
    m.metadata.update({"frame": "LPS", "units": "mm", "name": rod.name, "kind": "rod"})
    return m


def crosslink_mesh(crosslink: CrossLink, sections: int = 20) -> trimesh.Trimesh:
    """Cross-link: a tube of ``crosslink.diameter_mm`` along its centre line (dimensions [U])."""
    m = _sweep(crosslink.centreline_lps, 0.5 * float(crosslink.diameter_mm), sections)
    m.metadata.update({"frame": "LPS", "units": "mm", "name": crosslink.name, "kind": "crosslink"})
    return m


def _resolve(instrument: Any, default: str) -> Any:
    if instrument is None:
        return get_instrument(default)
    if isinstance(instrument, str):
        return get_instrument(instrument)
    return instrument


def _hub(
    proximal: np.ndarray, a: np.ndarray, diameter: float, length: float, sections: int
) -> trimesh.Trimesh:
    """Handle / Luer hub: a cylinder from ``proximal`` backwards (``-a``) over ``length``."""
    R = 0.5 * diameter
    return _revolve([0, 0, length, length], [0, R, R, 0], proximal, -a, sections)


def needle_mesh(
    entry: np.ndarray,
    tip: np.ndarray,
    instrument: StraightNeedle | KyphoplastyCannula | CurvedNeedle | str | None = None,
    *,
    full_length: bool = False,
    sections: int = 24,
) -> trimesh.Trimesh:
    """Straight needle (closed trocar stylet in place): shaft of the instrument OD, conical tip.

    Parameters
    ----------
    entry, tip : (3,) float
        LPS mm.  The shaft runs from ``entry`` to ``tip``.
    instrument : instrument or registry name, optional
        Default ``"needle_11g"``; a curved needle uses its cannula, a kyphoplasty cannula its
        OD.
    full_length : bool
        Draw the whole usable length back from the tip (``usable_length_mm``) and the hub,
        instead of only entry -> tip.
    sections : int
        Vertices per ring.

    Returns
    -------
    trimesh.Trimesh
        LPS mm; the apex vertex is ``tip``.
    """
    ins = _resolve(instrument, "needle_11g")
    if isinstance(ins, CurvedNeedle):
        ins = ins.cannula
    od = float(ins.od_mm)
    tip_len = float(getattr(ins, "tip_length_mm", 1.5 * od))
    p1 = np.asarray(tip, float).reshape(3)
    p0 = np.asarray(entry, float).reshape(3)
    a = _unit(p1 - p0)
    L = float(np.linalg.norm(p1 - p0))
    if full_length:
        L = max(L, float(ins.usable_length_mm))
        p0 = p1 - a * L
    tip_len = min(tip_len, 0.5 * L)
    R = 0.5 * od
    parts = [_revolve([0, 0, L - tip_len, L], [0, R, R, 0], p0, a, sections)]
    if full_length:
        parts.append(_hub(p0, a, ins.hub_diameter_mm, ins.hub_length_mm, sections))
    return _concat(parts, kind="needle", instrument=getattr(ins, "name", "needle"))


def cannula_mesh(
    entry: np.ndarray,
    tip: np.ndarray,
    cannula: KyphoplastyCannula | StraightNeedle | str | None = None,
    *,
    full_length: bool = False,
    sections: int = 32,
) -> trimesh.Trimesh:
    """Hollow working cannula (OD, open lumen of ID) from ``entry`` to ``tip``.

    Parameters
    ----------
    entry, tip : (3,) float
        LPS mm.
    cannula : instrument or registry name, optional
        Default ``"kyphoplasty_cannula"``.
    full_length : bool
        Draw ``usable_length_mm`` back from the tip and the hub.
    sections : int
        Vertices per ring.
    """
    ins = _resolve(cannula, "kyphoplasty_cannula")
    if isinstance(ins, CurvedNeedle):
        ins = ins.cannula
    p1 = np.asarray(tip, float).reshape(3)
    p0 = np.asarray(entry, float).reshape(3)
    a = _unit(p1 - p0)
    L = float(np.linalg.norm(p1 - p0))
    if full_length:
        L = max(L, float(ins.usable_length_mm))
        p0 = p1 - a * L
    Ro, Ri = 0.5 * float(ins.od_mm), 0.5 * float(ins.id_mm)
    # closed profile loop: outer wall up, inner wall down (the annulus ends close the loop)
    tube = _revolve([0, L, L, 0], [Ro, Ro, Ri, Ri], p0, a, sections, closed=True)
    parts = [tube]
    if full_length:
        parts.append(_hub(p0, a, ins.hub_diameter_mm, ins.hub_length_mm, sections))
    return _concat(parts, kind="cannula", instrument=getattr(ins, "name", "cannula"))


def bone_tamp_mesh(
    cannula_tip: np.ndarray,
    direction: np.ndarray,
    tamp: BoneTamp | KyphoplastyCannula | None = None,
    *,
    inflated: bool = True,
    inflated_diameter_mm: float | None = None,
    sections: int = 32,
    rows: int = 25,
) -> trimesh.Trimesh:
    """Inflatable bone tamp beyond the cannula tip, as a rounded body of revolution.

    Parameters
    ----------
    cannula_tip : (3,) float
        LPS mm; the balloon starts here (it must fully leave the cannula, instruments.md 3).
    direction : (3,) float
        Cannula axis toward the tip.
    tamp : BoneTamp or KyphoplastyCannula, optional
        Default: the tamp of ``"kyphoplasty_cannula"`` (15 mm balloon [V], 10 mm diameter [U]).
    inflated : bool
        Inflated (``inflated_diameter_mm``) or deflated (``shaft_od_mm``).
    inflated_diameter_mm : float, optional
        Override the tamp's inflated diameter ([U], per device and volume).
    sections, rows : int
        Mesh resolution.

    Returns
    -------
    trimesh.Trimesh
        Closed surface spanning ``balloon_length_mm`` along ``direction``; the profile is a
        super-ellipse ``r(s) = R (1 - |2s/L - 1|^4)^(1/4)``.
    """
    if tamp is None:
        tamp = get_instrument("kyphoplasty_cannula").tamp
    elif isinstance(tamp, KyphoplastyCannula):
        tamp = tamp.tamp
    L = float(tamp.balloon_length_mm)
    D = float(inflated_diameter_mm or tamp.inflated_diameter_mm) if inflated else float(tamp.shaft_od_mm)
    s = np.linspace(0.0, L, rows)
    r = 0.5 * D * np.clip(1.0 - np.abs(2 * s / L - 1.0) ** 4, 0.0, 1.0) ** 0.25
    r[0] = r[-1] = 0.0
    m = _revolve(s, r, np.asarray(cannula_tip, float), direction, sections)
    m.metadata.update({"frame": "LPS", "units": "mm", "kind": "bone_tamp"})
    return m


def curved_needle_mesh(
    cannula_entry: np.ndarray,
    cannula_tip: np.ndarray,
    bend_direction: np.ndarray,
    instrument: CurvedNeedle | str | None = None,
    *,
    extension_mm: float | None = None,
    radius_mm: float | None = None,
    n: int = 40,
    sections: int = 20,
) -> trimesh.Trimesh:
    """Straight access cannula plus the pre-curved stylet extended beyond its tip.

    Parameters
    ----------
    cannula_entry, cannula_tip : (3,) float
        LPS mm; the cannula runs from entry to tip, the curved part starts at the tip.
    bend_direction : (3,) float
        Direction of the bend (its part perpendicular to the cannula axis is used).
    instrument : CurvedNeedle or registry name, optional
        Default ``"curved_needle"`` (all curve values [U], per device).
    extension_mm : float, optional
        Arc length out of the cannula; default ``instrument.max_extension_mm``.
    radius_mm : float, optional
        Arc radius; default ``instrument.arc_radius_mm``.
    n, sections : int
        Points along the arc and vertices per ring.
    """
    ins = _resolve(instrument, "curved_needle")
    p0 = np.asarray(cannula_entry, float).reshape(3)
    p1 = np.asarray(cannula_tip, float).reshape(3)
    d = _unit(p1 - p0)
    ext = float(ins.max_extension_mm if extension_mm is None else extension_mm)
    rad = float(ins.arc_radius_mm if radius_mm is None else radius_mm)
    if ext > ins.max_extension_mm + 1e-9:
        log.warning("extension %.1f mm beyond the device maximum %.1f mm", ext, ins.max_extension_mm)
    parts = [cannula_mesh(p0, p1, ins.cannula, sections=sections)]
    if ext > 0:
        arc = curved_needle_centreline(p1, d, bend_direction, rad, ext, n=n)
        # start 2 mm inside the cannula so the two meshes overlap at the tip
        line = np.vstack([p1 - 2.0 * d, arc])
        parts.append(_sweep(line, 0.5 * float(ins.stylet_od_mm), sections))
    return _concat(parts, kind="curved_needle", instrument=ins.name)


# =========================================================================================
# file IO
# =========================================================================================
def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_tag(name: str, value: str) -> str:
    value = str(value)
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", value):
        raise ValueError(f"{name} must be a short token (letters, digits, _ . -), got {value!r}")
    return value


def _mesh_arrays(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    V = np.ascontiguousarray(np.asarray(mesh.vertices, dtype=np.float64))
    F = np.ascontiguousarray(np.asarray(mesh.faces, dtype=np.int64))
    return V, F


def _stl_bytes(mesh: trimesh.Trimesh, frame: str, units: str, extra: dict | None) -> bytes:
    V, F = _mesh_arrays(mesh)
    head = f"planner mesh frame={frame} units={units}"
    if extra and "name" in extra:
        head += f" name={extra['name']}"
    hb = head.encode("ascii", "replace")[:80].ljust(80, b" ")
    tri = V[F]  # (f, 3, 3)
    nrm = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    ln = np.linalg.norm(nrm, axis=1, keepdims=True)
    nrm = np.divide(nrm, ln, out=np.zeros_like(nrm), where=ln > 0)
    rec = np.zeros(len(F), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    rec["n"] = nrm
    rec["v"] = tri
    return hb + struct.pack("<I", len(F)) + rec.tobytes()


def _ply_bytes(mesh: trimesh.Trimesh, frame: str, units: str, extra: dict | None) -> bytes:
    V, F = _mesh_arrays(mesh)
    lines = ["ply", "format binary_little_endian 1.0", f"comment frame {frame}", f"comment units {units}"]
    if extra:
        lines.append("comment planner_meta " + json.dumps(extra, sort_keys=True, separators=(",", ":")))
    lines += [
        f"element vertex {len(V)}",
        "property double x",
        "property double y",
        "property double z",
        f"element face {len(F)}",
        "property list uchar int vertex_indices",
        "end_header",
    ]
    header = ("\n".join(lines) + "\n").encode("ascii")
    frec = np.zeros(len(F), dtype=[("n", "u1"), ("i", "<i4", 3)])
    frec["n"] = 3
    frec["i"] = F
    return header + V.astype("<f8").tobytes() + frec.tobytes()


#: zlib block size and level of .vtp arrays (VTK's vtkZLibDataCompressor layout).
VTP_BLOCK_BYTES = 1 << 16
VTP_ZLIB_LEVEL = 6


def _b64_array(arr: np.ndarray) -> str:
    """VTK XML inline binary, zlib-compressed: base64(UInt64 header) + base64(blocks)."""
    import zlib

    raw = np.ascontiguousarray(arr).tobytes()
    blocks = [raw[i : i + VTP_BLOCK_BYTES] for i in range(0, len(raw), VTP_BLOCK_BYTES)]
    comp = [zlib.compress(b, VTP_ZLIB_LEVEL) for b in blocks]
    last = len(blocks[-1]) if blocks else 0
    header = np.array([len(blocks), VTP_BLOCK_BYTES, last, *[len(c) for c in comp]], dtype="<u8")
    return base64.b64encode(header.tobytes()).decode("ascii") + base64.b64encode(b"".join(comp)).decode(
        "ascii"
    )


def _vtk_string_ascii(s: str) -> str:
    return " ".join(str(b) for b in s.encode("utf-8")) + " 0"


def _vtp_bytes(mesh: trimesh.Trimesh, frame: str, units: str, extra: dict | None) -> bytes:
    V, F = _mesh_arrays(mesh)
    fields = {"frame": frame, "units": units}
    if extra:
        fields["planner_meta"] = json.dumps(extra, sort_keys=True, separators=(",", ":"))
    fd = "".join(
        f'      <Array type="String" Name="{k}" NumberOfTuples="1" format="ascii">\n'
        f"        {_vtk_string_ascii(v)}\n      </Array>\n"
        for k, v in fields.items()
    )
    itype, vtype = ("<i4", "Int32") if 3 * len(F) < 2**31 - 1 else ("<i8", "Int64")
    conn = F.reshape(-1).astype(itype)
    offs = (np.arange(1, len(F) + 1) * 3).astype(itype)
    xml = (
        '<?xml version="1.0"?>\n'
        '<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" header_type="UInt64" '
        'compressor="vtkZLibDataCompressor">\n'
        "  <PolyData>\n"
        f"    <FieldData>\n{fd}    </FieldData>\n"
        f'    <Piece NumberOfPoints="{len(V)}" NumberOfVerts="0" NumberOfLines="0" '
        f'NumberOfStrips="0" NumberOfPolys="{len(F)}">\n'
        "      <Points>\n"
        '        <DataArray type="Float64" Name="Points" NumberOfComponents="3" format="binary">\n'
        f"          {_b64_array(V.astype('<f8'))}\n"
        "        </DataArray>\n"
        "      </Points>\n"
        "      <Polys>\n"
        f'        <DataArray type="{vtype}" Name="connectivity" format="binary">\n'
        f"          {_b64_array(conn)}\n"
        "        </DataArray>\n"
        f'        <DataArray type="{vtype}" Name="offsets" format="binary">\n'
        f"          {_b64_array(offs)}\n"
        "        </DataArray>\n"
        "      </Polys>\n"
        "    </Piece>\n"
        "  </PolyData>\n"
        "</VTKFile>\n"
    )
    return xml.encode("ascii")


def write_mesh(
    mesh: trimesh.Trimesh,
    path: str | os.PathLike,
    *,
    frame: str = "LPS",
    units: str = "mm",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a triangle mesh atomically (temp file + ``os.replace``), deterministically.

    Parameters
    ----------
    mesh : trimesh.Trimesh
        Vertices (v, 3) and faces (f, 3).
    path : path-like
        ``.stl`` (binary; float32 coordinates, ~1e-5 relative precision; the 80-byte header
        reads ``planner mesh frame=LPS units=mm [name=...]``), ``.ply`` (binary little
        endian, float64 vertices, ``comment frame``, ``comment units``,
        ``comment planner_meta {json}``) or ``.vtp`` (VTK XML PolyData, binary base64,
        float64 points, string field-data arrays ``frame``, ``units``, ``planner_meta``).
    frame, units : str
        Coordinate frame and units recorded in the file.
    extra : dict, optional
        JSON-serialisable metadata (PLY comment / VTP field data; only ``name`` fits in STL).

    Returns
    -------
    Path
        The written path.
    """
    p = Path(path)
    frame = _check_tag("frame", frame)
    units = _check_tag("units", units)
    ext = p.suffix.lower().lstrip(".")
    writers = {"stl": _stl_bytes, "ply": _ply_bytes, "vtp": _vtp_bytes}
    if ext not in writers:
        raise InputError(
            f"cannot write mesh format {p.suffix!r}; use one of {', '.join('.' + e for e in MESH_FORMATS)}",
            code="PLN-IN-002",
            details={"path": str(p)},
        )
    _atomic_write(p, writers[ext](mesh, frame, units, extra))
    log.debug("wrote %s (%d vertices, %d faces)", p, len(mesh.vertices), len(mesh.faces))
    return p


def _read_stl(data: bytes) -> tuple[np.ndarray, np.ndarray, dict]:
    meta: dict[str, Any] = {}
    if data[:5].lower() == b"solid" and b"facet" in data[:1000]:
        m = trimesh.load(trimesh.util.wrap_as_stream(data), file_type="stl", process=False)
        V, F = np.asarray(m.vertices), np.asarray(m.faces)
    else:
        header = data[:80].decode("ascii", "replace")
        for k, v in re.findall(r"(\w+)=(\S+)", header):
            meta[k] = v
        (n,) = struct.unpack("<I", data[80:84])
        if len(data) < 84 + 50 * n:
            raise InputError("STL file is truncated", code="PLN-IN-003")
        rec = np.frombuffer(
            data, dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")], count=n, offset=84
        )
        V, F = rec["v"].reshape(-1, 3).astype(float), np.arange(3 * n).reshape(-1, 3)
    # merge identical vertices, keeping first-occurrence order
    uniq, first, inv = np.unique(V, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return uniq[order], rank[inv.reshape(-1)][F], meta


def _read_ply(data: bytes, path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    end = data.find(b"end_header\n")
    header = data[:end].decode("ascii", "replace").splitlines() if end > 0 else []
    meta: dict[str, Any] = {}
    nv = nf = None
    props: list[str] = []
    fmt = ""
    for line in header:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "comment" and len(parts) >= 3 and parts[1] in ("frame", "units"):
            meta[parts[1]] = parts[2]
        elif parts[0] == "comment" and len(parts) >= 3 and parts[1] == "planner_meta":
            meta["extra"] = json.loads(line.split("planner_meta", 1)[1])
        elif parts[0] == "element":
            if parts[1] == "vertex":
                nv = int(parts[2])
            elif parts[1] == "face":
                nf = int(parts[2])
        elif parts[0] == "property" and nf is None:
            props.append(" ".join(parts[1:]))
    ours = (
        fmt == "binary_little_endian"
        and props == ["double x", "double y", "double z"]
        and nv is not None
        and nf is not None
        and "property list uchar int vertex_indices" in [ln.strip() for ln in header]
    )
    if not ours:
        m = trimesh.load(path, process=False, force="mesh")
        return np.asarray(m.vertices), np.asarray(m.faces), meta
    off = end + len(b"end_header\n")
    V = np.frombuffer(data, dtype="<f8", count=3 * nv, offset=off).reshape(-1, 3).astype(float)
    frec = np.frombuffer(data, dtype=[("n", "u1"), ("i", "<i4", 3)], count=nf, offset=off + 24 * nv)
    if nf and np.any(frec["n"] != 3):
        raise InputError("PLY faces must be triangles", code="PLN-IN-003")
    return V, frec["i"].astype(np.int64), meta


def _decode_b64_array(text: str, dtype: str, header: str, compressed: bool) -> np.ndarray:
    import zlib

    t = "".join(text.split())
    hb = 8 if header == "UInt64" else 4
    htype = "<u8" if hb == 8 else "<u4"
    if not compressed:
        raw = base64.b64decode(t)
        return np.frombuffer(raw[hb:], dtype=dtype)
    first = np.frombuffer(base64.b64decode(t[: 4 * int(np.ceil(3 * hb / 3))]), dtype=htype)
    nblocks = int(first[0])
    hlen = 4 * int(np.ceil((3 + nblocks) * hb / 3))
    head = np.frombuffer(base64.b64decode(t[:hlen]), dtype=htype)
    data = base64.b64decode(t[hlen:])
    out, pos = [], 0
    for c in head[3 : 3 + nblocks]:
        out.append(zlib.decompress(data[pos : pos + int(c)]))
        pos += int(c)
    return np.frombuffer(b"".join(out), dtype=dtype)


_VTK_TYPES = {
    "Float64": "<f8",
    "Float32": "<f4",
    "Int64": "<i8",
    "Int32": "<i4",
    "UInt32": "<u4",
    "UInt64": "<u8",
}


def _read_vtp(data: bytes, path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    root = ET.fromstring(data)
    meta: dict[str, Any] = {}
    for arr in root.iter("Array"):
        if arr.get("type") == "String" and arr.get("format") == "ascii":
            codes = [int(x) for x in (arr.text or "").split()]
            s = bytes(c for c in codes if c != 0).decode("utf-8")
            name = arr.get("Name")
            meta["extra" if name == "planner_meta" else name] = json.loads(s) if name == "planner_meta" else s
    compressed = root.get("compressor") == "vtkZLibDataCompressor"
    simple = (
        root.get("compressor") in (None, "vtkZLibDataCompressor")
        and all(d.get("format") == "binary" for d in root.iter("DataArray"))
        and root.find("PolyData/Piece/Polys") is not None
    )
    if not simple:
        pv = _lazy_pyvista("reading compressed or appended .vtp files")
        poly = pv.read(str(path)).triangulate()
        return np.asarray(poly.points, float), np.asarray(poly.regular_faces, np.int64), meta
    header = root.get("header_type", "UInt32")
    piece = root.find("PolyData/Piece")
    pts = piece.find("Points/DataArray")
    V = (
        _decode_b64_array(pts.text, _VTK_TYPES[pts.get("type")], header, compressed)
        .reshape(-1, 3)
        .astype(float)
    )
    arrays = {d.get("Name"): d for d in piece.find("Polys").iter("DataArray")}
    conn = _decode_b64_array(
        arrays["connectivity"].text, _VTK_TYPES[arrays["connectivity"].get("type")], header, compressed
    )
    offs = _decode_b64_array(
        arrays["offsets"].text, _VTK_TYPES[arrays["offsets"].get("type")], header, compressed
    )
    if len(offs) and not np.all(np.diff(np.r_[0, offs]) == 3):
        raise InputError(".vtp polygons must be triangles", code="PLN-IN-003", details={"path": str(path)})
    return V, conn.astype(np.int64).reshape(-1, 3), meta


def _lazy_pyvista(feature: str):
    from planner.errors import optional_import

    return optional_import("pyvista", feature, "render")


def read_mesh(path: str | os.PathLike) -> trimesh.Trimesh:
    """Read a mesh written by :func:`write_mesh` (or any STL / PLY / VTP / OBJ file).

    Parameters
    ----------
    path : path-like
        Mesh file.

    Returns
    -------
    trimesh.Trimesh
        Not processed (vertex order kept; STL vertices merged in first-occurrence order).
        ``mesh.metadata`` holds ``frame`` and ``units`` when the file records them, and
        ``extra`` (dict) for PLY / VTP metadata.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"mesh file not found: {p}", code="PLN-IN-001", details={"path": str(p)})
    data = p.read_bytes()
    ext = p.suffix.lower()
    try:
        if ext == ".stl":
            V, F, meta = _read_stl(data)
        elif ext == ".ply":
            V, F, meta = _read_ply(data, p)
        elif ext == ".vtp":
            V, F, meta = _read_vtp(data, p)
        else:
            m = trimesh.load(p, process=False, force="mesh")
            V, F, meta = np.asarray(m.vertices), np.asarray(m.faces), {}
    except (ValueError, struct.error, ET.ParseError, KeyError) as exc:
        raise InputError(f"cannot read mesh {p}: {exc}", code="PLN-IN-003", details={"path": str(p)}) from exc
    mesh = trimesh.Trimesh(V, F, process=False)
    mesh.metadata.update(meta)
    return mesh


# =========================================================================================
# scenes
# =========================================================================================
def _part_level(name: str) -> str | None:
    from planner.labels.registry import LEVELS

    head = name.split("_")[0]
    if head in LEVELS:
        return head
    if name.startswith("vertebra_") and name[9:] in LEVELS:
        return name[9:]
    return None


#: Tissues meshed less the vertebrae and ribs of higher priority that overlap them.
_LESS_BONE_TISSUES: tuple[str, ...] = ("disc", "lung", "pleura", "blood")


def scene_meshes(
    scene: Any,
    spacing_mm: float = 0.5,
    *,
    parts: bool = True,
    structures: bool = True,
    implants: bool = True,
    smooth_iterations: int = 0,
) -> dict[str, tuple[trimesh.Trimesh, dict[str, Any]]]:
    """Meshes of a :class:`planner.phantom.model.PhantomScene`, in memory.

    Parameters
    ----------
    scene : PhantomScene
        Structures (SDFs), screws, rods, cross-links.
    spacing_mm : float
        Marching-cubes grid spacing for SDF structures.
    parts : bool
        Mesh every part of structures with parts (``L4_body`` ...), each clipped to the
        structure (part SDF intersected with the structure SDF).
    structures : bool
        Mesh each structure with ``mesh=True`` as a whole.  A disc is meshed less the
        vertebrae that overlap it (the label map draws bone over disc), so its mesh bounds
        the disc the image shows.
    implants : bool
        Exact primitive meshes for ``scene.screws``, ``scene.rods``, ``scene.crosslinks``.
    smooth_iterations : int
        Taubin smoothing for SDF meshes.

    Returns
    -------
    dict
        ``name -> (mesh, info)`` in a deterministic order; ``info`` has ``kind``
        (``"structure"``, ``"part"``, ``"screw"``, ``"rod"``, ``"crosslink"``), ``tissue``,
        ``group`` (for parts) and ``level`` where known.
    """
    from planner.phantom.sdf import intersect, subtract

    out: dict[str, tuple[trimesh.Trimesh, dict[str, Any]]] = {}
    bones = [s for s in scene.structures if isinstance(s.meta, dict) and s.meta.get("kind") in ("vertebra", "rib")]

    def _overlaps(a: Any, b: Any) -> bool:
        return bool(np.all(a.sdf.bounds[0] <= b.sdf.bounds[1]) and np.all(b.sdf.bounds[0] <= a.sdf.bounds[1]))
    implant_names = set()
    if implants:
        for group in ("screws", "rods", "crosslinks"):
            implant_names |= {x.name for x in getattr(scene, group, [])}
    jobs: list[tuple[str, Any, dict[str, Any]]] = []  # (name, sdf, info) in a fixed order
    for s in scene.structures:
        if not getattr(s, "mesh", True) or s.name in implant_names:
            continue  # implants get exact primitive meshes below
        level = s.meta.get("level") if isinstance(s.meta, dict) else None
        level = level or _part_level(s.name)
        sdf = s.sdf
        if s.tissue in _LESS_BONE_TISSUES:
            # These SDFs may reach into bone (a disc into both bodies by design, lungs and
            # pleura around the rib heads and vessels at the bodies); the bone, of higher
            # priority, is drawn over them: mesh what the label map shows, less the bone.
            over = [b for b in bones if b.priority > s.priority and _overlaps(s, b)]
            if over:
                sdf = subtract(s.sdf, *[b.sdf for b in over])
        if structures:
            jobs.append((s.name, sdf, {"kind": "structure", "tissue": s.tissue, "level": level}))
        if parts and s.parts:
            for pname in sorted(s.parts):
                info = {"kind": "part", "tissue": s.tissue, "group": s.name, "level": _part_level(pname) or level}
                jobs.append((pname, intersect(s.parts[pname], s.sdf), info))

    def run(job: tuple[str, Any, dict[str, Any]]) -> trimesh.Trimesh:
        return sdf_to_mesh(job[1], spacing_mm, smooth_iterations=smooth_iterations)

    # numpy releases the GIL in the SDF arithmetic and marching cubes, so threads overlap;
    # results are collected in job order, so the output does not depend on scheduling.
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as ex:
        meshes = list(ex.map(run, jobs))
    for (name, _sdf, info), m in zip(jobs, meshes):
        if len(m.faces):
            out[name] = (m, info)
    if implants:
        for sc in getattr(scene, "screws", []):
            out[sc.name] = (
                screw_mesh(sc),
                {"kind": "screw", "tissue": sc.material, "level": sc.level, "side": sc.side},
            )
        for rod in getattr(scene, "rods", []):
            out[rod.name] = (rod_mesh(rod), {"kind": "rod", "tissue": rod.material, "side": rod.side})
        for cl in getattr(scene, "crosslinks", []):
            out[cl.name] = (
                crosslink_mesh(cl),
                {"kind": "crosslink", "tissue": cl.material, "level": cl.level},
            )
    return out


def mesh_scene(
    scene: Any,
    out_dir: str | os.PathLike,
    fmt: str = "vtp",
    spacing_mm: float = 0.5,
    *,
    parts: bool = True,
    smooth_iterations: int = 0,
) -> dict[str, Path]:
    """Write one mesh per structure, per part and per implant, plus ``manifest.json``.

    Parameters
    ----------
    scene : PhantomScene
        The scene to mesh.
    out_dir : path-like
        Output folder (created).
    fmt : {"vtp", "stl", "ply"}
        File format.
    spacing_mm : float
        Marching-cubes spacing for SDF structures.
    parts : bool
        Also write per-part meshes named by registry name (``L4_body.vtp``).
    smooth_iterations : int
        Taubin smoothing iterations for SDF meshes.

    Returns
    -------
    dict[str, Path]
        ``name -> path``.  ``manifest.json`` in ``out_dir`` records, per name, the file, kind,
        tissue, level, group, vertex/face counts and LPS bounds; plus frame, units, spacing.
        Output is deterministic (same scene -> same bytes).
    """
    fmt = fmt.lower().lstrip(".")
    if fmt not in MESH_FORMATS:
        raise InputError(f"unknown mesh format {fmt!r}; use one of {MESH_FORMATS}", code="PLN-IN-002")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meshes = scene_meshes(scene, spacing_mm, parts=parts, smooth_iterations=smooth_iterations)
    paths: dict[str, Path] = {}
    entries: dict[str, Any] = {}
    for name, (m, info) in meshes.items():
        p = write_mesh(
            m, out / f"{name}.{fmt}", extra={"name": name, **{k: v for k, v in info.items() if v is not None}}
        )
        paths[name] = p
        entries[name] = {
            "file": p.name,
            **{k: v for k, v in info.items() if v is not None},
            "n_vertices": int(len(m.vertices)),
            "n_faces": int(len(m.faces)),
            "bounds_lps_mm": [[round(float(x), 3) for x in row] for row in m.bounds],
        }
    manifest = {
        "schema": "planner.mesh_manifest/1",
        "frame": "LPS",
        "units": "mm",
        "format": fmt,
        "spacing_mm": float(spacing_mm),
        "meshes": dict(sorted(entries.items())),
    }
    _atomic_write(out / "manifest.json", (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())
    log.info("meshed %d objects into %s", len(paths), out)
    return paths


def load_mesh_dir(mesh_dir: str | os.PathLike) -> dict[str, tuple[trimesh.Trimesh, dict[str, Any]]]:
    """Read a folder written by :func:`mesh_scene` (via its ``manifest.json``).

    Returns
    -------
    dict
        ``name -> (mesh, info)`` as in :func:`scene_meshes`.
    """
    d = Path(mesh_dir)
    mf = d / "manifest.json"
    if not mf.exists():
        raise InputError(
            f"{d} has no manifest.json; write the folder with planner.meshing.mesh_scene",
            code="PLN-IN-001",
            details={"path": str(d)},
        )
    manifest = json.loads(mf.read_text())
    out = {}
    for name, entry in manifest["meshes"].items():
        info = {k: v for k, v in entry.items() if k not in ("file", "n_vertices", "n_faces", "bounds_lps_mm")}
        out[name] = (read_mesh(d / entry["file"]), info)
    return out
