"""CT synthesis: HU table, storage ranges, noise, trabecular texture and metal streaks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from planner.errors import PhantomSpecError
from planner.labels.registry import TISSUES
from planner.phantom import ct, streaks
from planner.phantom.spec import ImagingSpec
from planner.volume import make_affine


def _rod_slice(n: int = 360, s: float = 0.8, gap: float = 50.0):
    """Soft-tissue ellipse (30 x 22 cm) with two 6 mm titanium rods ``gap`` mm apart."""
    x = (np.arange(n) - (n - 1) / 2) * s
    X, Y = np.meshgrid(x, x, indexing="ij")
    body = (X / 130) ** 2 + (Y / 100) ** 2 <= 1
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)

    def disc(cx, cy, r):
        return np.clip((r - np.hypot(X - cx, Y - cy)) / s + 0.5, 0, 1)

    metal = np.maximum(disc(-gap / 2, 10, 3.0), disc(gap / 2, 10, 3.0)).astype(np.float32)
    hu = hu * (1 - metal) + ct.HU_TABLE["titanium"] * metal
    return hu, metal, X, Y, body, s


# ---- tables ----------------------------------------------------------------------------
def test_every_tissue_has_a_ct_value():
    for t in TISSUES:
        assert t in ct.HU_TABLE
        assert np.isfinite(ct.ct_value(t, {}))
    assert ct.ct_value("air", {}) == -1000
    assert ct.HU_TABLE["cortical_bone"] > 500
    assert ct.HU_TABLE["titanium"] > 3071 and ct.HU_TABLE["cobalt_chrome"] > ct.HU_TABLE["titanium"]


def test_osteoporotic_override_lowers_cancellous():
    normal = ct.ct_value("cancellous_bone", {})
    osteo = ct.ct_value("cancellous_bone", {"osteoporotic": True})
    assert osteo < 100 < 160 < normal  # below the opportunistic-CT cut-offs
    assert ct.ct_value("cancellous_bone", {"cancellous_hu": 85}) == 85
    assert ct.ct_value("cortical_bone", {"cortical_hu": 700}) == 700
    assert ct.ct_value("metal", {"material": "cobalt_chrome"}) == ct.HU_TABLE["cobalt_chrome"]
    assert ct.ct_value("fat", {"hu": -120}) == -120


def test_unknown_tissue_raises():
    with pytest.raises(PhantomSpecError):
        ct.ct_value("unobtainium", {})
    with pytest.raises(PhantomSpecError):
        ct.ct_value("metal", {"material": "gold"})


# ---- storage ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode,hi", [("clip3071", 3071), ("clip4095", 4095), ("extended", 30000)])
def test_storage_modes_clamp_without_wraparound(mode, hi):
    hu = np.linspace(-3000, 40000, 8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    metal = (hu > 3000).astype(np.float32)
    im = ImagingSpec(noise_hu=0.0, metal_storage=mode)
    out, notes = ct.finish_ct(hu, make_affine((1, 1, 1)), im, np.random.default_rng(0),
                              metal=metal, cancellous=None)
    assert out.dtype == np.float32 and out.shape == hu.shape
    assert out.min() == -1024 and out.max() == hi
    assert np.all(out[hu > 0] >= 0)  # a big value never turns negative
    assert np.all(np.diff(out.ravel()) >= 0)  # monotone: clamping, not wrapping
    st = notes[-1]
    assert st["step"] == "storage" and st["saturated_high"] == int((hu > hi).sum())
    assert st.get("warning_code") == "PLN-W-CT-001"
    json.dumps(notes)


def test_extended_keeps_titanium():
    hu = np.full((4, 4, 4), ct.HU_TABLE["titanium"], np.float32)
    out, _ = ct.finish_ct(hu, np.eye(4), ImagingSpec(noise_hu=0, metal_storage="extended"),
                          np.random.default_rng(0), metal=np.ones_like(hu), cancellous=None)
    assert np.allclose(out, ct.HU_TABLE["titanium"])


# ---- noise and texture ----------------------------------------------------------------------
def test_noise_sd_matches_request_and_is_correlated():
    hu = np.zeros((96, 96, 24), np.float32)
    out, notes = ct.finish_ct(hu, make_affine((0.7, 0.7, 1.0)), ImagingSpec(noise_hu=15.0),
                              np.random.default_rng(3), metal=None, cancellous=None)
    flat = out[8:-8, 8:-8, :]
    assert abs(flat.std() - 15.0) < 1.5
    assert abs(flat.mean()) < 1.0
    # neighbouring pixels in plane correlate (CT noise grain), slices do not
    c_in = np.corrcoef(flat[:-1].ravel(), flat[1:].ravel())[0, 1]
    c_k = np.corrcoef(flat[:, :, :-1].ravel(), flat[:, :, 1:].ravel())[0, 1]
    assert c_in > 0.3 and abs(c_k) < 0.05
    assert any(n["step"] == "noise" for n in notes)


def test_trabecular_texture_only_inside_cancellous():
    hu = np.full((40, 40, 20), 220.0, np.float32)
    canc = np.zeros_like(hu)
    canc[10:30, 10:30, 5:15] = 1.0
    out, notes = ct.finish_ct(hu, make_affine((0.8, 0.8, 0.8)), ImagingSpec(noise_hu=0.0),
                              np.random.default_rng(1), metal=None, cancellous=canc)
    inside = out[12:28, 12:28, 7:13]
    assert 15 < inside.std() < 60
    assert np.array_equal(out[canc == 0], hu[canc == 0])
    assert notes[0]["step"] == "trabecular_texture"


# ---- streaks --------------------------------------------------------------------------------
def test_streaks_dark_between_rods_and_quiet_far_away():
    hu, metal, X, Y, body, s = _rod_slice()
    out = streaks.add_metal_streaks(hu, metal, (s, s), np.random.default_rng(0))
    art = out - hu
    line = (np.abs(Y - 10) < 1.0) & (np.abs(X) < 18)  # between the rods, clear of them
    assert art[line].mean() < -50
    far = body & (np.hypot(X, Y - 10) > 80)
    assert abs(float(art[far].mean())) < 3.0
    assert float(np.abs(art[far]).mean()) < 8.0
    # no metal -> unchanged
    same = streaks.add_metal_streaks(hu, np.zeros_like(metal), (s, s), np.random.default_rng(0))
    assert np.array_equal(same, hu)



def test_finish_ct_deterministic_with_streaks():
    hu2, metal2, *_ , s = _rod_slice(n=200, s=1.2)
    hu = np.repeat(hu2[:, :, None], 3, axis=2)
    metal = np.repeat(metal2[:, :, None], 3, axis=2)
    metal[:, :, 0] = 0.0
    hu[:, :, 0] = np.where(hu[:, :, 0] > 3000, 40.0, hu[:, :, 0])
    canc = np.zeros_like(hu)
    canc[80:120, 80:120, :] = 1.0
    A = make_affine((s, s, 2.0))
    im = ImagingSpec(noise_hu=10.0, streaks=True, metal_storage="clip3071")
    a, na = ct.finish_ct(hu, A, im, np.random.default_rng(7), metal=metal, cancellous=canc)
    b, nb = ct.finish_ct(hu, A, im, np.random.default_rng(7), metal=metal, cancellous=canc)
    c, _ = ct.finish_ct(hu, A, im, np.random.default_rng(8), metal=metal, cancellous=canc)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert na == nb
    st = [n for n in na if n["step"] == "metal_streaks"][0]
    assert st["slices"] == 2
    json.dumps(na)
