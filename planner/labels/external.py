"""Label tables of external tools (TotalSegmentator, VerSe) and their mapping to our names.

Pure data plus small functions; imports only the standard library and
:mod:`planner.labels.registry`.  External label **numbers appear only in this module**:
everything else looks classes up by name (:func:`totalseg_id`) and maps them with
:func:`totalseg_to_registry` / :func:`verse_to_registry`.

Mapped names are either names of :mod:`planner.labels.registry` (``"spinal_cord"``,
``"vena_cava"``, ``"T7_rib_left"``, ``"other_bone"``) or, for classes that cover a whole
vertebra (our registry splits vertebrae into parts), ``"vertebra:<LEVEL>"`` such as
``"vertebra:T12"``.  Levels outside our registry (cervical, ``L6``, ``T13``) keep their name
so that the level can still be reported.  Classes covering every level at once map to
``"vertebra:any"``, ``"vertebral_body:any"`` or ``"disc:any"``.

Sources
-------
* TotalSegmentator ``totalsegmentator/map_to_binary.py`` (``class_map`` for the v2 tasks
  ``total``, ``total_mr`` and ``vertebrae_body``), Apache-2.0.
* VerSe challenge label convention (1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum,
  27 coccyx, 28 T13) and the VerSe/TPTBox subregion ids 41-50.
"""

from __future__ import annotations

from planner.labels.registry import LABEL_IDS, LEVELS

#: TotalSegmentator class tables (id -> class name) per task.
TOTALSEG_CLASSES: dict[str, dict[int, str]] = {
    "total": {
        1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver",
        6: "stomach", 7: "pancreas", 8: "adrenal_gland_right", 9: "adrenal_gland_left",
        10: "lung_upper_lobe_left", 11: "lung_lower_lobe_left", 12: "lung_upper_lobe_right",
        13: "lung_middle_lobe_right", 14: "lung_lower_lobe_right", 15: "esophagus",
        16: "trachea", 17: "thyroid_gland", 18: "small_bowel", 19: "duodenum", 20: "colon",
        21: "urinary_bladder", 22: "prostate", 23: "kidney_cyst_left", 24: "kidney_cyst_right",
        25: "sacrum", 26: "vertebrae_S1", 27: "vertebrae_L5", 28: "vertebrae_L4",
        29: "vertebrae_L3", 30: "vertebrae_L2", 31: "vertebrae_L1", 32: "vertebrae_T12",
        33: "vertebrae_T11", 34: "vertebrae_T10", 35: "vertebrae_T9", 36: "vertebrae_T8",
        37: "vertebrae_T7", 38: "vertebrae_T6", 39: "vertebrae_T5", 40: "vertebrae_T4",
        41: "vertebrae_T3", 42: "vertebrae_T2", 43: "vertebrae_T1", 44: "vertebrae_C7",
        45: "vertebrae_C6", 46: "vertebrae_C5", 47: "vertebrae_C4", 48: "vertebrae_C3",
        49: "vertebrae_C2", 50: "vertebrae_C1", 51: "heart", 52: "aorta",
        53: "pulmonary_vein", 54: "brachiocephalic_trunk", 55: "subclavian_artery_right",
        56: "subclavian_artery_left", 57: "common_carotid_artery_right",
        58: "common_carotid_artery_left", 59: "brachiocephalic_vein_left",
        60: "brachiocephalic_vein_right", 61: "atrial_appendage_left",
        62: "superior_vena_cava", 63: "inferior_vena_cava",
        64: "portal_vein_and_splenic_vein", 65: "iliac_artery_left", 66: "iliac_artery_right",
        67: "iliac_vena_left", 68: "iliac_vena_right", 69: "humerus_left",
        70: "humerus_right", 71: "scapula_left", 72: "scapula_right", 73: "clavicula_left",
        74: "clavicula_right", 75: "femur_left", 76: "femur_right", 77: "hip_left",
        78: "hip_right", 79: "spinal_cord", 80: "gluteus_maximus_left",
        81: "gluteus_maximus_right", 82: "gluteus_medius_left", 83: "gluteus_medius_right",
        84: "gluteus_minimus_left", 85: "gluteus_minimus_right", 86: "autochthon_left",
        87: "autochthon_right", 88: "iliopsoas_left", 89: "iliopsoas_right", 90: "brain",
        91: "skull", 92: "rib_left_1", 93: "rib_left_2", 94: "rib_left_3", 95: "rib_left_4",
        96: "rib_left_5", 97: "rib_left_6", 98: "rib_left_7", 99: "rib_left_8",
        100: "rib_left_9", 101: "rib_left_10", 102: "rib_left_11", 103: "rib_left_12",
        104: "rib_right_1", 105: "rib_right_2", 106: "rib_right_3", 107: "rib_right_4",
        108: "rib_right_5", 109: "rib_right_6", 110: "rib_right_7", 111: "rib_right_8",
        112: "rib_right_9", 113: "rib_right_10", 114: "rib_right_11", 115: "rib_right_12",
        116: "sternum", 117: "costal_cartilages",
    },
    "total_mr": {
        1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver",
        6: "stomach", 7: "pancreas", 8: "adrenal_gland_right", 9: "adrenal_gland_left",
        10: "lung_left", 11: "lung_right", 12: "esophagus", 13: "small_bowel",
        14: "duodenum", 15: "colon", 16: "urinary_bladder", 17: "prostate", 18: "sacrum",
        19: "vertebrae", 20: "intervertebral_discs", 21: "spinal_cord", 22: "heart",
        23: "aorta", 24: "inferior_vena_cava", 25: "portal_vein_and_splenic_vein",
        26: "iliac_artery_left", 27: "iliac_artery_right", 28: "iliac_vena_left",
        29: "iliac_vena_right", 30: "humerus_left", 31: "humerus_right", 32: "scapula_left",
        33: "scapula_right", 34: "clavicula_left", 35: "clavicula_right", 36: "femur_left",
        37: "femur_right", 38: "hip_left", 39: "hip_right", 40: "gluteus_maximus_left",
        41: "gluteus_maximus_right", 42: "gluteus_medius_left", 43: "gluteus_medius_right",
        44: "gluteus_minimus_left", 45: "gluteus_minimus_right", 46: "autochthon_left",
        47: "autochthon_right", 48: "iliopsoas_left", 49: "iliopsoas_right", 50: "brain",
    },
    "vertebrae_body": {1: "vertebrae_body", 2: "intervertebral_discs"},
}

