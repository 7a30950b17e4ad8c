"""Scoring functions: known answers on synthetic masks, screws and rods."""

from __future__ import annotations

import numpy as np
import pytest

from planner.implants import Rod, Screw
from planner.segment.evaluate import dice, match_screws, rod_errors, screw_errors, surface_distances


def _ball(shape, c, r, spacing=(1.0, 1.0, 1.0)):
    g = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), -1)
    return np.linalg.norm(g - np.asarray(c), axis=-1) <= r


def test_dice_and_surface_distance_of_shifted_balls():
    a = _ball((40, 40, 40), (20, 20, 20), 10)
    b = _ball((40, 40, 40), (22, 20, 20), 10)
    assert dice(a, a) == 1.0 and dice(a, np.zeros_like(a)) == 0.0
    assert 0.8 < dice(a, b) < 0.9
    msd, p95, mx = surface_distances(a, b, (1.0, 1.0, 1.0))
    assert 0.5 < msd < 1.6 and mx == pytest.approx(2.0, abs=0.8)
    # anisotropic spacing is honoured: same physical ball on a 0.5 x 1 x 2 mm grid
    c = _ball((80, 40, 20), (20, 20, 20), 10, (0.5, 1.0, 2.0))
    assert surface_distances(c, c, (0.5, 1.0, 2.0))[0] == 0.0


def test_screw_matching_and_errors():
    t = [Screw("L4", "left", [20, 50, 0], [10, 10, 0], 6.5), Screw("L4", "right", [-20, 50, 0], [-10, 10, 0], 6.5)]
    p = [Screw("L4", "right", [-20.5, 50, 0], [-10, 10.5, 0], 6.0)]
    pairs = match_screws(p, t)
    assert len(pairs) == 1 and pairs[0][1].side == "right"
    e = screw_errors(*pairs[0])
    assert e["head_mm"] == pytest.approx(0.5) and e["tip_mm"] == pytest.approx(0.5)
    assert 0 < e["axis_deg"] < 2 and e["diameter_mm"] == pytest.approx(-0.5)


def test_rod_errors():
    truth = Rod("left", [[20, 60, -50], [20, 60, 50]], 5.5)
    pred = Rod("left", [[20.5, 60, -45], [20.5, 60, 45]], 5.5)
    e = rod_errors(pred, truth)
    assert e["mean_mm"] == pytest.approx(0.5) and e["max_mm"] == pytest.approx(0.5)
    assert 0.85 < e["coverage"] < 0.95
