"""Report images of a plan: per level, the 3D scene, the recommended path, slices and views.

:func:`write_report` writes into an output folder, for every planned level::

    <LEVEL>/overview.png           whole scene, the level's candidates emphasised
    <LEVEL>/level.png              the level with its recommended path (posterolateral view)
    <LEVEL>/closeup_side.png       the recommended path from the side, anatomy cut to the level
    <LEVEL>/closeup_axial.png      the recommended path from below (as an axial CT), cut to the level
    <LEVEL>/slice_<kind>.png       axial / sagittal / coronal CT through the target and the
                                   needle-aligned reformats (needle_axial, needle_sagittal,
                                   needle_perpendicular), bone window, path overlaid
    <LEVEL>/fluoro/*.png           (optional) AP, lateral, bull's-eye, progression and the
                                   suggested tip/wall (best_oblique) and edge-on wall views
                                   from :mod:`planner.fluoro`, with overlays and ``views.json``;
                                   the needle as the level's instrument places it (a curved
                                   needle's tip at its arc's end)

plus ``plan.html`` (:mod:`planner.viewer.html`) and ``manifest.json`` (written last: what
each file shows, the level's recommendation and the candidate the images follow).  A level
without a recommended candidate is shown with its best feasible candidate; a level with no
feasible candidate gets the scene images only, and the manifest says why.  Nothing in the
manifest depends on the time or the machine.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from planner.viewer.common import ViewerError
from planner.viewer.plandata import PlanData, load_plan

log = logging.getLogger(__name__)

#: Views of the 3D scene in each level's folder, with what they show.
SCENE_IMAGES: dict[str, str] = {
    "overview": "whole scene, oblique posterolateral view; this level's candidates emphasised",
    "level": "the level and its recommended path, posterolateral view from the needle's side",
    "closeup_side": "recommended path seen across the needle (superior up), anatomy cut to the level and its neighbours",
    "closeup_axial": "recommended path seen from below like an axial CT (anterior up, patient's left on the right), anatomy cut to the level",
}

#: Slice images, with what they show.
SLICE_IMAGES: dict[str, str] = {
    "axial": "axial CT through the target, path projected (solid within 1.5 mm of the plane)",
    "sagittal": "sagittal CT through the target, path projected",
    "coronal": "coronal CT through the target, path projected",
    "needle_axial": "reformat containing the needle and the left-right axis (needle in plane)",
    "needle_sagittal": "reformat containing the needle and the cranio-caudal axis (needle in plane)",
    "needle_perpendicular": "reformat across the needle at its tip",
}


def _fluoro_views(
    case_dir: Path, ct: Any, cand_raw: dict[str, Any], level: str, out: Path, instrument: str | None = None
) -> dict[str, Any]:
    """DRR views of one trajectory by :func:`planner.fluoro.write_view_pngs` (optional).

    The needle is placed as ``instrument`` places it (:meth:`planner.fluoro.Trajectory.
    from_candidate`): the curved needle as its cannula plus the planned arc, so the views'
    tip is the curved stylet's working tip at the arc's end.  The wall points are the
    posterior wall between the pedicles within the band around that tip's height
    (:func:`planner.fluoro.posterior_wall_points`), else, without wall at that height,
    the whole wall between the pedicles."""
    try:
        from planner import fluoro
    except ImportError:  # pragma: no cover - fluoroscopy not installed
        return {"status": "skipped", "reason": "planner.fluoro is not available"}
    from planner.io import read_volume

    hardware: list[Any] = []
    case = case_dir / "case.json"
    if case.is_file():
        from planner.implants import CrossLink, Rod, Screw

        d = json.loads(case.read_text())
        hardware = [Screw.from_dict(x) for x in d.get("screws", [])] + [Rod.from_dict(x) for x in d.get("rods", [])]
        hardware += [CrossLink.from_dict(x) for x in d.get("crosslinks", [])]
    else:
        from planner.solve.api import load_scene

        sc = load_scene(case_dir)
        hardware = [*sc.screws, *sc.rods, *sc.crosslinks]
    traj = fluoro.Trajectory.from_candidate(cand_raw, instrument)
    try:
        found = sorted(p for p in case_dir.glob("labels.*") if not p.name.endswith(".json"))
        if not found:
            raise FileNotFoundError(f"no labels image in {case_dir}")
        labels = read_volume(found[0])
        try:
            wall = fluoro.posterior_wall_points(labels, level, tip_lps=traj.tip_lps)
        except fluoro.FluoroError as exc:  # no wall at the tip's height: the whole wall between the pedicles
            log.info("%s: %s; using the posterior wall between the pedicles", level, exc)
            wall = fluoro.posterior_wall_points(labels, level)
    except Exception as exc:  # the wall term is optional for the views
        log.warning("no posterior-wall points for %s (%s); views without the wall term", level, exc)
        wall = None
    written = fluoro.write_view_pngs(ct, traj, hardware, out, wall_points=wall)
    return {
        "status": "ok",
        "files": {k: str(Path("fluoro") / Path(v).name) for k, v in sorted(written.items())},
        "views_json": "fluoro/views.json",
    }


def write_report(
    plan: PlanData | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    case_dir: str | os.PathLike | None = None,
    ct: Any = None,
    window_size: tuple[int, int] = (1200, 800),
    slice_scale: int = 2,
    fluoro: bool = True,
    html: bool = True,
    levels: list[str] | None = None,
) -> Path:
    """Write the report images of a plan and their ``manifest.json``.

    Parameters
    ----------
    plan : PlanData or path-like
        A loaded plan or a plan folder.
    out_dir : path-like
        Output folder (created).
    case_dir : path-like, optional
        Case folder when ``plan`` is a path (see :func:`planner.viewer.plandata.load_plan`).
    ct : Volume or path-like, optional
        CT for the slices (default: the case's ``image.nii.gz`` or ``dicom/``).
    window_size : (int, int)
        Size of the 3D images.
    slice_scale : int
        Output pixels per slice sample (0.5 mm): 2 gives 1 pixel per 0.25 mm.
    fluoro : bool
        Also write the fluoroscopy views (:mod:`planner.fluoro`) when available.
    html : bool
        Also write ``plan.html``.
    levels : list of str, optional
        Only these levels (default every planned level).

    Returns
    -------
    Path
        The manifest.
    """
    from planner.viewer import slices as S
    from planner.viewer.scene3d import PlanViewer, instrument_for
    from planner.viewer.structures import collect_meshes

    pd = plan if isinstance(plan, PlanData) else load_plan(plan, case_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [lv.name for lv in pd.levels] if levels is None else [pd.level(n).name for n in levels]
    if not names:
        raise ViewerError("the plan has no levels to report", code="PLN-VIEW-003")
    meshes = collect_meshes(pd.case_dir)
    viewer = PlanViewer(pd, meshes, off_screen=True, window_size=window_size, widgets=False)
    manifest: dict[str, Any] = {
        "schema": "planner.viewer.report",
        "schema_version": "1.0",
        "frame": "LPS",
        "units": "mm",
        "plan": pd.title(),
        "slice_window_hu": {"width": S.BONE_WINDOW[0], "level": S.BONE_WINDOW[1]},
        "levels": {},
    }
    ct_vol = None
    try:
        for name in names:
            lv = pd.level(name)
            ldir = out / name
            ldir.mkdir(parents=True, exist_ok=True)
            viewer.select(level=name)
            c = viewer.candidate
            entry: dict[str, Any] = {
                "procedure": lv.procedure,
                "access": lv.recommendation.get("access"),
                "recommended": [x.id for x in lv.recommended],
                "candidate": c.id if c is not None else None,
                "candidate_is_recommended": bool(c is not None and c.recommended),
                "images": [],
            }
            if c is None:
                entry["note"] = "no feasible candidate: " + str(lv.recommendation.get("reason") or "")
            for kind, what in SCENE_IMAGES.items():
                if kind == "overview":
                    viewer.frame_overview()
                elif kind == "level":
                    viewer.frame_level()
                elif c is None:
                    continue
                else:
                    viewer.frame_candidate(view=kind.split("_", 1)[1])
                f = ldir / f"{kind}.png"
                viewer.screenshot(f)
                entry["images"].append({"file": f"{name}/{f.name}", "kind": kind, "shows": what})
            viewer.frame_level()
            if c is not None:
                if ct_vol is None:
                    ct_vol = viewer.ct() if ct is None else ct
                    if isinstance(ct_vol, str | os.PathLike):
                        from planner.io import read_volume

                        ct_vol = read_volume(ct_vol)
                ov = S.PathOverlay.from_candidate(c)
                inst = instrument_for(c, lv)
                if inst != "vertebroplasty_curved":
                    ov.curved = None
                entry["instrument"] = inst
                views = S.path_slices(ct_vol, ov, kinds=tuple(SLICE_IMAGES), title_prefix=f"{name} ")
                for kind, view in views.items():
                    f = ldir / f"slice_{kind}.png"
                    S.write_slice_png(view, f, scale=slice_scale)
                    entry["images"].append({
                        "file": f"{name}/{f.name}", "kind": f"slice_{kind}", "shows": SLICE_IMAGES[kind],
                        "plane": {
                            "centre_lps_mm": [round(float(x), 3) for x in view.plane.centre],
                            "column_lps": [round(float(x), 5) for x in view.plane.col_dir],
                            "row_lps": [round(float(x), 5) for x in view.plane.row_dir],
                            "field_of_view_mm": round(view.plane.width_mm, 2),
                            "pixel_mm": round(view.plane.pixel_mm / slice_scale, 4),
                        },
                    })
                if fluoro:
                    try:
                        entry["fluoro"] = _fluoro_views(pd.case_dir, ct_vol, c.raw, name, ldir / "fluoro", inst)
                    except Exception as exc:  # optional: the report stands without it
                        log.warning("fluoroscopy views of %s failed: %s", name, exc)
                        entry["fluoro"] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            manifest["levels"][name] = entry
    finally:
        viewer.close()
    if html:
        from planner.viewer.html import write_html

        write_html(pd, out / "plan.html", meshes=meshes)
        manifest["html"] = "plan.html"
    mf = out / "manifest.json"
    tmp = mf.with_name(mf.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp.replace(mf)
    log.info("report of %d levels in %s", len(names), out)
    return mf
