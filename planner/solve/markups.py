"""Needle trajectories from and to 3D Slicer markups files (``.mrk.json``).

Format: Slicer's Markups JSON (schema ``markups-schema-v1.0.3.json``; any ``v1.x.y`` is
read): ``{"@schema": ..., "markups": [{"type": "Line", "name": ..., "coordinateSystem":
"LPS" | "RAS", "coordinateUnits": "mm", "controlPoints": [{"label": ..., "position":
[x, y, z], "positionStatus": "defined"}, ...]}, ...]}``.

Reading (:func:`read_markups`, :func:`trajectories_from_markups`)
    * A trajectory is a ``Line`` markup, or a ``Fiducial`` (point list) markup with exactly
      two control points.  **First control point = skin entry, second = target** (the
      order in which a line is placed in Slicer: click the skin entry first).  ``swap=True``
      reads them the other way round.  When control point labels name the points
      (``entry`` / ``target``) and contradict the order, the file is refused.
    * Coordinates are converted to LPS at this boundary: RAS ``(x, y, z)`` becomes LPS
      ``(-x, -y, z)``.
    * Refused with a typed error (:class:`planner.errors.SolverError`), never guessed:
      a markup without ``coordinateSystem`` (Slicer reads a missing one as LPS, but a
      hand-written file may hold RAS values copied from Slicer's display; pass
      ``missing_coordinate_system`` to decide), units other than mm (a missing
      ``coordinateUnits`` is mm, Slicer's only length unit for markups and the schema
      default), other markup types, not exactly two control points, a control point
      whose position is not defined (``positionStatus`` ``undefined`` / ``preview``),
      positions that are not three finite numbers, entry equal to target, a ``@schema``
      of another major version.  Codes: ``PLN-MRK-001`` (file cannot be used as
      trajectories), ``PLN-SOL-004`` (a trajectory that is not finite or has zero
      length), ``PLN-IN-001`` (no such file).

Writing (:func:`candidates_to_markups`, :func:`plan_to_markups`, :func:`write_markups`)
    One ``Line`` markup per candidate, LPS mm, named by the candidate id, control points
    ``entry`` (skin entry) then ``target``, so the file reads back with the same
    convention.  Recommended candidates come first, in green; other feasible candidates in
    yellow; infeasible ones (and, optionally, the closest blocked candidate of every
    blocked route) in red.  Each markup carries a one-line ``description`` (level, side,
    route, recommendation, instruments, depth, score or the reason it fails); Slicer keeps
    unknown keys out of its node but loads the file, and the control point descriptions
    (shown in Slicer's control point table) repeat it.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from planner.errors import InputError, SolverError

log = logging.getLogger(__name__)

#: ``@schema`` written to files (the value Slicer itself writes).
MARKUPS_SCHEMA_URL = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
#: ``@schema`` values accepted on reading (Slicer's own rule: any v1.x.y).
_ACCEPTED_SCHEMA = re.compile(r".*markups-schema-v1\.[0-9]+\.[0-9]+\.json#*$", re.IGNORECASE)

MARKUPS_CODE = "PLN-MRK-001"
TRAJECTORY_CODE = "PLN-SOL-004"

_ENTRY_LABELS = {"entry", "skin entry", "skin_entry", "skin-entry"}
_TARGET_LABELS = {"target"}

#: Display colours (RGB 0-1).
COLOUR_RECOMMENDED = (0.2, 0.85, 0.25)
COLOUR_FEASIBLE = (1.0, 0.8, 0.1)
COLOUR_BLOCKED = (0.95, 0.2, 0.2)


@dataclass(frozen=True)
class MarkupTrajectory:
    """A needle trajectory read from a markups file, in LPS mm.

    Attributes
    ----------
    name : str
        The markup's name (``markup <index>`` when it has none).
    index : int
        Position of the markup in the file's ``markups`` array.
    entry_lps : numpy.ndarray
        Skin entry, shape (3,), LPS mm.
    target_lps : numpy.ndarray
        Target, shape (3,), LPS mm.
    coordinate_system : str
        The file's coordinate system for this markup (``"LPS"`` or ``"RAS"``); the points
        above are LPS whatever it was.
    markup_type : str
        ``"Line"`` or ``"Fiducial"``.
    """

    name: str
    index: int
    entry_lps: np.ndarray
    target_lps: np.ndarray
    coordinate_system: str
    markup_type: str

    @property
    def length_mm(self) -> float:
        """Entry-to-target distance in mm."""
        return float(np.linalg.norm(self.target_lps - self.entry_lps))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (points in LPS mm)."""
        return {
            "name": self.name,
            "index": self.index,
            "markup_type": self.markup_type,
            "file_coordinate_system": self.coordinate_system,
            "entry_lps_mm": [float(x) for x in self.entry_lps],
            "target_lps_mm": [float(x) for x in self.target_lps],
        }


