"""Label meshes and signed distance fields on oblique, anisotropic grids (analytic sphere)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from planner.labels.registry import LABEL_IDS
from planner.meshing import read_mesh
from planner.segment.fields import (
    DistanceField,
    label_mesh,
    signed_distance_field,
    write_label_meshes,
)
from planner.volume import Volume, grid_affine, rotation_matrix

CENTRE = np.array([12.0, -30.0, 85.0])
RADIUS = 14.0


def _sphere_labels(left_handed: bool = False, spacing=(0.8, 1.1, 1.7)) -> Volume:
    R = rotation_matrix("x", 17.0) @ rotation_matrix("y", -9.0) @ rotation_matrix("z", 31.0)
    if left_handed:
        R = R @ np.diag([1.0, 1.0, -1.0])
    shape = tuple(int(np.ceil(50.0 / s)) for s in spacing)
    A = grid_affine(shape, spacing, CENTRE + [1.3, -0.7, 2.1], R)
    vol = Volume(np.zeros(shape, np.uint16), A, "LABEL")
    d = np.linalg.norm(vol.voxel_centres_lps() - CENTRE, axis=-1)
    vol.array[d <= RADIUS] = LABEL_IDS["thecal_sac"]
    vol.array[(d > RADIUS) & (d <= RADIUS + 3) & (vol.voxel_centres_lps()[..., 2] > 95)] = (
        LABEL_IDS["fluid_collection"])
    return vol


@pytest.fixture(scope="module")
def sphere():
    return _sphere_labels()


@pytest.mark.parametrize("left_handed", [False, True])
def test_mesh_vertices_on_sphere_in_lps(left_handed):
    vol = _sphere_labels(left_handed)
    mesh = label_mesh(vol, "thecal_sac")
    r = np.linalg.norm(mesh.vertices - CENTRE, axis=1)
    err = np.abs(r - RADIUS)
    print(f"mesh radial error: max {err.max():.3f} mean {err.mean():.3f} mm "
          f"(max spacing {vol.spacing.max():.2f})")
    assert err.max() <= 0.5 * vol.spacing.max()
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward normals
    assert abs(mesh.volume / (4 / 3 * np.pi * RADIUS**3) - 1) < 0.05


def test_sdf_matches_analytic_distance(sphere):
    sdf = signed_distance_field(sphere, ["thecal_sac"])
    assert sdf.array.dtype == np.float32 and sdf.same_grid(sphere)
    true = np.linalg.norm(sphere.voxel_centres_lps() - CENTRE, axis=-1) - RADIUS
    near = np.abs(true) < 10.0
    err = np.abs(sdf.array[near] - true[near])
    print(f"SDF error within 10 mm of the surface: max {err.max():.3f} mean {err.mean():.3f} mm")
    assert err.max() <= 0.5 * sphere.spacing.max()
    assert (sdf.array[true < -1] < 0).all() and (sdf.array[true > 1] > 0).all()


def test_distance_field_query(sphere):
    df = DistanceField.from_labels(sphere, "thecal_sac")
    rng = np.random.default_rng(0)
    pts = CENTRE + rng.uniform(-20, 20, size=(20_000, 3))
    true = np.linalg.norm(pts - CENTRE, axis=1) - RADIUS
    got = df.query(pts)
    near = np.abs(true) < 8
    err = np.abs(got[near] - true[near])
    print(f"DistanceField error: max {err.max():.3f} mean {err.mean():.3f} mm")
    assert err.max() <= 0.5 * sphere.spacing.max()
    # outside the grid: positive and growing with distance
    far = df.query(np.array([CENTRE + [200.0, 0, 0], CENTRE + [300.0, 0, 0]]))
    assert far[0] > 150 and far[1] > far[0]


def test_distance_field_million_points_runs(sphere):
    df = DistanceField.from_labels(sphere, "thecal_sac")
    pts = CENTRE + np.random.default_rng(1).uniform(-30, 30, size=(1_000_000, 3))
    t = time.perf_counter()
    out = df.query(pts)
    dt = time.perf_counter() - t
    print(f"DistanceField.query of 1e6 points: {dt:.3f} s")
    assert out.shape == (1_000_000,) and np.isfinite(out).all()


def test_write_label_meshes(sphere, tmp_path):
    written = write_label_meshes(sphere, tmp_path / "meshes", fmt="vtp")
    assert set(written) == {"thecal_sac", "fluid_collection"}
    m = read_mesh(written["thecal_sac"])
    r = np.linalg.norm(m.vertices - CENTRE, axis=1)
    assert np.abs(r - RADIUS).max() <= 0.5 * sphere.spacing.max()
    assert m.metadata.get("frame") == "LPS" and m.metadata.get("units") == "mm"


def test_absent_structure():
    vol = _sphere_labels()
    assert len(label_mesh(vol, "aorta").faces) == 0
    assert np.isposinf(signed_distance_field(vol, "aorta").array).all()
