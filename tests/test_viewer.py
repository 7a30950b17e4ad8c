"""Viewer: plan reading, slice geometry on an oblique grid, off-screen 3D against reference
images, key handling, the standalone HTML in headless Chromium, report images and the CLI.

The fast tests use a small synthetic case (two lumbar-like levels made of SDF primitives,
screws and rods, a CT sampled on an oblique anisotropic grid) and a hand-written plan in the
plan.json format, so they do not depend on the solver's current choices.  The slow test runs
the whole chain on a 1.5 mm phantom.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from planner.implants import Rod, Screw
from planner.phantom import sdf as S
from planner.phantom.model import PhantomScene, Structure, VertebraFrame
from planner.volume import Volume

REF_DIR = Path(__file__).parent / "reference_images"
#: RMS RGB difference (0-255) tolerated against a reference image.
RMS_TOLERANCE = 6.0
CENTRES = {"L3": np.array([0.0, 0.0, 0.0]), "L4": np.array([0.0, 0.0, -38.0])}


# ---------------------------------------------------------------------------------- synthetic case
def _scene() -> tuple[PhantomScene, list[Screw], list[Rod]]:
    vertebrae, structures = {}, []
    for lev, c in CENTRES.items():
        vertebrae[lev] = VertebraFrame(lev, c, np.eye(3), {"body_width_mm": 44.0})
        parts = {
            f"{lev}_body": S.superellipse_prism(c, 22.0, 16.0, 13.0),
            f"{lev}_pedicle_left": S.capsule(c + [11, 14, 2], c + [13, 30, 2], 4.5),
            f"{lev}_pedicle_right": S.capsule(c + [-11, 14, 2], c + [-13, 30, 2], 4.5),
            f"{lev}_posterior": S.capsule(c + [0, 38, 2], c + [0, 55, -4], 4.0) | S.capsule(c + [-14, 32, 2], c + [14, 32, 2], 3.5),
        }
        structures.append(Structure(f"vertebra_{lev}", "cortical_bone", S.union(*parts.values()), 60, parts=parts, meta={"level": lev}))
    structures += [
        Structure("thecal_sac", "csf", S.capsule([0, 26, 15], [0, 26, -55], 7.0), 70),
        Structure("aorta", "blood", S.capsule([12, -24, 20], [12, -24, -60], 10.0), 50),
        Structure("vena_cava", "blood", S.capsule([-16, -22, 20], [-16, -22, -60], 9.0), 50),
    ]
    screws = [
        Screw("L3", "left", [14.0, 40.0, 2.0], [9.0, -4.0, 2.0], 6.5),
        Screw("L3", "right", [-14.0, 40.0, 2.0], [-9.0, -4.0, 2.0], 6.5),
        Screw("L4", "right", [-14.0, 40.0, -36.0], [-9.0, -4.0, -36.0], 6.5),
    ]
    rods = [
        Rod("left", [screws[0].rod_seat_lps + [0, 0, 25], screws[0].rod_seat_lps, screws[0].rod_seat_lps + [0, 1.0, -30]], 5.5),
        Rod("right", [screws[1].rod_seat_lps + [0, 0, 25], screws[1].rod_seat_lps, screws[2].rod_seat_lps, screws[2].rod_seat_lps + [0, 0, -15]], 5.5),
    ]
    return PhantomScene(spec=None, vertebrae=vertebrae, structures=structures, screws=screws, rods=rods), screws, rods


def _affine() -> np.ndarray:
    from planner.volume import make_affine, rotation_matrix

    R = rotation_matrix("x", 8.0) @ rotation_matrix("y", -5.0) @ rotation_matrix("z", 12.0)
    return make_affine((1.3, 1.1, 2.1), R, (-105.0, -75.0, -85.0))


def _ct(scene: PhantomScene, screws: list[Screw], rods: list[Rod]) -> Volume:
    """A CT-like volume (HU) of the synthetic scene on an oblique, anisotropic grid."""
    A = _affine()
    shape = (165, 185, 70)
    vol = Volume(np.zeros(shape, np.int16), A, "CT")
    p = vol.voxel_centres_lps().reshape(-1, 3)
    hu = np.full(len(p), -1000.0)
    body = (p[:, 0] / 115.0) ** 2 + ((p[:, 1] - 20.0) / 95.0) ** 2 < 1.0
    hu[body] = 35.0
    def inside(sdf) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the points in the SDF's bounds, and its distances there."""
        lo, hi = sdf.bounds
        idx = np.flatnonzero(np.all((p >= lo - 1.0) & (p <= hi + 1.0), axis=1))
        return idx, sdf(p[idx])

    for st in scene.structures:
        idx, d = inside(st.sdf)
        if st.tissue == "cortical_bone":
            hu[idx[d < 0]] = 220.0
            hu[idx[(d < 0) & (d > -1.5)]] = 950.0
        else:
            hu[idx[d < 0]] = 45.0 if st.tissue == "blood" else 10.0
    metal = [S.capsule(s.head_lps, s.tip_lps, s.diameter_mm / 2) for s in screws]
    metal += [S.capsule(a, b, r.diameter_mm / 2) for r in rods for a, b in zip(r.centreline_lps[:-1], r.centreline_lps[1:])]
    for m in metal:
        idx, d = inside(m)
        hu[idx[d < 0]] = 3071.0
    return Volume(hu.reshape(shape).astype(np.int16), A, "CT")


