"""Stage 1 of the solver: dense, vectorised evaluation of straight candidate trajectories.

A candidate is a target point ``T`` inside the body and a unit direction ``d`` pointing from
the target toward the skin; the needle axis is ``x(t) = T + t d`` for ``0 <= t <= t_skin``.
For a whole array of candidates at once (no per-candidate Python loop) this module finds

* ``t_body``: where the axis leaves the target body (sphere tracing its signed distance),
* ``t_skin``: where it leaves the body outline, and on the way the smallest value of the
  obstacle field ``F`` (``min_c d_c - margin_c``) with the structure that attains it,
* the route: *transpedicular* when the axis runs ``pedicle_min_inside_mm`` inside the pedicle
  of its side behind the body entry; otherwise *parapedicular*, *superior extrapedicular* or
  *inferior extrapedicular* by where it enters the body relative to the pedicle's band,
* the scalar checks: depth against the usable length, tilt and cranio-caudal angle, the
  axis leaving the body once (no exit through the lateral cortex and re-entry).

Sphere tracing is conservative for a 1-Lipschitz field: a step of ``F(x) - r`` cannot
jump over a point where ``F < r``; below ``r`` it advances by ``step_min_mm``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.solve import kernels
from planner.solve.config import SolverOptions
from planner.solve.scene import LevelFields, LevelGeometry

ROUTES: tuple[str, ...] = ("transpedicular", "parapedicular", "extrapedicular_superior", "extrapedicular_inferior")

#: Working cannulas (kyphoplasty, curved needle) stop this far inside the body, past the
#: posterior wall (mm) [U]: "access cannula to the posterior third of the body"
#: (instruments.md 2, SpineJack row [S]).
CANNULA_IN_BODY_MM = 5.0

#: Bits of the ``fail`` mask (stage 1).
FAIL_BITS: dict[str, int] = {
    "obstacle": 1,  # F below the needle radius somewhere along the axis
    "depth": 2,  # skin-to-target depth beyond the usable length
    "tilt": 4,  # angle from vertical beyond max_tilt_deg
    "craniocaudal": 8,  # cranio-caudal angle beyond max_craniocaudal_deg
    "reentry": 16,  # axis leaves the target body and re-enters it
    "no_skin": 32,  # no skin exit within reach (field box edge)
    "wrong_side": 64,  # enters the body on the other side of the midline
}


@dataclass
class Candidates:
    """Arrays over n candidates (all LPS mm / degrees)."""

    target: np.ndarray  # (n, 3)
    direction: np.ndarray  # (n, 3) target -> skin
    side: np.ndarray  # (n,) 0 left, 1 right
    t_body: np.ndarray
    t_skin: np.ndarray
    f_min: np.ndarray  # smallest obstacle field value along the axis (mm)
    f_id: np.ndarray  # structure id at that point
    f_t: np.ndarray  # where (t)
    t_cannula: np.ndarray  # where the working cannula's tip sits (t; CANNULA_IN_BODY_MM past the body entry)
    f_min_outer: np.ndarray  # smallest F on the cannula part [t_cannula, t_skin]
    f_id_outer: np.ndarray  # structure id there
    route: np.ndarray  # index into ROUTES
    pedicle_mm: np.ndarray  # axis length inside the pedicle of its side
    tilt_deg: np.ndarray
    cc_deg: np.ndarray
    fail: np.ndarray  # bit mask (radius-independent checks + obstacle at the trace radius)

    def __len__(self) -> int:
        return len(self.t_skin)

    def take(self, idx: np.ndarray) -> Candidates:
        return Candidates(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})

    @property
    def skin_entry(self) -> np.ndarray:
        return self.target + self.t_skin[:, None] * self.direction

    @property
    def cannula_tip(self) -> np.ndarray:
        return self.target + self.t_cannula[:, None] * self.direction

    @property
    def body_entry(self) -> np.ndarray:
        return self.target + self.t_body[:, None] * self.direction


def field_tolerance(opt: SolverOptions, fields: LevelFields) -> float:
    """Stage-1 tolerance: the option, or the field grid's half diagonal when larger."""
    return max(opt.field_tolerance_mm, 0.87 * float(fields.grid.spacing.max()))


