"""Bone segmentation: bone mask, vertebra separation, level names, body Dice, findings.

Acceptance targets of the "Segmentation" issue (item 2) that are not reached yet are kept
as ``xfail(strict=True)`` with the measured numbers in the reason.  Run with ``-s`` to see
the per-level table.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from planner.errors import PlannerError
from planner.labels.registry import label_id
from planner.segment.bone import BoneResult, segment_bone
from planner.segment.levels import SegmentationError, genant_grade, parse_anchor, require_level
from planner.volume import Volume, make_affine

PRESETS = ["case_example", "t11_l3_laminectomy", "midthoracic_costovertebral", "osteoporotic_no_hardware"]


@functools.cache
def _case(name: str):
    from planner.phantom import generate, get_preset

    return generate(get_preset(name).replace_imaging(spacing_mm=(1, 1, 1)))


def _anchor(case) -> str:
    """Anchor on the lowest level of the phantom, by its LPS z."""
    low = list(case.scene.vertebrae)[-1]
    return f"{low}@z={case.scene.vertebrae[low].centre_lps[2]:.1f}"


@functools.cache
def _run(name: str, anchored: bool = True) -> tuple[BoneResult, float]:
    case = _case(name)
    t = time.perf_counter()
    res = segment_bone(case.image, anchor=_anchor(case) if anchored else None)
    return res, time.perf_counter() - t


def _msd(g: np.ndarray, s: np.ndarray) -> float:
    # on the bounding box of both masks, padded (the same distances: every surface voxel
    # lies inside it), instead of two whole-image transforms per level
    box = tuple(slice(max(0, b.start - 2), b.stop + 2) for b in ndi.find_objects((g | s).view(np.uint8))[0])
    g, s = g[box], s[box]
    sg = g & ~ndi.binary_erosion(g)
    ss = s & ~ndi.binary_erosion(s)
    return float(0.5 * (ndi.distance_transform_edt(~sg)[ss].mean() + ndi.distance_transform_edt(~ss)[sg].mean()))


@functools.cache
def _scores(name: str) -> dict[str, tuple[float, float]]:
    case = _case(name)
    res, dt = _run(name)
    out = {}
    for lv in case.scene.vertebrae:
        g = case.labels.array == label_id(f"{lv}_body")
        s = res.labels == label_id(f"{lv}_body")
        dice = float(2 * (g & s).sum() / (g.sum() + s.sum()))
        out[lv] = (dice, _msd(g, s) if s.any() else float("inf"))
    print(f"\n{name}: {dt:.1f} s, levels {res.levels}")
    print("  level  Dice   MSD mm")
    for lv, (d, m) in out.items():
        g = case.labels.array == label_id(f"{lv}_body")
        cut = any(np.take(g, k, axis=a).any() for a in range(3) for k in (0, -1))
        print(f"  {lv:5s}  {d:.3f}  {m:.2f}" + ("  (ground-truth body cut by the image border)" if cut else ""))
    return out


# ----------------------------------------------------------------------------- API
def test_parse_anchor_forms():
    assert parse_anchor("L5") == {"level": "L5", "which": "lowest", "point": None, "z": None}
    assert parse_anchor("L4@z=-80")["z"] == -80.0
    assert parse_anchor("t12@-12.5")["level"] == "T12"
    assert parse_anchor(("L3", 1))["which"] == 1
    assert np.allclose(parse_anchor(("L3", (0, 1, 2)))["point"], [0, 1, 2])
    with pytest.raises(SegmentationError):
        parse_anchor("L9")
    with pytest.raises(SegmentationError):
        parse_anchor(3.5)


def test_genant_grades():
    assert [genant_grade(x) for x in (0.1, 0.2, 0.22, 0.3, 0.5)] == [0, 1, 1, 2, 3]


def test_no_bone_raises_coded_error():
    arr = np.full((40, 40, 40), 40, np.int16)  # soft tissue only
    ct = Volume(arr, make_affine((1, 1, 1)), "CT")
    with pytest.raises(SegmentationError) as e:
        segment_bone(ct)
    assert e.value.code == "PLN-SEG-001"


def test_require_level_names_what_was_found():
    with pytest.raises(SegmentationError, match="levels found: L2, L3"):
        require_level(["L2", "L3"], "T6")


# ----------------------------------------------------------------------------- phantoms
@pytest.mark.parametrize(
    "name",
    [
        "case_example",
        "t11_l3_laminectomy",
        "midthoracic_costovertebral",
        "osteoporotic_no_hardware",
    ],
)
def test_levels_with_anchor(name):
    case = _case(name)
    res, _ = _run(name)
    assert res.levels == list(case.scene.vertebrae)


@pytest.mark.parametrize(
    "name",
    [
        "case_example",
        "t11_l3_laminectomy",
        "osteoporotic_no_hardware",
    ],
)
def test_levels_without_anchor(name):
    case = _case(name)
    res, _ = _run(name, anchored=False)
    assert res.levels == list(case.scene.vertebrae)


def test_levels_without_anchor_thoracic_only_asks_for_anchor():
    """T3-T9 has neither sacrum nor a rib-free vertebra below T12: levels cannot be named."""
    with pytest.raises(PlannerError) as e:
        _run("midthoracic_costovertebral", anchored=False)
    assert e.value.code in ("PLN-SEG-002", "PLN-SEG-001")


@pytest.mark.parametrize("name", PRESETS)
def test_body_dice_target(name):
    sc = _scores(name)
    assert min(d for d, _ in sc.values()) >= 0.95
    assert max(m for _, m in sc.values()) <= 0.5


@pytest.mark.parametrize("name", ["case_example", "t11_l3_laminectomy", "osteoporotic_no_hardware"])
def test_body_dice_floor_mid_column(name):
    """What is reached today: the bodies inside the column (not the image's end vertebrae)."""
    sc = _scores(name)
    inner = list(sc.values())[1:-1]
    assert np.median([d for d, _ in inner]) >= 0.94


@pytest.mark.parametrize(
    "name",
    [
        "case_example",
        "t11_l3_laminectomy",
        "midthoracic_costovertebral",
        "osteoporotic_no_hardware",
    ],
)
def test_fracture_found_at_right_level(name):
    case = _case(name)
    res, _ = _run(name)
    for f in case.scene.findings["fractures"]:
        found = [x for x in res.fractures if x["level"] == f["level"]]
        assert found, f"fracture at {f['level']} missed"
        assert abs(found[0]["height_loss_fraction"] - f["height_loss"]) <= 0.10


@pytest.mark.parametrize("name", PRESETS)
def test_no_false_fractures(name):
    case = _case(name)
    res, _ = _run(name)
    assert {f["level"] for f in res.fractures} == {f["level"] for f in case.scene.findings["fractures"]}


@pytest.mark.parametrize("name", list(PRESETS))
def test_resections_exact(name):
    case = _case(name)
    res, _ = _run(name)
    got = {(r["level"], r["kind"], r["side"]) for r in res.resections}
    want = {(r["level"], r["kind"], r["side"]) for r in case.scene.findings["resections"]}
    assert got == want


def _share(res: BoneResult, case, part: str, level: str) -> float:
    """Fraction of the ground-truth L5 ``part`` voxels labelled as any part of ``level``."""
    got = res.labels[case.labels.array == label_id(f"L5_{part}")]
    return float(np.isin(got, [label_id(f"{level}_{p}") for p in ("body", "pedicle_left", "pedicle_right", "posterior")]).mean())


def test_sacrum_does_not_take_the_l5_arch():
    """The sacrum's coarse piece reaches up behind L5 (its posterior elements); as a marker it
    stops a little above the sacrum's core, so L5's own flood reaches its pedicles and arch
    (before: S1 took 99 % of L5's arch and about 63 % of its pedicles)."""
    case = _case("case_example")
    res, _ = _run("case_example")
    for side in ("left", "right"):
        assert _share(res, case, f"pedicle_{side}", "L5") >= 0.75
        assert _share(res, case, f"pedicle_{side}", "S1") <= 0.1
    assert _share(res, case, "posterior", "S1") <= 0.35  # measured 0.26 (L5 0.38, the rest L4)
    # at 1.5 mm the pedicles are L5's, most of the arch still goes to S1 (measured 0.70)
    case15, res15 = _case_in("case_example", "1.5mm"), _run_in("case_example", "1.5mm")
    for side in ("left", "right"):
        assert _share(res15, case15, f"pedicle_{side}", "L5") >= 0.6
        assert _share(res15, case15, f"pedicle_{side}", "S1") <= 0.1


# ----------------------------------------------------------------------------- real CT
@functools.cache
def _real_lumbar(root):
    from planner.io import read_volume
    from planner.segment.evaluate import verse_body_dice

    ct = read_volume(root / "sub-ct_label-22_ct.nii.gz")
    vert = read_volume(root / "sub-ct_seg-vert_label-22_msk.nii.gz").array
    sub = read_volume(root / "sub-ct_seg-subreg_label-22_msk.nii.gz").array
    res = segment_bone(ct, anchor="L4")
    dices = verse_body_dice(res.labels, vert, sub, {"L2": 21, "L3": 22, "L4": 23})
    print("\nreal lumbar CT:", res.levels, {k: round(v, 3) for k, v in dices.items()})
    return ct, res, dices


@pytest.mark.shared_data
def test_real_lumbar_ct(shared_data):
    # the noisy cut-out (soft-tissue noise ~58 HU) takes the shell-fit path, which records a
    # warning, finds the three bodies (two cut by the field of view) and names them from the
    # anchor; body Dice measured 0.878 / 0.923 / 0.864 (0.0 with one body before the shell
    # fit, 0.80 / 0.81 / 0.80 with first-crossing fits); the target is 0.85
    ct, res, dices = _real_lumbar(shared_data("lumbar-ct-L2-L4"))
    assert res.info["low_contrast_shell_fit"] and res.info["noise_sigma_hu"] > 45
    assert "PLN-W-SEG-003" in [w.code for w in ct.provenance.warnings]
    assert res.levels == ["L2", "L3", "L4"]
    assert min(dices.values()) >= 0.85


# ----------------------------------------------------------------------------- robustness
# Imaging conditions of ``benchmarks/bench_segment.py`` beyond clean 1 mm scans.  The anchor
# is the one a user gives (the lowest modelled level by name), the metal mask the hardware
# step's, as in :func:`planner.segment.pipeline.segment`.
_CONDITIONS = {
    "streaks": {"spacing_mm": (1.0, 1.0, 1.0), "streaks": True, "noise_hu": 25.0},
    "1.5mm": {"spacing_mm": (1.5, 1.5, 1.5)},
}


@functools.cache
def _case_in(name: str, condition: str):
    from planner.phantom import generate, get_preset

    return generate(get_preset(name).replace_imaging(**_CONDITIONS[condition]))


@functools.cache
def _run_in(name: str, condition: str) -> BoneResult:
    from planner.segment.hardware import segment_hardware

    case = _case_in(name, condition)
    metal = segment_hardware(case.image)[4] > 0
    return segment_bone(case.image, metal_mask=metal, anchor=list(case.scene.vertebrae)[-1])


def _levels_and_dice(name: str, condition: str) -> tuple[list[str], dict[str, float]]:
    """Levels whose ground-truth body is mostly labelled as that body, and the body Dice."""
    case = _case_in(name, condition)
    res = _run_in(name, condition)
    ok, dice = [], {}
    for lv in case.scene.vertebrae:
        g = case.labels.array == label_id(f"{lv}_body")
        s = res.labels == label_id(f"{lv}_body")
        dice[lv] = float(2 * (g & s).sum() / (g.sum() + s.sum()))
        vals, cnt = np.unique(res.labels[g], return_counts=True)
        keep = vals > 0
        if keep.any() and vals[keep][np.argmax(cnt[keep])] == label_id(f"{lv}_body"):
            ok.append(lv)
    print(f"\n{name} {condition}: levels {res.levels}; Dice " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
    return ok, dice


@pytest.mark.parametrize(
    ("name", "condition"),
    [
        pytest.param("case_example", "streaks", marks=pytest.mark.slow),  # streak synthesis: ~70 s
        ("case_example", "1.5mm"),
        ("osteoporotic_no_hardware", "1.5mm"),
        ("t11_l3_laminectomy", "1.5mm"),
        # T4/T5 used to fuse here (thickened end plates bridged the ~3 mm discs at 1.5 mm
        # voxels); the 3-D fill no longer keeps two-voxel layers enclosed only by the
        # cranio-caudal thickening (bone._unbridge_discs)
        ("midthoracic_costovertebral", "1.5mm"),
    ],
)
def test_levels_with_anchor_robust(name, condition):
    """Streak artefacts + 25 HU noise at 1 mm, and 1.5 mm voxels: levels right with the anchor."""
    case = _case_in(name, condition)
    res = _run_in(name, condition)
    ok, dice = _levels_and_dice(name, condition)
    assert res.levels == list(case.scene.vertebrae)
    assert ok == list(case.scene.vertebrae)
    assert float(np.median(list(dice.values()))) >= 0.90


_DICE_15_MEASURED = {
    "case_example": "worst level L4 (the 0.35 wedge) 0.938, MSD max 0.57 mm (S1)",
    "midthoracic_costovertebral": "worst level 0.947, MSD max 0.31 mm",
    "osteoporotic_no_hardware": "worst level 0.935 (L3), MSD max 0.59 mm",
    "t11_l3_laminectomy": "worst level L1 (the 0.5 collapse) 0.946, MSD max 0.30 mm",
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="target Dice >= 0.95 and MSD <= 0.5 mm at 1.5 mm; measured " + r))
        for n, r in _DICE_15_MEASURED.items()
    ],
)
def test_body_dice_target_at_1_5mm(name):
    """The acceptance's body Dice / surface distance at 1.5 mm voxels (surfaces one voxel
    off: a 1 mm cortex never fills a 1.5 mm voxel)."""
    from planner.segment.evaluate import dice, surface_distances

    case = _case_in(name, "1.5mm")
    res = _run_in(name, "1.5mm")
    sp = case.image.spacing
    for lv in case.scene.vertebrae:
        g = case.labels.array == label_id(f"{lv}_body")
        s = res.labels == label_id(f"{lv}_body")
        assert dice(g, s) >= 0.95, lv
        assert surface_distances(g, s, sp)[0] <= 0.5, lv


