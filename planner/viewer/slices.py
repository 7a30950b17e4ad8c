"""CT slices and needle-aligned reformats through a planned path, as images with overlays.

Planes
------
A :class:`Plane` is a rectangle in patient LPS mm: its centre, the LPS unit vector along
which image columns increase (screen right) and the one along which rows increase (screen
down), its size and pixel size.  The CT is sampled on it by trilinear interpolation
(``scipy.ndimage.map_coordinates`` on the volume's ``ijk_from_lps``), so any grid works:
oblique, anisotropic or left-handed.  Pixel ``(row r, column c)`` is centred at::

    centre + (c - (W - 1) / 2) * pixel_mm * col_dir + (r - (H - 1) / 2) * pixel_mm * row_dir

Standard planes follow the radiological display convention: **axial** seen from the feet
(patient's left on screen right, anterior up), **coronal** seen from the front (left on
the right, superior up), **sagittal** seen from the patient's left (anterior on the left,
superior up).

Needle-aligned reformats (:func:`needle_planes`) for a path of direction ``d``:

* ``needle_axial``: the plane containing the needle and the patient's left-right axis (an
  axial slice tilted by the needle's cranio-caudal angle); the needle lies in it in full.
* ``needle_sagittal``: the plane containing the needle and the patient's cranio-caudal
  axis (an oblique sagittal along the needle).
* ``needle_perpendicular``: the plane across the needle at its tip (normal ``d``), oriented
  like a coronal slice; the needle pierces it at the centre.

Display
-------
The CT is shown in a bone window (:data:`BONE_WINDOW`: width 2500 HU, level 480 HU, the
default CT "Bone" window/level preset of the OHIF Viewer (``defaultWindowLevelPresets``);
3D Slicer's narrower "CT-Bone" preset is W 1000 / L 400).  A wide bone window keeps
trabecular bone grey while screws, stored near 3071 HU, stay white and cortical bone stays
distinct from them.  Overlays: the needle path projected orthogonally onto the plane, solid
where it lies within :data:`IN_PLANE_MM` of the plane and dashed elsewhere, the curved
extension, the skin entry (triangle), cannula tip (square) and target (ring); orientation
letters (L/R/A/P/S/I, two letters for oblique edges) at every edge and a millimetre scale
bar.  :func:`render_slice` returns RGB pixels (also the viewer's texture) and
:func:`write_slice_png` writes them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from planner.errors import optional_import
from planner.viewer.common import CURVED_RGB, NEEDLE_RGB, ViewerError, unit
from planner.volume import Volume

log = logging.getLogger(__name__)

#: Bone window (width, level) in HU: the OHIF Viewer's default CT "Bone" preset.
BONE_WINDOW: tuple[float, float] = (2500.0, 480.0)
#: Path points within this distance of a plane (mm) are drawn solid, as lying in it.
IN_PLANE_MM = 1.5
#: Default field of view (mm) and pixel size (mm) of the slices.
FOV_MM = 160.0
PIXEL_MM = 0.5

_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))  # +x, -x; +y, -y; +z, -z


@dataclass(frozen=True)
class Plane:
    """A sampling rectangle in LPS mm.

    Attributes
    ----------
    name : str
        ``axial``, ``coronal``, ``sagittal``, ``needle_axial``, ``needle_sagittal`` or
        ``needle_perpendicular`` (or any label).
    centre : (3,) float
        LPS mm of the image centre.
    col_dir, row_dir : (3,) float
        Orthonormal LPS unit vectors of increasing column (screen right) and row (down).
    width_mm, height_mm : float
        Size of the field of view.
    pixel_mm : float
        Pixel size.
    """

    name: str
    centre: np.ndarray
    col_dir: np.ndarray
    row_dir: np.ndarray
    width_mm: float = FOV_MM
    height_mm: float = FOV_MM
    pixel_mm: float = PIXEL_MM

    def __post_init__(self) -> None:
        c, r = unit(self.col_dir), unit(self.row_dir)
        if abs(float(c @ r)) > 1e-6:
            raise ViewerError(f"plane {self.name}: column and row directions are not perpendicular", code="PLN-VIEW-004")
        if not (self.width_mm > 0 and self.height_mm > 0 and self.pixel_mm > 0):
            raise ViewerError(f"plane {self.name}: size and pixel must be positive", code="PLN-VIEW-004")
        object.__setattr__(self, "centre", np.asarray(self.centre, float).reshape(3))
        object.__setattr__(self, "col_dir", c)
        object.__setattr__(self, "row_dir", r)

    @property
    def normal(self) -> np.ndarray:
        """``col_dir x row_dir``: the viewer looks along it (into the screen)."""
        return np.cross(self.col_dir, self.row_dir)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        return (max(1, int(round(self.height_mm / self.pixel_mm))), max(1, int(round(self.width_mm / self.pixel_mm))))

    def lps_of_pixels(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """LPS mm (n, 3) of pixel centres (row, column), float indices allowed."""
        H, W = self.shape
        r = (np.asarray(rows, float).reshape(-1) - (H - 1) / 2.0) * self.pixel_mm
        c = (np.asarray(cols, float).reshape(-1) - (W - 1) / 2.0) * self.pixel_mm
        return self.centre + c[:, None] * self.col_dir + r[:, None] * self.row_dir

    def pixel_of_lps(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Orthogonal projection of LPS points (n, 3) onto the plane.

        Returns
        -------
        colrow : (n, 2) float
            Column and row (pixel units, float).
        distance : (n,) float
            Signed distance from the plane along :attr:`normal`, mm.
        """
        p = np.asarray(points, float).reshape(-1, 3) - self.centre
        H, W = self.shape
        c = p @ self.col_dir / self.pixel_mm + (W - 1) / 2.0
        r = p @ self.row_dir / self.pixel_mm + (H - 1) / 2.0
        return np.c_[c, r], p @ self.normal

    def edge_labels(self) -> dict[str, str]:
        """Orientation letters at the ``left``, ``right``, ``top`` and ``bottom`` edges."""
        return {
            "right": orientation_letters(self.col_dir),
            "left": orientation_letters(-self.col_dir),
            "bottom": orientation_letters(self.row_dir),
            "top": orientation_letters(-self.row_dir),
        }


