"""The Volume type: validation errors and index <-> LPS round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from planner.errors import CodedWarning, GeometryError
from planner.volume import (
    LPS_FROM_RAS,
    RAS_FROM_LPS,
    Provenance,
    Volume,
    check_points,
    decompose_affine,
    grid_affine,
    make_affine,
    rotation_matrix,
)

VARIANTS = [
    dict(),
    dict(left_handed=True),
    dict(spacing=(0.3, 4.0, 1.7), angles=(80.0, -33.0, 140.0)),
    dict(spacing=(2.0, 2.0, 2.0), angles=(0, 0, 0), origin=(0, 0, 0), left_handed=True),
]


@pytest.mark.parametrize("kw", VARIANTS)
def test_index_lps_round_trip(oblique, kw, rng):
    A = oblique(**kw)
    vol = Volume(np.zeros((5, 6, 7), np.int16), A)
    ijk = rng.uniform(-3, 10, size=(50, 3))
    lps = vol.lps_from_index(ijk)
    np.testing.assert_allclose(vol.index_from_lps(lps), ijk, atol=1e-9)
    s, R, o = decompose_affine(A)
    np.testing.assert_allclose(make_affine(s, R, o), A, atol=1e-12)
    np.testing.assert_allclose(vol.spacing, kw.get("spacing", (0.7, 1.1, 2.3)))
    assert vol.is_left_handed == kw.get("left_handed", False)
    # voxel centres agree with lps_from_index
    centres = vol.voxel_centres_lps()
    np.testing.assert_allclose(centres[2, 3, 4], vol.lps_from_index(np.array([2.0, 3, 4]))[0])
    # the box holds every centre
    b = vol.bounds_lps()
    flat = centres.reshape(-1, 3)
    assert np.all(flat >= b[0] - 1e-9) and np.all(flat <= b[1] + 1e-9)


def test_ras_lps_is_an_involution():
    np.testing.assert_array_equal(RAS_FROM_LPS @ LPS_FROM_RAS, np.eye(4))
    p = np.array([1.0, 2.0, 3.0, 1.0])
    np.testing.assert_array_equal(RAS_FROM_LPS @ p, [-1, -2, 3, 1])


@pytest.mark.parametrize(
    "array, A, code",
    [
        (np.zeros((2, 2)), np.eye(4), "PLN-GEO-003"),
        (np.zeros((2, 0, 2)), np.eye(4), "PLN-GEO-003"),
        (np.zeros((2, 2, 2)), np.eye(3), "PLN-GEO-001"),
        (np.zeros((2, 2, 2)), np.full((4, 4), np.nan), "PLN-GEO-001"),
        (np.zeros((2, 2, 2)), make_affine((1, 0, 1)), "PLN-GEO-002"),
        (np.zeros((2, 2, 2)), np.array([[1, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]),
         "PLN-GEO-001"),
    ],
)
def test_validation_errors(array, A, code):
    with pytest.raises(GeometryError) as e:
        Volume(array, A)
    assert e.value.code == code


def test_bad_bottom_row_and_modality():
    A = np.eye(4)
    A[3, 0] = 1
    with pytest.raises(GeometryError):
        Volume(np.zeros((2, 2, 2)), A)
    with pytest.raises(GeometryError) as e:
        Volume(np.zeros((2, 2, 2)), np.eye(4), "PET")
    assert e.value.code == "PLN-GEO-003"


def test_check_points():
    assert check_points(np.array([1.0, 2, 3])).shape == (1, 3)
    with pytest.raises(GeometryError) as e:
        check_points(np.zeros((4, 2)))
    assert e.value.code == "PLN-GEO-005"


def test_grid_affine_centre_and_rotation():
    R = rotation_matrix("z", 90)
    np.testing.assert_allclose(R @ [1, 0, 0], [0, 1, 0], atol=1e-12)
    A = grid_affine((5, 5, 5), (1.0, 2.0, 3.0), np.array([10.0, 20, 30]), R)
    vol = Volume(np.zeros((5, 5, 5)), A)
    np.testing.assert_allclose(vol.lps_from_index(np.array([2.0, 2, 2]))[0], [10, 20, 30])


def test_with_array_and_same_grid(oblique):
    vol = Volume(np.zeros((3, 3, 3), np.int16), oblique())
    vol.provenance.warn("PLN-W-GEO-001", "x")
    other = vol.with_array(np.ones((3, 3, 3), np.uint16), "LABEL")
    assert other.same_grid(vol) and other.modality == "LABEL"
    other.provenance.warnings.clear()
    assert len(vol.provenance.warnings) == 1  # deep copy


def test_provenance_json_round_trip():
    p = Provenance(source_files=["a.dcm"], series_uid="1.2", corrections=[{"type": "x"}])
    p.warn("PLN-W-DCM-004", "dup", files=["b.dcm"])
    d = json.loads(json.dumps(p.to_dict()))
    q = Provenance.from_dict(d)
    assert q.to_dict() == p.to_dict()
    assert isinstance(q.warnings[0], CodedWarning)


def test_describe_is_json_ready(oblique):
    vol = Volume(np.zeros((2, 3, 4), np.float32), oblique(left_handed=True), "MR")
    d = json.loads(json.dumps(vol.describe()))
    assert d["shape"] == [2, 3, 4] and d["left_handed"] is True


def test_identical_warnings_are_recorded_once():
    from planner.volume import Provenance

    p = Provenance()
    p.warn("PLN-W-CT-001", "metal saturates", voxels=10)
    p.warn("PLN-W-CT-001", "metal saturates", voxels=10)
    p.warn("PLN-W-CT-001", "metal saturates", voxels=11)
    assert [w.details["voxels"] for w in p.warnings] == [10, 11]
