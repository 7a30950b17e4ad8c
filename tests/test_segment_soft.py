"""Classical soft-tissue segmentation on phantom CT with exact ground truth (Dice)."""

from __future__ import annotations

import numpy as np
import pytest

from planner.errors import InputError
from planner.labels.registry import LABEL_IDS
from planner.phantom import generate, get_preset
from planner.segment.soft import segment_soft_tissue

SPACING = (1.5, 1.5, 1.5)
CANAL = ("spinal_canal", "thecal_sac", "spinal_cord")
PRESETS = ("case_example", "t11_l3_laminectomy", "midthoracic_costovertebral",
           "osteoporotic_no_hardware")
_CACHE: dict[tuple[str, bool], tuple] = {}
_PHANTOMS: dict[str, object] = {}


def _case(name: str, with_bone: bool = False):
    """Phantom ``name`` and the soft-tissue result, optionally given the phantom's bone
    labels (as the pipeline gives the bone step's labels)."""
    if name not in _PHANTOMS:
        _PHANTOMS[name] = generate(get_preset(name).replace_imaging(spacing_mm=SPACING,
                                                                    modality="CT"))
    case = _PHANTOMS[name]
    if (name, with_bone) not in _CACHE:
        gt = case.labels.array
        bone = np.where(gt >= 100, gt, 0) if with_bone else None
        out, info = segment_soft_tissue(case.image, bone_labels=bone)
        print(f"{name} (bone labels {with_bone}): timings {info['timings_s']}")
        _CACHE[(name, with_bone)] = (case, out, info)
    return _CACHE[(name, with_bone)]


def _m(a: np.ndarray, *names: str) -> np.ndarray:
    return np.isin(a, [LABEL_IDS[n] for n in names])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


@pytest.mark.parametrize("with_bone", [False, True])
@pytest.mark.parametrize("name", PRESETS)
def test_canal_dice(name, with_bone):
    case, out, info = _case(name, with_bone)
    d = _dice(_m(out, "spinal_canal", "thecal_sac"), _m(case.labels.array, *CANAL))
    print(f"{name} (bone labels {with_bone}): canal Dice {d:.3f}; {info['canal']}")
    assert d >= 0.8


def test_canal_covers_phantom_slices():
    """The canal is found on (nearly) every slice of the labelled canal."""
    for name in PRESETS:
        case, out, _ = _case(name)
        gt = _m(case.labels.array, *CANAL).any(axis=(0, 1))
        got = _m(out, "spinal_canal", "thecal_sac").any(axis=(0, 1))
        missing = int((gt & ~got).sum())
        print(f"{name}: canal slices missing {missing} of {int(gt.sum())}")
        assert missing <= 0.05 * gt.sum()


def test_canal_continuous_through_laminectomy():
    case, out, info = _case("t11_l3_laminectomy")
    gt = case.labels.array
    canal = _m(out, "spinal_canal", "thecal_sac")
    ks = lambda n: np.nonzero((gt == LABEL_IDS[n]).any(axis=(0, 1)))[0]  # noqa: E731
    lo, hi = ks("L3_body").min(), ks("T11_body").max()
    missing = [k for k in range(lo, hi + 1) if not canal[:, :, k].any()]
    print(f"canal slices T11-L3: {hi - lo + 1}, missing {missing}; {info['canal']}")
    assert not missing
    l1 = ks("L1_body")
    d = _dice(canal[:, :, l1.min():l1.max() + 1], _m(gt, *CANAL)[:, :, l1.min():l1.max() + 1])
    print(f"canal Dice at the L1 laminectomy: {d:.3f}")
    assert d >= 0.7


@pytest.mark.parametrize("name", PRESETS)
def test_body_outline_and_aorta(name):
    case, out, _ = _case(name)
    gt = case.labels.array
    # bone / metal are 0 in our output (other helpers label them): add them back
    body = _dice((out > 0) | (gt >= 100), gt > 0)
    skin = _dice(_m(out, "skin"), _m(gt, "skin"))
    aorta = _dice(_m(out, "aorta"), _m(gt, "aorta"))
    print(f"{name}: body Dice {body:.3f}, skin Dice {skin:.3f}, aorta Dice {aorta:.3f}")
    assert body >= 0.95
    assert aorta >= 0.7


def test_lungs_midthoracic_and_fluid():
    case, out, info = _case("midthoracic_costovertebral")
    gt = case.labels.array
    lungs = _dice(_m(out, "lung_left", "lung_right"), _m(gt, "lung_left", "lung_right"))
    left = _dice(_m(out, "lung_left"), _m(gt, "lung_left"))
    fluid = _dice(_m(out, "fluid_collection"), _m(gt, "fluid_collection"))
    print(f"midthoracic: lungs Dice {lungs:.3f} (left {left:.3f}), fluid Dice {fluid:.3f}, "
          f"collections {info['fluid_collections']}")
    assert lungs >= 0.85 and left >= 0.85
    assert info["fluid_collections"] and fluid > 0.3
    assert _m(out, "pleura").any()


@pytest.mark.parametrize("name", ["case_example", "t11_l3_laminectomy"])
def test_no_fluid_without_collection(name):
    _, out, info = _case(name)
    assert not info["fluid_collections"] and not _m(out, "fluid_collection").any()


def test_no_lung_below_l1():
    case, out, _ = _case("t11_l3_laminectomy")
    gt = case.labels.array
    l1_low = np.nonzero((gt == LABEL_IDS["L1_body"]).any(axis=(0, 1)))[0].min()
    lungs = _m(out, "lung_left", "lung_right")
    assert not lungs[:, :, :l1_low].any()  # axis 2 runs caudal -> cranial (identity grid)
    d = _dice(lungs, _m(gt, "lung_left", "lung_right"))
    print(f"t11_l3_laminectomy lungs Dice {d:.3f}")
    assert d >= 0.85


def test_mr_refused():
    case, _, _ = _case("case_example")
    with pytest.raises(InputError) as e:
        segment_soft_tissue(case.image.with_array(case.image.array, modality="MR"))
    assert e.value.code == "PLN-SOFT-001"


def test_coarse_grid_helpers():
    from planner.segment.soft import _block, _erode_inplane, _up

    a = np.arange(7 * 5 * 4, dtype=np.int16).reshape(7, 5, 4)
    f = np.array([2, 2, 1])
    c = _block(a, f, "mean")
    assert c.shape == (3, 2, 4)
    assert np.isclose(c[0, 0, 0], a[:2, :2, 0].mean())
    up = _up(c, f, (slice(0, 7), slice(0, 5), slice(0, 4)))
    assert up.shape == a.shape and up[6, 4, 3] == c[2, 1, 3]
    m = np.zeros((21, 21, 1), bool)
    m[2:19, 2:19] = True
    e = _erode_inplane(m, 3.0)
    assert e[5:16, 5:16].all() and e.sum() == 11 * 11  # a 3-voxel octagon fits from 5 to 15
