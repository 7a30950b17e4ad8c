"""Segmentation pipeline: image -> :class:`Segmentation` (labels, hardware, levels, findings).

Steps (each a function of its own module, usable alone):

1. hardware from the image (:func:`planner.segment.hardware.segment_hardware`), always, also
   when the anatomy comes from imported labels;
2. anatomy: classical bone segmentation (:func:`planner.segment.bone.segment_bone`) or
   imported TotalSegmentator / VerSe labels (:func:`planner.segment.imported.import_labels`);
3. screws assigned to levels and sides from the vertebrae found;
4. canal, body outline, lungs, aorta, fluid (:func:`planner.segment.soft.segment_soft_tissue`);
5. labels merged by priority: soft tissue < bone < canal / sac < hardware.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from planner.errors import PlannerError
from planner.labels.registry import GLOBAL_STRUCTURES, LEVELS, is_bone, label_id
from planner.segment.result import Segmentation
from planner.volume import Provenance, Volume

log = logging.getLogger(__name__)

#: Soft-tissue labels drawn over bone (the canal and its contents never overwrite bone in the
#: phantom either; here they win only where the bone step left background).
_NEURAL = {GLOBAL_STRUCTURES[k] for k in ("spinal_canal", "thecal_sac", "spinal_cord")}
#: is_bone() as a lookup table over every registry id (ids stay below 512).
_BONE_LUT = np.array([is_bone(i) for i in range(512)], dtype=bool)


def segment(
    image: Volume,
    *,
    anchor: Any = None,
    labels: Volume | str | Path | None = None,
    label_source: str = "totalsegmentator",
    task: str = "total",
    soft_tissue: bool = True,
    mr_hardware: bool = False,
) -> Segmentation:
    """Segment a CT (or MR, where possible) into labelled structures and implant objects.

    Parameters
    ----------
    image : Volume
        CT in HU (modality "CT") or MR.
    anchor : optional
        Level hint for short fields of view, passed to the bone step (e.g. ``"L5"``).
    labels : Volume or path, optional
        Imported anatomy (TotalSegmentator or VerSe label map); hardware still comes from
        the image.
    label_source : {"totalsegmentator", "verse"}
    task : str
        TotalSegmentator task of ``labels`` (``"total"``, ``"total_mr"``,
        ``"vertebrae_body"``).
    soft_tissue : bool
        Also segment canal, outline, lungs, aorta and fluid.
    mr_hardware : bool
        On MR, fit screws and rods from signal voids (approximate, phantom-validated only).
        Off by default: on MR the hardware should come from a CT.

    Returns
    -------
    Segmentation
    """
    from planner.segment.hardware import segment_hardware

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    # The steps record warnings in the image's provenance: give them a copy (same array, no
    # pixel copy) so the caller's Volume is not changed by segmenting it.
    image = image.with_array(image.array)
    prov = Provenance(
        source_files=list(image.provenance.source_files),
        series_uid=image.provenance.series_uid,
        study_uid=image.provenance.study_uid,
        frame_of_reference_uid=image.provenance.frame_of_reference_uid,
        extra={"step": "segment"},
    )
    if image.modality not in ("CT", "MR"):
        raise PlannerError(
            f"segmentation needs a CT or MR image, got modality {image.modality!r}; "
            "load the image itself, not a label map",
            code="PLN-SEG-003",
        )
    is_ct = image.modality == "CT"
    if not is_ct and labels is None:
        raise PlannerError(
            "classical bone segmentation needs CT (Hounsfield units); for MR pass imported "
            "labels (e.g. TotalSegmentator task 'total_mr') with --labels",
            code="PLN-SEG-004",
        )

    t = time.perf_counter()
    if is_ct:
        hardware_fn = segment_hardware
    elif mr_hardware:
        from planner.segment.mr_hardware import segment_hardware_mr as hardware_fn

        # Screws are signal voids on MR, enlarged by susceptibility blooming and shifted along
        # the readout: axes are approximate, diameters assumed, tips lower bounds.
        image.provenance.warn(
            "PLN-W-SEG-001",
            "hardware fitted from MR signal voids is approximate (axis within a few degrees, head "
            "several mm, diameter assumed) and validated on phantoms only; take screw and rod "
            "geometry from a CT when one exists",
        )
    else:
        hardware_fn = None
        image.provenance.warn(
            "PLN-W-SEG-002",
            "no hardware taken from this MR (signal voids are not proof of metal: gas, cortex and "
            "flow voids look alike); take screw and rod geometry from a CT, or pass "
            "mr_hardware=True / --mr-hardware to fit voids (approximate)",
        )
    # The anatomy needs only the metal voxels (counted as bone for shape); the objects are
    # fitted once, after it, with the levels known.
    fit_hw = None
    if hardware_fn is None:
        metal_mask = np.zeros(image.shape, bool)
    elif is_ct:
        from planner.segment.hardware import metal_mask as metal_voxels

        metal_mask = metal_voxels(image)
    else:
        fit_hw = hardware_fn(image)
        metal_mask = fit_hw[4] > 0
    timings["metal_s"] = time.perf_counter() - t

    t = time.perf_counter()
    levels: list[str] = []
    resections: list[dict] = []
    fractures: list[dict] = []
    if labels is not None:
        from planner.segment.imported import import_labels

        anat, info = import_labels(image, labels, source=label_source, task=task, anchor=anchor)
        source = {"anatomy": f"{label_source}:{task}" if label_source == "totalsegmentator" else label_source}
        levels = [lev for lev in LEVELS if lev in set(info.get("levels", []))]
    else:
        from planner.segment.bone import segment_bone

        bone = segment_bone(image, metal_mask=metal_mask, anchor=anchor)
        anat = bone.labels
        levels, resections, fractures = list(bone.levels), list(bone.resections), list(bone.fractures)
        source = {"anatomy": "classical"}
    timings["anatomy_s"] = time.perf_counter() - t
    source["hardware"] = "image"

    # Levels of screws and cross-links: nearest body centre to the screw tip.  Only the level
    # comes from the anatomy; the side stays the hardware step's own (relative to the bony
    # midline), which does not depend on how well each body was segmented.
    centres = body_centres(anat, image)
    level_of = None
    if centres:
        names = list(centres)
        C = np.array([centres[n] for n in names])

        def level_of(p: np.ndarray) -> str:
            return names[int(np.argmin(np.linalg.norm(C - np.asarray(p, float).reshape(1, 3), axis=1)))]

    t = time.perf_counter()
    if hardware_fn is None:
        screws, rods, crosslinks, other, hw_labels, metal = [], [], [], [], np.zeros(image.shape, np.uint16), {
            "modality": image.modality, "fitted": False}
    elif fit_hw is not None and level_of is None:
        screws, rods, crosslinks, other, hw_labels, metal = fit_hw
    else:
        screws, rods, crosslinks, other, hw_labels, metal = hardware_fn(image, level_of=level_of)
    timings["hardware_s"] = time.perf_counter() - t

    soft = None
    if soft_tissue and is_ct:
        from planner.segment.soft import segment_soft_tissue

        t = time.perf_counter()
        soft, _soft_info = segment_soft_tissue(image, bone_labels=anat, metal_mask=metal_mask)
        timings["soft_tissue_s"] = time.perf_counter() - t

    merged = merge_labels(soft, anat, hw_labels)
    prov.warnings.extend(image.provenance.warnings)
    lab = Volume(merged, image.lps_from_ijk.copy(), "LABEL", prov)
    timings["total_s"] = time.perf_counter() - t0
    source["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return Segmentation(
        labels=lab,
        screws=screws,
        rods=rods,
        crosslinks=crosslinks,
        other_metal=other,
        levels=levels,
        resections=resections,
        fractures=fractures,
        metal=metal,
        source=source,
        warnings=list(image.provenance.warnings),
    )


def merge_labels(soft: np.ndarray | None, anatomy: np.ndarray | None, hardware: np.ndarray) -> np.ndarray:
    """Merge label arrays (all (i, j, k) uint16 on one grid): soft < bone < neural < hardware.

    Soft tissue fills background; anatomy overwrites it, except that the canal, sac and cord
    found by the soft-tissue step are kept against non-bone anatomy labels; hardware
    overwrites everything.
    """
    out = np.zeros(hardware.shape, dtype=np.uint16)
    if soft is not None:
        out[:] = soft
    if anatomy is not None:
        a = np.asarray(anatomy)
        take = a > 0
        if soft is not None:
            neural = np.isin(out, sorted(_NEURAL))
            take &= ~neural | _BONE_LUT[a]
        np.copyto(out, a, where=take, casting="unsafe")
    np.copyto(out, hardware, where=hardware > 0, casting="unsafe")
    return out


def label_centroids(labels: np.ndarray, ids) -> dict[int, np.ndarray]:
    """Voxel-index centroid (3,) of each label id in ``ids`` that is present (non-empty).

    The same values as ``scipy.ndimage.center_of_mass(ones, labels, ids)``, from the
    labelled voxels only (:func:`planner.segment.morph.centroids`): scipy builds
    full-volume products per axis, about 9 s on a 512x512x300 label map against well under
    one second here.  Negative labels are ignored (background is 0)."""
    from planner.segment.morph import centroids

    ids = [int(i) for i in ids]
    c = centroids(labels, ids)
    return {i: c[n] for n, i in enumerate(ids) if np.all(np.isfinite(c[n]))}


def body_centres(labels: np.ndarray, image: Volume) -> dict[str, np.ndarray]:
    """LPS centroid (3,) of each ``<L>_body`` label present, cranial to caudal."""
    ids = {label_id(f"{lev}_body"): lev for lev in LEVELS}
    com = label_centroids(labels, sorted(ids))
    out = {ids[i]: image.lps_from_index(c)[0] for i, c in com.items()}
    return {lev: out[lev] for lev in LEVELS if lev in out}


def write_segmentation(seg: Segmentation, out_dir: str | Path, *, meshes: bool = True, fmt: str = "vtp") -> dict:
    """Write ``labels.nii.gz``, ``segmentation.json`` and meshes; ``manifest.json`` last."""
    import json
    import os

    from planner.io import write_volume

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    man = out / "manifest.json"
    if man.exists():
        man.unlink()
    files: dict[str, Any] = {"labels": "labels.nii.gz", "summary": "segmentation.json"}
    write_volume(seg.labels, out / "labels.nii.gz")
    if meshes:
        from planner.segment.fields import write_label_meshes

        m = write_label_meshes(seg.labels, out / "meshes", fmt=fmt)
        files["meshes"] = {k: str(Path(v).relative_to(out)) for k, v in sorted(m.items())}
        from planner.meshing import rod_mesh, screw_mesh, write_mesh

        for s in seg.screws:
            files["meshes"][s.name] = str(write_mesh(screw_mesh(s), out / "meshes" / f"{s.name}.{fmt}").relative_to(out))
        for r in seg.rods:
            files["meshes"][r.name] = str(write_mesh(rod_mesh(r), out / "meshes" / f"{r.name}.{fmt}").relative_to(out))
    for name, obj in (("segmentation.json", seg.summary()), ("manifest.json", {"schema": "planner.segmentation.manifest", "files": files})):
        tmp = out / (name + ".tmp")
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=_json_default) + "\n")
        os.replace(tmp, out / name)
    return files


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))
