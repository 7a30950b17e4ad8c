"""MR synthesis: tissue signals, susceptibility blooming, noise, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest

from planner.errors import PhantomSpecError
from planner.labels.registry import TISSUES
from planner.phantom import mr
from planner.phantom.spec import ImagingSpec
from planner.volume import make_affine, rotation_matrix

TISSUE_T2 = 300.0


def _rod_volume(n=96, nk=24, s=0.8):
    """Muscle-like block with a 6.5 mm titanium rod along i (perpendicular to B0 = LPS z)."""
    x = (np.arange(n) - (n - 1) / 2) * s
    z = (np.arange(nk) - (nk - 1) / 2) * s
    X, Y, Z = np.meshgrid(x, x, z, indexing="ij")
    r = np.hypot(Y, Z)
    metal = (np.clip((3.25 - r) / s + 0.5, 0, 1) * (np.abs(X) < 25)).astype(np.float32)
    img = (TISSUE_T2 * (1 - metal)).astype(np.float32)
    return img, metal, make_affine((s, s, s)), r, X


def test_every_tissue_has_mr_values():
    for t in TISSUES:
        for w in ("T1", "T2"):
            v = mr.mr_value(t, {}, w)
            assert 0.0 <= v <= 1000.0
    with pytest.raises(PhantomSpecError):
        mr.mr_value("unobtainium", {}, "T1")
    with pytest.raises(PhantomSpecError):
        mr.mr_value("fat", {}, "PD")


def test_contrasts():
    v = mr.mr_value
    # CSF flips: dark against cord on T1, bright against cord on T2
    assert v("csf", {}, "T1") < v("spinal_cord", {}, "T1")
    assert v("csf", {}, "T2") > v("spinal_cord", {}, "T2")
    # fat and fatty marrow bright on T1, disc bright on T2, voids
    assert v("fat", {}, "T1") > v("muscle", {}, "T1")
    assert v("cancellous_bone", {}, "T1") > v("disc", {}, "T1")
    assert v("disc", {}, "T2") > v("cancellous_bone", {}, "T2")
    for t in ("cortical_bone", "titanium", "cobalt_chrome", "air", "lung"):
        assert v(t, {}, "T1") < 50 and v(t, {}, "T2") < 50
    assert v("cancellous_bone", {"osteoporotic": True}, "T1") > v("cancellous_bone", {}, "T1")
    assert v("fat", {"mr_t2": 0.5}, "T2") == 500.0


def test_dipole_field_of_a_sphere_matches_analytic():
    n, a = 64, 6.0
    x = np.arange(n) - (n - 1) / 2
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    chi = (np.sqrt(X**2 + Y**2 + Z**2) < a).astype(np.float32) * 1e-6
    df = mr.field_offset_hz(chi, make_affine((1, 1, 1)), b0_t=1.0)
    c, d = n // 2, 12
    ppm = df / (mr.GAMMA_BAR_HZ_PER_T * 1e-6)

    def analytic(i, j, k):  # (a/r)^3 (3 cos^2 theta - 1) / 3, B0 along k
        p = np.array([X[i, j, k], Y[i, j, k], Z[i, j, k]])
        r = np.linalg.norm(p)
        return (a / r) ** 3 * (3 * (p[2] / r) ** 2 - 1) / 3

    assert ppm[c, c, c + d] == pytest.approx(analytic(c, c, c + d), rel=0.1)  # pole: +
    assert ppm[c + d, c, c] == pytest.approx(analytic(c + d, c, c), rel=0.1)  # equator: -
    assert ppm[c, c, c + d] > 0 > ppm[c + d, c, c]


def test_b0_follows_lps_z_on_rotated_grid():
    # grid rotated 90 deg about x: LPS z is now along grid axis j (up to sign)
    n = 48
    x = np.arange(n) - (n - 1) / 2
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    chi = (np.sqrt(X**2 + Y**2 + Z**2) < 5).astype(np.float32) * 1e-6
    A = make_affine((1, 1, 1), rotation_matrix("x", 90.0))
    df = mr.field_offset_hz(chi, A, b0_t=1.0)
    c = n // 2
    assert df[c, c + 10, c] > 0 > df[c, c, c + 10]


def test_metal_void_and_blooming_halo():
    img, metal, A, r, X = _rod_volume()
    # readout along the rod (i): no misregistration across it, the void stays in place
    out, notes = mr.finish_mr(img, A, ImagingSpec(modality="MR"), np.random.default_rng(0),
                              metal=metal, noise_sd=0.0, bias=False, readout_axis=0)
    k = img.shape[2] // 2
    mid = np.abs(X) < 15  # away from the rod ends
    core = (metal > 0.99) & mid
    assert out[core].mean() < 0.05 * TISSUE_T2
    dark = (out < 0.3 * TISSUE_T2) & mid
    assert dark[:, :, k].sum() > 1.5 * core[:, :, k].sum()  # halo larger than the metal
    halo = (r > 4.0) & (r < 5.5) & mid  # 0.75-2.25 mm outside the surface
    assert (out[halo] < 0.5 * TISSUE_T2).mean() > 0.3
    far = (r > 25) & mid
    assert np.allclose(out[far], TISSUE_T2, rtol=0.02)
    assert notes[0]["step"] == "susceptibility"
    json.dumps(notes)


def test_readout_misregistration_piles_up():
    img, metal, A, r, X = _rod_volume()
    # readout along j: across the rod, through the field gradient
    out, _ = mr.finish_mr(img, A, ImagingSpec(modality="MR"), np.random.default_rng(0),
                          metal=metal, noise_sd=0.0, bias=False, readout_axis=1)
    mid = np.abs(X) < 15
    assert out[mid].max() > 1.2 * TISSUE_T2  # bright pile-up rim
    assert ((out < 0.3 * TISSUE_T2) & mid).sum() > 1.5 * ((metal > 0.99) & mid).sum()
    # signal is moved, not created: total within a few % of the input outside the loss zone
    assert out.sum() <= img.sum() * 1.001


def test_finish_mr_noise_determinism_and_range():
    img, metal, A, *_ = _rod_volume(n=64, nk=12)
    img[:, :, :3] = 0.0  # a background region
    im = ImagingSpec(modality="MR", mr_weighting="T1")
    a, na = mr.finish_mr(img, A, im, np.random.default_rng(5), metal=metal)
    b, _ = mr.finish_mr(img, A, im, np.random.default_rng(5), metal=metal)
    c, _ = mr.finish_mr(img, A, im, np.random.default_rng(6), metal=metal)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.min() >= 0
    # Rician background: mean sd * sqrt(pi / 2)
    assert a[:, :, :3].mean() == pytest.approx(mr.NOISE_SD * np.sqrt(np.pi / 2), rel=0.1)
    assert na[-1]["weighting"] == "T1"


def test_no_metal_no_susceptibility_step():
    img = np.full((16, 16, 8), 400.0, np.float32)
    out, notes = mr.finish_mr(img, np.eye(4), ImagingSpec(modality="MR"), np.random.default_rng(0),
                              metal=None, noise_sd=0.0, bias=False)
    assert np.array_equal(out, img)
    assert all(n["step"] != "susceptibility" for n in notes)
