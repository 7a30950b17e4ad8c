"""The project's own structure names and their label ids.

Pure data plus tiny lookup functions; imports nothing beyond the standard library so that
``import planner.labels.registry`` is instant and the CLI can take its choices from here.

Id scheme (stable; never renumber)
----------------------------------
* ``1-99``: structures that are not per level (canal, sac, cord, vessels, lungs, soft tissue).
* ``100 + 10*n + k`` for spinal level ``n`` (0 = T1 ... 11 = T12, 12 = L1 ... 16 = L5,
  17 = S1) and part ``k`` from :data:`LEVEL_PARTS`.
* ``400 + 2*n + s``: pedicle screw at level ``n``, side ``s`` (0 = left, 1 = right).
* ``450`` / ``451``: left / right rod;  ``460 + n``: cross-link at level ``n``;
  ``499``: other metal.

Names are lower-case, ``_``-separated, level names upper-case (``L4_pedicle_left``).
"""

from __future__ import annotations

LEVELS: tuple[str, ...] = tuple(
    [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)] + ["S1"]
)
SIDES: tuple[str, ...] = ("left", "right")

#: Parts of one vertebral level, in id order (offset k).
LEVEL_PARTS: tuple[str, ...] = (
    "body",  # vertebral body (cortex + cancellous)
    "pedicle_left",
    "pedicle_right",
    "posterior",  # lamina, spinous, transverse and articular processes
    "disc",  # intervertebral disc below this level (between n and n+1)
    "rib_left",
    "rib_right",
    "nerve_root_left",  # exiting root in the foramen below the pedicle
    "nerve_root_right",
    "lesion",  # lytic lesion inside the body
)

#: Structures that are not per level: name -> id.
GLOBAL_STRUCTURES: dict[str, int] = {
    "spinal_canal": 1,  # bony canal contents outside the sac (epidural space)
    "thecal_sac": 2,  # dural sac with CSF
    "spinal_cord": 3,
    "aorta": 4,
    "vena_cava": 5,
    "lung_left": 6,
    "lung_right": 7,
    "pleura": 8,
    "fluid_collection": 9,  # seroma / pseudomeningocele
    "muscle": 10,
    "fat": 11,
    "skin": 12,
    "soft_tissue": 13,  # generic body contents not otherwise labelled
    "iliac_artery_left": 14,
    "iliac_artery_right": 15,
    "other_bone": 16,
}

HARDWARE_BASE = 400
ROD_IDS = {"left": 450, "right": 451}
CROSSLINK_BASE = 460
OTHER_METAL = 499

#: Tissue classes used by the phantom and by CT/MR synthesis.
TISSUES: tuple[str, ...] = (
    "air",
    "fat",
    "soft_tissue",
    "muscle",
    "skin",
    "blood",
    "lung",
    "pleura",
    "cortical_bone",
    "cancellous_bone",
    "disc",
    "csf",
    "spinal_cord",
    "nerve",
    "epidural_fat",
    "fluid",
    "tumour",
    "titanium",
    "cobalt_chrome",
)


def level_index(level: str) -> int:
    """Index of a level name in :data:`LEVELS` (``"T1"`` -> 0, ``"S1"`` -> 17)."""
    try:
        return LEVELS.index(level)
    except ValueError:
        raise _label_error(f"unknown spinal level {level!r}; valid levels: {', '.join(LEVELS)}") from None


def level_label(level: str, part: str) -> str:
    """Name for a part of a level, e.g. ``level_label("L4", "body") == "L4_body"``."""
    if part not in LEVEL_PARTS:
        raise _label_error(f"unknown level part {part!r}; valid parts: {', '.join(LEVEL_PARTS)}")
    level_index(level)
    return f"{level}_{part}"


def screw_label(level: str, side: str) -> str:
    if side not in SIDES:
        raise _label_error(f"side must be 'left' or 'right', got {side!r}")
    level_index(level)
    return f"screw_{level}_{side}"


def rod_label(side: str) -> str:
    if side not in SIDES:
        raise _label_error(f"side must be 'left' or 'right', got {side!r}")
    return f"rod_{side}"


def crosslink_label(level: str) -> str:
    level_index(level)
    return f"crosslink_{level}"


def _build_tables() -> tuple[dict[str, int], dict[int, str]]:
    by_name: dict[str, int] = dict(GLOBAL_STRUCTURES)
    for n, lev in enumerate(LEVELS):
        for k, part in enumerate(LEVEL_PARTS):
            by_name[f"{lev}_{part}"] = 100 + 10 * n + k
        for s, side in enumerate(SIDES):
            by_name[f"screw_{lev}_{side}"] = HARDWARE_BASE + 2 * n + s
        by_name[f"crosslink_{lev}"] = CROSSLINK_BASE + n
    for side, i in ROD_IDS.items():
        by_name[f"rod_{side}"] = i
    by_name["other_metal"] = OTHER_METAL
    by_id = {v: k for k, v in by_name.items()}
    assert len(by_id) == len(by_name), "label ids must be unique"
    return by_name, by_id


LABEL_IDS, LABEL_NAMES = _build_tables()


def label_id(name: str) -> int:
    """Numeric id of a structure name."""
    try:
        return LABEL_IDS[name]
    except KeyError:
        raise _label_error(
            f"unknown structure name {name!r}; see planner.labels.registry.LABEL_IDS "
            "or 'planner info --json' for the list"
        ) from None


def label_name(label: int) -> str:
    """Structure name of a numeric id."""
    try:
        return LABEL_NAMES[int(label)]
    except KeyError:
        raise _label_error(f"unknown label id {label}") from None


def parse_label(name: str) -> dict:
    """Split a structure name into its kind, level and side.

    Returns a dict with ``kind`` (``"level_part"``, ``"screw"``, ``"rod"``, ``"crosslink"``,
    ``"global"``, ``"other_metal"``) and where they apply ``level``, ``part``, ``side``.
    """
    label_id(name)
    if name in GLOBAL_STRUCTURES:
        return {"kind": "global", "name": name}
    if name == "other_metal":
        return {"kind": "other_metal"}
    parts = name.split("_")
    if parts[0] == "screw":
        return {"kind": "screw", "level": parts[1], "side": parts[2]}
    if parts[0] == "rod":
        return {"kind": "rod", "side": parts[1]}
    if parts[0] == "crosslink":
        return {"kind": "crosslink", "level": parts[1]}
    part = "_".join(parts[1:])
    out = {"kind": "level_part", "level": parts[0], "part": part}
    if part.endswith("_left") or part.endswith("_right"):
        out["side"] = part.rsplit("_", 1)[1]
    return out


def is_hardware(label: int) -> bool:
    """True for screw, rod, cross-link and other-metal ids."""
    return HARDWARE_BASE <= int(label) <= OTHER_METAL


def is_bone(label: int) -> bool:
    """True for vertebral bone parts (body, pedicles, posterior elements), ribs, other bone."""
    label = int(label)
    if label == GLOBAL_STRUCTURES["other_bone"]:
        return True
    if 100 <= label < 100 + 10 * len(LEVELS):
        return LEVEL_PARTS[(label - 100) % 10] in (
            "body",
            "pedicle_left",
            "pedicle_right",
            "posterior",
            "rib_left",
            "rib_right",
        )
    return False


def _label_error(msg: str) -> Exception:
    # Imported lazily to keep this module free of package imports at load time.
    from planner.errors import LabelError

    return LabelError(msg)
