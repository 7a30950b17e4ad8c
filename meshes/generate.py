#!/usr/bin/env python
"""Build the parametric reference models in ``meshes/`` (see meshes/README.md).

Usage::

    python meshes/generate.py            # (re)write the .ply files and models.json here
    python meshes/generate.py --check    # exit 1 if the committed files differ from a rebuild

Local frame of every model (mm): the instrument or implant axis is +z, the working tip is at
the origin and the proximal end (head, hub) lies toward +z; the curved stylet bends toward
+x; the rod runs from z = 0 to z = 120 on the z axis.  Output is deterministic.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(HERE.parent))

from planner.implants import Rod, Screw  # noqa: E402
from planner.instruments import get_instrument  # noqa: E402
from planner.meshing import (  # noqa: E402
    bone_tamp_mesh,
    cannula_mesh,
    curved_needle_mesh,
    needle_mesh,
    read_mesh,
    rod_mesh,
    screw_mesh,
    write_mesh,
)

FORMAT = "ply"
Z = np.array([0.0, 0.0, 1.0])
ORIGIN = np.zeros(3)


def build_models() -> dict[str, tuple[object, dict]]:
    """Return ``name -> (trimesh.Trimesh, parameters)`` for every reference model."""
    models: dict[str, tuple[object, dict]] = {}

    screw = Screw(
        "L4",
        "left",
        head_lps=45.0 * Z,
        tip_lps=ORIGIN,
        diameter_mm=6.5,
        tulip_diameter_mm=12.0,
        tulip_height_mm=13.0,
    )
    models["pedicle_screw_6.5x45_tulip"] = (
        screw_mesh(screw, threads=True, rod_direction=[1.0, 0.0, 0.0]),
        {
            "diameter_mm": 6.5,
            "length_mm": 45.0,
            "tulip_diameter_mm": 12.0,
            "tulip_height_mm": 13.0,
            "thread_pitch_mm": 2.75,
            "thread_depth_mm": 1.0,
            "rod_slot": "+x",
            "tip": [0, 0, 0],
            "head": [0, 0, 45],
        },
    )
    rod = Rod("left", np.array([ORIGIN, 120.0 * Z]), diameter_mm=5.5)
    models["rod_5.5x120"] = (rod_mesh(rod), {"diameter_mm": 5.5, "length_mm": 120.0})

    for g in (11, 13):
        ins = get_instrument(f"needle_{g}g", usable_length_mm=120.0)
        models[f"needle_{g}g_120mm"] = (
            needle_mesh(120.0 * Z, ORIGIN, ins, full_length=True),
            {
                "gauge": g,
                "od_mm": ins.od_mm,
                "usable_length_mm": 120.0,
                "tip": "trocar",
                "tip_length_mm": ins.tip_length_mm,
                "hub_diameter_mm": ins.hub_diameter_mm,
                "hub_length_mm": ins.hub_length_mm,
            },
        )

    cn = get_instrument("curved_needle")
    models["curved_needle_11g_stylet"] = (
        curved_needle_mesh(120.0 * Z, ORIGIN, [1.0, 0.0, 0.0], cn),
        {
            "cannula_gauge": cn.cannula.gauge,
            "cannula_od_mm": cn.cannula.od_mm,
            "cannula_id_mm": cn.cannula.id_mm,
            "stylet_gauge": cn.stylet_gauge,
            "stylet_od_mm": cn.stylet_od_mm,
            "arc_radius_mm": cn.arc_radius_mm,
            "extension_mm": cn.max_extension_mm,
            "bend": "+x",
            "marks": "curve values [U]",
        },
    )

    kc = get_instrument("kyphoplasty_cannula")
    cannula = cannula_mesh(120.0 * Z, ORIGIN, kc)
    tamp = bone_tamp_mesh(ORIGIN, -Z, kc.tamp, inflated=True)
    import trimesh

    both = trimesh.util.concatenate([cannula, tamp])
    models["kyphoplasty_cannula_bone_tamp_15mm"] = (
        both,
        {
            "cannula_od_mm": kc.od_mm,
            "cannula_id_mm": kc.id_mm,
            "cannula_length_mm": 120.0,
            "balloon_length_mm": kc.tamp.balloon_length_mm,
            "balloon_inflated_diameter_mm": kc.tamp.inflated_diameter_mm,
            "marks": "OD 4.2 [U], balloon length [V], inflated diameter [U]",
        },
    )
    return models


def summary(mesh) -> dict:
    """Vertex/face counts and bounds (mm), rounded, for models.json and the tests."""
    return {
        "n_vertices": int(len(mesh.vertices)),
        "n_faces": int(len(mesh.faces)),
        "bounds_mm": [[round(float(x), 4) for x in row] for row in np.asarray(mesh.bounds)],
        "volume_mm3": round(float(mesh.volume), 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", type=Path, default=HERE, help="output folder (default: meshes/)")
    ap.add_argument("--check", action="store_true", help="compare with the files instead of writing")
    args = ap.parse_args(argv)
    models = build_models()
    index = {
        "frame": "local",
        "units": "mm",
        "format": FORMAT,
        "axis": "+z; working tip at the origin, proximal end toward +z",
        "models": {},
    }
    bad = []
    for name, (mesh, params) in models.items():
        path = args.out / f"{name}.{FORMAT}"
        if args.check:
            if not path.exists():
                bad.append(f"{name}: missing")
                continue
            old = read_mesh(path)
            if len(old.vertices) != len(mesh.vertices) or not np.allclose(
                old.vertices, mesh.vertices, atol=1e-6
            ):
                bad.append(f"{name}: differs")
        else:
            write_mesh(mesh, path, frame="local", units="mm", extra={"name": name, **params})
            print(
                f"wrote {path.name}: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces, "
                f"{path.stat().st_size / 1024:.0f} KiB"
            )
        index["models"][name] = {"file": path.name, "parameters": params, **summary(mesh)}
    if args.check:
        print("\n".join(bad) if bad else "all models up to date")
        return 1 if bad else 0
    (args.out / "models.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"wrote {args.out / 'models.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
