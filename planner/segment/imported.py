"""Import label maps made by TotalSegmentator or VerSe onto the image grid, by class name.

The external map is resampled onto the image grid in physical space
(:func:`planner.io.resample_to`, nearest neighbour; ``PLN-GEO-004`` when the two do not
overlap), then every external id is mapped **by name** through
:mod:`planner.labels.external` to a registry name.

Whole-vertebra classes (``"vertebra:T12"``) become ``T12_body``: the registry splits a
vertebra into body, pedicles and posterior elements, and until that split is done the whole
vertebra stands in for its body (reported as ``PLN-W-IMP-001``).  Levels outside the registry
(cervical, L6, T13) are left out and listed.

``total_mr`` has a single ``vertebrae`` class: it is split into vertebrae along the spine by
connected components after removing the disc class; levels are unknown (``other_bone`` and
``PLN-W-IMP-002``) unless an ``anchor`` names the level of one of them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from planner.errors import CodedWarning, InputError
from planner.io import read_volume, resample_to
from planner.labels.external import (
    parse_mapped_name,
    totalseg_classes,
    totalseg_to_registry,
    verse_to_registry,
)
from planner.labels.registry import LABEL_IDS, LEVELS
from planner.volume import Volume

log = logging.getLogger(__name__)

SOURCES = ("totalsegmentator", "verse")
#: Vertebra components smaller than this (mL) are fragments, not vertebrae. [U]
MIN_VERTEBRA_ML = 3.0


def _body_name(level: str) -> str | None:
    name = f"{level}_body"
    return name if name in LABEL_IDS else None


def split_vertebrae(
    mask: np.ndarray,
    image: Volume,
    *,
    discs: np.ndarray | None = None,
    anchor: str | tuple[str, Any] | None = None,
) -> tuple[list[np.ndarray], list[str | None], list[dict[str, Any]]]:
    """Split a one-class vertebra mask into vertebrae ordered cranial to caudal.

    Parameters
    ----------
    mask : (ni, nj, nk) bool
        All vertebrae as one class, on ``image``'s grid.
    image : Volume
        Gives the geometry (cranial = +z in LPS).
    discs : (ni, nj, nk) bool, optional
        Disc class; removed (dilated by one voxel) before the components are taken.
    anchor : str or (str, (3,) LPS point), optional
        ``"T12"``: the most cranial vertebra found is T12; ``("L1", point)``: the vertebra
        nearest to ``point`` is L1.  Others are numbered consecutively.

    Returns
    -------
    masks : list of (ni, nj, nk) bool
    levels : list of str or None
        None when no anchor is given (levels unknown).
    components : list of dict
        ``{"index", "voxels", "volume_ml", "centroid_lps", "level"}``.
    """
    m = mask.astype(bool).copy()
    if discs is not None and discs.any():
        m &= ~ndi.binary_dilation(discs, iterations=1)
    lab, n = ndi.label(m)
    vox_ml = float(np.prod(image.spacing)) / 1000.0
    comps = []
    for i in range(1, n + 1):
        c = lab == i
        v = int(c.sum())
        if v * vox_ml < MIN_VERTEBRA_ML:
            continue
        cen = image.lps_from_index(np.argwhere(c).mean(0))[0]
        comps.append((cen, c, v))
    comps.sort(key=lambda t: -t[0][2])  # cranial (high z) first
    levels: list[str | None] = [None] * len(comps)
    if anchor is not None and comps:
        if isinstance(anchor, str):
            lev, k0 = anchor, 0
        else:
            lev, pt = anchor[0], np.asarray(anchor[1], float).reshape(3)
            k0 = int(np.argmin([np.linalg.norm(c[0] - pt) for c in comps]))
        if lev not in LEVELS:
            raise InputError(f"anchor level {lev!r} is not one of {', '.join(LEVELS)}",
                             code="PLN-LBL-001")
        i0 = LEVELS.index(lev)
        for k in range(len(comps)):
            j = i0 + (k - k0)
            levels[k] = LEVELS[j] if 0 <= j < len(LEVELS) else None
    info = [{"index": k, "voxels": c[2], "volume_ml": round(c[2] * vox_ml, 2),
             "centroid_lps": [round(float(x), 2) for x in c[0]], "level": levels[k]}
            for k, c in enumerate(comps)]
    return [c[1] for c in comps], levels, info


def import_labels(
    image: Volume,
    labels: Volume | str | os.PathLike,
    *,
    source: str = "totalsegmentator",
    task: str = "total",
    anchor: str | tuple[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Resample an external label map onto ``image`` and map its classes to registry ids.

    Parameters
    ----------
    image : Volume
        Target grid, array (ni, nj, nk).
    labels : Volume or path
        The external label map (any grid / orientation; read with ``read_volume``).
    source : {"totalsegmentator", "verse"}
    task : str
        TotalSegmentator task (``"total"``, ``"total_mr"``, ``"vertebrae_body"``).
    anchor : str or (str, (3,) LPS point), optional
        Level anchor for one-class vertebra maps (see :func:`split_vertebrae`).

    Returns
    -------
    labels : (ni, nj, nk) uint16
        Registry ids on the image grid.
    info : dict
        ``source``, ``task``, ``mapped`` (external id -> registry name, voxel count),
        ``unmapped`` (external id -> external class name, voxel count), ``levels`` found,
        ``levels_outside_registry``, ``vertebra_components`` (one-class maps),
        ``warnings`` (list of :class:`CodedWarning`, including the resampling warning).

    Raises
    ------
    GeometryError
        ``PLN-GEO-004`` when the label map does not overlap the image.
    InputError
        Unknown ``source``; a label map with non-integer values.
    """
    if source not in SOURCES:
        raise InputError(f"unknown label source {source!r}; use one of {SOURCES}",
                         code="PLN-LBL-001")
    if not isinstance(labels, Volume):
        labels = read_volume(labels, modality="LABEL")
    arr = np.asarray(labels.array)
    if arr.dtype.kind == "f":
        if not np.allclose(arr, np.round(arr)):
            raise InputError("label map holds non-integer values; is it an image?",
                             code="PLN-IN-002")
        labels = labels.with_array(np.round(arr).astype(np.int32))
    res = resample_to(image, labels, order=0)
    warns: list[CodedWarning] = list(res.provenance.warnings[len(labels.provenance.warnings):])
    ext = np.asarray(res.array).astype(np.int64)

    if source == "verse":
        table = verse_to_registry()
        names = {i: n for i, n in table.items()}
    else:
        table = totalseg_to_registry(task)
        names = totalseg_classes(task)
    ids, counts = np.unique(ext, return_counts=True)
    out = np.zeros(image.shape, np.uint16)
    mapped: dict[int, dict[str, Any]] = {}
    unmapped: dict[int, dict[str, Any]] = {}
    outside: list[str] = []
    levels: list[str] = []
    components: list[dict[str, Any]] = []
    whole_vertebra: list[str] = []
    for i, cnt in zip(ids.tolist(), counts.tolist()):
        if i == 0:
            continue
        m = table.get(i)
        if m is None:
            unmapped[i] = {"name": names.get(i, "unknown id"), "voxels": cnt}
            continue
        p = parse_mapped_name(m)
        if p["kind"] == "registry":
            out[ext == i] = LABEL_IDS[p["name"]]
            mapped[i] = {"name": p["name"], "voxels": cnt}
        elif p["kind"] == "vertebra" and p["level"] != "any":
            body = _body_name(p["level"])
            if body is None:
                outside.append(p["level"])
                unmapped[i] = {"name": m, "voxels": cnt, "reason": "level outside registry"}
                continue
            out[ext == i] = LABEL_IDS[body]
            mapped[i] = {"name": body, "voxels": cnt, "whole_vertebra": True}
            levels.append(p["level"])
            whole_vertebra.append(p["level"])
        elif p["kind"] in ("vertebra", "vertebral_body") and p["level"] == "any":
            disc_ids = [k for k, v in table.items() if v == "disc:any"]
            masks, levs, components = split_vertebrae(
                ext == i, image, discs=np.isin(ext, disc_ids) if disc_ids else None,
                anchor=anchor)
            out[ext == i] = LABEL_IDS["other_bone"]
            for mk, lev in zip(masks, levs):
                if lev is not None and _body_name(lev):
                    out[mk] = LABEL_IDS[_body_name(lev)]  # type: ignore[index]
                    levels.append(lev)
            mapped[i] = {"name": "vertebrae (split)", "voxels": cnt,
                         "components": len(masks)}
            if anchor is None:
                warns.append(CodedWarning(
                    "PLN-W-IMP-002", f"{len(masks)} vertebrae found in the one-class "
                    f"'{names.get(i)}' map but their levels are unknown; labelled other_bone. "
                    "Give an anchor level to number them", {"components": len(masks)}))
        else:  # disc:any without levels
            unmapped[i] = {"name": m, "voxels": cnt, "reason": "no level"}
    if whole_vertebra:
        warns.append(CodedWarning(
            "PLN-W-IMP-001", "whole-vertebra labels stand in for the vertebral body until the "
            "vertebra is split into parts", {"levels": whole_vertebra}))
    if unmapped:
        warns.append(CodedWarning(
            "PLN-W-IMP-003", f"{len(unmapped)} external classes have no registry counterpart "
            "and were left out", {"ids": sorted(unmapped)}))
    levels = [lv for lv in LEVELS if lv in set(levels)]
    info = {"source": source, "task": task if source == "totalsegmentator" else None,
            "mapped": mapped, "unmapped": unmapped, "levels": levels,
            "levels_outside_registry": sorted(set(outside)),
            "vertebra_components": components, "warnings": warns}
    for w in warns:
        if w.code.startswith("PLN-W-IMP"):
            log.warning("[%s] %s", w.code, w.message)
    return out, info
