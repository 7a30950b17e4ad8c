"""Resample a volume (typically a label map) onto another volume's grid in physical space.

A label map made by another tool is often stored on another grid or in another orientation
than the image (e.g. TotalSegmentator writes LAS while the DICOM image is LPS).  Matching the
two by array index silently puts labels on the wrong anatomy; here every image voxel centre
is mapped to LPS and back into the label grid (``ijk_labels_from_ijk_image``) and sampled
there (nearest neighbour for labels).
"""

from __future__ import annotations

import copy
import logging

import numpy as np

from planner.errors import GeometryError
from planner.volume import Volume

log = logging.getLogger(__name__)

#: Voxels processed per chunk (bounds the (n, 3) float64 coordinate array to ~100 MB).
CHUNK_VOXELS = 4_000_000


def resample_to(image: Volume, labels: Volume, *, order: int = 0, cval: float = 0.0) -> Volume:
    """Resample ``labels`` onto the grid of ``image`` in physical (LPS) space.

    Parameters
    ----------
    image : Volume
        Target grid, array shape ``(ni, nj, nk)``.
    labels : Volume
        Source volume on any grid / orientation, array shape ``(mi, mj, mk)``.
    order : int
        0 = nearest neighbour (labels; dtype kept), 1 = linear (images; float32 output).
    cval : float
        Value outside the source grid.

    Returns
    -------
    Volume
        Array ``(ni, nj, nk)`` on ``image.lps_from_ijk`` with ``labels``' modality and a copy of
        its provenance plus a ``resample`` correction and ``PLN-W-LBL-001``.  When the grids
        already match the source is returned unchanged (copied), without a warning.

    Raises
    ------
    GeometryError
        ``PLN-GEO-004`` when the two volumes do not overlap.
    """
    from scipy.ndimage import map_coordinates

    if labels.same_grid(image, atol=1e-6):
        return Volume(labels.array.copy(), image.lps_from_ijk.copy(), labels.modality,
                      copy.deepcopy(labels.provenance))
    M = labels.ijk_from_lps @ image.lps_from_ijk  # ijk_labels_from_ijk_image
    src_shape = np.array(labels.shape, float)
    _check_overlap(image, labels, M)

    src = labels.array
    if order == 0:
        out_dtype = src.dtype
    else:
        out_dtype = np.float32
        if src.dtype != np.float32:
            src = src.astype(np.float32)
    ni, nj, nk = image.shape
    out = np.empty((ni, nj, nk), dtype=out_dtype)
    ii, jj = np.meshgrid(np.arange(ni, dtype=float), np.arange(nj, dtype=float), indexing="ij")
    plane = ii[..., None] * M[:3, 0] + jj[..., None] * M[:3, 1] + M[:3, 3]  # (ni, nj, 3)
    per_chunk = max(1, CHUNK_VOXELS // max(1, ni * nj))
    inside = 0
    for k0 in range(0, nk, per_chunk):
        ks = np.arange(k0, min(nk, k0 + per_chunk), dtype=float)
        c = plane[:, :, None, :] + ks[None, None, :, None] * M[:3, 2]  # (ni, nj, nc, 3)
        inb = np.all((c > -0.5) & (c < src_shape - 0.5), axis=-1)
        inside += int(np.count_nonzero(inb))
        coords = np.moveaxis(c, -1, 0)
        out[:, :, k0:k0 + len(ks)] = map_coordinates(
            src, coords, order=order, mode="constant", cval=cval, output=out_dtype,
            prefilter=False,
        )
    if inside == 0:
        raise _no_overlap(image, labels)
    prov = copy.deepcopy(labels.provenance)
    frac = inside / float(ni * nj * nk)
    prov.corrections.append({
        "type": "resample",
        "interpolation": "nearest" if order == 0 else f"spline order {order}",
        "from_shape": list(labels.shape),
        "to_shape": list(image.shape),
        "from_lps_from_ijk": labels.lps_from_ijk.tolist(),
        "to_lps_from_ijk": image.lps_from_ijk.tolist(),
        "fraction_of_target_inside_source": frac,
    })
    details = {"from_shape": list(labels.shape), "to_shape": list(image.shape),
               "fraction_inside": frac}
    fr_a, fr_b = image.provenance.frame_of_reference_uid, labels.provenance.frame_of_reference_uid
    if fr_a and fr_b and fr_a != fr_b:
        details["frame_of_reference_mismatch"] = [fr_a, fr_b]
    prov.warn(
        "PLN-W-LBL-001",
        f"{labels.modality.lower()} volume resampled onto the image grid in physical space "
        f"({'nearest neighbour' if order == 0 else 'linear'}); {100 * frac:.1f} % of the "
        "image grid lies inside it",
        **details,
    )
    return Volume(out, image.lps_from_ijk.copy(), labels.modality, prov)


def _no_overlap(image: Volume, labels: Volume) -> GeometryError:
    return GeometryError(
        "the label map does not overlap the image in patient space (LPS bounds "
        f"{labels.bounds_lps().round(1).tolist()} vs {image.bounds_lps().round(1).tolist()} mm); "
        "check that both come from the same scan and frame of reference",
        code="PLN-GEO-004",
        details={"image_bounds_lps": image.bounds_lps().tolist(),
                 "labels_bounds_lps": labels.bounds_lps().tolist()},
    )


def _check_overlap(image: Volume, labels: Volume, M: np.ndarray) -> None:
    """Fast rejection: the image box, mapped into label index space, misses the label box."""
    n = np.array(image.shape) - 1
    corners = np.array([[a, b, c, 1.0] for a in (-0.5, n[0] + 0.5) for b in (-0.5, n[1] + 0.5)
                        for c in (-0.5, n[2] + 0.5)])
    c = corners @ M.T
    lo, hi = c[:, :3].min(0), c[:, :3].max(0)
    if np.any(hi < -0.5) or np.any(lo > np.array(labels.shape) - 0.5):
        raise _no_overlap(image, labels)