@pytest.mark.parametrize(
    "name",
    [
        "case_example",
        "t11_l3_laminectomy",
        pytest.param(
            "midthoracic_costovertebral",
            marks=pytest.mark.xfail(strict=True, reason="T6 wedge (0.25 true) reads 0.129 height loss at 1.5 mm: its anterior height one voxel taller than the ground truth's measured the same way (15.0 against 13.5 mm); T4 reads 0.14"),
        ),
        "osteoporotic_no_hardware",
    ],
)
def test_fractures_at_1_5mm(name):
    case = _case_in(name, "1.5mm")
    res = _run_in(name, "1.5mm")
    assert {f["level"] for f in res.fractures} == {f["level"] for f in case.scene.findings["fractures"]}


@pytest.mark.slow  # its own streak case: ~65 s
def test_resections_with_streaks_midthoracic():
    case = _case_in("midthoracic_costovertebral", "streaks")
    res = _run_in("midthoracic_costovertebral", "streaks")
    got = {(r["level"], r["kind"], r["side"]) for r in res.resections}
    want = {(r["level"], r["kind"], r["side"]) for r in case.scene.findings["resections"]}
    assert got == want


def test_gap_bins_follow_voxel_size():
    """Projected voxel centres of solid bone have no empty bin at 1.5 mm voxels."""
    from planner.segment.levels import _bin_step, _first_gap

    w = np.arange(-15.0, 15.1, 1.5)  # a 30 mm column of 1.5 mm voxels
    step = _bin_step(np.array([0.0, 0.0, 1.0]), np.array([1.5, 1.5, 1.5]))
    assert step >= 1.5
    assert _first_gap(w, 0.0, step) > 14.0
    assert _bin_step(np.array([0.0, 0.0, 1.0]), np.array([0.8, 0.8, 1.0])) == 1.0


