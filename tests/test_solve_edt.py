"""Compiled distance-field kernels (planner.solve.edt) against scipy / numpy references, and
the scene's fields against the scipy-built ones they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from planner.labels.registry import LABEL_IDS, LABEL_NAMES
from planner.segment.fields import _sdf_array
from planner.solve import edt
from planner.solve.config import OBSTACLE_CLASSES, SolverOptions
from planner.solve.scene import DISTANCE_CAP_MM, structure_class

SP = (0.7, 1.3, 2.1)
SHAPES = [(17, 23, 9), (1, 30, 7), (12, 1, 1), (1, 1, 1), (31, 19, 26), (5, 1, 13)]


# --------------------------------------------------------------- scipy references
# (the scene's former scipy/numpy field code, kept here as the reference)
def ref_edt_outside(mask, spacing, indices=False):
    if not mask.any():
        d = np.full(mask.shape, DISTANCE_CAP_MM, np.float32)
        return (d, None) if indices else d
    half = 0.5 * float(np.min(spacing))
    if indices:
        d, ind = ndimage.distance_transform_edt(~mask, sampling=spacing, return_indices=True)
    else:
        d, ind = ndimage.distance_transform_edt(~mask, sampling=spacing), None
    d = np.maximum(d - half, 0.0)
    d[mask] = -half
    np.minimum(d, DISTANCE_CAP_MM, out=d)
    d = d.astype(np.float32)
    return (d, ind) if indices else d


def ref_sdf(mask, spacing):
    return np.clip(_sdf_array(mask, spacing), -DISTANCE_CAP_MM, DISTANCE_CAP_MM)


def ref_pool(x, stride, how):
    cs = tuple(n // s for n, s in zip(x.shape, stride))
    x = x[: cs[0] * stride[0], : cs[1] * stride[1], : cs[2] * stride[2]]
    r = x.reshape(cs[0], stride[0], cs[1], stride[1], cs[2], stride[2])
    return r.any(axis=(1, 3, 5)) if how == "any" else r.max(axis=(1, 3, 5))


def ref_class_fields(arr, stride, sp, ids_by_margin):
    cshape = tuple(int(n // st) for n, st in zip(arr.shape, stride))
    pooled = bool(np.any(np.asarray(stride) > 1))
    F = np.full(cshape, DISTANCE_CAP_MM, np.float32)
    ID = np.zeros(cshape, np.int32)
    for m, members in sorted(ids_by_margin.items()):
        for_members = np.isin(arr, members)
        if not for_members.any():
            continue
        mask = ref_pool(for_members, stride, "any") if pooled else for_members
        d, ind = ref_edt_outside(mask, sp, indices=True)
        d = d - np.float32(m)
        better = d < F
        F[better] = d[better]
        lab_c = ref_pool(np.where(for_members, arr, 0), stride, "max") if pooled else np.where(for_members, arr, 0)
        near = lab_c[ind[0], ind[1], ind[2]]
        ID[better] = near[better]
    return F, ID


def ref_common(scene, options, sl):
    stride, _ = scene._coarse_frame(options)
    arr = np.ascontiguousarray(scene.labels.array[sl])
    grid = scene._coarse_grid(sl, stride)
    groups: dict[float, list[int]] = {}
    present = {c: False for c in OBSTACLE_CLASSES}
    for i in np.unique(arr):
        name = LABEL_NAMES.get(int(i)) if i else None
        if name is None:
            continue
        c = structure_class(name, None)
        if c is None or c == "other_bone" or name == "other_metal":
            continue
        groups.setdefault(options.margins[c], []).append(int(i))
        present[c] = True
    F, ID = ref_class_fields(arr, stride, grid.spacing, groups)
    metal_id = LABEL_IDS.get("other_metal", 499)
    metal = ref_class_fields(arr, stride, grid.spacing, {options.margins["hardware"]: [metal_id]})
    better = metal[0] < F
    F[better] = metal[0][better]
    ID[better] = metal[1][better]
    present["hardware"] = present["hardware"] or bool((arr == metal_id).any())
    inside = arr > 0
    if np.any(stride > 1):
        inside = ref_pool(inside, stride, "any")
    return {"F": F, "ID": ID, "skin": ref_sdf(inside, grid.spacing), "present": present}


def ref_fields(scene, level, options, common_slices):
    """The former ``Scene.fields`` (scipy), on the common crop ``common_slices``."""
    from planner.solve.scene import Grid

    geo = scene.level(level)
    lab = scene.labels
    common = ref_common(scene, options, common_slices)
    stride, full = scene._coarse_frame(options)
    sl = scene._crop(scene._level_box(level), stride, full)
    csl = tuple(slice((s_.start - c.start) // st, (s_.stop - c.start) // st) for s_, c, st in zip(sl, common_slices, stride))
    grid = scene._coarse_grid(sl, stride)
    F = np.array(common["F"][csl])
    ID = np.array(common["ID"][csl])
    skin = np.array(common["skin"][csl])
    present = dict(common["present"])
    arr = lab.array[sl]
    other = [int(i) for i in np.unique(arr) if i and int(i) in LABEL_NAMES and structure_class(LABEL_NAMES[int(i)], level) == "other_bone"]
    if other:
        Fo, IDo = ref_class_fields(np.ascontiguousarray(arr), stride, grid.spacing, {options.margins["other_bone"]: other})
        better = Fo < F
        F[better] = Fo[better]
        ID[better] = IDo[better]
        present["other_bone"] = True
    pts = geo.to_world(np.array([[a, b, c] for a in (geo.lo[0] - 25, geo.hi[0] + 25)
                                 for b in (geo.lo[1] - 10, geo.hi[1] + 45) for c in (geo.lo[2] - 12, geo.hi[2] + 12)]))
    lsl = full.index_box(pts.min(0), pts.max(0), pad=2)
    larr = lab.array[lsl]
    local = Grid(lab.lps_from_ijk, larr.shape)
    body = ref_sdf(larr == LABEL_IDS[f"{level}_body"], local.spacing)
    ped = {s_: ref_sdf(larr == LABEL_IDS[f"{level}_pedicle_{s_}"], local.spacing) for s_ in ("left", "right")}
    return {"F": F, "ID": ID, "skin": skin, "body": body, "pedicle": ped, "present": present}


def _masks(rng):
    for shape in SHAPES:
        for p in (0.002, 0.03, 0.3, 0.9):
            m = rng.random(shape) < p
            if not m.any():
                m.flat[rng.integers(m.size)] = True
            yield m


# --------------------------------------------------------------- transforms
def test_edt_matches_scipy_and_features_are_nearest(rng):
    for m in _masks(rng):
        ref, ind = ndimage.distance_transform_edt(~m, sampling=SP, return_indices=True)
        d, ft = edt.edt(m, SP, return_features=True)
        # ties break as scipy's (same axis order, same arithmetic where it decides)
        assert (ft == np.ravel_multi_index(tuple(ind), m.shape)).mean() >= 0.999
        np.testing.assert_allclose(d, ref, rtol=0, atol=1e-9)
        np.testing.assert_allclose(np.sqrt(edt.edt_sq(m, SP)), ref, rtol=0, atol=1e-9)
        assert ft.dtype == np.int32 and ft.min() >= 0
        assert m.reshape(-1)[ft].all()  # the feature is a feature voxel
        c = np.stack(np.unravel_index(ft, m.shape))
        g = np.indices(m.shape)
        dist = np.sqrt((((c - g) * np.array(SP)[:, None, None, None]) ** 2).sum(0))
        np.testing.assert_allclose(dist, ref, rtol=0, atol=1e-9)
        # inverted features: distance to the nearest zero voxel
        if not m.all():
            np.testing.assert_allclose(edt.edt(m, SP, invert=True), ndimage.distance_transform_edt(m, sampling=SP),
                                       rtol=0, atol=1e-9)


def test_edt_empty_full_noncontiguous(rng):
    m = np.zeros((6, 1, 4), bool)
    sq, ft = edt.edt_sq(m, SP, return_features=True)
    assert np.isinf(sq).all() and (ft == -1).all()  # no feature: +inf, -1 (callers guard)
    full = np.ones((4, 5, 3), bool)
    d, ft = edt.edt(full, SP, return_features=True)
    assert (d == 0).all() and (ft == np.arange(full.size).reshape(full.shape)).all()
    base = rng.random((20, 14, 30)) < 0.05
    for view in (base[::2, :, 1::3], base.transpose(2, 0, 1), base[:, ::-1]):
        assert not view.flags.c_contiguous
        np.testing.assert_allclose(edt.edt(view, SP), ndimage.distance_transform_edt(~view, sampling=SP), atol=1e-9)
    u8 = (rng.random((9, 8, 7)) < 0.1).astype(np.uint8) * 7
    np.testing.assert_allclose(edt.edt(u8, SP), ndimage.distance_transform_edt(u8 == 0, sampling=SP), atol=1e-9)
    # zero-size grids pass through
    assert edt.edt_sq(np.zeros((0, 3, 4), bool), SP).shape == (0, 3, 4)
    assert edt.signed_distance(np.zeros((3, 0, 4), bool), SP, 30.0).shape == (3, 0, 4)
    # deterministic
    m = rng.random((25, 21, 17)) < 0.2
    a, b = edt.edt_sq(m, SP, return_features=True), edt.edt_sq(m, SP, return_features=True)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_thread_count_does_not_change_results(rng):
    import numba

    m = rng.random((100, 90, 96)) < 0.01
    assert m.size >= edt.PARALLEL_MIN_VOXELS
    lab = _random_labels(rng, (100, 90, 96), [3, 17, 40], p_bg=0.9)
    lut = np.full(50, -1, np.int32)
    lut[[3, 17, 40]] = [0, 1, 1]
    runs = []
    prev = numba.get_num_threads()
    for n in sorted({1, prev}):
        numba.set_num_threads(n)
        try:
            runs.append((edt.edt_sq(m, SP, return_features=True), edt.signed_distance(m, SP, 30.0),
                         edt.pool_groups(lab, (2, 2, 3), lut)))
        finally:
            numba.set_num_threads(prev)
    for a, b in zip(runs[0], runs[-1]):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert np.array_equal(x, y)


def test_signed_distance_matches_sdf_array(rng):
    from planner.solve.scene import _sdf

    for m in _masks(rng):
        if m.all():
            continue
        np.testing.assert_allclose(edt.signed_distance(m, SP), _sdf_array(m, np.array(SP)), rtol=0, atol=1e-4)
        got = _sdf(m, np.array(SP))
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref_sdf(m, np.array(SP)), rtol=0, atol=1e-4)
    empty, full = np.zeros((4, 3, 5), bool), np.ones((4, 3, 5), bool)
    assert (edt.signed_distance(empty, SP) == np.inf).all() and (edt.signed_distance(full, SP) == -np.inf).all()
    np.testing.assert_array_equal(_sdf(empty, np.array(SP)), ref_sdf(empty, np.array(SP)))
    np.testing.assert_array_equal(_sdf(full, np.array(SP)), ref_sdf(full, np.array(SP)))
    # a blob touching the border (the inside transform runs on the blob's box only)
    g = np.indices((30, 22, 14)).astype(float)
    blob = ((g[0] - 3) ** 2 / 60 + (g[1] - 11) ** 2 / 30 + (g[2] - 13) ** 2 / 20) < 1
    np.testing.assert_allclose(edt.signed_distance(blob, SP), _sdf_array(blob, np.array(SP)), atol=1e-4)
    view = blob.transpose(1, 2, 0)[::-1]
    np.testing.assert_allclose(edt.signed_distance(view, SP), _sdf_array(view, np.array(SP)), atol=1e-4)


def test_outside_distance_matches_reference(rng):
    for m in _masks(rng):
        ref, ind = ref_edt_outside(m, np.array(SP), indices=True)
        d, ft = edt.outside_distance(m, SP, DISTANCE_CAP_MM, return_features=True)
        assert d.dtype == np.float32
        np.testing.assert_allclose(d, ref, rtol=0, atol=1e-4)
        assert m.reshape(-1)[ft].all()


# --------------------------------------------------------------- pooling
def _random_labels(rng, shape, ids, p_bg=0.8):
    lab = rng.choice(np.asarray(ids, np.uint16), size=shape)
    lab[rng.random(shape) < p_bg] = 0
    return lab


@pytest.mark.parametrize("stride", [(1, 1, 1), (2, 2, 2), (2, 1, 3), (3, 4, 1)])
def test_pool_groups_matches_numpy(rng, stride):
    ids = [3, 17, 40, 41, 120, 451, 600]  # 600: beyond the table
    lab = _random_labels(rng, (12 * 1 + 12, 16, 9 * 2 + 3), ids)
    groups = [[3, 451], [17], [40, 41, 120], [999]]
    lut = np.full(500, -1, np.int32)
    for g, m in enumerate(groups):
        lut[[i for i in m if i < 500]] = g
    for arr in (lab, lab[1:, ::-1, :], lab.transpose(1, 0, 2)):
        anyg, maxg, nz, seen = edt.pool_groups(arr, stride, lut, len(groups))
        for g, m in enumerate(groups):
            fm = np.isin(arr, m)
            np.testing.assert_array_equal(anyg[g], ref_pool(fm, stride, "any"))
            np.testing.assert_array_equal(maxg[g], ref_pool(np.where(fm, arr, 0), stride, "max"))
        np.testing.assert_array_equal(nz, ref_pool(arr > 0, stride, "any"))
        cs = tuple(n // s * s for n, s in zip(arr.shape, stride))
        present = np.unique(arr[: cs[0], : cs[1], : cs[2]])
        assert sorted(np.flatnonzero(seen)) == sorted(int(i) for i in present if i < 500)


# --------------------------------------------------------------- class fields
def _id_consistent(F, ID, arr, stride, sp, groups, where):
    """At ``where``, ``ID`` names a structure whose pooled voxels are as near as ``F`` says."""
    ok = np.ones(int(where.sum()), bool)
    ids_at = ID[where]
    for m, members in groups:
        for lid in set(ids_at.tolist()) & set(members):
            fm = np.isin(arr, members)
            lab_c = ref_pool(np.where(fm, arr, 0), stride, "max")
            d = ref_edt_outside(lab_c == lid, sp) - np.float32(m)
            sel = ids_at == lid
            ok[sel] = np.abs(d[where][sel] - F[where][sel]) <= 1e-4
    return ok


@pytest.mark.parametrize("stride", [(1, 1, 1), (2, 2, 2), (2, 1, 3)])
def test_class_fields_match_reference(rng, stride, case_example_scene):
    ids = [LABEL_IDS["T12_disc"], LABEL_IDS["spinal_canal"], LABEL_IDS["aorta"], LABEL_IDS["T12_rib_left"],
           LABEL_IDS["T12_body"]]
    lab = _random_labels(rng, (26, 22, 18), ids, p_bg=0.97)
    st = np.array(stride)
    cshape = tuple(n // s for n, s in zip(lab.shape, st))
    arr = lab[: cshape[0] * st[0], : cshape[1] * st[1], : cshape[2] * st[2]]
    sp = np.array(SP) * st
    groups = [(0.0, [ids[3]]), (1.0, [ids[0], ids[4]]), (2.0, [ids[1], ids[2]]), (2.0, [499])]
    F, ID, have, nz, seen = case_example_scene._class_fields(arr, st, sp, groups)
    # reference: the margin groups, then metal, as the scene did
    Fr, IDr = ref_class_fields(arr, st, sp, {m: ids_ for m, ids_ in groups[:3]})
    np.testing.assert_allclose(F, Fr, rtol=0, atol=1e-4)
    assert have == [True, True, True, False]
    differ = ID != IDr
    assert _id_consistent(F, ID, arr, st, sp, groups, differ).all()
    # in place onto existing fields: the same as the min of the two
    F0 = np.full(cshape, DISTANCE_CAP_MM, np.float32)
    F0[::2] = rng.uniform(-1, 20, F0[::2].shape).astype(np.float32)
    ID0 = np.where(F0 < DISTANCE_CAP_MM, 7, 0).astype(np.int32)
    Fi, IDi = F0.copy(), ID0.copy()
    case_example_scene._class_fields(arr, st, sp, groups[1:2], Fi, IDi)
    Fo, IDo = ref_class_fields(arr, st, sp, {1.0: groups[1][1]})
    better = Fo < F0
    Fr, IDr = F0.copy(), ID0.copy()
    Fr[better], IDr[better] = Fo[better], IDo[better]
    np.testing.assert_allclose(Fi, Fr, rtol=0, atol=1e-4)
    differ = IDi != IDr
    assert not (differ & ((IDi == 7) | (IDr == 7))).any()  # same voxels updated
    assert _id_consistent(Fi, IDi, arr, st, sp, groups[1:2], differ).all()


# --------------------------------------------------------------- the scene's fields
def test_scene_fields_match_scipy(case_example_scene):
    scene = case_example_scene
    opt = SolverOptions()
    lf = scene.fields("L4", opt)
    key = (tuple(sorted(opt.margins.items())), float(opt.field_spacing_mm))
    common = scene._common[key]
    ref = ref_fields(scene, "L4", opt, common["slices"])
    assert lf.classes_present == ref["present"]
    np.testing.assert_allclose(lf.F, ref["F"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(lf.skin, ref["skin"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(lf.body, ref["body"], rtol=0, atol=1e-4)
    for side in ("left", "right"):
        np.testing.assert_allclose(lf.pedicle[side], ref["pedicle"][side], rtol=0, atol=1e-4)
    assert lf.F.dtype == np.float32 and lf.ID.dtype == np.int32 and lf.skin.dtype == np.float32
    same = lf.ID == ref["ID"]
    # where the ids differ (if ever), the chosen structure is as near (within 1e-4 mm): a tie
    if not same.all():
        _assert_ties(scene, opt, lf, common["slices"], ~same)
    assert same.mean() > 0.999


def _assert_ties(scene, opt, lf, common_slices, where):
    stride, full = scene._coarse_frame(opt)
    sl = scene._crop(scene._level_box(lf.level), stride, full)
    csl = tuple(slice((s_.start - c.start) // st, (s_.stop - c.start) // st) for s_, c, st in zip(sl, common_slices, stride))
    metal = LABEL_IDS.get("other_metal", 499)
    for i in sorted(set(lf.ID[where].tolist())):
        name = LABEL_NAMES[int(i)]
        c = structure_class(name, lf.level)
        if c == "other_bone":  # per level, on the level crop
            grp = [j for j, n in LABEL_NAMES.items() if structure_class(n, lf.level) == "other_bone"]
            arr, sub, m = scene.labels.array[sl], (slice(None),) * 3, opt.margins["other_bone"]
        else:  # the common margin group, on the common crop
            m = opt.margins["hardware" if i == metal else c]
            grp = [metal] if i == metal else [
                j for j, n in LABEL_NAMES.items()
                if structure_class(n, None) not in (None, "other_bone") and n != "other_metal"
                and opt.margins[structure_class(n, None)] == m]
            arr, sub = scene.labels.array[common_slices], csl
        fm = np.isin(arr, grp)
        lab_c = ref_pool(np.where(fm, arr, 0), stride, "max")
        sp = np.linalg.norm(scene.labels.lps_from_ijk[:3, :3], axis=0) * stride
        d = (ref_edt_outside(lab_c == i, sp) - np.float32(m))[sub]
        sel = where & (lf.ID == i)
        np.testing.assert_allclose(d[sel], lf.F[sel], rtol=0, atol=1e-4)
