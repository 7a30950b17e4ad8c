"""Vertebral anatomy of the phantom: morphometry table, frames, bone SDFs, surgery, pathology."""

from __future__ import annotations

import re

import numpy as np
import pytest

from planner.labels.registry import LABEL_IDS
from planner.phantom import morphometry as morph
from planner.phantom.model import LANDMARK_KEYS
from planner.phantom.presets import PRESETS
from planner.phantom.spec import CaseSpec, FractureSpec, LesionSpec, PathologySpec, SurgerySpec
from planner.phantom.vertebrae import (
    articular_process_centres,
    build_bone,
    build_frames,
    measure_heights,
)

_CACHE: dict = {}


def _build(name: str):
    if name not in _CACHE:
        spec = PRESETS[name]()
        frames = build_frames(spec, np.random.default_rng(spec.seed))
        structs, findings = build_bone(spec, frames, np.random.default_rng(spec.seed))
        _CACHE[name] = (spec, frames, {s.name: s for s in structs}, findings)
    return _CACHE[name]


def _bone_sdf(structs: dict, p: np.ndarray) -> np.ndarray:
    p = np.atleast_2d(p)
    d = np.full(len(p), np.inf)
    for s in structs.values():
        if s.tissue == "cortical_bone":
            d = np.minimum(d, s.sdf(p))
    return d


# ---- morphometry ----------------------------------------------------------------------
def test_morphometry_every_value_cited():
    for lev in morph.LEVELS:
        src = morph.level_sources(lev)
        dims = morph.level_dims(lev)
        assert set(src) == set(dims) == set(morph.QUANTITIES)
        for q, text in src.items():
            assert re.search(r"\[(V|S|U)", text), (lev, q, text)


def test_morphometry_trends_and_rules():
    w = {lev: morph.level_dims(lev)["pedicle_width_mm"] for lev in morph.LEVELS}
    assert 4.0 <= w["T4"] <= 5.0 and w["L5"] > 14.0
    assert min(w, key=w.get) in ("T4", "T5")
    assert 35 < morph.level_dims("L3")["body_width_mm"] < 50
    assert abs(morph.level_sd("L1")["body_width_mm"] - 1.03 * np.sqrt(12)) < 1e-9
    z = morph.truncated_normal(np.random.default_rng(0), (10000,))
    assert np.abs(z).max() <= morph.TRUNCATE_SD
    male = morph.patient_dims("L3", None, 1.0, "male")
    female = morph.patient_dims("L3", None, 1.0, "female")
    assert female["body_width_mm"] == pytest.approx(0.92 * male["body_width_mm"])
    assert female["pedicle_transverse_angle_deg"] == male["pedicle_transverse_angle_deg"]
    big = morph.patient_dims("L3", {"body_width_mm": 5.0}, 3.0, "male")
    assert big["body_width_mm"] == pytest.approx(male["body_width_mm"] + 2 * morph.level_sd("L3")["body_width_mm"])


