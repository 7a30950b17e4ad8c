"""The fast whole-volume helpers give scipy's answers (holes, centroids) and the
cell-centred resampling the work grid assumes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from planner.segment.morph import centroids, fill_holes, resample_linear, resample_nearest

_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[:, :, 1] = ndi.generate_binary_structure(2, 1)


@pytest.mark.parametrize("structure", [None, np.ones((3, 3, 3), bool), _IN_PLANE])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fill_holes_matches_scipy(structure, seed):
    rng = np.random.default_rng(seed)
    m = np.zeros((34, 31, 27), bool)
    # shells with gaps and random clutter, away from and touching the border
    m[4:30, 2:25, 6:27] = rng.random((26, 23, 21)) > 0.45
    m = ndi.binary_dilation(m, iterations=1) ^ (rng.random(m.shape) > 0.8)
    assert np.array_equal(fill_holes(m, structure), ndi.binary_fill_holes(m, structure))


def test_fill_holes_2d_and_empty():
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[3:6, 3:6] = False
    assert fill_holes(ring)[4, 4] and fill_holes(ring).sum() == 25
    assert not fill_holes(np.zeros((5, 5, 5), bool)).any()
    # a closed box touching every face: the inside is a hole only for scipy's definition too
    box = np.ones((6, 6, 6), bool)
    box[2:4, 2:4, 2:4] = False
    assert np.array_equal(fill_holes(box), ndi.binary_fill_holes(box))


def test_centroids_match_scipy_and_mark_missing():
    rng = np.random.default_rng(3)
    lab, n = ndi.label(rng.random((30, 20, 25)) > 0.7)
    ids = list(range(0, n + 3))
    got = centroids(lab, ids)
    ref = np.array(ndi.center_of_mass(lab > 0, lab, list(range(1, n + 1))))
    assert np.allclose(got[1 : n + 1], ref)
    assert np.isnan(got[0]).all() and np.isnan(got[n + 1 :]).all()


def test_resample_is_cell_centred():
    # a linear ramp along each axis stays the ramp of the cell centres (no corner alignment)
    n_src, n_dst = 10, 7
    x = np.arange(n_src, dtype=np.float32)
    for axis in range(3):
        shape = [4, 5, 6]
        shape[axis] = n_src
        arr = np.broadcast_to(x.reshape([-1 if a == axis else 1 for a in range(3)]), shape)
        out_shape = list(shape)
        out_shape[axis] = n_dst
        out = resample_linear(arr, out_shape)
        want = np.clip((np.arange(n_dst) + 0.5) * n_src / n_dst - 0.5, 0, n_src - 1)
        got = np.moveaxis(out, axis, 0)[:, 0, 0]
        assert np.allclose(got, want, atol=1e-5)
    lab = np.arange(7)[:, None, None] * np.ones((7, 2, 3), np.uint16)
    up = resample_nearest(lab, (10, 2, 3))
    # cell i of the fine grid takes the coarse cell containing its centre
    assert up[:, 0, 0].tolist() == [int((i + 0.5) * 7 / 10) for i in range(10)]
    assert up.dtype == lab.dtype


@pytest.mark.parametrize("size", [(3, 3, 3), (3, 3, 1), (5, 1, 3), (1, 1, 7)])
def test_box_morphology_matches_scipy(size):
    from planner.segment.morph import dilate_box, erode_box

    m = np.random.default_rng(5).random((20, 17, 15)) > 0.3
    st = np.ones(size, bool)
    assert np.array_equal(dilate_box(m, size), ndi.binary_dilation(m, st))
    for border in (0, 1):
        assert np.array_equal(erode_box(m, size, border), ndi.binary_erosion(m, st, border_value=border))


def test_cross_erosion_matches_scipy_and_box_rejects_even():
    from planner.segment.morph import dilate_box, erode_cross

    m = np.random.default_rng(6).random((12, 11, 10)) > 0.2
    for border in (0, 1):
        assert np.array_equal(erode_cross(m, border), ndi.binary_erosion(m, border_value=border))
    with pytest.raises(ValueError):
        dilate_box(m, (2, 3, 3))


@pytest.mark.parametrize("seed", range(6))
def test_close_line_is_the_edge_extended_closing(seed):
    from planner.segment.morph import close_line

    rng = np.random.default_rng(seed)
    m = rng.random((13, 11, 40)) > rng.uniform(0.3, 0.8)
    n, axis = int(rng.integers(1, 7)), int(rng.integers(0, 3))
    pad = [(0, 0)] * 3
    pad[axis] = (n + 1, n + 1)
    line = [1, 1, 1]
    line[axis] = n
    ref = ndi.binary_closing(np.pad(m, pad, mode="edge"), structure=np.ones(line, bool))
    crop = [slice(None)] * 3
    crop[axis] = slice(n + 1, -(n + 1))
    assert np.array_equal(close_line(m, n, axis), ref[tuple(crop)])


def test_bbox_and_label_max_match_scipy():
    from planner.segment.morph import bbox, label_max

    rng = np.random.default_rng(8)
    m = np.zeros((30, 25, 20), bool)
    m[3:17, 9:10, 4:19] = rng.random((14, 1, 15)) > 0.5
    assert bbox(m) == ndi.find_objects(m.view(np.uint8))[0]
    assert bbox(m[:, 9, :]) == ndi.find_objects(m[:, 9, :].view(np.uint8))[0]
    with pytest.raises(ValueError):
        bbox(np.zeros((3, 3, 3), bool))
    lab, n = ndi.label(rng.random((20, 20, 20)) > 0.6)
    vals = rng.normal(size=lab.shape)
    got = label_max(vals, lab, n + 2)
    assert np.allclose(got[:n], ndi.maximum(vals, lab, np.arange(1, n + 1)))
    assert np.all(got[n:] == 0)
