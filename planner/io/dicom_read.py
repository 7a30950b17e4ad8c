"""Read a DICOM image series into a :class:`~planner.volume.Volume`, refusing bad geometry.

The reader uses pydicom directly (not SimpleITK's series reader, which silently "fixes"
uneven or missing slices).  Its rules follow ``bad-inputs.md`` rows 1-21 and 24:

* files are grouped by ``SeriesInstanceUID``; several series -> ``PLN-DCM-002`` unless one is
  chosen; localizers, non-image objects (RTSTRUCT, SR, secondary capture, DICOMDIR) and
  non-DICOM files are skipped with coded warnings;
* geometry comes **only** from ImagePositionPatient / ImageOrientationPatient (per frame
  for enhanced multi-frame objects); slices are sorted by the projection of their position
  on the slice normal, never by SliceLocation or InstanceNumber;
* gantry tilt (``PLN-DCM-003``), non-uniform spacing (``PLN-DCM-004``) and missing slices
  (``PLN-DCM-005``) are refused unless a resampling correction is requested;
* values are converted to HU per slice (``stored * RescaleSlope + RescaleIntercept``);
* a header-only memory estimate is checked before any pixel is decoded (``PLN-IN-004``).

Array axis order of the result is ``(i, j, k)``: ``i`` along the DICOM row direction (first
three ImageOrientationPatient values, i.e. increasing column index), ``j`` along the column
direction, ``k`` along the slice normal.  pydicom's ``pixel_array`` is ``(rows, cols) =
(j, i)`` and is transposed here.

Patient-identifying attributes are never copied into provenance or logs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from planner.errors import DicomError, InputError
from planner.volume import Provenance, Volume, make_affine

log = logging.getLogger(__name__)

#: SOP classes read as volumetric image slices.
IMAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
}
#: Media Storage Directory (DICOMDIR).
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

#: Transfer syntax -> Python package that decodes it (named in PLN-DCM-008).
CODEC_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg",  # JPEG extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",  # RLE (pydicom also decodes it with numpy)
}

#: Tolerances (mm / degrees / relative).
IOP_TOL = 1e-4  # direction cosines compared elementwise
POSITION_TOL_MM = 1e-3  # two slices closer than this along the normal share a position
TILT_TOL_DEG = 0.1  # IPP steps deviating more than this from the normal mean a sheared stack
SPACING_REL_TOL = 0.01  # steps within 1 % of the median are uniform
SCOUT_MAX_IMAGES = 3  # a differently oriented group this small is treated as a scout
SATURATION_MIN_VOXELS = 10  # voxels at the cap before PLN-W-CT-001 is raised
SATURATION_HU_CAPS = (3071.0, 4095.0)
#: Header scan: values longer than this (pixel data) are not read, only located.
HEADER_DEFER_BYTES = 4096


@dataclass
class SliceRecord:
    """Header facts about one 2-D image (a single-frame file or one frame of a multi-frame)."""

    file: Path
    frame: int | None
    series_uid: str
    ipp: np.ndarray  # (3,)
    iop: np.ndarray  # (6,)
    pixel_spacing: np.ndarray  # (2,) [row spacing (between rows, along j), col spacing (i)]
    rows: int
    cols: int
    slope: float
    intercept: float
    instance: int | None
    image_type: tuple[str, ...]
    bits_allocated: int
    bits_stored: int
    signed: bool
    transfer_syntax: str
    header: Any = field(repr=False, default=None)  # pydicom Dataset (header only)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.iop[:3], self.iop[3:])


# ---------------------------------------------------------------------------------------------
# scanning
# ---------------------------------------------------------------------------------------------
def _iter_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def _float_list(value: Any, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


@dataclass
class _Scan:
    records: list[SliceRecord] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    warnings: list[tuple[str, str, dict]] = field(default_factory=list)
    descriptions: dict[str, str] = field(default_factory=dict)
    headers: dict[str, Any] = field(default_factory=dict)  # series uid -> first header


def _skip(scan: _Scan, f: Path, reason: str, code: str) -> None:
    scan.skipped.append({"file": f.name, "reason": reason, "code": code})


def _scan(path: Path) -> _Scan:
    """Read every header under ``path`` (no pixel data) and sort files into image slices
    and skipped files."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    scan = _Scan()
    for f in _iter_files(path):
        if f.name.startswith("."):
            _skip(scan, f, "hidden or temporary file", "PLN-W-DCM-003")
            continue
        try:
            ds = pydicom.dcmread(f, defer_size=HEADER_DEFER_BYTES)
        except InvalidDicomError:
            ds = _read_without_preamble(f)
            if ds is None:
                _skip(scan, f, "not a DICOM file", "PLN-W-DCM-003")
                continue
        except Exception as exc:  # header itself unreadable: truncated or corrupt
            if _has_dicm_prefix(f):
                raise InputError(
                    f"DICOM file {f.name!r} is truncated or corrupt ({type(exc).__name__}); "
                    "re-export the series or remove that file",
                    code="PLN-IN-003",
                    details={"file": f.name},
                ) from exc
            _skip(scan, f, "not a DICOM file", "PLN-W-DCM-003")
            continue
        _classify(scan, f, ds)
    return scan


