"""The segmentation pipeline end to end: phantom CT -> labels, fitted hardware with levels and
sides, JSON summary and meshes; MR refusal without labels; real DICOM + imported
TotalSegmentator labels driving the pipeline."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pytest

from planner.errors import PlannerError
from planner.labels.registry import label_id
from planner.phantom import generate, get_preset
from planner.segment.evaluate import match_screws
from planner.segment.pipeline import segment, write_segmentation


@lru_cache(maxsize=2)
def _case(name="case_example", spacing=1.5):
    return generate(get_preset(name).replace_imaging(spacing_mm=(spacing,) * 3))


@lru_cache(maxsize=2)
def _seg(name="case_example", spacing=1.5):
    case = _case(name, spacing)
    return segment(case.image, anchor=case.spec.level_list()[-1])


def test_phantom_end_to_end_levels_and_hardware(tmp_path):
    case, seg = _case(), _seg()
    assert seg.levels == case.spec.level_list()
    pairs = match_screws(seg.screws, case.scene.screws)
    assert len(pairs) == len(case.scene.screws) == len(seg.screws)
    assert all((p.level, p.side) == (t.level, t.side) for p, t in pairs)
    assert sorted(r.side for r in seg.rods) == ["left", "right"]
    lab = seg.labels.array
    for lev in seg.levels:
        assert (lab == label_id(f"{lev}_body")).any()
    for s in seg.screws:
        assert (lab == label_id(s.name)).any()
    assert seg.labels.same_grid(case.image)
    files = write_segmentation(seg, tmp_path / "seg", meshes=True)
    summary = json.loads((tmp_path / "seg" / "segmentation.json").read_text())
    assert summary["frame"] == "LPS" and summary["levels"] == seg.levels
    assert len(summary["screws"]) == len(seg.screws)
    assert (tmp_path / "seg" / "manifest.json").exists()
    assert "L4_body" in files["meshes"] and "rod_left" in files["meshes"]


def test_l4_fracture_detected_on_case_example():
    seg = _seg()
    fx = {f["level"]: f for f in seg.fractures}
    assert "L4" in fx and fx["L4"]["grade"] >= 1
    assert abs(fx["L4"]["height_loss_fraction"] - 0.35) < 0.1


def test_mr_without_labels_is_refused_with_a_reason():
    case = generate(get_preset("osteoporotic_no_hardware").replace_imaging(spacing_mm=(3.0,) * 3, modality="MR"))
    with pytest.raises(PlannerError) as ei:
        segment(case.image)
    assert ei.value.code == "PLN-SEG-004" and "labels" in ei.value.message


def test_label_map_is_not_an_image():
    case = _case()
    with pytest.raises(PlannerError) as ei:
        segment(case.labels)
    assert ei.value.code == "PLN-SEG-003"


@pytest.mark.shared_data
def test_real_dicom_with_imported_totalsegmentator_labels(shared_data, tmp_path):
    from planner.io import read_volume

    root = shared_data("thoracolumbar-ct-dicom")
    ct = read_volume(root / "dicom")
    seg = segment(ct, labels=root / "totalseg_labels.nii.gz", task="total")
    assert seg.source["anatomy"] == "totalsegmentator:total"
    assert {"T11", "T12"} <= set(seg.levels)
    for lev in ("T11", "T12"):
        hu = ct.array[seg.labels.array == label_id(f"{lev}_body")]
        assert np.median(hu) > 150, f"{lev} body not on bone"
    assert seg.screws == []  # no hardware in this patient
    write_segmentation(seg, tmp_path / "out", meshes=False)
    assert json.loads((tmp_path / "out" / "segmentation.json").read_text())["levels"]


@pytest.mark.shared_data
def test_real_mr_with_imported_total_mr_labels(shared_data):
    from planner.io import read_volume

    root = shared_data("abdomen-mr")
    mr = read_volume(root / "mr.nii.gz", modality="MR")
    seg = segment(mr, labels=root / "totalseg_mr_labels.nii.gz", task="total_mr", anchor="T12")
    assert seg.source["anatomy"] == "totalsegmentator:total_mr"
    assert seg.levels[:1] == ["T12"]
    assert seg.screws == []  # no hardware from MR unless asked for
    codes = {w.code for w in seg.warnings}
    assert "PLN-W-SEG-002" in codes


def test_segment_does_not_change_its_input():
    # a fresh case (not the cached one): clipped metal makes the hardware step warn
    case = generate(get_preset("case_example").replace_imaging(spacing_mm=(2.0,) * 3))
    assert case.image.provenance.warnings == []
    seg = segment(case.image, anchor="S1", soft_tissue=False)
    assert any(w.code == "PLN-W-CT-001" for w in seg.warnings)
    assert case.image.provenance.warnings == []


def test_label_centroids_match_scipy_center_of_mass():
    from scipy import ndimage

    from planner.segment.pipeline import label_centroids

    rng = np.random.default_rng(3)
    lab = np.zeros((23, 31, 17), np.uint16)
    for i in (2, 5, 9):
        c = rng.integers(0, (23, 31, 17))
        sl = tuple(slice(max(0, int(x) - 4), int(x) + 5) for x in c)
        lab[sl] = i
    present = [i for i in (2, 5, 9) if np.any(lab == i)]
    got = label_centroids(lab, [1, 2, 5, 9, 40])
    assert sorted(got) == present  # absent ids (1, 40) are left out
    ref = ndimage.center_of_mass(np.ones(lab.shape, bool), lab, present)
    for i, r in zip(present, ref):
        np.testing.assert_allclose(got[i], r, rtol=0, atol=1e-9)