def targets(geo: LevelGeometry, fields: LevelFields, opt: SolverOptions) -> np.ndarray:
    """Target points (m, 3) in the anterior and middle thirds, paramedian, mid height.

    The grid of ``opt.target_grid`` over the normalised ranges, plus, for every (u, w)
    column of it, the most anterior point that keeps ``target_margin_mm`` from the body's
    surface (0.5 mm steps): the deepest target a kyphoplasty channel can aim at.
    """
    nu, nv, nw = opt.target_grid
    u = np.linspace(-opt.target_u_fraction, opt.target_u_fraction, nu) * geo.half[0]
    v = np.linspace(*opt.target_v_range, nv) * geo.half[1]
    w = np.linspace(-opt.target_w_fraction, opt.target_w_fraction, nw) * geo.half[2]
    q = np.stack(np.meshgrid(u, v, w, indexing="ij"), -1).reshape(-1, 3)
    # the anterior limit per column: scan v from in front of the body to its centre
    vs = np.arange(geo.lo[1] - 2.0, 0.0, 0.5)
    cu, cw = np.meshgrid(u, w, indexing="ij")
    cols = np.stack([cu.ravel(), cw.ravel()], -1)
    scan = np.stack(np.broadcast_arrays(cols[:, None, 0], vs[None, :], cols[:, None, 1]), -1)
    sd = fields.local.sample(fields.body, geo.to_world(scan.reshape(-1, 3))).reshape(len(cols), len(vs))
    ok = sd <= -opt.target_margin_mm
    has = ok.any(1)
    first = np.argmax(ok, axis=1)
    front = np.stack([cols[:, 0], vs[first] + 0.5, cols[:, 1]], -1)[has]
    q = np.concatenate([q, front])
    p = geo.to_world(q)
    inside = fields.local.sample(fields.body, p) <= -opt.target_margin_mm
    ok = inside & (fields.grid.sample(fields.F, p) > 0.0)
    return p[ok]


