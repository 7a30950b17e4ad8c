"""Sample specs load, validate, and the exported presets match the built-in ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.phantom.presets import PRESETS
from planner.phantom.spec import CaseSpec

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.json")), ids=lambda p: p.stem)
def test_sample_spec_is_valid(path):
    spec = CaseSpec.from_dict(json.loads(path.read_text()))
    assert spec.name == path.stem
    if spec.name in PRESETS:
        assert spec.to_dict() == PRESETS[spec.name]().to_dict(), f"{path.name} drifted from the preset"
