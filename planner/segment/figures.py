"""Review figures of a segmentation: label outlines over the image, and meshes over the CT.

* :func:`overlay_png`: a mid-sagittal and a coronal reformat plus an axial slice through the
  pedicles of each level (up to six), image in a bone window (CT) or a percentile window
  (MR), label outlines coloured by structure class, fitted screw axes (head -> tip) and rod
  centre lines projected on the planes, level names.  Every plane is resampled in patient
  LPS space from the Volume's ``lps_from_ijk`` (oblique, anisotropic and left-handed grids
  are drawn correctly).  Radiological display: patient right on the image left, anterior up
  (axial), anterior left (sagittal), superior up.
* :func:`mesh_over_ct_png`: the segmentation's structure meshes and fitted hardware rendered
  off-screen in 3D (pyvista) with an axial CT slice drawn in the scene.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from planner.labels.registry import GLOBAL_STRUCTURES, LABEL_IDS, LEVEL_PARTS, LEVELS
from planner.segment.result import Segmentation
from planner.volume import Volume

log = logging.getLogger(__name__)

#: CT bone window (width, level) HU [U: the usual spine bone window W 1800 / L 400].
BONE_WINDOW_HU: tuple[float, float] = (1800.0, 400.0)
#: Pixel of the reformats, mm [U: fine enough for a 1 mm CT at figure size].
PIXEL_MM: float = 0.6
#: Half-width of an axial field of view around the vertebral body, mm [U].
AXIAL_HALF_MM: float = 60.0
#: Screws are drawn on an axial slice when their axis passes within this distance of it, mm
#: [U: about a screw's tilt over its length]; on the reformats all are drawn (projected).
AXIAL_SLAB_MM: float = 12.0

#: Structure classes: name, RGB colour.
CLASS_COLOURS: dict[str, tuple[float, float, float]] = {
    "body": (1.00, 0.85, 0.20),
    "pedicle": (0.20, 0.90, 0.30),
    "posterior": (0.30, 0.70, 1.00),
    "disc": (0.75, 0.55, 1.00),
    "rib": (0.95, 0.60, 0.25),
    "canal": (1.00, 0.35, 0.85),
    "hardware": (0.00, 1.00, 1.00),
    "aorta": (1.00, 0.15, 0.15),
    "vein": (0.35, 0.45, 1.00),
    "lung": (0.85, 0.85, 0.85),
    "fluid": (0.30, 1.00, 0.80),
    "lesion": (1.00, 0.45, 0.10),
}
SCREW_RGB = (1.0, 0.1, 0.1)
ROD_RGB = (1.0, 0.55, 0.0)


def _class_lut() -> np.ndarray:
    """Registry id -> class index (0 = not drawn) as a lookup table over ids < 512."""
    names = list(CLASS_COLOURS)
    lut = np.zeros(512, np.uint8)
    part_cls = {"body": "body", "pedicle_left": "pedicle", "pedicle_right": "pedicle",
                "posterior": "posterior", "disc": "disc", "rib_left": "rib", "rib_right": "rib",
                "lesion": "lesion"}
    for name, i in LABEL_IDS.items():
        c = None
        if i >= 400:
            c = "hardware"
        elif "_" in name and name.split("_", 1)[0] in LEVELS:
            c = part_cls.get(name.split("_", 1)[1])
        elif name in ("spinal_canal", "thecal_sac", "spinal_cord"):
            c = "canal"
        elif name in ("aorta", "iliac_artery_left", "iliac_artery_right"):
            c = "aorta"
        elif name == "vena_cava":
            c = "vein"
        elif name in ("lung_left", "lung_right"):
            c = "lung"
        elif name == "fluid_collection":
            c = "fluid"
        if c is not None:
            lut[i] = names.index(c) + 1
    return lut


_LUT = _class_lut()


# ---- geometry --------------------------------------------------------------------------------
def _plane_points(centre: np.ndarray, u: np.ndarray, v: np.ndarray, half_u: tuple[float, float],
                  half_v: tuple[float, float], px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS points (nv, nu, 3) of a plane grid: columns along ``u``, rows along ``v``."""
    su = np.arange(half_u[0], half_u[1] + 1e-6, px)
    sv = np.arange(half_v[0], half_v[1] + 1e-6, px)
    P = centre[None, None, :] + sv[:, None, None] * v[None, None, :] + su[None, :, None] * u[None, None, :]
    return P, su, sv


