"""Command line: ``planner <command> ...`` (also ``python -m planner``).

Commands
--------
demo      generate the case-example phantom, write CT, labels, DICOM, meshes and a PNG
phantom   generate a phantom from a preset or a spec JSON
render    render a case folder (or a phantom preset) to PNG off-screen
segment   CT/MR -> labelled vertebrae, canal, soft tissue and fitted screws/rods (JSON summary)
plan      needle trajectories per level: routes, exact clearances, reasons, recommendation
view      3D viewer of a plan: interactive, screenshots, standalone HTML, report images
convert   read any supported image (DICOM folder, NIfTI, NRRD, MHA) and write another format
info      versions, presets, label names, tissues, error and warning codes (``--json``)

Exit codes: 0 success; 2 usage error; 3 a typed planner error (code printed); 1 other failure;
4 ``planner plan`` wrote a valid plan in which at least one level has no safe route.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from planner.errors import ERROR_CODES, WARNING_CODES, PlannerError

log = logging.getLogger("planner.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PLANNER_ERROR = 3
EXIT_NO_SAFE_ROUTE = 4


def _add_imaging_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("imaging")
    g.add_argument("--modality", choices=("CT", "MR"), help="image to synthesise (default CT)")
    g.add_argument("--spacing", type=float, nargs="+", metavar="MM", help="voxel size: one value or three (i j k)")
    g.add_argument("--rotation", type=float, nargs=3, metavar=("X", "Y", "Z"), help="grid rotation about LPS x y z, degrees (oblique)")
    g.add_argument("--left-handed", action="store_true", help="write a left-handed grid")
    g.add_argument("--noise", type=float, metavar="HU", help="CT noise SD in HU")
    g.add_argument("--metal-storage", choices=("clip3071", "clip4095", "extended"))
    g.add_argument("--streaks", action="store_true", help="simulate metal streak artefacts")
    g.add_argument("--mr-weighting", choices=("T1", "T2"))
    g.add_argument("--seed", type=int, help="override the preset's seed")


def _spec_from_args(args: argparse.Namespace):
    from planner.phantom.presets import get_preset
    from planner.phantom.spec import CaseSpec

    if getattr(args, "spec", None):
        spec = CaseSpec.from_dict(json.loads(Path(args.spec).read_text()))
    else:
        spec = get_preset(args.preset)
    d = spec.to_dict()
    im = d["imaging"]
    if args.modality:
        im["modality"] = args.modality
    if args.spacing:
        s = args.spacing * 3 if len(args.spacing) == 1 else args.spacing
        if len(s) != 3:
            raise PlannerError("--spacing takes one value or three", code="PLN-PH-001")
        im["spacing_mm"] = s
    if args.rotation:
        im["rotation_deg"] = args.rotation
    if args.left_handed:
        im["left_handed"] = True
    if args.noise is not None:
        im["noise_hu"] = args.noise
    if args.metal_storage:
        im["metal_storage"] = args.metal_storage
    if args.streaks:
        im["streaks"] = True
    if args.mr_weighting:
        im["mr_weighting"] = args.mr_weighting
    if args.seed is not None:
        d["seed"] = args.seed
    return CaseSpec.from_dict(d)


def cmd_phantom(args: argparse.Namespace) -> int:
    from planner.phantom.generate import generate, write_case

    spec = _spec_from_args(args)
    case = generate(spec)
    manifest = write_case(
        case,
        args.output,
        dicom=not args.no_dicom,
        meshes=not args.no_meshes,
        mesh_format=args.mesh_format,
        mesh_spacing_mm=args.mesh_spacing,
    )
    if args.render:
        from planner.render import render_scene

        png = Path(args.output) / f"{spec.name}.png"
        # render the meshes just written (no second meshing) or, without them, the scene
        source = Path(args.output) / "meshes" if not args.no_meshes else case.scene
        render_scene(source, png, title=f"{spec.name}: {spec.description}")
        manifest["files"]["render"] = png.name
    _report(args, {"output": str(args.output), "timings_s": case.timings_s, **manifest})
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    args.preset = "case_example"
    args.spec = None
    args.render = True
    args.no_dicom = False
    args.no_meshes = False
    args.mesh_format = "vtp"
    args.mesh_spacing = 0.75
    for k in ("modality", "spacing", "rotation", "noise", "metal_storage", "mr_weighting", "seed"):
        setattr(args, k, None)
    args.left_handed = False
    args.streaks = False
    rc = cmd_phantom(args)
    if rc != EXIT_OK:
        return rc
    # the planning step on the case just written: L3 and L5 carry bilateral screws, L4 is
    # the fractured level with a free left pedicle
    from planner.solve.api import plan_input
    from planner.solve.markups import plan_to_markups, write_markups

    out = Path(args.output) / "plan"
    result, path = plan_input(args.output, out, levels=["L3", "L4", "L5"])
    write_markups(plan_to_markups(result), out / "plan.mrk.json")
    _report(args, {"plan": str(path), "levels": {
        lv["level"]: (
            f"{lv['recommendation']['procedure']} {lv['recommendation']['access']} "
            f"({lv['recommendation']['side']} {lv['recommendation']['route']})"
            if lv["recommendation"]["safe_route_found"] else "no safe route"
        )
        for lv in result["levels"]
    }, "plan_s": result["run"]["total_s"]})
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    from planner.render import render_scene

    target = Path(args.input) if args.input else None
    if args.preset:
        from planner.phantom.generate import build_scene
        from planner.phantom.presets import PRESETS, get_preset

        names = sorted(PRESETS) if args.preset == "all" else [args.preset]
        outs = []
        for name in names:
            spec = get_preset(name)
            png = Path(args.output) / f"{name}.png" if args.preset == "all" else Path(args.output)
            outs.append(str(render_scene(build_scene(spec), png, view=args.view, title=f"{name}: {spec.description}")))
        _report(args, {"png": outs if len(outs) > 1 else outs[0]})
        return EXIT_OK
    else:
        if target is None or not target.exists():
            raise PlannerError(f"render input {target} does not exist; pass a case folder or --preset", code="PLN-IN-001")
        out = render_scene(target, args.output, view=args.view)
    _report(args, {"png": str(out)})
    return EXIT_OK


def cmd_segment(args: argparse.Namespace) -> int:
    from planner.io import read_volume
    from planner.segment.pipeline import segment, write_segmentation

    vol = read_volume(
        args.input, series_uid=args.series, correct_tilt=args.correct_tilt, resample_spacing=args.resample_spacing
    )
    anchor = args.anchor
    seg = segment(
        vol, anchor=anchor, labels=args.labels, label_source=args.label_source, task=args.task,
        mr_hardware=args.mr_hardware,
    )
    files = write_segmentation(seg, args.output, meshes=not args.no_meshes)
    summary = seg.summary()
    _report(
        args,
        {
            "output": str(args.output),
            "levels": summary["levels"],
            "screws": [f"{s['name']} d={s['diameter_mm']:.1f} L={s['length_mm']:.1f}" for s in summary["screws"]],
            "rods": [r["name"] for r in summary["rods"]],
            "resections": summary["resections"],
            "fractures": summary["fractures"],
            "timings_s": summary["source"].get("timings_s"),
            "files": files,
        },
    )
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from planner.solve.api import plan_input

    result, path = plan_input(
        args.input, args.output, levels=args.levels, options_file=args.options, anchor=args.anchor,
        procedure=args.procedure, coaxial_guide=getattr(args, "coaxial_guide", None),
    )
    if getattr(args, "markups", False):
        from planner.solve.markups import plan_to_markups, write_markups

        write_markups(plan_to_markups(result), Path(args.output) / "plan.mrk.json")
    summary = {
        "output": str(path),
        "levels": {
            lv["level"]: (
                f"{lv['recommendation']['procedure']} {lv['recommendation']['access']} "
                f"({lv['recommendation']['side']} {lv['recommendation']['route']})"
                if lv["recommendation"]["safe_route_found"]
                else "NO SAFE ROUTE: " + "; ".join(
                    f"{r['side']} {r['route']}: {r.get('reason', r['status'])}" for r in lv["routes"] if r["status"] != "feasible"
                )
            )
            for lv in result["levels"]
        },
        "total_s": result["run"]["total_s"],
    }
    _report(args, summary)
    return EXIT_NO_SAFE_ROUTE if result["summary"]["levels_without_safe_route"] else EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Verdict and metrics of one given trajectory (exit 0 feasible, 4 not feasible)."""
    import time

    import numpy as np

    from planner.solve.api import load_scene
    from planner.solve.config import SolverOptions

    def usage(msg: str) -> int:
        print(f"planner evaluate: error: {msg}", file=sys.stderr)
        return EXIT_USAGE

    if args.markups:
        if args.entry is not None or args.target is not None:
            return usage("give either --entry/--target or --markups, not both")
        from planner.solve.markups import read_markups, select_trajectory

        traj = select_trajectory(read_markups(args.markups, swap=args.swap), args.markup)
        entry, target = traj.entry_lps, traj.target_lps
        given = {"kind": "markups", "file": Path(args.markups).name, "markup": traj.name,
                 "file_coordinate_system": traj.coordinate_system, "swapped": bool(args.swap)}
    else:
        if args.entry is None or args.target is None:
            return usage("give the trajectory: --entry X Y Z --target X Y Z (LPS mm) or --markups FILE.mrk.json")
        if args.swap or args.markup:
            return usage("--swap and --markup apply to --markups only")
        entry, target = np.array(args.entry, float), np.array(args.target, float)
        given = {"kind": "arguments"}
    opt = None
    if args.options:
        op = Path(args.options)
        if not op.is_file():
            raise PlannerError(f"options file {op} does not exist", code="PLN-IN-001")
        try:
            opt = SolverOptions.from_dict(json.loads(op.read_text()))
        except json.JSONDecodeError as exc:
            raise PlannerError(f"options file {op.name} is not valid JSON ({exc}); see planner.solve.config.SolverOptions", code="PLN-SOL-002") from exc
    scene = load_scene(args.input, args.anchor)
    from planner.solve.evaluate import evaluate_trajectory

    t0 = time.perf_counter()
    cand = dict(evaluate_trajectory(scene, args.level, entry, target, options=opt, side=args.side))
    elapsed_s = time.perf_counter() - t0
    cand.pop("run", None)  # timings stay out of the deterministic file

    def finite(x):  # JSON has no NaN / infinity: an undefined value is written as null
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [finite(v) for v in x]
        if isinstance(x, float | np.floating):
            return float(x) if np.isfinite(x) else None
        return x.item() if isinstance(x, np.generic) else x

    cand = finite(cand)
    record = {
        "schema": "planner.evaluation",
        "candidate_schema": "urn:spine-augment-planner:schema:plan:1.0#/$defs/candidate",
        "frame": "LPS",
        "units": "mm",
        "scene": {"source": scene.source, "levels_found": list(scene.levels)},
        "level": args.level,
        "input": {"entry_lps_mm": [float(x) for x in entry], "target_lps_mm": [float(x) for x in target],
                  "side": args.side, **given},
        "options": (opt or SolverOptions()).to_dict(),
        "candidate": cand,
    }
    out_path = None
    if args.output:
        from planner.solve.markups import candidates_to_markups, write_markups

        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        out_path = out / "evaluation.json"
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n")
        tmp.replace(out_path)
        line = dict(cand)
        for key, fallback in (("skin_entry_lps_mm", entry), ("target_lps_mm", target)):
            if not (isinstance(line.get(key), list) and len(line[key]) == 3 and None not in line[key]):
                line[key] = [float(x) for x in fallback]
        line.setdefault("id", f"{args.level}-evaluated")
        write_markups(candidates_to_markups([line]), out / "evaluation.mrk.json")
    verdict = cand["verdict"]
    feasible = bool(verdict["feasible"])
    if args.json:
        print(json.dumps({**record, "output": str(out_path) if out_path else None}, indent=1, sort_keys=True, default=str))
    else:
        m = cand.get("metrics", {})
        b = verdict.get("binding") or {}
        closest = m.get("closest_structure", {})
        lines = {
            "trajectory": f"{args.level} {cand.get('side')} {cand.get('route')} ({cand.get('id')})",
            "verdict": ("FEASIBLE for " + ", ".join(verdict.get("instruments", [])) if feasible else
                        "NOT FEASIBLE" + (f": {b.get('structure_display')} (clearance {b.get('clearance_mm')} mm, "
                                          f"required {b.get('required_mm')} mm)" if b else "")),
            "per_instrument": "; ".join(
                f"{k}: " + ("ok" if v.get("feasible") else ", ".join(x.get("constraint", "?") for x in v.get("violations", [])))
                for k, v in verdict.get("per_instrument", {}).items()
            ),
            "depth_mm": f"skin to target {m.get('skin_to_target_mm')}, in body {m.get('in_body_mm')}",
            "angles_deg": f"tilt {m.get('tilt_from_vertical_deg')}, cranio-caudal {m.get('craniocaudal_deg')}, bone entry {m.get('bone_entry_angle_deg')}",
            "axis_clearance_mm": ", ".join(
                f"{k} {v}" + (f" ({closest[k]})" if k in closest else "") for k, v in m.get("axis_clearance_mm", {}).items() if v is not None
            ),
            "score": cand.get("score"),
            "evaluation_s": f"{elapsed_s:.2f} (level fields built, then one trajectory scored)",
            "output": str(out_path) if out_path else "(none; -o DIR writes evaluation.json)",
        }
        _report(args, lines)
    return EXIT_OK if feasible else EXIT_NO_SAFE_ROUTE


