"""Off-screen rendering: a small synthetic scene against a stored reference image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from planner.implants import Rod, Screw
from planner.phantom import sdf as S
from planner.phantom.model import PhantomScene, Structure, VertebraFrame

pytestmark = pytest.mark.render

REFERENCE = Path(__file__).parent / "reference_images" / "render_synthetic_oblique.png"
WINDOW = (480, 400)
#: Mean absolute RGB difference (0-255) tolerated against the reference image.
RMS_TOLERANCE = 6.0


def synthetic_scene() -> PhantomScene:
    """Two lumbar-like levels (body + pedicles + posterior), sac, aorta, vena cava, fluid,
    one left screw at L4 and a left rod."""
    vertebrae, structures = {}, []
    for i, lev in enumerate(("L3", "L4")):
        c = np.array([0.0, 0.0, -38.0 * i])
        frame = VertebraFrame(lev, c, np.eye(3), {"body_width_mm": 44.0})
        vertebrae[lev] = frame
        body = S.superellipse_prism(c, 22.0, 16.0, 13.0)
        ped_l = S.capsule(c + [11, 14, 2], c + [13, 30, 2], 4.5)
        ped_r = S.capsule(c + [-11, 14, 2], c + [-13, 30, 2], 4.5)
        post = S.capsule(c + [0, 38, 2], c + [0, 55, -4], 4.0) | S.capsule(
            c + [-14, 32, 2], c + [14, 32, 2], 3.5
        )
        parts = {
            f"{lev}_body": body,
            f"{lev}_pedicle_left": ped_l,
            f"{lev}_pedicle_right": ped_r,
            f"{lev}_posterior": post,
        }
        structures.append(
            Structure(
                f"vertebra_{lev}",
                "cortical_bone",
                S.union(*parts.values()),
                60,
                parts=parts,
                meta={"level": lev},
            )
        )
    structures += [
        Structure("thecal_sac", "csf", S.capsule([0, 26, 15], [0, 26, -55], 7.0), 70),
        Structure("aorta", "blood", S.capsule([12, -24, 20], [12, -24, -60], 10.0), 50),
        Structure("vena_cava", "blood", S.capsule([-16, -22, 20], [-16, -22, -60], 9.0), 50),
        Structure("fluid_collection", "fluid", S.ellipsoid([-20, 60, -20], [10, 8, 16]), 80),
    ]
    screw = Screw("L4", "left", [14.0, 40.0, -36.0], [9.0, -4.0, -36.0], 6.5)
    rod = Rod(
        "left",
        [screw.rod_seat_lps + [0, 0, 30], screw.rod_seat_lps + [0, 1.5, 0], screw.rod_seat_lps + [0, 0, -25]],
        5.5,
    )
    return PhantomScene(spec=None, vertebrae=vertebrae, structures=structures, screws=[screw], rods=[rod])


@pytest.fixture(scope="module")
def vtk_errors():
    """Collect everything VTK writes to its output window; tests fail on ERROR lines."""
    import vtk

    sow = vtk.vtkStringOutputWindow()
    previous = vtk.vtkOutputWindow.GetInstance()
    vtk.vtkOutputWindow.SetInstance(sow)
    yield sow
    vtk.vtkOutputWindow.SetInstance(previous)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, vtk_errors):
    pv = pytest.importorskip("pyvista")
    from planner.render import render_scene

    out = tmp_path_factory.mktemp("render") / "scene.png"
    info: dict = {}
    scene = synthetic_scene()
    with pv.VtkErrorCatcher(raise_errors=True):
        render_scene(scene, out, window_size=WINDOW, title="synthetic L3-L4", camera_info=info)
    from PIL import Image

    return scene, np.asarray(Image.open(out).convert("RGB")).astype(float), info, vtk_errors


def test_render_no_vtk_errors(rendered):
    *_, sow = rendered
    text = sow.GetOutput()
    assert "ERROR" not in text, text


def test_render_not_blank(rendered):
    _, img, _, _ = rendered
    assert img.shape == (WINDOW[1], WINDOW[0], 3)
    # the background is a vertical gradient: compare each pixel with its row's edge pixel
    bg_row = img[:, :1, :].astype(float)
    non_bg = np.any(np.abs(img.astype(float) - bg_row) > 8, axis=2)
    assert 0.05 < non_bg.mean() < 0.9
    assert img.std() > 10


def test_render_screw_is_metallic(rendered):
    from planner.render import project_points

    scene, img, info, _ = rendered
    sc = scene.screws[0]
    # points on the shank just outside the vertebra, visible to the camera
    pts = sc.head_lps + np.outer([0.05, 0.1, 0.15], sc.tip_lps - sc.head_lps)
    px = np.round(project_points(pts, info)).astype(int)
    greys = 0
    for c, r in px:
        patch = img[r - 2 : r + 3, c - 2 : c + 3].reshape(-1, 3)
        rgb = patch.mean(0)
        # metallic grey-blue: low saturation, blue >= red, not white background
        if rgb.max() - rgb.min() < 60 and rgb[2] >= rgb[0] - 5 and rgb.mean() < 235:
            greys += 1
    assert greys >= 2, px


def test_render_matches_reference(rendered, tmp_path):
    from PIL import Image

    _, img, _, _ = rendered
    if not REFERENCE.exists():  # pragma: no cover - first run writes it for review
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(REFERENCE)
        pytest.skip(f"reference image written to {REFERENCE}; review it and commit")
    ref = np.asarray(Image.open(REFERENCE).convert("RGB")).astype(float)
    assert ref.shape == img.shape
    err = float(np.sqrt(np.mean((ref - img) ** 2)))
    assert err < RMS_TOLERANCE, f"RMS difference {err:.2f} vs reference"


def test_render_mesh_dir(tmp_path, vtk_errors):
    pytest.importorskip("pyvista")
    from planner.meshing import mesh_scene
    from planner.render import render_scene

    scene = synthetic_scene()
    mesh_scene(scene, tmp_path / "meshes", fmt="vtp", spacing_mm=1.0)
    out = render_scene(tmp_path / "meshes", tmp_path / "dir.png", view="lateral", window_size=(240, 200))
    from PIL import Image

    img = np.asarray(Image.open(out).convert("RGB")).astype(float)
    assert np.any(np.abs(img - 255) > 8, axis=2).mean() > 0.03
    assert "ERROR" not in vtk_errors.GetOutput()
