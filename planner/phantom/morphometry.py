"""Per-level vertebral morphometry (T1-S1): means, SDs and their sources.

Pure data plus small lookup functions.  Every value comes from
``docs/morphometry.md`` (the project's literature digest) and carries its source key and
provenance mark:

* ``[V]`` number read in the primary publication (abstract / table page);
* ``[S: X]`` number read in a secondary source X (``CTSP`` = the CTSpinoPelvic1K
  transcription of Panjabi's tables; ``TS`` = the low-traceability TypeScript planner table
  of morphometry.md section 8);
* ``[U]`` our own estimate, interpolation or conversion, always with its reason.

Each quantity is given as *anchors* (level -> mean, SD, source).  Levels without an anchor
are filled by linear interpolation in level index between the nearest anchors, and their
source reads ``"[U] linear interpolation <A>-<B>"``; this keeps every filled number
traceable to the two cited values it was derived from.

Series choice where studies disagree (morphometry.md asks for one consistent series):

* body width: Panjabi (P91 T11-T12, P92 L1-L5; cadaveric, the classic reference).  T1-T10
  have no Panjabi value reachable; the K16 CT values (TS transcription, [S, low]) are used
  scaled by 0.887 = P91/K16 at T12 [U] so the series joins Panjabi's without a step;
* body heights: Gilad & Nissan 1985 (Gi85, male dry bone) for L1-L5 because it gives
  anterior and posterior heights with SDs from one cohort; Busscher 2010 (Bu10) at T12
  (agrees with Gi85 at L1); Pk / Eg19 anchors for the thoracic spine;
* pedicle width: Kaur 2016 (K16, CT) for the thoracic spine (T1, T4, T12 [V], others via
  TS [S, low]), Zindrick 1987 (Z87) for L1-L5 (the study that defines the T5-narrowest,
  L5-widest trend; continuous with K16 at T12, SDs given);
* transverse angle: Vaccaro 1995 (V95) T4-T12 (the series whose T12 value agrees with the
  majority: +0.3 deg vs De20 3, Pk 4; K16's -9.8 deg is an outlier by axis definition),
  De20 at T1, GSJ22 controls at L4-L5;
* canal: Panjabi (P91/P92) at T11-L5; the Pakistani CT series (Pk) for the thoracic
  anchors (it has width and depth anchors in one cohort), K16 at T4-T5;
* disc height: Bach 2019 (Ba19, CT, mean of anterior/centre/posterior, sex-specific) for
  T12-L1 to L5-S1; thoracic from the Ku11 range (see the entries).

Variation rules (morphometry.md section 10): Panjabi SEMs converted to SD with
:data:`SEM_TO_SD`; female in-plane dimensions scaled by :data:`FEMALE_INPLANE_SCALE`;
jitter is a normal deviate truncated at :data:`TRUNCATE_SD` SDs.
"""

from __future__ import annotations

import numpy as np

LEVELS: tuple[str, ...] = tuple([f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)] + ["S1"])

#: Panjabi 1991/1992 report SEM for n = 12 spines: SD = SEM * sqrt(12) ~ 3.46 (morphometry.md
#: section 1 and 10, [U] conversion).
SEM_TO_SD: float = float(np.sqrt(12.0))

#: Female in-plane (axial) dimensions = male x 0.92: the square root of the ~25 % smaller
#: lumbar body cross-section in women (Gil94 [V]); morphometry.md section 10 [U] rule.
FEMALE_INPLANE_SCALE: float = 0.92

#: Female canal dimensions: Gr16 F/M canal width ~0.95 at L1-L5 ([S: CTSP]); 0.96 [U].
FEMALE_CANAL_SCALE: float = 0.96

#: Female thoracic disc height: Fl15 F/M anterior height 3.6/4.0 .. 5.1/5.4 ~ 0.94 [V]; [U] 0.95.
FEMALE_THORACIC_DISC_SCALE: float = 0.95

#: Per-patient jitter is a normal deviate truncated at +-2 SD (morphometry.md section 10 [U]).
TRUNCATE_SD: float = 2.0