def test_body_cut_by_field_of_view_is_filled():
    """A cortical shell cut open by the last slice is still filled (capped 3-D fill)."""
    from planner.segment.bone import bone_mask

    hu = np.full((40, 40, 30), 40.0, np.float32)
    hu[10:30, 10:30, :20] = 600.0
    hu[12:28, 12:28, :18] = 80.0  # cancellous interior, open towards slice 0
    m = bone_mask(hu, None, 250.0, np.ones(3))
    assert m[15:25, 15:25, :15].all()


def test_shell_with_posterior_slot_is_filled():
    """A shell with a full-height slot in one wall is filled by the slice-wise votes."""
    from planner.segment.bone import bone_mask

    hu = np.full((50, 50, 50), 40.0, np.float32)
    hu[10:40, 10:40, 10:40] = 600.0
    hu[12:38, 12:38, 12:38] = 80.0
    hu[23:27, 38:40, 12:38] = 80.0  # 4-voxel slot through the posterior wall, all heights
    m = bone_mask(hu, None, 250.0, np.ones(3))
    # filled beside the slot (the slot's own sagittal slices are open in two planes)
    assert m[15:21, 15:35, 15:35].all() and m[29:35, 15:35, 15:35].all()


# ----------------------------------------------------------------------------- part helpers
def test_surface_voxels_outside_the_bone_are_peeled():
    """A partial-volume surface voxel (darker than its inner neighbour and below half the
    cortex contrast) is outside; a thin bright cortex voxel (the profile's peak) is kept."""
    from planner.segment.bone import surface_outside

    hu = np.full((20, 20, 20), 40.0, np.float32)
    bone = np.zeros(hu.shape, bool)
    bone[5:15, 5:15, 5:15] = True
    hu[bone] = 800.0  # cortex-like interior
    hu[4, 5:15, 5:15] = 300.0  # partial-volume layer outside the face i = 5
    bone[4, 5:15, 5:15] = True
    out = surface_outside(bone, hu, 180.0)
    assert out[4, 6:14, 6:14].all()
    assert not out[5:15, 5:15, 5:15].any()
    # thin cortex (osteoporotic, 1.5 mm voxels): the surface voxel is the brightest, kept
    hu2 = np.where(bone, 100.0, 40.0).astype(np.float32)
    hu2[4, 5:15, 5:15] = 400.0
    assert not surface_outside(bone, hu2, 180.0)[4, 6:14, 6:14].any()