# ---- frames ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(PRESETS))
def test_frames_per_preset(name):
    spec = PRESETS[name]()
    frames = build_frames(spec, np.random.default_rng(spec.seed))
    assert list(frames) == spec.level_list()
    centres = np.array([f.centre_lps for f in frames.values()])
    assert np.allclose(centres[:, 0], 0.0)
    assert np.linalg.norm(centres.mean(0)) < 1e-6
    assert np.all(np.diff(centres[:, 2]) < 0)  # cranial to caudal
    for lev, f in frames.items():
        assert np.allclose(f.R.T @ f.R, np.eye(3), atol=1e-9)
        assert np.linalg.det(f.R) == pytest.approx(1.0)
        keys = set(LANDMARK_KEYS) if lev.startswith("T") else set(LANDMARK_KEYS) - {"rib_head_left", "rib_head_right"}
        assert set(f.landmarks) == keys
        d = f.dims
        for k in ("body_width_mm", "body_depth_mm", "body_height_anterior_mm", "body_height_posterior_mm",
                  "pedicle_width_mm", "pedicle_height_mm", "pedicle_transverse_angle_deg",
                  "pedicle_sagittal_angle_deg", "canal_width_mm", "canal_depth_mm",
                  "disc_height_below_mm", "cortex_mm", "height_loss_fraction"):
            assert k in d
        assert 20 < d["body_width_mm"] < 60
        if lev in ("T4", "T5"):
            assert 2.5 < d["pedicle_width_mm"] < 7.0
        if lev == "L5":
            assert d["pedicle_width_mm"] > 9.0
        for side in ("left", "right"):
            ax = f.pedicle_axis[side]
            assert np.linalg.norm(ax) == pytest.approx(1.0)
            chord = f.landmarks[f"pedicle_target_{side}"] - f.landmarks[f"pedicle_entry_{side}"]
            assert np.allclose(chord / np.linalg.norm(chord), ax, atol=1e-6)
            # entry posterior to the target, medial convergence or near parallel
            assert (f.landmarks[f"pedicle_entry_{side}"] - f.landmarks[f"pedicle_target_{side}"]) @ f.v > 20
        assert (f.landmarks["spinous_tip"] - f.landmarks["lamina_centre"]) @ f.v > 5
        assert f.landmarks["tp_tip_left"] @ f.u > 15 and f.landmarks["tp_tip_right"] @ f.u < -15
    for fr in spec.pathology.fractures:
        assert frames[fr.level].dims["height_loss_fraction"] == fr.height_loss


def test_frames_deterministic_and_seed_dependent():
    spec = PRESETS["osteoporotic_no_hardware"]()
    a = build_frames(spec, np.random.default_rng(7))
    b = build_frames(spec, np.random.default_rng(7))
    c = build_frames(spec, np.random.default_rng(8))
    assert all(a[k].to_dict() == b[k].to_dict() for k in a)
    assert any(a[k].dims["body_width_mm"] != c[k].dims["body_width_mm"] for k in a)


# ---- bone -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["case_example", "midthoracic_costovertebral"])
def test_landmarks_inside_outside_parts(name):
    spec, frames, structs, _ = _build(name)
    for s in structs.values():
        assert s.name.startswith("vertebra_") or s.name in LABEL_IDS
        for part in s.parts or {}:
            assert part in LABEL_IDS
    removed = {(lev, side) for lev, side in spec.surgery.pediclectomy}
    removed |= {(lev, side) for lev, side, _ in spec.surgery.vertebrectomy}
    for lev, f in frames.items():
        v = structs[f"vertebra_{lev}"]
        lm = f.landmarks
        assert v.parts[f"{lev}_body"](lm["body_centre"][None])[0] < 0
        assert _bone_sdf(structs, lm["canal_centre"][None])[0] > 0
        for side in ("left", "right"):
            if (lev, side) in removed:
                continue
            ped = v.parts[f"{lev}_pedicle_{side}"]
            assert ped(lm[f"pedicle_isthmus_{side}"][None])[0] < 0, (lev, side)
            # the pedicle axis runs inside the pedicle behind the body ...
            e, t = lm[f"pedicle_entry_{side}"], lm[f"pedicle_target_{side}"]
            s_ = np.linspace(0, 1, 200)[:, None]
            pts = e + s_ * (t - e)
            wall = f.to_local(lm["body_posterior_centre"])[1]
            behind = f.to_local(pts)[:, 1] > wall + 1.0
            in_ped = ped(pts[behind]) < 0
            assert in_ped.mean() > 0.6, (lev, side, in_ped.mean())
            # ... and the whole entry -> target path stays in bone (the screw corridor)
            assert (v.sdf(pts[5:-2]) < 0).mean() > 0.97, (lev, side)


def test_laminectomy_removes_lamina_and_spinous():
    _, frames, structs, findings = _build("midthoracic_costovertebral")
    f = frames["T6"]
    v = structs["vertebra_T6"]
    assert v.sdf(f.landmarks["lamina_centre"][None])[0] > 0
    sp = f.landmarks["spinous_tip"] - 3.0 * f.v
    assert v.sdf(sp[None])[0] > 0
    # the neighbours keep theirs
    for lev in ("T5", "T7"):
        g = frames[lev]
        inside = g.landmarks["lamina_centre"] - 2.0 * g.v
        assert structs[f"vertebra_{lev}"].sdf(inside[None])[0] < 0
    assert {"level": "T6", "kind": "laminectomy", "side": "both"} in findings["resections"]


