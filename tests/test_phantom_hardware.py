"""Hardware of the phantom: screws, rods, cross-links for every preset."""

from __future__ import annotations

import numpy as np
import pytest

from planner.phantom.hardware import (
    DIAMETER_RANGE_MM,
    LENGTH_RANGE_MM,
    build_hardware,
    default_diameter_mm,
    default_length_mm,
    recorded_screw_sdf,
    screw_sdf,
)
from planner.phantom.presets import PRESETS
from planner.phantom.vertebrae import build_bone, build_frames


@pytest.fixture(scope="module", params=sorted(PRESETS))
def case(request):
    spec = PRESETS[request.param]()
    frames = build_frames(spec, np.random.default_rng(spec.seed))
    bone, _ = build_bone(spec, frames, np.random.default_rng(spec.seed + 1))
    screws, rods, crosslinks, structures = build_hardware(spec, frames)
    return spec, frames, {b.name: b for b in bone}, screws, rods, crosslinks, structures


def test_screws_match_spec(case):
    spec, frames, bone, screws, rods, crosslinks, structures = case
    assert [(s.level, s.side) for s in screws] == [(s.level, s.side) for s in spec.surgery.screws]
    names = {s.name for s in structures}
    for s in screws:
        assert s.name in names
        assert DIAMETER_RANGE_MM[0] <= s.diameter_mm <= DIAMETER_RANGE_MM[1]
        assert (s.diameter_mm * 2) == int(s.diameter_mm * 2)
        assert LENGTH_RANGE_MM[0] - 1e-6 <= s.length_mm <= LENGTH_RANGE_MM[1] + 1e-6
        st = next(x for x in structures if x.name == s.name)
        assert st.tissue == s.material and st.priority == 100
        assert st.meta["level"] == s.level and st.meta["side"] == s.side


def test_screw_in_bone_along_pedicle_axis(case):
    spec, frames, bone, screws, *_ = case
    for s in screws:
        f = frames[s.level]
        entry = f.landmarks[f"pedicle_entry_{s.side}"]
        target = f.landmarks[f"pedicle_target_{s.side}"]
        assert np.allclose(s.head_lps, entry)
        # on the pedicle axis, short of the anterior cortex
        assert np.allclose(s.axis, f.pedicle_axis[s.side], atol=1e-6)
        assert s.length_mm < np.linalg.norm(target - entry)
        c = f.landmarks["body_centre"]
        assert np.linalg.norm(s.tip_lps - c) < np.linalg.norm(s.head_lps - c)
        vert = bone[f"vertebra_{s.level}"]
        assert vert.sdf(s.tip_lps[None])[0] < -1.0  # tip inside the vertebra
        assert vert.parts[f"{s.level}_body"](s.tip_lps[None])[0] < 1.0
        # the shaft stays close to the pedicle isthmus (on the axis through it)
        iso = f.landmarks[f"pedicle_isthmus_{s.side}"]
        t = (iso - s.head_lps) @ s.axis
        assert np.linalg.norm(s.head_lps + t * s.axis - iso) < 1.0


def test_rods_through_seats(case):
    spec, frames, bone, screws, rods, crosslinks, structures = case
    for side in ("left", "right"):
        mine = [s for s in screws if s.side == side]
        rod = [r for r in rods if r.side == side]
        assert len(rod) == (1 if spec.surgery.rods and len(mine) >= 2 else 0)
        if not rod:
            continue
        poly = rod[0].centreline_lps
        assert rod[0].diameter_mm == spec.surgery.rod_diameter_mm
        for s in mine:
            assert np.linalg.norm(poly - s.rod_seat_lps, axis=1).min() < 0.5
        st = next(x for x in structures if x.name == f"rod_{side}")
        seats = np.array([s.rod_seat_lps for s in mine])
        assert np.all(st.sdf(seats) < -rod[0].diameter_mm / 2 + 0.5)
    assert [c.level for c in crosslinks] == list(spec.surgery.crosslinks)
    for c in crosslinks:
        f = frames[c.level]
        apex = c.centreline_lps[1]
        assert (apex - f.landmarks["lamina_centre"]) @ f.v > c.diameter_mm / 2


def test_screw_sdf_matches_recorded_geometry(case):
    screws = case[3]
    rng = np.random.default_rng(0)
    for s in screws[:4]:
        sdf, ref = screw_sdf(s), recorded_screw_sdf(s)
        lo, hi = sdf.bounds
        p = rng.uniform(lo, hi, (60000, 3))
        d = sdf(p)
        near = p[np.abs(d) < 0.2]
        # project onto the zero set with one Newton step along a numerical gradient
        eps = 1e-3
        g = np.stack([(sdf(near + eps * e) - sdf(near - eps * e)) / (2 * eps) for e in np.eye(3)], 1)
        surf = near - sdf(near)[:, None] * g / np.linalg.norm(g, axis=1, keepdims=True) ** 2
        assert len(surf) > 100
        assert np.abs(sdf(surf)).max() < 0.02
        assert ref(surf).max() < 0.05  # the zero set lies within the recorded solid
        assert ref(p[d < 0]).max() < 0.05  # every metal point is inside the recorded solid


def test_sizing_rules():
    assert default_diameter_mm(4.0) == 4.5
    assert default_diameter_mm(8.3) == 6.5
    assert default_diameter_mm(15.0) == 7.5
    assert default_length_mm(50.0) == 40.0
    assert default_length_mm(80.0) == 60.0
    assert default_length_mm(28.0) < 28.0 - 1.9