def _pv_slab(surface_mm: float, h: float, t: float, soft: float = 40.0, cortex: float = 1100.0, canc: float = 80.0):
    """A slab of bone (x below ``surface_mm``) under the phantoms' partial-volume model:
    voxels ``h`` mm along x, a cortex ``t`` mm thick over cancellous bone; values per x."""
    x = h * np.arange(14)
    d = x - surface_mm
    f = np.clip(0.5 - d / h, 0.0, 1.0)
    g = np.clip(0.5 - (d + t) / h, 0.0, 1.0)
    vals = soft * (1 - f) + cortex * (f - g) + canc * g
    return d, np.broadcast_to(vals[:, None, None], (14, 6, 6)).astype(np.float32)


def test_surface_voxel_of_a_thin_cortex_is_judged_by_its_inner_neighbour():
    """1.5 mm voxels, 0.9 mm cortex over osteoporotic cancellous bone: the surface voxel is
    outside exactly when its centre lies outside the surface, where the half-contrast rule
    alone keeps a bright surface voxel whose centre is 0.1 mm outside."""
    from planner.segment.bone import CORTEX_THICKNESS_MM, surface_outside

    h, thr = 1.5, 180.0
    seen = set()
    for surf in 1.5 * 8 + np.array([-0.3, -0.1, 0.1, 0.2, 0.4]):
        d, hu = _pv_slab(surf, h, CORTEX_THICKNESS_MM)
        rim = int(np.flatnonzero(hu[:, 0, 0] >= thr).max())
        bone = np.zeros(hu.shape, bool)
        bone[: rim + 1] = True  # filled: cortex and the cancellous bone it encloses
        out = surface_outside(bone, hu, thr, np.array([h, h, h]))
        assert out[rim].all() == (d[rim] > 0), (surf, d[rim])
        assert not out[:rim].any()
        seen.add(bool(d[rim] > 0))
        if abs(d[rim] - 0.1) < 1e-6:
            # without the voxel size only the half-contrast rule: it keeps this voxel
            assert not surface_outside(bone, hu, thr)[rim].any()
    assert seen == {True, False}


