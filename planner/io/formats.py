"""NIfTI, NRRD and MetaImage (MHA/MHD) reading and writing, converted to LPS at the boundary.

* NIfTI (``.nii``, ``.nii.gz``) through nibabel.  NIfTI stores ``ras_from_ijk``; here
  ``lps_from_ijk = LPS_FROM_RAS @ ras_from_ijk``.  When both qform and sform are valid and
  differ, the sform is used (as ITK, 3D Slicer and FSL do) and ``PLN-W-NII-001`` records it;
  neither valid -> ``PLN-NII-001``.  ``scl_slope`` / ``scl_inter`` are applied.
* NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) through SimpleITK, which
  works in LPS.  ``sitk.GetArrayFromImage`` is ``(k, j, i)`` and is transposed here.

Array axis order everywhere is ``(i, j, k)`` (the file's fastest axis first).

Writes are atomic: the data go to a temporary name beside the target and are renamed into
place (``os.replace``), header last for two-file formats, so a killed process never leaves a
file that looks complete.

Provenance sidecar
------------------
:func:`write_volume` also writes ``<file>.provenance.json`` (the volume's modality and
:meth:`Provenance.to_dict`) unless ``provenance=False``.  :func:`read_volume_file` reads it
back when present, so modality, UIDs, corrections and warnings survive a round trip; without
it the modality is guessed from the values (integer with few distinct values -> ``LABEL``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from planner.errors import GeometryError, InputError
from planner.volume import LPS_FROM_RAS, RAS_FROM_LPS, Provenance, Volume, decompose_affine, make_affine

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
META_SUFFIXES = (".mha", ".mhd")
SIDECAR_SUFFIX = ".provenance.json"
#: Largest number of distinct values an integer image may have to be guessed as a label map.
LABEL_MAX_DISTINCT = 512
#: qform and sform are "the same" when their matrices agree to this (mm).
QFORM_SFORM_TOL = 1e-3


def format_of(path: str | Path) -> str:
    """``"nifti"``, ``"nrrd"`` or ``"meta"`` from a file name, else ``PLN-IN-002``."""
    name = Path(path).name.lower()
    for fmt, sufs in (("nifti", NIFTI_SUFFIXES), ("nrrd", NRRD_SUFFIXES), ("meta", META_SUFFIXES)):
        if any(name.endswith(s) for s in sufs):
            return fmt
    raise InputError(
        f"file format of {Path(path).name!r} not recognised; use .nii, .nii.gz, .nrrd, .nhdr, "
        ".mha, .mhd or a DICOM folder",
        code="PLN-IN-002",
    )


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def read_volume_file(path: str | Path, *, modality: str | None = None,
                     max_bytes: int = 8 * 2**30) -> Volume:
    """Read a NIfTI, NRRD or MetaImage file into a :class:`Volume`.

    Parameters
    ----------
    path : str or Path
        ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd``.
    modality : {"CT", "MR", "LABEL", "OTHER"}, optional
        Override; otherwise taken from the provenance sidecar or guessed from the values.
    max_bytes : int
        Refuse (``PLN-IN-004``) when the array would exceed this; checked from the header.

    Returns
    -------
    Volume
        ``array`` of shape ``(ni, nj, nk)``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input path {str(path)!r} does not exist; check the path",
                         code="PLN-IN-001")
    fmt = format_of(path)
    prov = Provenance()
    if fmt == "nifti":
        array, A = _read_nifti(path, prov, max_bytes)
    else:
        array, A = _read_sitk(path, max_bytes)
    side = _sidecar(path)
    stored_modality = None
    if side.exists():
        try:
            d = json.loads(side.read_text())
            prov = _merge(Provenance.from_dict(d.get("provenance", {})), prov)
            stored_modality = d.get("modality")
        except (ValueError, TypeError) as exc:
            log.warning("ignoring unreadable provenance sidecar %s: %s", side.name, exc)
    prov.source_files.append(path.name)
    prov.extra.setdefault("format", fmt)
    mod = modality or stored_modality or guess_modality(array)
    if mod == "LABEL":
        array = _as_label_dtype(array)
    return Volume(array, A, mod, prov)


