"""DICOM reading and writing: every bad-input row the reader handles (bad-inputs.md 1-21, 24).

Small synthetic series are written with pydicom into ``tmp_path``; the helpers below take the
stored pixel values in ``(i, j, k)`` order and per-slice header overrides.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from planner.errors import DicomError, InputError
from planner.io import list_series, read_volume, write_dicom_series
from planner.io.dicom_read import read_dicom_series
from planner.volume import Volume, make_affine, rotation_matrix

CT = "1.2.840.10008.5.1.4.1.1.2"
ECT = "1.2.840.10008.5.1.4.1.1.2.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
NI, NJ, NK = 6, 5, 8  # columns, rows, slices of the default synthetic series
PS = (0.8, 0.6)  # (column spacing along i, row spacing along j)


def codes(vol: Volume) -> list[str]:
    return [w.code for w in vol.provenance.warnings]


def write_slice(path: Path, stored_ij: np.ndarray, *, ipp, iop=(1, 0, 0, 0, 1, 0),
                series_uid: str, instance: int, slope: float = 1.0, intercept: float = -1024.0,
                signed: bool = True, bits_stored: int = 16, image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
                sop_class: str = CT, description: str = "synthetic", modality: str = "CT",
                study_uid: str = "1.2.3.4", for_uid: str = "1.2.3.5", **extra) -> Path:
    """Write one single-frame slice; ``stored_ij`` is (ni, nj) = (cols, rows)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "SECRET^PATIENT"
    ds.PatientID = "SECRET-ID-123"
    ds.PatientBirthDate = "19000101"
    ds.AccessionNumber = "ACC-SECRET"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = for_uid
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.ImageType = list(image_type)
    ds.ImagePositionPatient = [f"{x:.6f}" for x in ipp]
    ds.ImageOrientationPatient = [f"{x:.8f}" for x in iop]
    ds.PixelSpacing = [PS[1], PS[0]]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored_ij.shape[1], stored_ij.shape[0]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    for k, v in extra.items():
        setattr(ds, k, v)
    dt = np.int16 if signed else np.uint16
    ds.PixelData = np.ascontiguousarray(stored_ij.T.astype(dt)).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_series(folder: Path, stored: np.ndarray, *, positions=None, iop=(1, 0, 0, 0, 1, 0),
                 series_uid: str | None = None, instances=None, names=None, per_slice=None,
                 **kw) -> list[Path]:
    """Write ``stored`` (ni, nj, nk) as a series; ``positions`` (nk, 3) default: 2 mm steps
    along the normal from (-10, 20, 30)."""
    folder.mkdir(parents=True, exist_ok=True)
    nk = stored.shape[2]
    iop = np.asarray(iop, float)
    n = np.cross(iop[:3], iop[3:])
    if positions is None:
        positions = np.array([-10.0, 20.0, 30.0]) + np.arange(nk)[:, None] * 2.0 * n
    series_uid = series_uid or generate_uid()
    instances = list(range(1, nk + 1)) if instances is None else instances
    paths = []
    for k in range(nk):
        name = names[k] if names else f"s{k:03d}.dcm"
        extra = dict(kw)
        if per_slice:
            extra.update(per_slice[k])
        paths.append(write_slice(folder / name, stored[:, :, k], ipp=positions[k], iop=iop,
                                 series_uid=series_uid, instance=instances[k], **extra))
    return paths


@pytest.fixture
def stored():
    """Stored values (ni, nj, nk), distinct per voxel."""
    return (np.arange(NI * NJ * NK).reshape(NI, NJ, NK) * 7 + 100).astype(np.int16)


