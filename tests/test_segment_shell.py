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
    lab, fits = shell.fit_bodies(sm, SP, thr)
    assert len(fits) == 1
    assert dice(lab > 0, truth > 0) >= 0.9
    centre_mm = np.asarray(fits[0]["centre_vox"]) * SP
    assert np.linalg.norm(centre_mm - [36.0, 36.0, 56.0]) < 2.0


def test_touching_fits_are_separated():
    # two bodies 6 mm apart cranio-caudally (a thin disc): two fits with a gap between them
    hu, truth = _bodies([(36.0, 36.0, 26.0), (36.0, 36.0, 54.0)], axes_mm=(20.0, 15.0, 11.0), shape=(60, 80, 52))
    sm = ndi.gaussian_filter(hu, shell.SMOOTH_SIGMA_MM / SP)
    lab, fits = shell.fit_bodies(sm, SP, shell.shell_threshold(sm))
    assert len(fits) == 2
    for n in (1, 2):
        best = max(dice(lab == k, truth == n) for k in (1, 2))
        assert best >= 0.85
    grown = ndi.binary_dilation(lab == 1)
    assert not (grown & (lab == 2)).any()
