"""Vertebral bodies of noisy, low-contrast CT: star-shaped fits to the cortical shell.

On a clinical low-dose or thin-slice CT the cancellous interior of a body can be as dark as
muscle (corpus median 43-69 HU on ``lumbar-ct-L2-L4``) and the thin cortex only some
200-240 HU at 1.5 mm voxels under noise of sigma ~60-70 HU.  A threshold then keeps a shell
full of holes, the 3-D and slice-wise hole fills of :func:`planner.segment.bone.bone_mask`
leak through them and no body is filled (Dice 0.0 on that CT).  This module finds the bodies
as the regions the shell *mostly* encloses and fits each one's surface as a star-shaped
surface about its centre, which bridges the holes:

1. **Smoothing** with a Gaussian of :data:`SMOOTH_SIGMA_MM` (noise sigma ~60 HU falls to
   ~10 HU while the cortex stays a ridge of ~100-200 HU above soft tissue).
2. **Shell threshold**: the smoothed soft-tissue mode plus :data:`SHELL_ABOVE_SOFT_HU`.
3. **Seeds**: voxels below the threshold enclosed by shell within :data:`ENCLOSURE_MM` in at
   least :data:`ENCLOSED_DIRECTIONS` of the six axis directions (a hole in one wall leaves
   five; the canal is open cranio-caudally, a disc in-plane).  The image's cranial and caudal
   faces count as shell (a body cut by the field of view).
4. **Star fit** from each seed's centre: along :data:`N_DIRECTIONS` rays a first surface is
   the outer edge of the first shell crossing beyond :data:`INNER_SKIP_MM` (trabecular
   speckle near the centre is skipped), outliers replaced by their neighbours' median.
   The first crossing stops early where the cancellous bone is bright and runs through
   the thin posterior wall, so the surface is then refined: on every ray the steepest
   descent of the profile that is strong and near the current surface wins
   (:func:`star_radii`), and the neighbours' median of the choices is the new surface.
   The fit is re-centred on its own centroid and repeated; the best-supported fit (edges
   on the surface) is kept, and a centre that leaves its seed stops the re-centring.
5. Fits overlapping an accepted (larger) one by more than :data:`MAX_OVERLAP` are dropped
   (a disc enclosed between two end plates), touching fits are separated by a gap of
   :data:`SEPARATION_VOXELS` voxels, and what lies between two fits cranio-caudally is
   returned as a gap (a disc) that the bone mask must not bridge.

Used by :func:`planner.segment.bone.segment_bone` when the image noise
(:func:`noise_sigma`) exceeds :data:`NOISY_CT_SIGMA_HU`, where the fits become the
vertebral bodies; the phantoms (9-16 HU measured) never take this path.  On
``lumbar-ct-L2-L4`` body Dice is 0.88 / 0.92 / 0.86 (L2-L4; 0.80 / 0.81 / 0.80 with the
first crossing alone).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: Images whose soft-tissue noise (:func:`noise_sigma`) exceeds this (HU) take the shell-fit
#: path: at ~45 HU the 1-voxel cortex of a 1.5 mm scan (~220-240 HU) is < 4 SDs above
#: muscle and thresholding it breaks the shell.  Measured: phantoms 9-16 HU (with streaks
#: and 25 HU noise too), lumbar-ct-L2-L4 58 HU. [U]
NOISY_CT_SIGMA_HU: float = 45.0

#: Gaussian sigma (mm) of the smoothing on the noisy path: the cortex (0.5-2 mm) stays a
#: ridge, noise falls ~6x. [U]
SMOOTH_SIGMA_MM: float = 1.0

#: Shell threshold above the smoothed soft-tissue mode (HU): smoothed cortex on
#: lumbar-ct-L2-L4 has median ~140 HU over a soft-tissue mode of ~37 HU.  Measured there
#: (levels L2-L4 right at every value): body Dice at the worst level 0.836 at 55, 0.863 at
#: 60, 0.864 at 63, 0.806 at 65, 0.756 at 70, 0.751 at 75. [U]
SHELL_ABOVE_SOFT_HU: float = 63.0

#: Reach (mm) of the enclosure test: half a lumbar body's width (~22 mm) or depth (~17 mm)
#: plus margin. [U]
ENCLOSURE_MM: float = 25.0

#: A seed voxel is enclosed in at least this many of the six axis directions. [U]
ENCLOSED_DIRECTIONS: int = 5

#: Seeds smaller than this (mm^3) are not bodies (a lumbar body's interior is 20-40 cm^3;
#: a cut or crushed one still > 3 cm^3). [U]
SEED_MIN_MM3: float = 2000.0

#: Rays of the star fit (Fibonacci sphere; ~4.5 degrees apart). [U]
N_DIRECTIONS: int = 800

#: Ray length and sample step (mm). [U]
RAY_MAX_MM: float = 40.0
RAY_STEP_MM: float = 0.5

#: Shell crossings nearer than this (mm) to the centre are speckle of the cancellous bone
#: (the smallest half-height of a body in scope is ~6 mm). [U]
INNER_SKIP_MM: float = 6.0

#: The surface is the outer edge of the shell crossing, at most this far (mm) beyond its
#: inner edge (a cortex with partial volume and smoothing; a ray into a pedicle or the next
#: bone stops there). [U]
SHELL_MAX_THICKNESS_MM: float = 4.0

#: A ray's radius more than this (mm) from its neighbours' median is an outlier. [U]
OUTLIER_MM: float = 3.0

#: Neighbouring rays for the outlier test and smoothing. [U]
N_NEIGHBOURS: int = 12

#: Surface offset (mm) added to the fitted radius: half a sample step beyond the last
#: shell sample. [U]
SURFACE_OFFSET_MM: float = 0.5

#: Edges weaker than this drop (HU over +-1 mm of the smoothed CT) are not surface
#: candidates: smoothed noise (~10 HU) makes few such drops, the thin posterior wall
#: (smoothed peak 60-100 HU above a canal of 0-30 HU) some 40-90. Measured on
#: lumbar-ct-L2-L4: 30 finds a candidate within 1 mm of the true surface on 72-78 % of the
#: rays, 60 on 64-72 %. [U]
EDGE_MIN_DROP_HU: float = 30.0

#: Edge strength cap (HU): a cortex next to fat or lung must not outweigh every other
#: consideration; the image's face counts this strong. [U]
EDGE_MAX_DROP_HU: float = 150.0

#: Edge strength (HU) of the image's face: a body cut by the field of view ends there,
#: but a ray through the canal or a disc that leaves the image must still prefer a real
#: edge nearby. [U]
FACE_EDGE_HU: float = 100.0

#: Surface refinement: how far (mm) from the current surface an edge is looked for, what a
#: millimetre away from it costs (HU of edge strength) and how many rounds.  Measured on
#: lumbar-ct-L2-L4 (L3 and L4 fits, one centre): body Dice 0.843/0.802 with the first
#: crossing alone; costs 20-40 with searches of 10-12 mm and 6 rounds 0.906-0.914 /
#: 0.858-0.865; 6 mm searches 0.89/0.86, 5 HU/mm 0.85/0.79. [U]
EDGE_SEARCH_MM: float = 10.0
EDGE_DISTANCE_COST: float = 25.0
EDGE_ITERATIONS: int = 6

#: The labelled surface lies this far (mm) from the steepest descent: measured on
#: lumbar-ct-L2-L4, -0.5 gives L3/L4 Dice 0.899/0.860, 0 0.889/0.857, -1.0 0.872/0.854. [U]
EDGE_SURFACE_OFFSET_MM: float = -0.5

#: An edge within this distance (mm) of the fitted surface supports it (the re-centring
#: keeps the best-supported fit). [U]
SUPPORT_MM: float = 1.0

#: Re-centring iterations of the star fit; the best-supported fit is kept, and re-centring
#: stops when the centre leaves its seed grown by :data:`SEED_MARGIN_VOXELS` (a body cut
#: close to the image's face drifts into the disc below).  Measured on lumbar-ct-L2-L4:
#: L3 Dice 0.83, 0.86, 0.90, 0.91, 0.92 after 1-5 centres. [U]
N_RECENTRE: int = 5
SEED_MARGIN_VOXELS: int = 1

#: A fit sharing more than this fraction of its voxels with accepted fits is dropped. [U]
MAX_OVERLAP: float = 0.1

#: Voxels between two different fits on one cranio-caudal line no longer than this (mm)
#: are disc, not bone: the threshold and hole fills of the smoothed CT bridge a disc (a
#: lumbar disc is 8-12 mm high, the end plates' fits stop short of it). [U]
GAP_MM: float = 25.0

#: Voxels removed where two fits touch (each side), so that the coarse 2 mm grid of the
#: vertebra separation keeps them apart. [U]
SEPARATION_VOXELS: int = 2


def noise_sigma(hu: np.ndarray) -> float:
    """Robust noise SD (HU) of soft tissue: MAD of neighbour differences along axis 0 where
    both voxels lie in -100..150 HU, divided by sqrt(2).  Structure contributes little
    (soft-tissue edges are rare among these pairs); 0 for noise-free phantoms."""
    a = np.asarray(hu)
    sub = a[:, ::2, ::2] if a.size > 4_000_000 else a
    x0, x1 = sub[:-1], sub[1:]
    ok = (x0 > -100) & (x0 < 150) & (x1 > -100) & (x1 < 150)
    if ok.sum() < 1000:
        return 0.0
    d = (x1[ok] - x0[ok]).astype(np.float64)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def soft_tissue_mode(hu: np.ndarray) -> float | None:
    """Soft-tissue mode (HU): histogram peak between -100 and 150 HU (muscle, organs,
    discs) of every second voxel, or None when fewer than 1000 voxels lie there."""
    sub = hu[::2, ::2, ::2]
    v = sub[(sub > -100) & (sub < 150)]
    if v.size < 1000:
        return None
    hist, edges = np.histogram(v, bins=50, range=(-100, 150))
    hist = ndi.uniform_filter1d(hist.astype(float), 3)
    k = int(np.argmax(hist))
    return float(0.5 * (edges[k] + edges[k + 1]))


def shell_threshold(sm: np.ndarray) -> float:
    """Smoothed soft-tissue mode (:func:`soft_tissue_mode`, 50 HU when there is none) +
    :data:`SHELL_ABOVE_SOFT_HU`."""
    mode = soft_tissue_mode(sm)
    return (50.0 if mode is None else mode) + SHELL_ABOVE_SOFT_HU


def enclosure_count(hard: np.ndarray, spacing, reach_mm: float, cap_axis: int | None = 2) -> np.ndarray:
    """Number of the six axis directions (0-6) in which a ``hard`` voxel lies within
    ``reach_mm`` of each voxel; along ``cap_axis`` the image's faces count as hard.

    Six cumulative scans (next/previous hard index along each axis), no per-voxel loop.
    """
    sp = np.asarray(spacing, float)
    cnt = np.zeros(hard.shape, np.uint8)
    big = np.iinfo(np.int32).max // 2
    for a in range(3):
        n = hard.shape[a]
        shp = [1, 1, 1]
        shp[a] = n
        ar = np.arange(n, dtype=np.int32).reshape(shp)
        nxt = np.flip(np.minimum.accumulate(np.flip(np.where(hard, ar, big), a), axis=a), a)
        prv = np.maximum.accumulate(np.where(hard, ar, -big), axis=a)
        if a == cap_axis:
            nxt = np.minimum(nxt, n)
            prv = np.maximum(prv, -1)
        cnt += ((nxt - ar) * sp[a] <= reach_mm).astype(np.uint8)
        cnt += ((ar - prv) * sp[a] <= reach_mm).astype(np.uint8)
    return cnt


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1.0 - 2.0 * i / n)
    th = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], 1)


class _Rays:
    """Ray directions, their neighbour lists and a KD-tree (built once per call)."""

    def __init__(self) -> None:
        from scipy.spatial import cKDTree

        self.dirs = _fibonacci_sphere(N_DIRECTIONS)
        self.tree = cKDTree(self.dirs)
        self.nn = self.tree.query(self.dirs, k=N_NEIGHBOURS)[1]
        self.r = np.arange(0.0, RAY_MAX_MM, RAY_STEP_MM)


def _profiles(sm: np.ndarray, centre: np.ndarray, sp: np.ndarray, rays: _Rays) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed-CT profiles (n_rays, n_samples) along the rays from ``centre`` (voxel
    coordinates) and where the samples fall outside the image."""
    rs = rays.r
    pts = centre[None, None, :] + rays.dirs[:, None, :] * rs[None, :, None] / sp
    prof = ndi.map_coordinates(sm, pts.reshape(-1, 3).T, order=1, mode="nearest").reshape(len(rays.dirs), len(rs))
    out_img = ~np.all((pts >= 0) & (pts <= np.array(sm.shape) - 1), axis=2)
    return prof, out_img