def test_facetectomy_one_side_only():
    _, frames, structs, findings = _build("case_example")
    l4 = articular_process_centres(frames, "L4")
    l5 = articular_process_centres(frames, "L5")
    d4 = structs["vertebra_L4"].sdf(np.array([l4["iap_left"], l4["iap_right"]]))
    d5 = structs["vertebra_L5"].sdf(np.array([l5["sap_left"], l5["sap_right"]]))
    assert d4[0] > 0 and d4[1] < 0
    assert d5[0] > 0 and d5[1] < 0
    # untouched joint elsewhere: L3 inferior processes present on both sides
    l3 = articular_process_centres(frames, "L3")
    assert np.all(structs["vertebra_L3"].sdf(np.array([l3["iap_left"], l3["iap_right"]])) < 0)
    assert {"level": "L4", "kind": "facetectomy", "side": "left"} in findings["resections"]


def test_facet_joints_touch_with_gap():
    _, frames, structs, _ = _build("case_example")
    l3 = articular_process_centres(frames, "L3")
    l4 = articular_process_centres(frames, "L4")
    for side in ("left", "right"):
        gap = np.linalg.norm(l3[f"iap_{side}"] - l4[f"sap_{side}"])
        assert gap < 12.0  # the two processes face each other across the joint
        mid = (l3[f"iap_{side}"] + l4[f"sap_{side}"]) / 2
        assert structs["vertebra_L3"].sdf(mid[None])[0] > 0
        assert structs["vertebra_L4"].sdf(mid[None])[0] > 0


def test_rib_head_resection_and_vertebrectomy():
    _, frames, structs, _ = _build("midthoracic_costovertebral")
    f = frames["T6"]
    assert structs["T6_rib_left"].sdf(f.landmarks["rib_head_left"][None])[0] > 0
    assert structs["T6_rib_right"].sdf(f.landmarks["rib_head_right"][None])[0] < 0
    v = structs["vertebra_T6"]
    assert v.sdf(f.landmarks["tp_tip_left"][None] - 2.0 * f.u)[0] > 0
    assert v.sdf(f.landmarks["pedicle_isthmus_left"][None])[0] > 0  # pedicle removed
    assert v.sdf(f.landmarks["pedicle_isthmus_right"][None])[0] < 0
    b = f.dims["body_depth_mm"] / 2
    pl = f.to_world(np.array([0.5 * f.dims["body_width_mm"] / 2, b - 3.0, 0.0]))
    pr = f.to_world(np.array([-0.5 * f.dims["body_width_mm"] / 2, b - 3.0, 0.0]))
    assert v.parts["T6_body"](np.array([pl, pr]))[0] > 0
    assert v.parts["T6_body"](np.array([pl, pr]))[1] < 0
    # ribs: head at the body, reach ~100-140 mm
    rib = structs["T7_rib_left"]
    ext = rib.bounds[1] - rib.bounds[0]
    assert 60 < np.linalg.norm(ext) < 200


def _anterior_height(frames, structs, lev):
    f = frames[lev]
    body = structs[f"vertebra_{lev}"].parts[f"{lev}_body"]
    w = np.arange(-30, 30, 0.05)
    v0 = -f.dims["body_depth_mm"] / 2 + 3.0
    pts = f.to_world(np.stack([np.zeros_like(w), np.full_like(w, v0), w], 1))
    return (body(pts) < 0).sum() * 0.05