# ---------------------------------------------------------------------------- reading
def _bad(message: str, **details: Any) -> SolverError:
    return SolverError(message, code=MARKUPS_CODE, details=details)


def _units_ok(units: Any) -> bool:
    if isinstance(units, str):
        return units == "mm"
    if isinstance(units, list) and len(units) == 3 and all(isinstance(u, str) for u in units):
        return units[0] == "mm" and units[1] == "UCUM"
    return False


def _position(cp: Any, where: str) -> np.ndarray:
    if not isinstance(cp, dict):
        raise _bad(f"{where} is not a JSON object; a control point is {{\"position\": [x, y, z], ...}}", where=where)
    status = cp.get("positionStatus", "defined")
    if status != "defined":
        raise _bad(
            f"{where} has positionStatus {status!r}: the point was never placed; place it in Slicer (or delete the "
            "markup) and save again",
            where=where,
        )
    pos = cp.get("position")
    if not (isinstance(pos, list) and len(pos) == 3 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pos)):
        raise _bad(f"{where}.position must be three numbers [x, y, z] in mm, got {pos!r}", where=where)
    if not all(math.isfinite(float(v)) for v in pos):
        raise SolverError(f"{where}.position {pos!r} is not finite; give finite coordinates in mm", code=TRAJECTORY_CODE, details={"where": where})
    return np.array([float(v) for v in pos])


def _label(cp: dict[str, Any]) -> str:
    lab = cp.get("label", "")
    return lab.strip().lower() if isinstance(lab, str) else ""


