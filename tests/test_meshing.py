"""SDF meshing, primitive implant/instrument meshes, mesh IO, scene export, reference models."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import trimesh

from planner.implants import CrossLink, Rod, Screw, point_segment_distance
from planner.meshing import (
    bone_tamp_mesh,
    cannula_mesh,
    crosslink_mesh,
    curved_needle_mesh,
    mesh_scene,
    needle_mesh,
    read_mesh,
    rod_mesh,
    screw_mesh,
    sdf_to_mesh,
    write_mesh,
)
from planner.phantom import sdf as S
from planner.phantom.model import PhantomScene, Structure, VertebraFrame

REPO = Path(__file__).resolve().parents[1]


# ---- SDF -> mesh ----------------------------------------------------------------------------
def test_sphere_mesh_accuracy():
    c, r = np.array([12.5, -40.25, 310.0]), 9.0
    m = sdf_to_mesh(S.sphere(c, r), spacing_mm=0.5)
    assert m.is_watertight and m.is_winding_consistent
    assert m.volume == pytest.approx(4 / 3 * np.pi * r**3, rel=0.02)
    assert np.abs(np.linalg.norm(m.vertices - c, axis=1) - r).max() < 0.25
    assert m.metadata["frame"] == "LPS"


def test_capsule_mesh_accuracy_large_grid():
    """Large enough to use the narrow-band evaluation."""
    a, b, r = np.array([0.0, 0.0, 0.0]), np.array([20.0, 35.0, 70.0]), 7.0
    m = sdf_to_mesh(S.capsule(a, b, r), spacing_mm=0.5)
    L = np.linalg.norm(b - a)
    assert m.is_watertight
    assert m.volume == pytest.approx(np.pi * r**2 * L + 4 / 3 * np.pi * r**3, rel=0.02)
    assert np.abs(point_segment_distance(m.vertices, a, b) - r).max() < 0.25


def test_mesh_closed_when_cut_by_bounds():
    m = sdf_to_mesh(
        S.sphere([0, 0, 0], 10.0), 0.5, bounds=np.array([[-10, -10, 0], [10, 10, 10]]), margin_mm=0
    )
    assert m.is_watertight and len(m.faces)
    assert m.vertices[:, 2].min() > -1.1


def test_empty_and_coarsened():
    empty = sdf_to_mesh(S.sphere([0, 0, 0], 5.0), 0.5, bounds=np.array([[20, 20, 20], [30, 30, 30]]))
    assert len(empty.faces) == 0
    m = sdf_to_mesh(S.sphere([0, 0, 0], 10.0), 0.1, max_grid_points=200_000)
    assert m.metadata["spacing_mm"] > 0.1 and m.is_watertight


def test_smoothing_keeps_volume():
    m = sdf_to_mesh(S.sphere([0, 0, 0], 8.0), 0.5, smooth_iterations=10)
    assert m.volume == pytest.approx(4 / 3 * np.pi * 512, rel=0.02)


# ---- primitives -------------------------------------------------------------------------------
def _screw():
    return Screw("L4", "left", [14.0, 40.0, -36.0], [9.0, -4.0, -30.0], 6.5)


@pytest.mark.parametrize("threads", [True, False])
def test_screw_mesh_matches_geometry(threads):
    sc = _screw()
    m = screw_mesh(sc, threads=threads)
    assert m.is_watertight
    ax = sc.axis
    t = (m.vertices - sc.head_lps) @ ax  # along the axis, 0 at the head, > 0 toward the tip
    shank = t > 1e-6
    tol = 0.5
    d_shank = point_segment_distance(m.vertices[shank], sc.head_lps, sc.tip_lps)
    assert d_shank.max() <= sc.diameter_mm / 2 + tol
    assert d_shank.max() >= sc.diameter_mm / 2 - tol  # the thread reaches the major diameter
    assert np.linalg.norm(m.vertices - sc.tip_lps, axis=1).min() < 1e-6
    assert t.max() == pytest.approx(sc.length_mm, abs=1e-6)
    tul = ~shank
    d_tul = point_segment_distance(m.vertices[tul], sc.head_lps, sc.tulip_top_lps)
    assert d_tul.max() <= sc.tulip_diameter_mm / 2 + tol
    assert t.min() == pytest.approx(-sc.tulip_height_mm, abs=tol)


def test_rod_and_crosslink_meshes():
    rod = Rod("left", [[10, 20, 30], [11, 22, 60], [11, 21, 90], [10, 18, 120]], 5.5)
    m = rod_mesh(rod)
    assert m.is_watertight and m.volume > 0
    d = np.min(
        [
            point_segment_distance(m.vertices, a, b)
            for a, b in zip(rod.centreline_lps[:-1], rod.centreline_lps[1:])
        ],
        axis=0,
    )
    assert d.max() < 2.75 + 0.25
    assert m.volume == pytest.approx(np.pi * 2.75**2 * rod.length_mm, rel=0.03)
    cl = crosslink_mesh(CrossLink("L3", [[-15, 30, 0], [15, 30, 0]], 5.0))
    assert cl.is_watertight and cl.volume == pytest.approx(np.pi * 6.25 * 30, rel=0.03)


def test_instrument_meshes():
    entry, tip = np.array([40.0, 90.0, 0.0]), np.array([5.0, 0.0, 2.0])
    n = needle_mesh(entry, tip, "needle_13g")
    assert n.is_watertight and np.linalg.norm(n.vertices - tip, axis=1).min() < 1e-9
    assert point_segment_distance(n.vertices, entry, tip).max() < 2.413 / 2 + 1e-6
    nf = needle_mesh(entry, tip, "needle_11g", full_length=True)
    assert (np.asarray(nf.bounds)[1] - np.asarray(nf.bounds)[0]).max() > 100
    c = cannula_mesh(entry, tip)
    L = np.linalg.norm(tip - entry)
    assert c.is_watertight and c.volume == pytest.approx(np.pi * (2.1**2 - 1.7**2) * L, rel=0.02)
    t = bone_tamp_mesh(tip, tip - entry)
    assert t.is_watertight and 0.7 * np.pi * 25 * 15 < t.volume < np.pi * 25 * 15
    cn = curved_needle_mesh(entry, tip, [0, 0, 1])
    assert cn.is_watertight
    assert cn.vertices[:, 2].max() > 10  # bent toward +z


# ---- IO ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", ["stl", "ply", "vtp"])
def test_round_trip_and_header(tmp_path, ext):
    sc = _screw()
    m = screw_mesh(sc, threads=False, sections=16)
    if ext == "stl":  # float32 storage: keep coordinates small for 1e-5 mm
        m = trimesh.Trimesh(m.vertices - sc.head_lps, m.faces, process=False)
    p = write_mesh(m, tmp_path / f"screw.{ext}", extra={"name": sc.name, "level": "L4"})
    back = read_mesh(p)
    assert back.metadata["frame"] == "LPS" and back.metadata["units"] == "mm"
    assert len(back.faces) == len(m.faces)
    if ext == "stl":
        assert p.read_bytes()[:80].decode().startswith("planner mesh frame=LPS units=mm")
        # STL stores triangle soup: compare per-face corner coordinates
        np.testing.assert_allclose(back.vertices[back.faces], m.vertices[m.faces], atol=1e-5)
    else:
        np.testing.assert_allclose(back.vertices, m.vertices, atol=1e-5)
        np.testing.assert_array_equal(back.faces, m.faces)
        assert back.metadata["extra"]["level"] == "L4"
    # deterministic bytes
    p2 = write_mesh(
        screw_mesh(sc, threads=False, sections=16) if ext != "stl" else m,
        tmp_path / f"again.{ext}",
        extra={"name": sc.name, "level": "L4"},
    )
    assert p.read_bytes() == p2.read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


def test_vtp_readable_by_vtk(tmp_path):
    pv = pytest.importorskip("pyvista")
    m = rod_mesh(Rod("left", [[0, 0, 0], [0, 0, 50]], 5.5))
    p = write_mesh(m, tmp_path / "rod.vtp")
    poly = pv.read(p)
    np.testing.assert_allclose(np.asarray(poly.points), m.vertices)
    assert str(poly.field_data["frame"][0]) == "LPS" and str(poly.field_data["units"][0]) == "mm"


def test_write_rejects_unknown_format(tmp_path):
    from planner.errors import InputError

    with pytest.raises(InputError):
        write_mesh(rod_mesh(Rod("left", [[0, 0, 0], [0, 0, 5]])), tmp_path / "x.obj")


# ---- scene ------------------------------------------------------------------------------------
def _scene():
    c = np.zeros(3)
    parts = {
        "L4_body": S.superellipse_prism(c, 20.0, 15.0, 12.0),
        "L4_pedicle_left": S.capsule(c + [10, 12, 0], c + [12, 28, 0], 4.0),
    }
    st = [
        Structure(
            "vertebra_L4", "cortical_bone", S.union(*parts.values()), 60, parts=parts, meta={"level": "L4"}
        ),
        Structure("thecal_sac", "csf", S.capsule([0, 25, 15], [0, 25, -15], 6.0), 70),
        Structure("skin", "skin", S.sphere([0, 0, 0], 5.0), 1, mesh=False),
    ]
    frame = VertebraFrame("L4", c, np.eye(3), {})
    sc = Screw("L4", "left", [13, 35, 0], [8, -2, 0], 6.0)
    rod = Rod("left", [sc.rod_seat_lps + [0, 0, 20], sc.rod_seat_lps - [0, 0, 20]])
    return PhantomScene(
        None,
        {"L4": frame},
        st,
        screws=[sc],
        rods=[rod],
        crosslinks=[CrossLink("L4", [[-10, 45, 0], [10, 45, 0]])],
    )


def test_mesh_scene_manifest_and_determinism(tmp_path):
    sc = _scene()
    paths = mesh_scene(sc, tmp_path / "a", fmt="vtp", spacing_mm=1.0)
    assert set(paths) == {
        "vertebra_L4",
        "L4_body",
        "L4_pedicle_left",
        "thecal_sac",
        "screw_L4_left",
        "rod_left",
        "crosslink_L4",
    }
    assert paths["L4_body"].name == "L4_body.vtp"
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["frame"] == "LPS" and manifest["meshes"]["L4_body"]["group"] == "vertebra_L4"
    assert manifest["meshes"]["screw_L4_left"]["kind"] == "screw"
    body = read_mesh(paths["L4_body"])
    assert body.is_watertight
    mesh_scene(sc, tmp_path / "b", fmt="vtp", spacing_mm=1.0)
    for name, p in paths.items():
        assert p.read_bytes() == (tmp_path / "b" / p.name).read_bytes(), name
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


# ---- committed reference models ------------------------------------------------------------------
def _generator():
    spec = importlib.util.spec_from_file_location("meshes_generate", REPO / "meshes" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reference_models_match_generator():
    gen = _generator()
    models = gen.build_models()
    index = json.loads((REPO / "meshes" / "models.json").read_text())
    assert set(index["models"]) == set(models)
    total = 0
    for name, (mesh, _params) in models.items():
        path = REPO / "meshes" / f"{name}.{gen.FORMAT}"
        total += path.stat().st_size
        old = read_mesh(path)
        assert old.metadata["frame"] == "local" and old.metadata["extra"]["name"] == name
        assert len(old.vertices) == len(mesh.vertices) and len(old.faces) == len(mesh.faces), name
        np.testing.assert_allclose(old.bounds, mesh.bounds, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(old.vertices, mesh.vertices, atol=1e-4, err_msg=name)
        assert index["models"][name]["n_vertices"] == len(mesh.vertices)
        assert old.is_watertight, name
    assert total < 3 * 1024 * 1024