def _arc(start: np.ndarray, toward: np.ndarray, bend: np.ndarray, n: int = 8) -> np.ndarray:
    """A curved-needle-like arc from ``start``: initial direction ``toward`` bending to ``bend``."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return start + 20.0 * t * toward + 12.0 * t**2 * bend


def _candidate(level: str, side: str, route: str, rank: int, score: float, entry, target, tip, *,
               instruments: list[str], curved: np.ndarray | None = None, tag: str = "0") -> dict:
    entry, target, tip = (np.asarray(x, float) for x in (entry, target, tip))
    d = (target - entry) / np.linalg.norm(target - entry)
    per = {}
    for k, r in (("kyphoplasty", 2.1), ("vertebroplasty_straight", 1.524), ("vertebroplasty_curved", 1.524)):
        ok = k in instruments
        per[k] = {"feasible": ok, "radius_mm": r, "needle_length_mm": 150.0, "insertion_mm": 90.0,
                  "violations": [] if ok else [{"constraint": "clearance_hardware", "structure": "screw_L4_right",
                                                 "structure_display": "L4 right screw", "clearance_mm": 1.2,
                                                 "required_mm": 2.0 + r, "excess_mm": -0.8 - r, "part": "cannula"}]}
    if "kyphoplasty" in instruments:
        per["kyphoplasty"]["bone_tamp_length_mm"] = 15.0
    return {
        "id": f"{level}-{side[0].upper()}-{route}-{tag * 8}",
        "level": level, "side": side, "route": route, "rank": rank, "score": score,
        "skin_entry_lps_mm": entry.tolist(), "target_lps_mm": target.tolist(), "cannula_tip_lps_mm": tip.tolist(),
        "bone_entry_lps_mm": (CENTRES[level] + [13.0 if side == "left" else -13.0, 14.0, 0.0]).tolist(),
        "direction_lps": d.tolist(),
        "curved": None if curved is None else {"arc_radius_mm": 20.0, "extension_mm": 20.0, "path_lps_mm": curved.tolist(),
                                                "tip_lps_mm": curved[-1].tolist(), "hardware_clearance_mm": 3.1,
                                                "closest_hardware": "screw_L3_left"},
        "metrics": {
            "skin_to_target_mm": round(float(np.linalg.norm(target - entry)), 2), "skin_to_body_mm": 80.0,
            "in_body_mm": 24.0, "tilt_from_vertical_deg": 31.0, "craniocaudal_deg": 4.0, "bone_entry_angle_deg": 22.0,
            "axis_clearance_mm": {"hardware": 4.4, "canal": 6.1, "nerve_root": None, "vessel": 9.5, "disc": 3.0,
                                  "other_bone": 7.0, "lung_pleura": None, "fluid": None, "rib": None},
            "closest_structure": {"hardware": "screw_L4_right", "canal": "thecal_sac", "vessel": "aorta"},
        },
        "verdict": {"feasible": True, "instruments": instruments, "per_instrument": per, "binding": None},
        "score_terms": {"clearance": 0.5, "length": 0.3, "entry_angle": 0.6, "coverage": 0.5, "kyphoplasty": 0.0, "visibility": 0.0},
    }


def _plan(case_name: str) -> dict:
    c3, c4 = CENTRES["L3"], CENTRES["L4"]
    l4 = [
        _candidate("L4", "left", "transpedicular", 1, 0.62, c4 + [62, 98, 10], c4 + [4, -7, 0], c4 + [9, 3, 0],
                   instruments=["kyphoplasty", "vertebroplasty_straight"], tag="a"),
        _candidate("L4", "left", "parapedicular", 2, 0.41, c4 + [78, 84, 4], c4 + [2, -4, 1], c4 + [15, 1, 1],
                   instruments=["vertebroplasty_straight", "vertebroplasty_curved"],
                   curved=_arc(c4 + [15, 1, 1], np.array([-0.8, -0.45, 0.0]), np.array([-0.2, -0.6, 0.0])), tag="b"),
        _candidate("L4", "right", "extrapedicular_inferior", 3, 0.18, c4 + [-70, 92, -14], c4 + [-5, -5, -4],
                   c4 + [-14, 2, -5], instruments=["vertebroplasty_straight"], tag="c"),
    ]
    l3 = [
        _candidate("L3", "left", "extrapedicular_inferior", 1, 0.45, c3 + [70, 92, 14], c3 + [3, -8, -5], c3 + [16, 2, -6],
                   instruments=["vertebroplasty_straight", "vertebroplasty_curved"],
                   curved=_arc(c3 + [16, 2, -6], np.array([-0.85, -0.45, 0.05]), np.array([-0.3, -0.5, 0.0])), tag="d"),
        _candidate("L3", "right", "extrapedicular_inferior", 2, 0.30, c3 + [-72, 90, 12], c3 + [-3, -8, -5],
                   c3 + [-16, 2, -6], instruments=["vertebroplasty_straight"], tag="e"),
    ]
    geo = lambda lev: {"level": lev, "centre_lps_mm": CENTRES[lev].tolist(), "body_half_extent_mm": [22.0, 16.0, 13.0],  # noqa: E731
                       "axes_lps": {"u": [1, 0, 0], "v": [0, 1, 0], "w": [0, 0, 1]}, "screw_sides": []}
    blocked = lambda lev, side: {"side": side, "route": "transpedicular", "status": "blocked",  # noqa: E731
                                 "reason": f"pedicle occupied by the {lev} {side} screw; closest path: needle would hit it",
                                 "closest_candidate": f"{lev}-{side[0].upper()}-transpedicular-ffffffff",
                                 "closest_candidate_metrics": {
                                     "skin_entry_lps_mm": (CENTRES[lev] + [58 if side == "left" else -58, 96, 6]).tolist(),
                                     "target_lps_mm": (CENTRES[lev] + [3 if side == "left" else -3, -6, 0]).tolist()}}
    return {
        "schema": "planner.plan", "schema_version": "1.0", "frame": "LPS", "units": "mm",
        "scene": {"source": {"kind": "phantom_ground_truth", "case": "synthetic", "folder": case_name}},
        "instruments": {"kyphoplasty": {"od_mm": 4.2, "tamp": {"shaft_od_mm": 2.8}},
                        "vertebroplasty_curved": {"stylet_od_mm": 2.413}, "vertebroplasty_straight": {"od_mm": 3.048}},
        "levels": [
            {"level": "L3", "geometry": geo("L3"), "candidates": l3, "routes": [blocked("L3", "left"), blocked("L3", "right")],
             "recommendation": {"procedure": "vertebroplasty_curved", "access": "unipedicular", "candidates": [l3[0]["id"]],
                                "side": "left", "route": "extrapedicular_inferior", "safe_route_found": True}},
            {"level": "L4", "geometry": geo("L4"), "candidates": l4, "routes": [blocked("L4", "right")],
             "recommendation": {"procedure": "kyphoplasty", "access": "unipedicular", "candidates": [l4[0]["id"]],
                                "side": "left", "route": "transpedicular", "safe_route_found": True}},
        ],
        "summary": {"levels_planned": ["L3", "L4"], "levels_without_safe_route": []},
    }


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    """Synthetic case folder (meshes with manifest, case.json, image.nii.gz) with plan/plan.json."""
    from planner.io import write_volume
    from planner.meshing import mesh_scene

    root = tmp_path_factory.mktemp("viewer") / "synthetic_case"
    scene, screws, rods = _scene()
    mesh_scene(scene, root / "meshes", fmt="vtp", spacing_mm=1.5)
    write_volume(_ct(scene, screws, rods), root / "image.nii.gz", provenance=False)
    (root / "case.json").write_text(json.dumps({"name": "synthetic", "screws": [s.to_dict() for s in screws],
                                                "rods": [r.to_dict() for r in rods], "crosslinks": []}))
    (root / "plan").mkdir()
    (root / "plan" / "plan.json").write_text(json.dumps(_plan(root.name), indent=1))
    return root


@pytest.fixture(scope="module")
def plan(case):
    from planner.viewer import load_plan

    return load_plan(case / "plan")


@pytest.fixture(scope="module")
def vtk_errors():
    """Everything VTK writes to its output window; rendering tests fail on ERROR lines."""
    vtk = pytest.importorskip("vtk")
    sow = vtk.vtkStringOutputWindow()
    previous = vtk.vtkOutputWindow.GetInstance()
    vtk.vtkOutputWindow.SetInstance(sow)
    yield sow
    vtk.vtkOutputWindow.SetInstance(previous)


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(float) - b.astype(float)) ** 2)))


def _compare_reference(img: np.ndarray, name: str) -> None:
    from PIL import Image

    ref_path = REF_DIR / name
    if not ref_path.exists():  # pragma: no cover - first run writes it for review
        Image.fromarray(img).save(ref_path)
        pytest.skip(f"reference image written to {ref_path}; look at it and commit it")
    ref = np.asarray(Image.open(ref_path).convert("RGB"))
    assert ref.shape == img.shape
    err = _rms(ref, img)
    assert err < RMS_TOLERANCE, f"RMS difference {err:.2f} against {name}"


# ---------------------------------------------------------------------------------- plan reading
def test_load_plan_finds_case_and_candidates(case, plan):
    from planner.viewer import ViewerError, load_plan

    assert plan.case_dir == case
    assert [lv.name for lv in plan.levels] == ["L3", "L4"]
    l4 = plan.level("L4")
    assert [c.rank for c in l4.candidates] == [1, 2, 3]
    assert [c.id for c in l4.recommended] == [l4.candidates[0].id]
    assert l4.procedure == "kyphoplasty"
    assert len(l4.blocked) == 1 and "occupied" in l4.blocked[0].reason
    assert l4.candidates[1].curved_path.shape == (8, 3)
    assert l4.candidates[0].radius_mm("kyphoplasty") == pytest.approx(2.1)
    # a plan folder beside its case is found by the plan's scene.source.folder
    sibling = case.parent / "plan_elsewhere"
    sibling.mkdir(exist_ok=True)
    shutil.copy(case / "plan" / "plan.json", sibling / "plan.json")
    assert load_plan(sibling).case_dir == case
    # elsewhere: the case must be given
    other = case.parent / "deeper" / "plan"
    other.mkdir(parents=True, exist_ok=True)
    shutil.copy(case / "plan" / "plan.json", other / "plan.json")
    with pytest.raises(ViewerError) as ei:
        load_plan(other)
    assert ei.value.code == "PLN-VIEW-002"
    assert load_plan(other, case).case_dir == case
    with pytest.raises(ViewerError) as ei:
        load_plan(case / "meshes")
    assert ei.value.code == "PLN-VIEW-001"
    with pytest.raises(ViewerError) as ei:
        plan.level("T4")
    assert ei.value.code == "PLN-VIEW-003"


def test_candidate_lines_name_route_instruments_clearances(plan):
    from planner.viewer import candidate_lines

    lv = plan.level("L4")
    text = "\n".join(candidate_lines(lv.candidates[2], lv))
    assert "L4 right extrapedicular_inferior" in text and "rank 3" in text
    assert "instruments: vertebroplasty_straight" in text
    assert "kyphoplasty: no - clearance_hardware L4 right screw" in text
    assert "skin-target" in text and "in body 24.0 mm" in text
    assert "hardware 4.4 (screw_L4_right)" in text and "canal 6.1 (thecal_sac)" in text
    assert "binding: none violated; tightest disc 3.0 mm" in text
    assert "level plan: kyphoplasty unipedicular" in text


# ---------------------------------------------------------------------------------- slices
def _marker_volume(points: list[np.ndarray], sigma: float = 2.0) -> Volume:
    """Gaussian blobs (peak 3000 HU over -1000) at LPS points, on an oblique anisotropic grid."""
    from planner.volume import make_affine, rotation_matrix

    R = rotation_matrix("x", 17.0) @ rotation_matrix("y", -11.0) @ rotation_matrix("z", 28.0)
    A = make_affine((0.7, 1.1, 1.9), R, (-40.0, -45.0, -40.0))
    vol = Volume(np.zeros((150, 110, 60), np.float32), A, "CT")
    p = vol.voxel_centres_lps()
    v = np.full(p.shape[:3], -1000.0, np.float32)
    for q in points:
        v += 4000.0 * np.exp(-np.sum((p - q) ** 2, axis=-1) / (2 * sigma**2)).astype(np.float32)
    return vol.with_array(v)


def _peak(img: np.ndarray, around: tuple[float, float] | None = None, win: int = 12) -> tuple[float, float]:
    """Column, row of the brightness-weighted centroid of the brightest blob (or the one near ``around``)."""
    if around is None:
        r, c = np.unravel_index(np.argmax(img), img.shape)
    else:
        c, r = int(round(around[0])), int(round(around[1]))
        sub = img[r - win : r + win + 1, c - win : c + win + 1]
        rr, cc = np.unravel_index(np.argmax(sub), sub.shape)
        r, c = r - win + rr, c - win + cc
    r0, c0 = max(r - win, 0), max(c - win, 0)
    sub = img[r0 : r + win + 1, c0 : c + win + 1].astype(float)
    w = np.clip(sub - (sub.max() + (-1000.0)) / 2, 0, None)  # above half maximum
    rr, cc = np.mgrid[r0 : r0 + sub.shape[0], c0 : c0 + sub.shape[1]]
    return float((w * cc).sum() / w.sum()), float((w * rr).sum() / w.sum())


def test_axial_sagittal_coronal_marker_at_expected_pixel():
    from planner.viewer.slices import axial_plane, coronal_plane, sagittal_plane, sample_plane

    P = np.array([6.3, -4.1, 3.7])
    Q = np.array([-3.0, 5.5, 3.7])  # plane centre: P off-centre
    left = P + [9.0, 0.0, 0.0]  # a second marker 9 mm to the patient's left
    vol = _marker_volume([P, left])
    px = 0.5
    fov = 60.0
    n = int(round(fov / px))
    # axial (seen from the feet): column grows to the patient's left (+x), row to posterior (+y)
    img = sample_plane(vol, axial_plane([Q[0], Q[1], P[2]], fov, px))
    assert img.shape == (n, n)
    c, r = _peak(img, ((P[0] - Q[0]) / px + (n - 1) / 2, (P[1] - Q[1]) / px + (n - 1) / 2))
    assert c == pytest.approx((P[0] - Q[0]) / px + (n - 1) / 2, abs=0.8)
    assert r == pytest.approx((P[1] - Q[1]) / px + (n - 1) / 2, abs=0.8)
    cl, rl = _peak(img, (c + 9.0 / px, r))
    assert cl - c == pytest.approx(9.0 / px, abs=1.0) and abs(rl - r) < 1.0  # patient's left on screen right
    # sagittal (seen from the left): column to posterior (+y), row to inferior (-z)
    img = sample_plane(vol, sagittal_plane([P[0], Q[1], Q[2] + 4.0], fov, px))
    c, r = _peak(img)
    assert c == pytest.approx((P[1] - Q[1]) / px + (n - 1) / 2, abs=0.8)
    assert r == pytest.approx(-(P[2] - Q[2] - 4.0) / px + (n - 1) / 2, abs=0.8)
    # coronal (seen from the front): column to the left (+x), row to inferior
    img = sample_plane(vol, coronal_plane([Q[0], P[1], Q[2] - 6.0], fov, px))
    c, r = _peak(img, ((P[0] - Q[0]) / px + (n - 1) / 2, -(P[2] - Q[2] + 6.0) / px + (n - 1) / 2))
    assert c == pytest.approx((P[0] - Q[0]) / px + (n - 1) / 2, abs=0.8)
    assert r == pytest.approx(-(P[2] - Q[2] + 6.0) / px + (n - 1) / 2, abs=0.8)


def test_needle_reformats_contain_the_needle():
    from planner.viewer.slices import needle_planes, sample_plane

    entry = np.array([32.0, 44.0, 12.0])
    target = np.array([2.0, -6.0, 0.5])  # oblique: medial, anterior and caudal
    d = (target - entry) / np.linalg.norm(target - entry)
    mid = entry + 0.55 * (target - entry)
    vol = _marker_volume([target, mid])
    planes = needle_planes(entry, target, pixel_mm=0.5)
    x, z = np.eye(3)[0], np.eye(3)[2]
    for name, axis in (("needle_axial", x), ("needle_sagittal", z)):
        pl = planes[name]
        # the plane holds the needle and its patient axis; columns and rows orthonormal
        assert abs(pl.normal @ d) < 1e-9 and abs(pl.normal @ axis) < 1e-9
        assert abs(pl.col_dir @ pl.row_dir) < 1e-9
        img = sample_plane(vol, pl)
        H, W = img.shape
        # both markers lie on the needle, so both are in the plane at full brightness
        ct, rt = pl.pixel_of_lps(target)[0][0]
        pt = _peak(img, (ct, rt))
        pm = _peak(img, tuple(pl.pixel_of_lps(mid)[0][0]))
        assert img[int(round(pt[1])), int(round(pt[0]))] > 1500 and img[int(round(pm[1])), int(round(pm[0]))] > 1500
        # in-plane isometry: pixel distance x pixel size = 3D distance
        assert np.hypot(pt[0] - pm[0], pt[1] - pm[1]) * 0.5 == pytest.approx(np.linalg.norm(target - mid), abs=0.6)
        # the needle runs from the entry (bottom, posterior / right) toward the target
        ce, re = pl.pixel_of_lps(entry)[0][0]
        assert np.hypot(ce - pt[0], re - pt[1]) * 0.5 == pytest.approx(np.linalg.norm(target - entry), abs=0.6)
    assert planes["needle_axial"].col_dir @ x == pytest.approx(1.0)  # left on screen right, like an axial slice
    assert planes["needle_sagittal"].row_dir @ -z > 0.99  # superior up, like a sagittal slice
    # across the needle at the tip: the target marker at the image centre
    pl = planes["needle_perpendicular"]
    assert abs(abs(pl.normal @ d) - 1.0) < 1e-9
    img = sample_plane(vol, pl)
    H, W = img.shape
    c, r = _peak(img)
    assert c == pytest.approx((W - 1) / 2, abs=0.8) and r == pytest.approx((H - 1) / 2, abs=0.8)


def test_slice_png_overlay_and_labels(plan, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from planner.io import read_volume
    from planner.viewer.slices import NEEDLE_RGB, PathOverlay, path_slices, write_slice_png

    ct = read_volume(plan.case_dir / "image.nii.gz")
    c = plan.level("L4").recommended[0]
    views = path_slices(ct, PathOverlay.from_candidate(c))
    assert list(views) == ["axial", "sagittal", "coronal", "needle_axial", "needle_sagittal", "needle_perpendicular"]
    assert views["axial"].plane.edge_labels() == {"right": "L", "left": "R", "bottom": "P", "top": "A"}
    assert views["sagittal"].plane.edge_labels() == {"right": "P", "left": "A", "bottom": "I", "top": "S"}
    out = write_slice_png(views["needle_axial"], tmp_path / "na.png", scale=2)
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    H, W = views["needle_axial"].plane.shape
    assert img.shape == (2 * H, 2 * W, 3)
    # the needle lies in this reformat: its orange line passes through the target's pixel
    ct_, rt = views["needle_axial"].plane.pixel_of_lps(c.target)[0][0]
    ce, re = views["needle_axial"].plane.pixel_of_lps(c.entry)[0][0]
    mid = (int(round(ct_ + ce)), int(round(rt + re)))  # midpoint, at scale 2
    patch = img[mid[1] - 3 : mid[1] + 4, mid[0] - 3 : mid[0] + 4].reshape(-1, 3)
    target = np.array(NEEDLE_RGB) * 255
    assert np.min(np.abs(patch - target).sum(1)) < 40, patch
    # the CT shows: bone brighter than soft tissue somewhere, not a blank image
    assert img.std() > 20
    # same input, same bytes
    out2 = write_slice_png(views["needle_axial"], tmp_path / "na2.png", scale=2)
    assert out.read_bytes() == out2.read_bytes()


# ---------------------------------------------------------------------------------- 3D viewer
@pytest.mark.render
def test_viewer_level_matches_reference(plan, vtk_errors):
    pv = pytest.importorskip("pyvista")
    from planner.viewer.scene3d import PlanViewer

    with pv.VtkErrorCatcher(raise_errors=True):
        v = PlanViewer(plan, off_screen=True, window_size=(640, 420), level="L4")
        try:
            img = v.screenshot()
            groups = {g: len(a) for g, a in v.group_actors.items()}
        finally:
            v.close()
    assert "ERROR" not in vtk_errors.GetOutput(), vtk_errors.GetOutput()
    assert groups["vertebrae"] == 2 and groups["hardware"] == 5 and groups["canal"] == 1 and groups["vessels"] == 2
    assert groups["needle"] == 4  # L3 cannula + curved arc, L4 kyphoplasty cannula + channel to the target
    assert img.shape == (420, 640, 3) and img.std() > 15
    _compare_reference(img, "viewer_synthetic_L4.png")


@pytest.mark.render
def test_viewer_needle_has_the_plan_radius(plan):
    from planner.viewer.common import tube_mesh
    from planner.viewer.scene3d import instrument_for, instrument_tubes

    lv = plan.level("L4")
    c = lv.recommended[0]
    assert instrument_for(c, lv) == "kyphoplasty"
    parts = instrument_tubes(plan, c, "kyphoplasty")
    assert [p for p, _, _ in parts] == ["cannula", "channel"] and parts[0][2] == pytest.approx(2.1)
    assert parts[1][2] == pytest.approx(2.8 / 2)  # the bone-tamp shaft in the channel
    v, _ = tube_mesh(parts[0][1], parts[0][2], sections=20, caps=False)
    a, b = parts[0][1]
    u = (b - a) / np.linalg.norm(b - a)
    dist = np.linalg.norm((v - a) - np.outer((v - a) @ u, u), axis=1)
    assert np.allclose(dist, 2.1, atol=1e-9)
    l3 = plan.level("L3")
    parts = dict((p, (poly, r)) for p, poly, r in instrument_tubes(plan, l3.recommended[0], instrument_for(l3.recommended[0], l3)))
    assert set(parts) == {"cannula", "curved"}
    assert parts["curved"][1] == pytest.approx(2.413 / 2)
    assert np.allclose(parts["curved"][0], l3.recommended[0].curved_path)


@pytest.mark.render
def test_viewer_keys_step_candidates_levels_groups(plan, vtk_errors):
    pytest.importorskip("pyvista")
    from planner.viewer.scene3d import PlanViewer

    v = PlanViewer(plan, off_screen=True, window_size=(480, 320), level="L4", widgets=True)
    try:
        first = v.screenshot()
        assert v.candidate.recommended and "RECOMMENDED" in v.panel_text()
        v.press("n")
        assert v.candidate.rank == 2 and "rank 2" in v.panel_text()
        # kyphoplasty (the level's procedure) does not pass here: drawn as its first instrument
        assert len(v._selection_actors) == 1
        second = v.screenshot()
        assert _rms(first, second) > 1.0
        v.press("p")
        v.press("p")
        assert v.candidate.rank == 3
        v.press("l")
        assert v.level.name == "L3" and v.candidate.recommended
        v.press("1")  # vertebrae off
        assert not v.visible["vertebrae"]
        assert all(not a.GetVisibility() for a in v.group_actors["vertebrae"])
        assert v._checkboxes["vertebrae"].GetRepresentation().GetState() == 0
        v.press("1")
        assert v.visible["vertebrae"]
        v.press("h")
        assert "next / previous candidate" in v.panel_text()
        v.frame_candidate(view="axial")
        assert all(not a.GetVisibility() for a in v.group_actors["needle"] if v._actor_level[id(a)] != "L3")
        v.frame_level()
        assert all(a.GetVisibility() for a in v.group_actors["needle"])
    finally:
        v.close()
    assert "ERROR" not in vtk_errors.GetOutput(), vtk_errors.GetOutput()


@pytest.mark.render
def test_viewer_slice_panel_matches_reference(plan, vtk_errors):
    pv = pytest.importorskip("pyvista")
    from planner.viewer.scene3d import SLICE_KINDS, PlanViewer

    with pv.VtkErrorCatcher(raise_errors=True):
        v = PlanViewer(plan, off_screen=True, window_size=(880, 480), level="L4", slice_panel=True)
        try:
            assert v.slice_kind == SLICE_KINDS[0]
            img = v.screenshot()
            panel = img[:, int(880 * 0.64) + 4 :]
            # the slice panel shows a CT image: grey levels with bone and metal brighter
            grey = np.abs(panel[..., 0].astype(int) - panel[..., 2]) < 12
            assert grey.mean() > 0.5 and panel.std() > 20
            v.next_slice()
            assert v.slice_kind == SLICE_KINDS[1]
            img2 = v.screenshot()
            assert _rms(img[:, 570:], img2[:, 570:]) > 3.0
        finally:
            v.close()
    assert "ERROR" not in vtk_errors.GetOutput(), vtk_errors.GetOutput()
    _compare_reference(img, "viewer_synthetic_panel.png")


# ---------------------------------------------------------------------------------- HTML
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe:
            return exe
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; listed in .ci/apt-packages.txt)")


def _offline_prefix() -> list[str]:
    """Run in a new network namespace (no network at all) when this machine allows it."""
    exe = shutil.which("unshare")
    if exe and subprocess.run([exe, "-n", "true"], capture_output=True).returncode == 0:
        return [exe, "-n"]
    return []


def _browse(html_file: Path, tmp: Path, *args: str, fragment: str = "") -> subprocess.CompletedProcess:
    cmd = _offline_prefix() + [
        _chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
        "--disable-background-networking", "--disable-sync", "--disable-component-update",
        # no name resolves and every request goes to a closed local port: nothing leaves
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
        f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=10000",
        *args, html_file.resolve().as_uri() + fragment,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(tmp)})


@pytest.fixture(scope="module")
def html_file(plan, tmp_path_factory) -> Path:
    from planner.viewer.html import write_html

    return write_html(plan, tmp_path_factory.mktemp("html") / "plan.html")


def test_html_is_self_contained_and_deterministic(plan, html_file, tmp_path):
    from planner.viewer.html import write_html

    text = html_file.read_text()
    assert "default-src 'none'" in text
    for bad in ("http://", "https://", "//cdn", "<link", " src=", "@import", "url("):
        assert bad not in text, bad
    for c in plan.all_candidates():
        assert c.id in text
    assert html_file.stat().st_size < 2_000_000
    assert write_html(plan, tmp_path / "again.html").read_bytes() == html_file.read_bytes()


@pytest.mark.parametrize("fragment", ["", "#canvas2d"], ids=["webgl", "canvas2d"])
def test_html_renders_offline_in_headless_chromium(plan, html_file, tmp_path, fragment):
    from PIL import Image

    from planner.viewer.common import NEEDLE_RGB

    shot = tmp_path / "page.png"
    r = _browse(html_file, tmp_path, f"--screenshot={shot}", "--window-size=1200,800", fragment=fragment)
    assert shot.is_file(), r.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape == (800, 1200, 3)
    view = img[:, :800]  # the 3D view (the side panel is 380 px wide)
    assert view.std() > 20
    bg_top = view[2, 780]  # background gradient: compare each pixel with its row's right edge
    non_bg = np.abs(view - view[:, 790:791]).sum(2) > 30
    assert 0.05 < non_bg.mean() < 0.95, (non_bg.mean(), bg_top)
    # the recommended needle's orange is in the scene
    orange = (np.abs(view - np.array(NEEDLE_RGB) * 255).sum(2) < 120) & (view[..., 0] > 120) & (view[..., 2] < 90)
    assert orange.sum() > 50, orange.sum()
    dom = _browse(html_file, tmp_path, "--dump-dom", fragment=fragment).stdout
    assert 'data-render-status="ok"' in dom
    assert ('data-renderer="canvas2d"' if fragment else 'data-renderer="') in dom
    assert "<title>Plan: synthetic: L3 L4</title>" in dom
    for c in plan.all_candidates():
        assert c.id in dom
    # the selected (recommended) candidate's metrics are in the panel, written by the script
    assert "L3 left extrapedicular_inferior   rank 1" in dom


# ---------------------------------------------------------------------------------- report, CLI
@pytest.mark.render
def test_report_writes_images_and_manifest(plan, tmp_path, vtk_errors):
    pytest.importorskip("pyvista")
    from PIL import Image

    from planner.viewer.report import SCENE_IMAGES, SLICE_IMAGES, write_report

    mf = write_report(plan, tmp_path / "report", window_size=(400, 300), slice_scale=1, fluoro=False)
    m = json.loads(mf.read_text())
    assert set(m["levels"]) == {"L3", "L4"} and m["html"] == "plan.html"
    for name, lv in m["levels"].items():
        kinds = [i["kind"] for i in lv["images"]]
        assert kinds == list(SCENE_IMAGES) + [f"slice_{k}" for k in SLICE_IMAGES]
        assert lv["candidate"] == plan.level(name).recommended[0].id
        for i in lv["images"]:
            im = Image.open(tmp_path / "report" / i["file"])
            assert im.size[0] >= 120 and np.asarray(im).std() > 5, i["file"]
    assert m["levels"]["L4"]["instrument"] == "kyphoplasty" and m["levels"]["L3"]["instrument"] == "vertebroplasty_curved"
    assert (tmp_path / "report" / "plan.html").is_file()
    assert "ERROR" not in vtk_errors.GetOutput(), vtk_errors.GetOutput()


def test_report_fluoro_views_place_the_levels_instrument(plan, case, tmp_path, monkeypatch):
    """The report's DRR views place the needle as the level's instrument does: a curved needle
    as its cannula plus the arc, the tip (the curved stylet's working tip) at the arc's end."""
    from planner import fluoro
    from planner.viewer import report

    got = {}

    def capture(ct, traj, hardware, out, wall_points=None, **kw):
        got["traj"] = traj
        return {}

    monkeypatch.setattr(fluoro, "write_view_pngs", capture)
    c = plan.level("L3").recommended[0]
    assert c.raw["verdict"]["instruments"] == ["vertebroplasty_straight", "vertebroplasty_curved"]
    report._fluoro_views(case, None, c.raw, "L3", tmp_path, "vertebroplasty_curved")
    t = got["traj"]
    assert t.curve_lps is not None
    np.testing.assert_allclose(t.target_lps, c.raw["cannula_tip_lps_mm"])
    np.testing.assert_allclose(t.tip_lps, c.raw["curved"]["path_lps_mm"][-1])
    report._fluoro_views(case, None, c.raw, "L3", tmp_path, "vertebroplasty_straight")
    assert got["traj"].curve_lps is None
    np.testing.assert_allclose(got["traj"].tip_lps, c.raw["target_lps_mm"])


@pytest.mark.render
def test_cli_view_off_screen_screenshot_and_errors(case, tmp_path, capsys):
    pytest.importorskip("pyvista")
    from PIL import Image

    from planner.cli import main

    out = tmp_path / "shot.png"
    rc = main(["view", str(case / "plan"), "--off-screen", "--screenshot", str(out), "--window-size", "400", "300",
               "--level", "L4", "--camera", "closeup_axial"])
    assert rc == 0 and Image.open(out).size == (400, 300)
    assert "screenshot: " in capsys.readouterr().out
    rc = main(["view", str(case / "plan"), "--html", str(tmp_path / "p.html"), "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["html"].endswith("p.html")
    rc = main(["view", str(tmp_path / "nothing")])
    assert rc == 3 and "PLN-VIEW-001" in capsys.readouterr().err
    rc = main(["view", str(case / "plan"), "--off-screen"])
    assert rc == 3 and "PLN-VIEW-005" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.render
def test_phantom_plan_report_end_to_end(tmp_path):
    """case_example at 1.5 mm: phantom, plan of L4, then 'planner view --report' with fluoroscopy views."""
    pytest.importorskip("pyvista")
    from PIL import Image

    from planner.cli import main
    from planner.phantom import generate, get_preset, write_case
    from planner.solve.api import plan_input

    spec = get_preset("case_example").replace_imaging(spacing_mm=(1.5, 1.5, 1.5))
    case_dir = tmp_path / "case"
    write_case(generate(spec), case_dir, dicom=False, mesh_spacing_mm=1.5)
    plan_input(case_dir, case_dir / "plan", levels=["L4"])
    rc = main(["view", str(case_dir / "plan"), "--report", str(tmp_path / "report"), "--window-size", "600", "400"])
    assert rc == 0
    m = json.loads((tmp_path / "report" / "manifest.json").read_text())
    lv = m["levels"]["L4"]
    assert lv["candidate"] is not None and len(lv["images"]) == 10
    for i in lv["images"]:
        assert np.asarray(Image.open(tmp_path / "report" / i["file"])).std() > 5
    assert lv["fluoro"]["status"] == "ok", lv["fluoro"]
    for f in lv["fluoro"]["files"].values():
        assert (tmp_path / "report" / "L4" / f).is_file()