def _read_without_preamble(f: Path) -> Any | None:
    """A dataset written without the 128-byte preamble / file meta, or ``None``."""
    import pydicom

    try:
        ds = pydicom.dcmread(f, defer_size=HEADER_DEFER_BYTES, force=True)
        ok = "SOPClassUID" in ds and str(ds.SOPClassUID).replace(".", "").isdigit()
    except Exception:
        return None
    return ds if ok else None


def _check_pixel_length(f: Path, ds: Any) -> None:
    """Raise PLN-IN-003 when an image's pixel data element is missing or runs past the end of
    the file (a truncated file); the pixel data themselves are not read."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(
            f"DICOM image file {f.name!r} has no pixel data: the file is truncated or corrupt; "
            "re-export the series or remove that file",
            code="PLN-IN-003",
            details={"file": f.name},
        )
    raw = ds.get_item(0x7FE00010)
    length = getattr(raw, "length", None)
    tell = getattr(raw, "value_tell", None)
    if length is not None and tell is not None and length != 0xFFFFFFFF:
        size = f.stat().st_size
        if tell + length > size:
            raise InputError(
                f"DICOM file {f.name!r} is truncated: its pixel data need {length} bytes but "
                f"only {max(0, size - tell)} are in the file; re-export the series or remove "
                "that file (refusing to zero-fill)",
                code="PLN-IN-003",
                details={"file": f.name, "bytes": int(max(0, size - tell)), "expected": int(length)},
            )


def _has_dicm_prefix(f: Path) -> bool:
    try:
        with open(f, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _classify(scan: _Scan, f: Path, ds: Any) -> None:
    meta = getattr(ds, "file_meta", None)
    sop = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
    if sop == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        _skip(scan, f, "DICOMDIR (media directory)", "PLN-W-DCM-002")
        return
    multiframe = "PerFrameFunctionalGroupsSequence" in ds
    if sop and sop not in IMAGE_SOP_CLASSES:
        try:
            import pydicom

            name = pydicom.uid.UID(sop).name
        except Exception:  # pragma: no cover - defensive
            name = sop
        _skip(scan, f, f"non-image object: {name}", "PLN-W-DCM-002")
        return
    if not sop and not ("ImagePositionPatient" in ds and "Rows" in ds):
        _skip(scan, f, "no SOP class and no image geometry", "PLN-W-DCM-002")
        return
    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    scan.descriptions.setdefault(series_uid, str(ds.get("SeriesDescription", "") or ""))
    scan.headers.setdefault(series_uid, ds)
    ts = str(getattr(ds.get("file_meta", None), "TransferSyntaxUID", "") or "")
    common = dict(
        file=f,
        series_uid=series_uid,
        rows=int(ds.get("Rows", 0) or 0),
        cols=int(ds.get("Columns", 0) or 0),
        instance=int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None,
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or [])),
        bits_allocated=int(ds.get("BitsAllocated", 16) or 16),
        bits_stored=int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16),
        signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
        transfer_syntax=ts,
        header=ds,
    )
    _check_pixel_length(f, ds)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        _skip(scan, f, "colour image (SamplesPerPixel > 1)", "PLN-W-DCM-002")
        return
    if multiframe:
        scan.records.extend(_multiframe_records(f, ds, common))
        return
    ipp = _float_list(ds.get("ImagePositionPatient"), 3)
    iop = _float_list(ds.get("ImageOrientationPatient"), 6)
    ps = _float_list(ds.get("PixelSpacing"), 2)
    if ipp is None or iop is None or ps is None:
        _skip(scan, f, "image without ImagePositionPatient/ImageOrientationPatient/PixelSpacing",
              "PLN-W-DCM-002")
        return
    scan.records.append(
        SliceRecord(
            frame=None,
            ipp=ipp,
            iop=iop,
            pixel_spacing=ps,
            slope=float(ds.get("RescaleSlope", 1) or 1),
            intercept=float(ds.get("RescaleIntercept", 0) or 0),
            **common,
        )
    )


def _fg_item(fg: Any, seq: str) -> Any | None:
    if fg is None or seq not in fg or len(fg[seq].value) == 0:
        return None
    return fg[seq].value[0]


def _multiframe_records(f: Path, ds: Any, common: dict) -> list[SliceRecord]:
    """One record per frame of an enhanced multi-frame object (geometry from the functional
    groups); raises PLN-DCM-009 when a frame's geometry is not there."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per = ds.PerFrameFunctionalGroupsSequence
    if len(per) != n:
        raise DicomError(
            f"multi-frame file {f.name!r} has {n} frames but {len(per)} per-frame functional "
            "groups; geometry cannot be derived. Re-export it as single-frame images",
            code="PLN-DCM-009",
            details={"file": f.name},
        )

    def lookup(frame_fg: Any, seq: str, attr: str, size: int | None) -> Any:
        for fg in (frame_fg, shared):
            item = _fg_item(fg, seq)
            if item is not None and attr in item:
                val = item[attr].value
                return _float_list(val, size) if size else val
        return None

    out = []
    for k in range(n):
        fg = per[k]
        ipp = lookup(fg, "PlanePositionSequence", "ImagePositionPatient", 3)
        iop = lookup(fg, "PlaneOrientationSequence", "ImageOrientationPatient", 6)
        ps = lookup(fg, "PixelMeasuresSequence", "PixelSpacing", 2)
        if ipp is None or iop is None or ps is None:
            raise DicomError(
                f"multi-frame file {f.name!r}: frame {k + 1} has no plane position, plane "
                "orientation or pixel spacing in its functional groups, so its geometry cannot "
                "be derived (refusing to assume spacing 1 and origin 0). Re-export the series "
                "with full geometry or as single-frame images",
                code="PLN-DCM-009",
                details={"file": f.name, "frame": k + 1},
            )
        slope = lookup(fg, "PixelValueTransformationSequence", "RescaleSlope", None)
        inter = lookup(fg, "PixelValueTransformationSequence", "RescaleIntercept", None)
        out.append(
            SliceRecord(
                frame=k,
                ipp=ipp,
                iop=iop,
                pixel_spacing=ps,
                slope=float(slope if slope not in (None, "") else ds.get("RescaleSlope", 1) or 1),
                intercept=float(inter if inter not in (None, "") else ds.get("RescaleIntercept", 0) or 0),
                **{**common, "instance": k + 1},
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# public: list series
# ---------------------------------------------------------------------------------------------
def list_series(folder: str | Path) -> list[dict[str, Any]]:
    """Describe every image series under ``folder`` (headers only).

    Parameters
    ----------
    folder : str or Path
        Folder searched recursively (or one DICOM file).

    Returns
    -------
    list of dict
        One ``{"series_uid", "description", "n_slices", "modality"}`` per series, largest first.
    """
    path = Path(folder)
    if not path.exists():
        raise InputError(f"input path {str(path)!r} does not exist", code="PLN-IN-001")
    return _series_table(_scan(path))


def _series_table(scan: _Scan) -> list[dict[str, Any]]:
    counts: dict[str, int] = {}
    for r in scan.records:
        counts[r.series_uid] = counts.get(r.series_uid, 0) + 1
    table = [
        {
            "series_uid": uid,
            "description": scan.descriptions.get(uid, ""),
            "n_slices": n,
            "modality": str(scan.headers[uid].get("Modality", "") or ""),
        }
        for uid, n in counts.items()
    ]
    return sorted(table, key=lambda d: (-d["n_slices"], d["series_uid"]))


# ---------------------------------------------------------------------------------------------
# public: read
# ---------------------------------------------------------------------------------------------
def read_dicom_series(
    path: str | Path,
    *,
    series_uid: str | None = None,
    correct_tilt: bool = False,
    resample_spacing: bool | float = False,
    max_bytes: int = 8 * 2**30,
    modality: str | None = None,
) -> Volume:
    """Read one DICOM image series into a :class:`Volume` in LPS millimetres.

    Parameters
    ----------
    path : str or Path
        A folder (searched recursively) or one DICOM file.  A single-frame file stands for
        its whole series in the same folder; a multi-frame file is read alone.
    series_uid : str, optional
        Which series to read when the folder holds several (see :func:`list_series`).
    correct_tilt : bool
        Resample a gantry-tilted (sheared) stack onto an orthogonal grid (linear
        interpolation in physical space) instead of raising ``PLN-DCM-003``.
    resample_spacing : bool or float
        Resample non-uniformly spaced slices to a uniform step (the median step, or the
        given step in mm) instead of raising ``PLN-DCM-004``.  A missing slice is always
        an error (``PLN-DCM-005``).
    max_bytes : int
        Refuse (``PLN-IN-004``) when the decoded volume would exceed this many bytes;
        checked from the headers before any pixel is decoded.
    modality : {"CT", "MR", "OTHER"}, optional
        Override the modality taken from the header.

    Returns
    -------
    Volume
        ``array`` of shape ``(ni, nj, nk)`` = ``(Columns, Rows, n_slices)``; int16 HU when
        every slope/intercept is integer and identical, float32 otherwise.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input path {str(path)!r} does not exist; check the path",
                         code="PLN-IN-001")
    scan_root = path
    if path.is_file():
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            raise InputError(
                f"{path.name!r} is not a readable DICOM file; pass a DICOM file or folder",
                code="PLN-IN-002",
            ) from exc
        if "PerFrameFunctionalGroupsSequence" not in ds:
            scan_root = path.parent
            series_uid = series_uid or str(ds.get("SeriesInstanceUID", "") or "")
    scan = _scan(scan_root)
    if path.is_file() and scan_root == path.parent:
        # keep the report short: files of other series in the folder are not "skipped" ones
        scan.records = [r for r in scan.records if r.series_uid == series_uid]

    prov = Provenance()
    prov.skipped_files.extend(scan.skipped)
    _warn_skipped(prov, scan.skipped)

    records = _drop_localizers(scan.records, prov)
    if not records:
        raise DicomError(
            f"no DICOM image series found under {path.name!r}"
            + (f" ({len(scan.skipped)} files skipped)" if scan.skipped else "")
            + "; point to the folder that holds the CT/MR slices",
            code="PLN-DCM-001",
            details={"skipped": scan.skipped},
        )
    table = _series_table(_Scan(records=records, descriptions=scan.descriptions, headers=scan.headers))
    if series_uid is not None:
        records = [r for r in records if r.series_uid == series_uid]
        if not records:
            raise DicomError(
                f"series {series_uid!r} not found; available series: "
                + "; ".join(f"{t['series_uid']} ({t['description']!r}, {t['n_slices']} slices)"
                            for t in table),
                code="PLN-DCM-010",
                details={"series": table},
            )
    elif len(table) > 1:
        raise DicomError(
            f"{len(table)} image series found; choose one with series_uid=...: "
            + "; ".join(f"{t['series_uid']} ({t['description']!r}, {t['n_slices']} slices)"
                        for t in table),
            code="PLN-DCM-002",
            details={"series": table},
        )

    records = _check_orientation(records)
    return _assemble(records, scan, prov, correct_tilt=correct_tilt,
                     resample_spacing=resample_spacing, max_bytes=max_bytes, modality=modality)


def _warn_skipped(prov: Provenance, skipped: list[dict]) -> None:
    by_code: dict[str, list[dict]] = {}
    for s in skipped:
        by_code.setdefault(s["code"], []).append(s)
    for code, items in by_code.items():
        what = "non-image DICOM objects" if code == "PLN-W-DCM-002" else "non-DICOM files"
        reasons = sorted({s["reason"] for s in items})
        prov.warn(code, f"skipped {len(items)} {what}: {', '.join(reasons)}",
                  files=[s["file"] for s in items])


def _iop_key(iop: np.ndarray) -> tuple:
    return tuple(np.round(iop / (IOP_TOL * 10)).astype(int))


def _drop_localizers(records: list[SliceRecord], prov: Provenance) -> list[SliceRecord]:
    """Remove LOCALIZER images and small groups of scout-like orientation per series."""
    keep, dropped = [], []
    for r in records:
        (dropped if "LOCALIZER" in r.image_type else keep).append(r)
    by_series: dict[str, list[SliceRecord]] = {}
    for r in keep:
        by_series.setdefault(r.series_uid, []).append(r)
    keep = []
    for rs in by_series.values():
        groups: dict[tuple, list[SliceRecord]] = {}
        for r in rs:
            key = next((k for k in groups if np.allclose(groups[k][0].iop, r.iop, atol=IOP_TOL)), None)
            groups.setdefault(key if key is not None else _iop_key(r.iop), []).append(r)
        if len(groups) > 1:
            main = max(groups.values(), key=len)
            n_main = main[0].normal
            for g in groups.values():
                if g is main:
                    continue
                angle = np.degrees(np.arccos(min(1.0, abs(float(g[0].normal @ n_main)))))
                if len(g) <= SCOUT_MAX_IMAGES and len(main) >= 2 * len(g) + 2 and angle > 45:
                    dropped.extend(g)
                else:
                    keep.extend(g)  # mixed orientation: refused later
            keep.extend(main)
        else:
            keep.extend(rs)
    if dropped:
        prov.warn(
            "PLN-W-DCM-001",
            f"excluded {len(dropped)} localizer/scout image(s)",
            files=sorted({r.file.name for r in dropped}),
        )
        prov.skipped_files.extend(
            {"file": r.file.name, "reason": "localizer/scout image", "code": "PLN-W-DCM-001"}
            for r in dropped
        )
    return keep


def _check_orientation(records: list[SliceRecord]) -> list[SliceRecord]:
    ref = records[0].iop
    bad = [r for r in records if not np.allclose(r.iop, ref, atol=IOP_TOL)]
    if bad:
        orientations = sorted({tuple(np.round(r.iop, 4).tolist()) for r in records})
        raise DicomError(
            f"the series mixes {len(orientations)} slice orientations "
            f"({len(bad)} of {len(records)} images differ from the first); a volume needs one "
            "orientation. Choose another series or split this one by ImageOrientationPatient",
            code="PLN-DCM-007",
            details={"orientations": [list(o) for o in orientations]},
        )
    for r in records:
        if r.rows != records[0].rows or r.cols != records[0].cols or not np.allclose(
            r.pixel_spacing, records[0].pixel_spacing, atol=1e-4
        ):
            raise DicomError(
                "slices of the series differ in size or pixel spacing; a volume needs one "
                "in-plane grid. Choose another series",
                code="PLN-DCM-007",
                details={"file": r.file.name},
            )
    return records


# ---------------------------------------------------------------------------------------------
# pixels
# ---------------------------------------------------------------------------------------------
class _PixelSource:
    """Decode stored pixel values lazily, one file at a time (multi-frame files cached)."""

    def __init__(self) -> None:
        self._cache: dict[Path, np.ndarray] = {}

    def stored(self, r: SliceRecord) -> np.ndarray:
        """Stored values of one slice, shape (rows, cols) = (j, i)."""
        if r.frame is not None and r.file in self._cache:
            return self._cache[r.file][r.frame]
        arr = _decode_file(r)
        if r.frame is not None:
            if arr.ndim == 2:
                arr = arr[None]
            self._cache = {r.file: arr}
            return arr[r.frame]
        return arr


def _decode_file(r: SliceRecord) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(r.file)
    except Exception as exc:
        raise InputError(
            f"DICOM file {r.file.name!r} is truncated or corrupt ({type(exc).__name__}); "
            "re-export the series or remove that file",
            code="PLN-IN-003",
            details={"file": r.file.name},
        ) from exc
    if "PixelData" not in ds:
        raise InputError(
            f"DICOM file {r.file.name!r} has no pixel data (truncated?); re-export the series",
            code="PLN-IN-003",
            details={"file": r.file.name},
        )
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    ts = ds.file_meta.TransferSyntaxUID
    if not ts.is_compressed:
        expected = r.rows * r.cols * n_frames * ((r.bits_allocated + 7) // 8)
        if len(ds.PixelData) < expected:
            raise InputError(
                f"DICOM file {r.file.name!r} is truncated: {len(ds.PixelData)} bytes of pixel "
                f"data where {expected} are needed; re-export the series (refusing to zero-fill)",
                code="PLN-IN-003",
                details={"file": r.file.name, "bytes": len(ds.PixelData), "expected": expected},
            )
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise InputError(
            f"pixel data of {r.file.name!r} cannot be decoded ({type(exc).__name__}: {exc}); "
            "the file may be truncated or corrupt",
            code="PLN-IN-003",
            details={"file": r.file.name, "transfer_syntax": str(ts)},
        ) from exc
    return np.asarray(arr)


def _check_codec(transfer_syntax: str) -> None:
    """Raise PLN-DCM-008 when no installed plugin can decode ``transfer_syntax``."""
    import pydicom
    from pydicom.pixels import get_decoder

    uid = pydicom.uid.UID(transfer_syntax)
    if not uid.is_compressed:
        return
    try:
        dec = get_decoder(uid)
    except NotImplementedError as exc:
        raise DicomError(
            f"transfer syntax {uid.name} ({uid}) is not supported by pydicom; convert the series "
            "to explicit VR little endian (e.g. gdcmconv --raw) and retry",
            code="PLN-DCM-008",
            details={"transfer_syntax": str(uid)},
        ) from exc
    if not dec.is_available:
        pkg = CODEC_PACKAGES.get(str(uid), "pylibjpeg")
        raise DicomError(
            f"the series uses the compressed transfer syntax {uid.name} and no decoder is "
            f"installed; install it with: pip install pylibjpeg {pkg}",
            code="PLN-DCM-008",
            details={"transfer_syntax": str(uid), "package": pkg,
                     "missing": list(dec.missing_dependencies)},
        )


# ---------------------------------------------------------------------------------------------
# assembly
# ---------------------------------------------------------------------------------------------
def _assemble(
    records: list[SliceRecord],
    scan: _Scan,
    prov: Provenance,
    *,
    correct_tilt: bool,
    resample_spacing: bool | float,
    max_bytes: int,
    modality: str | None,
) -> Volume:
    first = records[0]
    u, v = first.iop[:3], first.iop[3:]
    u = u / np.linalg.norm(u)
    v = v / np.linalg.norm(v)
    n = np.cross(u, v)
    t = np.array([r.ipp @ n for r in records])
    order = np.argsort(t, kind="stable")
    records = [records[o] for o in order]
    t = t[order]

    # memory: header-only estimate before decoding anything
    float_out = _needs_float(records)
    itemsize = 4 if float_out else 2
    est = first.rows * first.cols * len(records) * max(itemsize, (first.bits_allocated + 7) // 8)
    _check_memory(est, max_bytes, f"{first.cols}x{first.rows}x{len(records)}")
    for ts in sorted({r.transfer_syntax for r in records if r.transfer_syntax}):
        _check_codec(ts)

    src = _PixelSource()
    records, t, hu_slices, sat = _dedupe_and_decode(records, t, src, prov, float_out)

    _check_instance_order(records, prov)

    # ---- geometry ---------------------------------------------------------------------
    ps_row, ps_col = float(first.pixel_spacing[0]), float(first.pixel_spacing[1])
    ipps = np.array([r.ipp for r in records])
    nk = len(records)
    tilt_deg = 0.0
    steps = np.diff(t)
    if nk > 1:
        dp = np.diff(ipps, axis=0)
        inplane = dp - np.outer(dp @ n, n)
        shear = inplane / steps[:, None]  # (nk-1, 3) in-plane offset per mm along the normal
        mean_shear = shear.mean(axis=0)
        tilt_deg = float(np.degrees(np.arctan(np.linalg.norm(mean_shear))))
        max_dev = float(np.degrees(np.arctan(np.linalg.norm(shear - mean_shear, axis=1).max())))
        if max_dev > TILT_TOL_DEG:
            raise DicomError(
                "slice positions do not lie on a line (ImagePositionPatient steps change "
                "direction); the series cannot be stacked. Check the export",
                code="PLN-DCM-007",
                details={"max_deviation_deg": max_dev},
            )
    tag_tilt = float(first.header.get("GantryDetectorTilt", 0) or 0) if first.header is not None else 0.0
    sheared = tilt_deg > TILT_TOL_DEG
    if not sheared and abs(tag_tilt) > 0.01:
        prov.warn(
            "PLN-W-DCM-008",
            f"GantryDetectorTilt is {tag_tilt:g} deg but slice positions are orthogonal to the "
            "slices; geometry used as stored",
            gantry_detector_tilt_deg=tag_tilt,
        )
    if sheared and not correct_tilt:
        raise DicomError(
            f"gantry/detector tilt of {tilt_deg:.2f} deg (GantryDetectorTilt tag: {tag_tilt:g}): "
            "slice positions are sheared against the slice normal, so the stack is not a "
            "rectangular grid. Pass correct_tilt=True (CLI: --correct-tilt) to resample it onto "
            "an orthogonal grid",
            code="PLN-DCM-003",
            details={"tilt_deg": tilt_deg, "gantry_detector_tilt_deg": tag_tilt},
        )

    # spacing along the stack axis (distance between consecutive slice origins)
    uniform = True
    step_mm = float(ps_row)
    if nk > 1:
        # step along the stack (for resampling) and along the normal (for checks/messages)
        step_mm = float(np.median(np.linalg.norm(np.diff(ipps, axis=0), axis=1)))
        dist = steps
        med = float(np.median(dist))
        dev = np.abs(dist - med) > SPACING_REL_TOL * med
        if dev.any():
            uniform = False
            ratio = dist / med
            gaps = np.where(dev)[0]
            near_int = np.abs(ratio[gaps] - np.round(ratio[gaps])) < 0.05
            if near_int.all() and (np.round(ratio[gaps]) >= 2).all() and (~dev).sum() >= 2:
                where = ", ".join(
                    f"between slices {g} and {g + 1} (positions {t[g]:.3f} and {t[g + 1]:.3f} mm "
                    f"along the normal, about {int(round(ratio[g])) - 1} slice(s) missing)"
                    for g in gaps
                )
                raise DicomError(
                    f"missing slice(s) in the series: {where}. The usual step is {med:.4g} mm. "
                    "Re-export the complete series",
                    code="PLN-DCM-005",
                    details={"gaps": [{"after_index": int(g), "position_mm": float(t[g]),
                                       "next_position_mm": float(t[g + 1]),
                                       "step_mm": float(dist[g])} for g in gaps],
                             "usual_step_mm": med},
                )
            if not resample_spacing:
                uniq = sorted({round(float(d), 3) for d in dist})
                raise DicomError(
                    f"non-uniform slice spacing: steps of {', '.join(f'{d:g}' for d in uniq)} mm "
                    "between consecutive slices (along the slice normal). Pass resample_spacing=True (CLI: "
                    "--resample-spacing) to resample to a uniform step",
                    code="PLN-DCM-004",
                    details={"spacings_mm": uniq},
                )

    if len({h.dtype for h in hu_slices}) > 1:
        hu_slices = [h.astype(np.float32) for h in hu_slices]
    hu = np.stack(hu_slices, axis=-1)  # (rows, cols, nk) = (j, i, k)
    hu = np.ascontiguousarray(hu.transpose(1, 0, 2))  # (i, j, k)
    mod = _modality(first, modality)
    if mod == "CT" and sat is not None:
        prov.warn("PLN-W-CT-001", sat["message"], **{k: v for k, v in sat.items() if k != "message"})

    if nk > 1 and (sheared or not uniform):
        new_step = float(resample_spacing) if (
            not isinstance(resample_spacing, bool) and resample_spacing) else step_mm
        hu, A = _resample_stack(hu, ipps, u, v, ps_col, ps_row, new_step, max_bytes)
        if sheared:
            prov.warn("PLN-W-DCM-006",
                      f"gantry tilt of {tilt_deg:.2f} deg corrected by resampling onto an "
                      "orthogonal grid (linear interpolation)",
                      tilt_deg=tilt_deg)
            prov.corrections.append({"type": "gantry_tilt", "tilt_deg": tilt_deg,
                                     "gantry_detector_tilt_deg": tag_tilt,
                                     "interpolation": "linear", "step_mm": new_step})
        if not uniform:
            prov.warn("PLN-W-DCM-007",
                      f"non-uniform slice spacing resampled to a uniform {new_step:.4g} mm step "
                      "(linear interpolation)", step_mm=new_step)
            prov.corrections.append({"type": "uniform_spacing", "step_mm": new_step,
                                     "interpolation": "linear"})
    else:
        if nk == 1:
            hdr = first.header
            step_mm = float(hdr.get("SpacingBetweenSlices", 0) or hdr.get("SliceThickness", 0) or 0)
            if step_mm <= 0:
                step_mm = float(min(ps_row, ps_col))
            prov.extra["single_slice_thickness_from"] = "header SliceThickness/SpacingBetweenSlices"
        else:
            step_mm = float((t[-1] - t[0]) / (nk - 1))  # mean step along the normal
        A = make_affine([ps_col, ps_row, step_mm], np.column_stack([u, v, n]), ipps[0])

    _fill_provenance(prov, records, scan, first)
    vol = Volume(hu, A, mod, prov)
    log.info("read DICOM series: %d slices, shape %s", nk, vol.shape)
    return vol


def _modality(first: SliceRecord, override: str | None) -> str:
    if override is not None:
        return override
    m = str(first.header.get("Modality", "") or "").upper() if first.header is not None else ""
    return m if m in ("CT", "MR") else "OTHER"


def _needs_float(records: list[SliceRecord]) -> bool:
    slopes = {r.slope for r in records}
    inters = {r.intercept for r in records}
    if len(slopes) > 1 or len(inters) > 1:
        return True
    s, b = slopes.pop(), inters.pop()
    return bool(s != round(s) or b != round(b))


def _check_memory(est: int, max_bytes: int, shape: str) -> None:
    if est > max_bytes:
        raise InputError(
            f"the volume ({shape} voxels) needs about {est / 2**20:.0f} MiB, more than the "
            f"limit of {max_bytes / 2**20:.0f} MiB; crop the series or raise max_bytes "
            "(CLI: --max-memory)",
            code="PLN-IN-004",
            details={"estimated_bytes": int(est), "max_bytes": int(max_bytes)},
        )


def _dedupe_and_decode(
    records: list[SliceRecord], t: np.ndarray, src: _PixelSource, prov: Provenance, float_out: bool
) -> tuple[list[SliceRecord], np.ndarray, list[np.ndarray], dict | None]:
    """Decode each slice to HU; drop exact duplicates (W), refuse conflicting ones (E)."""
    out_recs: list[SliceRecord] = []
    out_t: list[float] = []
    out_hu: list[np.ndarray] = []
    dups: list[str] = []
    n_cap = 0
    cap_values: set[float] = set()
    hu_max = -np.inf
    n_at_hu_max = 0
    for r, tk in zip(records, t):
        stored = src.stored(r)
        if stored.shape != (r.rows, r.cols):
            raise InputError(
                f"pixel data of {r.file.name!r} has shape {stored.shape}, header says "
                f"{(r.rows, r.cols)}; the file is corrupt",
                code="PLN-IN-003",
                details={"file": r.file.name},
            )
        hu = _to_hu(stored, r, float_out)
        # saturation of the stored range
        cap = (2 ** (r.bits_stored - 1) - 1) if r.signed else (2**r.bits_stored - 1)
        c = int(np.count_nonzero(stored >= cap))
        if c:
            n_cap += c
            cap_values.add(cap * r.slope + r.intercept)
        m = float(hu.max())
        if m > hu_max:
            hu_max, n_at_hu_max = m, int(np.count_nonzero(hu == m))
        elif m == hu_max:
            n_at_hu_max += int(np.count_nonzero(hu == m))
        if out_t and abs(tk - out_t[-1]) < POSITION_TOL_MM:
            if np.array_equal(hu, out_hu[-1]):
                dups.append(r.file.name if r.frame is None else f"{r.file.name}#{r.frame + 1}")
                continue
            raise DicomError(
                f"two slices at position {tk:.3f} mm along the normal have different pixels "
                f"({out_recs[-1].file.name!r} and {r.file.name!r}); the series mixes "
                "acquisitions or reconstructions. Remove one of them or choose another series",
                code="PLN-DCM-006",
                details={"position_mm": float(tk),
                         "files": [out_recs[-1].file.name, r.file.name]},
            )
        out_recs.append(r)
        out_t.append(float(tk))
        out_hu.append(hu)
    if dups:
        prov.warn("PLN-W-DCM-004", f"removed {len(dups)} exact duplicate slice(s)", files=dups)
        prov.skipped_files.extend(
            {"file": d, "reason": "exact duplicate slice", "code": "PLN-W-DCM-004"} for d in dups
        )
    sat = None
    if n_cap >= SATURATION_MIN_VOXELS:
        sat = {"message": f"{n_cap} voxels at the maximum stored value (HU "
                          f"{', '.join(f'{c:g}' for c in sorted(cap_values))}): metal is saturated, "
                          "true densities are higher", "voxels": n_cap,
               "cap_hu": sorted(cap_values)}
    elif hu_max in SATURATION_HU_CAPS and n_at_hu_max >= SATURATION_MIN_VOXELS:
        sat = {"message": f"{n_at_hu_max} voxels at {hu_max:g} HU, a scanner cap: metal is "
                          "saturated, true densities are higher", "voxels": n_at_hu_max,
               "cap_hu": [hu_max]}
    return out_recs, np.array(out_t), out_hu, sat


def _to_hu(stored: np.ndarray, r: SliceRecord, float_out: bool) -> np.ndarray:
    """``stored * slope + intercept`` computed without wrap-around, shape (rows, cols)."""
    if float_out:
        return (stored.astype(np.float64) * r.slope + r.intercept).astype(np.float32)
    hu = stored.astype(np.int64) * int(r.slope) + int(r.intercept)
    if hu.size and (hu.min() < -32768 or hu.max() > 32767):
        return hu.astype(np.float32)  # beyond int16: exact in float32 up to 2**24
    return hu.astype(np.int16)


def _check_instance_order(records: list[SliceRecord], prov: Provenance) -> None:
    inst = [r.instance for r in records]
    if any(i is None for i in inst) or len(inst) < 3 or records[0].frame is not None:
        return
    d = np.diff(np.array(inst, dtype=float))
    if not ((d > 0).all() or (d < 0).all()):
        prov.warn(
            "PLN-W-DCM-005",
            "InstanceNumber order is inconsistent with slice positions; slices sorted by "
            "ImagePositionPatient along the normal",
            instance_numbers_in_position_order=[int(i) for i in inst],
        )
    prov.extra["instance_order_along_normal"] = (
        "increasing" if (d > 0).all() else "decreasing" if (d < 0).all() else "inconsistent"
    )


def _resample_stack(
    hu: np.ndarray,
    ipps: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    si: float,
    sj: float,
    step: float,
    max_bytes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a sheared and/or unevenly spaced slice stack onto an orthogonal grid.

    Input slice ``k`` has origin ``ipps[k]`` and in-plane axes ``u`` (i, spacing ``si``) and
    ``v`` (j, spacing ``sj``).  The output grid has axes ``e1 = u``, ``e3`` = the stack
    direction (first to last origin) made orthogonal to ``u``, ``e2 = e3 x e1``; spacing
    ``(si, sj, step)``; it covers every input voxel centre.  Values are interpolated linearly
    in physical space (between slices along the stack, bilinear in-plane).

    Returns
    -------
    array : (ni', nj', nk') float32
    lps_from_ijk : (4, 4)
    """
    from scipy.ndimage import map_coordinates

    ni, nj, nk = hu.shape
    n = np.cross(u, v)
    d = ipps[-1] - ipps[0]
    e3 = d - (d @ u) * u
    e3 /= np.linalg.norm(e3)
    e2 = np.cross(e3, u)
    E = np.column_stack([u, e2, e3])
    # bounding box of all input voxel centres in the new frame
    corners_ij = np.array([[0, 0], [ni - 1, 0], [0, nj - 1], [ni - 1, nj - 1]], float)
    pts = (ipps[:, None, :] + corners_ij[None, :, 0:1] * si * u + corners_ij[None, :, 1:2] * sj * v)
    c = pts.reshape(-1, 3) @ E
    lo, hi = c.min(0), c.max(0)
    sp = np.array([si, sj, step])
    shape = tuple(int(np.floor((hi[a] - lo[a]) / sp[a] + 1e-6)) + 1 for a in range(3))
    _check_memory(int(np.prod(shape)) * 4 * 2, max_bytes, "x".join(map(str, shape)))
    origin = E @ lo
    A = make_affine(sp, E, origin)

    t_in = ipps @ n
    k_idx = np.arange(nk, dtype=float)
    src = hu.astype(np.float32, copy=False)
    fill = float(src.min())
    out = np.empty(shape, np.float32)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    plane = origin + ii[..., None] * (si * E[:, 0]) + jj[..., None] * (sj * E[:, 1])  # (ni', nj', 3)
    for k in range(shape[2]):
        x = plane + k * step * E[:, 2]
        tk = x @ n
        kc = np.interp(tk, t_in, k_idx, left=-1.0, right=nk)
        k0 = np.clip(np.floor(kc), 0, nk - 1).astype(int)
        k1 = np.minimum(k0 + 1, nk - 1)
        f = (kc - k0)[..., None]
        p0 = ipps[k0] * (1 - f) + ipps[k1] * f  # slice origin at continuous k
        rel = x - p0
        ci = rel @ u / si
        cj = rel @ v / sj
        eps = 1e-3  # voxels: points on the border are inside despite rounding
        outside = ((ci < -eps) | (ci > ni - 1 + eps) | (cj < -eps) | (cj > nj - 1 + eps)
                   | (kc < -eps) | (kc > nk - 1 + eps))
        vals = map_coordinates(src, [ci, cj, kc], order=1, mode="nearest")
        vals[outside] = fill
        out[:, :, k] = vals
    return out, A


def _fill_provenance(prov: Provenance, records: list[SliceRecord], scan: _Scan,
                     first: SliceRecord) -> None:
    hdr = first.header
    prov.source_files.extend(dict.fromkeys(r.file.name for r in records))
    prov.series_uid = first.series_uid or None
    prov.study_uid = str(hdr.get("StudyInstanceUID", "") or "") or None
    prov.frame_of_reference_uid = str(hdr.get("FrameOfReferenceUID", "") or "") or None
    tss = sorted({r.transfer_syntax for r in records if r.transfer_syntax})
    prov.extra.update(
        {
            "format": "DICOM",
            "transfer_syntax": tss[0] if len(tss) == 1 else tss,
            "sop_class": str(hdr.get("SOPClassUID", "") or ""),
            "series_description": scan.descriptions.get(first.series_uid, ""),
            "manufacturer": str(hdr.get("Manufacturer", "") or ""),
            "n_slices": len(records),
            "rescale_slopes": sorted({r.slope for r in records}),
            "rescale_intercepts": sorted({r.intercept for r in records}),
        }
    )