def test_wall_profile_follows_concave_wall_and_skips_pedicles():
    from planner.segment.levels import _wall_profile

    g = np.mgrid[-20:21, -15:30].reshape(2, -1).astype(float)
    u, v = g
    wall = 12.0 + 0.01 * u**2  # concave: 12 mm at the midline, 16 mm at |u| = 20
    bone = (v < wall) | ((np.abs(np.abs(u) - 15) < 4) & (v < 28))  # plus two pedicles
    uu, vv = np.repeat(u[bone], 5), np.repeat(v[bone], 5)
    c, walls = _wall_profile(uu, vv, 20.0, 12.0, 1.0, 1.0)
    at = np.interp([0.0, 8.0, 15.0], c, walls)
    assert abs(at[0] - 12.0) <= 1.0 and abs(at[1] - 12.6) <= 1.5
    assert at[2] < 16.5  # the pedicle column takes its neighbours' wall, not 28 mm


def test_lateral_outline_caps_a_bridged_rib_head():
    from planner.segment.levels import _lateral_outline

    g = np.mgrid[-30:31, -15:16].reshape(2, -1).astype(float)
    u, v = g
    body = (np.abs(u) / 20.0) ** 2.2 + (np.abs(v) / 14.0) ** 2.2 <= 1.0
    head = (u - 24.0) ** 2 + (v - 6.0) ** 2 <= 25.0  # rib head touching the body
    sel = body | head
    c, hw = _lateral_outline(u[sel], v[sel], 1.0, 1.0, 1.0)
    at = np.interp([0.0, 6.0], c, hw)
    assert 19.0 <= at[0] <= 22.0
    assert at[1] < 23.0  # the row through the head is capped near the body's outline


