"""Score a segmentation against ground truth (phantom cases or reference label maps).

Pure functions over arrays and implant objects, used by the tests and by
``benchmarks/bench_segment.py``.  Distances are in mm in LPS; surface distances use the
grid's spacing (``scipy.ndimage.distance_transform_edt(sampling=spacing)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from planner.implants import Rod, Screw, point_segment_distance


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


#: VerSe subregion ids of the vertebral body: 49 corpus border (cortex), 50 corpus.
VERSE_BODY_SUBREGIONS: tuple[int, int] = (49, 50)


def verse_body_dice(labels: np.ndarray, vert: np.ndarray, subreg: np.ndarray, levels: dict[str, int]) -> dict[str, float]:
    """Body Dice per level against VerSe masks: ``vert == id`` and the corpus subregions.

    Parameters
    ----------
    labels : ndarray
        Registry label map on the same grid (``<L>_body``).
    vert, subreg : ndarray
        VerSe vertebra and subregion masks.
    levels : dict
        Level name -> VerSe vertebra id (``{"L2": 21, ...}``).
    """
    from planner.labels.registry import label_id

    body = np.isin(subreg, VERSE_BODY_SUBREGIONS)
    return {lv: dice((vert == vid) & body, labels == label_id(f"{lv}_body")) for lv, vid in levels.items()}


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[float, float, float]:
    """Mean symmetric surface distance, 95th percentile and maximum (mm) between masks.

    Works on the masks' common bounding box (plus a margin) to stay fast.
    """
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    if not a.any() or not b.any():
        return float("inf"), float("inf"), float("inf")
    idx = np.argwhere(a | b)
    lo = np.maximum(idx.min(0) - 3, 0)
    hi = np.minimum(idx.max(0) + 4, a.shape)
    sl = tuple(slice(int(x), int(y)) for x, y in zip(lo, hi))
    a, b = a[sl], b[sl]
    sa, sb = _surface(a), _surface(b)
    da = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    db = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    d = np.concatenate([da, db])
    return float(d.mean()), float(np.percentile(d, 95)), float(d.max())


def match_screws(pred: Sequence[Screw], truth: Sequence[Screw], max_mm: float = 10.0) -> list[tuple[Screw, Screw]]:
    """Greedy one-to-one matching by tip distance (then head), nearest pairs first."""
    if not pred or not truth:
        return []
    P = np.array([s.tip_lps for s in pred])
    T = np.array([s.tip_lps for s in truth])
    D = np.linalg.norm(P[:, None] - T[None], axis=2)
    pairs = []
    used_p: set[int] = set()
    used_t: set[int] = set()
    for flat in np.argsort(D, axis=None):
        i, j = np.unravel_index(flat, D.shape)
        if D[i, j] > max_mm:
            break
        if i in used_p or j in used_t:
            continue
        used_p.add(int(i))
        used_t.add(int(j))
        pairs.append((pred[int(i)], truth[int(j)]))
    return pairs


def screw_errors(pred: Screw, truth: Screw) -> dict[str, float]:
    """Axis angle (deg), head and tip position errors (mm), diameter and length errors."""
    c = float(np.clip(abs(pred.axis @ truth.axis), -1.0, 1.0))
    return {
        "axis_deg": float(np.degrees(np.arccos(c))),
        "head_mm": float(np.linalg.norm(pred.head_lps - truth.head_lps)),
        "tip_mm": float(np.linalg.norm(pred.tip_lps - truth.tip_lps)),
        "diameter_mm": float(pred.diameter_mm - truth.diameter_mm),
        "length_mm": float(pred.length_mm - truth.length_mm),
    }


def polyline_distance(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance (n,) from points (n, 3) to a polyline (m, 3)."""
    d = np.full(len(points), np.inf)
    for a, b in zip(line[:-1], line[1:]):
        d = np.minimum(d, point_segment_distance(points, a, b))
    return d


def rod_errors(pred: Rod, truth: Rod, step_mm: float = 1.0) -> dict[str, float]:
    """Distance from the fitted rod's centre line to the true one (mean, p95, max, mm),
    sampled every ``step_mm`` along the fitted rod, and coverage (fraction of the true
    rod's length within 2 mm of the fitted one)."""
    pts = _resample(pred.centreline_lps, step_mm)
    d = polyline_distance(pts, truth.centreline_lps)
    tpts = _resample(truth.centreline_lps, step_mm)
    back = polyline_distance(tpts, pred.centreline_lps)
    return {
        "mean_mm": float(d.mean()),
        "p95_mm": float(np.percentile(d, 95)),
        "max_mm": float(d.max()),
        "coverage": float((back <= 2.0).mean()),
    }


def _resample(line: np.ndarray, step: float) -> np.ndarray:
    seg = np.linalg.norm(np.diff(line, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.arange(0.0, s[-1] + 1e-9, step)
    return np.stack([np.interp(t, s, line[:, k]) for k in range(3)], 1)


def match_rods(pred: Sequence[Rod], truth: Sequence[Rod]) -> list[tuple[Rod, Rod]]:
    """Match rods by mean centre-line distance (one-to-one)."""
    pairs = []
    used: set[int] = set()
    for t in truth:
        best, bi = np.inf, -1
        for i, p in enumerate(pred):
            if i in used:
                continue
            m = float(polyline_distance(_resample(p.centreline_lps, 2.0), t.centreline_lps).mean())
            if m < best:
                best, bi = m, i
        if bi >= 0 and best < 10.0:
            used.add(bi)
            pairs.append((pred[bi], t))
    return pairs
