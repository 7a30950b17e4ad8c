"""Rasteriser: physical placement on oblique / anisotropic / left-handed grids, partial
volume, priorities, parts, and coarse-to-fine == brute force."""

from __future__ import annotations

import numpy as np
import pytest

from planner.labels.registry import label_id
from planner.phantom import sdf as S
from planner.phantom.model import Structure
from planner.phantom.rasterize import rasterize, scene_grid

VALUES = {"air": -1000.0, "soft_tissue": 40.0, "cortical_bone": 1200.0, "cancellous_bone": 200.0, "titanium": 3000.0}


def value(t: str, p: dict) -> float:
    return p.get("override", VALUES[t])


def _grid(oblique_affine, left_handed=False, spacing=(0.7, 0.9, 1.3)):
    A = oblique_affine(spacing=spacing, origin=(0, 0, 0), left_handed=left_handed)
    shape = (70, 60, 40)
    # centre the grid on the LPS origin
    centre_idx = (np.array(shape) - 1) / 2
    A[:3, 3] = -A[:3, :3] @ centre_idx
    return shape, A


def _centres(shape, A):
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return idx, idx @ A[:3, :3].T + A[:3, 3]


@pytest.mark.parametrize("left_handed", [False, True])
def test_sphere_lands_where_it_is_in_lps(oblique, left_handed):
    shape, A = _grid(oblique, left_handed)
    c = np.array([3.0, -4.0, 5.0])
    st = Structure("aorta", "soft_tissue", S.sphere(c, 10.0), 50)
    res = rasterize([st], shape, A, {"ct": value})
    idx, pts = _centres(shape, A)
    inside = np.linalg.norm(pts - c, axis=1) < 10.0
    lab = res.labels.reshape(-1)
    assert np.array_equal(lab == label_id("aorta"), inside)
    # partial-volume image integrates to the analytic volume (within 1 %)
    vox = float(np.prod(np.linalg.norm(A[:3, :3], axis=0)))
    frac = (res.images["ct"] + 1000.0) / 1040.0
    vol = frac.sum() * vox
    assert vol == pytest.approx(4 / 3 * np.pi * 1000, rel=0.01)


def test_coarse_to_fine_matches_brute_force(oblique):
    shape, A = _grid(oblique)
    sts = [
        Structure("soft_tissue", "soft_tissue", S.box([0, 0, 0], [18, 14, 10]), 2),
        Structure("vertebra_L4", "cortical_bone", S.superellipse_prism([1, 2, 0], 12, 9, 7), 60,
                  parts={"L4_body": S.superellipse_prism([1, 2, 0], 12, 9, 7)}, cortex_mm=1.0,
                  inner_tissue="cancellous_bone"),
        Structure("screw_L4_left", "titanium", S.cylinder([5, 15, 0], [5, -2, 0], 3.0), 100),
    ]
    fast = rasterize(sts, shape, A, {"ct": value}, {"metal": ("titanium",)})
    brute = rasterize(sts, shape, A, {"ct": value}, {"metal": ("titanium",)}, levels=(1,))
    assert np.array_equal(fast.labels, brute.labels)
    np.testing.assert_allclose(fast.images["ct"], brute.images["ct"], atol=1e-3)
    np.testing.assert_allclose(fast.fractions["metal"], brute.fractions["metal"], atol=1e-6)
    assert sum(s["exact_evals"] for s in fast.stats.values()) < 0.6 * sum(
        s["exact_evals"] for s in brute.stats.values()
    )


def test_priority_parts_and_cortex(oblique):
    shape, A = _grid(oblique, spacing=(0.5, 0.5, 0.5))
    body = S.box([0, 0, 0], [8, 8, 8])
    ped = S.box([0, 12, 0], [3, 5, 3])
    st = Structure("vertebra_L4", "cortical_bone", S.union(body, ped), 60,
                   parts={"L4_body": body, "L4_pedicle_left": ped}, cortex_mm=1.5, inner_tissue="cancellous_bone")
    screw = Structure("screw_L4_left", "titanium", S.cylinder([0, 20, 0], [0, 0, 0], 2.0), 100)
    res = rasterize([screw, st], shape, A, {"ct": value})  # list order must not matter
    idx, pts = _centres(shape, A)
    lab = res.labels.reshape(-1)
    img = res.images["ct"].reshape(-1)

    def at(p):
        return int(np.argmin(np.linalg.norm(pts - p, axis=1)))

    assert lab[at([0, 0, 0])] == label_id("screw_L4_left")  # hardware on top
    assert lab[at([5, -5, 0])] == label_id("L4_body")
    assert lab[at([2.5, 12, 2.5])] == label_id("L4_pedicle_left")
    assert img[at([5, -5, 0])] == pytest.approx(200.0, abs=1)  # cancellous interior
    assert img[at([7.6, -5, 0])] == pytest.approx(1200.0, abs=100)  # inside the 1.5 mm cortex
    assert img[at([0, 0, 0])] == pytest.approx(3000.0, abs=1)


def test_scene_grid_orientation_and_cover():
    sts = [Structure("aorta", "soft_tissue", S.box([10, -20, 30], [15, 10, 40]), 1)]
    shape, A = scene_grid(sts, None, (0.8, 0.8, 1.5), rotation_deg=(10, 0, 20), left_handed=True)
    R = A[:3, :3] / np.linalg.norm(A[:3, :3], axis=0)
    assert np.allclose(R.T @ R, np.eye(3))
    assert np.linalg.det(R) == pytest.approx(-1.0)
    corners = np.array([[x, y, z] for x in (-5, 25) for y in (-30, -10) for z in (-10, 70)], float)
    ijk = (corners - A[:3, 3]) @ np.linalg.inv(A[:3, :3]).T
    assert np.all(ijk > -1.0) and np.all(ijk < np.array(shape))
