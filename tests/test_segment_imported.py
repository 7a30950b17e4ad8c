"""Importing TotalSegmentator / VerSe label maps onto the image grid (real data)."""

from __future__ import annotations

import numpy as np
import pytest

from planner.errors import GeometryError, InputError
from planner.io import read_volume
from planner.labels.registry import LABEL_IDS
from planner.segment.imported import import_labels
from planner.volume import Volume, make_affine


@pytest.mark.shared_data
def test_totalseg_total_on_dicom_ct(shared_data):
    root = shared_data("thoracolumbar-ct-dicom")
    ct = read_volume(root / "dicom")
    out, info = import_labels(ct, root / "totalseg_labels.nii.gz", source="totalsegmentator",
                              task="total")
    assert out.shape == ct.shape and out.dtype == np.uint16
    assert {"T11", "T12"} <= set(info["levels"])
    codes = {w.code for w in info["warnings"]}
    assert {"PLN-W-LBL-001", "PLN-W-IMP-001"} <= codes
    for lv in ("T11", "T12"):
        m = out == LABEL_IDS[f"{lv}_body"]
        med = float(np.median(ct.array[m]))
        print(f"{lv}_body median HU {med:.0f} ({m.sum()} voxels)")
        assert med > 150  # lands on bone: the LAS map was resampled in physical space
    cord = out == LABEL_IDS["spinal_cord"]
    assert cord.sum() > 1000
    assert -30 < float(np.median(ct.array[cord])) < 80  # soft tissue, not bone
    # the cord lies in the canal: behind the vertebral body, within its left-right extent
    verts = np.isin(out, [LABEL_IDS["T11_body"], LABEL_IDS["T12_body"]])
    pc = ct.lps_from_index(np.argwhere(cord))
    pv = ct.lps_from_index(np.argwhere(verts))
    assert pv[:, 0].min() < np.median(pc[:, 0]) < pv[:, 0].max()
    assert np.median(pc[:, 1]) > np.median(pv[:, 1])  # posterior (LPS +y)
    # the cord is surrounded by vertebra voxels in-plane on most slices (inside the arch)
    ring = 0
    for k in np.nonzero(cord.any(axis=(0, 1)))[0]:
        c = np.argwhere(cord[:, :, k]).mean(0).astype(int)
        v = verts[:, :, k]
        ring += int(v[c[0]:, c[1]].any() and v[:c[0], c[1]].any() and v[c[0], c[1]:].any()
                    and v[c[0], :c[1]].any())
    assert ring >= 0.5 * len(np.nonzero(cord.any(axis=(0, 1)))[0])
    assert info["unmapped"]  # organs are reported, not silently dropped


@pytest.mark.shared_data
def test_classical_canal_contains_totalseg_cord(shared_data):
    from planner.segment.soft import segment_soft_tissue

    root = shared_data("thoracolumbar-ct-dicom")
    ct = read_volume(root / "dicom")
    out, _ = import_labels(ct, root / "totalseg_labels.nii.gz")
    soft, _ = segment_soft_tissue(ct)
    cord = out == LABEL_IDS["spinal_cord"]
    canal = np.isin(soft, [LABEL_IDS["spinal_canal"], LABEL_IDS["thecal_sac"]])
    frac = (cord & canal).sum() / cord.sum()
    print(f"TotalSegmentator cord inside the classical canal: {frac:.2f}")
    assert frac > 0.8


@pytest.mark.shared_data
def test_total_mr_vertebrae_split(shared_data):
    root = shared_data("abdomen-mr")
    mr = read_volume(root / "mr.nii.gz")
    out, info = import_labels(mr, root / "totalseg_mr_labels.nii.gz", task="total_mr")
    comps = info["vertebra_components"]
    print("total_mr vertebra components:", comps)
    assert len(comps) >= 2
    assert info["levels"] == []  # levels unknown without an anchor
    assert "PLN-W-IMP-002" in {w.code for w in info["warnings"]}
    assert (out == LABEL_IDS["other_bone"]).sum() > 0
    assert (out == LABEL_IDS["spinal_cord"]).sum() > 0
    z = [c["centroid_lps"][2] for c in comps]
    assert z == sorted(z, reverse=True)  # cranial first
    out2, info2 = import_labels(mr, root / "totalseg_mr_labels.nii.gz", task="total_mr",
                                anchor="T12")
    assert info2["levels"][:2] == ["T12", "L1"]
    assert (out2 == LABEL_IDS["T12_body"]).sum() > 0


@pytest.mark.shared_data
def test_verse_mask_levels(shared_data):
    path = shared_data("verse-mask-T9-L5") / "sub-verse004_seg-vert_msk.nii.gz"
    mask = read_volume(path, modality="LABEL")
    out, info = import_labels(mask, path, source="verse")
    assert info["levels"] == ["T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"]
    for lv in info["levels"]:
        assert (out == LABEL_IDS[f"{lv}_body"]).sum() > 1000


def _small(origin=(0.0, 0.0, 0.0)) -> Volume:
    return Volume(np.zeros((8, 8, 8), np.int16), make_affine((1, 1, 1), None, origin), "CT")


def test_no_overlap_is_an_error():
    img = _small()
    lab = Volume(np.ones((8, 8, 8), np.uint16), make_affine((1, 1, 1), None, (500, 0, 0)),
                 "LABEL")
    with pytest.raises(GeometryError) as e:
        import_labels(img, lab)
    assert e.value.code == "PLN-GEO-004"


def test_unknown_source_and_float_labels():
    img = _small()
    with pytest.raises(InputError):
        import_labels(img, img.with_array(np.zeros((8, 8, 8), np.uint16), "LABEL"),
                      source="nnunet")
    with pytest.raises(InputError):
        import_labels(img, img.with_array(np.full((8, 8, 8), 0.5, np.float32), "LABEL"))


def test_mapping_by_name_on_same_grid():
    img = _small()
    arr = np.zeros((8, 8, 8), np.uint16)
    from planner.labels.external import totalseg_id

    arr[1:3] = totalseg_id("total", "vertebrae_L1")
    arr[4:6] = totalseg_id("total", "aorta")
    arr[6:] = totalseg_id("total", "vertebrae_C7")
    out, info = import_labels(img, img.with_array(arr, "LABEL"))
    assert (out[1:3] == LABEL_IDS["L1_body"]).all() and (out[4:6] == LABEL_IDS["aorta"]).all()
    assert (out[6:] == 0).all() and info["levels_outside_registry"] == ["C7"]