def trajectories_from_markups(
    doc: Any,
    *,
    swap: bool = False,
    missing_coordinate_system: str | None = None,
    source: str = "markups",
) -> list[MarkupTrajectory]:
    """Trajectories (entry, target in LPS mm) of a parsed markups document.

    Parameters
    ----------
    doc : dict
        The parsed ``.mrk.json`` content.
    swap : bool
        Read the first control point as the target and the second as the skin entry.
    missing_coordinate_system : {"LPS", "RAS"}, optional
        Coordinate system to assume for a markup that has no ``coordinateSystem``;
        by default such a markup is refused.
    source : str
        Name of the file for messages.

    Returns
    -------
    list of MarkupTrajectory
        In file order; at least one.

    Raises
    ------
    planner.errors.SolverError
        ``PLN-MRK-001`` for anything that is not unambiguously a set of trajectories,
        ``PLN-SOL-004`` for non-finite or zero-length trajectories.
    """
    if missing_coordinate_system not in (None, "LPS", "RAS"):
        raise _bad(f"missing_coordinate_system must be 'LPS', 'RAS' or None, got {missing_coordinate_system!r}")
    if not isinstance(doc, dict) or not isinstance(doc.get("markups"), list):
        raise _bad(f"{source} is not a Slicer markups file: it needs a top-level \"markups\" array (save the markup from Slicer as .mrk.json)", source=source)
    schema = doc.get("@schema")
    if schema is not None and not (isinstance(schema, str) and _ACCEPTED_SCHEMA.match(schema)):
        raise _bad(f"{source} has @schema {schema!r}; only Slicer markups schema v1.x.y is understood", source=source)
    if schema is None:
        log.info("%s has no @schema; read as Slicer markups v1", source)
    if not doc["markups"]:
        raise _bad(f"{source} holds no markups; draw a Line from the skin entry to the target in Slicer and save it", source=source)
    out: list[MarkupTrajectory] = []
    for i, m in enumerate(doc["markups"]):
        where = f"{source}: markups[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{where} is not a JSON object", where=where)
        name = m.get("name") if isinstance(m.get("name"), str) and m.get("name") else f"markup {i}"
        where = f"{where} ({name!r})"
        mtype = m.get("type")
        if mtype not in ("Line", "Fiducial"):
            raise _bad(
                f"{where} is of type {mtype!r}; a trajectory is a Line markup (or a point list of two points): "
                "remove other markups from the file",
                where=where,
            )
        cs = m.get("coordinateSystem")
        if cs is None:
            if missing_coordinate_system is None:
                raise _bad(
                    f"{where} has no coordinateSystem: Slicer would read it as LPS, but a hand-written file may hold RAS "
                    "values; add \"coordinateSystem\": \"LPS\" or \"RAS\" to the markup (or pass "
                    "missing_coordinate_system)",
                    where=where,
                )
            cs = missing_coordinate_system
        if cs not in ("LPS", "RAS"):
            raise _bad(f"{where} has coordinateSystem {cs!r}; use \"LPS\" or \"RAS\"", where=where)
        if "coordinateUnits" in m and not _units_ok(m["coordinateUnits"]):
            raise _bad(
                f"{where} has coordinateUnits {m['coordinateUnits']!r}; only mm is accepted: save the markup from a "
                "scene in mm",
                where=where,
            )
        cps = m.get("controlPoints")
        if not isinstance(cps, list) or len(cps) != 2:
            n = len(cps) if isinstance(cps, list) else 0
            raise _bad(
                f"{where} has {n} control point(s); a trajectory needs exactly 2 (skin entry, then target)",
                where=where, control_points=n,
            )
        p = [_position(cp, f"{where}.controlPoints[{k}]") for k, cp in enumerate(cps)]
        labels = [_label(cp) for cp in cps]
        first_is_target = labels[0] in _TARGET_LABELS or labels[1] in _ENTRY_LABELS
        first_is_entry = labels[0] in _ENTRY_LABELS or labels[1] in _TARGET_LABELS
        if (first_is_target and not swap) or (first_is_entry and swap):
            raise _bad(
                f"{where}: control point labels {labels} contradict the order read "
                f"({'target, entry' if swap else 'entry, target'}); "
                + ("drop swap" if swap else "read it with swap (--swap)") + " or fix the labels",
                where=where,
            )
        if cs == "RAS":
            p = [q * np.array([-1.0, -1.0, 1.0]) for q in p]
        entry, target = (p[1], p[0]) if swap else (p[0], p[1])
        if np.linalg.norm(target - entry) < 1e-3:
            raise SolverError(
                f"{where}: skin entry and target coincide; move one end of the line", code=TRAJECTORY_CODE, details={"where": where}
            )
        out.append(MarkupTrajectory(name=name, index=i, entry_lps=entry, target_lps=target, coordinate_system=cs, markup_type=mtype))
    return out