def _merge(old: Provenance, new: Provenance) -> Provenance:
    old.warnings.extend(new.warnings)
    old.corrections.extend(new.corrections)
    if old.source_files:  # the file read now is the source; earlier ones are kept in extra
        old.extra["derived_from_files"] = list(old.source_files)
    old.source_files = []
    return old


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _check_size(shape: tuple[int, ...], itemsize: int, max_bytes: int) -> None:
    est = int(np.prod(shape)) * int(itemsize)
    if est > max_bytes:
        raise InputError(
            f"the volume {shape} needs about {est / 2**20:.0f} MiB, more than the limit of "
            f"{max_bytes / 2**20:.0f} MiB; crop it or raise max_bytes",
            code="PLN-IN-004",
            details={"estimated_bytes": est, "max_bytes": int(max_bytes)},
        )


def _squeeze3(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise GeometryError(
            f"{name} holds a {array.ndim}-D image of shape {array.shape}; a 3-D volume is "
            "needed (extract one time point / channel first)",
            code="PLN-GEO-003",
        )
    return array


def _read_nifti(path: Path, prov: Provenance, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise InputError(f"cannot read NIfTI file {path.name!r}: {exc}", code="PLN-IN-003") from exc
    hdr = img.header
    _check_size(img.shape, np.dtype(hdr.get_data_dtype()).itemsize, max_bytes)
    sform, scode = img.get_sform(coded=True)
    qform, qcode = img.get_qform(coded=True)
    s_ok = sform is not None and int(scode) > 0 and _valid_affine(sform)
    q_ok = qform is not None and int(qcode) > 0 and _valid_affine(qform)
    if s_ok:
        ras = sform
        if q_ok and not np.allclose(qform, sform, atol=QFORM_SFORM_TOL):
            prov.warn(
                "PLN-W-NII-001",
                f"NIfTI qform and sform of {path.name!r} differ; using the sform "
                "(as ITK, 3D Slicer and FSL do)",
                used="sform", qform=np.asarray(qform).tolist(), sform=np.asarray(sform).tolist(),
            )
        prov.extra["nifti_form"] = "sform"
    elif q_ok:
        ras = qform
        prov.extra["nifti_form"] = "qform"
    else:
        raise GeometryError(
            f"NIfTI file {path.name!r} has neither a valid qform nor a valid sform "
            f"(qform_code={int(qcode)}, sform_code={int(scode)}), so its position in the "
            "patient is unknown; fix the header (e.g. with the tool that wrote it)",
            code="PLN-NII-001",
        )
    raw = np.asanyarray(img.dataobj.get_unscaled()) if hasattr(img.dataobj, "get_unscaled") \
        else np.asanyarray(img.dataobj)
    slope = getattr(img.dataobj, "slope", 1.0)
    inter = getattr(img.dataobj, "inter", 0.0)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    array = _apply_scaling(np.asarray(raw), slope, inter)
    if slope != 1.0 or inter != 0.0:
        prov.extra["nifti_scaling"] = {"scl_slope": slope, "scl_inter": inter}
    array = _squeeze3(array, path.name)
    return np.ascontiguousarray(array), LPS_FROM_RAS @ np.asarray(ras, float)


def _valid_affine(A: np.ndarray) -> bool:
    A = np.asarray(A, float)
    return bool(np.all(np.isfinite(A)) and abs(np.linalg.det(A[:3, :3])) > 1e-12)


def _apply_scaling(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    if slope == 1.0 and inter == 0.0:
        return raw
    if np.issubdtype(raw.dtype, np.integer) and slope == round(slope) and inter == round(inter):
        out = raw.astype(np.int64) * int(slope) + int(inter)
        for dt in (np.int16, np.int32):
            info = np.iinfo(dt)
            if out.size == 0 or (out.min() >= info.min and out.max() <= info.max):
                return out.astype(dt)
        return out
    return (raw.astype(np.float64) * slope + inter).astype(np.float32)


def _read_sitk(path: Path, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        size = reader.GetSize()
        sizes = {sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2,
                 sitk.sitkUInt32: 4, sitk.sitkInt32: 4, sitk.sitkFloat32: 4}
        _check_size(tuple(size), sizes.get(reader.GetPixelID(), 8), max_bytes)
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read {path.name!r}: {str(exc).strip().splitlines()[-1]}",
                         code="PLN-IN-003") from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise GeometryError(f"{path.name!r} has {img.GetNumberOfComponentsPerPixel()} components "
                            "per voxel; a scalar volume is needed", code="PLN-GEO-003")
    dim = img.GetDimension()
    arr = sitk.GetArrayFromImage(img)  # (k, j, i)
    arr = np.ascontiguousarray(arr.transpose(tuple(range(dim - 1, -1, -1))))
    spacing = np.ones(3)
    direction = np.eye(3)
    origin = np.zeros(3)
    spacing[:dim] = img.GetSpacing()[:3]
    direction[:dim, :dim] = np.array(img.GetDirection(), float).reshape(dim, dim)[:3, :3]
    origin[:dim] = img.GetOrigin()[:3]
    arr = _squeeze3(arr, path.name)
    return arr, make_affine(spacing, direction, origin)


def guess_modality(array: np.ndarray) -> str:
    """``"LABEL"`` for integer-valued images with few distinct non-negative values, ``"CT"``
    when values reach below -500 (HU air), else ``"OTHER"``."""
    a = np.asarray(array)
    if a.size == 0:
        return "OTHER"
    sample = a.reshape(-1)[:: max(1, a.size // 200_000)]
    is_int = np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_) or (
        np.issubdtype(a.dtype, np.floating) and np.all(sample == np.round(sample))
    )
    if is_int and sample.min() >= 0 and len(np.unique(sample)) <= LABEL_MAX_DISTINCT:
        if np.issubdtype(a.dtype, np.floating):
            if not np.all(a == np.round(a)):
                return "OTHER"
        if len(np.unique(a)) <= LABEL_MAX_DISTINCT:
            return "LABEL"
    if float(sample.min()) < -500:
        return "CT"
    return "OTHER"


def _as_label_dtype(array: np.ndarray) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype in (np.uint8, np.uint16, np.int16, np.int32, np.uint32):
        return a
    if a.size and (a.min() < 0 or a.max() > 65535 or not np.all(a == np.round(a))):
        return a
    return a.astype(np.uint16)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def write_volume(volume: Volume, path: str | Path, *, provenance: bool = True,
                 compress: bool = True) -> Path:
    """Write a volume as NIfTI, NRRD or MetaImage, chosen by the file extension.

    Parameters
    ----------
    volume : Volume
        Array ``(ni, nj, nk)`` and ``lps_from_ijk``; any orthonormal direction (oblique,
        left-handed) is stored as is.
    path : str or Path
        Target ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd``.
    provenance : bool
        Also write ``<file>.provenance.json``.
    compress : bool
        Lossless compression for NRRD / MetaImage data.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    fmt = format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(volume.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tmp-write-") as tmp:
        tmp_path = Path(tmp) / path.name
        if fmt == "nifti":
            _write_nifti(array, volume.lps_from_ijk, tmp_path)
        else:
            _write_sitk(array, volume.lps_from_ijk, tmp_path, compress)
        # move data files first, the named file (header) last
        for f in sorted(Path(tmp).iterdir(), key=lambda p: p.name == path.name):
            os.replace(f, path.parent / f.name)
    if provenance:
        side = _sidecar(path)
        tmp_side = side.with_name("." + side.name + ".tmp")
        tmp_side.write_text(json.dumps({"modality": volume.modality,
                                        "provenance": volume.provenance.to_dict()},
                                       indent=2, default=_json_default))
        os.replace(tmp_side, side)
    log.info("wrote %s (%s, shape %s)", path.name, fmt, array.shape)
    return path


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _write_nifti(array: np.ndarray, lps_from_ijk: np.ndarray, path: Path) -> None:
    import nibabel as nib

    ras = RAS_FROM_LPS @ np.asarray(lps_from_ijk, float)
    img = nib.Nifti1Image(array, ras)
    img.header.set_data_dtype(array.dtype)
    img.set_sform(ras, code=1)  # scanner anatomical
    img.set_qform(ras, code=1)
    img.header["xyzt_units"] = 2  # mm
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, str(path))


def _write_sitk(array: np.ndarray, lps_from_ijk: np.ndarray, path: Path, compress: bool) -> None:
    import SimpleITK as sitk

    spacing, R, origin = decompose_affine(lps_from_ijk)
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))  # (k, j, i)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(x) for x in R.reshape(-1)])  # row-major, columns = axes
    img.SetOrigin([float(x) for x in origin])
    try:
        sitk.WriteImage(img, str(path), useCompression=compress)
    except RuntimeError as exc:
        raise InputError(f"cannot write {path.name!r}: {str(exc).strip().splitlines()[-1]}",
                         code="PLN-IN-003") from exc

