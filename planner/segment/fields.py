"""Meshes and signed distance fields of structures in a label map, in patient LPS mm.

* :func:`label_mesh`: marching cubes of the structure's signed distance field on the image
  grid, with spacing **and** direction applied, so vertices are LPS mm on oblique,
  anisotropic and left-handed grids; volume-preserving Taubin smoothing.
* :func:`write_label_meshes`: one mesh file per structure present (frame in the header, via
  :func:`planner.meshing.write_mesh`).
* :func:`signed_distance_field`: float32 mm on the image grid, negative inside.
* :class:`DistanceField`: fast vectorised trilinear queries at LPS points for the solver.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import trimesh

from planner.errors import InputError, LabelError
from planner.labels.registry import LABEL_IDS, LABEL_NAMES
from planner.volume import Volume, check_points

log = logging.getLogger(__name__)

#: Taubin smoothing iterations of :func:`label_mesh` (lambda 0.5, nu 0.53: volume preserving).
TAUBIN_ITERATIONS = 10


def _ids(names: list[str] | str | int | list[int]) -> list[int]:
    """Registry ids of structure names (ints pass through)."""
    if isinstance(names, (str, int, np.integer)):
        names = [names]  # type: ignore[list-item]
    out = []
    for n in names:  # type: ignore[union-attr]
        if isinstance(n, (int, np.integer)):
            out.append(int(n))
        elif n in LABEL_IDS:
            out.append(LABEL_IDS[n])
        else:
            raise LabelError(f"unknown structure name {n!r}; see planner.labels.registry.LABEL_IDS")
    return out


def _mask(labels: Volume, names) -> np.ndarray:
    return np.isin(labels.array, _ids(names))


def _sdf_array(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Signed distance (mm, negative inside) of a boolean mask (ni, nj, nk) -> float32.

    Euclidean distances between voxel centres of the two classes
    (``distance_transform_edt`` with ``sampling=spacing``), moved towards zero by half the
    voxel's extent along the local normal, ``0.5 * |diag(spacing) n|`` with ``n`` the unit
    gradient, so the zero level lies on the voxel boundary also on anisotropic grids.  The
    binary mask itself limits the accuracy to about half a voxel along the normal.
    """
    from scipy.ndimage import distance_transform_edt

    sp = np.asarray(spacing, float)
    if not mask.any():
        return np.full(mask.shape, np.inf, dtype=np.float32)
    if mask.all():
        return np.full(mask.shape, -np.inf, dtype=np.float32)
    raw = distance_transform_edt(~mask, sampling=sp).astype(np.float32)
    raw -= distance_transform_edt(mask, sampling=sp).astype(np.float32)
    num = np.zeros(mask.shape, np.float32)
    den = np.zeros(mask.shape, np.float32)
    for ax in range(3):
        if mask.shape[ax] < 2:
            continue
        g = np.gradient(raw, float(sp[ax]), axis=ax)
        g *= g
        den += g
        g *= float(sp[ax]) ** 2
        num += g
    half = 0.5 * np.sqrt(num / np.maximum(den, 1e-12))
    half[den <= 1e-12] = 0.5 * float(sp.min())
    raw -= np.where(mask, -half, half)
    return raw


def signed_distance_field(labels: Volume, names: list[str] | str) -> Volume:
    """Signed distance to the union of structures, on the label grid.

    Parameters
    ----------
    labels : Volume
        Registry label map, array (ni, nj, nk).
    names : str or list of str
        Structure names (or ids) whose union is measured.

    Returns
    -------
    Volume
        float32 mm, array (ni, nj, nk), negative inside, ``modality="OTHER"``.  Distances
        use ``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing`` both inside and
        outside (exact Euclidean distance between voxel centres), shifted by half the
        voxel extent along the local normal so that the zero level lies on the voxel
        boundary (accuracy about half a voxel, the limit of a binary mask).  An absent
        structure gives ``+inf`` everywhere.
    """
    mask = _mask(labels, names)
    if not mask.any():
        log.warning("structures %s absent from the label map; distance is +inf", names)
    vol = labels.with_array(_sdf_array(mask, labels.spacing), modality="OTHER")
    vol.provenance.corrections.append({"type": "signed_distance_field", "structures": names})
    return vol