def orientation_letters(v: np.ndarray, second: float = 0.38) -> str:
    """Patient-direction letters of an LPS direction: the dominant axis, then the next one
    when its component exceeds ``second`` (``[0.9, -0.4, 0]`` -> ``"LA"``)."""
    v = unit(v)
    order = np.argsort(-np.abs(v))
    out = ""
    for k, ax in enumerate(order[:2]):
        if k == 1 and abs(v[ax]) < second:
            break
        out += _LETTERS[ax][0 if v[ax] > 0 else 1]
    return out


def _plane(name: str, centre: np.ndarray, col: np.ndarray, row: np.ndarray, fov: float, px: float) -> Plane:
    return Plane(name, np.asarray(centre, float), np.asarray(col, float), np.asarray(row, float), fov, fov, px)


def axial_plane(centre: np.ndarray, fov_mm: float = FOV_MM, pixel_mm: float = PIXEL_MM) -> Plane:
    """Axial plane through ``centre``, seen from the feet (L right, A up)."""
    return _plane("axial", centre, [1, 0, 0], [0, 1, 0], fov_mm, pixel_mm)


def coronal_plane(centre: np.ndarray, fov_mm: float = FOV_MM, pixel_mm: float = PIXEL_MM) -> Plane:
    """Coronal plane through ``centre``, seen from the front (L right, S up)."""
    return _plane("coronal", centre, [1, 0, 0], [0, 0, -1], fov_mm, pixel_mm)


