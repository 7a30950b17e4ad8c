"""Label maps resampled onto the image grid in physical space, never by index (row 25)."""

from __future__ import annotations

import numpy as np
import pytest

from planner.errors import GeometryError
from planner.io import read_volume, resample_to
from planner.labels.external import totalseg_id
from planner.volume import Volume, make_affine


def _box_labels(A: np.ndarray, shape, box_lps) -> Volume:
    """A label map on grid ``A`` with label 7 inside an LPS box ((3,) lo, (3,) hi)."""
    vol = Volume(np.zeros(shape, np.uint16), A, "LABEL")
    pts = vol.voxel_centres_lps()
    inside = np.all((pts >= box_lps[0]) & (pts <= box_lps[1]), axis=-1)
    vol.array[inside] = 7
    return vol


def test_flipped_and_oblique_labels_land_in_physical_place(oblique):
    box = (np.array([-4.5, -3.5, -5.5]), np.array([4.5, 5.5, 3.5]))
    image = Volume(np.zeros((20, 18, 16), np.int16),
                   make_affine((1.0, 1.0, 1.0), np.eye(3), (-10, -9, -8)), "CT")
    # labels stored flipped (LAS-like, left-handed) and on a finer oblique grid
    flipped = make_affine((1.0, 1.0, 1.0), np.diag([1.0, -1.0, 1.0]), (-10, 8, -8))
    for A, shape in ((flipped, (20, 18, 16)),
                     (oblique(spacing=(0.5, 0.6, 0.7), origin=(-14, -14, -14)), (60, 50, 45))):
        labels = _box_labels(A, shape, box)
        out = resample_to(image, labels)
        assert out.same_grid(image) and out.array.dtype == np.uint16
        expect = _box_labels(image.lps_from_ijk, image.shape, box).array
        # nearest neighbour: disagreements only within one source voxel of the box surface
        bad = image.voxel_centres_lps()[out.array != expect]
        d_surface = np.minimum(np.abs(bad - box[0]), np.abs(bad - box[1])).min(axis=1)
        assert bad.shape[0] < 0.1 * out.array.size and np.all(d_surface <= 0.75)
        assert abs(int((out.array == 7).sum()) - int((expect == 7).sum())) < 0.15 * (expect == 7).sum()
        assert set(np.unique(out.array)) <= {0, 7}
        assert [w.code for w in out.provenance.warnings] == ["PLN-W-LBL-001"]
        assert out.provenance.corrections[-1]["type"] == "resample"
    # the flipped map matched by array index would be wrong
    labels = _box_labels(flipped, (20, 18, 16), box)
    expect = _box_labels(image.lps_from_ijk, image.shape, box).array
    assert (labels.array == expect).mean() < 0.97


def test_same_grid_is_a_copy_without_warning():
    image = Volume(np.zeros((4, 4, 4), np.int16), np.eye(4), "CT")
    labels = Volume(np.ones((4, 4, 4), np.uint8), np.eye(4), "LABEL")
    out = resample_to(image, labels)
    assert out.provenance.warnings == [] and out.array is not labels.array


def test_no_overlap_is_an_error():
    image = Volume(np.zeros((4, 4, 4), np.int16), np.eye(4), "CT")
    labels = Volume(np.ones((4, 4, 4), np.uint8), make_affine((1, 1, 1), None, (100, 0, 0)), "LABEL")
    with pytest.raises(GeometryError) as e:
        resample_to(image, labels)
    assert e.value.code == "PLN-GEO-004"


def test_linear_order_for_images():
    A = make_affine((1.0, 1.0, 1.0))
    src = Volume(np.arange(1000, dtype=np.float32).reshape(10, 10, 10), A, "CT")
    tgt = Volume(np.zeros((5, 5, 5), np.int16), make_affine((1, 1, 1), None, (2.5, 2.5, 2.5)), "CT")
    out = resample_to(tgt, src, order=1)
    expect = src.array[2:7, 2:7, 2:7] + (100 + 10 + 1) * 0.5
    np.testing.assert_allclose(out.array, expect, atol=1e-3)


@pytest.mark.shared_data
def test_real_totalseg_T12_lands_on_bone_only_in_physical_space(shared_data):
    folder = shared_data("thoracolumbar-ct-dicom")
    image = read_volume(folder / "dicom")
    labels = read_volume(folder / "totalseg_labels.nii.gz")
    assert labels.modality == "LABEL" and labels.is_left_handed  # stored LAS
    t12 = totalseg_id("total", "vertebrae_T12")
    out = resample_to(image, labels)
    hu = image.array[out.array == t12]
    assert hu.size > 5000
    assert np.median(hu) > 150 and (hu > 0).mean() > 0.9
    # matching by array index (same shape, other orientation) misses the bone
    assert labels.shape == image.shape
    by_index = image.array[labels.array == t12]
    assert np.median(by_index) < 150 or (by_index > 0).mean() < 0.6