def _first_crossing_radii(prof: np.ndarray, out_img: np.ndarray, threshold: float, rays: _Rays) -> np.ndarray:
    """Initial radii: the outer edge of the first shell crossing beyond
    :data:`INNER_SKIP_MM` (capped at :data:`SHELL_MAX_THICKNESS_MM`), outliers replaced by
    their neighbours' median, median-smoothed."""
    rs = rays.r
    above = ((prof >= threshold) & (rs[None, :] >= INNER_SKIP_MM)) | out_img
    first = np.where(above.any(1), np.argmax(above, 1), len(rs) - 1)
    k = np.arange(len(rs))[None, :]
    after = ((prof < threshold) | out_img) & (k > first[:, None])
    stop = np.where(after.any(1), np.argmax(after, 1), len(rs))
    end = np.minimum(stop - 1, first + int(round(SHELL_MAX_THICKNESS_MM / RAY_STEP_MM)))
    r = rs[np.clip(end, 0, len(rs) - 1)]
    med = np.median(r[rays.nn], axis=1)
    r = np.where(np.abs(r - med) > OUTLIER_MM, med, r)
    return np.median(r[rays.nn], axis=1) + SURFACE_OFFSET_MM


def _edge_candidates(prof: np.ndarray, out_img: np.ndarray, rays: _Rays) -> np.ndarray:
    """Edge strength (HU, 0 where no edge) per ray and sample: steepest descents (local
    minima of the central-difference gradient) whose drop over +-1 mm is at least
    :data:`EDGE_MIN_DROP_HU`, beyond :data:`INNER_SKIP_MM`, capped at
    :data:`EDGE_MAX_DROP_HU`; the image's face is an edge of strength :data:`FACE_EDGE_HU`
    and nothing beyond it is."""
    n, m = prof.shape
    grad = np.zeros_like(prof)
    grad[:, 1:-1] = prof[:, 2:] - prof[:, :-2]
    lo = np.concatenate([np.full((n, 1), np.inf, prof.dtype), grad[:, :-1]], 1)
    hi = np.concatenate([grad[:, 1:], np.full((n, 1), np.inf, prof.dtype)], 1)
    h = int(round(1.0 / RAY_STEP_MM))
    drop = np.zeros_like(prof)
    drop[:, h:-h] = prof[:, :-2 * h] - prof[:, 2 * h:]
    edge = (grad <= lo) & (grad < hi) & (drop >= EDGE_MIN_DROP_HU) & (rays.r[None, :] >= INNER_SKIP_MM) & ~out_img
    strength = np.where(edge, np.minimum(drop, EDGE_MAX_DROP_HU), 0.0)
    face = out_img.any(1)
    fk = np.argmax(out_img, 1)
    strength[face, fk[face]] = FACE_EDGE_HU
    strength[np.arange(m)[None, :] > np.where(face, fk, m)[:, None]] = 0.0
    return strength


