"""A plan folder as the viewer sees it: levels, candidates, the recommendation, the case.

:func:`load_plan` reads ``PLAN_DIR/plan.json`` (written by ``planner plan``; schema in
``planner/solve/plan.schema.json``) and finds the case folder the plan was made on: given
explicitly, or ``PLAN_DIR/..`` when the plan folder sits inside its case (``<case>/plan``, as
``planner demo`` writes it), or the folder named by the plan's ``scene.source.folder`` beside
the plan folder.  It returns a :class:`PlanData` with one :class:`LevelData` per planned
level and one :class:`Candidate` per feasible candidate (plus, per blocked route, the
closest blocked candidate as a :class:`BlockedPath`).

Everything here is plain data (numpy, json): no rendering.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from planner.viewer.common import ViewerError, fmt_mm

log = logging.getLogger(__name__)

#: Instrument kinds of the plan's verdicts, in the order the text panel lists them.
INSTRUMENT_KINDS = ("kyphoplasty", "vertebroplasty_straight", "vertebroplasty_curved")

#: Obstacle classes in the order the text panel lists their clearances.
CLEARANCE_CLASSES = (
    "hardware", "canal", "nerve_root", "vessel", "lung_pleura", "fluid", "disc", "other_bone", "rib",
)


def _pt(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    a = np.asarray(x, float).reshape(-1)
    return a if a.shape == (3,) and np.all(np.isfinite(a)) else None


@dataclass
class Candidate:
    """One feasible candidate of a level, with the points the viewer draws (LPS mm).

    Attributes
    ----------
    id, level, side, route : str
    score : float
    rank : int
    entry, target : (3,) float
        Skin entry and target.
    bone_entry, cannula_tip : (3,) float or None
    curved_path : (n, 3) float or None
        Centre line of the curved needle from the cannula tip to its tip.
    recommended : bool
        One of the level's recommended candidates.
    metrics, verdict : dict
        As in ``plan.json``.
    """

    id: str
    level: str
    side: str
    route: str
    score: float
    rank: int
    entry: np.ndarray
    target: np.ndarray
    bone_entry: np.ndarray | None
    cannula_tip: np.ndarray | None
    curved_path: np.ndarray | None
    recommended: bool
    metrics: dict[str, Any]
    verdict: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def direction(self) -> np.ndarray:
        """Unit vector from the skin entry toward the target (LPS)."""
        d = self.target - self.entry
        return d / max(float(np.linalg.norm(d)), 1e-12)

    @property
    def tip(self) -> np.ndarray:
        """Where the instrument ends: the curved needle's tip when there is one, else the target."""
        if self.curved_path is not None and len(self.curved_path):
            return self.curved_path[-1]
        return self.target

    def straight_polyline(self) -> np.ndarray:
        """Skin entry -> (cannula tip ->) target, (n, 3)."""
        pts = [self.entry]
        if self.cannula_tip is not None and np.linalg.norm(self.cannula_tip - self.target) > 1e-6:
            pts.append(self.cannula_tip)
        pts.append(self.target)
        return np.vstack(pts)

    def radius_mm(self, instrument: str) -> float | None:
        """Outer radius of ``instrument`` on this path from its verdict (None when absent)."""
        pi = (self.verdict.get("per_instrument") or {}).get(instrument) or {}
        r = pi.get("radius_mm")
        return float(r) if r is not None else None

    def label(self) -> str:
        """Short one-line description: ``L4 left transpedicular #1 (0.65)``."""
        return f"{self.level} {self.side} {self.route} #{self.rank} ({self.score:.2f})"


@dataclass
class BlockedPath:
    """The closest candidate of a blocked route (drawn dimmed), with the route's reason."""

    level: str
    side: str
    route: str
    entry: np.ndarray
    target: np.ndarray
    reason: str
    candidate_id: str | None