# ---------------------------------------------------------------------------------------------
# clean series
# ---------------------------------------------------------------------------------------------
def test_clean_series_geometry_hu_and_provenance(tmp_path, stored):
    write_series(tmp_path / "s", stored, description="clean")
    vol = read_volume(tmp_path / "s")
    assert vol.shape == (NI, NJ, NK)
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, stored.astype(int) - 1024)
    np.testing.assert_allclose(vol.spacing, [PS[0], PS[1], 2.0])
    np.testing.assert_allclose(vol.origin, [-10, 20, 30])
    np.testing.assert_allclose(vol.direction, np.eye(3))
    assert vol.modality == "CT"
    assert codes(vol) == []
    p = vol.provenance
    assert p.study_uid == "1.2.3.4" and p.frame_of_reference_uid == "1.2.3.5" and p.series_uid
    assert sorted(p.source_files) == [f"s{k:03d}.dcm" for k in range(NK)]
    assert p.extra["transfer_syntax"] == ExplicitVRLittleEndian
    text = json.dumps(p.to_dict(), default=str)
    for secret in ("SECRET", "19000101", "ACC-SECRET"):
        assert secret not in text


def test_single_file_reads_its_series(tmp_path, stored):
    paths = write_series(tmp_path / "s", stored)
    vol = read_volume(paths[3])
    assert vol.shape == (NI, NJ, NK)


def test_missing_path_and_no_series(tmp_path):
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "nope")
    assert e.value.code == "PLN-IN-001"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(DicomError) as e:
        read_volume(tmp_path / "empty")
    assert e.value.code == "PLN-DCM-001"


# ---------------------------------------------------------------------------------------------
# rows 1-3: tilt, uneven spacing, missing slice
# ---------------------------------------------------------------------------------------------
def _linear_field(points: np.ndarray) -> np.ndarray:
    """A linear function of LPS position (linear interpolation reproduces it exactly)."""
    return 3.0 * points[..., 0] - 2.0 * points[..., 1] + 5.0 * points[..., 2] + 40.0


def _series_of_field(folder: Path, positions: np.ndarray, iop) -> None:
    """Slices whose HU is ``_linear_field`` at each voxel centre (stored with slope 0.01)."""
    iop = np.asarray(iop, float)
    u, v = iop[:3], iop[3:]
    nk = len(positions)
    stored = np.zeros((NI, NJ, nk))
    ii, jj = np.meshgrid(np.arange(NI), np.arange(NJ), indexing="ij")
    for k in range(nk):
        pts = positions[k] + ii[..., None] * PS[0] * u + jj[..., None] * PS[1] * v
        stored[:, :, k] = np.round(_linear_field(pts) * 100)
    write_series(folder, stored.astype(np.int16), positions=positions, iop=iop, slope=0.01,
                 intercept=0)