def test_lateral_outline_behind_the_centre_mirrors_the_front():
    from planner.segment.levels import OUTLINE_MIRROR_SLACK_MM, _lateral_outline

    g = np.mgrid[-30:31, -15:16].reshape(2, -1).astype(float)
    u, v = g
    body = (np.abs(u) / 15.0) ** 2.2 + (np.abs(v) / 11.0) ** 2.2 <= 1.0
    # a rib head joined to the body along its whole posterior half, the central row too
    # (the bump cap alone lets it through: it widens from the centre outward)
    head = (u > 0) & (u <= 24.0) & (v >= -0.5) & (v <= 8.0)
    sel = body | head
    c, hw = _lateral_outline(u[sel], v[sel], 1.0, 1.0, 1.0)
    front = np.interp([-6.0, -2.0], c, hw)
    back = np.interp([0.0, 2.0, 6.0], c, hw)
    assert 14.0 <= front[1] <= 17.0
    assert back[0] <= front[1] + OUTLINE_MIRROR_SLACK_MM + 1.0
    assert back[2] <= front[0] + OUTLINE_MIRROR_SLACK_MM + 1.0 < 20.0
    # without the head the back rows keep the body's own outline
    c0, hw0 = _lateral_outline(u[body], v[body], 1.0, 1.0, 1.0)
    np.testing.assert_allclose(np.interp([2.0, 6.0], c0, hw0), np.interp([-2.0, -6.0], c0, hw0), atol=1.0)


def test_lateral_outline_of_a_body_between_sacral_alae():
    """Alae joined to the body from 4 mm in front of its centre back: the rows they join
    take the widest row in front of them, on both sides; a row that only grazes an ala's
    front edge (it widens faster than the row in front) does not count as the body's."""
    from planner.segment.levels import _ala_top, _lateral_outline, _outline_rows

    g = np.mgrid[-45:46, -15:16].reshape(2, -1).astype(float)
    u, v = g
    body = (np.abs(u) / 16.0) ** 2.2 + (np.abs(v) / 14.0) ** 2.2 <= 1.0
    alae = (np.abs(u) <= 38.0) & (v >= -4.0) & (v <= 10.0)
    graze = (u > 0) & (u <= 20.0) & (v >= -7.0) & (v < -5.0)  # one row only, one side
    sel = body | alae | graze
    tops = []
    for side in (1.0, -1.0):
        _, rows, c = _outline_rows(u[sel], v[sel], 1.0, 1.0, side)
        assert rows[c] >= 38.0
        tops.append(_ala_top(rows, c, 21.0, 1.0))
    true_front = float(np.abs(u[body & (v >= -8.5) & (v < -6.5)]).max())
    assert tops[1] is not None and abs(tops[1] - 16.0) <= 1.0  # right: rows up to v = -6
    assert tops[0] is not None and tops[0] <= true_front + 1.0  # left: the grazed row is not the body
    top = float(np.mean(tops))
    for side in (1.0, -1.0):
        c, hw = _lateral_outline(u[sel], v[sel], 1.0, 1.0, side, (21.0, top))
        at = np.interp([-12.0, 0.0, 6.0], c, hw)
        assert at[0] < 15.0  # the front rows keep the body's own outline
        assert abs(at[1] - 16.0) <= 2.0 and at[2] <= top + 1e-9
    # no row wider than the limit in front of the centre: no alae
    _, rows, c = _outline_rows(u[body], v[body], 1.0, 1.0, 1.0)
    assert _ala_top(rows, c, 21.0, 1.0) is None


