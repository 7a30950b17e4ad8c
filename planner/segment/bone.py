"""Classical bone segmentation of the spine: bone mask, vertebrae, level labels, parts.

Pipeline of :func:`segment_bone` (all steps vectorised with :mod:`scipy.ndimage`):

1. **Canonical grid.**  The CT array is permuted/flipped so that its axes point to patient
   left, posterior and superior (the nearest axis permutation of the direction matrix), and
   resampled to at most :data:`WORK_SPACING_MM` when the scan is finer (speed).
2. **Bone mask.**  Cortical bone = HU above a threshold taken from the data
   (:func:`cortical_threshold`), metal voxels are added (shape only), the thin cortical
   shell is thickened by one voxel, closed shells are filled in 3-D (the cancellous interior,
   even osteoporotic bone at ~60 HU; the image's cranial and caudal faces count as closed, so
   a body cut by the field of view is filled too) and the thickening is undone.  Voxels
   enclosed in two of the three orthogonal slice planes are added: one gap in a shell (thin
   concave posterior wall at 1.5 mm voxels, a dark streak) would leave a body hollow.
3. **Vertebra separation** on a coarse grid (:data:`COARSE_SPACING_MM`): a marker
   watershed of the negative distance map splits the bone at its necks (pedicles, joints,
   discs); pieces that are thick (distance-map maximum) and not shadowed by bone in front
   of them (compared by their cores, the voxels deep inside the piece) are vertebral bodies.  The bodies are grown
   :data:`PEDICLE_GROW_MM` through the bone at equal speed (through their own pedicles), then a
   second watershed gives each vertebra its posterior elements and ribs.
4. **Levels** (:mod:`planner.segment.levels`): counting from an anchor, or from the anatomy
   (sacrum at the bottom, last rib-bearing vertebra = T12).
5. **Parts** per vertebra in its own frame (u left, v posterior, w superior): body =
   bone in front of the posterior wall (followed across the body: concave kidney-shaped
   walls) and inside the body's lateral outline per depth row (rib heads and pedicles that
   bulge beyond it are cut off), minus the pedicle roots (body voxels deeper inside the
   pedicle's cross-section, extended into the body, than inside the body); pedicles = bone
   lateral to the canal between the wall and the canal's mid depth, ribs = lateral bone
   beyond the body and transverse processes, the rest posterior.  Surface voxels whose
   centre lies outside the bone (partial volume, :func:`surface_outside`) are not labelled.
6. **Findings**: heights and fractures, resections (:mod:`planner.segment.levels`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from planner.labels.registry import label_id
from planner.segment import shell
from planner.segment.levels import PART_CODES, SegmentationError
from planner.segment.morph import (
    bbox,
    dilate_box,
    erode_box,
    erode_cross,
    fill_holes,
    resample_linear,
    resample_nearest,
)
from planner.solve.edt import edt as edt_mm
from planner.solve.edt import edt_sq
from planner.volume import Volume

log = logging.getLogger(__name__)

#: Work grid spacing limit (mm): finer scans are resampled to this for speed (a 512x512x300
#: CT at 0.7 mm becomes ~27 M voxels).  1 mm keeps the body Dice above 0.95 on phantoms. [U]
WORK_SPACING_MM: float = 1.0

#: A vertebra whose split body lies at least this fraction inside a shell fit takes the
#: fit as its body (:func:`_bodies_from_fits`). [U]
FIT_BODY_FRACTION: float = 0.5

#: Grid for vertebra separation (mm): the watershed does not need fine detail and runs
#: ~8x faster at 2 mm than at 1 mm. [U]
COARSE_SPACING_MM: float = 2.0

#: Bounds on the cortical threshold (HU).  Below 180 HU dense muscle/contrast and healthy
#: cancellous bone (~150-250 HU) merge with cortex; above 350 HU the partial-volume cortex of
#: thin (0.5 mm) shells at 1 mm voxels (450-700 HU) breaks up. [U]
CORTICAL_HU_BOUNDS: tuple[float, float] = (180.0, 350.0)

#: Cortical threshold above the soft-tissue mode (HU): muscle ~50 HU + 200 = 250 HU, above
#: the disc (80-100 HU) and osteoporotic cancellous bone (~60 HU) by > 4 noise SDs and below
#: the partial-volume peak of a thin cortex (450-700 HU). [U]
CORTICAL_ABOVE_SOFT_HU: float = 200.0

#: Surface voxels of the bone mask are kept only when this much above the cortical
#: threshold (HU); removes the outer partial-volume layer (+1 voxel bias otherwise). [U]
SURFACE_ABOVE_CORTICAL_HU: float = 150.0

#: Label refinement at the bone surface: a surface voxel of the bone mask darker than this
#: much above the cortical threshold (HU) and darker than one of its inner 26-neighbours
#: lies mostly outside the bone (its centre is outside the surface).  The voxel centre is on
#: the surface at half the contrast between soft tissue (~50 HU) and cortex (~1100 HU):
#: ~550 HU = 180 + 350 HU.  A thin cortex (osteoporotic, 1.5 mm voxels) never reaches that
#: contrast; its surface voxel is then the brightest of the profile (the cortex lies inside
#: it) and is kept.  Measured on the phantoms: halves the surface errors of the labels. [U]
SURFACE_HALF_CONTRAST_ABOVE_CORTICAL_HU: float = 350.0

#: Default cortical threshold (HU) when the data give no clear bone mode: 250 HU is
#: above disc (80-100 HU) and muscle (40-60 HU) by > 4 noise SDs of a clinical CT. [U]
CORTICAL_HU_DEFAULT: float = 250.0

#: Work grids coarser than this along the column axis (mm) have thin discs of two voxels:
#: the 3-D fill is checked against an in-plane-thickened fill (:func:`_unbridge_discs`). [U]
THIN_DISC_SPACING_MM: float = 1.2
#: ... and such a disc is at most this many voxels thick (3 mm at 1.5 mm voxels, + 1). [U]
DISC_MAX_VOXELS: int = 3

#: Metal threshold (HU) used only when no ``metal_mask`` is passed: above the densest
#: cortical bone (~1900 HU) and below titanium (> 3000 HU, or the 3071 HU 12-bit cap). [U]
METAL_HU: float = 2500.0

#: Metal counts as bone for the assignment of the posterior elements only within this
#: distance (mm) of non-metal bone: a screw shaft inside its pedicle (radius <= 3.75 mm) is
#: within it, a rod lying in the tulips ~10 mm behind the arches is not. [U]
METAL_FLOOD_MAX_MM: float = 4.0

#: Bodies are grown this far (mm) through the bone at equal speed before the watershed
#: assigns the posterior elements: through their pedicles (wall to lamina ~10-20 mm) but
#: not to the articular processes, ~20 mm or more behind the wall. [U]
PEDICLE_GROW_MM: float = 26.0

#: A body's marker for the assignment of the posterior elements keeps its pieces' bone only
#: up to this distance (mm, canonical superior) above its core (the thick middle,
#: :data:`CORE_FRACTION`): the upper end plate lies a few mm above the core, the arch of the
#: vertebra above higher. [U]
BODY_MARKER_ABOVE_CORE_MM: float = 6.0

#: Bone components smaller than this (mm^3) are noise or calcifications. [U]
MIN_BONE_COMPONENT_MM3: float = 200.0

#: A watershed piece is a vertebral-body candidate when its distance-map maximum (half the
#: thickness of its thickest part) is at least this (mm): a 50 % crushed lumbar body is still
#: ~11 mm tall (5.5 mm), laminae/ribs/pedicles are <= 4-5 mm. [U]
BODY_MIN_HALF_THICKNESS_MM: float = 4.9

#: ... and its volume at least this (mm^3): smallest body in scope (T1-T3, partially
#: resected) ~4 cm^3 whole; its watershed piece may be half of that. [U]
BODY_MIN_VOLUME_MM3: float = 1500.0

#: A candidate with another thick bone piece 12-70 mm in front of it at the same height
#: and within 35 mm left-right is a posterior element, not a body (the body is the most
#: anterior bone of the spine; the sternum lies > 70 mm in front). [U]
SHADOW_AP_MM: tuple[float, float] = (12.0, 70.0)
SHADOW_LR_MM: float = 35.0

#: Column check: consecutive bodies are within COLUMN_TOL_MM (mm, in the axial plane) (adjacent bodies are offset by < 8 mm even in scoliosis/spondylolisthesis; rib
#: heads and posterior elements lie >= 20 mm off). [U]
COLUMN_TOL_MM: float = 14.0
#: Cranio-caudal distance (mm) between consecutive body centres: half a T1 body + disc
#: (~8 mm when a body is over-split) up to a tall lumbar body + disc with a gap (55 mm). [U]
COLUMN_STEP_MM: tuple[float, float] = (8.0, 55.0)

#: Body centres are centroids of the voxels at least this fraction of the piece's maximum
#: depth inside the bone (ribs, alae and processes do not pull them aside). [U]
CORE_FRACTION: float = 0.6

#: Two body pieces touching with a distance-map saddle above this fraction of the thinner
#: piece's maximum are one bone (over-split body or sacrum). [U]
SADDLE_FRACTION: float = 0.5

#: h of the h-maxima markers of the coarse distance map (mm): maxima less prominent than
#: this merge with their neighbour (noise in the distance map at 2 mm is ~1 voxel). [U]
MARKER_H_MM: float = 1.5


@dataclass
class BoneResult:
    """Output of :func:`segment_bone`.

    Attributes
    ----------
    labels : (ni, nj, nk) uint16 ndarray
        Registry ids on the CT grid: ``<L>_body``, ``<L>_pedicle_left/right``,
        ``<L>_posterior``, ``<L>_rib_left/right``; other bone is ``other_bone``.
    levels : list of str
        Levels found, cranial to caudal.
    centres : dict[str, (3,) ndarray]
        Body centre (centroid of the body label) per level, LPS mm.
    axes : dict[str, (3, 3) ndarray]
        Per level columns u (left), v (posterior), w (superior) in LPS.
    heights : dict[str, dict[str, float]]
        Per level ``anterior_height_mm``, ``middle_height_mm``, ``posterior_height_mm``.
    resections : list of dict
        ``{"level", "kind", "side", "confidence"}``.
    fractures : list of dict
        ``{"level", "anterior_height_mm", "middle_height_mm", "posterior_height_mm",
        "height_loss_fraction", "grade"}`` for levels with grade >= 1.
    info : dict
        Thresholds, how levels were assigned, per-level measurements, timings (s).
    """

    labels: np.ndarray
    levels: list[str] = field(default_factory=list)
    centres: dict[str, np.ndarray] = field(default_factory=dict)
    axes: dict[str, np.ndarray] = field(default_factory=dict)
    heights: dict[str, dict[str, float]] = field(default_factory=dict)
    resections: list[dict] = field(default_factory=list)
    fractures: list[dict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- grid helpers
@dataclass
class _Canon:
    """Permutation/flip that maps the CT array to a left/posterior/superior-aligned array."""

    perm: tuple[int, int, int]  # canonical axis a <- ct axis perm[a]
    flip: tuple[bool, bool, bool]  # per canonical axis
    ct_shape: tuple[int, int, int]
    spacing: np.ndarray  # canonical spacing (3,)
    lps_from_ijk: np.ndarray  # of the CT

    @classmethod
    def of(cls, ct: Volume) -> _Canon:
        D = ct.direction
        perm: list[int] = []
        flip: list[bool] = []
        used: set[int] = set()
        for a in range(3):
            order = np.argsort(-np.abs(D[a]))
            ax = int(next(o for o in order if int(o) not in used))
            used.add(ax)
            perm.append(ax)
            flip.append(bool(D[a, ax] < 0))
        return cls(tuple(perm), tuple(flip), ct.shape, ct.spacing[perm], ct.lps_from_ijk)  # type: ignore[arg-type]

    def to_canon(self, arr: np.ndarray) -> np.ndarray:
        out = np.transpose(arr, self.perm)
        for a, f in enumerate(self.flip):
            if f:
                out = np.flip(out, axis=a)
        return np.ascontiguousarray(out)

    def from_canon(self, arr: np.ndarray) -> np.ndarray:
        out = arr
        for a, f in enumerate(self.flip):
            if f:
                out = np.flip(out, axis=a)
        return np.ascontiguousarray(np.transpose(out, np.argsort(self.perm)))

    def lps(self, cidx: np.ndarray) -> np.ndarray:
        """Canonical (full-resolution) voxel indices (n, 3) -> LPS mm (n, 3)."""
        c = np.atleast_2d(np.asarray(cidx, float))
        ct_idx = np.empty_like(c)
        canon_shape = [self.ct_shape[p] for p in self.perm]
        for a in range(3):
            v = c[:, a]
            if self.flip[a]:
                v = canon_shape[a] - 1 - v
            ct_idx[:, self.perm[a]] = v
        return ct_idx @ self.lps_from_ijk[:3, :3].T + self.lps_from_ijk[:3, 3]

    def axes_lps(self) -> np.ndarray:
        """(3, 3) columns: LPS direction of each canonical axis."""
        D = self.lps_from_ijk[:3, :3] / np.linalg.norm(self.lps_from_ijk[:3, :3], axis=0)
        cols = np.stack([D[:, self.perm[a]] * (-1.0 if self.flip[a] else 1.0) for a in range(3)], axis=1)
        return cols


def _block_any(mask: np.ndarray, f: tuple[int, int, int], frac: float = 0.5) -> np.ndarray:
    """Down-sample a mask by integer factors ``f``: a block is set when > ``frac`` of it is set."""
    pads = [(0, (-s) % k) for s, k in zip(mask.shape, f)]
    m = np.pad(mask, pads).astype(np.float32)
    sh = []
    for s, k in zip(m.shape, f):
        sh += [s // k, k]
    return m.reshape(sh).mean(axis=(1, 3, 5)) > frac


def _block_mode(lab: np.ndarray, f: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Down-sample a label map by integer factors ``f`` to ``shape`` (as :func:`_block_any`):
    each block takes its centre voxel's label."""
    out = lab[tuple(slice(k // 2, None, k) for k in f)]
    pads = [(0, max(0, n - s)) for s, n in zip(out.shape, shape)]
    return np.pad(out, pads)[tuple(slice(0, n) for n in shape)]


def _upsample_labels(lab: np.ndarray, f: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    out = lab
    for a, k in enumerate(f):
        out = np.repeat(out, k, axis=a)
    return out[: shape[0], : shape[1], : shape[2]]


# ----------------------------------------------------------------------------- bone mask
def _depth(mask: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm, float32) from each voxel of ``mask`` to the nearest voxel outside it
    (``scipy.ndimage.distance_transform_edt(mask, sampling=spacing)``, compiled)."""
    return edt_mm(mask, spacing, invert=True).astype(np.float32)


def cortical_threshold(hu: np.ndarray) -> float:
    """Cortical-bone threshold (HU) from the data.

    The soft-tissue mode (histogram peak between -100 and 150 HU: muscle, organs, discs)
    plus :data:`CORTICAL_ABOVE_SOFT_HU`, clipped to :data:`CORTICAL_HU_BOUNDS`.  Anchoring on
    the soft-tissue level absorbs calibration offsets of the scanner.  (Otsu between soft
    tissue and cortex lands too high for thin 0.5 mm shells at 1 mm voxels.)

    Parameters
    ----------
    hu : (ni, nj, nk) ndarray
        CT values.

    Returns
    -------
    float
    """
    mode = shell.soft_tissue_mode(hu)
    if mode is None:
        return CORTICAL_HU_DEFAULT
    return float(np.clip(mode + CORTICAL_ABOVE_SOFT_HU, *CORTICAL_HU_BOUNDS))


def _fill_holes_capped(mask: np.ndarray) -> np.ndarray:
    """3-D hole filling with the cranial and caudal faces of the image closed.

    A body cut by the field of view (first or last slices) is an open shell: its interior
    touches the array border and :func:`scipy.ndimage.binary_fill_holes` leaves it hollow
    (no thick piece, the body is lost).  Each end is capped by one extra slice holding the
    2-D hole-filled end slice of ``mask``: the cut body is closed by its own cross-section
    and nothing else changes (the caps are removed afterwards).

    Parameters
    ----------
    mask : (ni, nj, nk) bool ndarray
        Canonical axes (axis 2 cranio-caudal).

    Returns
    -------
    (ni, nj, nk) bool ndarray
    """
    if mask.shape[2] < 2:
        return fill_holes(mask)
    lo = fill_holes(mask[:, :, 0])
    hi = fill_holes(mask[:, :, -1])
    capped = np.concatenate([lo[:, :, None], mask, hi[:, :, None]], axis=2)
    return fill_holes(capped)[:, :, 1:-1]


def _fill_holes_2d(mask: np.ndarray, axis: int) -> np.ndarray:
    """Fill the holes of every 2-D slice of ``mask`` normal to ``axis`` (4-connected
    background; a slice's background touching the slice's edge is outside)."""
    st = ndi.generate_binary_structure(3, 1)
    sl = [slice(None)] * 3
    sl[axis] = 0
    st[tuple(sl)] = False
    sl[axis] = 2
    st[tuple(sl)] = False
    return fill_holes(mask, st)


def _fill_holes_voted(mask: np.ndarray) -> np.ndarray:
    """Voxels enclosed by ``mask`` in at least two of the three orthogonal slice planes.

    The 3-D fill is all or nothing: one gap in a body's shell (a thin concave posterior
    wall below the threshold at 1.5 mm voxels, a dark streak across the cortex) connects
    its interior to the canal and the body stays hollow.  A body's interior is enclosed in
    most coronal and sagittal slices even then, while the canal is enclosed only in axial
    slices (it is open to the foramina in coronal and to the discs in sagittal slices) and
    the space between bodies in none (the discs reach the outside).

    Parameters
    ----------
    mask : (ni, nj, nk) bool ndarray

    Returns
    -------
    (ni, nj, nk) bool ndarray
        ``mask`` plus the voxels enclosed in >= 2 planes.
    """
    votes = np.zeros(mask.shape, np.uint8)
    for axis in range(3):
        votes += _fill_holes_2d(mask, axis) & ~mask
    return mask | (votes >= 2)


def _unbridge_discs(hard: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Undo 3-D fill that only the cranio-caudal thickening enclosed (thin discs).

    With voxels of ~1.5 mm a 3 mm thoracic disc is two voxels: the end plates thickened by
    one voxel touch, the disc is enclosed and filled, and the two bodies fuse.  The fill
    with an in-plane thickening (which closes a shell's corner-only gaps but never bridges
    along the column axis) leaves such discs open.  Voxels filled only with the full
    thickening are dropped where they form a layer at most :data:`DISC_MAX_VOXELS` thick
    along the column axis (a disc); a body whose shell leaks in-plane (sacrum, lumbar
    shells) keeps its full-thickening fill, which is many voxels tall.

    Parameters
    ----------
    hard, filled : (ni, nj, nk) bool ndarrays
        Thresholded bone and its fill with the full (3x3x3) thickening, canonical axes.

    Returns
    -------
    (ni, nj, nk) bool ndarray
    """
    flat = (3, 3, 1)
    filled_flat = erode_box(_fill_holes_capped(dilate_box(hard, flat)), flat, border_value=1)
    extra = filled & ~filled_flat & ~hard
    if not extra.any():
        return filled
    thick = ndi.binary_opening(extra, np.ones((1, 1, DISC_MAX_VOXELS + 1), bool))
    return filled & ~(extra & ~thick)


def bone_mask(hu: np.ndarray, metal: np.ndarray | None, threshold: float, spacing: np.ndarray) -> np.ndarray:
    """Filled bone mask (cortex + enclosed cancellous interior, metal counted as bone).

    Parameters
    ----------
    hu : (ni, nj, nk) float ndarray
    metal : (ni, nj, nk) bool ndarray or None
    threshold : float
        Cortical threshold (HU).
    spacing : (3,) float
        Voxel size (mm), for the small-component cut.

    Returns
    -------
    (ni, nj, nk) bool ndarray
    """
    hard = hu >= threshold
    if metal is not None:
        hard |= metal
    # A 1-voxel cortical shell is only 26-connected: thicken before filling so the
    # (6-connected) background cannot leak through it, then undo the thickening.
    cube = (3, 3, 3)
    filled = erode_box(_fill_holes_capped(dilate_box(hard, cube)), cube, border_value=1)
    if spacing[2] > THIN_DISC_SPACING_MM:
        filled = _unbridge_discs(hard, filled)
    # Plus what the slices enclose (a gap in the 3-D shell empties the whole body).  The
    # slice-wise fill needs no thickening (a 2-D ring is closed for the 4-connected
    # background when 8-connected) and must not have it: thickened end plates of thin
    # thoracic discs touch and would enclose the disc.
    # (border_value=1: the image's edge is not a bone surface; a cut body keeps its end slices)
    bone = filled | _fill_holes_voted(hard)
    # peel the partial-volume rim: surface voxels below the surface threshold are mostly
    # soft tissue (the true edge of a cortex lies at half its contrast)
    rim = bone & ~erode_cross(bone, border_value=1)
    bone &= ~(rim & (hu < threshold + SURFACE_ABOVE_CORTICAL_HU))
    if metal is not None:
        bone |= metal
    lab, n = ndi.label(bone)
    if n > 1:
        sizes = np.bincount(lab.ravel()) * float(np.prod(spacing))
        keep = sizes >= MIN_BONE_COMPONENT_MM3
        keep[0] = False
        bone = keep[lab]
    return bone


#: Thickness (mm) of the cortical shell as CT shows it for the thin-cortex rule of
#: :func:`surface_outside` (:data:`planner.phantom.morphometry.CORTEX_MM`: ~1 mm through
#: partial volume at 0.6-1 mm voxels, the true shell a few tenths; 0.9 thoracic, 1.0
#: lumbar).  Measured at 1.5 mm (worst-level body Dice midthoracic_costovertebral /
#: osteoporotic_no_hardware): 0.8 mm 0.955 / 0.913, 0.9 mm 0.953 / 0.920, 1.0 mm 0.951 /
#: 0.919, 1.1 mm 0.948 / 0.918 (half-contrast rule alone 0.952 / 0.896). [U]
CORTEX_THICKNESS_MM: float = 0.9

#: ... applied along axes whose voxels are at least this long (mm): at 1.0 mm the
#: half-contrast rule is the better one everywhere (worst-level body Dice with the thin-cortex
#: rule on 1.0 mm axes too: case_example 0.959 -> 0.955, osteoporotic_no_hardware 0.964 ->
#: 0.961, the others unchanged). [U]
THIN_CORTEX_MIN_SPACING_MM: float = 1.25

#: Attenuation (HU) of compact cortical bone for the thin-cortex rule (the phantoms' 1100 HU;
#: the rule's decisions barely move over 900-1400 HU: osteoporotic_no_hardware at 1.5 mm,
#: worst-level body Dice 0.917 / 0.917 / 0.918 at 900 / 1100 / 1400 HU). [U]
CORTEX_HU: float = 1100.0


def surface_outside(bone: np.ndarray, hu: np.ndarray, threshold: float, spacing: np.ndarray | None = None) -> np.ndarray:
    """Surface voxels of ``bone`` whose centre lies outside the bone (partial volume).

    *Half contrast.*  The voxel centre is on the surface at half the contrast between soft
    tissue and cortex: a surface voxel (6-connected to the background) is outside when it
    is darker than ``threshold +`` :data:`SURFACE_HALF_CONTRAST_ABOVE_CORTICAL_HU` and darker
    than the brightest of its 26-neighbours inside the mask (the cortex peak lies further
    in).

    *Thin cortex.*  Where neither the voxel nor its inner neighbours reach half the
    contrast, the cortex is thinner than the voxels and the voxel's own value hardly
    depends on where the surface lies in it (cortex and cancellous bone share it).  Along
    each axis whose voxels are longer (``spacing``) than the cortex's thickness ``t``
    (:data:`CORTEX_THICKNESS_MM`; and at least :data:`THIN_CORTEX_MIN_SPACING_MM`) and on which the voxel has the background on one side and
    bone on the other, its inner neighbour tells instead: for a voxel of length ``h`` whose
    centre is on the surface the inner neighbour holds a cortex fraction
    ``phi = clip(t - h / 2, 0, h) / h`` (the rest cancellous), and more cortex there means
    the shell, and the surface, lie further in.  The fraction is read as
    ``(inner - K) / (CORTEX_HU - K)``, ``K`` the voxel two further in (cancellous bone); the
    voxel is outside when the mean over those axes exceeds ``phi``.  Measured at 1.5 mm
    (:func:`segment_bone`, worst-level body Dice, half contrast alone -> with the
    thin-cortex rule):
    case_example 0.923 -> 0.934, midthoracic_costovertebral 0.952 -> 0.953,
    osteoporotic_no_hardware 0.896 -> 0.920, t11_l3_laminectomy 0.945 -> 0.946.

    Vectorised over the surface voxels (gathers), no full-volume filter.

    Parameters
    ----------
    bone : (ni, nj, nk) bool ndarray
    hu : (ni, nj, nk) float ndarray
    threshold : float
        Cortical threshold (HU).
    spacing : (3,) float, optional
        Voxel size (mm) along the array's axes; without it only the half-contrast rule.

    Returns
    -------
    (ni, nj, nk) bool ndarray
    """
    inner = erode_cross(bone, border_value=1)
    half = threshold + SURFACE_HALF_CONTRAST_ABOVE_CORTICAL_HU
    # both rules judge only surface voxels darker than half the contrast
    idx = np.flatnonzero(bone & ~inner & (hu < half))
    out = np.zeros(bone.shape, bool)
    if idx.size == 0:
        return out
    shape = np.array(bone.shape)
    ijk = np.stack(np.unravel_index(idx, bone.shape), 1)
    hf = hu.ravel()
    bf = bone.ravel()

    def at(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = np.all((q >= 0) & (q < shape), axis=1)
        return np.ravel_multi_index(tuple(np.clip(q, 0, shape - 1).T), bone.shape), ok

    inf = inner.ravel()
    peak = np.full(idx.size, -np.inf, np.float32)
    for off in np.argwhere(np.ones((3, 3, 3), bool)) - 1:
        if not off.any():
            continue
        fq, ok = at(ijk + off)
        val = np.where(ok & inf[fq], hf[fq], -np.inf)
        np.maximum(peak, val, out=peak)
    r = hf[idx]
    outside = r < peak
    # the profile never reaches half the contrast: a cortex thinner than the voxels; along
    # the axes with voxels longer than the cortex (and THIN_CORTEX_MIN_SPACING_MM) the
    # inner neighbour decides
    thin = np.maximum(r, peak) < half
    sp = np.zeros(3) if spacing is None else np.asarray(spacing, float)
    score = np.zeros(idx.size)
    n_thin = np.zeros(idx.size, np.int32)
    for ax in range(3):
        h = float(sp[ax])
        if not (h > CORTEX_THICKNESS_MM and h >= THIN_CORTEX_MIN_SPACING_MM):
            continue
        phi = float(np.clip(CORTEX_THICKNESS_MM - 0.5 * h, 0.0, h)) / h
        for sgn in (-1, 1):
            e = np.zeros(3, int)
            e[ax] = sgn
            fo, oko = at(ijk + e)
            fi, oki = at(ijk - e)
            fk, okk = at(ijk - 3 * e)
            use = thin & oko & oki & okk & ~bf[fo] & bf[fi] & bf[fk]
            k = hf[fk]
            frac = (hf[fi] - k) / np.maximum(CORTEX_HU - k, 1.0)
            score += np.where(use, frac - phi, 0.0)
            n_thin += use
    judged = n_thin > 0
    outside[judged] = score[judged] > 0
    out.ravel()[idx[outside]] = True
    return out


# ----------------------------------------------------------------------------- vertebrae
def _unshadowed(ids: list[int], pos: dict, zr: dict, vol: dict) -> list[int]:
    """Body candidates that are not posterior elements: a candidate with another one
    :data:`SHADOW_AP_MM` in front of it, within :data:`SHADOW_LR_MM` left-right, over 30 %
    of its height and at least half its volume is "shadowed" (the body is the most anterior
    bone of the spine).  ``pos`` (mm, canonical), ``zr`` (z range, mm) and ``vol`` by id."""
    out = []
    for i in ids:
        shadowed = False
        for j in ids:
            if j == i:
                continue
            dy = pos[i][1] - pos[j][1]  # > 0: j is anterior of i
            ov = min(zr[i][1], zr[j][1]) - max(zr[i][0], zr[j][0])
            if (
                SHADOW_AP_MM[0] < dy < SHADOW_AP_MM[1]
                and abs(pos[i][0] - pos[j][0]) < SHADOW_LR_MM
                and ov > 0.3 * (zr[i][1] - zr[i][0])
                and vol[j] > 0.5 * vol[i]
            ):
                shadowed = True
                break
        if not shadowed:
            out.append(i)
    return out


def _on_column(ids: list[int], pos: dict, vol: dict) -> list[int]:
    """Candidates within 30 mm left-right of the volume-weighted median position."""
    if not ids:
        return ids
    xs = np.array([pos[i][0] for i in ids])
    w = np.array([vol[i] for i in ids])
    x0 = float(np.median(np.repeat(xs, np.maximum(1, (w / w.min()).astype(int)))))
    return [i for i, x in zip(ids, xs) if abs(x - x0) < 30.0]


def _find_bodies(bone_c: np.ndarray, sp_c: np.ndarray, metal_c: np.ndarray | None = None) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """Split the coarse bone mask into watershed pieces and pick vertebral bodies.

    Returns
    -------
    pieces : (coarse shape) int32 ndarray
        Watershed piece ids (0 = background).
    bodies : list of dict
        ``{"pieces": [ids], "centroid": (3,) mm canonical, "zmin", "zmax", "volume"}``,
        sorted cranial to caudal.
    edt : (coarse shape) float ndarray
        Distance to the nearest non-bone voxel (mm).
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    # metal is a hole here: screws in pedicles must not make the pedicles look thick
    solid = bone_c & ~metal_c if metal_c is not None else bone_c
    edt = _depth(solid, sp_c)
    peaks = h_maxima(edt, MARKER_H_MM).astype(bool) & (edt >= 3.0)
    markers, n = ndi.label(peaks, np.ones((3, 3, 3)))
    pieces = watershed(-edt, markers, mask=bone_c).astype(np.int32)
    if n == 0:
        return pieces, [], edt
    idx = np.arange(1, n + 1)
    vox = float(np.prod(sp_c))
    vol = ndi.sum_labels(np.ones_like(pieces, np.float32), pieces, idx) * vox
    emax = ndi.maximum(edt, pieces, idx)
    cen = np.array(ndi.center_of_mass(bone_c, pieces, idx)) * sp_c
    cand = [int(i) for i, v, e in zip(idx, vol, emax) if v >= BODY_MIN_VOLUME_MM3 and e >= BODY_MIN_HALF_THICKNESS_MM]
    if not cand:
        return pieces, [], edt
    objs = ndi.find_objects(pieces)
    zr = {i: ((objs[i - 1][2].start) * sp_c[2], (objs[i - 1][2].stop) * sp_c[2]) for i in cand}
    info = {i: {"c": cen[i - 1], "v": vol[i - 1], "e": emax[i - 1], "z": zr[i]} for i in cand}
    # cores: voxels at least CORE_FRACTION of the piece's maximum depth inside the bone
    # (the middle of a body; appendages such as the sacrum's posterior elements or rib bits
    # do not move the core's position and height)
    core = np.where(edt >= CORE_FRACTION * np.append(0.0, emax)[pieces], pieces, 0)
    core = np.where(np.isin(core, cand), core, 0)
    cc = np.array(ndi.center_of_mass(core > 0, core, cand)) * sp_c
    cobjs = ndi.find_objects(core)
    for i, p in zip(cand, cc):
        if np.all(np.isfinite(p)) and i - 1 < len(cobjs) and cobjs[i - 1] is not None:
            info[i]["core"] = p
            zs = cobjs[i - 1][2]
            info[i]["core_z"] = (zs.start * sp_c[2], zs.stop * sp_c[2])
    # posterior elements are "shadowed": thick bone lies in front of them at the same height.
    # Positions and heights are the cores': with whole pieces a sacrum whose piece reaches
    # up behind L5 (its posterior elements) was shadowed by L5 once streaks moved the
    # piece boundaries by a few voxels.
    pos = {i: info[i].get("core", info[i]["c"]) for i in cand}
    zr_core = {i: info[i].get("core_z", info[i]["z"]) for i in cand}
    bodies = _unshadowed(cand, pos, zr_core, {i: info[i]["v"] for i in cand})
    # keep the column: drop candidates off the line through their neighbours (rib heads,
    # transverse processes, posterior elements whose body is outside the field of view)
    # (by the cores' positions: a body whose piece swallowed a rib has its centroid pulled
    # 30-40 mm aside -- T6 of midthoracic_costovertebral under streaks -- its core stays)
    bodies = _on_column(bodies, pos, {i: info[i]["v"] for i in cand})

    def same_bone(i: int, j: int) -> bool:
        # two pieces of one bone touch with a thick saddle (two bodies are separated by a
        # disc, i.e. not bone at all, or touch only through thin bone)
        sl = objs[j - 1]
        pad = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)
        near = ndi.binary_dilation(pieces[pad] == j) & (pieces[pad] == i)
        saddle = float(edt[pad][near].max()) if near.any() else 0.0
        return saddle >= SADDLE_FRACTION * min(info[i]["e"], info[j]["e"])

    chain = _column_chain(bodies, info, same_bone)
    # merge consecutive bodies of one bone (over-split body or sacrum).  A piece joined with a
    # thick saddle to both its neighbours keeps only the link to the nearer one (by core
    # centre): over-split pieces of one bone lie closer together than two vertebrae, and a
    # disc bridged by streaks (L5/S1 beside the S1 screws) must not fuse L5 with the sacrum
    # while the sacrum's own lower piece becomes a body of its own.
    def centre(g: list[int]) -> np.ndarray:
        return np.asarray(info[g[0]].get("core", info[g[0]]["c"]), float)

    link = [bool(same_bone(chain[k + 1][0], chain[k][0])) for k in range(len(chain) - 1)]
    dist = [float(np.linalg.norm(centre(chain[k + 1]) - centre(chain[k]))) for k in range(len(chain) - 1)]
    keep = list(link)
    for k in range(1, len(chain) - 1):
        if link[k - 1] and link[k]:
            if dist[k - 1] <= dist[k]:
                keep[k] = False
            else:
                keep[k - 1] = False
    groups: list[list[int]] = []
    for k, g in enumerate(chain):
        if groups and keep[k - 1]:
            groups[-1].extend(g)
            continue
        groups.append(list(g))
    out = []
    for g in groups:
        v = sum(info[i]["v"] for i in g)
        c = sum(info[i]["c"] * info[i]["v"] for i in g) / v
        out.append(
            {
                "pieces": g,
                "centroid": c,
                "zmin": min(info[i]["z"][0] for i in g),
                "zmax": max(info[i]["z"][1] for i in g),
                "volume": v,
                "half_thickness": max(info[i]["e"] for i in g),
                "core_z_mm": (min(info[i].get("core_z", info[i]["z"])[0] for i in g),
                              max(info[i].get("core_z", info[i]["z"])[1] for i in g)),
            }
        )
    out.sort(key=lambda b: -b["centroid"][2])
    return pieces, out, edt


def _bodies_of_fits(fit_c: np.ndarray, bone_c: np.ndarray, sp_c: np.ndarray, metal_c: np.ndarray | None) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """The bodies of the shell-fit path, in :func:`_find_bodies`' format: one body (and one
    piece) per shell fit (``fit_c``, ids 1..n on the coarse grid), minus fits off the column
    or shadowed by a fit in front of them (an enclosed canal segment near the image's face),
    sorted cranial to caudal."""
    solid = bone_c & ~metal_c if metal_c is not None else bone_c
    edt = _depth(solid, sp_c)
    ids = [int(i) for i in np.unique(fit_c) if i > 0]
    if not ids:
        return fit_c.astype(np.int32), [], edt
    objs = ndi.find_objects(fit_c)
    n_vox = np.bincount(fit_c.ravel())
    pos = {i: np.asarray(c) * sp_c for i, c in zip(ids, ndi.center_of_mass(fit_c > 0, fit_c, ids))}
    zr = {i: (objs[i - 1][2].start * sp_c[2], objs[i - 1][2].stop * sp_c[2]) for i in ids}
    vol = {i: float(n_vox[i]) * float(np.prod(sp_c)) for i in ids}
    depth = dict(zip(ids, (float(x) for x in ndi.maximum(edt, fit_c, ids))))
    keep = _on_column(_unshadowed(ids, pos, zr, vol), pos, vol)
    bodies = [
        {"pieces": [i], "centroid": pos[i], "zmin": zr[i][0], "zmax": zr[i][1],
         "volume": vol[i], "half_thickness": depth[i], "core_z_mm": zr[i]}
        for i in keep
    ]
    bodies.sort(key=lambda b: -b["centroid"][2])
    return np.where(np.isin(fit_c, keep), fit_c, 0).astype(np.int32), bodies, edt


def _column_chain(ids: list[int], info: dict[int, dict], same_bone: Any = None) -> list[list[int]]:
    """Pick the spinal column among body candidates.

    The column is the longest cranio-caudal chain of candidates in which consecutive ones
    are :data:`COLUMN_STEP_MM` apart in height and within :data:`COLUMN_TOL_MM` in the
    axial plane (ties: larger total volume).  Rib heads, transverse processes and posterior
    elements whose body is outside the field of view are off the chain.  A candidate off
    the chain that overlaps a chain member in height by more than half, lies within
    2 x :data:`COLUMN_TOL_MM` of it and joins it with a thick saddle (``same_bone(i, j)``)
    is another piece of that body.  Positions are the centroids of the pieces' cores
    (``info[i]["core"]``), which ribs and alae do not pull aside.

    Returns
    -------
    list of list of int
        Piece ids per body, cranial to caudal.
    """
    if not ids:
        return []
    order = sorted(ids, key=lambda i: -info[i]["c"][2])
    c = {i: info[i].get("core", info[i]["c"]) for i in order}
    best: dict[int, tuple[int, float]] = {}
    prev: dict[int, int | None] = {}
    for k, i in enumerate(order):
        best[i] = (1, info[i]["v"])
        prev[i] = None
        for j in order[:k]:
            dz = c[j][2] - c[i][2]
            dxy = float(np.hypot(c[j][0] - c[i][0], c[j][1] - c[i][1]))
            if COLUMN_STEP_MM[0] <= dz <= COLUMN_STEP_MM[1] and dxy <= COLUMN_TOL_MM:
                cand = (best[j][0] + 1, best[j][1] + info[i]["v"])
                if cand > best[i]:
                    best[i] = cand
                    prev[i] = j
    end = max(order, key=lambda i: best[i])
    chain = []
    node: int | None = end
    while node is not None:
        chain.append(node)
        node = prev[node]
    chain.reverse()
    groups = [[i] for i in chain]
    for i in order:
        if i in chain:
            continue
        zi = info[i]["z"]
        for g in groups:
            j = g[0]
            zj = info[j]["z"]
            ov = min(zi[1], zj[1]) - max(zi[0], zj[0])
            dxy = float(np.hypot(c[j][0] - c[i][0], c[j][1] - c[i][1]))
            if (
                ov > 0.5 * min(zi[1] - zi[0], zj[1] - zj[0])
                and dxy <= 2.0 * COLUMN_TOL_MM
                and (same_bone is None or same_bone(i, j))
            ):
                g.append(i)
                break
        else:
            log.debug("body candidate at %s is off the column: dropped", np.round(c[i], 1))
    return groups


def _assign_vertebrae(bone_c: np.ndarray, metal_c: np.ndarray, body_c: np.ndarray, sp_c: np.ndarray) -> np.ndarray:
    """Coarse vertebra ids 1..n (cranial to caudal): the bodies (``body_c``, ids 1..n) grown
    :data:`PEDICLE_GROW_MM` through the bone at equal speed, then a watershed of the
    negative distance map.

    The posterior elements of neighbouring vertebrae touch at the facet joints and between
    the spinous processes (gaps of 1-2 mm close on the coarse grid), so the whole column's
    arches are one thick chain.  A watershed straight from the bodies lets the body with the
    thickest pedicles take its neighbours' arches before their own thinner (or screw-filled)
    pedicles let their flood through (on case_example L4 took L2's, L3's and L5's arches,
    on osteoporotic_no_hardware L2 took L1's and L3's).  Grown first through their own
    pedicles, all bodies reach their arches at the same time.  Screws fill their pedicles:
    metal counts as bone, but only within :data:`METAL_FLOOD_MAX_MM` of non-metal bone
    (rods, cross-links and tulips behind the arches would join every instrumented level).
    """
    from skimage.segmentation import watershed

    flood = bone_c
    if metal_c is not None and metal_c.any():
        far = edt_mm(bone_c & ~metal_c, sp_c) > METAL_FLOOD_MAX_MM
        flood = bone_c & ~(metal_c & far)
    markers = np.where(flood, body_c, 0).astype(np.int32)
    n_grow = int(round(PEDICLE_GROW_MM / float(np.mean(sp_c))))
    st = ndi.generate_binary_structure(3, 1)
    for _ in range(n_grow):
        grown = ndi.grey_dilation(markers, footprint=st)
        markers = np.where((markers == 0) & flood, grown, markers)
    edt = _depth(flood, sp_c)
    return watershed(-edt, markers, mask=flood).astype(np.int32)


# ----------------------------------------------------------------------------- main entry
def _bodies_from_fits(parts: np.ndarray, fitted: np.ndarray) -> None:
    """On the shell-fit path the fits are the bodies: where most of a vertebra's split body
    lies inside a fit, its body voxels outside the fits become posterior elements (the
    split's posterior wall is unreliable on a noisy CT: pedicle bases, articular processes)
    and its posterior-element and pedicle-root voxels inside the fits become body (the
    fit's surface is the cortex, which the pedicles join outside it; lumbar-ct-L2-L4 L2-L4
    body Dice 0.878 / 0.923 / 0.864 with the roots as body, 0.876 / 0.913 / 0.858
    without).  In place."""
    n_of = parts // 16
    code = parts % 16
    is_body = (parts > 0) & (code == PART_CODES["body"])
    n = int(n_of.max()) + 1
    tot = np.bincount(n_of[is_body], minlength=n)
    inside = np.bincount(n_of[is_body & fitted], minlength=n)
    fitted_vert = inside >= FIT_BODY_FRACTION * np.maximum(tot, 1)
    fitted_vert[0] = False
    of_fitted = fitted_vert[n_of]
    post = PART_CODES["posterior"]
    move_out = is_body & ~fitted & of_fitted
    parts[move_out] = 16 * n_of[move_out] + post
    inner = np.isin(code, [post, PART_CODES["pedicle_left"], PART_CODES["pedicle_right"]])
    move_in = (parts > 0) & inner & fitted & of_fitted
    parts[move_in] = 16 * n_of[move_in] + PART_CODES["body"]


def segment_bone(
    ct: Volume,
    *,
    metal_mask: np.ndarray | None = None,
    anchor: Any = None,
) -> BoneResult:
    """Segment the vertebrae of a CT, label them by level and split them into parts.

    Parameters
    ----------
    ct : Volume
        CT in Hounsfield units, any orientation; ``array`` (ni, nj, nk).
    metal_mask : (ni, nj, nk) bool ndarray, optional
        Metal voxels from the hardware step; counted as bone for shape.  When None, voxels
        above :data:`METAL_HU` are used.
    anchor : str, tuple or dict, optional
        How to name the levels; see :func:`planner.segment.levels.parse_anchor`
        (``"L5"``: the lowest non-sacral body is L5; ``"L4@z=-80"``: the body nearest
        LPS z = -80 mm is L4; ``("L3", 1)``: the second body from the top is L3).
        When None, levels come from the anatomy (sacrum, last rib-bearing vertebra = T12).

    Returns
    -------
    BoneResult

    Raises
    ------
    SegmentationError
        ``PLN-SEG-001`` when no vertebral body is found or a requested level is not in the
        image; ``PLN-SEG-002`` when levels cannot be named (no anchor and no sacrum/ribs).
    """
    from planner.segment import levels as lv

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if ct.modality not in ("CT", "OTHER"):
        log.warning("segment_bone expects a CT, got modality %s", ct.modality)
    canon = _Canon.of(ct)
    hu = canon.to_canon(np.asarray(ct.array)).astype(np.float32, copy=False)
    metal = None
    if metal_mask is not None:
        metal_mask = np.asarray(metal_mask, bool)
        if metal_mask.shape != ct.shape:
            raise SegmentationError(
                f"metal_mask shape {metal_mask.shape} differs from the CT {ct.shape}",
                code="PLN-GEO-003",
            )
        metal = canon.to_canon(metal_mask)
    sp = canon.spacing.astype(float)

    # ---- work grid (resample finer scans to ~1 mm)
    zoom = np.minimum(1.0, sp / WORK_SPACING_MM)
    resampled = bool(np.any(zoom < 0.95))
    if resampled:
        shape_w = tuple(int(x) for x in np.round(np.array(hu.shape) * zoom))
        hu_w = resample_linear(hu, shape_w)
        metal_w = resample_nearest(metal, shape_w) if metal is not None else None
        sp_w = sp * np.array(hu.shape) / np.array(hu_w.shape)
    else:
        hu_w, metal_w, sp_w = hu, metal, sp
    if metal_w is None:
        metal_w = hu_w >= METAL_HU
    timings["prepare"] = time.perf_counter() - t0

    # ---- bone mask
    t = time.perf_counter()
    noise = shell.noise_sigma(hu_w)
    low_contrast = noise > shell.NOISY_CT_SIGMA_HU
    shell_fits: list[dict] = []
    fitted_mask = fitted = None
    if low_contrast:
        # noisy CT: the thresholded cortex is full of holes and no hole fill closes it; the
        # bodies are star-shaped fits to the smoothed shell (:mod:`planner.segment.shell`)
        hu_w = ndi.gaussian_filter(hu_w, shell.SMOOTH_SIGMA_MM / sp_w).astype(np.float32)
        thr = shell.shell_threshold(hu_w)
        fitted, shell_fits, gap = shell.fit_bodies(hu_w, sp_w, thr)
        fitted_mask = fitted > 0
        bone = (bone_mask(hu_w, metal_w, thr, sp_w) & ~gap) | fitted_mask
        del gap
        ct.provenance.warn(
            "PLN-W-SEG-003",
            f"noisy CT (soft-tissue noise {noise:.0f} HU > {shell.NOISY_CT_SIGMA_HU:.0f} HU): "
            f"smoothed (sigma {shell.SMOOTH_SIGMA_MM} mm) and vertebral bodies fitted to the "
            f"cortical shell at {thr:.0f} HU ({len(shell_fits)} fits); body surfaces are "
            "less exact than on a standard-dose CT, check them on the figure",
            noise_hu=round(noise, 1),
            shell_threshold_hu=round(thr, 1),
            n_fits=len(shell_fits),
        )
    else:
        thr = cortical_threshold(hu_w)
        bone = bone_mask(hu_w, metal_w, thr, sp_w)
    timings["bone_mask"] = time.perf_counter() - t
    if not bone.any():
        raise SegmentationError(
            "no bone found in the image (no voxels above the cortical threshold "
            f"{thr:.0f} HU); is this a CT in Hounsfield units?",
            code="PLN-SEG-001",
            details={"threshold_hu": thr, "found": []},
        )

    # ---- crop to bone
    sl = bbox(bone)
    sl = tuple(slice(max(0, s.start - 2), min(n, s.stop + 2)) for s, n in zip(sl, bone.shape))
    bone_k = bone[sl]
    hu_k = hu_w[sl]
    metal_k = metal_w[sl]

    # ---- coarse separation
    t = time.perf_counter()
    f = tuple(int(max(1, round(COARSE_SPACING_MM / s))) for s in sp_w)
    sp_c = sp_w * np.array(f)
    bone_c = _block_any(bone_k, f, 0.35)
    metal_c = _block_any(metal_k, f, 0.2)
    if fitted is not None and fitted.any():
        # the fits are the bodies (the watershed's thick pieces merge across bridged discs
        # and split a fit into several on this noisy bone mask)
        pieces, bodies, edt_c = _bodies_of_fits(_block_mode(fitted[sl], f, bone_c.shape), bone_c, sp_c, metal_c)
    else:
        pieces, bodies, edt_c = _find_bodies(bone_c, sp_c, metal_c)
    del fitted
    timings["separate"] = time.perf_counter() - t
    if not bodies:
        raise SegmentationError(
            "no vertebral body found: the bone in the image has no thick piece in front of "
            "a canal (found only thin bone such as ribs or posterior elements)",
            code="PLN-SEG-001",
            details={"found": [], "bone_volume_mm3": float(bone.sum() * np.prod(sp_w))},
        )
    t = time.perf_counter()
    body_c = np.zeros(pieces.shape, np.int32)
    z_mm = (np.arange(pieces.shape[2]) * sp_c[2])[None, None, :]
    for n, b in enumerate(bodies, start=1):
        # a body's marker is its pieces' bone up to a little above its core: a piece may
        # hold the posterior elements of the vertebra above (the sacrum's reaches up behind
        # L5, whose arch it took before L5's own flood through its pedicles got there).
        # Below the core it keeps them: its own inferior articular and spinous processes.
        keep = z_mm <= b["core_z_mm"][1] + BODY_MARKER_ABOVE_CORE_MM
        body_c[np.isin(pieces, b["pieces"]) & keep] = n
    vert_c = _assign_vertebrae(bone_c, metal_c, body_c, sp_c)
    # full-resolution (work grid) vertebra ids: nearest coarse id for every bone voxel
    vert = _upsample_labels(vert_c, f, bone_k.shape)
    body_seed = _upsample_labels(body_c, f, bone_k.shape)
    vert = np.where(bone_k, vert, 0)
    miss = bone_k & (vert == 0)
    if miss.any():
        _, ft = edt_sq(vert != 0, sp_w, return_features=True)
        vert[miss] = vert.reshape(-1)[ft[miss]]
        del ft
    timings["assign"] = time.perf_counter() - t

    # ---- parts per vertebra
    t = time.perf_counter()
    origin_w = np.array([s.start for s in sl], float)
    to_lps_axes = canon.axes_lps()
    scale_w = sp_w / sp  # work voxel -> canonical full-res voxel

    def k_to_lps(p_k: np.ndarray) -> np.ndarray:
        return canon.lps(((np.atleast_2d(p_k) + origin_w) * scale_w) + 0.5 * (scale_w - 1.0))

    # metal counts as bone for the centres: a screw inside one side of a body (the other side
    # without one) would otherwise push the core, and with it the frame, to the free side
    edt_w = _depth(bone_k, sp_w)
    frames = lv.vertebra_frames(vert, body_seed, len(bodies), sp_w, edt_w)
    del edt_w
    parts_k, part_info = lv.split_parts(vert, body_seed, frames, bone_k, hu_k, metal_k, sp_w)
    if fitted_mask is not None:
        _bodies_from_fits(parts_k, fitted_mask[sl])
    timings["parts"] = time.perf_counter() - t

    # ---- level names
    t = time.perf_counter()
    centres_lps = [k_to_lps(fr["centre_vox"])[0] for fr in frames]
    names, how = lv.name_levels(frames, part_info, centres_lps, anchor, sp_w)
    timings["levels"] = time.perf_counter() - t

    # ---- label map on the work grid, then back to the CT grid
    lab_k = np.zeros(bone_k.shape, np.uint16)
    lab_k[bone_k] = label_id("other_bone")
    part_lut = np.zeros(16 * (len(names) + 1), np.uint16)  # part code -> registry id
    for n, name in enumerate(names, start=1):
        if name is not None:
            for part, code in lv.PART_CODES.items():
                part_lut[n * 16 + code] = label_id(f"{name}_{part}")
    named = part_lut[np.clip(parts_k, 0, part_lut.size - 1)]
    np.copyto(lab_k, named, where=named > 0)
    del named
    lab_k[metal_k] = 0  # metal keeps its own (hardware) labels
    # surface voxels whose centre lies outside the bone (half contrast) are not bone
    # (a shell fit's surface is its edge already: its voxels stay)
    outside = surface_outside(bone_k | metal_k, hu_k, thr, sp_w) & ~metal_k
    if fitted_mask is not None:
        outside &= ~fitted_mask[sl]
    lab_k[outside] = 0
    del outside
    lab_w = np.zeros(bone.shape, np.uint16)
    lab_w[sl] = lab_k
    if resampled:
        lab_full = resample_nearest(lab_w, hu.shape)
    else:
        lab_full = lab_w
    labels = canon.from_canon(lab_full).astype(np.uint16)

    # ---- findings
    t = time.perf_counter()
    levels = [nm for nm in names if nm is not None]
    centres: dict[str, np.ndarray] = {}
    axes: dict[str, np.ndarray] = {}
    for fr, nm in zip(frames, names):
        if nm is None:
            continue
        centres[nm] = k_to_lps(fr["centre_vox"])[0]
        axes[nm] = to_lps_axes @ fr["R"]
    heights = {nm: part_info[n]["heights"] for n, nm in enumerate(names) if nm is not None}
    cut = set()
    is_body = (parts_k % 16 == lv.PART_CODES["body"]) & (parts_k > 0)
    body_boxes = ndi.find_objects(np.where(is_body, parts_k // 16, 0))
    for n, nm in enumerate(names, start=1):
        if nm is None:
            continue
        ob = body_boxes[n - 1] if n <= len(body_boxes) else None
        if ob is not None:
            lo = np.array([q.start for q in ob]) + origin_w
            hi = np.array([q.stop for q in ob]) + origin_w
            if np.any(lo <= 0) or np.any(hi >= np.array(bone.shape)):
                cut.add(nm)
    fractures, loss = lv.fractures_from_heights(heights, levels, cut)
    resections = lv.detect_resections(part_info, names)
    timings["findings"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    info = {
        "cortical_threshold_hu": thr,
        "noise_sigma_hu": round(noise, 1),
        "low_contrast_shell_fit": low_contrast,
        "shell_fits": shell_fits,
        "work_spacing_mm": [float(x) for x in sp_w],
        "coarse_spacing_mm": [float(x) for x in sp_c],
        "n_bodies": len(bodies),
        "levels_from": how,
        "height_loss": loss,
        "cut_by_field_of_view": sorted(cut),
        "per_level": {nm: lv.jsonable(part_info[n]) for n, nm in enumerate(names) if nm is not None},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    log.info("segment_bone: %d levels %s in %.1f s", len(levels), levels, timings["total"])
    return BoneResult(
        labels=labels,
        levels=levels,
        centres=centres,
        axes=axes,
        heights=heights,
        resections=resections,
        fractures=fractures,
        info=info,
    )