def read_markups(
    path: str | Path, *, swap: bool = False, missing_coordinate_system: str | None = None
) -> list[MarkupTrajectory]:
    """Read the trajectories of a Slicer markups file (``.mrk.json``).

    Parameters
    ----------
    path : str or Path
        The markups file.
    swap : bool
        First control point is the target (default: the skin entry).
    missing_coordinate_system : {"LPS", "RAS"}, optional
        Assume this for markups without ``coordinateSystem`` (default: refuse them).

    Returns
    -------
    list of MarkupTrajectory
        Entry and target in LPS mm, in file order.

    Raises
    ------
    planner.errors.InputError
        ``PLN-IN-001`` when the file does not exist.
    planner.errors.SolverError
        ``PLN-MRK-001`` / ``PLN-SOL-004``, see :func:`trajectories_from_markups`.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"markups file {p} does not exist; give the .mrk.json saved from Slicer", code="PLN-IN-001", details={"path": str(p)})
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"{p.name} is not valid JSON ({exc}); save the markup from Slicer as .mrk.json", source=p.name) from exc
    return trajectories_from_markups(doc, swap=swap, missing_coordinate_system=missing_coordinate_system, source=p.name)


def select_trajectory(trajectories: Sequence[MarkupTrajectory], name: str | None = None) -> MarkupTrajectory:
    """The one trajectory meant: the only one, or the one called ``name``.

    Raises
    ------
    planner.errors.SolverError
        ``PLN-MRK-001`` when several are present and no (or no unique) name matches.
    """
    names = [t.name for t in trajectories]
    if name is None:
        if len(trajectories) == 1:
            return trajectories[0]
        raise _bad(f"the markups file holds {len(trajectories)} trajectories {names}; choose one by name (--markup NAME)", names=names)
    hits = [t for t in trajectories if t.name == name]
    if len(hits) != 1:
        what = "no" if not hits else f"{len(hits)}"
        raise _bad(f"{what} trajectory named {name!r} in the markups file (names: {names}); give a unique name", names=names)
    return hits[0]


# ---------------------------------------------------------------------------- writing
def _fmt(x: Any, nd: int = 1) -> str:
    return "n/a" if x is None else f"{float(x):.{nd}f}"


def _candidate_description(c: dict[str, Any], rec: dict[str, Any] | None) -> str:
    parts = [f"{c.get('level', '?')} {c.get('side', '?')} {c.get('route', '?')}"]
    if rec is not None:
        parts.append(f"RECOMMENDED {rec.get('procedure')} {rec.get('access')}")
    v = c.get("verdict", {})
    m = c.get("metrics", {})
    if v.get("feasible"):
        parts.append("feasible: " + ", ".join(v.get("instruments", [])))
    else:
        b = v.get("binding") or {}
        parts.append("NOT feasible" + (f": {b.get('structure_display')} (clearance {_fmt(b.get('clearance_mm'))} mm, "
                                       f"required {_fmt(b.get('required_mm'))} mm)" if b else ""))
    parts.append(f"skin to target {_fmt(m.get('skin_to_target_mm'))} mm")
    if "score" in c:
        parts.append(f"score {float(c['score']):.3f}" + (f", rank {c['rank']}" if "rank" in c else ""))
    parts.append("entry = first point, target = second (LPS mm)")
    return "; ".join(parts)


def _line(name: str, entry: Sequence[float], target: Sequence[float], description: str, colour: tuple[float, float, float]) -> dict[str, Any]:
    def cp(k: int, label: str, pos: Sequence[float], what: str) -> dict[str, Any]:
        return {
            "id": str(k),
            "label": label,
            "description": f"{what}: {description}",
            "associatedNodeID": "",
            "position": [float(x) for x in pos],
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }

    for pos in (entry, target):
        if len(pos) != 3 or not all(math.isfinite(float(x)) for x in pos):
            raise SolverError(f"candidate {name!r} has a point {list(pos)!r} that is not three finite numbers", code=TRAJECTORY_CODE)
    return {
        "type": "Line",
        "name": name,
        "description": description,
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": 2,
        "controlPoints": [cp(1, "entry", entry, "skin entry"), cp(2, "target", target, "target")],
        "measurements": [],
        "display": {
            "visibility": True,
            "opacity": 1.0,
            "color": list(colour),
            "selectedColor": list(colour),
            "propertiesLabelVisibility": True,
            "pointLabelsVisibility": True,
        },
    }


def candidates_to_markups(
    candidates: Iterable[dict[str, Any]], *, recommendation: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A Slicer markups document with one Line per candidate.

    Parameters
    ----------
    candidates : iterable of dict
        Candidates of a plan (or of trajectory evaluation): ``id``, ``skin_entry_lps_mm``,
        ``target_lps_mm``, ``verdict``, ``metrics`` ...
    recommendation : dict, optional
        A level's recommendation; its candidates are marked, coloured and put first.

    Returns
    -------
    dict
        ``{"@schema": ..., "markups": [...]}``, ready for :func:`write_markups`.
    """
    cands = list(candidates)
    rec_ids = list((recommendation or {}).get("candidates", []))
    by_id = {c["id"]: c for c in cands}
    missing = [i for i in rec_ids if i not in by_id]
    if missing:
        raise SolverError(f"recommended candidate(s) {missing} are not among the candidates given", code="PLN-SOL-005")
    ordered = [by_id[i] for i in rec_ids] + [c for c in cands if c["id"] not in rec_ids]
    markups = []
    for c in ordered:
        rec = recommendation if c["id"] in rec_ids else None
        colour = COLOUR_RECOMMENDED if rec else (COLOUR_FEASIBLE if c.get("verdict", {}).get("feasible") else COLOUR_BLOCKED)
        markups.append(_line(c["id"], c["skin_entry_lps_mm"], c["target_lps_mm"], _candidate_description(c, rec), colour))
    return {"@schema": MARKUPS_SCHEMA_URL, "markups": markups}