@dataclass
class LevelData:
    """One planned level."""

    name: str
    candidates: list[Candidate]
    blocked: list[BlockedPath]
    recommendation: dict[str, Any]
    routes: list[dict[str, Any]]
    centre: np.ndarray | None
    axes: dict[str, np.ndarray]
    half_extent: np.ndarray | None

    @property
    def recommended(self) -> list[Candidate]:
        """The recommended candidates (in the recommendation's order)."""
        by_id = {c.id: c for c in self.candidates}
        return [by_id[i] for i in self.recommendation.get("candidates", []) if i in by_id]

    @property
    def procedure(self) -> str | None:
        return self.recommendation.get("procedure")

    def candidate(self, cid: str) -> Candidate:
        for c in self.candidates:
            if c.id == cid:
                return c
        raise ViewerError(
            f"candidate {cid} is not in level {self.name} (ids: {', '.join(c.id for c in self.candidates) or 'none'})",
            code="PLN-VIEW-003",
        )


@dataclass
class PlanData:
    """A plan folder and the case it was made on."""

    plan_dir: Path
    case_dir: Path
    plan: dict[str, Any]
    levels: list[LevelData]

    @property
    def instruments(self) -> dict[str, Any]:
        return self.plan.get("instruments") or {}

    def level(self, name: str) -> LevelData:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise ViewerError(
            f"level {name} is not in the plan (planned: {', '.join(lv.name for lv in self.levels) or 'none'})",
            code="PLN-VIEW-003",
            details={"level": name},
        )

    def all_candidates(self) -> list[Candidate]:
        return [c for lv in self.levels for c in lv.candidates]

    def score_range(self) -> tuple[float, float]:
        """Lowest and highest candidate score over the plan (the colormap range)."""
        s = [c.score for c in self.all_candidates()]
        if not s:
            return 0.0, 1.0
        lo, hi = float(min(s)), float(max(s))
        return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)

    def curved_radius_mm(self) -> float:
        """Radius of the curved needle's stylet (its extension beyond the cannula), mm."""
        cv = self.instruments.get("vertebroplasty_curved") or {}
        od = cv.get("stylet_od_mm")
        return float(od) / 2 if od else 1.2

    def channel_radius_mm(self) -> float:
        """Radius of the kyphoplasty channel instruments (bone-tamp shaft), mm."""
        ky = self.instruments.get("kyphoplasty") or {}
        od = (ky.get("tamp") or {}).get("shaft_od_mm")
        return float(od) / 2 if od else 1.4

    def title(self) -> str:
        src = (self.plan.get("scene") or {}).get("source") or {}
        name = src.get("case") or src.get("image") or self.case_dir.name
        return f"{name}: {' '.join(lv.name for lv in self.levels)}"


def _level(lv: dict[str, Any]) -> LevelData:
    name = lv["level"]
    rec = lv.get("recommendation") or {}
    rec_ids = set(rec.get("candidates") or [])
    cands = []
    for c in lv.get("candidates") or []:
        entry, target = _pt(c.get("skin_entry_lps_mm")), _pt(c.get("target_lps_mm"))
        if entry is None or target is None:
            log.warning("candidate %s has no skin entry or target; not shown", c.get("id"))
            continue
        curved = c.get("curved") or None
        path = None
        if curved and curved.get("path_lps_mm"):
            path = np.asarray(curved["path_lps_mm"], float).reshape(-1, 3)
        cands.append(
            Candidate(
                id=str(c["id"]),
                level=name,
                side=str(c.get("side", "")),
                route=str(c.get("route", "")),
                score=float(c.get("score") or 0.0),
                rank=int(c.get("rank") or 0),
                entry=entry,
                target=target,
                bone_entry=_pt(c.get("bone_entry_lps_mm")),
                cannula_tip=_pt(c.get("cannula_tip_lps_mm")),
                curved_path=path,
                recommended=c["id"] in rec_ids,
                metrics=dict(c.get("metrics") or {}),
                verdict=dict(c.get("verdict") or {}),
                raw=c,
            )
        )
    blocked = []
    for r in lv.get("routes") or []:
        if r.get("status") == "feasible":
            continue
        m = r.get("closest_candidate_metrics") or {}
        e, t = _pt(m.get("skin_entry_lps_mm")), _pt(m.get("target_lps_mm"))
        if e is None or t is None:
            continue
        blocked.append(
            BlockedPath(name, str(r.get("side", "")), str(r.get("route", "")), e, t,
                        str(r.get("reason", r.get("status", ""))), r.get("closest_candidate"))
        )
    geo = lv.get("geometry") or {}
    axes = {k: np.asarray(v, float) for k, v in (geo.get("axes_lps") or {}).items()}
    he = geo.get("body_half_extent_mm")
    return LevelData(
        name=name,
        candidates=cands,
        blocked=blocked,
        recommendation=rec,
        routes=list(lv.get("routes") or []),
        centre=_pt(geo.get("centre_lps_mm")),
        axes=axes,
        half_extent=np.asarray(he, float) if he is not None else None,
    )


