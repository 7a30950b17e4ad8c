"""Write review PNGs of the segmentation of every phantom preset and of the real lumbar CT.

For each case: ``<case>_overlay.png`` (label outlines, screw axes and rods over sagittal,
coronal and per-level axial reformats, :func:`planner.segment.figures.overlay_png`) and
``<case>_mesh_over_ct.png`` (meshes with an axial CT slice,
:func:`planner.segment.figures.mesh_over_ct_png`).

Usage::

    python benchmarks/render_segmentation_pngs.py -o out/segmentation_pngs [--spacing 1.0]
        [--presets case_example ...] [--no-real]

Phantoms are segmented at ``--spacing`` mm with the lowest modelled level as the anchor;
the real CT (``../shared/data/lumbar-ct-L2-L4/sub-ct_label-22_ct.nii.gz`` beside the
checkout, or ``$PLANNER_SHARED_DATA``) with anchor ``L4``; it is skipped with a message when
absent.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from planner.errors import PlannerError  # noqa: E402
from planner.phantom import generate, get_preset  # noqa: E402
from planner.phantom.presets import PRESETS  # noqa: E402
from planner.segment.figures import mesh_over_ct_png, overlay_png  # noqa: E402
from planner.segment.pipeline import segment  # noqa: E402

REAL_CT = ("lumbar-ct-L2-L4", "sub-ct_label-22_ct.nii.gz", "L4")


def _shared_root() -> Path:
    env = os.environ.get("PLANNER_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def _render(name: str, image, seg, out: Path) -> None:
    t = time.perf_counter()
    overlay_png(image, seg, out / f"{name}_overlay.png", title=f"{name}: " + (
        f"levels {', '.join(seg.levels) or 'none'} | {len(seg.screws)} screws, {len(seg.rods)} rods"))
    mesh_over_ct_png(image, seg, out / f"{name}_mesh_over_ct.png")
    print(f"  {name}: wrote 2 PNGs in {time.perf_counter() - t:.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    ap.add_argument("--spacing", type=float, default=1.0, help="phantom voxel size, mm")
    ap.add_argument("--presets", nargs="*", default=list(PRESETS), help="phantom presets")
    ap.add_argument("--no-real", action="store_true", help="skip the real CT")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.presets:
        t = time.perf_counter()
        spec = get_preset(name).replace_imaging(spacing_mm=(args.spacing,) * 3, modality="CT")
        case = generate(spec)
        seg = segment(case.image, anchor=spec.level_list()[-1])
        print(f"{name}: generated and segmented in {time.perf_counter() - t:.1f} s; levels {seg.levels}, "
              f"{len(seg.screws)}/{len(case.scene.screws)} screws, {len(seg.rods)}/{len(case.scene.rods)} rods")
        _render(name, case.image, seg, args.out)
    if not args.no_real:
        folder, fname, anchor = REAL_CT
        path = _shared_root() / folder / fname
        if not path.exists():
            print(f"real CT not found at {path}; skipped (it lives in ../shared/data beside the checkout)")
        else:
            from planner.io import read_volume

            t = time.perf_counter()
            ct = read_volume(path)
            try:
                seg = segment(ct, anchor=anchor)
            except PlannerError as exc:  # e.g. a cropped field of view without air
                print(f"{folder}: full segmentation refused ({exc}); retrying without soft tissue")
                seg = segment(ct, anchor=anchor, soft_tissue=False)
            print(f"{folder}: segmented in {time.perf_counter() - t:.1f} s; levels {seg.levels}, "
                  f"{len(seg.screws)} screws")
            _render(folder, ct, seg, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
