"""Instrument specifications and curved-needle geometry."""

from __future__ import annotations

import numpy as np
import pytest

from planner.errors import GeometryError, PlannerError
from planner.instruments import (
    GAUGE_OD_MM,
    INSTRUMENTS,
    CurvedNeedle,
    KyphoplastyCannula,
    StraightNeedle,
    curved_needle_centreline,
    curved_needle_tip,
    gauge_outer_diameter_mm,
    get_instrument,
)

# instruments.md section 1a (needle gauge table), OD in mm
GAUGE_TABLE = {8: 4.191, 10: 3.404, 11: 3.048, 12: 2.769, 13: 2.413, 14: 2.108, 15: 1.829}


@pytest.mark.parametrize("gauge,od", sorted(GAUGE_TABLE.items()))
def test_gauge_table(gauge, od):
    assert gauge_outer_diameter_mm(gauge) == pytest.approx(od, abs=1e-9)
    assert GAUGE_OD_MM[gauge] == od


def test_registry_defaults():
    for name in ("needle_11g", "needle_13g", "kyphoplasty_cannula", "curved_needle"):
        assert name in INSTRUMENTS
    n11, n13 = get_instrument("needle_11g"), get_instrument("needle_13g")
    assert isinstance(n11, StraightNeedle) and n11.od_mm == pytest.approx(3.048)
    assert n13.od_mm == pytest.approx(2.413) and n13.radius_mm == pytest.approx(1.2065)
    assert n11.usable_length_mm == 120.0
    for L in (100, 120, 150):
        assert get_instrument(f"needle_11g_{L}mm").usable_length_mm == L
    kc = get_instrument("kyphoplasty_cannula")
    assert isinstance(kc, KyphoplastyCannula) and kc.od_mm == pytest.approx(4.2)
    assert kc.tamp.balloon_length_mm == 15.0
    assert kc.min_straight_channel_mm == pytest.approx(18.0)
    assert get_instrument("kyphoplasty_cannula_express").od_mm == pytest.approx(3.3)
    cn = get_instrument("curved_needle")
    assert isinstance(cn, CurvedNeedle)
    assert cn.cannula.gauge == 11 and cn.stylet_od_mm == pytest.approx(2.413)


def test_overrides_and_errors():
    n = get_instrument("needle_11g", gauge=13)
    assert n.od_mm == pytest.approx(2.413)
    cn = get_instrument("curved_needle", arc_radius_mm=15.0, max_extension_mm=30.0)
    assert cn.arc_radius_mm == 15.0 and INSTRUMENTS["curved_needle"].arc_radius_mm == 20.0
    with pytest.raises(PlannerError, match="unknown instrument"):
        get_instrument("needle_99g")
    with pytest.raises(PlannerError, match="unknown parameter"):
        get_instrument("needle_11g", colour="red")
    with pytest.raises(PlannerError):
        StraightNeedle(gauge=99)
    with pytest.raises(PlannerError):
        get_instrument("curved_needle", arc_radius_mm=-1.0)
    d = cn.to_dict()
    assert d["cannula"]["od_mm"] == pytest.approx(3.048)


@pytest.mark.parametrize("radius,ext", [(20.0, 25.0), (12.0, 30.0), (35.0, 10.0)])
def test_curved_centreline_radius_and_extension(radius, ext):
    entry = np.array([10.0, -5.0, 3.0])
    direction = np.array([0.2, 1.0, -0.3])
    bend = np.array([1.0, 0.0, 0.4])
    c = curved_needle_centreline(entry, direction, bend, radius, ext, n=400)
    assert c.shape == (400, 3)
    np.testing.assert_allclose(c[0], entry)
    # arc length equals the extension (polyline of 400 points: chord error < 1e-4 relative)
    L = np.linalg.norm(np.diff(c, axis=0), axis=1).sum()
    assert L == pytest.approx(ext, rel=1e-4)
    # all points at the requested radius from the centre of curvature
    d = direction / np.linalg.norm(direction)
    b = bend - (bend @ d) * d
    b /= np.linalg.norm(b)
    centre = entry + radius * b
    np.testing.assert_allclose(np.linalg.norm(c - centre, axis=1), radius, atol=1e-9)
    # planar, tangent to the cannula at the start
    normal = np.cross(d, b)
    np.testing.assert_allclose((c - entry) @ normal, 0.0, atol=1e-9)
    t0 = (c[1] - c[0]) / np.linalg.norm(c[1] - c[0])
    assert t0 @ d > 0.9999
    tip, tangent = curved_needle_tip(entry, direction, bend, radius, ext)
    np.testing.assert_allclose(tip, c[-1], atol=1e-9)
    assert np.degrees(np.arccos(np.clip(tangent @ d, -1, 1))) == pytest.approx(
        np.degrees(ext / radius), abs=1e-6
    )


def test_curved_centreline_errors():
    with pytest.raises(GeometryError):
        curved_needle_centreline([0, 0, 0], [0, 0, 1], [0, 0, 2], 20, 10)
    with pytest.raises(PlannerError):
        curved_needle_centreline([0, 0, 0], [0, 0, 1], [1, 0, 0], 10, 40)  # > half circle
    straight = curved_needle_centreline([0, 0, 0], [0, 0, 2], [1, 0, 0], np.inf, 10, n=3)
    np.testing.assert_allclose(straight[-1], [0, 0, 10])
