"""Soft tissues of the phantom: discs, canal contents, vessels, lungs, muscles, fluid."""

from __future__ import annotations

import numpy as np
import pytest

from planner.labels.registry import LABEL_IDS, LEVELS, TISSUES
from planner.phantom.presets import PRESETS
from planner.phantom.soft_tissue import build_soft_tissue
from planner.phantom.vertebrae import build_bone, build_frames


def _build(name: str, seed: int = 7):
    spec = PRESETS[name]()
    frames = build_frames(spec, np.random.default_rng(spec.seed))
    structures, findings = build_soft_tissue(spec, frames, np.random.default_rng(seed))
    return spec, frames, {s.name: s for s in structures}, findings


@pytest.fixture(scope="module", params=sorted(PRESETS))
def case(request):
    spec, frames, S, findings = _build(request.param)
    bone, _ = build_bone(spec, frames, np.random.default_rng(spec.seed + 1))
    return spec, frames, S, findings, bone


def _inside_points(s, n=40000, seed=0):
    lo, hi = s.bounds
    p = np.random.default_rng(seed).uniform(lo, hi, (n, 3))
    return p[s.sdf(p) < 0]


def test_names_tissues_bounds(case):
    spec, frames, S, findings, bone = case
    levels = spec.level_list()
    for name, s in S.items():
        assert name in LABEL_IDS, name
        assert s.tissue in TISSUES
        assert s.parts is None
    for a in levels[:-1]:
        assert f"{a}_disc" in S and S[f"{a}_disc"].priority == 58
    for name in ("spinal_canal", "thecal_sac", "muscle", "skin", "fat", "soft_tissue"):
        assert name in S
    # a structure's inside lies within its bounds (checked on a padded box)
    for name in ("thecal_sac", "aorta", "L1_disc" if "L1_disc" in S else f"{levels[0]}_disc"):
        if name not in S:
            continue
        s = S[name]
        lo, hi = s.bounds
        p = np.random.default_rng(1).uniform(lo - 10, hi + 10, (20000, 3))
        ins = p[s.sdf(p) < 0]
        assert np.all(ins >= lo - 1e-6) and np.all(ins <= hi + 1e-6)


def test_canal_sac_cord(case):
    spec, frames, S, findings, bone = case
    sac = _inside_points(S["thecal_sac"])
    assert len(sac) > 100
    assert np.all(S["spinal_canal"].sdf(sac) < 0.05)  # sac inside the canal
    if "spinal_cord" in S:
        cord = _inside_points(S["spinal_cord"])
        assert np.all(S["thecal_sac"].sdf(cord) < 0.05)
        tip_z = S["spinal_cord"].meta["conus_tip_lps_mm"][2]
        if "L2" in frames:
            assert tip_z > frames["L2"].landmarks["endplate_inferior_centre"][2]
    # canal outside bone around the pedicle level of every vertebra
    rng = np.random.default_rng(2)
    for b in bone:
        if not b.name.startswith("vertebra_"):
            continue
        f = frames[b.name.split("_")[1]]
        p = f.landmarks["canal_centre"] + rng.uniform(-14, 14, (4000, 3))
        p = p[np.abs((p - f.landmarks["canal_centre"]) @ f.w) < 4.0]
        canal = S["spinal_canal"].sdf(p) < 0
        assert canal.sum() > 50
        assert np.all(b.sdf(p[canal]) > -0.05), b.name


def test_vessels_position(case):
    spec, frames, S, findings, bone = case
    if "aorta" not in S:
        return
    aorta = S["aorta"]
    for lev, want in (("T8", "left-anterior"), ("L2", "anterior")):
        if lev not in frames:
            continue
        f = frames[lev]
        # aorta cross-section centre in the plane of the body centre
        loc = np.array([[u, v, 0.0] for u in np.arange(-60, 61, 1.0) for v in np.arange(-90, 1, 1.0)])
        ins = loc[aorta.sdf(f.to_world(loc)) < 0]
        assert len(ins) > 100
        cu, cv = ins[:, 0].mean(), ins[:, 1].mean()
        hd = f.dims["body_depth_mm"] / 2
        if want == "left-anterior":
            assert cu > 10 and cv < 0
            # Se96: 19.7 +- 4.3 mm left, 41.7 +- 8.6 mm anterior of the posterior body wall
            assert abs(cu - 19.7) < 2 * 4.3 + 4 and abs((hd - cv) - 41.7) < 2 * 8.6
        else:
            assert cv < -hd and abs(cu) < 25
    if "vena_cava" in S and "L2" in frames:
        f = frames["L2"]
        loc = np.array([[u, v, 0.0] for u in np.arange(-70, 71, 1.0) for v in np.arange(-90, 1, 1.0)])
        ins = loc[S["vena_cava"].sdf(f.to_world(loc)) < 0]
        assert ins[:, 0].mean() < -10 and ins[:, 1].mean() < 0  # right anterior