def directions(geo: LevelGeometry, side: str, alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """Unit directions (target -> skin) for every (alpha, beta) pair, LPS."""
    s = 1.0 if side == "left" else -1.0
    a = np.deg2rad(alphas)[:, None]
    b = np.deg2rad(betas)[None, :]
    ca, sa, cb, sb = np.cos(a), np.sin(a), np.cos(b), np.sin(b)
    loc = np.stack(np.broadcast_arrays(s * sa * cb, ca * cb, sb), -1).reshape(-1, 3)
    return loc @ geo.R.T


def evaluate(
    T: np.ndarray,
    D: np.ndarray,
    side: np.ndarray,
    geo: LevelGeometry,
    fields: LevelFields,
    opt: SolverOptions,
    radius: float,
    max_length: float,
    tol: float = 1.0,
) -> Candidates:
    """Stage-1 evaluation of candidates (target ``T`` (n,3), direction ``D`` (n,3)).

    ``radius`` is the largest instrument radius to trace with (the trace is exact below
    it up to ``step_min_mm`` sampling); ``f_min`` is reported so that smaller radii can be
    decided without another trace.  ``max_length`` is the longest usable instrument length
    (the depth check uses the shortest insertion any instrument needs: a kyphoplasty or
    curved-needle cannula stops ``CANNULA_IN_BODY_MM`` inside the body).
    """
    n = len(T)
    T = np.ascontiguousarray(np.asarray(T, float).reshape(-1, 3))
    D = np.asarray(D, float).reshape(-1, 3)
    if n == 0:
        z = np.zeros(0)
        zi = np.zeros(0, np.int32)
        return Candidates(T, D, np.zeros(0, np.int8), z, z, z, zi, z, z, z, zi, np.zeros(0, np.int8), z, z, z, np.zeros(0, np.int16))
    smin = float(opt.step_min_mm)
    grid = fields.grid
    reach = float(max_length) + 10.0
    # 1. leave the target body; 2. the skin: sphere trace of the outline's signed distance
    # from the body entry; 3. obstacles, in two parts: the cannula part [t_cannula, t_skin]
    # (every instrument passes it) first, then the channel [0, t_cannula] inside the body
    # (only the straight needle and the kyphoplasty channel / bone tamp use it; a curved
    # needle leaves the cannula tip on an arc instead).  A candidate that clearly collides
    # on the cannula part is decided there; its binding structure is the first it hits
    # going out.  One compiled pass per ray (:func:`planner.solve.kernels.trace_candidates`).
    stop_below = radius - float(tol) - 1.0
    f32 = np.float32
    serial = n < kernels.SERIAL_BELOW_RAYS
    trace = kernels.trace_candidates_serial if serial else kernels.trace_candidates
    t_body, t_skin, t_cannula, f_out, t_out, f_in, t_in = trace(
        np.ascontiguousarray(T), np.ascontiguousarray(D),
        np.ascontiguousarray(fields.body, dtype=f32), fields.local._M, fields.local._o,
        np.ascontiguousarray(fields.skin, dtype=f32), np.ascontiguousarray(fields.F, dtype=f32),
        grid._M, grid._o, grid._hi, smin, reach, float(radius), float(stop_below), float(CANNULA_IN_BODY_MM))
    inner_lower = f_in < f_out
    f_min = np.where(inner_lower, f_in, f_out)
    f_t = np.where(inner_lower, t_in, t_out)
    f_id_outer = grid.nearest(fields.ID, T + t_out[:, None] * D)
    fp = T + f_t[:, None] * D
    f_id = grid.nearest(fields.ID, fp)
    # 4. route: pedicle passage behind the body entry, then where the body is entered
    k = np.arange(1.0, 25.0, 2.0)
    loc = fields.local
    inside_ped, reentry = (kernels.route_samples_serial if serial else kernels.route_samples)(
        T, np.ascontiguousarray(D), np.ascontiguousarray(t_body, dtype=np.float64), np.ascontiguousarray(side, dtype=np.int64),
        np.ascontiguousarray(fields.pedicle["left"], dtype=f32), np.ascontiguousarray(fields.pedicle["right"], dtype=f32),
        np.ascontiguousarray(fields.body, dtype=f32), loc._M, loc._o, k)
    pedicle_mm = 2.0 * inside_ped.astype(float)  # 2 mm samples
    be = geo.to_local(T + t_body[:, None] * D)
    sgn = np.where(side == 0, 1.0, -1.0)
    route = np.full(n, 1, np.int8)
    w_lo = np.array([geo.pedicles.get(s, {}).get("w_lo", -geo.half[2] / 3) for s in ("left", "right")])[side]
    w_hi = np.array([geo.pedicles.get(s, {}).get("w_hi", geo.half[2] / 3) for s in ("left", "right")])[side]
    route[be[:, 2] > w_hi] = 2
    route[be[:, 2] < w_lo] = 3
    route[pedicle_mm >= opt.pedicle_min_inside_mm] = 0
    # 4. scalar checks
    vertical = np.array([0.0, 1.0, 0.0])  # posterior: prone patient, C-arm vertical
    tilt = np.degrees(np.arccos(np.clip(D @ vertical, -1, 1)))
    cc = np.degrees(np.arcsin(np.clip(np.abs(D[:, 2]), 0, 1)))
    fail = np.zeros(n, np.int16)
    fail |= np.where(f_min < radius, 1, 0).astype(np.int16)
    depth_ok = (np.nan_to_num(t_skin, nan=np.inf) - t_body + CANNULA_IN_BODY_MM) <= max_length - opt.skin_allowance_mm
    fail |= np.where(~depth_ok, 2, 0).astype(np.int16)
    fail |= np.where(tilt > opt.max_tilt_deg, 4, 0).astype(np.int16)
    fail |= np.where(cc > opt.max_craniocaudal_deg, 8, 0).astype(np.int16)
    fail |= np.where(reentry, 16, 0).astype(np.int16)
    fail |= np.where(np.isnan(t_skin), 32, 0).astype(np.int16)
    fail |= np.where(sgn * be[:, 0] < -2.0, 64, 0).astype(np.int16)
    return Candidates(
        target=T,
        direction=D,
        side=np.asarray(side, np.int8),
        t_body=t_body,
        t_skin=np.nan_to_num(t_skin, nan=np.inf),
        f_min=f_min.astype(float),
        f_id=f_id,
        f_t=f_t,
        t_cannula=t_cannula,
        f_min_outer=f_out.astype(float),
        f_id_outer=f_id_outer,
        route=route,
        pedicle_mm=pedicle_mm,
        tilt_deg=tilt,
        cc_deg=cc,
        fail=fail,
    )


def search_side(
    geo: LevelGeometry,
    fields: LevelFields,
    side: str,
    opt: SolverOptions,
    radius: float,
    max_length: float,
    step_deg: float | None = None,
    tgt: np.ndarray | None = None,
) -> Candidates:
    """All (target, direction) pairs of one side on the angle grid, evaluated."""
    step = float(step_deg or opt.coarse_step_deg)
    al = np.arange(opt.alpha_range_deg[0], opt.alpha_range_deg[1] + 1e-9, step)
    be = np.arange(opt.beta_range_deg[0], opt.beta_range_deg[1] + 1e-9, step)
    dirs = directions(geo, side, al, be)
    if tgt is None:
        tgt = targets(geo, fields, opt)
    T = np.repeat(tgt, len(dirs), axis=0)
    D = np.tile(dirs, (len(tgt), 1))
    sd = np.full(len(T), 0 if side == "left" else 1, np.int8)
    return evaluate(T, D, sd, geo, fields, opt, radius, max_length, tol=field_tolerance(opt, fields))
