"""Phantom generation: spec -> scene -> images and ground truth -> case folder.

Random streams are split per stage from the spec's seed (``numpy.random.SeedSequence``), so
changing imaging options never changes the anatomy, and the same spec gives the same case
byte for byte.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from planner.labels.registry import LABEL_IDS
from planner.phantom.model import PhantomScene
from planner.phantom.rasterize import rasterize, scene_grid
from planner.phantom.spec import CaseSpec
from planner.volume import Provenance, Volume

log = logging.getLogger(__name__)

#: Stage names -> index of the spawned seed sequence (never reorder: keeps seeds stable).
_STREAMS = {"frames": 0, "bone": 1, "soft": 2, "imaging": 3}


def _rng(spec: CaseSpec, stage: str) -> np.random.Generator:
    ss = np.random.SeedSequence(int(spec.seed)).spawn(len(_STREAMS))[_STREAMS[stage]]
    return np.random.default_rng(ss)


def build_scene(spec: CaseSpec) -> PhantomScene:
    """Anatomy, surgery, pathology and hardware of a case, before imaging."""
    from planner.phantom.hardware import build_hardware
    from planner.phantom.soft_tissue import build_soft_tissue
    from planner.phantom.vertebrae import build_bone, build_frames

    frames = build_frames(spec, _rng(spec, "frames"))
    bone, findings = build_bone(spec, frames, _rng(spec, "bone"))
    soft, soft_findings = build_soft_tissue(spec, frames, _rng(spec, "soft"))
    screws, rods, crosslinks, hw = build_hardware(spec, frames)
    merged: dict[str, list[dict]] = {}
    for part in (findings, soft_findings):
        for k, v in part.items():
            merged.setdefault(k, []).extend(v)
    return PhantomScene(
        spec=spec,
        vertebrae=frames,
        structures=list(soft) + list(bone) + list(hw),
        screws=screws,
        rods=rods,
        crosslinks=crosslinks,
        findings=merged,
    )


@dataclass
class PhantomCase:
    """A generated case: scene (ground truth geometry) and images on one grid."""

    spec: CaseSpec
    scene: PhantomScene
    image: Volume  # CT (HU) or MR
    labels: Volume  # uint16 registry ids on the same grid
    notes: list[dict] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    def description(self) -> dict[str, Any]:
        """The case description JSON (ground truth besides label map and meshes)."""
        present = sorted(int(x) for x in np.unique(self.labels.array) if x)
        from planner.labels.registry import label_name

        return {
            "schema": "planner.phantom.case",
            "schema_version": "1.0",
            "name": self.spec.name,
            "description": self.spec.description,
            "spec": self.spec.to_dict(),
            "frame": "LPS",
            "units": "mm",
            "image": self.image.describe(),
            "screws": [s.to_dict() for s in self.scene.screws],
            "rods": [r.to_dict() for r in self.scene.rods],
            "crosslinks": [c.to_dict() for c in self.scene.crosslinks],
            "vertebrae": {k: v.to_dict() for k, v in self.scene.vertebrae.items()},
            "findings": self.scene.findings,
            "labels_present": {label_name(i): i for i in present},
            "synthesis_notes": self.notes,
            "provenance": self.image.provenance.to_dict(),
        }


def generate(
    spec: CaseSpec, scene: PhantomScene | None = None, *, levels: tuple[int, ...] | None = None
) -> PhantomCase:
    """Generate the image and label map of a case.

    Parameters
    ----------
    spec : CaseSpec
    scene : PhantomScene, optional
        Reuse an already built scene (same spec) to image it again.
    levels : tuple of int, optional
        Block sizes of the rasteriser's refinement (``(1,)`` = evaluate every voxel, the
        brute-force baseline the benchmark compares against).

    Returns
    -------
    PhantomCase
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if scene is None:
        scene = build_scene(spec)
    timings["scene"] = time.perf_counter() - t0
    im = spec.imaging
    z = _z_range(scene, im.margin_mm)
    shape, A = scene_grid(scene.structures, z, im.spacing_mm, im.rotation_deg, im.left_handed, im.fov_mm)
    _check_memory(shape)
    t1 = time.perf_counter()
    rng = _rng(spec, "imaging")
    kw = {"levels": levels} if levels else {}
    if im.modality == "CT":
        from planner.phantom.ct import ct_value, finish_ct

        res = rasterize(
            scene.structures,
            shape,
            A,
            {"img": ct_value},
            {"metal": ("titanium", "cobalt_chrome"), "cancellous": ("cancellous_bone",)},
            **kw,
        )
        timings["rasterize"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        img, notes = finish_ct(
            res.images["img"], A, im, rng, metal=res.fractions["metal"], cancellous=res.fractions["cancellous"]
        )
    else:
        from planner.phantom.mr import finish_mr, mr_value

        res = rasterize(
            scene.structures,
            shape,
            A,
            {"img": lambda t, p: mr_value(t, p, im.mr_weighting)},
            {"metal": ("titanium", "cobalt_chrome")},
            **kw,
        )
        timings["rasterize"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        img, notes = finish_mr(res.images["img"], A, im, rng, metal=res.fractions["metal"])
    timings["synthesis"] = time.perf_counter() - t2
    prov = Provenance(
        source_files=[],
        extra={"generator": "planner.phantom", "preset": spec.name, "seed": int(spec.seed)},
    )
    if im.modality == "CT":
        # CT is stored as whole HU like a scanner's output; every storage mode fits int16
        # (the extended scale stops at 30000 HU, see planner.phantom.ct.STORAGE_RANGES).
        img = np.rint(img).astype(np.int16)
    else:
        img = np.asarray(img, dtype=np.float32)
    image = Volume(img, A, im.modality, prov)
    labels = Volume(res.labels, A.copy(), "LABEL", Provenance(extra=dict(prov.extra)))
    timings["total"] = time.perf_counter() - t0
    return PhantomCase(spec, scene, image, labels, notes, timings)


def _z_range(scene: PhantomScene, margin: float) -> tuple[float, float]:
    """Superior-inferior extent: the modelled vertebrae's endplates plus ``margin``."""
    zs = []
    for f in scene.vertebrae.values():
        for k in ("endplate_superior_centre", "endplate_inferior_centre", "spinous_tip"):
            if k in f.landmarks:
                zs.append(f.landmarks[k][2])
    return float(min(zs) - margin), float(max(zs) + margin)


def _check_memory(shape: tuple[int, ...], limit_bytes: float | None = None) -> None:
    """Refuse grids whose working set would exceed the limit (about 14 bytes per voxel)."""
    from planner.errors import PhantomSpecError

    limit = limit_bytes or float(os.environ.get("PLANNER_MAX_BYTES", 16 * 2**30))
    need = 14.0 * float(np.prod(shape))
    if need > limit:
        raise PhantomSpecError(
            f"grid {shape} needs about {need / 2**30:.1f} GiB, over the {limit / 2**30:.1f} GiB limit; "
            "use a coarser spacing_mm or a smaller fov_mm (or raise PLANNER_MAX_BYTES)",
            code="PLN-IN-004",
        )


def write_case(
    case: PhantomCase,
    out_dir: str | os.PathLike,
    *,
    image_format: str = "nii.gz",
    dicom: bool = True,
    meshes: bool = True,
    mesh_format: str = "vtp",
    mesh_spacing_mm: float = 0.75,
) -> dict[str, Any]:
    """Write a case folder and return its manifest.

    Layout::

        out_dir/
          case.json            description, screws/rods, findings, provenance
          image.<fmt>          CT (HU) or MR
          labels.<fmt>         uint16 registry ids
          labels.json          id -> name table of the labels present
          dicom/               CT as a DICOM series (CT only, when ``dicom``)
          meshes/              one mesh per structure and part, LPS mm, + manifest.json
          manifest.json        what was written (written last: its presence marks a complete case)
    """
    from planner.io import write_dicom_series, write_volume

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest_path.unlink()  # the folder is incomplete until the new manifest lands
    files: dict[str, Any] = {}
    write_volume(case.image, out / f"image.{image_format}")
    files["image"] = f"image.{image_format}"
    write_volume(case.labels, out / f"labels.{image_format}")
    files["labels"] = f"labels.{image_format}"
    present = sorted(int(x) for x in np.unique(case.labels.array) if x)
    inv = {v: k for k, v in LABEL_IDS.items()}
    _write_json(out / "labels.json", {str(i): inv[i] for i in present})
    files["label_table"] = "labels.json"
    if dicom and case.image.modality == "CT":
        write_dicom_series(
            case.image,
            out / "dicom",
            series_description=f"Phantom {case.spec.name}",
            uid_seed=f"{case.spec.name}-{case.spec.seed}",
        )
        files["dicom"] = "dicom"
    if meshes:
        from planner.meshing import mesh_scene

        m = mesh_scene(case.scene, out / "meshes", fmt=mesh_format, spacing_mm=mesh_spacing_mm)
        files["meshes"] = {k: str(Path(v).relative_to(out)) for k, v in sorted(m.items())}
    _write_json(out / "case.json", case.description())
    files["case"] = "case.json"
    manifest = {"schema": "planner.phantom.manifest", "schema_version": "1.0", "files": files}
    _write_json(manifest_path, manifest)
    return manifest


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
