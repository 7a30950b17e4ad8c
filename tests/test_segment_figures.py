"""Review figures: the overlay PNG (reformats with label outlines, screw axes, rods) and the
meshes-over-CT render are written, have the requested size and are not blank."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from planner.phantom import generate, get_preset
from planner.segment.pipeline import segment


@lru_cache(maxsize=1)
def _case_and_seg():
    case = generate(get_preset("case_example").replace_imaging(spacing_mm=(1.5,) * 3))
    seg = segment(case.image, anchor=case.spec.level_list()[-1], soft_tissue=False)
    return case, seg


def _rgb(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=float)


def test_overlay_png_size_and_content(tmp_path):
    from planner.segment.figures import CLASS_COLOURS, overlay_png

    case, seg = _case_and_seg()
    out = overlay_png(case.image, seg, tmp_path / "ov.png", size_px=(1200, 660))
    img = _rgb(out)
    assert img.shape == (660, 1200, 3)
    assert img.std() > 20  # image content, not a blank canvas
    # label outlines in class colours and the red screw axes are drawn
    body = np.array(CLASS_COLOURS["body"]) * 255
    assert (np.abs(img - body).max(axis=2) < 40).sum() > 200
    red = (img[..., 0] > 200) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert red.sum() > 100


def test_overlay_on_an_oblique_grid(tmp_path):
    """Reformats sample in LPS space: a rotated copy of the grid gives the same figure size
    and still shows outlines (no axis-aligned assumption)."""
    from planner.segment.figures import overlay_png
    from planner.segment.result import Segmentation
    from planner.volume import rotation_matrix

    case, seg = _case_and_seg()
    A = case.image.lps_from_ijk.copy()
    R = rotation_matrix("z", 20.0)
    A[:3, :] = R @ A[:3, :]
    img = case.image.with_array(case.image.array)
    img.lps_from_ijk = A
    lab = seg.labels.with_array(seg.labels.array)
    lab.lps_from_ijk = A.copy()
    s2 = Segmentation(labels=lab, levels=seg.levels)
    out = _rgb(overlay_png(img, s2, tmp_path / "ob.png", size_px=(1000, 550), levels=["L4"]))
    assert out.shape == (550, 1000, 3) and out.std() > 20


@pytest.mark.render
def test_mesh_over_ct_renders_offscreen(tmp_path, caplog):
    pytest.importorskip("pyvista")
    from planner.segment.figures import mesh_over_ct_png

    case, seg = _case_and_seg()
    with caplog.at_level("ERROR"):
        out = mesh_over_ct_png(case.image, seg, tmp_path / "m.png", window_size=(640, 520))
    assert not [r for r in caplog.records if "vtk" in r.getMessage().lower()]
    img = _rgb(out)
    assert img.shape == (520, 640, 3)
    assert img.std() > 10
    # grey CT slice pixels (r == g == b, mid-grey) are in the picture
    grey = (np.ptp(img, axis=2) < 6) & (img[..., 0] > 60) & (img[..., 0] < 220)
    assert grey.sum() > 2000