def test_gantry_tilt_refused_then_corrected(tmp_path):
    tilt = 15.0
    c, s = np.cos(np.radians(tilt)), np.sin(np.radians(tilt))
    iop = (1, 0, 0, 0, c, -s)  # tilted about x; table moves along z
    positions = np.array([[-2.0, -1.5, 3.0 * k] for k in range(NK)])
    _series_of_field(tmp_path / "t", positions, iop)
    with pytest.raises(DicomError) as e:
        read_volume(tmp_path / "t")
    assert e.value.code == "PLN-DCM-003"
    assert "correct_tilt" in e.value.message
    assert abs(e.value.details["tilt_deg"] - tilt) < 0.01

    vol = read_volume(tmp_path / "t", correct_tilt=True)
    assert "PLN-W-DCM-006" in codes(vol)
    corr = [c for c in vol.provenance.corrections if c["type"] == "gantry_tilt"]
    assert abs(corr[0]["tilt_deg"] - tilt) < 0.01
    np.testing.assert_allclose(vol.direction.T @ vol.direction, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(vol.direction[:, 2], [0, 0, 1], atol=1e-9)  # along the table
    # values: the linear field at each output voxel centre, wherever the voxel lies inside
    # the input stack (interpolation of a linear field is exact)
    pts = vol.voxel_centres_lps()
    expect = _linear_field(pts)
    inside = np.abs(vol.array - vol.array.min()) > 0  # fill value is the minimum
    inside &= np.abs(vol.array - expect) < 0.05
    assert inside.mean() > 0.4
    # and no voxel inside the input's footprint is wrong: compare on the central column
    ic, jc = NI // 2, vol.shape[1] // 2
    np.testing.assert_allclose(vol.array[ic, jc, 1:-1], expect[ic, jc, 1:-1], atol=0.05)


def test_uneven_spacing_refused_then_resampled(tmp_path):
    z = np.array([0.0, 2.0, 4.0, 7.0, 10.0, 12.0, 14.0, 15.0])
    positions = np.column_stack([np.full(NK, -5.0), np.full(NK, 3.0), z])
    _series_of_field(tmp_path / "u", positions, (1, 0, 0, 0, 1, 0))
    with pytest.raises(DicomError) as e:
        read_volume(tmp_path / "u")
    assert e.value.code == "PLN-DCM-004"
    assert set(e.value.details["spacings_mm"]) == {1.0, 2.0, 3.0}
    assert "3 mm" in e.value.message and "resample_spacing" in e.value.message

    vol = read_volume(tmp_path / "u", resample_spacing=True)
    assert "PLN-W-DCM-007" in codes(vol)
    assert vol.spacing[2] == pytest.approx(2.0)
    assert vol.shape[2] == 8  # 0..14 mm in 2 mm steps
    np.testing.assert_allclose(vol.array, _linear_field(vol.voxel_centres_lps()), atol=0.02)

    vol = read_volume(tmp_path / "u", resample_spacing=1.5)
    assert vol.spacing[2] == pytest.approx(1.5)


def test_missing_slice_names_the_gap(tmp_path, stored):
    positions = np.array([[0.0, 0.0, 2.0 * k] for k in range(NK + 1) if k != 5])
    write_series(tmp_path / "m", stored, positions=positions)
    with pytest.raises(DicomError) as e:
        read_volume(tmp_path / "m")
    assert e.value.code == "PLN-DCM-005"
    gap = e.value.details["gaps"][0]
    assert gap["after_index"] == 4 and gap["position_mm"] == pytest.approx(8.0)
    assert "between slices 4 and 5" in e.value.message
    with pytest.raises(DicomError) as e:  # never interpolated across
        read_volume(tmp_path / "m", resample_spacing=True)
    assert e.value.code == "PLN-DCM-005"


# ---------------------------------------------------------------------------------------------
# rows 4-8: several series, localizers, non-image objects, non-DICOM files, truncation
# ---------------------------------------------------------------------------------------------
def test_several_series_listed_and_chosen(tmp_path, stored):
    write_series(tmp_path / "f", stored, series_uid="1.2.826.0.1.1", description="bone")
    write_series(tmp_path / "f", stored[:, :, :5], series_uid="1.2.826.0.1.2",
                 description="soft", names=[f"b{k}.dcm" for k in range(5)])
    with pytest.raises(DicomError) as e:
        read_volume(tmp_path / "f")
    assert e.value.code == "PLN-DCM-002"
    for text in ("1.2.826.0.1.1", "1.2.826.0.1.2", "'bone'", "'soft'", "8 slices", "5 slices"):
        assert text in e.value.message
    table = list_series(tmp_path / "f")
    assert [(t["series_uid"], t["n_slices"]) for t in table] == [("1.2.826.0.1.1", 8),
                                                                  ("1.2.826.0.1.2", 5)]
    vol = read_volume(tmp_path / "f", series_uid="1.2.826.0.1.2")
    assert vol.shape == (NI, NJ, 5)
    with pytest.raises(DicomError) as e:
        read_volume(tmp_path / "f", series_uid="9.9.9")
    assert e.value.code == "PLN-DCM-010"


def test_localizers_excluded(tmp_path, stored):
    uid = generate_uid()
    write_series(tmp_path / "l", stored, series_uid=uid)
    # a tagged localizer and an untagged sagittal scout inside the same series
    write_slice(tmp_path / "l" / "loc.dcm", stored[:, :, 0], ipp=(0, 0, 0), series_uid=uid,
                instance=100, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_slice(tmp_path / "l" / "scout.dcm", stored[:, :, 0], ipp=(0, 0, 0), iop=(0, 1, 0, 0, 0, -1),
                series_uid=uid, instance=101)
    vol = read_volume(tmp_path / "l")
    assert vol.shape == (NI, NJ, NK)
    assert "PLN-W-DCM-001" in codes(vol)
    skipped = {s["file"] for s in vol.provenance.skipped_files}
    assert {"loc.dcm", "scout.dcm"} <= skipped


def test_non_image_objects_and_non_dicom_files_skipped(tmp_path, stored):
    folder = tmp_path / "n"
    write_series(folder, stored)
    shutil.copy(get_testdata_file("rtstruct.dcm"), folder / "rtstruct.dcm")
    shutil.copy(get_testdata_file("test-SR.dcm"), folder / "sr.dcm")
    shutil.copy(Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "DICOMDIR",
                folder / "DICOMDIR")
    write_slice(folder / "sc.dcm", stored[:, :, 0], ipp=(0, 0, 0), series_uid=generate_uid(),
                instance=1, sop_class=SC)
    (folder / "README.txt").write_text("not dicom")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    vol = read_volume(folder)
    assert vol.shape == (NI, NJ, NK)
    assert {"PLN-W-DCM-002", "PLN-W-DCM-003"} <= set(codes(vol))
    reasons = {s["file"]: s["reason"] for s in vol.provenance.skipped_files}
    assert "RT Structure Set" in reasons["rtstruct.dcm"]
    assert "SR" in reasons["sr.dcm"] or "Report" in reasons["sr.dcm"]
    assert "Secondary Capture" in reasons["sc.dcm"]
    assert "DICOMDIR" in reasons["DICOMDIR"]
    assert reasons["README.txt"] == "not a DICOM file"


def test_truncated_pixel_data_is_an_error(tmp_path, stored):
    paths = write_series(tmp_path / "tr", stored)
    data = paths[4].read_bytes()
    paths[4].write_bytes(data[: len(data) - 25])  # pixel data cut short
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "tr")
    assert e.value.code == "PLN-IN-003" and paths[4].name in e.value.message


def test_truncated_header_is_an_error(tmp_path, stored):
    paths = write_series(tmp_path / "th", stored)
    paths[2].write_bytes(paths[2].read_bytes()[:300])
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "th")
    assert e.value.code == "PLN-IN-003"