def test_wall_shift_follows_a_posterior_wall_lower_down():
    """S1 with its fused S2 segment: the wall of the lowest quarter lies 3 mm further back,
    so the wall moves back there and not at the top; a step of 1 mm (noise) or of more than
    WALL_PROFILE_MAX_BEHIND_MM (bone behind the canal) moves nothing."""
    from planner.segment.levels import WALL_PROFILE_MAX_BEHIND_MM, _first_sparse, _wall_shift

    g = np.mgrid[-10:11, -15:26, -30:15].reshape(3, -1).astype(float)
    u, v, w = g
    wall = _first_sparse(v[(v <= 12.0) & (np.abs(u) < 4.0)], 0.0, 1.0)  # as split_parts reads it
    for step, expect in ((3.0, 3.0), (1.0, 0.0), (WALL_PROFILE_MAX_BEHIND_MM + 2.0, 0.0)):
        sel = (v <= 12.0) | ((w < -15.0) & (v <= 12.0 + step))
        sh = _wall_shift(u[sel], v[sel], w[sel], 14.0, 30.0, wall, 1.0)
        ws = w[sel]
        assert np.all(sh[ws >= 0.0] == 0.0)
        np.testing.assert_allclose(sh[ws <= -23.0], expect, atol=1.0)
        assert np.all((sh >= 0.0) & (sh <= max(expect, 0.0) + 1.0))
    # a straight wall: no shift anywhere
    sel = v <= 12.0
    assert not _wall_shift(u[sel], v[sel], w[sel], 14.0, 30.0, wall, 1.0).any()


def test_body_holes_fill_the_interior_not_the_surface():
    """A body whose cancellous interior (below the threshold) is open to the canal through a
    missing posterior wall: the interior becomes body; a 1-voxel concavity of the front
    (between the end-plate rims) and the canal behind stay out."""
    from planner.segment.levels import _body_holes

    n = 31
    g = np.indices((n, n, n)) - 15
    u, v, w = (a.astype(float) for a in g)
    full = (np.abs(u) <= 12) & (np.abs(v) <= 10) & (np.abs(w) <= 10)
    hole = (np.abs(u) <= 5) & (v > -6) & (np.abs(w) <= 6)  # reaches the back at v = 10
    notch = (np.abs(u) <= 6) & (v <= -9) & (np.abs(w) <= 4)  # 2 voxels deep
    vert = full & ~hole & ~notch
    ijk = np.nonzero(vert)
    body = np.ones(ijk[0].size, bool)
    env = (np.array([-20.0, 20.0]), np.array([10.5, 10.5]), 10.5, np.array([-20.0, 20.0]), np.array([12.5, 12.5]),
           np.array([-20.0, 20.0]), np.array([12.5, 12.5]), 12.5, 12.5, 10.5, 10.5)
    fr = {"centre_mm": np.zeros(3), "R": np.eye(3)}
    got = _body_holes(~vert, ijk, body, u[vert], v[vert], w[vert], env, fr, np.full(3, -15), np.ones(3))
    assert not (got & ~hole).any()  # nothing outside the hole: not the notch, not the canal
    deep = hole & (v < 8) & (np.abs(u) <= 4) & (np.abs(w) <= 5) & (v > -5)
    assert got[deep].all()
    assert not got[hole & (v == 10)].any()  # the opening's own layer borders the outside


def test_column_extent_looks_past_a_hole_in_the_cancellous_bone():
    from planner.segment.levels import _column_extent

    g = np.mgrid[-15:16, -12:13, -12:13].reshape(3, -1).astype(float)
    u, v, w = g
    body = (np.abs(w) <= 10.0) & ((u / 15.0) ** 2 + (v / 12.0) ** 2 <= 1.0)
    up, dn = _column_extent(u[body], v[body], w[body], 1.0)
    assert 10.0 <= up <= 11.5 and 10.0 <= dn <= 11.5
    # a hole from 3 to 8 mm below the centre, 5 mm across: the central column stops at it
    hole = body & (np.hypot(u, v) < 5.0) & (w <= -3.0) & (w >= -8.0)
    up, dn = _column_extent(u[body & ~hole], v[body & ~hole], w[body & ~hole], 1.0)
    assert 10.0 <= up <= 11.5 and 10.0 <= dn <= 11.5