def is_case_folder(p: Path) -> bool:
    """A phantom case folder (``case.json``) or a ``planner segment`` folder."""
    return p.is_dir() and ((p / "case.json").is_file() or (p / "segmentation.json").is_file())


def resolve_case_dir(plan_dir: Path, plan: dict[str, Any], case_dir: str | Path | None = None) -> Path:
    """The case folder a plan was made on.

    Parameters
    ----------
    plan_dir : Path
        Folder holding ``plan.json``.
    plan : dict
        The plan.
    case_dir : path-like, optional
        Given explicitly (``planner view --case``); must be a case folder.

    Returns
    -------
    Path

    Raises
    ------
    ViewerError
        ``PLN-VIEW-002`` when no case folder is found.
    """
    if case_dir is not None:
        p = Path(case_dir)
        if not is_case_folder(p):
            raise ViewerError(
                f"{p} is not a case folder (no case.json or segmentation.json)",
                code="PLN-VIEW-002",
                details={"case": str(p)},
            )
        return p
    folder = ((plan.get("scene") or {}).get("source") or {}).get("folder")
    tried = [plan_dir.parent]
    if folder:
        tried += [plan_dir.parent / folder, plan_dir / folder]
    for p in tried:
        if is_case_folder(p):
            return p
    raise ViewerError(
        f"cannot find the case folder of {plan_dir / 'plan.json'} (tried {', '.join(str(t) for t in tried)}); "
        "pass it with --case CASE_DIR",
        code="PLN-VIEW-002",
        details={"tried": [str(t) for t in tried]},
    )


def load_plan(plan_dir: str | Path, case_dir: str | Path | None = None) -> PlanData:
    """Read a plan folder (``plan.json``) and locate its case folder.

    Parameters
    ----------
    plan_dir : path-like
        Folder written by ``planner plan`` (or the ``plan.json`` file itself).
    case_dir : path-like, optional
        The case folder; by default found as in :func:`resolve_case_dir`.

    Returns
    -------
    PlanData

    Raises
    ------
    ViewerError
        ``PLN-VIEW-001`` when ``plan.json`` is missing or not a plan, ``PLN-VIEW-002`` when
        the case folder cannot be found.
    """
    p = Path(plan_dir)
    if p.is_file():
        p = p.parent
    f = p / "plan.json"
    if not f.is_file():
        raise ViewerError(
            f"{f} not found; give the folder 'planner plan -o' wrote", code="PLN-VIEW-001", details={"path": str(f)}
        )
    try:
        plan = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ViewerError(f"{f} is not valid JSON ({exc})", code="PLN-VIEW-001") from exc
    if not isinstance(plan, dict) or plan.get("schema") != "planner.plan" or not isinstance(plan.get("levels"), list):
        raise ViewerError(f"{f} is not a planner plan (schema 'planner.plan' with levels)", code="PLN-VIEW-001")
    case = resolve_case_dir(p, plan, case_dir)
    levels = [_level(lv) for lv in plan["levels"]]
    log.info("plan %s: %d levels, case %s", f, len(levels), case)
    return PlanData(p, case, plan, levels)