def test_pydicom_ct_cut_inside_pixel_data(tmp_path):
    # pydicom's own CT_small.dcm, cut inside its pixel data
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "ct.dcm").write_bytes(data[:-1000])
    with pytest.raises(InputError) as e:
        read_volume(tmp_path / "c")
    assert e.value.code == "PLN-IN-003"


# ---------------------------------------------------------------------------------------------
# rows 9-12: duplicates, orientation, instance numbers
# ---------------------------------------------------------------------------------------------
def test_exact_duplicate_removed(tmp_path, stored):
    paths = write_series(tmp_path / "d", stored)
    ds = pydicom.dcmread(paths[3])
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 99
    ds.save_as(tmp_path / "d" / "dup.dcm")
    vol = read_volume(tmp_path / "d")
    assert vol.shape == (NI, NJ, NK)
    assert "PLN-W-DCM-004" in codes(vol)
    np.testing.assert_array_equal(vol.array, stored.astype(int) - 1024)


def test_conflicting_duplicate_is_an_error(tmp_path, stored):
    paths = write_series(tmp_path / "d", stored)
    ds = pydicom.dcmread(paths[3])
    ds.SOPInstanceUID = generate_uid()
    arr = ds.pixel_array.copy()
    arr[0, 0] += 1
    ds.PixelData = arr.tobytes()
    ds.save_as(tmp_path / "d" / "other.dcm")
    with pytest.raises(DicomError) as e:
        read_volume(tmp_path / "d")
    assert e.value.code == "PLN-DCM-006"