def test_wedge_fracture_height():
    spec, frames, structs, findings = _build("osteoporotic_no_hardware")
    d = spec.to_dict()
    d["pathology"]["fractures"] = []
    intact = CaseSpec.from_dict(d)
    fr0 = build_frames(intact, np.random.default_rng(spec.seed))
    st0 = {s.name: s for s in build_bone(intact, fr0, np.random.default_rng(0))[0]}
    h_frac = _anterior_height(frames, structs, "L1")
    h_int = _anterior_height(fr0, st0, "L1")
    assert h_frac / h_int == pytest.approx(0.7, abs=0.06)
    # posterior preserved, neighbours unchanged
    assert frames["L1"].dims["body_height_posterior_mm"] == fr0["L1"].dims["body_height_posterior_mm"]
    assert _anterior_height(frames, structs, "L2") == pytest.approx(_anterior_height(fr0, st0, "L2"), abs=0.2)
    (fx,) = findings["fractures"]
    assert fx["level"] == "L1" and fx["kind"] == "wedge"
    assert fx["anterior_height_mm"] < fx["posterior_height_mm"]
    # landmarks follow the deformed body: upper end-plate centre on the body surface
    f = frames["L1"]
    body = structs["vertebra_L1"].parts["L1_body"]
    assert abs(body(f.landmarks["endplate_superior_centre"][None])[0]) < 0.3


def test_biconcave_crush_lesion_and_osteoporosis():
    spec = CaseSpec(
        levels=("L1", "L3"),
        seed=5,
        pathology=PathologySpec(
            fractures=[FractureSpec("L1", 0.3, "biconcave"), FractureSpec("L3", 0.25, "crush")],
            lesions=[LesionSpec("L2", radius_mm=7.0, offset_mm=(5.0, 6.0, 0.0), breach_posterior=True)],
            osteoporotic=True,
        ),
        surgery=SurgerySpec(pediclectomy=[("L2", "right")]),
    )
    frames = build_frames(spec, np.random.default_rng(5))
    structs, findings = build_bone(spec, frames, np.random.default_rng(5))
    by = {s.name: s for s in structs}
    h1 = measure_heights(frames, "L1")
    assert h1["middle_height_mm"] < h1["anterior_height_mm"] - 3
    h3 = measure_heights(frames, "L3")
    assert frames["L3"].dims["body_height_posterior_mm"] == pytest.approx(
        0.75 * frames["L3"].dims["body_height_posterior_intact_mm"]
    )
    assert h3["anterior_height_mm"] < frames["L3"].dims["body_height_anterior_intact_mm"] * 0.8
    les = by["L2_lesion"]
    assert les.tissue == "tumour" and les.priority >= 80
    f = frames["L2"]
    assert les.sdf(f.to_world(np.array([5.0, 6.0, 0.0]))[None])[0] < 0
    wall = f.to_local(f.landmarks["body_posterior_centre"])[1]
    assert les.sdf(f.to_world(np.array([5.0, wall + 1.0, 0.0]))[None])[0] < 0  # breach
    assert by["vertebra_L2"].sdf(f.landmarks["pedicle_isthmus_right"][None])[0] > 0
    assert by["vertebra_L2"].tissue_params["cancellous_hu"] < 110
    assert by["vertebra_L2"].cortex_mm < 1.0
    assert len(findings["lesions"]) == 1 and len(findings["fractures"]) == 2


def test_bone_deterministic():
    spec = PRESETS["osteoporotic_no_hardware"]()
    pts = np.random.default_rng(0).uniform(-60, 60, (4000, 3))
    vals = []
    for _ in range(2):
        frames = build_frames(spec, np.random.default_rng(11))
        structs, findings = build_bone(spec, frames, np.random.default_rng(11))
        vals.append((np.stack([s.sdf(pts) for s in structs]), findings))
    assert np.array_equal(vals[0][0], vals[1][0])
    assert vals[0][1] == vals[1][1]


def test_group_evaluation_is_vectorised_and_fast():
    import time

    _, frames, structs, _ = _build("case_example")
    c = frames["L3"].centre_lps + 20.0 * frames["L3"].v
    g = np.arange(-30, 30, 1.0)
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) + c
    t = time.perf_counter()
    d = structs["vertebra_L3"].sdf(pts)
    assert time.perf_counter() - t < 1.0  # 216k points; 1.7 M at 0.5 mm takes ~8x this
    assert d.shape == (len(pts),) and (d < 0).any() and (d > 0).any()