def _sample(vol: Volume, P: np.ndarray, order: int, cval: float) -> np.ndarray:
    ijk = vol.index_from_lps(P.reshape(-1, 3)).T
    out = ndimage.map_coordinates(vol.array, ijk, order=order, mode="constant", cval=cval, prefilter=False)
    return out.reshape(P.shape[:2])


def _window(image: Volume) -> tuple[float, float]:
    if image.modality == "CT":
        w, lev = BONE_WINDOW_HU
        return lev - w / 2, lev + w / 2
    a = np.asarray(image.array[::2, ::2, ::2], float)
    return float(np.percentile(a, 1)), float(np.percentile(a, 99.5))


def _centroids(labels: Volume, names: list[str]) -> dict[str, np.ndarray]:
    from planner.segment.pipeline import label_centroids

    ids = [LABEL_IDS[n] for n in names if n in LABEL_IDS]
    com = label_centroids(labels.array, ids)
    inv = {v: k for k, v in LABEL_IDS.items()}
    return {inv[i]: labels.lps_from_index(com[i])[0] for i in ids if i in com}


def _level_anchors(seg: Segmentation, levels: list[str]) -> dict[str, np.ndarray]:
    """Axial slice centre per level: mean of the pedicle centroids, else the body centroid,
    else the mean of that level's screw heads."""
    names = [f"{lev}_{p}" for lev in levels for p in ("body", "pedicle_left", "pedicle_right")]
    c = _centroids(seg.labels, names)
    out = {}
    for lev in levels:
        ped = [c[f"{lev}_{p}"] for p in ("pedicle_left", "pedicle_right") if f"{lev}_{p}" in c]
        body = c.get(f"{lev}_body")
        if ped:
            p = np.mean(ped, axis=0)
            if body is not None:  # centre in-plane on the body, height of the pedicles
                p = np.array([body[0], 0.5 * (body[1] + p[1]), p[2]])
            out[lev] = p
        elif body is not None:
            out[lev] = body
        else:
            heads = [s.head_lps for s in seg.screws if s.level == lev]
            if heads:
                out[lev] = np.mean(heads, axis=0)
    return out