def cmd_view(args: argparse.Namespace) -> int:
    """3D viewer of a plan: interactive window, off-screen screenshot, standalone HTML, report images."""
    import os

    from planner.viewer.common import ViewerError
    from planner.viewer.plandata import load_plan

    plan = load_plan(args.plan_dir, args.case)
    done: dict[str, object] = {"plan": str(Path(args.plan_dir)), "case": str(plan.case_dir)}
    if args.report:
        from planner.viewer.report import write_report

        mf = write_report(plan, args.report, ct=args.ct, fluoro=not args.no_fluoro,
                          window_size=tuple(args.window_size))
        done["report"] = str(mf)
    if args.html:
        from planner.viewer.html import write_html

        done["html"] = str(write_html(plan, args.html))
    if args.screenshot or args.off_screen:
        if not args.screenshot:
            raise ViewerError("--off-screen needs --screenshot OUT.png", code="PLN-VIEW-005")
        from planner.viewer.scene3d import PlanViewer

        v = PlanViewer(plan, off_screen=True, window_size=tuple(args.window_size), slice_panel=args.slices,
                       ct=args.ct, level=args.level, widgets=True)
        try:
            if args.candidate:
                v.select(candidate=args.candidate)
            for _ in range(args.slice_step):
                v.next_slice()
            {"level": v.frame_level, "overview": v.frame_overview}.get(args.camera, lambda: None)()
            if args.camera.startswith("closeup_"):
                v.frame_candidate(view=args.camera.split("_", 1)[1])
            v.screenshot(args.screenshot)
        finally:
            v.close()
        done["screenshot"] = str(args.screenshot)
    elif not (args.report or args.html):
        headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        if headless:
            raise ViewerError(
                "no display for the interactive viewer; use --off-screen --screenshot OUT.png, --html OUT.html "
                "or --report OUT_DIR", code="PLN-VIEW-005",
            )
        from planner.viewer.scene3d import KEYS, PlanViewer

        print("keys: " + "; ".join(f"{k} {v}" for k, v in KEYS.items()))
        v = PlanViewer(plan, off_screen=False, window_size=tuple(args.window_size), slice_panel=not args.no_slices,
                       ct=args.ct, level=args.level)
        if args.candidate:
            v.select(candidate=args.candidate)
        v.show()
        return EXIT_OK
    _report(args, done)
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from planner.io import read_volume, write_dicom_series, write_volume

    vol = read_volume(
        args.input, series_uid=args.series, correct_tilt=args.correct_tilt, resample_spacing=args.resample_spacing
    )
    out = Path(args.output)
    if args.to_dicom:
        write_dicom_series(vol, out)
    else:
        write_volume(vol, out)
    _report(args, {"output": str(out), "geometry": vol.describe(), "provenance": vol.provenance.to_dict()})
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from planner import __version__
    from planner.labels.registry import LABEL_IDS, LEVELS, TISSUES
    from planner.phantom.presets import PRESETS

    info = {
        "version": __version__,
        "frame": "LPS",
        "units": "mm",
        "presets": {k: (f.__doc__ or "").strip().splitlines()[0] for k, f in PRESETS.items()},
        "levels": list(LEVELS),
        "labels": LABEL_IDS,
        "tissues": list(TISSUES),
        "error_codes": ERROR_CODES,
        "warning_codes": WARNING_CODES,
    }
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
    else:
        print(f"planner {info['version']} (frame LPS, mm)")
        print("presets:")
        for k, v in info["presets"].items():
            print(f"  {k:28s} {v}")
        print(f"levels: {' '.join(LEVELS)}")
        print(f"{len(LABEL_IDS)} label names, {len(ERROR_CODES)} error codes; use --json for all")
    return EXIT_OK