def candidate_lines(c: Candidate, level: LevelData | None = None) -> list[str]:
    """Text-panel lines describing a candidate: route, side, instruments, depth, clearances
    per obstacle class with the closest structure, and the binding reason.

    Parameters
    ----------
    c : Candidate
    level : LevelData, optional
        Adds the level's recommendation.

    Returns
    -------
    list of str
    """
    m, v = c.metrics, c.verdict
    out = [f"{c.level} {c.side} {c.route}   rank {c.rank}   score {c.score:.3f}" + ("   RECOMMENDED" if c.recommended else "")]
    out.append(f"id {c.id}")
    if level is not None and level.procedure:
        rec = level.recommendation
        out.append(f"level plan: {rec.get('procedure')} {rec.get('access')} ({rec.get('side')} {rec.get('route')})")
    inst = v.get("instruments") or []
    out.append("instruments: " + (", ".join(inst) if inst else "none"))
    per = v.get("per_instrument") or {}
    for k in INSTRUMENT_KINDS:
        if k not in per:
            continue
        pi = per[k]
        if pi.get("feasible"):
            extra = f", bone tamp {fmt_mm(pi.get('bone_tamp_length_mm'), 0)} mm" if pi.get("bone_tamp_length_mm") else ""
            out.append(f"  {k}: ok (r {fmt_mm(pi.get('radius_mm'), 2)} mm, needle {fmt_mm(pi.get('needle_length_mm'), 0)} mm{extra})")
        else:
            viol = pi.get("violations") or []
            w = viol[0] if viol else {}
            out.append(
                f"  {k}: no - {w.get('constraint', '?')} {w.get('structure_display', '')}"
                + (f" ({fmt_mm(w.get('clearance_mm'))} < {fmt_mm(w.get('required_mm'))} mm)" if w.get("required_mm") is not None else "")
            )
    out.append(
        f"depth: skin-target {fmt_mm(m.get('skin_to_target_mm'))} mm, skin-body {fmt_mm(m.get('skin_to_body_mm'))} mm, "
        f"in body {fmt_mm(m.get('in_body_mm'))} mm"
    )
    out.append(
        f"angles: tilt {fmt_mm(m.get('tilt_from_vertical_deg'))}, cranio-caudal {fmt_mm(m.get('craniocaudal_deg'))}, "
        f"bone entry {fmt_mm(m.get('bone_entry_angle_deg'))} deg"
    )
    ac = m.get("axis_clearance_mm") or {}
    cs = m.get("closest_structure") or {}
    parts = []
    for k in CLEARANCE_CLASSES:
        val = ac.get(k)
        if val is None:
            continue
        parts.append(f"{k} {fmt_mm(val)}" + (f" ({cs[k]})" if k in cs else ""))
    out.append("clearance (axis, mm):")
    for i in range(0, len(parts), 3):
        out.append("  " + ", ".join(parts[i : i + 3]))
    b = v.get("binding")
    if b:
        out.append(
            f"binding: {b.get('constraint')} {b.get('structure_display', '')} "
            f"({fmt_mm(b.get('clearance_mm'))} mm, needs {fmt_mm(b.get('required_mm'))} mm)"
        )
    else:
        # no violated constraint for the most permissive instrument: name the tightest one
        excess = []
        for k in CLEARANCE_CLASSES:
            val = ac.get(k)
            if val is not None:
                excess.append((float(val), k))
        if excess:
            val, k = min(excess)
            out.append(f"binding: none violated; tightest {k} {val:.1f} mm" + (f" ({cs[k]})" if k in cs else ""))
    cv = c.raw.get("curved") or None
    if cv:
        out.append(
            f"curved: arc r {fmt_mm(cv.get('arc_radius_mm'), 0)} mm, extension {fmt_mm(cv.get('extension_mm'), 0)} mm, "
            f"hardware {fmt_mm(cv.get('hardware_clearance_mm'))} mm"
        )
    return out