def star_radii(
    sm: np.ndarray, centre: np.ndarray, spacing, threshold: float, rays: _Rays | None = None
) -> tuple[np.ndarray, float]:
    """Fitted surface radius (mm) per ray direction about ``centre`` (voxel coordinates)
    and the fit's support: the mean strength (0-1, of :data:`EDGE_MAX_DROP_HU`) of the
    strongest edge within :data:`SUPPORT_MM` of the surface on each ray.

    Starts from :func:`_first_crossing_radii` and then, :data:`EDGE_ITERATIONS` times,
    takes on every ray the edge (:func:`_edge_candidates`) within :data:`EDGE_SEARCH_MM` of
    the current surface that maximises its strength minus :data:`EDGE_DISTANCE_COST`
    times its distance from the surface, and makes the median of each ray's neighbours'
    choices the new surface, :data:`EDGE_SURFACE_OFFSET_MM` from the edges.  The first
    shell crossing alone stops early wherever the cancellous bone is bright (12-15 % of the rays more than 3 mm inside on
    ``lumbar-ct-L2-L4``) and runs through the thin posterior wall (below the threshold
    after smoothing) into the arch; the strongest nearby edge does neither.  Outside the
    image counts as an edge (a body cut by the field of view ends at the image's face).
    """
    rays = rays or _Rays()
    sp = np.asarray(spacing, float)
    prof, out_img = _profiles(sm, centre, sp, rays)
    r = _first_crossing_radii(prof, out_img, threshold, rays)
    strength = _edge_candidates(prof, out_img, rays)
    pos = rays.r[None, :] + 0.5 * RAY_STEP_MM  # an edge lies between samples k and k+1
    has = strength > 0
    for _ in range(EDGE_ITERATIONS):
        dist = np.abs(pos - r[:, None])
        score = np.where(has & (dist <= EDGE_SEARCH_MM), strength - EDGE_DISTANCE_COST * dist, -np.inf)
        k = np.argmax(score, 1)
        best = score[np.arange(len(k)), k]
        chosen = np.where(np.isfinite(best), pos[0, k], r)
        r = np.median(chosen[rays.nn], axis=1)
    near = has & (np.abs(pos - r[:, None]) <= SUPPORT_MM)
    return r + EDGE_SURFACE_OFFSET_MM, float(np.mean(np.max(np.where(near, strength, 0.0), 1)) / EDGE_MAX_DROP_HU)