def _report(args: argparse.Namespace, obj: dict) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=1, sort_keys=True, default=str))
    else:
        for k, v in obj.items():
            if isinstance(v, dict) and len(json.dumps(v, default=str)) > 200:
                print(f"{k}: {len(v)} entries")
            else:
                print(f"{k}: {v}")


def build_parser() -> argparse.ArgumentParser:
    from planner.phantom.presets import PRESETS

    p = argparse.ArgumentParser(prog="planner", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="case-example phantom: CT, labels, DICOM, meshes, PNG")
    d.add_argument("-o", "--output", default="demo-output", help="output folder (default demo-output)")
    d.add_argument("--json", action="store_true", help="print the manifest as JSON")
    d.set_defaults(func=cmd_demo)

    ph = sub.add_parser("phantom", help="generate a phantom case")
    src = ph.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=sorted(PRESETS), default="case_example")
    src.add_argument("--spec", help="case specification JSON (see samples/)")
    ph.add_argument("-o", "--output", required=True, help="output folder")
    ph.add_argument("--no-dicom", action="store_true", help="skip the DICOM series")
    ph.add_argument("--no-meshes", action="store_true", help="skip ground-truth meshes")
    ph.add_argument("--mesh-format", choices=("vtp", "stl", "ply"), default="vtp")
    ph.add_argument("--mesh-spacing", type=float, default=0.75, metavar="MM",
                    help="marching-cubes grid of the ground-truth meshes (default 0.75 mm)")
    ph.add_argument("--render", action="store_true", help="also render a PNG of the scene")
    ph.add_argument("--json", action="store_true")
    _add_imaging_args(ph)
    ph.set_defaults(func=cmd_phantom)

    r = sub.add_parser("render", help="render a case folder or preset to PNG (off-screen)")
    r.add_argument("-i", "--input", help="case folder written by 'planner phantom'")
    r.add_argument("--preset", choices=sorted(PRESETS) + ["all"], help="render a preset's scene ('all': every preset into the -o folder)")
    r.add_argument("-o", "--output", required=True, help="PNG path (a folder with --preset all)")
    r.add_argument("--view", choices=("oblique", "lateral", "ap", "posterior"), default="oblique")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_render)

    sg = sub.add_parser("segment", help="segment a CT/MR: vertebrae by level, canal, hardware objects")
    sg.add_argument("-i", "--input", required=True, help="DICOM folder, NIfTI, NRRD or MHA")
    sg.add_argument("-o", "--output", required=True, help="output folder")
    sg.add_argument("--anchor", help="level of a landmark vertebra for short fields of view, e.g. L5 (lowest lumbar)")
    sg.add_argument("--labels", help="imported anatomy label map (TotalSegmentator or VerSe); hardware still from the image")
    sg.add_argument("--label-source", choices=("totalsegmentator", "verse"), default="totalsegmentator")
    sg.add_argument("--task", default="total", help="TotalSegmentator task of --labels (total, total_mr, vertebrae_body)")
    sg.add_argument("--series", help="SeriesInstanceUID when the folder holds several")
    sg.add_argument("--correct-tilt", action="store_true")
    sg.add_argument("--resample-spacing", action="store_true")
    sg.add_argument("--mr-hardware", action="store_true", help="on MR, fit screws/rods from signal voids (approximate)")
    sg.add_argument("--no-meshes", action="store_true")
    sg.add_argument("--json", action="store_true")
    sg.set_defaults(func=cmd_segment)

    pl = sub.add_parser("plan", help="plan needle trajectories for levels (exit 4: a level has no safe route)")
    pl.add_argument("-i", "--input", required=True,
                    help="phantom case folder, 'planner segment' output folder, or an image (segmented first)")
    pl.add_argument("-o", "--output", required=True, help="output folder (plan.json)")
    pl.add_argument("--levels", nargs="+", required=True, metavar="LEVEL", help="target levels, e.g. L3 L4 L5")
    pl.add_argument("--options", help="JSON file of solver options (margins, weights, limits; see docs)")
    pl.add_argument("--procedure", choices=("auto", "kyphoplasty", "vertebroplasty_curved", "vertebroplasty_straight"))
    pl.add_argument("--anchor", help="level anchor when an image has to be segmented first")
    pl.add_argument("--coaxial-guide", metavar="NEEDLE",
                    help="coaxial technique: a guide needle (e.g. needle_13g) placed first, the working cannula over it")
    pl.add_argument("--markups", action="store_true", help="also write plan.mrk.json (3D Slicer markups lines, LPS)")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plan)

    ev = sub.add_parser(
        "evaluate",
        help="verdict and metrics of one given trajectory (exit 0 feasible, 4 not feasible)",
        description="Evaluate one needle trajectory, given as skin entry and target in LPS mm or as a 3D Slicer "
                    "markups line (first control point = skin entry, second = target; RAS files are converted). "
                    "Exit codes: 0 feasible for at least one instrument, 4 not feasible, 2 usage error, "
                    "3 typed planner error (bad markups file, unknown level; code printed).",
    )
    ev.add_argument("-i", "--input", required=True,
                    help="phantom case folder, 'planner segment' output folder, or an image (segmented first)")
    ev.add_argument("--level", required=True, help="target level, e.g. L4")
    ev.add_argument("--entry", type=float, nargs=3, metavar=("X", "Y", "Z"), help="skin entry, LPS mm")
    ev.add_argument("--target", type=float, nargs=3, metavar=("X", "Y", "Z"), help="target in the body, LPS mm")
    ev.add_argument("--markups", metavar="FILE.mrk.json", help="Slicer markups file with the trajectory (a Line)")
    ev.add_argument("--markup", metavar="NAME", help="name of the line to use when the markups file holds several")
    ev.add_argument("--swap", action="store_true", help="markups: the first control point is the target")
    ev.add_argument("--side", choices=("left", "right"), help="access side (default: from the trajectory)")
    ev.add_argument("--options", help="JSON file of solver options (margins, limits; see docs)")
    ev.add_argument("--anchor", help="level anchor when an image has to be segmented first")
    ev.add_argument("-o", "--output", help="output folder: evaluation.json and evaluation.mrk.json")
    ev.add_argument("--json", action="store_true", help="print the evaluation as JSON")
    ev.set_defaults(func=cmd_evaluate)

    vw = sub.add_parser(
        "view",
        help="3D viewer of a plan (interactive; --off-screen --screenshot, --html, --report for files)",
        description="Show a plan folder written by 'planner plan': vertebrae by level, screws and rods, canal and "
                    "critical structures, candidates coloured by score, the recommended needle at its real radius, "
                    "and a CT slice / needle-aligned reformat panel. Keys: n/p candidate, l/k level, m slice, "
                    "1-9/0 toggle structure groups, r frame level, o overview, h help, q quit.",
    )
    vw.add_argument("plan_dir", help="plan folder (holds plan.json)")
    vw.add_argument("--case", help="case folder the plan was made on (default: PLAN_DIR/.. when PLAN_DIR is <case>/plan)")
    vw.add_argument("--ct", help="CT image for the slices (default: the case's image.nii.gz or dicom/)")
    vw.add_argument("--level", help="level to show first (default: the first planned level)")
    vw.add_argument("--candidate", help="candidate id to select first (default: the level's recommended one)")
    vw.add_argument("--off-screen", action="store_true", help="render without a window (with --screenshot)")
    vw.add_argument("--screenshot", metavar="OUT.png", help="write a screenshot of the viewer")
    vw.add_argument("--camera", choices=("level", "overview", "closeup_side", "closeup_axial"), default="level",
                    help="camera of the screenshot (default level)")
    vw.add_argument("--slices", action="store_true", help="screenshot: include the slice panel")
    vw.add_argument("--slice-step", type=int, default=0, metavar="N",
                    help="screenshot: step the slice panel N times (needle_axial, needle_sagittal, needle_perpendicular, axial, sagittal, coronal)")
    vw.add_argument("--no-slices", action="store_true", help="interactive: no slice panel")
    vw.add_argument("--window-size", type=int, nargs=2, default=(1400, 900), metavar=("W", "H"))
    vw.add_argument("--html", metavar="OUT.html", help="write one self-contained HTML page of the plan (opens offline)")
    vw.add_argument("--report", metavar="OUT_DIR", help="write report images per level and manifest.json")
    vw.add_argument("--no-fluoro", action="store_true", help="report: leave out the fluoroscopy views")
    vw.add_argument("--json", action="store_true")
    vw.set_defaults(func=cmd_view)

    c = sub.add_parser("convert", help="convert between DICOM/NIfTI/NRRD/MHA (LPS kept)")
    c.add_argument("-i", "--input", required=True)
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--series", help="SeriesInstanceUID when the folder holds several")
    c.add_argument("--correct-tilt", action="store_true", help="resample a gantry-tilted series (recorded)")
    c.add_argument("--resample-spacing", action="store_true", help="resample uneven slice spacing (recorded)")
    c.add_argument("--to-dicom", action="store_true", help="write a DICOM CT series folder")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser("info", help="versions, presets, labels, codes")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except PlannerError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return EXIT_PLANNER_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
