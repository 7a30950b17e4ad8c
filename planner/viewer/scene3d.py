"""The 3D scene of a plan (pyvista / VTK, imported lazily): build, step through, screenshot.

:class:`PlanViewer` draws, in patient LPS mm,

* vertebrae translucent and coloured by level (level names beside the bodies), ribs and
  discs fainter, screws / rods / cross-links opaque and metallic, the canal and thecal sac,
  nerve roots, vessels, lungs and fluid collections semi-transparent
  (:mod:`planner.viewer.structures`);
* every feasible candidate of every planned level as a line coloured by its score
  (colormap :data:`planner.viewer.common.SCORE_CMAP`, with a scalar bar), and each blocked
  route's closest candidate as a thin dim red line;
* the recommended candidate(s) of each level as the real instrument: a tube of the
  instrument's radius from the plan (``verdict.per_instrument[procedure].radius_mm``) from
  the skin entry to the cannula tip, the kyphoplasty channel to the target, and the curved
  needle's arc with the stylet's radius; skin entries as spheres (white for recommended);
* a text panel with the selected candidate's route, side, instruments, depth, clearances
  per obstacle class and binding constraint, and optionally a second viewport with a CT
  slice or needle-aligned reformat of the selected path (:mod:`planner.viewer.slices`).

The same object runs off-screen (scripts, tests, :mod:`planner.viewer.report`) and
interactively (``planner view PLAN_DIR``), where keys and check boxes drive it (see
:data:`KEYS`).  Its state changes through methods (:meth:`PlanViewer.next_candidate`,
:meth:`PlanViewer.next_level`, :meth:`PlanViewer.set_group_visible`,
:meth:`PlanViewer.next_slice`), which the key handlers call, so everything the keys do
can be scripted and tested off-screen.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from planner.viewer.common import (
    BACKGROUND,
    BLOCKED_RGB,
    CURVED_RGB,
    ENTRY_RGB,
    NEEDLE_RGB,
    SCORE_CMAP,
    TEXT_RGB,
    ViewerError,
    score_rgb,
    sphere_mesh,
    tube_mesh,
    unit,
)
from planner.viewer.plandata import Candidate, LevelData, PlanData, candidate_lines
from planner.viewer.structures import GROUPS, PATH_GROUPS, ViewMesh, collect_meshes

log = logging.getLogger(__name__)

#: Colour of the selected candidate when it is not a recommended one.
SELECTED_RGB = (0.30, 0.90, 1.0)

#: Camera direction (focal point -> camera, LPS) of the default view: posterolateral from
#: the patient's left and slightly cranial (a prone patient seen from the left of the table).
OBLIQUE_VIEW = (0.62, 1.0, 0.30)

#: Slice kinds the slice viewport steps through (key ``m``).
SLICE_KINDS = ("needle_axial", "needle_sagittal", "needle_perpendicular", "axial", "sagittal", "coronal")

#: Key bindings of the interactive viewer.
KEYS: dict[str, str] = {
    "n / p": "next / previous candidate of the level",
    "l / k": "next / previous level",
    "m": "next slice or reformat (slice panel)",
    "1-9, 0": "toggle " + ", ".join(list(GROUPS) + ["candidates"]),
    "r": "frame the selected level",
    "o": "overview of the whole scene",
    "h": "show / hide this help",
    "q": "quit",
}


def _pyvista():
    """pyvista with the headless OpenGL window chosen (see :mod:`planner.render`)."""
    from planner.render import _configure_offscreen

    _configure_offscreen()
    from planner.errors import optional_import

    return optional_import("pyvista", "the 3D viewer", "render")


def _polydata(pv, vertices: np.ndarray, faces: np.ndarray):
    f = np.asarray(faces, np.int64)
    cells = np.hstack([np.full((len(f), 1), 3, np.int64), f]).ravel()
    return pv.PolyData(np.asarray(vertices, float), cells)


def _lines(pv, polylines: list[np.ndarray], values: list[float] | None = None):
    pts, cells, vals = [], [], []
    n = 0
    for i, p in enumerate(polylines):
        p = np.asarray(p, float).reshape(-1, 3)
        pts.append(p)
        cells.append(np.r_[len(p), np.arange(n, n + len(p))])
        n += len(p)
        if values is not None:
            vals.append(values[i])
    poly = pv.PolyData(np.vstack(pts), lines=np.concatenate(cells).astype(np.int64))
    if values is not None:
        poly.cell_data["score"] = np.asarray(vals, float)
    return poly


def instrument_for(c: Candidate, level: LevelData) -> str:
    """The instrument to draw a candidate as: the level's recommended procedure when the
    candidate passes for it, else the first instrument it passes for."""
    inst = list(c.verdict.get("instruments") or [])
    proc = level.procedure
    if proc and proc in inst:
        return proc
    return inst[0] if inst else (proc or "vertebroplasty_straight")


def instrument_tubes(plan: PlanData, c: Candidate, instrument: str) -> list[tuple[str, np.ndarray, float]]:
    """Centre lines and radii of an instrument on a candidate's path.

    Returns
    -------
    list of (part, polyline (n, 3), radius_mm)
        ``cannula`` (skin entry to cannula tip; to the target for the straight needle),
        ``channel`` (kyphoplasty: cannula tip to target, bone-tamp shaft radius) and
        ``curved`` (curved needle: its arc, stylet radius).
    """
    r = c.radius_mm(instrument) or 1.5
    ct = c.cannula_tip if c.cannula_tip is not None else c.target
    out: list[tuple[str, np.ndarray, float]] = []
    if instrument == "vertebroplasty_straight":
        out.append(("cannula", np.vstack([c.entry, c.target]), r))
        return out
    out.append(("cannula", np.vstack([c.entry, ct]), r))
    if instrument == "kyphoplasty" and np.linalg.norm(c.target - ct) > 0.5:
        out.append(("channel", np.vstack([ct, c.target]), plan.channel_radius_mm()))
    if instrument == "vertebroplasty_curved":
        if c.curved_path is not None and len(c.curved_path) > 1:
            out.append(("curved", c.curved_path, plan.curved_radius_mm()))
        elif np.linalg.norm(c.target - ct) > 0.5:
            out.append(("channel", np.vstack([ct, c.target]), plan.curved_radius_mm()))
    return out


def _find_ct(case_dir: Path) -> Path | None:
    for name in ("image.nii.gz", "image.nii", "image.nrrd", "image.mha", "ct.nii.gz"):
        if (case_dir / name).is_file():
            return case_dir / name
    if (case_dir / "dicom").is_dir():
        return case_dir / "dicom"
    return None


class PlanViewer:
    """A pyvista plotter showing a plan's scene, with a selected level and candidate.

    Parameters
    ----------
    plan : PlanData
        From :func:`planner.viewer.plandata.load_plan`.
    meshes : list of ViewMesh, optional
        Anatomy and hardware; default :func:`planner.viewer.structures.collect_meshes` of the
        plan's case folder.
    off_screen : bool
        Render without a window (scripts, tests).
    window_size : (int, int)
        Width, height in pixels.
    slice_panel : bool
        Add a second viewport on the right with a CT slice / reformat of the selected path.
    ct : Volume or path-like, optional
        The CT for the slice panel; default the case folder's ``image.nii.gz`` (or
        ``dicom/``).
    level : str, optional
        Level selected first (default: the first planned level).
    text_panel : bool
        Show the metrics text panel.
    widgets : bool
        Add check-box widgets for the structure groups (interactive use; default: on
        screen only).
    """

    def __init__(
        self,
        plan: PlanData,
        meshes: list[ViewMesh] | None = None,
        *,
        off_screen: bool = True,
        window_size: tuple[int, int] = (1400, 900),
        slice_panel: bool = False,
        ct: Any = None,
        level: str | None = None,
        text_panel: bool = True,
        widgets: bool | None = None,
        title: str | None = None,
    ) -> None:
        pv = _pyvista()
        if off_screen:
            pv.OFF_SCREEN = True
        self.pv = pv
        self.plan = plan
        self.meshes = meshes if meshes is not None else collect_meshes(plan.case_dir)
        if not plan.levels:
            raise ViewerError("the plan has no levels to show", code="PLN-VIEW-003")
        self.window_size = (int(window_size[0]), int(window_size[1]))
        self.slice_panel = bool(slice_panel)
        shape = (1, 2) if self.slice_panel else (1, 1)
        kw: dict[str, Any] = {"col_weights": [0.64, 0.36]} if self.slice_panel else {}
        self.plotter = pv.Plotter(off_screen=off_screen, window_size=list(self.window_size), shape=shape, border=False, **kw)
        self.off_screen = off_screen
        self.text_panel = text_panel
        self.title = title if title is not None else plan.title()
        self._ct_source = ct
        self._ct = None
        self._slice_kind = 0
        self._slice_actor = None
        self.group_actors: dict[str, list[Any]] = {g: [] for g in (*GROUPS, *PATH_GROUPS)}
        self._actor_level: dict[int, str | None] = {}
        self._focus: str | None = None  # close-ups show only this level's paths
        self._labels_actor: Any = None
        self._checkboxes: dict[str, Any] = {}
        self._metrics_actor: Any = None
        self.visible: dict[str, bool] = {g: True for g in self.group_actors}
        self._selection_actors: list[Any] = []
        self._help_visible = False
        self.level_index = 0
        self.candidate_index = 0
        self.score_lo, self.score_hi = plan.score_range()
        self._build_scene()
        if level is not None:
            self.level_index = [lv.name for lv in plan.levels].index(plan.level(level).name)
        self._select_default_candidate()
        self._update_selection()
        self.frame_level()
        if widgets is None:
            widgets = not off_screen
        if widgets:
            self._add_widgets()
        if self.slice_panel:
            self._update_slice()

    # ------------------------------------------------------------------ building
    @property
    def level(self) -> LevelData:
        """The selected level."""
        return self.plan.levels[self.level_index]

    @property
    def candidate(self) -> Candidate | None:
        """The selected candidate (None when the level has no feasible candidate)."""
        cs = self.level.candidates
        return cs[self.candidate_index] if cs else None

    def _add(self, group: str, mesh: Any, level: str | None = None, **kw: Any) -> Any:
        self.plotter.subplot(0, 0)
        actor = self.plotter.add_mesh(mesh, **kw)
        self.group_actors[group].append(actor)
        self._actor_level[id(actor)] = level
        return actor

    def _build_scene(self) -> None:
        pv, pl = self.pv, self.plotter
        pl.subplot(0, 0)
        pl.renderer.set_background(BACKGROUND[1], top=BACKGROUND[0])
        # translucent structures are drawn after the opaque ones: hardware first
        for m in sorted(self.meshes, key=lambda m: (m.opacity < 1.0, m.name)):
            poly = _polydata(pv, m.vertices, m.faces)
            if m.metallic:
                style = {"specular": 0.9, "specular_power": 40.0, "diffuse": 0.65, "ambient": 0.18}
            else:
                style = {"specular": 0.15, "diffuse": 0.85, "ambient": 0.15}
            self._add(m.group, poly, color=m.rgb, opacity=m.opacity, smooth_shading=True, name=f"mesh:{m.name}", **style)
        # every feasible candidate as a line coloured by score, one actor per level so the
        # selected level's lines stand out (the others are dimmed)
        self.level_line_actors: dict[str, list[Any]] = {lv.name: [] for lv in self.plan.levels}
        if self.plan.all_candidates():
            for lv in self.plan.levels:
                if not lv.candidates:
                    continue
                lines = _lines(pv, [c.straight_polyline() for c in lv.candidates], [c.score for c in lv.candidates])
                a = self._add(
                    "candidates", lines, lv.name, scalars="score", cmap=SCORE_CMAP, clim=(self.score_lo, self.score_hi),
                    line_width=3, render_lines_as_tubes=True, name=f"candidates:{lv.name}", show_scalar_bar=False,
                )
                ent = pv.PolyData(np.vstack([c.entry for c in lv.candidates]))
                ent.point_data["score"] = np.asarray([c.score for c in lv.candidates], float)
                glyphs = ent.glyph(geom=pv.Sphere(radius=1.6, theta_resolution=12, phi_resolution=12), scale=False, orient=False)
                b = self._add("entries", glyphs, lv.name, scalars="score", cmap=SCORE_CMAP, clim=(self.score_lo, self.score_hi),
                              show_scalar_bar=False, name=f"entries:{lv.name}", smooth_shading=True)
                self.level_line_actors[lv.name] += [a, b]
            pl.add_scalar_bar(
                title="score", n_labels=5, fmt="%.2f", color=TEXT_RGB, vertical=True,
                position_x=0.89, position_y=0.30, width=0.04, height=0.40, title_font_size=14, label_font_size=12,
            )
        self.level_blocked_actors: dict[str, Any] = {}
        for lv in self.plan.levels:
            if lv.blocked:
                self.level_blocked_actors[lv.name] = self._add(
                    "blocked", _lines(pv, [np.vstack([b.entry, b.target]) for b in lv.blocked]), lv.name, color=BLOCKED_RGB,
                    opacity=0.45, line_width=1.5, name=f"blocked:{lv.name}",
                )
        # the recommended instruments
        for lv in self.plan.levels:
            for c in lv.recommended:
                inst = instrument_for(c, lv)
                for part, poly, r in instrument_tubes(self.plan, c, inst):
                    v, f = tube_mesh(poly, r, sections=20)
                    col = CURVED_RGB if part == "curved" else NEEDLE_RGB
                    self._add("needle", _polydata(pv, v, f), lv.name, color=col, smooth_shading=True, specular=0.6,
                              specular_power=30.0, name=f"needle:{c.id}:{part}")
                v, f = sphere_mesh(c.entry, 3.0)
                self._add("entries", _polydata(pv, v, f), lv.name, color=ENTRY_RGB, smooth_shading=True, name=f"entry:{c.id}")
        self._add_level_labels()
        if self.title:
            pl.add_text(self.title, position="upper_right", font_size=11, color=TEXT_RGB, name="title")

    def _add_level_labels(self) -> None:
        centres = {}
        for m in self.meshes:
            if m.group == "vertebrae" and m.level and (m.name.startswith("vertebra_") or m.name.endswith("_body")):
                if m.name.endswith("_body") or m.level not in centres:
                    # body centre: mean of the front 60 % of the vertebra (the body)
                    v = m.vertices
                    y_cut = np.percentile(v[:, 1], 45)
                    centres[m.level] = v[v[:, 1] <= y_cut].mean(0) if (v[:, 1] <= y_cut).any() else v.mean(0)
        if not centres:
            return
        planned = {lv.name for lv in self.plan.levels}
        # beside the body on the patient's right, past the vertebra's right edge
        right = {m.level: float(m.vertices[:, 0].min()) for m in self.meshes if m.name.startswith("vertebra_") and m.level}
        pts = np.array([[right.get(k, c[0] - 40.0) - 12.0, c[1], c[2]] for k, c in centres.items()])
        labels = [f"{k}*" if k in planned else k for k in centres]
        self.plotter.subplot(0, 0)
        self._labels_actor = self.plotter.add_point_labels(
            pts, labels, font_size=14, bold=True, text_color=TEXT_RGB, shape=None, show_points=False,
            always_visible=True, name="level_labels",
        )

    # ------------------------------------------------------------------ selection
    def _select_default_candidate(self) -> None:
        lv = self.level
        rec = lv.recommended
        self.candidate_index = lv.candidates.index(rec[0]) if rec else 0

    def _refresh_visibility(self) -> None:
        """Apply group toggles, the close-up focus and the level emphasis to every actor:
        the selected level's candidate lines opaque and the other levels' dimmed, blocked
        routes of the selected level only, and in a close-up only the focused level's paths
        (no level labels)."""
        cur = self.level.name
        for g, actors in self.group_actors.items():
            for a in actors:
                lev = self._actor_level.get(id(a))
                vis = self.visible[g]
                if lev is not None and self._focus is not None and lev != self._focus:
                    vis = False
                if g == "blocked" and lev != cur:
                    vis = False
                a.SetVisibility(bool(vis))
                if g in ("candidates", "entries") and lev is not None and a not in self._selection_actors:
                    a.prop.opacity = 1.0 if lev == cur else 0.25
        if self._labels_actor is not None:
            self._labels_actor.SetVisibility(self._focus is None)

    def _update_selection(self) -> None:
        pl, pv = self.plotter, self.pv
        pl.subplot(0, 0)
        self._refresh_visibility()
        for a in self._selection_actors:
            pl.remove_actor(a, render=False)
        self._selection_actors = []
        c = self.candidate
        if c is not None and not c.recommended:
            inst = instrument_for(c, self.level)
            for part, poly, r in instrument_tubes(self.plan, c, inst):
                v, f = tube_mesh(poly, r, sections=16)
                a = pl.add_mesh(_polydata(pv, v, f), color=SELECTED_RGB if part != "curved" else CURVED_RGB,
                                smooth_shading=True, opacity=0.9, name=f"selected:{part}")
                self._selection_actors.append(a)
        if self.text_panel:
            # one text actor of fixed size at the upper left, its text replaced on every
            # change (a corner annotation would shrink the font as the text grows)
            if self._metrics_actor is None:
                self._metrics_actor = pl.add_text(
                    self.panel_text(), position=(8, self.window_size[1] - 8), font_size=self._font_size(),
                    color=TEXT_RGB, font="courier", name="metrics", shadow=True,
                )
                self._metrics_actor.GetTextProperty().SetVerticalJustificationToTop()
            else:
                self._metrics_actor.SetInput(self.panel_text())

    def _font_size(self) -> int:
        """Text-panel font size for the window height."""
        return max(5, int(round(self.window_size[1] / 150)))  # pyvista draws 2x this in pixels

    def panel_text(self) -> str:
        """The text panel: level, candidate counter and the candidate's metrics."""
        lv = self.level
        c = self.candidate
        head = f"level {lv.name} ({self.level_index + 1}/{len(self.plan.levels)})"
        if c is None:
            reason = lv.recommendation.get("reason") or "no feasible candidate"
            return "\n".join([head, "no feasible candidate", reason, "", "h: keys"])
        head += f"   candidate {self.candidate_index + 1}/{len(lv.candidates)}"
        lines = [head, *candidate_lines(c, lv)]
        if self._help_visible:
            lines += ["", "keys:"] + [f"  {k:7s} {v}" for k, v in KEYS.items()]
        else:
            lines += ["", "h: keys"]
        return "\n".join(lines)

    def select(self, level: str | None = None, candidate: str | int | None = None) -> None:
        """Select a level (name) and a candidate (id or index in the level)."""
        if level is not None:
            self.level_index = [lv.name for lv in self.plan.levels].index(self.plan.level(level).name)
            self._select_default_candidate()
        if candidate is not None:
            if isinstance(candidate, int | np.integer):
                if not self.level.candidates:
                    raise ViewerError(f"level {self.level.name} has no candidates", code="PLN-VIEW-003")
                self.candidate_index = int(candidate) % len(self.level.candidates)
            else:
                cid = str(candidate)
                if level is None and all(c.id != cid for c in self.level.candidates):
                    owner = [i for i, lv in enumerate(self.plan.levels) if any(c.id == cid for c in lv.candidates)]
                    if owner:
                        self.level_index = owner[0]
                self.candidate_index = self.level.candidates.index(self.level.candidate(cid))
        self._update_selection()
        if self.slice_panel:
            self._update_slice()
        self._render()

    def next_candidate(self, step: int = 1) -> Candidate | None:
        """Step to the next (``step`` > 0) or previous candidate of the level."""
        n = len(self.level.candidates)
        side = self.candidate.side if self.candidate is not None else None
        if n:
            self.candidate_index = (self.candidate_index + step) % n
        self._update_selection()
        if self.candidate is not None and self.candidate.side != side and self._focus is None:
            self.frame_level()  # the camera follows the needle to the other side
        if self.slice_panel:
            self._update_slice()
        self._render()
        return self.candidate

    def next_level(self, step: int = 1) -> LevelData:
        """Step to the next or previous planned level (its recommended candidate first)."""
        self.level_index = (self.level_index + step) % len(self.plan.levels)
        self._select_default_candidate()
        self._update_selection()
        self.frame_level()
        if self.slice_panel:
            self._update_slice()
        self._render()
        return self.level

    def set_group_visible(self, group: str, visible: bool) -> None:
        """Show or hide a display group (:data:`GROUPS` or :data:`PATH_GROUPS`)."""
        if group not in self.group_actors:
            raise ViewerError(f"unknown group {group!r}; groups: {', '.join(self.group_actors)}", code="PLN-VIEW-003")
        self.visible[group] = bool(visible)
        w = self._checkboxes.get(group)
        if w is not None and bool(w.GetRepresentation().GetState()) != bool(visible):
            w.GetRepresentation().SetState(int(bool(visible)))
        self._refresh_visibility()
        self._render()

    def toggle_group(self, group: str) -> bool:
        """Flip a group's visibility; returns the new state."""
        self.set_group_visible(group, not self.visible[group])
        return self.visible[group]

    def toggle_help(self) -> None:
        """Show or hide the key bindings in the text panel."""
        self._help_visible = not self._help_visible
        self._update_selection()
        self._render()

    # ------------------------------------------------------------------ camera
    def _frame(self, lo: np.ndarray, hi: np.ndarray, direction: np.ndarray, up: np.ndarray = (0, 0, 1), zoom: float = 1.0) -> None:
        """Fit the corners of an LPS box (see :meth:`_fit`)."""
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])], float)
        self._fit(corners, direction, up, margin=1.05 / zoom)

    def _viewport_aspect(self) -> float:
        w = self.window_size[0] * (0.64 if self.slice_panel else 1.0)
        return w / self.window_size[1]

    def _fit(
        self, points: np.ndarray, direction: np.ndarray, up: np.ndarray = (0, 0, 1), margin: float = 1.08,
        view_angle: float = 12.0,
    ) -> None:
        """Camera looking along ``-direction`` at ``points`` (n, 3), framed tightly.

        The points are projected on the screen axes; the focal point is the centre of their
        screen extent, and the camera distance is the least that keeps every point (its
        offset times ``margin``) inside the perspective view of ``view_angle`` degrees (a
        narrow angle puts the camera farther away: less perspective distortion of near
        skin entries).
        """
        pl = self.plotter
        pl.subplot(0, 0)
        p = np.asarray(points, float).reshape(-1, 3)
        d = unit(direction)
        u = np.asarray(up, float)
        u = unit(u - (u @ d) * d)
        right = np.cross(-d, u)
        xs, ys, zs = p @ right, p @ u, p @ d
        cx, cy, cz = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2, (zs.min() + zs.max()) / 2
        focal = cx * right + cy * u + cz * d
        t = np.tan(np.radians(view_angle / 2))
        # perspective: a point at depth z (toward the camera) and screen offset (x, y) stays in
        # view when max(|y|, |x| / aspect) <= (dist - z) tan(angle / 2)
        need = np.maximum(np.abs(ys - cy), np.abs(xs - cx) / self._viewport_aspect()) * margin / t + (zs - cz)
        dist = max(float(need.max()), 1.0)
        pl.camera_position = [tuple(focal + d * dist), tuple(focal), tuple(u)]
        pl.camera.view_angle = view_angle
        pl.renderer.ResetCameraClippingRange()

    def level_points(self, level: LevelData | None = None) -> np.ndarray:
        """Points (n, 3) a level view frames: the corners of a box in the body frame around
        the body and half of each neighbouring level, and the selected and recommended paths."""
        lv = level or self.level
        pts = []
        if lv.centre is not None:
            he = lv.half_extent if lv.half_extent is not None else np.array([20.0, 15.0, 12.0])
            he = he + np.array([40.0, 30.0, 2.0 * he[2] + 25.0])  # out past the neighbouring levels
            R = np.stack([lv.axes.get(k, e) for k, e in zip("uvw", np.eye(3))], axis=1)
            box = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float) * he
            pts.append(lv.centre + box @ R.T)
        sel = [self.candidate] if (self.candidate is not None and self.candidate.level == lv.name) else []
        for c in (lv.recommended or lv.candidates[:1]) + sel:
            pts.append(np.vstack([c.entry, c.target, c.tip]))
        if not pts:
            lo, hi = self.scene_bounds()
            return np.vstack([lo, hi])
        return np.vstack(pts)

    def level_bounds(self, level: LevelData | None = None, margin_mm: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
        """LPS box around a level's body and its paths (:meth:`level_points`), with a margin."""
        p = self.level_points(level)
        return p.min(0) - margin_mm, p.max(0) + margin_mm

    def scene_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """LPS box of the vertebrae and hardware (the overview's frame)."""
        b = [m.bounds for m in self.meshes if m.group in ("vertebrae", "hardware")] or [m.bounds for m in self.meshes]
        if not b:
            pts = np.vstack([np.vstack([c.entry, c.target]) for c in self.plan.all_candidates()])
            return pts.min(0), pts.max(0)
        a = np.vstack(b)
        return a.min(0), a.max(0)

    def frame_level(self, direction: np.ndarray | None = None, zoom: float = 1.0) -> None:
        """Camera on the selected level, its selected path in view.

        The default direction is :data:`OBLIQUE_VIEW`, mirrored to the patient's right when
        the selected candidate is a right-sided one (so the camera is on the needle's side).
        """
        self.clear_slab()
        self._focus = None
        self._refresh_visibility()
        if direction is None:
            direction = np.array(OBLIQUE_VIEW, float)
            c = self.candidate
            if c is not None and c.side == "right":
                direction[0] = -direction[0]
        self._fit(self.level_points(), np.asarray(direction, float), margin=1.2 / zoom)

    def frame_overview(self, direction: np.ndarray = OBLIQUE_VIEW, zoom: float = 1.0) -> None:
        """Camera on the whole scene."""
        self.clear_slab()
        self._focus = None
        self._refresh_visibility()
        pts = []
        for m in self.meshes:
            if m.group in ("vertebrae", "hardware"):
                lo, hi = m.bounds
                pts.append(np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]))
        pts += [np.vstack([c.entry, c.target]) for c in self.plan.all_candidates() if c.recommended]
        if not pts:
            pts = [np.vstack(self.scene_bounds())]
        self._fit(np.vstack(pts), np.asarray(direction, float), margin=1.08 / zoom)

    def frame_candidate(self, c: Candidate | None = None, view: str = "side", zoom: float = 1.0) -> None:
        """Close-up of a candidate's path and its level, the anatomy cut to a slab.

        Parameters
        ----------
        c : Candidate, optional
            Default: the selected candidate.
        view : {"side", "axial"}
            ``side``: looking across the needle horizontally (perpendicular to the needle
            and to the patient's z, from the needle's side of the patient), superior up,
            anatomy cut to the level and half of each neighbour: the path against the
            endplates and discs.
            ``axial``: from the feet up the patient's z, anterior up and the patient's left
            on the right (as an axial CT), anatomy cut to the level: the path against the
            pedicle, canal and body outline.
        zoom : float
        """
        c = c or self.candidate
        if c is None:
            self.frame_level()
            return
        d = c.direction
        lv = self.level
        h = float(lv.half_extent[2]) if lv.half_extent is not None else 14.0
        centre = lv.centre if lv.centre is not None else c.target
        w = lv.axes.get("w", np.array([0.0, 0.0, 1.0]))
        if view == "side":
            direction = np.cross(d, [0.0, 0.0, 1.0])
            if np.linalg.norm(direction) < 1e-3:
                direction = np.array([1.0, 0.0, 0.0])
            # from the needle's side of the patient, so the needle is in front of the spine
            sx = 1.0 if c.side == "left" else -1.0 if c.side == "right" else float(np.sign(c.entry[0] - c.target[0]) or 1.0)
            direction = direction if direction[0] * sx >= 0 else -direction
            up = np.array([0.0, 0.0, 1.0])
            self.set_slab(centre, w, h + 22.0)
        elif view == "axial":
            direction, up = np.array([0.0, 0.0, -1.0]), np.array([0.0, -1.0, 0.0])
            self.set_slab(centre, w, h + 3.0)
        else:
            raise ViewerError(f"close-up view must be side or axial, got {view!r}", code="PLN-VIEW-003")
        self._focus = lv.name
        self._refresh_visibility()
        self._fit(self.level_points(), direction, up=up, margin=1.06 / zoom)

    def set_slab(self, centre: np.ndarray, normal: np.ndarray, half_thickness_mm: float) -> None:
        """Cut the anatomy and hardware meshes to a slab (paths and needles stay whole)."""
        from vtkmodules.vtkCommonDataModel import vtkPlane

        self.clear_slab()
        n = unit(normal)
        c = np.asarray(centre, float)
        for sign in (1.0, -1.0):
            pl = vtkPlane()
            pl.SetOrigin(*(c + sign * half_thickness_mm * n))
            pl.SetNormal(*(-sign * n))
            for g in GROUPS:
                for a in self.group_actors[g]:
                    a.mapper.AddClippingPlane(pl)
        self._slab = True

    def clear_slab(self) -> None:
        """Undo :meth:`set_slab`."""
        if getattr(self, "_slab", False):
            for g in GROUPS:
                for a in self.group_actors[g]:
                    a.mapper.RemoveAllClippingPlanes()
        self._slab = False

    # ------------------------------------------------------------------ slices
    def ct(self):
        """The CT volume for the slice panel (read once)."""
        if self._ct is None:
            src = self._ct_source
            if src is None:
                src = _find_ct(self.plan.case_dir)
            if src is None:
                raise ViewerError(
                    f"no CT image found in {self.plan.case_dir} (image.nii.gz or dicom/); pass --ct IMAGE",
                    code="PLN-VIEW-004",
                )
            if isinstance(src, str | os.PathLike):
                from planner.io import read_volume

                src = read_volume(src)
            self._ct = src
        return self._ct

    @property
    def slice_kind(self) -> str:
        """The slice kind the slice panel shows (one of :data:`SLICE_KINDS`)."""
        return SLICE_KINDS[self._slice_kind]

    def next_slice(self, step: int = 1) -> str:
        """Show the next slice kind of :data:`SLICE_KINDS` in the slice panel."""
        self._slice_kind = (self._slice_kind + step) % len(SLICE_KINDS)
        if self.slice_panel:
            self._update_slice()
            self._render()
        return self.slice_kind

    def slice_image(self, kind: str | None = None) -> np.ndarray:
        """RGB pixels (H, W, 3) of a slice of the selected path (:func:`slices.render_slice`)."""
        from planner.viewer import slices

        c = self.candidate
        if c is None:
            raise ViewerError(f"level {self.level.name} has no candidate to slice along", code="PLN-VIEW-003")
        kind = kind or self.slice_kind
        ov = slices.PathOverlay.from_candidate(c)
        if instrument_for(c, self.level) != "vertebroplasty_curved":
            ov.curved = None
        view = slices.path_slices(self.ct(), ov, kinds=(kind,), title_prefix=f"{c.level} ")[kind]
        return slices.render_slice(view, scale=2)

    def _update_slice(self) -> None:
        pv, pl = self.pv, self.plotter
        pl.subplot(0, 1)
        pl.renderer.set_background((0.0, 0.0, 0.0))
        try:
            rgb = self.slice_image()
        except ViewerError as exc:
            pl.add_text(exc.message, position="upper_left", font_size=9, color=TEXT_RGB, name="slice_msg")
            return
        H, W, _ = rgb.shape
        grid = pv.ImageData(dimensions=(W, H, 1), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
        grid.point_data["rgb"] = rgb[::-1].reshape(-1, 3)  # row 0 of the image at the top (max y)
        if self._slice_actor is not None:
            pl.remove_actor(self._slice_actor, render=False)
        self._slice_actor = pl.add_mesh(grid, scalars="rgb", rgb=True, lighting=False, show_scalar_bar=False, name="slice")
        cx, cy = (W - 1) / 2, (H - 1) / 2
        pl.camera_position = [(cx, cy, 1000.0), (cx, cy, 0.0), (0.0, 1.0, 0.0)]  # marks the camera as set
        cam = pl.renderer.GetActiveCamera()
        cam.ParallelProjectionOn()
        # fit the whole image in the viewport (parallel scale: half the visible height)
        cam.SetParallelScale(max(H / 2.0, W / 2.0 * self._panel_aspect()) * 1.01)
        pl.renderer.ResetCameraClippingRange()
        pl.subplot(0, 0)

    def _panel_aspect(self) -> float:
        """Height / width of the slice viewport."""
        w = self.window_size[0] * 0.36
        return self.window_size[1] / w if w else 1.0

    # ------------------------------------------------------------------ widgets, keys
    def _add_widgets(self) -> None:
        pl = self.plotter
        pl.subplot(0, 0)
        groups = [g for g in (*GROUPS, *PATH_GROUPS) if self.group_actors[g]]
        size = 18
        y0 = 12
        for i, g in enumerate(reversed(groups)):
            y = y0 + i * (size + 6)
            name = g

            def cb(state: bool, name: str = name) -> None:
                self.set_group_visible(name, state)

            self._checkboxes[g] = pl.add_checkbox_button_widget(cb, value=self.visible[g], position=(10, y), size=size, border_size=2,
                                          color_on=(0.35, 0.75, 0.35), color_off=(0.3, 0.3, 0.3),
                                          background_color=(0.8, 0.8, 0.8))
            label = GROUPS.get(g) or PATH_GROUPS.get(g, g)
            pl.add_text(label, position=(10 + size + 8, y + 1), font_size=self._font_size(), color=TEXT_RGB, name=f"cb:{g}")

    def _bind_keys(self) -> None:
        pl = self.plotter
        iren = pl.iren
        if iren is None:  # pragma: no cover - plotters always have one here
            return
        # VTK's own character keys ('p' pick, 'w' wireframe, 'e' exit ...) would act too;
        # with them gone, 'q' (pyvista's close key) has to end the event loop itself
        iren.interactor.RemoveObservers("CharEvent")
        pl.add_key_event("q", iren.terminate_app)
        pl.add_key_event("n", lambda: self.next_candidate(1))
        pl.add_key_event("p", lambda: self.next_candidate(-1))
        pl.add_key_event("l", lambda: self.next_level(1))
        pl.add_key_event("k", lambda: self.next_level(-1))
        pl.add_key_event("m", lambda: self.next_slice(1))
        pl.add_key_event("r", lambda: (self.frame_level(), self._render()))
        pl.add_key_event("o", lambda: (self.frame_overview(), self._render()))
        pl.add_key_event("h", self.toggle_help)
        for i, g in enumerate([*GROUPS, "candidates"][:10]):
            pl.add_key_event(str((i + 1) % 10), lambda g=g: self.toggle_group(g))

    def press(self, key: str) -> None:
        """Deliver a key press as the interactor would (keys of :data:`KEYS`)."""
        iren = self.plotter.iren
        if iren is None:  # pragma: no cover
            raise ViewerError("this plotter has no interactor", code="PLN-VIEW-005")
        if not getattr(self, "_keys_bound", False):
            self._bind_keys()
            self._keys_bound = True
        iren.interactor.SetKeySym(key)
        iren.interactor.SetKeyCode(key)
        iren.interactor.InvokeEvent("KeyPressEvent")

    def _render(self) -> None:
        if not self.off_screen and getattr(self.plotter, "render_window", None) is not None:
            self.plotter.render()

    # ------------------------------------------------------------------ output
    def screenshot(self, path: str | os.PathLike | None = None) -> np.ndarray:
        """Render and return RGB pixels (H, W, 3); write them as PNG when ``path`` is given."""
        self.plotter.render()  # state changed since the last frame: draw it first
        img = self.plotter.screenshot(return_img=True)
        img = np.ascontiguousarray(np.asarray(img)[..., :3])
        if path is not None:
            from planner.viewer.slices import write_png

            write_png(img, path)
            log.info("screenshot %s", path)
        return img

    def show(self) -> None:
        """Open the interactive window (blocks until it is closed)."""
        if not getattr(self, "_keys_bound", False):
            self._bind_keys()
            self._keys_bound = True
        self.plotter.show(title=f"planner view - {self.title}")

    def close(self) -> None:
        """Release the plotter and its render window."""
        self.plotter.close()

    def __enter__(self) -> PlanViewer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def screenshot_plan(
    plan: PlanData,
    out_png: str | os.PathLike,
    *,
    level: str | None = None,
    view: str = "level",
    window_size: tuple[int, int] = (1400, 900),
    slice_panel: bool = False,
    meshes: list[ViewMesh] | None = None,
    text_panel: bool = True,
) -> Path:
    """Render one off-screen screenshot of a plan.

    Parameters
    ----------
    plan : PlanData
    out_png : path-like
    level : str, optional
        Selected level (default the first).
    view : {"level", "overview", "closeup_side", "closeup_axial"}
        Camera: the level with its recommended path, the whole scene, or a close-up of the
        selected (recommended) path from the side or from above
        (:meth:`PlanViewer.frame_candidate`).
    window_size : (int, int)
    slice_panel : bool
        Include the slice viewport.
    meshes : list of ViewMesh, optional
        Reuse meshes already collected.
    text_panel : bool

    Returns
    -------
    Path
    """
    v = PlanViewer(plan, meshes, off_screen=True, window_size=window_size, slice_panel=slice_panel, level=level,
                   text_panel=text_panel, widgets=False)
    try:
        if view == "overview":
            v.frame_overview()
        elif view in ("closeup", "closeup_side"):
            v.frame_candidate(view="side")
        elif view == "closeup_axial":
            v.frame_candidate(view="axial")
        elif view != "level":
            raise ViewerError(
                f"view must be level, overview, closeup_side or closeup_axial, got {view!r}", code="PLN-VIEW-003"
            )
        v.screenshot(out_png)
    finally:
        v.close()
    return Path(out_png)


def score_colours(plan: PlanData) -> dict[str, tuple[float, float, float]]:
    """Candidate id -> RGB of its score on the plan's colormap (the lines' colours)."""
    cands = plan.all_candidates()
    if not cands:
        return {}
    lo, hi = plan.score_range()
    rgb = score_rgb(np.array([c.score for c in cands]), lo, hi)
    return {c.id: tuple(float(x) for x in rgb[i]) for i, c in enumerate(cands)}
