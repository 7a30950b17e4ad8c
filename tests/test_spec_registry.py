"""Phantom spec validation and JSON round trip; label registry; CLI info."""

from __future__ import annotations

import json

import pytest

from planner.errors import LabelError, PhantomSpecError
from planner.labels import registry as reg
from planner.phantom.presets import PRESETS, get_preset
from planner.phantom.spec import CaseSpec, FractureSpec, PathologySpec, ScrewSpec, SurgerySpec


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_json(name):
    spec = get_preset(name)
    d = json.loads(json.dumps(spec.to_dict()))
    assert CaseSpec.from_dict(d).to_dict() == spec.to_dict()


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(levels=("L5", "L1")), "cranial to caudal"),
        (dict(levels=("T12", "L2"), surgery=SurgerySpec(screws=[ScrewSpec("L4", "left")])), "outside the modelled levels"),
        (dict(surgery=SurgerySpec(screws=[ScrewSpec("L3", "middle")])), "side"),
        (dict(surgery=SurgerySpec(screws=[ScrewSpec("L3", "left"), ScrewSpec("L3", "left")])), "two screws"),
        (dict(pathology=PathologySpec(fractures=[FractureSpec("L4", height_loss=0.95)])), "height_loss"),
        (dict(surgery=SurgerySpec(rib_head_resection=[("L2", "left")])), "ribs"),
        (dict(levels=("T12", "X9")), "unknown level"),
    ],
)
def test_invalid_specs_are_refused_with_a_reason(kwargs, msg):
    with pytest.raises(PhantomSpecError, match=msg) as ei:
        CaseSpec(**kwargs)
    assert ei.value.code.startswith("PLN-PH")


def test_unknown_preset_lists_choices():
    with pytest.raises(PhantomSpecError) as ei:
        get_preset("nope")
    assert ei.value.code == "PLN-PH-002" and "case_example" in ei.value.message


def test_registry_ids_are_stable_and_unique():
    assert reg.label_id("T1_body") == 100
    assert reg.label_id("L4_pedicle_left") == 100 + 10 * 15 + 1
    assert reg.label_id("screw_L4_right") == 400 + 2 * 15 + 1
    assert reg.label_id("rod_left") == 450 and reg.label_id("other_metal") == 499
    assert len(set(reg.LABEL_IDS.values())) == len(reg.LABEL_IDS)
    for name, i in reg.LABEL_IDS.items():
        assert reg.label_name(i) == name
    assert reg.is_hardware(reg.label_id("crosslink_T12")) and not reg.is_hardware(reg.label_id("aorta"))
    assert reg.is_bone(reg.label_id("T6_rib_left")) and not reg.is_bone(reg.label_id("L4_disc"))
    assert reg.parse_label("screw_L4_right") == {"kind": "screw", "level": "L4", "side": "right"}
    assert reg.parse_label("L4_pedicle_left")["side"] == "left"
    with pytest.raises(LabelError):
        reg.label_id("L9_body")


def test_registry_imports_nothing_heavy():
    import subprocess
    import sys

    code = "import sys, planner.labels.registry; print(any(m in sys.modules for m in ('numpy', 'scipy', 'pydicom')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli_info_json(capsys):
    from planner.cli import main

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["presets"]) == set(PRESETS)
    assert info["labels"]["L4_body"] == reg.label_id("L4_body")
    assert "PLN-DCM-003" in info["error_codes"]


def test_cli_reports_typed_errors(capsys, tmp_path):
    from planner.cli import EXIT_PLANNER_ERROR, main

    bad = tmp_path / "spec.json"
    bad.write_text(json.dumps({"levels": ["L5", "L1"]}))
    assert main(["phantom", "--spec", str(bad), "-o", str(tmp_path / "o")]) == EXIT_PLANNER_ERROR
    assert "PLN-PH-001" in capsys.readouterr().err