def test_lungs(case):
    spec, frames, S, findings, bone = case
    first = LEVELS.index(spec.levels[0])
    has_lung = first < LEVELS.index("L1")
    assert ("lung_left" in S) == has_lung and ("pleura" in S) == has_lung
    if not has_lung:
        return
    for side in ("left", "right"):
        pts = _inside_points(S[f"lung_{side}"], n=60000)
        assert len(pts) > 100
        assert np.all(np.sign(pts[:, 0] - np.mean([f.centre_lps[0] for f in frames.values()]))
                      == (1 if side == "left" else -1))
        # no lung below L1's upper endplate
        if "L1" in frames:
            l1 = frames["L1"]
            assert np.all((pts - l1.landmarks["endplate_superior_centre"]) @ l1.w > -5.0)
        # lung keeps clear of bone and aorta
        sub = pts[:: max(1, len(pts) // 3000)]
        for b in bone:
            assert np.all(b.sdf(sub) > 0), b.name
        if "aorta" in S:
            assert np.all(S["aorta"].sdf(sub) > 0)


def test_pleura_clear_of_the_costovertebral_corridor(case):
    """The pleura lies against the lateral body anterior of the rib head and on the rib
    necks, never inside bone nor around the pedicle between rib head and posterior
    elements (the parapedicular / transpedicular corridor)."""
    spec, frames, S, findings, bone = case
    if "pleura" not in S:
        return
    parts = {n: sdf for b in bone if b.parts for n, sdf in b.parts.items()}
    rng = np.random.default_rng(5)
    for lev, f in frames.items():
        if not lev.startswith("T"):
            continue
        loc = rng.uniform([-45, -10, -12], [45, 45, 12], (60000, 3))
        pts = f.to_world(loc)
        ins = S["pleura"].sdf(pts) < 0
        for side in ("left", "right"):
            ped = parts.get(f"{lev}_pedicle_{side}")
            if ped is None or f"rib_head_{side}" not in f.landmarks:
                continue
            d = ped(pts[ins])
            assert d.min() > 1.0, (lev, side, d.min())  # not inside bone (1.5 mm pleura gap)
            v_head = (f.landmarks[f"rib_head_{side}"] - f.centre_lps) @ f.v
            behind = loc[ins][:, 1] > v_head + 6.0  # well behind the head (frames tilt)
            if behind.any():
                assert d[behind].min() > 4.0, (lev, side, d[behind].min())


def test_fluid_collection(case):
    spec, frames, S, findings, bone = case
    want = bool(spec.pathology.fluid)
    assert ("fluid_collection" in S) == want
    assert len(findings["fluid_collections"]) == len(spec.pathology.fluid)
    if not want:
        return
    fc = findings["fluid_collections"][0]
    assert fc["kind"] == "seroma" and fc["volume_ml"] > 1.0
    pts = _inside_points(S["fluid_collection"], n=40000)
    assert len(pts) > 100
    assert np.all(S["spinal_canal"].sdf(pts) > 0)
    f = frames["T6"]
    assert np.all((pts - f.landmarks["canal_centre"]) @ f.v > 0)  # posterior to the canal


def test_body_outline_depth(case):
    spec, frames, S, findings, bone = case
    f = frames[spec.level_list()[len(spec.level_list()) // 2]]
    c = f.landmarks["canal_centre"]
    t = np.arange(0, 200, 0.5)
    ray = c + t[:, None] * np.array([0, 1.0, 0])
    depth = t[np.argmax(S["skin"].sdf(ray) > 0)]
    assert 55 < depth < 110  # skin-to-canal ~7-9 cm at BMI 25-30 (instruments.md §5e)
    assert S["fat"].sdf(c[None])[0] < 0 and S["soft_tissue"].sdf(c[None])[0] < 0


def test_deterministic():
    _, _, a, fa = _build("midthoracic_costovertebral", seed=11)
    _, _, b, fb = _build("midthoracic_costovertebral", seed=11)
    assert fa == fb and list(a) == list(b)
    p = np.random.default_rng(3).uniform(-150, 150, (5000, 3))
    for name in ("aorta", "lung_left", "thecal_sac", "muscle", "fluid_collection"):
        assert np.array_equal(a[name].sdf(p), b[name].sdf(p))