def plan_to_markups(
    plan: dict[str, Any], *, levels: Sequence[str] | None = None, only_recommended: bool = False, include_blocked: bool = False
) -> dict[str, Any]:
    """A Slicer markups document of a plan's candidates, level by level.

    Parameters
    ----------
    plan : dict
        A plan (:func:`planner.solve.plan.plan` or ``plan.json``).
    levels : sequence of str, optional
        Levels to include (default all, in plan order).
    only_recommended : bool
        Only the recommended candidates of each level.
    include_blocked : bool
        Also the closest blocked candidate of every blocked route, in red, named by its id,
        described by the route's reason.

    Returns
    -------
    dict
        ``{"@schema": ..., "markups": [...]}``: per level the recommended candidates first,
        then the others by rank, then (optionally) the blocked routes.
    """
    known = [lv["level"] for lv in plan["levels"]]
    want = list(known if levels is None else levels)
    bad = [lv for lv in want if lv not in known]
    if bad:
        raise SolverError(f"level(s) {bad} are not in the plan (planned: {known})", code="PLN-SOL-001")
    markups: list[dict[str, Any]] = []
    for lv in plan["levels"]:
        if lv["level"] not in want:
            continue
        rec = lv["recommendation"]
        cands = lv["candidates"]
        if only_recommended:
            cands = [c for c in cands if c["id"] in rec["candidates"]]
        markups += candidates_to_markups(cands, recommendation=rec)["markups"]
        if include_blocked and not only_recommended:
            for r in lv["routes"]:
                pts = r.get("closest_candidate_metrics") or {}
                if r["status"] != "blocked" or "skin_entry_lps_mm" not in pts:
                    continue
                desc = f"{lv['level']} {r['side']} {r['route']}; BLOCKED: {r.get('reason', '')}; entry = first point, target = second (LPS mm)"
                markups.append(_line(r["closest_candidate"], pts["skin_entry_lps_mm"], pts["target_lps_mm"], desc, COLOUR_BLOCKED))
    return {"@schema": MARKUPS_SCHEMA_URL, "markups": markups}


def write_markups(doc: dict[str, Any], path: str | Path) -> Path:
    """Write a markups document (atomic; same document, same bytes).

    Parameters
    ----------
    doc : dict
        From :func:`candidates_to_markups` or :func:`plan_to_markups`.
    path : str or Path
        Target file; ``.mrk.json`` is what Slicer's file dialog expects.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(p)
    log.debug("wrote %d markups to %s", len(doc.get("markups", [])), p)
    return p
