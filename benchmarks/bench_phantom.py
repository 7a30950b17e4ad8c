"""Benchmark: time and peak memory to generate a phantom preset (CT + labels).

Each measurement runs in a fresh Python process so peak RSS is that run's own.  The same
run also times a brute-force baseline (every voxel of every structure's box evaluated, no
coarse-to-fine refinement) at the first spacing, and prints the speed ratio.

Usage::

    python benchmarks/bench_phantom.py                       # case_example at 0.8 and 0.5 mm
    python benchmarks/bench_phantom.py --spacings 0.8 --repeats 3 --preset t11_l3_laminectomy

Target (issue: foundation): case example at 0.8 mm in under 20 s and 4 GB on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from planner.phantom.generate import generate
from planner.phantom.presets import get_preset
preset, sp, levels = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
spec = get_preset(preset).replace_imaging(spacing_mm=(sp, sp, sp))
t1 = time.perf_counter()
case = generate(spec, levels=tuple(levels) if levels else None)
t2 = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": t2 - t1, "import_s": t1 - t0, "peak_bytes": rss,
                  "shape": list(case.image.shape), "timings": case.timings_s}))
"""


def run(preset: str, spacing: float, levels=None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, preset, str(spacing), json.dumps(levels)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="case_example")
    ap.add_argument("--spacings", type=float, nargs="+", default=[0.8, 0.5])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()

    print(f"preset {args.preset}; {args.repeats} runs per row, each in a fresh process; median shown")
    print(f"{'spacing':>8} {'shape':>18} {'Mvox':>6} {'median_s':>9} {'min_s':>7} {'max_s':>7} "
          f"{'peak_GB':>8} {'scene_s':>8} {'raster_s':>8} {'synth_s':>8}")
    medians = {}
    for sp in args.spacings:
        rows = [run(args.preset, sp) for _ in range(args.repeats)]
        secs = [r["seconds"] for r in rows]
        med = statistics.median(secs)
        medians[sp] = med
        r0 = rows[secs.index(med)]
        mvox = 1e-6 * r0["shape"][0] * r0["shape"][1] * r0["shape"][2]
        peak = max(r["peak_bytes"] for r in rows) / 2**30
        t = r0["timings"]
        print(f"{sp:8.2f} {'x'.join(map(str, r0['shape'])):>18} {mvox:6.1f} {med:9.2f} {min(secs):7.2f} "
              f"{max(secs):7.2f} {peak:8.2f} {t['scene']:8.2f} {t['rasterize']:8.2f} {t['synthesis']:8.2f}")
    if not args.no_baseline:
        sp = args.spacings[0]
        base = [run(args.preset, sp, [1]) for _ in range(max(1, args.repeats // 2))]
        bmed = statistics.median(r["seconds"] for r in base)
        print(f"baseline (brute-force rasterisation, every voxel) at {sp} mm: median {bmed:.2f} s; "
              f"coarse-to-fine is {bmed / medians[sp]:.1f}x faster")
    target = medians.get(0.8)
    if target is not None:
        print(f"target: 0.8 mm under 20 s -> {'met' if target < 20 else 'NOT met'} ({target:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