def test_thin_disc_is_not_bridged_by_the_fill():
    """Two bodies 2 voxels apart along the column axis (a 3 mm disc at 1.5 mm voxels) stay
    apart; a tall region that only the full thickening fills is kept."""
    from planner.segment.bone import _unbridge_discs, bone_mask

    hu = np.full((30, 30, 40), 40.0, np.float32)
    hu[8:22, 8:22, 5:18] = 600.0
    hu[8:22, 8:22, 20:33] = 600.0  # disc: slices 18 and 19
    m = bone_mask(hu, None, 250.0, np.array([1.5, 1.5, 1.5]))
    assert not m[10:20, 10:20, 18:20].any()
    hard = hu >= 250.0
    filled = hard.copy()
    filled[2:5, 2:5, 5:30] = True  # tall, not enclosed in-plane: kept
    out = _unbridge_discs(hard, filled)
    assert out[2:5, 2:5, 5:30].all()


def _joint_levels(joints: dict[int, tuple[float, float]]) -> list[dict]:
    """Five intact levels' measurements with the joint below level k scaled by
    ``joints[k] = (left, right)`` (both processes, and any bone in the joint region)."""
    recs = []
    for _ in range(5):
        recs.append({
            "arch_mm3": 3000.0, "arch_any_mm3": 3000.0, "arch_region_outside": 0.0,
            "body_left_mm3": 9000.0, "body_right_mm3": 9000.0,
            "body_post_left_mm3": 4000.0, "body_post_right_mm3": 4000.0,
            "pedicle_left_mm3": 500.0, "pedicle_right_mm3": 500.0,
            "facet_inf_left_mm3": 1500.0, "facet_inf_right_mm3": 1500.0,
            "facet_sup_left_mm3": 2500.0, "facet_sup_right_mm3": 2500.0,
            "joint_any_left_mm3": 4000.0, "joint_any_right_mm3": 4000.0,
        })
    for k, (fl, fr) in joints.items():
        for s, f in (("left", fl), ("right", fr)):
            recs[k][f"facet_inf_{s}_mm3"] *= f
            recs[k + 1][f"facet_sup_{s}_mm3"] *= f
            recs[k][f"joint_any_{s}_mm3"] *= f
    return recs


def test_bilateral_facetectomy_from_both_joints_together():
    from planner.segment.levels import detect_resections

    names = ["T11", "T12", "L1", "L2", "L3"]
    facets = lambda res: sorted((r["level"], r["side"]) for r in res if r["kind"] == "facetectomy")  # noqa: E731
    # both joints below T12 at ~half their neighbours' (t11_l3_laminectomy: 0.41 / 0.48):
    # each side alone is above the 0.45 call, together they are a bilateral facetectomy
    assert facets(detect_resections(_joint_levels({1: (0.41, 0.48)}), names)) == [("T12", "left"), ("T12", "right")]
    # one side that low with the other intact (beside a resected level): not a facetectomy
    assert facets(detect_resections(_joint_levels({1: (0.48, 0.95)}), names)) == []
    # one side clearly resected: that side only
    assert facets(detect_resections(_joint_levels({1: (0.3, 1.0)}), names)) == [("T12", "left")]
    assert facets(detect_resections(_joint_levels({}), names)) == []


def test_pedicle_axis_slopes_and_the_cranial_floor():
    from planner.segment.levels import _pedicle_axis

    g = np.mgrid[0:30, 0:12, 0:24].reshape(3, -1).astype(float) * 0.5  # u, v (behind the wall), w
    u, v, w = g
    for su_true, sw_true, want_sw in ((0.3, 0.2, 0.2), (-0.2, -0.3, 0.0)):
        # an elliptic tube 3 x 4 mm about the axis u = 7 + su v, w = 6 + sw v
        sel = ((u - 7.0 - su_true * v) / 3.0) ** 2 + ((w - 6.0 - sw_true * v) / 4.0) ** 2 <= 1.0
        su, sw = _pedicle_axis(u, v, w, sel, 0.5)
        assert abs(su - su_true) < 0.05
        assert abs(sw - want_sw) < 0.05  # an axis rising towards the body is an error: floored
        # a left pedicle (u > 0) runs laterally going back: a medial slope is an error
        su_left, _ = _pedicle_axis(u, v, w, sel, 0.5, side=1.0)
        su_right, _ = _pedicle_axis(u, v, w, sel, 0.5, side=-1.0)
        assert abs(su_left - max(su_true, 0.0)) < 0.05
        assert abs(su_right - min(su_true, 0.0)) < 0.05
