"""Shared fixtures: the real-data folder (skipped when absent) and small phantoms."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """``../shared/data`` beside the checkout, or ``$PLANNER_SHARED_DATA`` when set."""
    env = os.environ.get("PLANNER_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """Return a function ``get(name) -> Path`` that skips the test when the folder is absent."""

    def get(name: str) -> Path:
        p = shared_data_root() / name
        if not p.exists():
            pytest.skip(
                f"real data folder {name!r} not found at {p}; it lives in ../shared/data "
                "beside the checkout (set PLANNER_SHARED_DATA to point elsewhere)"
            )
        return p

    return get


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def oblique_affine(spacing=(0.7, 1.1, 2.3), angles=(12.0, -7.0, 25.0), origin=(-40.5, 17.25, 103.0),
                   left_handed=False) -> np.ndarray:
    """An oblique, anisotropic ``lps_from_ijk`` (optionally left-handed) for tests."""
    from planner.volume import make_affine, rotation_matrix

    R = rotation_matrix("x", angles[0]) @ rotation_matrix("y", angles[1]) @ rotation_matrix("z", angles[2])
    if left_handed:
        R = R @ np.diag([1.0, 1.0, -1.0])
    return make_affine(spacing, R, origin)


@pytest.fixture
def oblique():
    return oblique_affine


@pytest.fixture(scope="session")
def case_example_1mm(tmp_path_factory):
    """The case-example phantom at 1.0 mm (CT, labels, 1.0 mm meshes, case.json), made once
    per test session and shared by the solver, schema and CLI tests (read only)."""
    from planner.phantom import generate, get_preset, write_case
    from planner.phantom.spec import CaseSpec

    d = get_preset("case_example").to_dict()
    d["imaging"]["spacing_mm"] = [1.0, 1.0, 1.0]
    out = tmp_path_factory.mktemp("case_example_1mm")
    write_case(generate(CaseSpec.from_dict(d)), out, dicom=False, mesh_spacing_mm=1.0)
    return out


@pytest.fixture(scope="session")
def case_example_scene(case_example_1mm):
    """A solver Scene of :func:`case_example_1mm` (shared: its caches speed later tests)."""
    from planner.solve.scene import Scene

    return Scene.from_phantom_case(case_example_1mm)