def test_mixed_orientations_is_an_error(tmp_path, stored):
    R = rotation_matrix("z", 10.0)
    iop2 = np.concatenate([R[:, 0], R[:, 1]])
    uid = generate_uid()
    write_series(tmp_path / "o", stored[:, :, :4], series_uid=uid)
    pos = np.array([[0, 0, 20.0 + 2 * k] for k in range(4)])
    write_series(tmp_path / "o", stored[:, :, 4:], series_uid=uid, iop=iop2, positions=pos,
                 names=[f"r{k}.dcm" for k in range(4)], instances=[5, 6, 7, 8])
    with pytest.raises(DicomError) as e:
        read_volume(tmp_path / "o")
    assert e.value.code == "PLN-DCM-007"


def test_instance_numbers_do_not_order_slices(tmp_path, stored):
    ref = read_volume(write_series(tmp_path / "ref", stored)[0].parent)
    # reversed instance numbers and file names: head-first numbering, no warning needed
    rev = write_series(tmp_path / "rev", stored, instances=list(range(NK, 0, -1)),
                       names=[f"x{NK - k:03d}.dcm" for k in range(NK)])
    vol = read_volume(rev[0].parent)
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.lps_from_ijk, ref.lps_from_ijk)
    assert vol.provenance.extra["instance_order_along_normal"] == "decreasing"
    # inconsistent numbering (and SliceLocation lying): sorted by position, with a warning
    shuffled = [3, 1, 8, 2, 7, 5, 4, 6]
    write_series(tmp_path / "shuf", stored, instances=shuffled,
                 per_slice=[{"SliceLocation": str(100 - 7 * s)} for s in shuffled])
    vol = read_volume(tmp_path / "shuf")
    assert "PLN-W-DCM-005" in codes(vol)
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.lps_from_ijk, ref.lps_from_ijk)


# ---------------------------------------------------------------------------------------------
# rows 13-16: rescale per slice, signedness, slope, saturation
# ---------------------------------------------------------------------------------------------
def test_per_slice_intercepts_give_exact_hu(tmp_path, stored):
    hu = stored.astype(int) - 1024
    inters = [-1024, -1000, -1024, -2048, -1024, -512, -1024, -1024]
    st = np.stack([hu[:, :, k] - inters[k] for k in range(NK)], axis=-1)
    write_series(tmp_path / "i", st.astype(np.int16),
                 per_slice=[{"intercept": float(b)} for b in inters])
    vol = read_volume(tmp_path / "i")
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, hu)


def test_unsigned_12bit_and_signed_16bit_identical(tmp_path):
    rng = np.random.default_rng(3)
    hu = rng.integers(-1024, 3071, size=(NI, NJ, NK))
    write_series(tmp_path / "u", (hu + 1024).astype(np.uint16), signed=False, bits_stored=12,
                 intercept=-1024)
    write_series(tmp_path / "s", hu.astype(np.int16), signed=True, bits_stored=16, intercept=0)
    a, b = read_volume(tmp_path / "u"), read_volume(tmp_path / "s")
    np.testing.assert_array_equal(a.array, hu)
    np.testing.assert_array_equal(a.array, b.array)
    assert a.array.dtype == b.array.dtype == np.int16


def test_non_integer_slope_gives_float(tmp_path, stored):
    write_series(tmp_path / "f", stored, slope=0.5, intercept=-1024.25)
    vol = read_volume(tmp_path / "f")
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, stored.astype(float) * 0.5 - 1024.25)


def test_metal_saturation_warns_without_clamping(tmp_path):
    hu = np.full((NI, NJ, NK), 40)
    hu[1:4, 1:4, 2:6] = 3071  # 36 voxels at the 12-bit cap
    write_series(tmp_path / "m", (hu + 1024).astype(np.uint16), signed=False, bits_stored=12,
                 intercept=-1024)
    vol = read_volume(tmp_path / "m")
    assert "PLN-W-CT-001" in codes(vol)
    assert vol.array.max() == 3071 and (vol.array == 3071).sum() == 36


