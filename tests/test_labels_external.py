"""TotalSegmentator / VerSe tables and their mapping to our label names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from planner.errors import LabelError
from planner.labels import registry
from planner.labels.external import (
    TOTALSEG_CLASSES,
    VERSE_SUBREGIONS,
    VERSE_VERTEBRAE,
    in_registry_levels,
    parse_mapped_name,
    totalseg_classes,
    totalseg_id,
    totalseg_to_registry,
    verse_subregion_to_part,
    verse_to_registry,
)


def test_tables_match_the_data_readme():
    assert totalseg_id("total", "vertebrae_T12") == 32
    assert totalseg_id("total", "vertebrae_T11") == 33
    assert totalseg_id("total", "spinal_cord") == 79
    assert totalseg_classes("total_mr")[19] == "vertebrae"
    assert totalseg_classes("total_mr")[20] == "intervertebral_discs"
    assert totalseg_classes("total_mr")[21] == "spinal_cord"
    assert len(TOTALSEG_CLASSES["total"]) == 117 and len(TOTALSEG_CLASSES["total_mr"]) == 50
    assert VERSE_VERTEBRAE[21] == "L2" and VERSE_VERTEBRAE[22] == "L3" and VERSE_VERTEBRAE[23] == "L4"
    assert VERSE_VERTEBRAE[16] == "T9" and VERSE_VERTEBRAE[24] == "L5"
    assert VERSE_VERTEBRAE[28] == "T13" and VERSE_VERTEBRAE[26] == "sacrum"
    assert sorted(VERSE_SUBREGIONS) == list(range(41, 51))


def test_tables_are_consistent():
    for task, table in TOTALSEG_CLASSES.items():
        assert list(table) == list(range(1, len(table) + 1)), task
        assert len(set(table.values())) == len(table), task


def test_totalseg_mapping_by_name():
    m = totalseg_to_registry("total")
    ids = {n: i for i, n in TOTALSEG_CLASSES["total"].items()}
    assert m[ids["vertebrae_T12"]] == "vertebra:T12"
    assert m[ids["vertebrae_L5"]] == "vertebra:L5"
    assert m[ids["vertebrae_S1"]] == "vertebra:S1"
    assert m[ids["spinal_cord"]] == "spinal_cord"
    assert m[ids["aorta"]] == "aorta"
    assert m[ids["inferior_vena_cava"]] == "vena_cava"
    assert m[ids["lung_upper_lobe_left"]] == m[ids["lung_lower_lobe_left"]] == "lung_left"
    assert m[ids["lung_middle_lobe_right"]] == "lung_right"
    assert m[ids["rib_left_7"]] == "T7_rib_left"
    assert m[ids["iliac_artery_right"]] == "iliac_artery_right"
    assert ids["liver"] not in m
    assert totalseg_to_registry("total", keep_unmapped=True)[ids["liver"]] == "totalseg:liver"
    mr = totalseg_to_registry("total_mr")
    assert mr[19] == "vertebra:any" and mr[21] == "spinal_cord" and mr[20] == "disc:any"
    assert totalseg_to_registry("vertebrae_body") == {1: "vertebral_body:any", 2: "disc:any"}


def test_every_mapped_name_exists():
    for task in TOTALSEG_CLASSES:
        for name in totalseg_to_registry(task).values():
            p = parse_mapped_name(name)
            if p["kind"] == "registry":
                registry.label_id(name)  # raises for unknown names
    for name in verse_to_registry().values():
        assert name in registry.LABEL_IDS or parse_mapped_name(name)["kind"] == "vertebra"


def test_verse_mapping():
    m = verse_to_registry()
    assert m[1] == "vertebra:C1" and m[19] == "vertebra:T12" and m[20] == "vertebra:L1"
    assert m[25] == "vertebra:L6" and m[28] == "vertebra:T13" and m[26] == "other_bone"
    assert in_registry_levels(m[22]) and not in_registry_levels(m[1])
    parts = verse_subregion_to_part()
    assert parts[50] == parts[49] == "body" and parts[41] == "posterior"
    assert all(p in registry.LEVEL_PARTS for p in parts.values())


def test_unknown_task_or_class():
    with pytest.raises(LabelError):
        totalseg_classes("nope")
    with pytest.raises(LabelError):
        totalseg_id("total", "vertebrae_T99")


def test_import_is_light():
    code = ("import sys, planner.labels.external as e; "
            "bad = [m for m in ('numpy', 'scipy', 'pydicom', 'SimpleITK', 'nibabel') if m in sys.modules];"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