#: VerSe vertebra ids -> level names.
VERSE_VERTEBRAE: dict[int, str] = {
    **{i: f"C{i}" for i in range(1, 8)},
    **{7 + i: f"T{i}" for i in range(1, 13)},
    **{19 + i: f"L{i}" for i in range(1, 7)},
    26: "sacrum",
    27: "coccyx",
    28: "T13",
}

#: VerSe / TPTBox subregion ids -> subregion names.
VERSE_SUBREGIONS: dict[int, str] = {
    41: "arcus_vertebrae",  # posterior arch including the pedicles
    42: "spinous_process",
    43: "costal_process_left",  # transverse process
    44: "costal_process_right",
    45: "superior_articular_process_left",
    46: "superior_articular_process_right",
    47: "inferior_articular_process_left",
    48: "inferior_articular_process_right",
    49: "vertebral_body_border",  # cortex
    50: "vertebral_body",  # corpus
}

#: VerSe subregion id -> part of a level in :data:`planner.labels.registry.LEVEL_PARTS`.
#: The arch (41) includes the pedicles, which VerSe does not separate; it maps to
#: ``"posterior"``.
VERSE_SUBREGION_PARTS: dict[int, str] = {
    41: "posterior", 42: "posterior", 43: "posterior", 44: "posterior", 45: "posterior",
    46: "posterior", 47: "posterior", 48: "posterior", 49: "body", 50: "body",
}

VERTEBRA_PREFIX = "vertebra:"
ANY_LEVEL = "any"

#: TotalSegmentator class names that map straight to a registry name.
_TS_DIRECT: dict[str, str] = {
    "spinal_cord": "spinal_cord",
    "aorta": "aorta",
    "inferior_vena_cava": "vena_cava",
    "superior_vena_cava": "vena_cava",
    "iliac_artery_left": "iliac_artery_left",
    "iliac_artery_right": "iliac_artery_right",
    "lung_left": "lung_left",
    "lung_right": "lung_right",
    "lung_upper_lobe_left": "lung_left",
    "lung_lower_lobe_left": "lung_left",
    "lung_upper_lobe_right": "lung_right",
    "lung_middle_lobe_right": "lung_right",
    "lung_lower_lobe_right": "lung_right",
    "autochthon_left": "muscle",
    "autochthon_right": "muscle",
    "iliopsoas_left": "muscle",
    "iliopsoas_right": "muscle",
    "gluteus_maximus_left": "muscle",
    "gluteus_maximus_right": "muscle",
    "gluteus_medius_left": "muscle",
    "gluteus_medius_right": "muscle",
    "gluteus_minimus_left": "muscle",
    "gluteus_minimus_right": "muscle",
    "sacrum": "other_bone",
    "humerus_left": "other_bone",
    "humerus_right": "other_bone",
    "scapula_left": "other_bone",
    "scapula_right": "other_bone",
    "clavicula_left": "other_bone",
    "clavicula_right": "other_bone",
    "femur_left": "other_bone",
    "femur_right": "other_bone",
    "hip_left": "other_bone",
    "hip_right": "other_bone",
    "skull": "other_bone",
    "sternum": "other_bone",
    "costal_cartilages": "other_bone",
    "vertebrae": VERTEBRA_PREFIX + ANY_LEVEL,
    "vertebrae_body": "vertebral_body:" + ANY_LEVEL,
    "intervertebral_discs": "disc:" + ANY_LEVEL,
}