def test_unsigned_16bit_above_int16_does_not_wrap(tmp_path):
    st = np.full((NI, NJ, NK), 1064, dtype=np.uint16)
    st[2, 2, :] = 40000  # extended-scale metal: 38976 HU, beyond int16
    write_series(tmp_path / "x", st, signed=False, bits_stored=16, intercept=-1024)
    vol = read_volume(tmp_path / "x")
    assert vol.array.dtype == np.float32
    assert vol.array[2, 2, 0] == 38976 and vol.array.min() == 40


# ---------------------------------------------------------------------------------------------
# rows 17-18: compressed transfer syntaxes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_equals_uncompressed(tmp_path, name):
    for sub, f in (("ref", "MR_small.dcm"), ("cmp", name)):
        (tmp_path / sub).mkdir()
        shutil.copy(get_testdata_file(f), tmp_path / sub / f)
    ref, vol = read_volume(tmp_path / "ref"), read_volume(tmp_path / "cmp")
    assert vol.shape == (64, 64, 1) and vol.modality == "MR"
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.lps_from_ijk, ref.lps_from_ijk)
    assert vol.provenance.extra["transfer_syntax"] != ref.provenance.extra["transfer_syntax"]


def test_signed_jpeg2000_pixel_representation_mismatch(tmp_path):
    (tmp_path / "j").mkdir()
    shutil.copy(get_testdata_file("J2K_pixelrep_mismatch.dcm"), tmp_path / "j" / "a.dcm")
    vol = read_volume(tmp_path / "j")
    assert vol.array.min() < -1000  # negative values survive (sign corrected, not 65000s)
    ds = pydicom.dcmread(tmp_path / "j" / "a.dcm")
    hu = ds.pixel_array.T * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.array[:, :, 0], hu)


def test_missing_codec_names_the_package(tmp_path, monkeypatch):
    (tmp_path / "j").mkdir()
    shutil.copy(get_testdata_file("MR_small_jp2klossless.dcm"), tmp_path / "j" / "a.dcm")

    class NoDecoder:
        is_available = False
        missing_dependencies = ["pylibjpeg-openjpeg"]

    import pydicom.pixels

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: NoDecoder())
    with pytest.raises(DicomError) as e:
        read_volume(tmp_path / "j")
    assert e.value.code == "PLN-DCM-008" and "pylibjpeg-openjpeg" in e.value.message


# ---------------------------------------------------------------------------------------------
# row 19: enhanced multi-frame
# ---------------------------------------------------------------------------------------------
def _enhanced_ct(path: Path, stored: np.ndarray, positions: np.ndarray, iop, *,
                 drop_position_of: int | None = None) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ECT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = ECT
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.3", "1.2.3.1", "1.2.3.2"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    nk = stored.shape[2]
    ds.NumberOfFrames = nk
    ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [PS[1], PS[0]]
    pm.SliceThickness = 1.0
    shared.PixelMeasuresSequence = Sequence([pm])
    po = Dataset()
    po.ImageOrientationPatient = [f"{x:.10f}" for x in iop]
    shared.PlaneOrientationSequence = Sequence([po])
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1, -1024, "HU"
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in range(nk):
        fg = Dataset()
        if k != drop_position_of:
            pp = Dataset()
            pp.ImagePositionPatient = [f"{x:.6f}" for x in positions[k]]
            fg.PlanePositionSequence = Sequence([pp])
        frames.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.ascontiguousarray(stored.transpose(2, 1, 0).astype(np.int16)).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def test_enhanced_multiframe_geometry_from_functional_groups(tmp_path, stored, oblique):
    A = oblique(spacing=(PS[0], PS[1], 1.7))
    R = A[:3, :3] / np.linalg.norm(A[:3, :3], axis=0)
    iop = np.concatenate([R[:, 0], R[:, 1]])
    positions = np.array([A[:3, :3] @ [0, 0, k] + A[:3, 3] for k in range(NK)])
    order = [5, 0, 7, 2, 1, 6, 3, 4]  # frames stored out of order
    _enhanced_ct(tmp_path / "e.dcm", stored[:, :, order], positions[order], iop)
    vol = read_volume(tmp_path / "e.dcm")
    np.testing.assert_array_equal(vol.array, stored.astype(int) - 1024)
    np.testing.assert_allclose(vol.lps_from_ijk, A, atol=1e-5)

    _enhanced_ct(tmp_path / "bad.dcm", stored, positions, iop, drop_position_of=3)
    with pytest.raises(DicomError) as e:
        read_volume(tmp_path / "bad.dcm")
    assert e.value.code == "PLN-DCM-009"