def star_voxels(shape, centre: np.ndarray, spacing, radii: np.ndarray, rays: _Rays) -> np.ndarray:
    """(m, 3) int voxel indices inside the star-shaped surface ``radii`` about ``centre``."""
    sp = np.asarray(spacing, float)
    reach = (float(radii.max()) + 1.0) / sp
    lo = np.maximum(0, np.floor(centre - reach).astype(int))
    hi = np.minimum(np.array(shape), np.ceil(centre + reach).astype(int) + 1)
    ii = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    v = (ii - centre) * sp
    dist = np.linalg.norm(v, axis=1)
    j = rays.tree.query(v / np.maximum(dist, 1e-6)[:, None])[1]
    return ii[dist <= radii[j]]


def fit_bodies(sm: np.ndarray, spacing, threshold: float) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """Star-shaped body fits on a smoothed CT (canonical axes, axis 2 cranio-caudal).

    Parameters
    ----------
    sm : (ni, nj, nk) float ndarray
        Smoothed CT (HU).
    spacing : (3,) float
        Voxel size (mm).
    threshold : float
        Shell threshold (:func:`shell_threshold`).

    Returns
    -------
    labels : (ni, nj, nk) int32 ndarray
        Fit ids 1..n (0 elsewhere), largest seed first, touching fits separated.
    fits : list of dict
        ``{"centre_vox", "volume_mm3", "median_radius_mm", "support", "seed_mm3"}`` per
        accepted fit
        (rounded to 0.1, JSON-ready).
    gap : (ni, nj, nk) bool ndarray
        Voxels outside the fits between two different fits on a cranio-caudal line of at
        most :data:`GAP_MM` (a disc between two bodies): not bone, whatever a threshold
        says.
    """
    sp = np.asarray(spacing, float)
    hard = sm >= threshold
    seed = (enclosure_count(hard, sp, ENCLOSURE_MM) >= ENCLOSED_DIRECTIONS) & ~hard
    seed = ndi.binary_opening(seed)
    lab, _ = ndi.label(seed)
    vol = np.bincount(lab.ravel()) * float(np.prod(sp))
    vol[0] = 0.0
    order = [int(i) for i in np.argsort(-vol, kind="stable") if vol[i] >= SEED_MIN_MM3]
    out = np.zeros(sm.shape, np.int32)
    fits: list[dict] = []
    if not order:
        return out, fits, np.zeros(sm.shape, bool)
    rays = _Rays()
    centres = ndi.center_of_mass(seed, lab, order)
    boxes = ndi.find_objects(lab)
    for i, c0 in zip(order, centres):
        # the seed grown by SEED_MARGIN_VOXELS, on its own box (a centre outside the box is
        # outside the seed)
        box = tuple(slice(max(0, b.start - SEED_MARGIN_VOXELS), b.stop + SEED_MARGIN_VOXELS) for b in boxes[i - 1])
        lo = np.array([b.start for b in box])
        in_seed = ndi.binary_dilation(lab[box] == i, iterations=SEED_MARGIN_VOXELS)
        cen = np.asarray(c0, float)
        best: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None
        for _ in range(N_RECENTRE):
            radii, support = star_radii(sm, cen, sp, threshold, rays)
            vox = star_voxels(sm.shape, cen, sp, radii, rays)
            if len(vox) == 0:
                break
            if best is None or support > best[0]:
                best = (support, cen, radii, vox)
            cen = vox.mean(0)
            q = np.round(cen).astype(int) - lo
            if np.any(q < 0) or np.any(q >= in_seed.shape) or not in_seed[tuple(q)]:
                break  # drifted out of its seed: into a disc or the next body
        if best is None:
            continue
        support, cen, radii, vox = best
        sel = tuple(vox.T)
        if (out[sel] > 0).mean() > MAX_OVERLAP:
            continue
        n = len(fits) + 1
        out[sel] = np.where(out[sel] == 0, n, out[sel])
        fits.append({"centre_vox": np.round(cen, 1).tolist(), "volume_mm3": round(float(len(vox) * np.prod(sp)), 1),
                     "median_radius_mm": round(float(np.median(radii)), 1),
                     "support": round(support, 3), "seed_mm3": round(float(vol[i]), 1)})
    # between two fits along the cranio-caudal axis (a disc, however thin): not bone
    nk = out.shape[2]
    k = np.arange(nk, dtype=np.int32)[None, None, :]
    inside = out > 0
    prv = np.maximum.accumulate(np.where(inside, k, -1), axis=2)
    nxt = np.flip(np.minimum.accumulate(np.flip(np.where(inside, k, nk), 2), axis=2), 2)
    lab_prv = np.take_along_axis(out, np.maximum(prv, 0), 2)
    lab_nxt = np.take_along_axis(out, np.minimum(nxt, nk - 1), 2)
    gap = (~inside & (prv >= 0) & (nxt < nk) & (lab_prv != lab_nxt) & ((nxt - prv) * sp[2] <= GAP_MM))
    # touching fits lose SEPARATION_VOXELS voxels each where they meet
    big = np.iinfo(np.int32).max
    size = 2 * SEPARATION_VOXELS + 1
    hi = ndi.maximum_filter(out, size)
    lo = ndi.minimum_filter(np.where(out > 0, out, big), size)
    out[(lo < big) & (hi != lo)] = 0
    gap &= out == 0
    return out, fits, gap