class DistanceField:
    """Trilinear interpolation of a signed distance volume at LPS points.

    Parameters
    ----------
    field : Volume
        float distance volume (mm), e.g. from :func:`signed_distance_field`.

    Notes
    -----
    Points outside the grid get the value at the nearest grid point plus their distance to
    the grid box (an upper bound of the true distance for outside structures, so the
    solver never sees a spurious collision outside the image).
    """

    def __init__(self, field: Volume) -> None:
        arr = np.asarray(field.array, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            big = float(np.linalg.norm(np.array(field.shape) * field.spacing))
            arr = np.nan_to_num(arr, posinf=big, neginf=-big)
        self.field = field
        self._array = np.ascontiguousarray(arr)
        self._ijk_from_lps = field.ijk_from_lps
        self._spacing = field.spacing
        self._hi = np.array(field.shape, float) - 1.0

    @classmethod
    def from_labels(cls, labels: Volume, names: list[str] | str) -> DistanceField:
        """Build from a label map and structure names (see :func:`signed_distance_field`)."""
        return cls(signed_distance_field(labels, names))

    def query(self, points_lps: np.ndarray) -> np.ndarray:
        """Signed distance (mm) at points.

        Parameters
        ----------
        points_lps : (n, 3) float
            LPS mm.

        Returns
        -------
        (n,) float64
        """
        from scipy.ndimage import map_coordinates

        p = check_points(points_lps, "points_lps")
        B = self._ijk_from_lps
        ijk = p @ B[:3, :3].T + B[:3, 3]
        clamped = np.clip(ijk, 0.0, self._hi)
        vals = map_coordinates(self._array, clamped.T, order=1, mode="nearest", prefilter=False)
        out = vals.astype(float)
        off = ijk - clamped
        outside = np.any(off != 0.0, axis=1)
        if outside.any():
            out[outside] += np.linalg.norm(off[outside] * self._spacing, axis=1)
        return out

    __call__ = query


def label_mesh(
    labels: Volume,
    names: list[str] | str,
    *,
    smooth: bool = True,
    decimate_fraction: float | None = None,
) -> trimesh.Trimesh:
    """Triangle mesh of the union of structures, vertices in LPS mm.

    Parameters
    ----------
    labels : Volume
        Registry label map, array (ni, nj, nk), any (oblique, anisotropic, left-handed) grid.
    names : str or list of str
        Structure names (or ids).
    smooth : bool
        Taubin smoothing (:data:`TAUBIN_ITERATIONS`, volume preserving).
    decimate_fraction : float, optional
        Keep this fraction of faces (needs the optional ``fast-simplification``; skipped with
        a log message otherwise).

    Returns
    -------
    trimesh.Trimesh
        Vertices (v, 3) LPS mm, faces (f, 3) with outward normals; closed where the structure
        does not touch the grid border (the grid is padded with an outside layer).  Empty
        when the structure is absent.
    """
    from skimage.measure import marching_cubes

    from planner.meshing import _decimate

    mask = _mask(labels, names)
    if not mask.any():
        log.warning("structures %s absent; returning an empty mesh", names)
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), process=False)
    idx = np.nonzero(mask)
    lo = np.maximum(np.array([i.min() for i in idx]) - 2, 0)
    hi = np.array([i.max() for i in idx]) + 3
    sub = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    sub = np.pad(sub, 1, constant_values=False)
    sdf = _sdf_array(sub, labels.spacing)
    verts, faces, _, _ = marching_cubes(sdf, level=0.0, gradient_direction="ascent",
                                        allow_degenerate=False)
    ijk = verts.astype(float) + (lo - 1)
    A = labels.lps_from_ijk
    lps = ijk @ A[:3, :3].T + A[:3, 3]
    mesh = trimesh.Trimesh(lps, faces.astype(np.int64), process=False)
    mesh.merge_vertices()
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    if mesh.volume < 0:  # left-handed grid or marching-cubes orientation
        mesh.invert()
    if smooth:
        trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=0.53, iterations=TAUBIN_ITERATIONS)
    if decimate_fraction is not None and 0 < decimate_fraction < 1:
        mesh = _decimate(mesh, decimate_fraction)
    mesh.metadata.update({"frame": "LPS", "units": "mm",
                          "structures": [LABEL_NAMES.get(i, str(i)) for i in _ids(names)]})
    return mesh


def write_label_meshes(
    labels: Volume,
    out_dir: str | os.PathLike,
    fmt: str = "vtp",
    *,
    smooth: bool = True,
) -> dict[str, Path]:
    """Write one mesh per structure present in a label map.

    Parameters
    ----------
    labels : Volume
        Registry label map, array (ni, nj, nk).
    out_dir : path-like
        Created if missing.
    fmt : {"vtp", "stl", "ply"}

    Returns
    -------
    dict of str to Path
        Structure name -> written file (``<name>.<fmt>``).  Ids unknown to the registry are
        written as ``label_<id>``.
    """
    from planner.meshing import MESH_FORMATS, write_mesh

    fmt = fmt.lower().lstrip(".")
    if fmt not in MESH_FORMATS:
        raise InputError(f"mesh format {fmt!r} not one of {MESH_FORMATS}", code="PLN-IN-002")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for lab in np.unique(labels.array):
        lab = int(lab)
        if lab == 0:
            continue
        name = LABEL_NAMES.get(lab, f"label_{lab}")
        mesh = label_mesh(labels, [lab], smooth=smooth)
        if len(mesh.faces) == 0:
            continue
        written[name] = write_mesh(mesh, out / f"{name}.{fmt}",
                                   extra={"name": name, "label": lab, "source": "label_map"})
    log.info("wrote %d structure meshes to %s", len(written), out)
    return written
