"""Evaluate a given trajectory: the plan's metrics and verdicts for an entry and a target.

A user draws a path in a viewer, imports a 3D Slicer markups line, or drags an entry point
around; :class:`TrajectoryEvaluator` answers, for that straight path, the same questions the
planner answers for its own candidates (:func:`planner.solve.plan.evaluate_candidates`):
route, exact clearances per structure class of the cannula part and of the channel, the
curved needle's reach, the verdict per instrument with the binding constraint, and the
score.  The fields of the level are built once, in the constructor; each call then costs a
few milliseconds, so a viewer can re-score while the user drags.

Conventions: points are patient LPS millimetres.  ``entry_lps`` is where the needle
enters (a point on or outside the skin, or anywhere on the line outside the body); the
skin entry reported is where the line ``target -> entry`` leaves the body outline, traced
from the target, and ``metrics.user_entry_to_skin_mm`` says how far that is from the given
entry.  ``target_lps`` is the straight needle's tip (the kyphoplasty channel's end).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from planner.errors import SolverError
from planner.instruments import NEEDLE_LENGTHS_MM
from planner.solve import search
from planner.solve.config import SolverOptions
from planner.solve.scene import Scene

log = logging.getLogger(__name__)

__all__ = ["TrajectoryEvaluator", "evaluate_trajectory"]


def _point(x: Any, what: str) -> np.ndarray:
    p = np.asarray(x, float).reshape(-1)
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise SolverError(
            f"{what} must be three finite numbers (LPS mm), got {x!r}",
            code="PLN-SOL-004",
            details={"what": what},
        )
    return p


class TrajectoryEvaluator:
    """Re-scores straight trajectories of one level fast (fields built once).

    Parameters
    ----------
    scene : Scene
        The planning scene (labels, implant solids, meshes).
    level : str
        Target level, e.g. ``"L4"``.
    options : SolverOptions, optional
        Margins, instruments and weights (defaults when omitted).

    Examples
    --------
    >>> ev = TrajectoryEvaluator(scene, "L4")                       # doctest: +SKIP
    >>> c = ev.evaluate(entry_lps=[60, 95, -40], target_lps=[5, -5, -48])  # doctest: +SKIP
    >>> c["verdict"]["instruments"], c["metrics"]["axis_clearance_mm"]["hardware"]  # doctest: +SKIP
    """

    def __init__(self, scene: Scene, level: str, options: SolverOptions | None = None) -> None:
        from planner.solve.plan import _instruments, _radius

        self.scene = scene
        self.level = level
        self.options = options or SolverOptions()
        self.geo = scene.level(level)
        self.fields = scene.fields(level, self.options)
        self.instruments = _instruments(self.options)
        self.radii = {k: _radius(k, self.instruments) for k in self.instruments}
        self.max_length = float(
            max(
                max(NEEDLE_LENGTHS_MM),
                self.instruments["kyphoplasty"].usable_length_mm,
                self.instruments["vertebroplasty_straight"].usable_length_mm,
            )
        )
        self.tol = search.field_tolerance(self.options, self.fields)
        # build and pack the exact-distance structures of the obstacles near this level
        # here, not in the first call
        from planner.solve import exact
        from planner.solve.plan import level_obstacle_names, pack_meshes

        names = level_obstacle_names(scene, level, self.geo)
        if exact._kernels() is not None:
            pack_meshes(scene, names)
        for name in names:
            scene.mesh_distance(name)

    def side_of(self, entry_lps: np.ndarray) -> str:
        """``"left"`` when the entry lies left of the level's mid-sagittal plane."""
        return "left" if float(self.geo.to_local(entry_lps)[0]) >= 0.0 else "right"

    def evaluate(self, entry_lps, target_lps, side: str | None = None) -> dict[str, Any]:
        """Metrics and verdicts of the straight path from ``entry_lps`` to ``target_lps``.

        Returns a candidate dict of the same form as a plan's candidates (``id``, ``route``,
        ``side``, points, ``curved``, ``metrics``, ``verdict``, ``score``), plus
        ``metrics.user_entry_lps_mm`` and ``metrics.user_entry_to_skin_mm``.  Raises
        :class:`SolverError` ``PLN-SOL-004`` for a malformed trajectory and
        ``PLN-SOL-006`` when the target is not inside the level's body.
        """
        from planner.solve.plan import ROUTES, _r, evaluate_candidates

        entry = _point(entry_lps, "entry")
        target = _point(target_lps, "target")
        d = entry - target
        length = float(np.linalg.norm(d))
        if length < 1.0:
            raise SolverError(
                f"entry and target are {length:.2f} mm apart; give two distinct points (LPS mm)",
                code="PLN-SOL-004",
            )
        if side is None:
            side = self.side_of(entry)
        if side not in ("left", "right"):
            raise SolverError(f"side must be 'left' or 'right', got {side!r}", code="PLN-SOL-004")
        inside = float(self.fields.local.sample(self.fields.body, target[None])[0])
        if inside > 0.0:
            raise SolverError(
                f"the target lies {inside:.1f} mm outside the {self.level} body; put the target "
                "inside the vertebral body",
                code="PLN-SOL-006",
                details={"level": self.level, "outside_mm": round(inside, 2)},
            )
        D = (d / length)[None]
        sd = np.array([0 if side == "left" else 1], np.int8)
        c = search.evaluate(
            target[None], D, sd, self.geo, self.fields, self.options, max(self.radii.values()), self.max_length, tol=self.tol
        )
        route = ROUTES[int(c.route[0])]
        cand = evaluate_candidates(
            self.scene, self.level, self.geo, self.fields, c, side, route, self.instruments, self.options
        )[0]
        skin = np.asarray(cand["skin_entry_lps_mm"], float)
        cand["metrics"]["user_entry_lps_mm"] = [round(float(v), 3) for v in entry]
        cand["metrics"]["user_entry_to_skin_mm"] = _r(float(np.linalg.norm(skin - entry)), 2) if np.all(np.isfinite(skin)) else None
        cand["source"] = "user"
        return cand


def evaluate_trajectory(
    scene: Scene,
    level: str,
    entry_lps,
    target_lps,
    options: SolverOptions | None = None,
    side: str | None = None,
) -> dict[str, Any]:
    """One-shot :meth:`TrajectoryEvaluator.evaluate` (builds the level's fields each call)."""
    return TrajectoryEvaluator(scene, level, options).evaluate(entry_lps, target_lps, side=side)
