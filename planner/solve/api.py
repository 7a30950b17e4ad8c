"""Entry points that take files: plan from a folder or an image, write ``plan.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner.errors import SolverError
from planner.solve.config import SolverOptions
from planner.solve.plan import plan
from planner.solve.scene import Scene


def load_scene(path: str | Path, anchor: str | None = None) -> Scene:
    """A phantom case folder, a segmentation folder, or an image (segmented here)."""
    p = Path(path)
    if p.is_dir() and ((p / "case.json").is_file() or (p / "segmentation.json").is_file()):
        return Scene.from_folder(p)
    if not p.exists():
        raise SolverError(f"{p} does not exist", code="PLN-SOL-003")
    from planner.io import read_volume
    from planner.segment.pipeline import segment

    seg = segment(read_volume(p), anchor=anchor)
    return Scene.from_segmentation(seg)


def plan_input(
    input_path: str | Path,
    output: str | Path,
    *,
    levels: list[str],
    options_file: str | Path | None = None,
    anchor: str | None = None,
    procedure: str | None = None,
    coaxial_guide: str | None = None,
) -> tuple[dict[str, Any], Path]:
    """Plan ``levels`` of the input and write ``output/plan.json`` (atomic); return both."""
    opt = SolverOptions()
    if options_file:
        opt = SolverOptions.from_dict(json.loads(Path(options_file).read_text()))
    if procedure:
        opt = opt.replace(procedure=procedure)
    if coaxial_guide:
        opt = opt.replace(coaxial_guide=coaxial_guide)
    scene = load_scene(input_path, anchor)
    result = plan(scene, list(levels), opt)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "plan.json"
    write_plan(result, path)
    return result, path


def plan_bytes(result: dict[str, Any]) -> bytes:
    """Canonical serialisation of a plan without its ``run`` facts (timings): sorted keys,
    fixed indent, so the same input and options give the same bytes."""
    body = {k: v for k, v in result.items() if k != "run"}
    return (json.dumps(body, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def write_plan(result: dict[str, Any], path: str | Path) -> None:
    """Write ``plan.json`` (atomic) and the run's timings beside it as ``run.json``."""
    from planner.solve.schema import validate_plan

    validate_plan(result)  # a plan that fails its own schema is a bug: never write it
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(plan_bytes(result))
    tmp.replace(path)
    (path.parent / "run.json").write_text(json.dumps(result.get("run", {}), indent=1, sort_keys=True) + "\n")
