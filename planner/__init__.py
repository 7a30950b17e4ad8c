"""Procedure-planning geometry engine for percutaneous cement augmentation of vertebrae in
spines that already carry surgical hardware.

One frame inside: patient LPS, millimetres.  Subpackages: ``planner.io`` (image I/O),
``planner.labels`` (label registry and external label tables), ``planner.phantom``
(instrumented-spine phantom generator), ``planner.meshing`` / ``planner.render`` (meshes and
off-screen rendering), ``planner.instruments`` (needles, cannulas, curved needles).
"""

__version__ = "0.1.0"