# ---------------------------------------------------------------------------------------------
# row 24: memory estimate from headers only
# ---------------------------------------------------------------------------------------------
def test_memory_limit_checked_before_decoding(tmp_path, stored, monkeypatch):
    write_series(tmp_path / "big", stored)
    import planner.io.dicom_read as dr

    def boom(*a, **k):
        raise AssertionError("pixels decoded before the memory check")

    monkeypatch.setattr(dr, "_decode_file", boom)
    with pytest.raises(InputError) as e:
        read_dicom_series(tmp_path / "big", max_bytes=NI * NJ * NK)
    assert e.value.code == "PLN-IN-004"


# ---------------------------------------------------------------------------------------------
# rows 20-21: writer round trips (oblique, anisotropic, left-handed), SimpleITK agreement
# ---------------------------------------------------------------------------------------------
def _hu_volume(A: np.ndarray, shape=(7, 5, 6)) -> Volume:
    rng = np.random.default_rng(7)
    arr = rng.integers(-1024, 3000, size=shape).astype(np.int16)
    arr[0, 0, 0] = 30000  # extended CT scale
    return Volume(arr, A, "CT")


def _lps_to_value(vol: Volume) -> dict:
    pts = np.round(vol.voxel_centres_lps().reshape(-1, 3), 4)
    return {tuple(p): float(x) for p, x in zip(pts, vol.array.reshape(-1))}


@pytest.mark.parametrize("left_handed", [False, True])
def test_write_read_round_trip_oblique(tmp_path, oblique, left_handed):
    vol = _hu_volume(oblique(left_handed=left_handed))
    paths = write_dicom_series(vol, tmp_path / "w", uid_seed="seed-1")
    assert len(paths) == vol.shape[2] and all(p.exists() for p in paths)
    assert not list((tmp_path / "w").glob(".*"))  # no temporary files left
    back = read_volume(tmp_path / "w")
    assert codes(back) == []
    assert back.shape == vol.shape
    if not left_handed:
        np.testing.assert_allclose(back.lps_from_ijk, vol.lps_from_ijk, atol=1e-6)
        np.testing.assert_array_equal(back.array, vol.array)
    else:
        # DICOM stacks are right-handed: the k axis comes back reversed, data and geometry
        # together, so every voxel keeps its value at its LPS position.
        assert not back.is_left_handed
        np.testing.assert_array_equal(back.array, vol.array[:, :, ::-1])
    a, b = _lps_to_value(vol), _lps_to_value(back)
    assert a == b  # same values at the same LPS positions (4 decimals)


def test_written_series_agrees_with_simpleitk(tmp_path, oblique):
    sitk = pytest.importorskip("SimpleITK")
    vol = _hu_volume(oblique())
    write_dicom_series(vol, tmp_path / "w", uid_seed="s")
    ours = read_volume(tmp_path / "w")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "w")))
    img = reader.Execute()
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    np.testing.assert_array_equal(arr, ours.array)
    idx = [(0, 0, 0), (6, 4, 5), (3, 1, 2)]
    for ijk in idx:
        p = img.TransformIndexToPhysicalPoint([int(x) for x in ijk])
        np.testing.assert_allclose(p, ours.lps_from_index(np.array(ijk, float))[0], atol=1e-5)


