"""Star-shaped body fits on noisy, low-contrast CT (:mod:`planner.segment.shell`)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from planner.segment import shell
from planner.segment.evaluate import dice

SP = np.array([1.2, 0.9, 1.6])  # anisotropic on purpose


def _grid(shape):
    return np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SP)], indexing="ij"), -1)


def _bodies(centres_mm, axes_mm=(20.0, 15.0, 11.0), shape=(60, 80, 70), holes=True, seed=0):
    """Hollow ellipsoids: 1.5 mm cortex at 300 HU, interior 50 HU, soft tissue 40 HU, noise
    SD 60 HU, two 7 mm holes through each shell; returns (hu, truth ids)."""
    rng = np.random.default_rng(seed)
    x = _grid(shape)
    hu = np.full(shape, 40.0)
    truth = np.zeros(shape, np.int32)
    for n, c in enumerate(centres_mm, start=1):
        d = x - np.asarray(c)
        r = np.sqrt(((d / np.asarray(axes_mm)) ** 2).sum(-1))
        inside = r <= 1.0
        cortex = inside & (r >= 1.0 - 1.5 / min(axes_mm))
        if holes:
            for h in (np.array([0.0, -axes_mm[1], 0.0]), np.array([axes_mm[0], 0.0, 0.0])):
                cortex &= np.linalg.norm(d - h, axis=-1) > 3.5
        hu[inside] = 50.0
        hu[cortex] = 300.0
        truth[inside] = n
    return hu + rng.normal(0.0, 60.0, shape), truth


def test_noise_sigma_measures_the_noise():
    rng = np.random.default_rng(1)
    assert shell.noise_sigma(np.full((40, 40, 40), 40.0)) == 0.0
    sig = shell.noise_sigma(40.0 + rng.normal(0.0, 25.0, (40, 40, 40)))
    assert abs(sig - 25.0) < 2.0
    # at 60 HU the soft-tissue band (-100..150 HU) clips the tails: a little low, still
    # well above the gate
    sig = shell.noise_sigma(40.0 + rng.normal(0.0, 60.0, (40, 40, 40)))
    assert shell.NOISY_CT_SIGMA_HU < sig <= 60.0


def test_enclosure_counts_a_hole_as_one_direction():
    hard = np.zeros((30, 30, 30), bool)
    hard[5:25, 5:25, 5:25] = True
    hard[6:24, 6:24, 6:24] = False
    hard[5, 13:17, 13:17] = False  # a hole in the -x wall
    e = shell.enclosure_count(hard, SP, 30.0, cap_axis=None)
    assert e[15, 10, 10] == 6
    assert e[10, 15, 15] == 5  # behind the hole: open towards -x only
    assert e[2, 2, 2] <= 3  # outside
    # the image faces along the capped axis count as shell
    assert shell.enclosure_count(np.zeros((5, 5, 5), bool), SP, 30.0, cap_axis=2)[2, 2, 2] == 2


def test_fit_bridges_holes_in_a_noisy_shell():
    hu, truth = _bodies([(36.0, 36.0, 56.0)])
    sm = ndi.gaussian_filter(hu, shell.SMOOTH_SIGMA_MM / SP)
    thr = shell.shell_threshold(sm)
    # a threshold alone leaves the shell open: its 3-D fill stays empty
    assert ndi.binary_fill_holes(sm >= thr)[truth > 0].mean() < 0.5
    lab, fits, gap = shell.fit_bodies(sm, SP, thr)
    assert len(fits) == 1
    assert not gap.any()  # one body: nothing lies between two
    assert dice(lab > 0, truth > 0) >= 0.9
    centre_mm = np.asarray(fits[0]["centre_vox"]) * SP
    assert np.linalg.norm(centre_mm - [36.0, 36.0, 56.0]) < 2.0


def test_touching_fits_are_separated():
    # two bodies 6 mm apart cranio-caudally (a thin disc): two fits with a gap between them
    hu, truth = _bodies([(36.0, 36.0, 26.0), (36.0, 36.0, 54.0)], axes_mm=(20.0, 15.0, 11.0), shape=(60, 80, 52))
    sm = ndi.gaussian_filter(hu, shell.SMOOTH_SIGMA_MM / SP)
    lab, fits, gap = shell.fit_bodies(sm, SP, shell.shell_threshold(sm))
    assert len(fits) == 2
    for n in (1, 2):
        best = max(dice(lab == k, truth == n) for k in (1, 2))
        assert best >= 0.85
    grown = ndi.binary_dilation(lab == 1)
    assert not (grown & (lab == 2)).any()
    # the disc between them is marked as a gap: between the bodies' end plates (z 37-43 mm)
    # on the central column, nowhere beside the bodies
    z = np.arange(lab.shape[2]) * SP[2]
    col = gap[30, 40]
    assert col[(z > 38.0) & (z < 42.0)].all()
    assert not col[(z < 20.0) | (z > 60.0)].any()
    assert not gap[:5].any() and not gap[-5:].any()


def test_edges_beat_bright_cancellous_bone():
    # a bright cancellous core reaching out to 11 mm (150 HU after smoothing: above the shell
    # threshold) inside a 20 x 15 x 11 mm body: the first crossing stops at its edge, the
    # refinement takes the stronger cortex beyond
    hu, truth = _bodies([(36.0, 36.0, 56.0)], axes_mm=(20.0, 15.0, 14.0), holes=False, seed=3)
    x = _grid(hu.shape)
    core = np.linalg.norm((x - [36.0, 36.0, 56.0]) / [16.0, 11.0, 10.0], axis=-1) <= 1.0
    core &= x[..., 0] > 36.0  # on the left half only
    hu[core] += 110.0
    sm = ndi.gaussian_filter(hu, shell.SMOOTH_SIGMA_MM / SP)
    thr = shell.shell_threshold(sm)
    cen = np.array([36.0, 36.0, 56.0]) / SP
    rays = shell._Rays()
    prof, out_img = shell._profiles(sm, cen, SP, rays)
    first = shell._first_crossing_radii(prof, out_img, thr, rays)
    radii, support = shell.star_radii(sm, cen, SP, thr, rays)
    # true radius along each ray (ellipsoid 20 x 15 x 14 mm)
    true_r = 1.0 / np.sqrt(((rays.dirs / [20.0, 15.0, 14.0]) ** 2).sum(1))
    left = rays.dirs[:, 0] > 0.5
    assert np.median(np.abs(first[left] - true_r[left])) > 2.0  # stopped at the core
    assert np.median(np.abs(radii - true_r)) < 1.0
    assert 0.0 < support <= 1.0


def test_fits_become_bodies_cranial_first_without_shadowed_or_off_column_ones():
    from planner.segment.bone import _bodies_of_fits

    sp = np.array([2.0, 2.0, 2.0])
    fit = np.zeros((60, 60, 60), np.int32)
    fit[20:40, 10:25, 5:20] = 1  # lower body
    fit[20:40, 10:25, 25:40] = 2  # upper body
    fit[26:34, 35:42, 25:40] = 3  # behind the upper body (24-64 mm back): a canal segment
    fit[50:58, 10:20, 45:55] = 4  # 40 mm to the side: off the column
    pieces, bodies, edt = _bodies_of_fits(fit, fit > 0, sp, None)
    assert [b["pieces"] for b in bodies] == [[2], [1]]  # cranial (larger z) first
    assert set(np.unique(pieces)) == {0, 1, 2}
    assert bodies[0]["zmin"] == 50.0 and bodies[0]["zmax"] == 80.0
    assert edt.shape == fit.shape and bodies[0]["half_thickness"] > 0