#: Dimensions scaled by FEMALE_INPLANE_SCALE (axial-plane lengths; angles are sex-independent,
#: morphometry.md section 10 (Zhuang 2011, De20 [V])).
INPLANE_KEYS: tuple[str, ...] = (
    "body_width_mm",
    "body_depth_mm",
    "pedicle_width_mm",
    "pedicle_chord_mm",
    "spinous_length_mm",
    "transverse_length_mm",
)
CANAL_KEYS: tuple[str, ...] = ("canal_width_mm", "canal_depth_mm")

Anchor = tuple[float, float, str]  # mean, SD, source

_P92 = "P92 [S: CTSP]"

#: quantity -> {level: (mean, SD, source)}.  Gaps are filled by interpolation (module doc).
ANCHORS: dict[str, dict[str, Anchor]] = {
    # ---------------------------------------------------------------- vertebral body
    "body_width_mm": {  # upper end-plate width (EPWu)
        **{
            lev: (round(k16 * 0.887, 1), 2.5, "K16 via TS [S, low] x 0.887 to join P91 at T12 [U]; SD 2.5 [U]")
            for lev, k16 in zip(
                [f"T{i}" for i in range(1, 10)], [33.1, 32.0, 32.8, 34.2, 36.1, 37.5, 38.1, 38.2, 39.6]
            )
        },
        # T10: K16's 43.1 (x 0.887 = 38.2) would exceed P91's T11 35.2; left to interpolation [U]
        "T11": (35.2, 3.0, "P91 Fig 4A digitised [S: CTSP]; SD 3.0 [U] (Ya20 T12 SD 2.9)"),
        "T12": (39.2, 3.0, "P91 Fig 4A digitised [S: CTSP]; SD 3.0 [U] (Ya20 T12 SD 2.9)"),
        "L1": (41.2, 1.03 * SEM_TO_SD, _P92 + "; SD from SEM [U]"),
        "L2": (42.6, 0.74 * SEM_TO_SD, _P92 + "; SD from SEM [U]"),
        "L3": (44.1, 0.88 * SEM_TO_SD, _P92 + "; SD from SEM [U]"),
        "L4": (46.6, 1.20 * SEM_TO_SD, _P92 + "; SD from SEM [U]"),
        "L5": (47.3, 1.20 * SEM_TO_SD, _P92 + "; SD from SEM [U]"),
        "S1": (43.8, 4.0, "OMJ female sacral body width 40.3 [V] / 0.92 to a male mean [U]; SD 4 [U] (OMJ 7.0 is a small mixed sample)"),
    },
    "body_depth_mm": {  # upper end-plate depth (EPDu): the largest gap of morphometry.md
        "T1": (16.5, 2.0, "[U] depth/width ~0.55 at the cervicothoracic transition; SD 2 [U] (section 10)"),
        "T4": (22.5, 2.0, "[U] mid-thoracic bodies nearly as deep as wide (heart shape); SD 2 [U]"),
        "T6": (25.5, 2.0, "[U] depth/width ~0.77; SD 2 [U]"),
        "T11": (30.0, 2.0, "[U] inside the weak 29-33 mm T11-L1 bound (morphometry.md section 2 note)"),
        "L1": (31.0, 2.5, "[U] inside the weak 29-33 mm T11-L1 bound"),
        "L4": (33.5, 2.5, "[U] equal to the L5 value (lower lumbar depth plateau)"),
        "L5": (33.5, 4.1, "Bh superior AP diameter [V]"),
        "S1": (32.0, 3.0, "[U] S1 end plate slightly shallower than L5 (no value in morphometry.md)"),
    },
    "body_height_anterior_mm": {
        "T1": (16.9, 1.34, "Pk [V]"),
        "T2": (16.93, 1.57, "Eg19 [V]"),
        "T9": (18.83, 1.54, "Eg19 [V]"),
        "T12": (25.6, 1.6, "Bu10 [S: CTSP]"),
        "L1": (25.4, 2.2, "Gi85 M [S: CTSP]"),
        "L2": (27.2, 2.0, "Gi85 M [S: CTSP]"),
        "L3": (27.9, 2.1, "Gi85 M [S: CTSP]"),
        "L4": (27.4, 2.2, "Gi85 M [S: CTSP]"),
        "L5": (28.3, 2.1, "Gi85 M [S: CTSP]"),
        "S1": (28.0, 2.0, "[U] similar to L5 (no S1 value in morphometry.md)"),
    },
    "body_height_posterior_mm": {
        "T1": (18.8, 1.13, "Pk [V]"),
        "T2": (17.59, 1.43, "Eg19 [V]"),
        "T9": (20.46, 3.08, "Eg19 [V]"),
        "T12": (28.5, 0.9, "Bu10 [S: CTSP]"),
        "L1": (27.1, 2.1, "Gi85 M [S: CTSP]"),
        "L2": (27.0, 2.1, "Gi85 M [S: CTSP]"),
        "L3": (27.9, 2.1, "Gi85 M [S: CTSP]"),
        "L4": (27.1, 2.3, "Gi85 M [S: CTSP]"),
        "L5": (25.7, 2.5, "Gi85 M [S: CTSP]"),
        "S1": (24.0, 2.0, "[U] posterior S1 shorter than anterior (lumbosacral wedge)"),
    },
    # ---------------------------------------------------------------- pedicle
    "pedicle_width_mm": {
        "T1": (9.27, 1.01, "K16 [V]"),
        "T2": (7.5, 1.0, "K16 via TS [S, low]; SD 1.0 [U] (K16 T1/T4 SD ~1)"),
        "T3": (6.0, 1.0, "K16 via TS [S, low]; SD 1.0 [U]"),
        "T4": (4.5, 0.93, "K16 [V]"),
        "T5": (5.0, 1.0, "K16 via TS [S, low]; SD 1.0 [U]"),
        "T6": (5.5, 1.0, "K16 via TS [S, low]; SD 1.0 [U]"),
        "T7": (6.0, 1.0, "K16 via TS [S, low]; SD 1.0 [U]"),
        "T8": (6.3, 1.2, "K16 via TS [S, low]; SD 1.2 [U]"),
        "T9": (6.3, 1.2, "K16 via TS [S, low]; SD 1.2 [U]"),
        "T10": (6.5, 1.2, "K16 via TS [S, low]; SD 1.2 [U]"),
        "T11": (7.8, 1.5, "K16 via TS [S, low]; SD 1.5 [U]"),
        "T12": (8.31, 1.83, "K16 [V]"),
        "L1": (8.7, 2.3, "Z87 [S: CTSP]"),
        "L2": (8.9, 2.2, "Z87 [S: CTSP]"),
        "L3": (10.3, 2.6, "Z87 [S: CTSP]"),
        "L4": (12.9, 2.1, "Z87 [S: CTSP]"),
        "L5": (18.0, 4.1, "Z87 [S: CTSP]"),
        "S1": (22.3, 2.7, "Ok03 S1 pedicle 'width' (AP axis) [V]"),
    },
    "pedicle_height_mm": {
        **{
            f"T{i}": (h, 1.5, "K16 via TS [S, low]; SD 1.5 [U] (section 10: 1-2.6)")
            for i, h in zip(range(1, 12), [9.0, 10.3, 10.4, 10.3, 10.6, 10.2, 10.4, 10.9, 12.0, 13.7, 15.0])
        },
        "T12": (15.45, 0.78, "Cu [V]"),
        **{
            f"L{i}": (h, 1.8, "pooled meta-analysis via TS [S, low]; SD 1.8 [U]")
            for i, h in zip(range(1, 6), [15.4, 14.9, 14.5, 14.2, 14.7])
        },
        "S1": (13.6, 2.5, "Ok03 [V]"),
    },
    "pedicle_transverse_angle_deg": {  # medial convergence from the sagittal plane
        "T1": (33.0, 2.2, "De20 [V]; SD 2.2 from K16 T1 [V]"),
        "T4": (13.9, 3.5, "V95 [V]; SD 3.5 [U] (Filipino CT SD 3.5)"),
        "T12": (0.3, 3.5, "V95 [V]; SD 3.5 [U]"),
        "L4": (14.5, 3.9, "GSJ22 controls [V]"),
        "L5": (20.7, 3.8, "GSJ22 controls [V]"),
        "S1": (42.0, 2.3, "Ok03 mean of F 43 / M 41 [V] (angles sex-independent)"),
    },
    "pedicle_sagittal_angle_deg": {  # caudal tilt of the axis from entry to target (+ = descends)
        "T1": (17.0, 3.0, "[U] slightly below the T2 maximum (Cu; L07 largest at T2)"),
        "T2": (19.22, 2.24, "Cu [V] (largest sagittal angle)"),
        "T12": (8.0, 3.0, "[U] decreasing trend T2 -> L5 (L07 qualitative [V])"),
        "L4": (4.0, 3.0, "[U] decreasing trend (L07)"),
        "L5": (2.0, 3.0, "[U] L07: smallest sagittal angle at L5 [V, qualitative]"),
        "S1": (19.0, 3.3, "Ok03 [V]"),
    },
    "pedicle_chord_mm": {  # pedicle-axis chord from the entry to the anterior cortex
        "T1": (30.30, 2.11, "K16 chord [V]"),
        "T2": (35.6, 3.7, "Filipino CT chord [V]"),
        "T4": (37.7, 3.5, "JpAo chord [V]; SD 3.5 [U]"),
        "T9": (44.9, 4.4, "Kr11 ideal screw length [V]"),
        "T12": (47.2, 4.6, "JpAo chord [V]; SD from Filipino CT T12 [V]"),
        "L4": (55.34, 4.0, "Ca19 pedicle-axis length [V]; SD 4.0 [U]"),
        "L5": (51.80, 4.0, "Ca19 [V]; SD 4.0 [U]"),
        "S1": (51.8, 3.5, "Ok03 M pedicle depth [V]"),
    },
    # ---------------------------------------------------------------- canal
    "canal_width_mm": {  # interpedicular distance
        "T1": (23.18, 1.2, "[U] held at the Pk T3 value (no T1-T2 value)"),
        "T3": (23.18, 1.2, "Pk [V]"),
        "T4": (21.12, 1.23, "K16 [V] (T4-T5)"),
        "T5": (21.12, 1.23, "K16 [V] (T4-T5)"),
        "T6": (19.18, 1.6, "Pk [V]"),
        "T11": (19.4, 0.95 * SEM_TO_SD, "P91 [S: CTSP]; SD from SEM [U]"),
        "T12": (22.2, 1.12 * SEM_TO_SD, "P91 [S: CTSP]; SD from SEM [U]"),
        "L1": (23.7, 0.92 * SEM_TO_SD, _P92 + "; SD from SEM [U]"),
        "L2": (23.8, 0.71 * SEM_TO_SD, _P92 + "; SD from SEM [U]"),
        "L3": (24.3, 0.64 * SEM_TO_SD, _P92 + "; SD from SEM [U]"),
        "L4": (25.4, 0.49 * SEM_TO_SD, _P92 + "; SD from SEM [U]"),
        "L5": (27.1, 0.88 * SEM_TO_SD, _P92 + "; SD from SEM [U]"),
        "S1": (25.0, 3.0, "[U] triangular S1 canal; interpedicular width taken a little below L5's"),
    },
    "canal_depth_mm": {  # midline AP, posterior body wall to lamina
        "T1": (21.2, 1.07, "[U] held at the Pk T2 value"),
        "T2": (21.2, 1.07, "Pk [V]"),
        "T7": (17.03, 1.01, "Pk [V]"),
        "T11": (16.0, 0.46 * SEM_TO_SD, "P91 [S: CTSP]; SD from SEM [U]"),
        "T12": (18.1, 0.62 * SEM_TO_SD, "P91 [S: CTSP]; SD from SEM [U]"),
        "L1": (19.0, 0.67 * SEM_TO_SD, _P92 + "; SD from SEM [U]"),
        "L2": (18.2, 0.53 * SEM_TO_SD, _P92 + "; SD from SEM [U]"),
        "L3": (17.5, 0.53 * SEM_TO_SD, _P92 + "; SD from SEM [U]"),
        "L4": (18.6, 0.71 * SEM_TO_SD, _P92 + "; SD from SEM [U]"),
        "L5": (19.7, 0.49 * SEM_TO_SD, _P92 + "; SD from SEM [U]"),
        "S1": (14.0, 2.0, "[U] mean above the Pi17 lower normal limit of ~10 mm [V]"),
    },
    # ---------------------------------------------------------------- posterior elements
    "lamina_thickness_mm": {
        "T1": (6.6, 1.16, "[U] held at the Eg19 T2 value"),
        "T2": (6.60, 1.16, "Eg19 [V]"),
        "T9": (7.30, 1.24, "Eg19 [V]"),
        "L5": (9.4, 1.2, "KJPA96 [V] (thickest lamina); SD 1.2 [U] (Eg19 SDs)"),
        "S1": (8.0, 1.2, "[U] sacral lamina thinner than L5"),
    },
    "spinous_length_mm": {  # spinolaminar junction to tip; no per-level value published (gap 4)
        "T1": (30.0, 3.0, "[U] anchored so the Ma11 trend holds (about -4 mm to T5)"),
        "T5": (26.0, 3.0, "[U] Ma11 trend: minimum in the upper-mid thorax"),
        "L1": (33.0, 3.0, "[U] Ma11 trend: +7 mm to the upper lumbar spine"),
        "L2": (33.0, 3.0, "[U] Ma11 trend"),
        "L5": (25.0, 3.0, "[U] Ma11 trend: -8 mm towards L5 (smallest lumbar SP, PMC8664751)"),
        "S1": (12.0, 3.0, "[U] median sacral crest tubercle, short"),
    },
    "spinous_angle_deg": {  # caudal inclination of the process below the posterior (v) axis
        "T1": (30.11, 6.74, "K16 [V]"),
        "T6": (57.89, 9.31, "K16 [V] (steepest)"),
        "T12": (16.21, 7.38, "K16 [V]"),
        "L1": (10.0, 5.0, "[U] lumbar processes near horizontal (hatchet shape)"),
        "L3": (6.0, 5.0, "[U]"),
        "L4": (6.0, 5.0, "[U]"),
        "L5": (10.0, 5.0, "[U]"),
        "S1": (30.0, 5.0, "[U] median sacral crest follows the sacral kyphosis"),
    },
    "transverse_length_mm": {  # from the pedicle-lamina junction to the tip
        "T1": (23.54, 2.12, "K16 [V]"),
        "T7": (31.21, 1.91, "K16 [V] (longest)"),
        "T12": (12.11, 2.3, "K16 [V]"),
        "L1": (15.0, 2.5, "[U] Ma11 trend: TP length increases L1 -> L5 [V, qualitative]"),
        "L4": (21.0, 2.5, "[U] Ma11 trend"),
        "L5": (22.0, 2.5, "[U] Ma11 trend"),
        "S1": (22.0, 3.0, "[U] sacral ala lateral extent beyond the pedicle (model only)"),
    },
    # ---------------------------------------------------------------- disc below
    "disc_height_below_mm": {  # male; female in disc_height_below_female_mm
        "T1": (5.0, 1.0, "[U] inside the Ku11 4.5-7.2 mm range; SD 1.0 [U] (Fl15 SDs 0.7-1.3)"),
        "T2": (4.7, 1.0, "[U] Fl15: T4-5 same as or below T2-3"),
        "T3": (4.5, 1.0, "[U] Ku11 range minimum near T4-5 (Fl15)"),
        "T4": (4.5, 1.0, "[U] Ku11 range minimum at T4-5 (Fl15 smallest interspace)"),
        "T11": (5.5, 1.0, "[U] rising caudally (Fl15), joins Ba19 T12-L1"),
        "T12": (5.6, 1.1, "Ba19 M [S: CTSP]"),
        "L1": (6.9, 1.3, "Ba19 M [S: CTSP]"),
        "L2": (8.1, 1.4, "Ba19 M [S: CTSP]"),
        "L3": (8.7, 1.5, "Ba19 M [S: CTSP]"),
        "L4": (9.2, 1.6, "Ba19 M [S: CTSP]"),
        "L5": (8.8, 1.6, "Ba19 M [S: CTSP]"),
        "S1": (0.0, 0.0, "[U] S1-S2 fused (no disc)"),
    },
    "disc_height_below_female_mm": {
        "T1": (5.0 * FEMALE_THORACIC_DISC_SCALE, 1.0, "[U] male thoracic value x 0.95"),
        "T2": (4.7 * FEMALE_THORACIC_DISC_SCALE, 1.0, "[U] male thoracic value x 0.95"),
        "T3": (4.5 * FEMALE_THORACIC_DISC_SCALE, 1.0, "[U] male thoracic value x 0.95"),
        "T4": (4.5 * FEMALE_THORACIC_DISC_SCALE, 1.0, "[U] male thoracic value x 0.95"),
        "T11": (5.5 * FEMALE_THORACIC_DISC_SCALE, 1.0, "[U] male thoracic value x 0.95"),
        "T12": (4.8, 0.8, "Ba19 F [S: CTSP]"),
        "L1": (5.8, 0.9, "Ba19 F [S: CTSP]"),
        "L2": (6.9, 1.1, "Ba19 F [S: CTSP]"),
        "L3": (7.6, 1.2, "Ba19 F [S: CTSP]"),
        "L4": (8.5, 1.6, "Ba19 F [S: CTSP]"),
        "L5": (8.6, 1.8, "Ba19 F [S: CTSP]"),
        "S1": (0.0, 0.0, "[U] S1-S2 fused (no disc)"),
    },
}