def test_writer_is_deterministic_and_anonymous(tmp_path, oblique):
    vol = _hu_volume(oblique())
    p1 = write_dicom_series(vol, tmp_path / "a", uid_seed="same")
    p2 = write_dicom_series(vol, tmp_path / "b", uid_seed="same")
    assert [p.read_bytes() for p in p1] == [p.read_bytes() for p in p2]
    p3 = write_dicom_series(vol, tmp_path / "c", uid_seed="other")
    assert p3[0].read_bytes() != p1[0].read_bytes()
    ds = pydicom.dcmread(p1[0])
    assert str(ds.PatientName) == "PHANTOM^ANONYMOUS" and ds.PatientID == "PHANTOM"
    assert ds.SOPClassUID == CT and ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "ImageType",
               "KVP", "AcquisitionNumber", "RescaleSlope", "RescaleIntercept", "SliceThickness",
               "SpacingBetweenSlices", "PixelSpacing"):
        assert kw in ds, kw


def test_writer_float_values_and_kept_uids(tmp_path):
    arr = np.linspace(-1000.3, 2500.7, 4 * 3 * 5).reshape(4, 3, 5).astype(np.float32)
    vol = Volume(arr, make_affine((0.5, 0.5, 1.25)), "CT")
    vol.provenance.study_uid = "1.2.3.999"
    vol.provenance.frame_of_reference_uid = "1.2.3.998"
    write_dicom_series(vol, tmp_path / "f", uid_seed=1)
    back = read_volume(tmp_path / "f")
    ds = pydicom.dcmread(sorted((tmp_path / "f").iterdir())[0])
    slope = float(ds.RescaleSlope)
    np.testing.assert_allclose(back.array, arr, atol=slope / 2 + 1e-3)
    assert back.provenance.study_uid == "1.2.3.999"
    assert back.provenance.frame_of_reference_uid == "1.2.3.998"


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_real_jpeg2000_series(shared_data):
    vol = read_volume(shared_data("thoracolumbar-ct-dicom") / "dicom")
    assert vol.shape == (512, 512, 20) and vol.modality == "CT"
    np.testing.assert_allclose(vol.spacing, [0.9765625, 0.9765625, 2.0], atol=1e-6)
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-6)
    assert vol.provenance.extra["transfer_syntax"] == "1.2.840.10008.1.2.4.90"
    assert -1100 <= vol.array.min() <= -900 and 1000 < vol.array.max() < 3071
    # this anonymised test series has empty Study/Series UIDs; the frame of reference is kept
    assert vol.provenance.frame_of_reference_uid.startswith("1.3.12.2.1107")
    assert len(vol.provenance.source_files) == 20


@pytest.mark.shared_data
def test_real_gantry_tilt(shared_data):
    folder = shared_data("gantry-tilt-head-ct")
    with pytest.raises(DicomError) as e:
        read_volume(folder)
    assert e.value.code == "PLN-DCM-003"
    assert e.value.details["tilt_deg"] == pytest.approx(18.5, abs=0.05)
    with pytest.raises(DicomError) as e:
        read_volume(folder, correct_tilt=True)
    assert e.value.code == "PLN-DCM-004"
    assert min(e.value.details["spacings_mm"]) == pytest.approx(1.081, abs=0.01)
    assert max(e.value.details["spacings_mm"]) == pytest.approx(6.999, abs=0.01)
    vol = read_volume(folder, correct_tilt=True, resample_spacing=True)
    assert {"PLN-W-DCM-006", "PLN-W-DCM-007", "PLN-W-DCM-003"} <= set(codes(vol))
    tilt = [c for c in vol.provenance.corrections if c["type"] == "gantry_tilt"][0]
    assert tilt["tilt_deg"] == pytest.approx(18.5, abs=0.05)
    assert tilt["gantry_detector_tilt_deg"] == pytest.approx(18.5)
    assert {"file": "LICENSE", "reason": "not a DICOM file", "code": "PLN-W-DCM-003"} in \
        vol.provenance.skipped_files
    np.testing.assert_allclose(vol.direction.T @ vol.direction, np.eye(3), atol=1e-9)
