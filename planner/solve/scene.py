"""The solver's scene: labelled anatomy, implants as exact primitives, level frames, fields.

A :class:`Scene` is built from a segmentation (:class:`planner.segment.result.Segmentation`
or the folder ``planner segment`` writes), or from a phantom case folder (ground truth:
``labels``, ``case.json`` and the exact meshes).  It holds

* the label map (registry ids on the image grid, patient LPS mm),
* implants as exact solids (:class:`Solid`): each screw is its shank cylinder plus its tulip
  cylinder, rods and cross-links are tubes (unions of capsules),
* per-level geometry (:class:`LevelGeometry`): body centre and frame (u left, v posterior,
  w superior), half extents, pedicle bands,
* meshes of the anatomical obstacles for the exact check (lazily, from a mesh folder or by
  marching cubes of the labels).

:meth:`Scene.fields` builds the distance fields one planning run samples (see
:class:`LevelFields`): for a target level, ``F = min over obstacle classes of
(distance to the class - class margin)``, with the id of the structure that attains the
minimum, the distance to the skin, and the signed distances of the target body and its
pedicles.  Fields are computed on a crop of the label grid (any orientation, anisotropic):
distances by exact Euclidean distance transforms of the voxel masks (boundary placed half a
voxel from the obstacle voxel centres; compiled kernels of :mod:`planner.solve.edt`, the
same distances as ``scipy.ndimage.distance_transform_edt``), implants analytically at every
grid node.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from planner.errors import CodedWarning, SolverError
from planner.implants import CrossLink, Rod, Screw
from planner.labels.registry import LABEL_IDS, LABEL_NAMES, LEVELS, parse_label
from planner.solve import edt
from planner.solve.config import OBSTACLE_CLASSES, SolverOptions
from planner.volume import Volume

log = logging.getLogger(__name__)

#: Distances are capped here (mm): beyond it no constraint binds and steps stay bounded.
DISTANCE_CAP_MM = 30.0

_CANAL = ("spinal_canal", "thecal_sac", "spinal_cord")
_LUNG = ("lung_left", "lung_right", "pleura")
_VESSEL = ("aorta", "vena_cava", "iliac_artery_left", "iliac_artery_right")


def structure_class(name: str, target_level: str | None = None) -> str | None:
    """Obstacle class of a registry structure name for a target level (None: not an obstacle).

    The target level's own body, pedicles and posterior elements are where the needle goes,
    so they are not obstacles; every other vertebra is ``other_bone``.
    """
    if name in _CANAL:
        return "canal"
    if name in _LUNG:
        return "lung_pleura"
    if name in _VESSEL:
        return "vessel"
    if name == "fluid_collection":
        return "fluid"
    if name == "other_bone":
        return "other_bone"
    if name.startswith(("screw_", "rod_", "crosslink_")) or name == "other_metal":
        return "hardware"
    try:
        p = parse_label(name)
    except Exception:
        return None
    part = p.get("part")
    if part is None:
        return None
    if part.startswith("nerve_root"):
        return "nerve_root"
    if part == "disc":
        return "disc"
    if part.startswith("rib"):
        return "rib"
    if part in ("body", "pedicle_left", "pedicle_right", "posterior", "lesion"):
        return None if p.get("level") == target_level else "other_bone"
    return None


def display_name(name: str) -> str:
    """Readable structure name for explanations: ``screw_L3_left`` -> ``L3 left screw``."""
    if name.startswith("screw_"):
        _, lev, side = name.split("_")
        return f"{lev} {side} screw"
    if name.startswith("tulip_"):
        _, lev, side = name.split("_")
        return f"{lev} {side} screw head"
    if name.startswith("rod_"):
        return f"{name.split('_')[1]} rod"
    if name.startswith("crosslink_"):
        return f"{name.split('_')[1]} cross-link"
    try:
        p = parse_label(name)
        if p.get("level") and p.get("part"):
            part = p["part"].replace("_", " ")
            if part.endswith(" left") or part.endswith(" right"):
                words = part.split()
                part = f"{words[-1]} {' '.join(words[:-1])}"
            return f"{p['level']} {part}"
    except Exception:
        pass
    return name.replace("_", " ")


@dataclass
class Solid:
    """An implant solid for exact clearance: a flat-capped cylinder or a tube (capsules).

    Attributes
    ----------
    name : str
        ``screw_L3_left`` (shank), ``tulip_L3_left`` (screw head), ``rod_left``,
        ``crosslink_T12``, ``metal_<n>``.
    kind : str
        ``"cylinder"`` (``a`` -> ``b``) or ``"tube"`` (``polyline``).
    radius : float
        mm.
    """

    name: str
    kind: str
    radius: float
    a: np.ndarray | None = None
    b: np.ndarray | None = None
    polyline: np.ndarray | None = None

    @property
    def points(self) -> np.ndarray:
        return np.stack([self.a, self.b]) if self.kind == "cylinder" else np.asarray(self.polyline)

    def distance(self, p: np.ndarray) -> np.ndarray:
        """Signed distance (mm) of points (n, 3) to the solid (negative inside)."""
        from planner.solve import exact

        if self.kind == "cylinder":
            return exact.point_cylinder_distance(p, self.a, self.b, self.radius)
        pl = np.asarray(self.polyline, float)
        d = exact.point_segment_distance(np.asarray(p, float)[:, None, :], pl[None, :-1], pl[None, 1:])
        return d.min(axis=1) - self.radius


def implant_solids(screws, rods, crosslinks) -> list[Solid]:
    """Exact solids of the implants (the phantom's recorded solid; see planner.phantom.hardware)."""
    out: list[Solid] = []
    for s in sorted(screws, key=lambda s: (LEVELS.index(s.level) if s.level in LEVELS else 99, s.side)):
        out.append(Solid(s.name, "cylinder", s.diameter_mm / 2, a=s.head_lps, b=s.tip_lps))
        out.append(
            Solid(f"tulip_{s.level}_{s.side}", "cylinder", s.tulip_diameter_mm / 2, a=s.tulip_top_lps, b=s.head_lps)
        )
    for r in sorted(rods, key=lambda r: r.side):
        out.append(Solid(r.name, "tube", r.diameter_mm / 2, polyline=np.asarray(r.centreline_lps, float)))
    for c in sorted(crosslinks, key=lambda c: c.level):
        out.append(Solid(c.name, "tube", c.diameter_mm / 2, polyline=np.asarray(c.centreline_lps, float)))
    return out


@dataclass
class LevelGeometry:
    """Frame and extents of one vertebra, from its labels.

    Attributes
    ----------
    level : str
    centre : (3,) body centroid, LPS mm.
    R : (3, 3) columns u (left), v (posterior), w (superior) in LPS.
    half : (3,) body half extents along u, v, w (mm; 2nd-98th percentile of the voxels).
    lo, hi : (3,) body extents (local coordinates) along u, v, w.
    pedicles : dict side -> {"w_lo", "w_hi", "u_mid", "centre"} (local mm; "centre" LPS)
    screws : sides with a pedicle screw at this level.
    """

    level: str
    centre: np.ndarray
    R: np.ndarray
    half: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    pedicles: dict[str, dict[str, Any]] = field(default_factory=dict)
    screws: list[str] = field(default_factory=list)

    def to_local(self, p: np.ndarray) -> np.ndarray:
        return (np.asarray(p, float) - self.centre) @ self.R

    def to_world(self, q: np.ndarray) -> np.ndarray:
        return np.asarray(q, float) @ self.R.T + self.centre

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "centre_lps_mm": [round(float(x), 3) for x in self.centre],
            "axes_lps": {k: [round(float(x), 5) for x in self.R[:, i]] for i, k in enumerate("uvw")},
            "body_half_extent_mm": [round(float(x), 2) for x in self.half],
            "screw_sides": list(self.screws),
            "pedicles": {
                s: {k: (round(float(v), 2) if np.isscalar(v) else [round(float(x), 3) for x in v]) for k, v in d.items()}
                for s, d in sorted(self.pedicles.items())
            },
        }