#: Cortical shell of the body (mm).  The true vertebral shell is thinner (a few tenths of a
#: mm on micro-CT), but clinical CT at 0.6-1 mm voxels shows it ~1 mm thick through partial
#: volume; 1.0 mm lumbar / 0.9 mm thoracic [U].  Osteoporotic: x 0.6 [U] (cortical thinning).
CORTEX_MM: dict[str, float] = {"thoracic": 0.9, "lumbar": 1.0, "sacral": 1.0}
OSTEOPOROTIC_CORTEX_SCALE: float = 0.6

#: Cancellous attenuation (HU).  Normal ~200 HU at L1 [U] (well above the 160 HU opportunistic
#: threshold, Pickhardt 2013 via morphometry.md section 10 [S]); osteoporotic 60 HU
#: (spec.PathologySpec.osteoporotic, below the 110 HU specific threshold).
CANCELLOUS_HU: dict[str, float] = {"normal": 200.0, "osteoporotic": 60.0}


def _fill(anchors: dict[str, Anchor]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Means (18,), SDs (18,) and sources (18,) with gaps linearly interpolated."""
    idx = np.array([LEVELS.index(k) for k in anchors])
    order = np.argsort(idx)
    idx = idx[order]
    keys = [list(anchors)[i] for i in order]
    means = np.array([anchors[k][0] for k in keys], float)
    sds = np.array([anchors[k][1] for k in keys], float)
    allx = np.arange(len(LEVELS))
    m = np.interp(allx, idx, means)
    s = np.interp(allx, idx, sds)
    src: list[str] = []
    for i, lev in enumerate(LEVELS):
        if lev in anchors:
            src.append(anchors[lev][2])
            continue
        lo = idx[idx < i]
        hi = idx[idx > i]
        if len(lo) and len(hi):
            src.append(f"[U] linear interpolation {LEVELS[lo[-1]]}-{LEVELS[hi[0]]}")
        else:
            near = lo[-1] if len(lo) else hi[0]
            src.append(f"[U] held at the {LEVELS[near]} value")
    return m, s, src


_TABLE: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {q: _fill(a) for q, a in ANCHORS.items()}

#: Quantities available from :func:`level_dims`.
QUANTITIES: tuple[str, ...] = tuple(ANCHORS)


def _check(level: str) -> int:
    if level not in LEVELS:
        raise KeyError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
    return LEVELS.index(level)


def level_dims(level: str) -> dict[str, float]:
    """Published mean dimensions (male) of one level.

    Parameters
    ----------
    level : str
        ``"T1"`` ... ``"S1"``.

    Returns
    -------
    dict[str, float]
        Quantity (see :data:`QUANTITIES`) -> mean, mm or degrees.
    """
    i = _check(level)
    return {q: float(t[0][i]) for q, t in _TABLE.items()}


def level_sd(level: str) -> dict[str, float]:
    """SD of every quantity at ``level`` (mm / deg; Panjabi SEMs already converted)."""
    i = _check(level)
    return {q: float(t[1][i]) for q, t in _TABLE.items()}


def level_sources(level: str) -> dict[str, str]:
    """Source key and mark ([V]/[S]/[U]) of every quantity at ``level``."""
    i = _check(level)
    return {q: t[2][i] for q, t in _TABLE.items()}


def table() -> dict[str, dict[str, tuple[float, float, str]]]:
    """The whole table: level -> quantity -> (mean, SD, source)."""
    return {
        lev: {q: (float(t[0][i]), float(t[1][i]), t[2][i]) for q, t in _TABLE.items()}
        for i, lev in enumerate(LEVELS)
    }


def truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], limit: float = TRUNCATE_SD) -> np.ndarray:
    """Standard normal deviates truncated at +-``limit`` (deterministic given ``rng``).

    Draws a fixed block of candidates and resamples the rejected ones a bounded number of
    times, then clips, so the number of rng calls does not depend on the values drawn... up to
    the (astronomically rare) clip.
    """
    z = rng.standard_normal(shape)
    for _ in range(8):
        bad = np.abs(z) > limit
        if not bad.any():
            break
        z[bad] = rng.standard_normal(int(bad.sum()))
    return np.clip(z, -limit, limit)


#: Upper bound of canal width / body width after jitter (see :func:`patient_dims`) [U].
MAX_CANAL_BODY_RATIO = 0.65


def patient_dims(
    level: str, z: dict[str, float] | None = None, variation: float = 1.0, sex: str = "male"
) -> dict[str, float]:
    """Mean + jitter + sex scaling for one level.

    Parameters
    ----------
    level : str
    z : dict[str, float] or None
        Standard deviates per quantity (already truncated); None = the mean anatomy.
    variation : float
        Multiplier on the SDs; the resulting deviation is clipped to +-:data:`TRUNCATE_SD` SD.
    sex : "male" | "female"

    Returns
    -------
    dict[str, float]
        Quantity -> value (``disc_height_below_mm`` already sex-specific; the
        ``disc_height_below_female_mm`` key is dropped).
    """
    mean, sd = level_dims(level), level_sd(level)
    out: dict[str, float] = {}
    for q in QUANTITIES:
        if q == "disc_height_below_female_mm":
            continue
        key = "disc_height_below_female_mm" if (q == "disc_height_below_mm" and sex == "female") else q
        dev = 0.0
        if z is not None:
            dev = float(np.clip(variation * z.get(q, 0.0), -TRUNCATE_SD, TRUNCATE_SD))
        val = mean[key] + dev * sd[key]
        if sex == "female":
            if q in INPLANE_KEYS:
                val *= FEMALE_INPLANE_SCALE
            elif q in CANAL_KEYS:
                val *= FEMALE_CANAL_SCALE
        out[q] = float(val)
    # Independent jitter can pair a wide canal with a narrow body, which no spine has and
    # which leaves no room for the pedicles.  Published means give canal/body width ratios
    # of 0.57 (P91 T12: 22.2/39.2), 0.58 (P92 L1: 23.7/41.2) and 0.57 (P92 L5: 27.1/47.3);
    # the ratio is capped at MAX_CANAL_BODY_RATIO [U: mean + a margin for spread].
    if "canal_width_mm" in out and "body_width_mm" in out:
        out["canal_width_mm"] = min(out["canal_width_mm"], MAX_CANAL_BODY_RATIO * out["body_width_mm"])
    return out
