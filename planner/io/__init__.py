"""Image input/output: DICOM series, NIfTI, NRRD and MetaImage to and from :class:`Volume`.

Everything returned is a :class:`planner.volume.Volume` in patient LPS millimetres with
array axis order ``(i, j, k)``.  Bad inputs are refused with coded errors or loaded with
coded warnings recorded in ``volume.provenance`` (see ``bad-inputs.md``).

Public API
----------
read_volume(path, ...)            dispatch on a folder / DICOM file / .nii(.gz) / .nrrd / .nhdr / .mha / .mhd
read_dicom_series(path, ...)      the DICOM reader itself
list_series(folder)               series found in a folder (uid, description, slice count)
write_volume(volume, path)        NIfTI / NRRD / MetaImage by extension (atomic)
write_dicom_series(volume, folder, ...)  CT Image Storage series (atomic per file, deterministic)
resample_to(image, labels, order=0)      label map onto the image grid in physical space
"""

from __future__ import annotations

from pathlib import Path

from planner.errors import InputError
from planner.io.dicom_read import list_series, read_dicom_series
from planner.io.dicom_write import write_dicom_series
from planner.io.formats import format_of, read_volume_file, write_volume
from planner.io.resample import resample_to
from planner.volume import Volume

__all__ = [
    "read_volume",
    "read_dicom_series",
    "list_series",
    "write_volume",
    "write_dicom_series",
    "resample_to",
    "read_volume_file",
    "format_of",
]


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    return path.suffix.lower() in (".dcm", ".dicom", ".ima") or path.name.upper() == "DICOMDIR"


def read_volume(
    path: str | Path,
    *,
    series_uid: str | None = None,
    correct_tilt: bool = False,
    resample_spacing: bool | float = False,
    max_bytes: int = 8 * 2**30,
    modality: str | None = None,
) -> Volume:
    """Read an image from a DICOM folder/file, NIfTI, NRRD or MetaImage file.

    Parameters
    ----------
    path : str or Path
        A folder or DICOM file (read as a DICOM series), or a ``.nii``, ``.nii.gz``,
        ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd`` file.
    series_uid : str, optional
        DICOM only: the series to read when the folder holds several.
    correct_tilt : bool
        DICOM only: resample a gantry-tilted stack instead of raising ``PLN-DCM-003``.
    resample_spacing : bool or float
        DICOM only: resample uneven slice spacing (to the median step, or this step in mm)
        instead of raising ``PLN-DCM-004``.
    max_bytes : int
        Refuse (``PLN-IN-004``) volumes larger than this, checked from headers.
    modality : {"CT", "MR", "LABEL", "OTHER"}, optional
        Override the modality read from the header or guessed from the values.

    Returns
    -------
    Volume
        Array ``(ni, nj, nk)`` and ``lps_from_ijk``.

    Raises
    ------
    InputError
        ``PLN-IN-001`` missing path, ``PLN-IN-002`` unknown format, and the DICOM / geometry
        errors of the format readers.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input path {str(p)!r} does not exist; check the path",
                         code="PLN-IN-001")
    if p.is_dir():
        return read_dicom_series(p, series_uid=series_uid, correct_tilt=correct_tilt,
                                 resample_spacing=resample_spacing, max_bytes=max_bytes,
                                 modality=modality)
    try:
        format_of(p)
    except InputError:
        if _looks_like_dicom(p):
            return read_dicom_series(p, series_uid=series_uid, correct_tilt=correct_tilt,
                                     resample_spacing=resample_spacing, max_bytes=max_bytes,
                                     modality=modality)
        raise
    return read_volume_file(p, modality=modality, max_bytes=max_bytes)
