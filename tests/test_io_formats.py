"""NIfTI / NRRD / MetaImage round trips, RAS<->LPS at the boundary, qform/sform (rows 22-23, 30)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from planner.errors import GeometryError, InputError
from planner.io import read_volume, write_volume
from planner.io.formats import guess_modality
from planner.volume import RAS_FROM_LPS, Volume, make_affine

SUFFIXES = [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"]


def _volumes(oblique):
    rng = np.random.default_rng(11)
    ct = rng.integers(-1024, 3000, size=(7, 5, 4)).astype(np.int16)
    lab = rng.integers(0, 600, size=(7, 5, 4)).astype(np.uint16)
    flt = rng.normal(size=(7, 5, 4)).astype(np.float32)
    return [
        ("ct-oblique", Volume(ct, oblique(), "CT")),
        ("ct-left-handed", Volume(ct, oblique(left_handed=True), "CT")),
        ("labels-aniso", Volume(lab, oblique(spacing=(0.3, 2.0, 5.5), angles=(0, 90, 0)), "LABEL")),
        ("float", Volume(flt, make_affine((1.0, 1.0, 1.0), np.diag([-1.0, 1.0, 1.0]), (1, 2, 3)), "MR")),
    ]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_exact(tmp_path, oblique, suffix):
    for name, vol in _volumes(oblique):
        path = write_volume(vol, tmp_path / f"{name}{suffix}")
        back = read_volume(path)
        np.testing.assert_allclose(back.lps_from_ijk, vol.lps_from_ijk, atol=1e-6, err_msg=name)
        assert back.array.dtype == vol.array.dtype, name
        np.testing.assert_array_equal(back.array, vol.array, err_msg=name)
        assert back.modality == vol.modality
        assert back.is_left_handed == vol.is_left_handed
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_nifti_is_ras_on_disk(tmp_path, oblique):
    vol = Volume(np.zeros((3, 4, 5), np.int16), oblique(), "CT")
    write_volume(vol, tmp_path / "a.nii.gz")
    img = nib.load(tmp_path / "a.nii.gz")
    np.testing.assert_allclose(img.affine, RAS_FROM_LPS @ vol.lps_from_ijk, atol=1e-5)
    assert int(img.header["sform_code"]) > 0 and int(img.header["qform_code"]) > 0


def test_simpleitk_reads_our_nrrd_and_mha_in_lps(tmp_path, oblique):
    sitk = pytest.importorskip("SimpleITK")
    vol = Volume(np.arange(60, dtype=np.int16).reshape(3, 4, 5), oblique(), "CT")
    for suf in (".nrrd", ".mha", ".nii.gz"):
        write_volume(vol, tmp_path / f"x{suf}")
        img = sitk.ReadImage(str(tmp_path / f"x{suf}"))
        p = img.TransformIndexToPhysicalPoint((2, 3, 4))
        np.testing.assert_allclose(p, vol.lps_from_index(np.array([2.0, 3, 4]))[0], atol=1e-4)
        assert sitk.GetArrayFromImage(img)[4, 3, 2] == vol.array[2, 3, 4]


def _nifti(path, data, sform=None, scode=0, qform=None, qcode=0, slope=None, inter=None):
    img = nib.Nifti1Image(data, None)
    if sform is not None:
        img.set_sform(sform, code=scode)
    else:
        img.header["sform_code"] = 0
    if qform is not None:
        img.set_qform(qform, code=qcode)
    else:
        img.header["qform_code"] = 0
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))


def test_qform_sform_differ_warns_and_uses_sform(tmp_path):
    s = np.diag([-1.0, -1.0, 2.0, 1.0])
    s[:3, 3] = [10, 20, 30]
    q = np.diag([-1.0, -1.0, 2.0, 1.0])
    q[:3, 3] = [15, 20, 30]
    _nifti(tmp_path / "d.nii", np.zeros((3, 3, 3), np.int16), sform=s, scode=2, qform=q, qcode=1)
    vol = read_volume(tmp_path / "d.nii")
    w = [w for w in vol.provenance.warnings if w.code == "PLN-W-NII-001"]
    assert w and w[0].details["used"] == "sform" and "sform" in w[0].message
    np.testing.assert_allclose(vol.lps_from_ijk, RAS_FROM_LPS @ s)


def test_qform_only_is_used(tmp_path):
    q = np.diag([-1.0, -1.0, 2.0, 1.0])
    _nifti(tmp_path / "q.nii", np.zeros((3, 3, 3), np.int16), qform=q, qcode=1)
    vol = read_volume(tmp_path / "q.nii")
    np.testing.assert_allclose(vol.lps_from_ijk, RAS_FROM_LPS @ q, atol=1e-6)
    assert vol.provenance.extra["nifti_form"] == "qform"


def test_neither_form_valid_is_an_error(tmp_path):
    _nifti(tmp_path / "n.nii", np.zeros((3, 3, 3), np.int16))
    with pytest.raises(GeometryError) as e:
        read_volume(tmp_path / "n.nii")
    assert e.value.code == "PLN-NII-001"


def test_nifti_scaling_applied(tmp_path):
    raw = np.arange(27, dtype=np.int16).reshape(3, 3, 3)
    _nifti(tmp_path / "s.nii", raw, sform=np.eye(4), scode=1, slope=2.0, inter=-1024.0)
    vol = read_volume(tmp_path / "s.nii")
    np.testing.assert_array_equal(vol.array, raw * 2 - 1024)
    assert np.issubdtype(vol.array.dtype, np.integer)
    _nifti(tmp_path / "f.nii", raw, sform=np.eye(4), scode=1, slope=0.5, inter=0.25)
    vol = read_volume(tmp_path / "f.nii")
    np.testing.assert_array_equal(vol.array, raw * 0.5 + 0.25)


def test_sidecar_provenance_round_trip(tmp_path):
    vol = Volume(np.zeros((2, 2, 2), np.uint16), np.eye(4), "LABEL")
    vol.provenance.frame_of_reference_uid = "1.2.3"
    vol.provenance.warn("PLN-W-LBL-001", "resampled")
    write_volume(vol, tmp_path / "l.nrrd")
    side = json.loads((tmp_path / "l.nrrd.provenance.json").read_text())
    assert side["modality"] == "LABEL"
    back = read_volume(tmp_path / "l.nrrd")
    assert back.provenance.frame_of_reference_uid == "1.2.3"
    assert [w.code for w in back.provenance.warnings] == ["PLN-W-LBL-001"]
    assert back.provenance.source_files == ["l.nrrd"]


def test_missing_and_unknown(tmp_path):
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "missing.nii.gz")
    assert e.value.code == "PLN-IN-001"
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "x.png")
    assert e.value.code == "PLN-IN-002"
    with pytest.raises(InputError) as e:
        write_volume(Volume(np.zeros((2, 2, 2)), np.eye(4), "OTHER"), tmp_path / "y.tif")
    assert e.value.code == "PLN-IN-002"


def test_memory_limit_from_header(tmp_path):
    write_volume(Volume(np.zeros((8, 8, 8), np.float32), np.eye(4), "OTHER"), tmp_path / "a.nii")
    write_volume(Volume(np.zeros((8, 8, 8), np.float32), np.eye(4), "OTHER"), tmp_path / "a.mha")
    for name in ("a.nii", "a.mha"):
        with pytest.raises(InputError) as e:
            read_volume(tmp_path / name, max_bytes=1000)
        assert e.value.code == "PLN-IN-004"


def test_guess_modality():
    assert guess_modality(np.array([0, 1, 2, 32], np.uint8).reshape(1, 2, 2)) == "LABEL"
    assert guess_modality(np.linspace(-1024, 2000, 1000).reshape(10, 10, 10)) == "CT"
    assert guess_modality(np.linspace(0, 1, 1000).reshape(10, 10, 10)) == "OTHER"


@pytest.mark.shared_data
def test_real_lumbar_nifti_pir(shared_data):
    folder = shared_data("lumbar-ct-L2-L4")
    vol = read_volume(folder / "sub-ct_label-22_ct.nii.gz")
    assert vol.shape == (73, 47, 73) and vol.modality == "CT"
    np.testing.assert_allclose(vol.spacing, 1.5, atol=1e-5)
    # PIR: i -> posterior (+y LPS), j -> inferior (-z), k -> right (-x)
    np.testing.assert_allclose(vol.direction, [[0, 0, -1], [1, 0, 0], [0, -1, 0]], atol=1e-5)
    assert vol.array.min() < -900 and vol.array.max() > 1000
    mask = read_volume(folder / "sub-ct_seg-vert_label-22_msk.nii.gz")
    assert mask.modality == "LABEL" and mask.same_grid(vol)
    assert set(np.unique(mask.array)) == {0, 21, 22, 23}
    # bone under the vertebra mask
    assert np.median(vol.array[mask.array > 0]) > 150
    # L2 is above (superior, +z in LPS) L4
    z = {lab: vol.lps_from_index(np.argwhere(mask.array == lab))[:, 2].mean() for lab in (21, 23)}
    assert z[21] > z[23] + 20
