"""Write a :class:`Volume` as a CT Image Storage DICOM series (explicit VR little endian).

* One file per ``k`` slice; pixel rows are ``j`` and columns ``i`` (the transpose of the
  ``(i, j)`` slice of ``Volume.array``).
* ImagePositionPatient / ImageOrientationPatient / PixelSpacing / SliceThickness /
  SpacingBetweenSlices follow ``lps_from_ijk``.  DICOM's slice normal is always
  ``row x column``, so a **left-handed** grid is written with its ``k`` axis reversed (data
  and geometry flipped together): reading the series back gives the same values at the same
  LPS positions on the equivalent right-handed grid.
* Stored values are int16 (or uint16 when the range needs it) with RescaleSlope/Intercept
  chosen so integer HU round-trip exactly (including the extended CT scale up to ~+30000
  HU); non-integer data get a slope spreading the range over 65535 steps.
* UIDs are derived from ``uid_seed`` and dates are fixed, so the same volume and seed give
  byte-identical files.  The patient is the synthetic ``PHANTOM^ANONYMOUS`` / ``PHANTOM``.
  Study and frame-of-reference UIDs already in the volume's provenance are kept.
* Each file is written under a temporary hidden name and renamed into place.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from planner.errors import InputError
from planner.volume import Volume, decompose_affine

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
FIXED_DATE = "20000101"
FIXED_TIME = "000000"
PATIENT_NAME = "PHANTOM^ANONYMOUS"
PATIENT_ID = "PHANTOM"


def _fmt_ds(x: float) -> str:
    """A DICOM decimal string (max 16 characters) as precise as fits."""
    for prec in range(16, 4, -1):
        s = f"{x:.{prec}g}"
        if len(s) <= 16:
            return s
    return f"{x:.6g}"


def _choose_storage(a: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored pixel array (same shape) and ``(slope, intercept)`` with
    ``value = stored * slope + intercept``."""
    if a.size == 0:
        return a.astype(np.int16), 1.0, 0.0
    lo, hi = float(a.min()), float(a.max())
    integer = np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_) or bool(
        np.all(a == np.round(a))
    )
    if integer:
        if lo >= -32768 and hi <= 32767:
            return a.astype(np.int16), 1.0, 0.0
        if hi - lo <= 65535:
            return (a.astype(np.int64) - int(lo)).astype(np.uint16), 1.0, float(int(lo))
    if not np.all(np.isfinite(a)):
        raise InputError("volume holds NaN or infinite values; DICOM cannot store them",
                         code="PLN-IN-002")
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    slope = float(_fmt_ds(slope))
    stored = np.clip(np.round((a.astype(np.float64) - lo) / slope), 0, 65535).astype(np.uint16)
    return stored, slope, lo


def write_dicom_series(
    volume: Volume,
    folder: str | Path,
    *,
    series_description: str = "planner export",
    uid_seed: str | None = None,
    series_number: int = 1001,
) -> list[Path]:
    """Write ``volume`` as a CT Image Storage series, one file per slice.

    Parameters
    ----------
    volume : Volume
        Array ``(ni, nj, nk)`` in HU (or label ids) and ``lps_from_ijk``; oblique,
        anisotropic and left-handed grids are supported.
    folder : str or Path
        Output folder (created).  Files are named ``CT_0001.dcm`` ... in slice order.
    series_description : str
        SeriesDescription (0008,103E).
    uid_seed : str, optional
        Seed for deterministic Study/Series/SOP/FrameOfReference UIDs; ``None`` = random.
    series_number : int
        SeriesNumber (0020,0011).

    Returns
    -------
    list of Path
        The files written, in slice order (increasing position along the slice normal).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    array = np.asarray(volume.array)
    A = np.asarray(volume.lps_from_ijk, float).copy()
    spacing, R, _ = decompose_affine(A)
    flipped = False
    if np.linalg.det(R) < 0:
        # DICOM's normal is row x column: reverse k so the stored stack is right-handed
        array = array[:, :, ::-1]
        nk = array.shape[2]
        A[:3, 3] = A[:3, :3] @ np.array([0.0, 0.0, nk - 1]) + A[:3, 3]
        A[:3, 2] = -A[:3, 2]
        R = A[:3, :3] / spacing[None, :]
        flipped = True
        log.info("left-handed grid written with the slice order reversed (data and geometry)")
    stored, slope, inter = _choose_storage(array)
    ni, nj, nk = array.shape

    prov = volume.provenance

    def uid(kind: str, *extra: str) -> str:
        if uid_seed is None:
            return generate_uid()
        return generate_uid(entropy_srcs=[str(uid_seed), kind, *extra])

    study_uid = prov.study_uid or uid("study")
    for_uid = prov.frame_of_reference_uid or uid("frame_of_reference")
    series_uid = uid("series", series_description)
    u, v, n = R[:, 0], R[:, 1], R[:, 2]
    iop = [_fmt_ds(float(x)) for x in np.concatenate([u, v])]
    ps = [_fmt_ds(float(spacing[1])), _fmt_ds(float(spacing[0]))]  # row spacing (j), col (i)
    is_signed = stored.dtype == np.int16
    paths = []
    for k in range(nk):
        sop_uid = uid("sop", series_description, str(k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = FIXED_DATE
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = FIXED_TIME
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "planner"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "planner synthetic export"
        ds.SeriesDescription = series_description
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "SPINE"
        ds.SliceThickness = _fmt_ds(float(spacing[2]))
        ds.KVP = ""
        ds.SpacingBetweenSlices = _fmt_ds(float(spacing[2]))
        ds.PatientPosition = ""
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = str(series_number)
        ds.AcquisitionNumber = "1"
        ds.InstanceNumber = str(k + 1)
        ipp = A[:3, :3] @ np.array([0.0, 0.0, float(k)]) + A[:3, 3]
        ds.ImagePositionPatient = [_fmt_ds(float(x)) for x in ipp]
        ds.ImageOrientationPatient = iop
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _fmt_ds(float(ipp @ n))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = nj
        ds.Columns = ni
        ds.PixelSpacing = ps
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if is_signed else 0
        ds.RescaleIntercept = _fmt_ds(inter)
        ds.RescaleSlope = _fmt_ds(slope)
        ds.RescaleType = "HU"
        if flipped:
            ds.ImageComments = "left-handed grid stored with reversed slice order"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (rows, cols) = (j, i)
        ds["PixelData"].VR = "OW"
        target = folder / f"CT_{k + 1:04d}.dcm"
        tmp = folder / f".{target.name}.tmp"
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
        os.replace(tmp, target)
        paths.append(target)
    log.info("wrote %d DICOM slices (%dx%d)", nk, ni, nj)
    return paths