# ---- drawing ---------------------------------------------------------------------------------
def _draw_panel(ax, image: Volume, seg: Segmentation, centre, u, v, hu, hv, title: str,
                clim, *, slab: float | None, marks: dict[str, np.ndarray] | None = None) -> None:
    P, su, sv = _plane_points(np.asarray(centre, float), u, v, hu, hv, PIXEL_MM)
    img = _sample(image, P, 1, clim[0])
    lab = _sample(seg.labels, P, 0, 0).astype(np.int64)
    cls = _LUT[np.clip(lab, 0, 511)]
    extent = (su[0], su[-1], sv[-1], sv[0])
    ax.imshow(img, cmap="gray", vmin=clim[0], vmax=clim[1], extent=extent, interpolation="bilinear")
    names = list(CLASS_COLOURS)
    for k in np.unique(cls):
        if k == 0:
            continue
        m = ndimage.binary_fill_holes(cls == k) if names[k - 1] == "hardware" else cls == k
        if m.sum() < 3:
            continue
        ax.contour(su, sv, m.astype(float), levels=[0.5], colors=[CLASS_COLOURS[names[k - 1]]],
                   linewidths=0.8)
    n = np.cross(u, v)

    def proj(p):
        q = np.asarray(p, float) - centre
        return q @ u, q @ v, q @ n

    for s in seg.screws:
        (x0, y0, d0), (x1, y1, d1) = proj(s.head_lps), proj(s.tip_lps)
        if slab is not None and min(abs(d0), abs(d1), abs(0.5 * (d0 + d1))) > slab:
            continue
        ax.plot([x0, x1], [y0, y1], "-", color=SCREW_RGB, lw=1.6)
        ax.plot([x0], [y0], "o", color=SCREW_RGB, ms=3)
    for r in seg.rods:
        q = np.array([proj(p) for p in r.centreline_lps])
        if slab is None:
            ax.plot(q[:, 0], q[:, 1], "-", color=ROD_RGB, lw=1.4)
        else:  # where the rod crosses the plane
            for a, b in zip(q[:-1], q[1:]):
                if a[2] * b[2] <= 0 and a[2] != b[2]:
                    f = a[2] / (a[2] - b[2])
                    ax.plot([a[0] + f * (b[0] - a[0])], [a[1] + f * (b[1] - a[1])], "s",
                            color=ROD_RGB, ms=4)
    for name, p in (marks or {}).items():
        x, y, _ = proj(p)
        if hu[0] <= x <= hu[1] and hv[0] <= y <= hv[1]:
            ax.text(x, y, name, color="white", fontsize=8, fontweight="bold", ha="center", va="center",
                    bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0})
    ax.set_xlim(su[0], su[-1])
    ax.set_ylim(sv[-1], sv[0])
    ax.set_title(title, color="white", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("black")


def overlay_png(
    image: Volume,
    seg: Segmentation,
    out_png: str | os.PathLike,
    *,
    levels: list[str] | None = None,
    size_px: tuple[int, int] = (2000, 1100),
    title: str | None = None,
) -> Path:
    """Label outlines, screw axes and rod lines over reformats of the image, to a PNG.

    Parameters
    ----------
    image : Volume
        The segmented CT (HU; bone window) or MR (1-99.5 percentile window).
    seg : Segmentation
        Its segmentation (labels on any grid overlapping the image: both are resampled in
        LPS space).
    out_png : path-like
        Output file (parents created).
    levels : list of str, optional
        Levels that get an axial slice through the pedicles (default every level found,
        cranial to caudal, at most six, evenly picked).
    size_px : (int, int)
        Width and height of the PNG in pixels.
    title : str, optional
        Figure title (default: the levels and hardware counts).

    Returns
    -------
    Path
        ``out_png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    lv = list(levels) if levels is not None else list(seg.levels)
    if len(lv) > 6:
        lv = [lv[int(round(i))] for i in np.linspace(0, len(lv) - 1, 6)]
    anchors = _level_anchors(seg, lv)
    lv = [lev for lev in lv if lev in anchors]
    clim = _window(image)
    bodies = _centroids(seg.labels, [f"{lev}_body" for lev in LEVELS])
    body_pts = {k.split("_")[0]: p for k, p in bodies.items()}

    # spine centre and extent: body centroids, screws, else the image centre
    pts = list(body_pts.values()) + [s.head_lps for s in seg.screws] + [s.tip_lps for s in seg.screws]
    b = image.bounds_lps()
    if pts:
        P = np.array(pts)
        centre = np.median(P, axis=0)
        zlo, zhi = P[:, 2].min() - 30.0, P[:, 2].max() + 30.0
    else:
        centre = b.mean(0)
        zlo, zhi = b[0, 2], b[1, 2]
    zlo, zhi = max(zlo, b[0, 2]), min(zhi, b[1, 2])
    zc = 0.5 * (zlo + zhi)
    half_z = max(30.0, 0.5 * (zhi - zlo))
    ex, ey, ez = np.eye(3)
    # coronal through the pedicles (where the screws run) if known
    ped = _centroids(seg.labels, [f"{lev}_pedicle_{s}" for lev in LEVELS for s in ("left", "right")])
    y_cor = float(np.median([p[1] for p in ped.values()])) if ped else float(centre[1])

    W, H = size_px
    fig = plt.figure(figsize=(W / 100, H / 100), dpi=100, facecolor="black")
    n_ax = max(1, len(lv))
    ncol_ax = 3 if n_ax > 2 else n_ax
    nrow_ax = 2 if n_ax > 3 else 1
    gs = fig.add_gridspec(nrow_ax, 2 + ncol_ax, width_ratios=[1.1, 1.1] + [1.0] * ncol_ax,
                          left=0.01, right=0.99, top=0.92, bottom=0.06, wspace=0.04, hspace=0.12)
    ax_s = fig.add_subplot(gs[:, 0])
    c_s = np.array([centre[0], centre[1], zc])
    _draw_panel(ax_s, image, seg, c_s, ey, -ez, (-80.0, 80.0), (-half_z, half_z),
                "sagittal (mid-line)  A | P", clim, slab=None, marks=body_pts)
    ax_c = fig.add_subplot(gs[:, 1])
    c_c = np.array([centre[0], y_cor, zc])
    _draw_panel(ax_c, image, seg, c_c, ex, -ez, (-80.0, 80.0), (-half_z, half_z),
                "coronal (pedicles)  R | L", clim, slab=None, marks=body_pts)
    for k, lev in enumerate(lv):
        ax = fig.add_subplot(gs[k // ncol_ax, 2 + k % ncol_ax])
        c = anchors[lev]
        _draw_panel(ax, image, seg, c, ex, ey, (-AXIAL_HALF_MM, AXIAL_HALF_MM),
                    (-AXIAL_HALF_MM, AXIAL_HALF_MM), f"{lev} axial (pedicles)  R | L", clim,
                    slab=AXIAL_SLAB_MM)
    handles = [Line2D([], [], color=c, lw=2, label=n) for n, c in CLASS_COLOURS.items()]
    handles += [Line2D([], [], color=SCREW_RGB, lw=2, marker="o", ms=3, label="screw axis (head o)"),
                Line2D([], [], color=ROD_RGB, lw=2, label="rod centre line")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False,
               labelcolor="white")
    if title is None:
        title = (f"levels {', '.join(seg.levels) or 'none'} | {len(seg.screws)} screws, "
                 f"{len(seg.rods)} rods | window {clim[0]:.0f}..{clim[1]:.0f}"
                 f"{' HU' if image.modality == 'CT' else ''}")
    fig.suptitle(title, color="white", fontsize=12)
    fig.savefig(out, dpi=100, facecolor="black")
    plt.close(fig)
    log.info("wrote overlay figure %s (%d axial levels)", out, len(lv))
    return out


# ---- 3D ----------------------------------------------------------------------------------------
def _mesh_groups(seg: Segmentation) -> dict[str, list[int]]:
    """Structure groups meshed for the 3D view: one per level (body + pedicles + posterior),
    the canal contents, aorta, vena cava."""
    present = set(np.unique(seg.labels.array).tolist())
    groups: dict[str, list[int]] = {}
    for lev in LEVELS:
        ids = [LABEL_IDS[f"{lev}_{p}"] for p in LEVEL_PARTS
               if p in ("body", "pedicle_left", "pedicle_right", "posterior")]
        ids = [i for i in ids if i in present]
        if ids:
            groups[f"vertebra_{lev}"] = ids
    for name, ids in (("thecal_sac", ["spinal_canal", "thecal_sac", "spinal_cord"]),
                      ("aorta", ["aorta"]), ("vena_cava", ["vena_cava"])):
        ii = [GLOBAL_STRUCTURES[n] for n in ids if GLOBAL_STRUCTURES[n] in present]
        if ii:
            groups[name] = ii
    return groups


def mesh_over_ct_png(
    image: Volume,
    seg: Segmentation,
    out_png: str | os.PathLike,
    *,
    level: str | None = None,
    window_size: tuple[int, int] = (1200, 1000),
    title: str | None = None,
) -> Path:
    """Render the segmentation meshes with an axial image slice in the scene, off-screen.

    Parameters
    ----------
    image : Volume
        CT (bone window) or MR.
    seg : Segmentation
    out_png : path-like
    level : str, optional
        Level whose pedicle height sets the axial slice (default: the middle level found).
    window_size : (int, int)
        PNG width, height.
    title : str, optional

    Returns
    -------
    Path
        ``out_png``.

    Notes
    -----
    The slice is a ``pyvista.StructuredGrid`` whose points are the LPS positions of an
    axial plane resampled from the image (so oblique grids are drawn where they are), with
    the image values as grey-scale point scalars; bone is translucent so the slice shows
    through, hardware opaque (styles of :mod:`planner.render`).
    """
    from planner.meshing import rod_mesh, screw_mesh
    from planner.render import BACKGROUND, TEXT_RGB, _level_tint, _pyvista, _style, _to_polydata, _write_png
    from planner.segment.fields import label_mesh

    pv = _pyvista()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    meshes: dict[str, tuple[Any, dict]] = {}
    for name, ids in _mesh_groups(seg).items():
        m = label_mesh(seg.labels, ids)
        if len(m.faces):
            info = {"level": name.split("_", 1)[1]} if name.startswith("vertebra_") else {}
            meshes[name] = (m, info)
    for s in seg.screws:
        meshes[s.name] = (screw_mesh(s), {"kind": "screw"})
    for r in seg.rods:
        meshes[r.name] = (rod_mesh(r), {"kind": "rod"})

    lv = list(seg.levels)
    anchors = _level_anchors(seg, lv)
    if level is None and anchors:
        level = list(anchors)[len(anchors) // 2]
    b = image.bounds_lps()
    if level in anchors:
        c = anchors[level]
    elif meshes:
        c = np.concatenate([np.asarray(m.bounds) for m, _ in meshes.values()]).mean(0)
    else:
        c = b.mean(0)
    ex, ey, _ = np.eye(3)
    half = 90.0
    P, _, _ = _plane_points(c, ex, ey, (-half, half), (-half, half), 1.0)
    clim = _window(image)
    vals = _sample(image, P, 1, np.nan).astype(np.float32)
    inside = np.isfinite(vals)
    if inside.any():  # crop the plane to the image's field of view (oblique corners stay NaN)
        r = np.nonzero(inside.any(1))[0]
        cc = np.nonzero(inside.any(0))[0]
        P = P[r[0]:r[-1] + 1, cc[0]:cc[-1] + 1]
        vals = vals[r[0]:r[-1] + 1, cc[0]:cc[-1] + 1]
    grid = pv.StructuredGrid(P[..., 0], P[..., 1], P[..., 2])
    grid.point_data["image"] = vals.ravel(order="F")
    if not np.isfinite(vals).all():  # drop cells outside the image (NaN fails every test)
        grid = grid.threshold(value=(float(np.nanmin(vals)) - 1.0, float(np.nanmax(vals)) + 1.0),
                              scalars="image", all_scalars=True)

    plotter = pv.Plotter(off_screen=True, window_size=list(window_size))
    try:
        plotter.set_background(BACKGROUND[1], top=BACKGROUND[0])
        plotter.add_mesh(grid, scalars="image", cmap="gray", clim=list(clim), show_scalar_bar=False,
                         lighting=False, nan_opacity=0.0, name="axial_slice")
        frame = [np.array([P.reshape(-1, 3).min(0), P.reshape(-1, 3).max(0)])]
        for name in sorted(meshes):
            m, info = meshes[name]
            st = _style(name, info)
            if st is None:
                continue
            if name.startswith("vertebra_"):
                st = dict(st, color=_level_tint(info.get("level")), opacity=0.35)
            plotter.add_mesh(_to_polydata(pv, m), name=name, **st)
            frame.append(np.asarray(m.bounds))
        fb = np.concatenate(frame)
        lo, hi = fb.min(0), fb.max(0)
        focal = (lo + hi) / 2
        direction = np.array([0.55, 1.0, 0.65])
        direction /= np.linalg.norm(direction)
        diag = float(np.linalg.norm(hi - lo))
        plotter.camera_position = [tuple(focal + direction * 3 * diag), tuple(focal), (0.0, 0.0, 1.0)]
        plotter.reset_camera(bounds=(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]))
        plotter.camera.zoom(1.2)
        if anchors:
            bodies = _centroids(seg.labels, [f"{lev}_body" for lev in anchors])
            if bodies:
                pts = np.array(list(bodies.values())) + np.array([45.0, 0.0, 0.0])
                plotter.add_point_labels(pts, [k.split("_")[0] for k in bodies], font_size=14, bold=True,
                                         text_color=TEXT_RGB, shape=None, show_points=False,
                                         always_visible=True)
        text = title or (f"segmentation meshes over {image.modality} (axial slice at "
                         f"{level or 'centre'} pedicles); {len(seg.screws)} screws, {len(seg.rods)} rods")
        plotter.add_text(text, position="upper_left", font_size=10, color=TEXT_RGB)
        with pv.VtkErrorCatcher(raise_errors=True, send_to_logging=True):
            img = plotter.screenshot(return_img=True)
    finally:
        plotter.close()
    _write_png(img, out)
    log.info("rendered %d meshes over the %s slice to %s", len(meshes), image.modality, out)
    return out