class Grid:
    """A box of a voxel grid (index order i, j, k) with trilinear and nearest sampling."""

    def __init__(self, lps_from_ijk: np.ndarray, shape: tuple[int, int, int]) -> None:
        self.lps_from_ijk = np.asarray(lps_from_ijk, float)
        self.ijk_from_lps = np.linalg.inv(self.lps_from_ijk)
        self.shape = tuple(int(s) for s in shape)
        self.spacing = np.linalg.norm(self.lps_from_ijk[:3, :3], axis=0)
        self._M = self.ijk_from_lps[:3, :3].T.copy()
        self._o = self.ijk_from_lps[:3, 3].copy()
        self._hi = np.array(self.shape, float) - 1.0

    def ijk(self, p: np.ndarray) -> np.ndarray:
        return p @ self._M + self._o

    def sample(self, arr: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Trilinear value of ``arr`` (this grid's shape, C order) at LPS points (n, 3).

        float32 arrays go through the compiled :func:`planner.solve.kernels.trilinear`
        (same formula, one pass); others through the numpy code below.  Points outside the box take the value of the nearest box point (the caller keeps
        query points inside; fields are built with a margin).
        """
        if arr.dtype == np.float32 and arr.flags.c_contiguous and min(self.shape) >= 2:
            from planner.solve import kernels

            return kernels.trilinear(arr, self._M, self._o, np.ascontiguousarray(p, dtype=np.float64))
        q = self.ijk(p)
        np.clip(q, 0.0, self._hi, out=q)
        i0 = np.minimum(q.astype(np.intp), np.array(self.shape) - 2)
        f = (q - i0).astype(np.float32)
        sx, sy = arr.shape[1] * arr.shape[2], arr.shape[2]
        flat = arr.reshape(-1)
        base = i0[:, 0] * sx + i0[:, 1] * sy + i0[:, 2]
        fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
        c000 = flat[base]
        c001 = flat[base + 1]
        c010 = flat[base + sy]
        c011 = flat[base + sy + 1]
        c100 = flat[base + sx]
        c101 = flat[base + sx + 1]
        c110 = flat[base + sx + sy]
        c111 = flat[base + sx + sy + 1]
        c00 = c000 + (c001 - c000) * fz
        c01 = c010 + (c011 - c010) * fz
        c10 = c100 + (c101 - c100) * fz
        c11 = c110 + (c111 - c110) * fz
        c0 = c00 + (c01 - c00) * fy
        c1 = c10 + (c11 - c10) * fy
        return c0 + (c1 - c0) * fx

    def nearest(self, arr: np.ndarray, p: np.ndarray) -> np.ndarray:
        q = np.rint(self.ijk(p)).astype(np.intp)
        np.clip(q, 0, np.array(self.shape) - 1, out=q)
        return arr[q[:, 0], q[:, 1], q[:, 2]]

    def inside(self, p: np.ndarray, pad: float = 0.0) -> np.ndarray:
        q = self.ijk(p)
        return np.all((q >= -pad) & (q <= self._hi + pad), axis=1)

    def node_points(self, sl: tuple[slice, slice, slice]) -> np.ndarray:
        idx = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in sl], indexing="ij"), -1).reshape(-1, 3)
        return idx @ self.lps_from_ijk[:3, :3].T + self.lps_from_ijk[:3, 3]

    def index_box(self, lo_lps: np.ndarray, hi_lps: np.ndarray, pad: int = 1) -> tuple[slice, slice, slice]:
        """Index slices covering an LPS box (corners transformed; any orientation)."""
        corners = np.array([[x, y, z] for x in (lo_lps[0], hi_lps[0]) for y in (lo_lps[1], hi_lps[1]) for z in (lo_lps[2], hi_lps[2])])
        q = self.ijk(corners)
        lo = np.maximum(np.floor(q.min(0)).astype(int) - pad, 0)
        hi = np.minimum(np.ceil(q.max(0)).astype(int) + pad + 1, np.array(self.shape))
        return tuple(slice(int(a), int(max(a, b))) for a, b in zip(lo, hi))


def _sdf(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Signed distance (mm, negative inside; :func:`planner.segment.fields._sdf_array`),
    capped at +/- :data:`DISTANCE_CAP_MM` so an absent structure is far, not infinite
    (compiled: :func:`planner.solve.edt.signed_distance`)."""
    return edt.signed_distance(mask, spacing, DISTANCE_CAP_MM)


def _group_table(groups: list[tuple[float, list[int]]]) -> np.ndarray:
    """Lookup table registry id -> index of its group (-1: none), for :func:`edt.pool_groups`."""
    top = max([max(LABEL_NAMES)] + [max(ids) for _, ids in groups if ids])
    lut = np.full(int(top) + 1, -1, np.int32)
    for g, (_, ids) in enumerate(groups):
        lut[np.asarray(ids, np.intp)] = g
    return lut


@dataclass
class LevelFields:
    """Fields of one target level on a crop of the label grid (see module docstring).

    Attributes
    ----------
    grid : Grid
    F : float32 array
        ``min_c (d_c - margin_c)`` (mm) over the obstacle classes for this target level.
    ID : int32 array
        Registry id of the structure attaining the minimum.
    skin : float32 array
        Signed distance to the body outline (negative inside the body).
    local : Grid
        Small grid around the target vertebra for ``body`` and ``pedicle_*``.
    body, pedicle : float32 arrays (signed distance, mm, negative inside).
    """

    level: str
    grid: Grid
    F: np.ndarray
    ID: np.ndarray
    skin: np.ndarray
    local: Grid
    body: np.ndarray
    pedicle: dict[str, np.ndarray]
    classes_present: dict[str, bool]
    timings_s: dict[str, float] = field(default_factory=dict)


class Scene:
    """Anatomy labels + implant solids + level geometry (+ exact meshes on demand).

    Build with :meth:`from_segmentation`, :meth:`from_phantom_case`, :meth:`from_folder`.
    """

    def __init__(
        self,
        labels: Volume,
        screws: list[Screw],
        rods: list[Rod],
        crosslinks: list[CrossLink],
        *,
        mesh_dir: str | Path | None = None,
        source: dict[str, Any] | None = None,
        warnings: list[CodedWarning] | None = None,
    ) -> None:
        if labels.array.ndim != 3:
            raise SolverError("scene labels must be a 3-D label map", code="PLN-SOL-003")
        self.labels = labels
        self.screws = list(screws)
        self.rods = list(rods)
        self.crosslinks = list(crosslinks)
        self.solids = implant_solids(self.screws, self.rods, self.crosslinks)
        self.mesh_dir = Path(mesh_dir) if mesh_dir is not None else None
        self.source = dict(source or {})
        self.warnings: list[CodedWarning] = list(warnings or [])
        self._meshes: dict[str, Any] = {}
        self._mesh_distance: dict[str, Any] = {}
        present = np.unique(labels.array)
        self.present_ids = [int(i) for i in present if i]
        self.present_names = [LABEL_NAMES[i] for i in self.present_ids if i in LABEL_NAMES]
        self.levels: dict[str, LevelGeometry] = self._level_geometry()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_segmentation(cls, seg, **kw) -> Scene:
        """From a :class:`planner.segment.result.Segmentation`."""
        return cls(seg.labels, seg.screws, seg.rods, seg.crosslinks, source={"kind": "segmentation", **seg.source}, warnings=list(seg.warnings), **kw)

    @classmethod
    def from_phantom_case(cls, folder: str | Path, *, exact_meshes: bool = True) -> Scene:
        """From a phantom case folder (ground truth: labels, case.json, meshes/)."""
        from planner.io import read_volume

        folder = Path(folder)
        case = _read_json(folder / "case.json")
        lab = _find(folder, "labels")
        labels = read_volume(lab)
        labels = labels.with_array(np.asarray(labels.array).astype(np.uint16), modality="LABEL")
        return cls(
            labels,
            [Screw.from_dict(d) for d in case.get("screws", [])],
            [Rod.from_dict(d) for d in case.get("rods", [])],
            [CrossLink.from_dict(d) for d in case.get("crosslinks", [])],
            mesh_dir=(folder / "meshes") if exact_meshes and (folder / "meshes").is_dir() else None,
            source={"kind": "phantom_ground_truth", "case": case.get("name"), "folder": folder.name},
        )

    @classmethod
    def from_segmentation_folder(cls, folder: str | Path) -> Scene:
        """From the folder ``planner segment`` writes (labels + segmentation.json + meshes)."""
        from planner.io import read_volume

        folder = Path(folder)
        summ = _read_json(folder / "segmentation.json")
        labels = read_volume(_find(folder, "labels"))
        labels = labels.with_array(np.asarray(labels.array).astype(np.uint16), modality="LABEL")
        warns = [CodedWarning(w["code"], w["message"], w.get("details", {})) for w in summ.get("warnings", [])]
        return cls(
            labels,
            [Screw.from_dict(d) for d in summ.get("screws", [])],
            [Rod.from_dict(d) for d in summ.get("rods", [])],
            [CrossLink.from_dict(d) for d in summ.get("crosslinks", [])],
            mesh_dir=(folder / "meshes") if (folder / "meshes").is_dir() else None,
            source={"kind": "segmentation", **summ.get("source", {})},
            warnings=warns,
        )

    @classmethod
    def from_folder(cls, folder: str | Path) -> Scene:
        """A phantom case folder (has ``case.json``) or a segmentation folder."""
        folder = Path(folder)
        if (folder / "case.json").is_file():
            return cls.from_phantom_case(folder)
        if (folder / "segmentation.json").is_file():
            return cls.from_segmentation_folder(folder)
        raise SolverError(
            f"{folder} holds neither case.json (phantom case) nor segmentation.json "
            "(output of 'planner segment'); run 'planner segment -i IMAGE -o DIR' first",
            code="PLN-SOL-003",
        )

    # ------------------------------------------------------------------ geometry
    def _mask(self, names) -> np.ndarray:
        ids = [LABEL_IDS[n] for n in names if n in LABEL_IDS]
        return np.isin(self.labels.array, ids) if ids else np.zeros(self.labels.shape, bool)

    def _level_geometry(self) -> dict[str, LevelGeometry]:
        lab = self.labels
        arr = lab.array
        out: dict[str, LevelGeometry] = {}
        body_ids = {LABEL_IDS[f"{lv}_body"]: lv for lv in LEVELS}
        objs = ndimage.find_objects(arr.astype(np.int32) if arr.dtype != np.int32 else arr)
        centres: dict[str, np.ndarray] = {}
        pts_cache: dict[str, np.ndarray] = {}
        for bid, lv in body_ids.items():
            if bid > len(objs) or objs[bid - 1] is None:
                continue
            sl = objs[bid - 1]
            idx = np.argwhere(arr[sl] == bid) + [s.start for s in sl]
            if len(idx) < 50:
                continue
            p = lab.lps_from_index(idx.astype(float))
            pts_cache[lv] = p
            centres[lv] = p.mean(0)
        canal = self._mask(_CANAL)
        canal_pts = lab.lps_from_index(np.argwhere(canal).astype(float)) if canal.any() else np.zeros((0, 3))
        names = [lv for lv in LEVELS if lv in centres]
        screw_sides: dict[str, list[str]] = {}
        for s in self.screws:
            screw_sides.setdefault(s.level, []).append(s.side)
        for n, lv in enumerate(names):
            c = centres[lv]
            up = [centres[names[n - 1]]] if n > 0 else []  # cranial neighbour (smaller index)
            dn = [centres[names[n + 1]]] if n + 1 < len(names) else []
            if up and dn:
                w = up[0] - dn[0]
            elif up:
                w = up[0] - c
            elif dn:
                w = c - dn[0]
            else:
                w = np.array([0.0, 0.0, 1.0])
            w = w / np.linalg.norm(w)
            p = pts_cache[lv]
            v = None
            if len(canal_pts):
                h = (canal_pts - c) @ w
                near = canal_pts[np.abs(h) < 8.0]
                if len(near) > 20:
                    v = near.mean(0) - c
            if v is None:
                post = self._mask([f"{lv}_posterior", f"{lv}_pedicle_left", f"{lv}_pedicle_right"])
                if post.any():
                    v = lab.lps_from_index(np.argwhere(post).astype(float)).mean(0) - c
                else:
                    v = np.array([0.0, 1.0, 0.0])
            v = v - (v @ w) * w
            v = v / np.linalg.norm(v)
            u = np.cross(v, w)
            R = np.stack([u, v, w], axis=1)
            q = (p - c) @ R
            lo = np.percentile(q, 2, axis=0)
            hi = np.percentile(q, 98, axis=0)
            geo = LevelGeometry(lv, c, R, (hi - lo) / 2, lo, hi, screws=sorted(screw_sides.get(lv, [])))
            for side in ("left", "right"):
                pid = LABEL_IDS[f"{lv}_pedicle_{side}"]
                if pid <= len(objs) and objs[pid - 1] is not None:
                    sl = objs[pid - 1]
                    idx = np.argwhere(arr[sl] == pid) + [s.start for s in sl]
                    if len(idx) >= 10:
                        pp = lab.lps_from_index(idx.astype(float))
                        ql = (pp - c) @ R
                        geo.pedicles[side] = {
                            "w_lo": float(np.percentile(ql[:, 2], 5)),
                            "w_hi": float(np.percentile(ql[:, 2], 95)),
                            "u_mid": float(np.median(ql[:, 0])),
                            "u_lateral": float(np.percentile(np.abs(ql[:, 0]), 95)),
                            "centre": pp.mean(0),
                        }
            out[lv] = geo
        return out

    def level(self, name: str) -> LevelGeometry:
        if name not in self.levels:
            raise SolverError(
                f"level {name} is not in the scene (found: {', '.join(self.levels) or 'none'}); "
                "check the segmentation or give an anchor when segmenting",
                code="PLN-SOL-001",
                details={"level": name, "levels": list(self.levels)},
            )
        return self.levels[name]

    # ------------------------------------------------------------------ names
    def structure_name(self, sid: int) -> str:
        return LABEL_NAMES.get(int(sid), f"label_{sid}")

    # ------------------------------------------------------------------ meshes
    def mesh(self, name: str):
        """Triangle mesh (trimesh, LPS mm) of a labelled structure for the exact check.

        From the scene's mesh folder when it has the structure (phantom ground truth or the
        segmentation's meshes), otherwise by marching cubes of the label.
        """
        if name in self._meshes:
            return self._meshes[name]
        m = None
        if self.mesh_dir is not None:
            for ext in ("vtp", "ply", "stl"):
                f = self.mesh_dir / f"{name}.{ext}"
                if f.is_file():
                    from planner.meshing import read_mesh

                    m = read_mesh(f)
                    break
        if m is None:
            from planner.segment.fields import label_mesh

            m = label_mesh(self.labels, [name], smooth=False) if name in self.present_names else None
        self._meshes[name] = m
        return m

    def mesh_bounds(self, name: str) -> np.ndarray | None:
        """LPS bounds (2, 3) of a structure's mesh without loading it when the mesh folder's
        ``manifest.json`` records them (``planner.meshing.mesh_scene`` writes it)."""
        man = self.__dict__.get("_manifest")
        if man is None:
            man = {}
            f = self.mesh_dir / "manifest.json" if self.mesh_dir is not None else None
            if f is not None and f.is_file():
                try:
                    man = json.loads(f.read_text()).get("meshes", {})
                except (OSError, ValueError):
                    man = {}
            self._manifest = man
        cache = self.__dict__.setdefault("_bounds", {})
        if name in cache:
            return cache[name]
        entry = man.get(name)
        if entry and "bounds_lps_mm" in entry and name not in self._meshes:
            b = np.asarray(entry["bounds_lps_mm"], float)
            b = b + np.array([[-1e-3], [1e-3]])  # the manifest rounds to 1e-3 mm: stay conservative
        else:
            m = self.mesh(name)
            b = None if m is None or len(m.faces) == 0 else np.array([m.vertices.min(0), m.vertices.max(0)], float)
        cache[name] = b
        return b

    def mesh_distance(self, name: str):
        """Cached :class:`planner.solve.exact.MeshDistance` of a structure (None if absent)."""
        if name not in self._mesh_distance:
            from planner.solve.exact import MeshDistance

            m = self.mesh(name)
            ok = m is not None and len(m.faces) > 0
            self._mesh_distance[name] = MeshDistance(np.asarray(m.vertices, float), np.asarray(m.faces)) if ok else None
        return self._mesh_distance[name]

    # ------------------------------------------------------------------ fields
    def _level_box(self, level: str) -> np.ndarray:
        """LPS corners (8, 3) of what the longest needle can reach from ``level``'s body."""
        geo = self.level(level)
        box = np.array([[a, b, c] for a in (-110.0, 110.0) for b in (geo.lo[1] - 15.0, geo.hi[1] + 135.0) for c in (-100.0, 100.0)])
        return geo.to_world(box)

    def _coarse_frame(self, options: SolverOptions) -> tuple[np.ndarray, Grid]:
        """The stride of the field grid and the full label grid it subsamples."""
        lab = self.labels
        stride = np.maximum(1, np.floor(options.field_spacing_mm / lab.spacing + 1e-6).astype(int))
        return stride, Grid(lab.lps_from_ijk, lab.shape)

    def _crop(self, corners: np.ndarray, stride: np.ndarray, full: Grid) -> tuple[slice, slice, slice]:
        """Full-grid index slices covering ``corners``, starting on multiples of ``stride``
        and a whole number of strides long (so crops of one scene share one coarse lattice)."""
        sl = full.index_box(corners.min(0), corners.max(0), pad=2)
        out = []
        for s_, st, n in zip(sl, stride, self.labels.shape):
            start = (s_.start // st) * st
            stop = start + max(1, (max(s_.stop, start + 1) - start) // st) * st
            while stop > n:
                stop -= st
            out.append(slice(int(start), int(max(stop, start))))
        return tuple(out)

    def _coarse_grid(self, sl, stride) -> Grid:
        lab = self.labels
        A = lab.lps_from_ijk.copy()
        # a coarse node sits at the centre of the block of full-resolution voxels it pools,
        # so the pooled voxel [-st/2, +st/2] covers exactly the voxels it stands for
        A[:3, 3] = lab.lps_from_index(np.array([[s_.start + (st - 1) / 2.0 for s_, st in zip(sl, stride)]], float))[0]
        A[:3, :3] = A[:3, :3] * stride[None, :]
        return Grid(A, tuple(int((s_.stop - s_.start) // st) for s_, st in zip(sl, stride)))

    def _class_fields(self, arr: np.ndarray, stride: np.ndarray, sp: np.ndarray, groups: list[tuple[float, list[int]]],
                      F: np.ndarray | None = None, ID: np.ndarray | None = None):
        """``min_g (d_g - margin_g)`` (mm, float32) and the id of the structure attaining it,
        over the groups ``(margin, registry ids)`` in their order (an exact tie keeps the
        earlier group), for the full-resolution labels ``arr`` (a whole number of strides per
        axis, any memory layout) on its strided grid.

        ``d_g`` is the distance to the group's voxels, max-pooled over each stride block
        (a coarse voxel is an obstacle when any of its voxels is), from the coarse voxel
        centres, less half the smallest coarse spacing (``-half`` inside), capped at
        :data:`DISTANCE_CAP_MM`; the id of a pooled voxel is its largest member id.  One
        pass over ``arr`` pools every group (:func:`planner.solve.edt.pool_groups`).

        ``F`` and ``ID`` given (float32 / int32, the coarse shape, ``F <= cap``) are updated
        in place, as the minimum with these groups (strictly smaller wins).

        Returns ``F, ID``, per group whether it is present, the pooled "any label" mask
        (the body outline) and which ids occur in ``arr`` (bool, indexed by id).
        """
        lut = _group_table(groups)
        anyg, maxg, nonzero, seen = edt.pool_groups(arr, stride, lut, len(groups))
        if F is None:
            F = np.full(nonzero.shape, DISTANCE_CAP_MM, np.float32)
            ID = np.zeros(nonzero.shape, np.int32)
        have = []
        for g, (m, _) in enumerate(groups):
            have.append(bool(anyg[g].any()))
            if have[-1]:
                edt.merge_group(anyg[g], maxg[g], sp, float(m), DISTANCE_CAP_MM, F, ID)
        return F, ID, have, nonzero, seen

    def _common_fields(self, options: SolverOptions, levels: list[str]) -> dict[str, Any]:
        """Level-independent fields (every obstacle class but ``other_bone``, other metal,
        the body outline), once per scene and margin set, on the union of the levels' boxes."""
        key = (tuple(sorted(options.margins.items())), float(options.field_spacing_mm))
        cache = self.__dict__.setdefault("_common", {})
        have = cache.get(key)
        if have is not None and set(levels) <= have["levels"]:
            return have
        t0 = time.perf_counter()
        stride, full = self._coarse_frame(options)
        corners = np.concatenate([self._level_box(lv) for lv in sorted(set(levels) | (have["levels"] if have else set()))])
        sl = self._crop(corners, stride, full)
        arr = self.labels.array[sl]
        grid = self._coarse_grid(sl, stride)
        # the classes by margin (ascending), then other metal with the hardware margin
        by_margin: dict[float, list[int]] = {}
        cls: dict[int, str] = {}
        metal_id = LABEL_IDS.get("other_metal", 499)
        for i, name in sorted(LABEL_NAMES.items()):
            c = structure_class(name, None)
            if c is None or c == "other_bone" or name == "other_metal":
                continue
            by_margin.setdefault(options.margins[c], []).append(int(i))
            cls[int(i)] = c
        groups = sorted(by_margin.items()) + [(options.margins["hardware"], [metal_id])]
        F, ID, _, inside, seen = self._class_fields(arr, stride, grid.spacing, groups)
        present = {c: False for c in OBSTACLE_CLASSES}
        for i in np.flatnonzero(seen):
            if int(i) in cls:
                present[cls[int(i)]] = True
        present["hardware"] = present["hardware"] or bool(metal_id < len(seen) and seen[metal_id])
        skin = _sdf(inside, grid.spacing)
        out = {"levels": set(levels) | (have["levels"] if have else set()), "slices": sl, "grid": grid, "F": F, "ID": ID,
               "skin": skin, "present": present, "stride": stride, "seconds": time.perf_counter() - t0}
        cache[key] = out
        return out

    def prepare_fields(self, levels: list[str], options: SolverOptions) -> float:
        """Build the level-independent fields for ``levels`` at once (seconds taken)."""
        for lv in levels:
            self.level(lv)
        return float(self._common_fields(options, list(levels))["seconds"])

    def fields(self, level: str, options: SolverOptions) -> LevelFields:
        """Distance fields for planning ``level`` (see :class:`LevelFields`).

        The box covers what a needle of the longest usable length can reach from the level's
        body: u +/-110 mm, v from 15 mm in front of the body to 135 mm behind it, w +/-100 mm,
        clipped to the image.  Grids finer than ``options.field_spacing_mm`` are strided with
        max-pooled obstacle masks (obstacles never shrink, so stage 1 stays conservative).
        Every class except ``other_bone`` does not depend on the target level: those fields
        are computed once per scene (:meth:`prepare_fields`) and cropped; only the other
        vertebrae's distance is computed per level.
        """
        t0 = time.perf_counter()
        geo = self.level(level)
        lab = self.labels
        common = self._common_fields(options, [level])
        stride, full = self._coarse_frame(options)
        sl = self._crop(self._level_box(level), stride, full)
        g0 = common["slices"]
        # the level box on the common coarse lattice
        csl = tuple(slice((s_.start - c.start) // st, (s_.stop - c.start) // st) for s_, c, st in zip(sl, g0, stride))
        grid = self._coarse_grid(sl, stride)
        F = np.array(common["F"][csl])  # copies: the common fields stay as they are
        ID = np.array(common["ID"][csl])
        skin = np.array(common["skin"][csl])
        present = dict(common["present"])
        timings: dict[str, float] = {}
        t = time.perf_counter()
        other = [i for i, name in sorted(LABEL_NAMES.items()) if structure_class(name, level) == "other_bone"]
        # min with the common fields in place (same as the min of the two fields: F <= cap)
        _, _, have, _, _ = self._class_fields(lab.array[sl], stride, grid.spacing, [(options.margins["other_bone"], other)], F, ID)
        if have[0]:
            present["other_bone"] = True
        timings["other_bone_s"] = time.perf_counter() - t
        t = time.perf_counter()
        pts = geo.to_world(
            np.array(
                [
                    [a, b, c]
                    for a in (geo.lo[0] - 25, geo.hi[0] + 25)
                    for b in (geo.lo[1] - 10, geo.hi[1] + 45)
                    for c in (geo.lo[2] - 12, geo.hi[2] + 12)
                ]
            )
        )
        lsl = full.index_box(pts.min(0), pts.max(0), pad=2)
        larr = lab.array[lsl]
        LA = lab.lps_from_ijk.copy()
        LA[:3, 3] = lab.lps_from_index(np.array([[s_.start for s_ in lsl]], float))[0]
        local = Grid(LA, larr.shape)
        body = _sdf(larr == LABEL_IDS[f"{level}_body"], local.spacing)
        ped = {s_: _sdf(larr == LABEL_IDS[f"{level}_pedicle_{s_}"], local.spacing) for s_ in ("left", "right")}
        timings["local_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0
        return LevelFields(level, grid, F, ID, skin, local, body, ped, present, timings)


def _find(folder: Path, stem: str) -> Path:
    for ext in ("nii.gz", "nii", "nrrd", "mha"):
        f = folder / f"{stem}.{ext}"
        if f.is_file():
            return f
    raise SolverError(f"no {stem}.nii.gz / .nrrd / .mha in {folder}", code="PLN-SOL-003")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise SolverError(f"{path} not found", code="PLN-SOL-003")
    return json.loads(path.read_text())