def _label_error(msg: str) -> Exception:
    from planner.errors import LabelError

    return LabelError(msg)


def totalseg_classes(task: str) -> dict[int, str]:
    """TotalSegmentator ``id -> class name`` table of ``task`` (a copy)."""
    try:
        return dict(TOTALSEG_CLASSES[task])
    except KeyError:
        raise _label_error(
            f"unknown TotalSegmentator task {task!r}; known: {', '.join(TOTALSEG_CLASSES)}"
        ) from None


def totalseg_id(task: str, name: str) -> int:
    """Id of the TotalSegmentator class ``name`` in ``task`` (e.g. ``"vertebrae_T12"``)."""
    for i, n in totalseg_classes(task).items():
        if n == name:
            return i
    raise _label_error(f"TotalSegmentator task {task!r} has no class {name!r}")


def vertebra_name(level: str) -> str:
    """``"vertebra:T12"`` for ``"T12"``."""
    return VERTEBRA_PREFIX + level


def parse_mapped_name(name: str) -> dict[str, str]:
    """Split a mapped name: ``{"kind": "vertebra", "level": "T12"}`` or
    ``{"kind": "registry", "name": ...}``."""
    if ":" in name:
        kind, level = name.split(":", 1)
        return {"kind": kind, "level": level}
    return {"kind": "registry", "name": name}


def _ts_name_to_registry(name: str) -> str | None:
    if name in _TS_DIRECT:
        return _TS_DIRECT[name]
    if name.startswith("vertebrae_"):
        return vertebra_name(name.split("_", 1)[1])
    if name.startswith("rib_"):
        _, side, num = name.split("_")
        level = f"T{int(num)}"
        part = f"{level}_rib_{side}"
        return part if part in LABEL_IDS else None
    return None


def totalseg_to_registry(task: str, *, keep_unmapped: bool = False) -> dict[int, str]:
    """Map a TotalSegmentator task's ids to our names.

    Parameters
    ----------
    task : {"total", "total_mr", "vertebrae_body"}
    keep_unmapped : bool
        Include classes without a counterpart as ``"totalseg:<class name>"``; by default
        they are left out.

    Returns
    -------
    dict of int to str
        E.g. for ``"total"``: ``{32: "vertebra:T12", 79: "spinal_cord", 63: "vena_cava",
        10: "lung_left", 92: "T1_rib_left", ...}``.
    """
    out: dict[int, str] = {}
    for i, name in totalseg_classes(task).items():
        mapped = _ts_name_to_registry(name)
        if mapped is not None:
            out[i] = mapped
        elif keep_unmapped:
            out[i] = f"totalseg:{name}"
    return out


def verse_to_registry() -> dict[int, str]:
    """Map VerSe vertebra ids to ``"vertebra:<LEVEL>"`` (sacrum/coccyx -> ``"other_bone"``).

    Returns
    -------
    dict of int to str
        ``{1: "vertebra:C1", ..., 19: "vertebra:T12", 20: "vertebra:L1", ...,
        26: "other_bone", 27: "other_bone", 28: "vertebra:T13"}``.
    """
    out = {}
    for i, level in VERSE_VERTEBRAE.items():
        out[i] = "other_bone" if level in ("sacrum", "coccyx") else vertebra_name(level)
    return out


def verse_subregion_to_part() -> dict[int, str]:
    """VerSe subregion id -> level part name (``"body"`` or ``"posterior"``)."""
    return dict(VERSE_SUBREGION_PARTS)


def in_registry_levels(mapped: str) -> bool:
    """True when a ``"vertebra:<LEVEL>"`` name is a level of our registry (T1-S1)."""
    p = parse_mapped_name(mapped)
    return p["kind"] == "vertebra" and p["level"] in LEVELS