def sagittal_plane(centre: np.ndarray, fov_mm: float = FOV_MM, pixel_mm: float = PIXEL_MM) -> Plane:
    """Sagittal plane through ``centre``, seen from the patient's left (A left, S up)."""
    return _plane("sagittal", centre, [0, 1, 0], [0, 0, -1], fov_mm, pixel_mm)


def oriented_basis(normal: np.ndarray, pref_col: np.ndarray, pref_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column and row directions of the plane of ``normal`` closest to the preferred ones.

    The column is ``pref_col`` projected onto the plane; when that projection is short
    (``pref_col`` nearly along the normal) the row is ``pref_row`` projected instead.  The
    other axis is the in-plane perpendicular, signed toward its preferred direction.

    Returns
    -------
    col, row : (3,) float
        Orthonormal, both perpendicular to ``normal``.
    """
    n = unit(normal)
    pc, pr = np.asarray(pref_col, float), np.asarray(pref_row, float)
    col = pc - (pc @ n) * n
    if np.linalg.norm(col) >= 0.2:
        col = unit(col)
        row = np.cross(n, col)
        row = row if row @ pr >= 0 else -row
    else:
        row = unit(pr - (pr @ n) * n)
        col = np.cross(row, n)
        col = col if col @ pc >= 0 else -col
    return col, unit(row)


def needle_planes(
    entry: np.ndarray,
    tip: np.ndarray,
    *,
    fov_mm: float | None = None,
    perpendicular_fov_mm: float = 80.0,
    pixel_mm: float = PIXEL_MM,
) -> dict[str, Plane]:
    """The needle-aligned reformats of a straight path from ``entry`` to ``tip``.

    Parameters
    ----------
    entry, tip : (3,) float
        Skin entry and needle tip (LPS mm).
    fov_mm : float, optional
        Field of view of the in-plane reformats; default: the path length + 40 mm, at
        least :data:`FOV_MM`.  They are centred on the middle of the path.
    perpendicular_fov_mm : float
        Field of view of the plane across the needle at the tip (centred on the tip).
    pixel_mm : float

    Returns
    -------
    dict
        ``needle_axial`` (the plane of the needle and the patient's x axis, oriented like
        an axial slice), ``needle_sagittal`` (needle and z, oriented like a sagittal
        slice), ``needle_perpendicular`` (normal along the needle at the tip, oriented like
        a coronal slice) -> :class:`Plane`.  When the needle is (nearly) parallel to x or
        z, the plane with that axis uses y instead.
    """
    e, t = np.asarray(entry, float).reshape(3), np.asarray(tip, float).reshape(3)
    d = unit(t - e)
    length = float(np.linalg.norm(t - e))
    fov = float(fov_mm) if fov_mm else max(FOV_MM, length + 40.0)
    mid = (e + t) / 2
    x, y, z = np.eye(3)
    planes = {}
    for name, axis, pref_col, pref_row in (("needle_axial", x, x, y), ("needle_sagittal", z, y, -z)):
        ax = axis if abs(d @ axis) < 0.97 else y
        col, row = oriented_basis(np.cross(d, ax), pref_col, pref_row)
        planes[name] = _plane(name, mid, col, row, fov, pixel_mm)
    col, row = oriented_basis(d, x, -z)
    planes["needle_perpendicular"] = _plane("needle_perpendicular", t, col, row, perpendicular_fov_mm, pixel_mm)
    return planes


def sample_plane(volume: Volume, plane: Plane, *, order: int = 1, cval: float | None = None) -> np.ndarray:
    """The volume's values on a plane, (rows, columns) float32.

    Parameters
    ----------
    volume : Volume
        Any grid (oblique, anisotropic, left-handed).
    plane : Plane
    order : int
        Spline order of ``scipy.ndimage.map_coordinates`` (1: trilinear; 0 for labels).
    cval : float, optional
        Value outside the volume; default -1024 for CT, 0 otherwise.

    Returns
    -------
    (H, W) float32
    """
    from scipy import ndimage

    H, W = plane.shape
    rr, cc = np.meshgrid(np.arange(H, dtype=float), np.arange(W, dtype=float), indexing="ij")
    lps = plane.lps_of_pixels(rr.ravel(), cc.ravel())
    B = volume.ijk_from_lps
    ijk = lps @ B[:3, :3].T + B[:3, 3]
    if cval is None:
        cval = -1024.0 if volume.modality == "CT" else 0.0
    arr = np.asarray(volume.array)
    if arr.dtype.kind not in "fiu":
        arr = arr.astype(np.float32)
    # sample only the index box the plane touches (a copy of the whole volume per slice
    # would dominate the time); the box is padded by the interpolation support
    lo = np.maximum(np.floor(ijk.min(0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(ijk.max(0)).astype(int) + 2, np.array(arr.shape))
    if np.any(hi <= lo):
        return np.full((H, W), cval, np.float32)
    sub = arr[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    vals = ndimage.map_coordinates(
        sub, (ijk - lo).T, order=order, mode="constant", cval=float(cval), prefilter=False, output=np.float32
    )
    return vals.reshape(H, W)


def window(values: np.ndarray, width: float, level: float) -> np.ndarray:
    """Linear window to 0-255 uint8 (values below ``level - width/2`` black)."""
    lo = level - width / 2.0
    t = (np.asarray(values, float) - lo) / float(width)
    return np.clip(np.round(t * 255.0), 0, 255).astype(np.uint8)


@dataclass
class PathOverlay:
    """What is drawn over a slice (LPS mm)."""

    straight: np.ndarray  # (n, 3): skin entry -> cannula tip -> target
    curved: np.ndarray | None = None  # (m, 3) curved needle centre line, or None
    entry: np.ndarray | None = None
    target: np.ndarray | None = None
    cannula_tip: np.ndarray | None = None
    label: str = ""

    @classmethod
    def from_candidate(cls, c: Any) -> PathOverlay:
        """From a :class:`planner.viewer.plandata.Candidate`."""
        return cls(c.straight_polyline(), c.curved_path, c.entry, c.target, c.cannula_tip, c.label())


@dataclass
class SliceView:
    """A sampled plane, its overlay and a title."""

    plane: Plane
    values: np.ndarray  # (H, W) HU
    overlay: PathOverlay | None = None
    title: str = ""
    window: tuple[float, float] = BONE_WINDOW
    extra: dict[str, Any] = field(default_factory=dict)


def path_slices(
    volume: Volume,
    overlay: PathOverlay,
    *,
    kinds: tuple[str, ...] = ("axial", "sagittal", "coronal", "needle_axial", "needle_sagittal", "needle_perpendicular"),
    fov_mm: float = FOV_MM,
    pixel_mm: float = PIXEL_MM,
    title_prefix: str = "",
) -> dict[str, SliceView]:
    """Standard slices through the target and needle-aligned reformats of a path.

    Parameters
    ----------
    volume : Volume
        CT in HU.
    overlay : PathOverlay
        The path; the standard slices pass through ``overlay.target``, the reformats follow
        the straight part from the skin entry to the target, the perpendicular one at the
        instrument tip (the curved needle's tip when there is one).
    kinds : tuple of str
    fov_mm, pixel_mm : float

    Returns
    -------
    dict
        kind -> :class:`SliceView`, in the order of ``kinds``.
    """
    if overlay.target is None or overlay.entry is None:
        raise ViewerError("a path overlay needs its skin entry and target", code="PLN-VIEW-004")
    target = np.asarray(overlay.target, float)
    tip = overlay.curved[-1] if overlay.curved is not None and len(overlay.curved) else target
    planes: dict[str, Plane] = {}
    entry = np.asarray(overlay.entry, float)
    for name, make in (("axial", axial_plane), ("sagittal", sagittal_plane), ("coronal", coronal_plane)):
        pl = make(target, fov_mm, pixel_mm)
        # keep the skin entry's projection in view: centre between it and the target
        off = entry - target
        off = off - (off @ pl.normal) * pl.normal
        reach = float(np.max(np.abs([off @ pl.col_dir, off @ pl.row_dir])))
        if reach + 15.0 > fov_mm / 2:
            fov = max(fov_mm, reach + 40.0)
            pl = make(target + off / 2, fov, pixel_mm)
        planes[name] = pl
    npl = needle_planes(overlay.entry, target, pixel_mm=pixel_mm)
    if np.linalg.norm(tip - target) > 1e-6:
        # the perpendicular plane at the curved needle's tip, across the straight axis
        p = npl["needle_perpendicular"]
        npl["needle_perpendicular"] = Plane(p.name, tip, p.col_dir, p.row_dir, p.width_mm, p.height_mm, p.pixel_mm)
    planes.update(npl)
    titles = {
        "axial": "axial through target",
        "sagittal": "sagittal through target",
        "coronal": "coronal through target",
        "needle_axial": "along needle (with L-R axis)",
        "needle_sagittal": "along needle (with S-I axis)",
        "needle_perpendicular": "across needle at tip",
    }
    out = {}
    for k in kinds:
        if k not in planes:
            raise ViewerError(f"unknown slice kind {k!r}; choose from {sorted(planes)}", code="PLN-VIEW-004")
        pl = planes[k]
        out[k] = SliceView(pl, sample_plane(volume, pl), overlay, f"{title_prefix}{titles.get(k, k)}")
    return out


def _dense(poly: np.ndarray, step: float) -> np.ndarray:
    pts = [poly[:1]]
    for a, b in zip(poly[:-1], poly[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
        pts.append(a + (b - a) * (np.arange(1, n + 1) / n)[:, None])
    return np.vstack(pts)


def render_slice(view: SliceView, *, scale: int = 2, scale_bar_mm: float | None = None) -> np.ndarray:
    """Draw a slice with its overlay, orientation letters and scale bar.

    Parameters
    ----------
    view : SliceView
    scale : int
        Output pixels per sample pixel.
    scale_bar_mm : float, optional
        Scale bar length; default about a fifth of the field of view, rounded to 5 or 10 mm.

    Returns
    -------
    (H * scale, W * scale, 3) uint8
        RGB pixels.
    """
    optional_import("matplotlib", "slice images", "render")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import patheffects
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pl = view.plane
    H, W = pl.shape
    img = window(view.values, *view.window)
    dpi = 100
    fig = Figure(figsize=(W * scale / dpi, H * scale / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="bilinear", extent=(-0.5, W - 0.5, H - 0.5, -0.5))
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    ax.set_axis_off()
    fs = max(8.0, min(W, H) * scale / 42.0)
    outline = [patheffects.withStroke(linewidth=max(2.0, fs / 4), foreground="black")]

    def text(x, y, s, **kw):
        ax.text(x, y, s, color=kw.pop("color", "white"), fontsize=kw.pop("fontsize", fs), path_effects=outline, **kw)

    ov = view.overlay
    if ov is not None:
        dense = _dense(np.asarray(ov.straight, float), pl.pixel_mm / 2)
        cr, dist = pl.pixel_of_lps(dense)
        ax.plot(cr[:, 0], cr[:, 1], color=NEEDLE_RGB, lw=max(1.0, scale * 0.6), ls=(0, (4, 3)), alpha=0.8)
        near = np.abs(dist) <= IN_PLANE_MM
        segs = np.ma.masked_where(~np.repeat(near[:, None], 2, axis=1), cr)
        ax.plot(segs[:, 0], segs[:, 1], color=NEEDLE_RGB, lw=max(1.5, scale * 1.5), solid_capstyle="round")
        if ov.curved is not None and len(ov.curved) > 1:
            dc = _dense(np.asarray(ov.curved, float), pl.pixel_mm / 2)
            ccr, cd = pl.pixel_of_lps(dc)
            ax.plot(ccr[:, 0], ccr[:, 1], color=CURVED_RGB, lw=max(1.0, scale * 0.6), ls=(0, (3, 2)), alpha=0.85)
            cm = np.ma.masked_where(~np.repeat((np.abs(cd) <= IN_PLANE_MM)[:, None], 2, axis=1), ccr)
            ax.plot(cm[:, 0], cm[:, 1], color=CURVED_RGB, lw=max(1.5, scale * 1.3))
        ms = 4.0 * scale
        marks = []
        for pt, marker, col in ((ov.target, "o", (0.2, 1.0, 0.4)), (ov.cannula_tip, "s", NEEDLE_RGB), (ov.entry, "^", (1, 1, 1))):
            if pt is not None:
                cr_pt, dd = pl.pixel_of_lps(np.asarray(pt, float))
                marks.append((abs(float(dd[0])), float(cr_pt[0, 0]), float(cr_pt[0, 1]), marker, col))
        drawn: list[tuple[float, float]] = []
        for _, c, r, marker, col in sorted(marks, key=lambda m: m[0]):
            # a point projected onto one already marked (e.g. the skin entry seen down the
            # needle) is not drawn: the mark nearest to the plane stands for both
            if any(np.hypot(c - c0, r - r0) < 2.5 for c0, r0 in drawn):
                continue
            if -0.5 <= c <= W - 0.5 and -0.5 <= r <= H - 0.5:
                ax.plot([c], [r], marker=marker, ms=ms, mfc="none", mec=col, mew=max(1.0, scale * 0.7))
                drawn.append((c, r))
    # orientation letters
    lab = pl.edge_labels()
    pad = 0.02
    text(W * pad, (H - 1) / 2, lab["left"], ha="left", va="center", transform=ax.transData, fontweight="bold")
    text(W * (1 - pad), (H - 1) / 2, lab["right"], ha="right", va="center", fontweight="bold")
    text((W - 1) / 2, H * pad, lab["top"], ha="center", va="top", fontweight="bold")
    text((W - 1) / 2, H * (1 - pad), lab["bottom"], ha="center", va="bottom", fontweight="bold")
    # scale bar, bottom right
    if scale_bar_mm is None:
        raw = pl.width_mm / 5
        scale_bar_mm = float(10 * max(1, round(raw / 10))) if raw >= 10 else 5.0
    nb = scale_bar_mm / pl.pixel_mm
    x1, y = W * 0.95, H * 0.93
    ax.plot([x1 - nb, x1], [y, y], color="white", lw=max(2.0, scale * 1.5), solid_capstyle="butt", path_effects=outline)
    text(x1 - nb / 2, y - H * 0.015, f"{scale_bar_mm:g} mm", ha="center", va="bottom", fontsize=fs * 0.85)
    if view.title:
        text(W * 0.02, H * 0.06, view.title, ha="left", va="top", fontsize=fs * 0.8)
    wl = view.window
    text(W * 0.02, H * 0.97, f"W {wl[0]:g} / L {wl[1]:g}", ha="left", va="bottom", fontsize=fs * 0.7, color=(0.8, 0.8, 0.8))
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3])


def write_png(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    """Write (H, W, 3) uint8 pixels as PNG (atomic, no timestamps: same pixels, same bytes)."""
    optional_import("PIL", "PNG output", "render")
    import tempfile

    from PIL import Image

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; written files follow the umask
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def write_slice_png(view: SliceView, path: str | os.PathLike, *, scale: int = 2) -> Path:
    """Render a :class:`SliceView` (:func:`render_slice`) and write it as PNG."""
    return write_png(render_slice(view, scale=scale), path)
