"""One self-contained HTML file per plan: the 3D scene and the candidates, offline.

Why not pyvista's export
------------------------
pyvista's ``Plotter.export_html`` (since pyvista 0.49 through the ``trame-pyvista`` /
``trame-vtk`` packages) writes a vtk.js viewer.  Checked with trame-vtk 2.11: the export
itself tries to download a VTK WebAssembly bundle from the network (it fails offline), the
page it writes inserts favicon links to a remote site, and it carries no candidate list.
So this module writes its own page instead: a small inline WebGL renderer (with a Canvas 2D
fallback where WebGL is not available) and the plan's data embedded as base64 arrays.

The page
--------
* makes **no network request of any kind**: everything is inline, and its
  Content-Security-Policy (``default-src 'none'``) lets the browser load nothing else;
* draws the decimated anatomy and hardware meshes (styles of
  :mod:`planner.viewer.structures`), every candidate as a thin tube coloured by score (with
  a colour bar), the recommended instruments at their real radius with the curved needle's
  arc, skin entries as spheres, blocked routes' closest paths dimmed red, level names;
* lists levels and candidates (static HTML, readable without JavaScript); clicking a
  candidate (or keys ``n`` / ``p``, ``l`` for the next level) selects it: its instrument is
  drawn as a cyan tube and its metrics (:func:`planner.viewer.plandata.candidate_lines`) are
  shown; check boxes show / hide each structure group;
* mouse: drag to rotate, shift-drag or right-drag to pan, wheel to zoom; "reset view";
* after its first frame it sets ``data-render-status="ok"`` and ``data-renderer`` (``webgl``
  or ``canvas2d``) on ``<body>`` so a headless browser can tell it rendered; the URL
  fragment ``#canvas2d`` forces the Canvas 2D renderer.

The same plan gives the same bytes (sorted JSON, fixed float formatting, no timestamps).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from planner.viewer.common import (
    BACKGROUND,
    BLOCKED_RGB,
    CURVED_RGB,
    ENTRY_RGB,
    NEEDLE_RGB,
    SCORE_CMAP,
    decimate,
    score_rgb,
    sphere_mesh,
    tube_mesh,
)
from planner.viewer.plandata import PlanData, candidate_lines
from planner.viewer.scene3d import OBLIQUE_VIEW, SELECTED_RGB, instrument_for, instrument_tubes
from planner.viewer.structures import GROUPS, PATH_GROUPS, ViewMesh, collect_meshes

log = logging.getLogger(__name__)

#: Faces per anatomy mesh in the page (decimated); implants keep more for their shape.
HTML_MAX_FACES = 3000
HTML_MAX_FACES_HARDWARE = 1500


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _round(x: Any, nd: int = 3) -> Any:
    if isinstance(x, dict):
        return {k: _round(v, nd) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_round(v, nd) for v in x]
    if isinstance(x, np.ndarray):
        return _round(x.tolist(), nd)
    if isinstance(x, float | np.floating):
        return round(float(x), nd)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _mesh_entry(name: str, group: str, v: np.ndarray, f: np.ndarray, rgb: Any, opacity: float, *,
                level: str | None = None, metallic: bool = False, kind: str = "anatomy",
                candidate: str | None = None, hidden: bool = False) -> dict[str, Any]:
    v = np.asarray(v, np.float32)
    f = np.asarray(f, np.int64)
    idx32 = len(v) > 65535
    return {
        "name": name,
        "group": group,
        "level": level,
        "rgb": _round(list(rgb), 4),
        "opacity": round(float(opacity), 4),
        "metallic": bool(metallic),
        "kind": kind,
        "candidate": candidate,
        "hidden": bool(hidden),
        "pos": _b64(v.astype("<f4")),
        "idx": _b64(f.astype("<u4" if idx32 else "<u2")),
        "idx32": idx32,
        "nv": int(len(v)),
        "nf": int(len(f)),
    }


def scene_payload(plan: PlanData, meshes: list[ViewMesh] | None = None) -> dict[str, Any]:
    """The data the page embeds (JSON-ready): meshes as base64 arrays, levels, candidates.

    Parameters
    ----------
    plan : PlanData
    meshes : list of ViewMesh, optional
        Default: :func:`planner.viewer.structures.collect_meshes` of the case.

    Returns
    -------
    dict
    """
    if meshes is None:
        meshes = collect_meshes(plan.case_dir, max_faces=HTML_MAX_FACES)
    out_meshes = []
    for m in sorted(meshes, key=lambda m: m.name):
        v, f = decimate(m.vertices, m.faces, HTML_MAX_FACES_HARDWARE if m.metallic else HTML_MAX_FACES)
        out_meshes.append(_mesh_entry(m.name, m.group, v, f, m.rgb, m.opacity, level=m.level, metallic=m.metallic))
    lo, hi = plan.score_range()
    cands = plan.all_candidates()
    colours = score_rgb(np.array([c.score for c in cands]), lo, hi) if cands else np.zeros((0, 3))
    cand_out = []
    for c, rgb in zip(cands, colours):
        lv = plan.level(c.level)
        v, f = tube_mesh(c.straight_polyline(), 0.5, sections=6, caps=False)
        out_meshes.append(_mesh_entry(f"line:{c.id}", "candidates", v, f, rgb, 1.0, level=c.level, kind="line", candidate=c.id))
        v, f = sphere_mesh(c.entry, 1.6, subdivisions=1)
        out_meshes.append(_mesh_entry(f"entrydot:{c.id}", "entries", v, f, rgb, 1.0, level=c.level, kind="entry", candidate=c.id))
        inst = instrument_for(c, lv)
        for part, poly, r in instrument_tubes(plan, c, inst):
            v, f = tube_mesh(poly, r, sections=12)
            col = CURVED_RGB if part == "curved" else SELECTED_RGB
            out_meshes.append(_mesh_entry(f"sel:{c.id}:{part}", "needle", v, f, col, 1.0, level=c.level,
                                          kind="selection", candidate=c.id, hidden=True))
            if c.recommended:
                col = CURVED_RGB if part == "curved" else NEEDLE_RGB
                out_meshes.append(_mesh_entry(f"needle:{c.id}:{part}", "needle", v, f, col, 1.0, level=c.level,
                                              kind="needle", candidate=c.id, metallic=True))
        if c.recommended:
            v, f = sphere_mesh(c.entry, 3.0, subdivisions=2)
            out_meshes.append(_mesh_entry(f"entry:{c.id}", "entries", v, f, ENTRY_RGB, 1.0, level=c.level, kind="entry", candidate=c.id))
        cand_out.append({
            "id": c.id, "level": c.level, "side": c.side, "route": c.route, "score": round(c.score, 4),
            "rank": c.rank, "recommended": c.recommended, "instrument": inst,
            "instruments": list(c.verdict.get("instruments") or []),
            "lines": candidate_lines(c, lv), "rgb": _round(list(rgb), 4),
            "entry": _round(c.entry), "target": _round(c.target),
        })
    for lv in plan.levels:
        for i, b in enumerate(lv.blocked):
            v, f = tube_mesh(np.vstack([b.entry, b.target]), 0.35, sections=5, caps=False)
            out_meshes.append(_mesh_entry(f"blocked:{lv.name}:{i}", "blocked", v, f, BLOCKED_RGB, 0.6, level=lv.name, kind="blocked"))
    levels = []
    for lv in plan.levels:
        pts = []
        if lv.centre is not None:
            he = lv.half_extent if lv.half_extent is not None else np.array([20.0, 15.0, 12.0])
            pts += [lv.centre - he - 10, lv.centre + he + 10]
        for c in lv.recommended or lv.candidates[:1]:
            pts += [c.entry, c.target]
        p = np.vstack(pts) if pts else np.zeros((2, 3))
        levels.append({
            "name": lv.name,
            "bounds": _round([p.min(0) - 10, p.max(0) + 10]),
            "recommended": [c.id for c in lv.recommended],
            "procedure": lv.procedure,
            "access": lv.recommendation.get("access"),
            "reason": lv.recommendation.get("reason"),
            "blocked": [f"{b.side} {b.route}: {b.reason}" for b in lv.blocked],
        })
    labels = []
    for m in meshes:
        if m.name.startswith("vertebra_") and m.level:
            v = m.vertices
            front = v[v[:, 1] <= np.percentile(v[:, 1], 45)]
            c = (front if len(front) else v).mean(0)
            labels.append({"text": m.level + ("*" if m.level in {lv.name for lv in plan.levels} else ""),
                           "pos": _round([float(v[:, 0].min()) - 12.0, c[1], c[2]])})
    labels.sort(key=lambda d: d["pos"][2], reverse=True)
    allb = [m.bounds for m in meshes if m.group in ("vertebrae", "hardware")] or [m.bounds for m in meshes]
    sb = np.vstack(allb) if allb else np.vstack([c.entry for c in cands] or [np.zeros(3)])
    stops = score_rgb(np.linspace(0, 1, 11), 0.0, 1.0)
    return {
        "schema": "planner.viewer.html",
        "title": plan.title(),
        "frame": "LPS",
        "units": "mm",
        "meshes": out_meshes,
        "levels": levels,
        "candidates": cand_out,
        "groups": {**GROUPS, **PATH_GROUPS},
        "labels": labels,
        "colorbar": {"lo": round(lo, 4), "hi": round(hi, 4), "cmap": SCORE_CMAP, "stops": _round(stops.tolist(), 4)},
        "scene_bounds": _round([sb.min(0), sb.max(0)]),
        "view": {"direction": list(OBLIQUE_VIEW), "up": [0.0, 0.0, 1.0]},
        "background": _round([list(BACKGROUND[0]), list(BACKGROUND[1])], 4),
    }


def _static_lists(payload: dict[str, Any]) -> tuple[str, str]:
    """Level buttons and the candidate list as HTML (readable without JavaScript)."""
    esc = html.escape
    lv_html = "".join(
        f'<button class="lvl" data-level="{esc(lv["name"])}">{esc(lv["name"])}</button>' for lv in payload["levels"]
    )
    rows = []
    for lv in payload["levels"]:
        rec = f'{lv["procedure"]} {lv["access"]}' if lv["procedure"] else f'no safe route: {lv.get("reason") or ""}'
        rows.append(f'<div class="lvhead" data-level="{esc(lv["name"])}">{esc(lv["name"])}: {esc(rec)}</div>')
        cands = [c for c in payload["candidates"] if c["level"] == lv["name"]]
        if not cands:
            rows.append('<div class="none">no feasible candidate</div>')
        for c in cands:
            sw = "rgb({},{},{})".format(*[int(round(255 * x)) for x in c["rgb"]])
            mark = " REC" if c["recommended"] else ""
            rows.append(
                f'<div class="cand{" rec" if c["recommended"] else ""}" data-id="{esc(c["id"])}" data-level="{esc(c["level"])}">'
                f'<span class="sw" style="background:{sw}"></span>'
                f'#{c["rank"]} {esc(c["side"])} {esc(c["route"])} <b>{c["score"]:.3f}</b>{mark}'
                f'<span class="inst">{esc(", ".join(c["instruments"]))}</span></div>'
            )
        for b in lv["blocked"]:
            rows.append(f'<div class="blk">blocked {esc(b)}</div>')
    return lv_html, "\n".join(rows)


def render_html(payload: dict[str, Any]) -> str:
    """The page's text for a :func:`scene_payload`."""
    esc = html.escape
    lv_html, cand_html = _static_lists(payload)
    groups_html = "".join(
        f'<label><input type="checkbox" class="grp" data-group="{esc(g)}" checked> {esc(lbl)}</label>'
        for g, lbl in payload["groups"].items()
        if any(m["group"] == g for m in payload["meshes"])
    )
    cb = payload["colorbar"]
    grad = ", ".join("rgb({},{},{})".format(*[int(round(255 * x)) for x in s]) for s in cb["stops"])
    data = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    data = data.replace("</", "<\\/")  # never close the script element early
    bg0 = "rgb({},{},{})".format(*[int(round(255 * x)) for x in payload["background"][0]])
    bg1 = "rgb({},{},{})".format(*[int(round(255 * x)) for x in payload["background"][1]])
    page = _TEMPLATE
    for key, val in {
        "__TITLE__": esc(payload["title"]),
        "__LEVELS__": lv_html,
        "__CANDIDATES__": cand_html,
        "__GROUPS__": groups_html,
        "__GRADIENT__": grad,
        "__CBLO__": f'{cb["lo"]:.2f}',
        "__CBHI__": f'{cb["hi"]:.2f}',
        "__BG0__": bg0,
        "__BG1__": bg1,
        "__DATA__": data,
        "__SCRIPT__": _SCRIPT,
    }.items():
        page = page.replace(key, val)
    return page


def write_html(plan: PlanData, out: str | os.PathLike, *, meshes: list[ViewMesh] | None = None) -> Path:
    """Write the standalone HTML page of a plan.

    Parameters
    ----------
    plan : PlanData
    out : path-like
        Output ``.html`` file (folders are created).
    meshes : list of ViewMesh, optional
        Reuse meshes already collected (they are decimated further for the page).

    Returns
    -------
    Path
    """
    page = render_html(scene_payload(plan, meshes))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Plan: __TITLE__</title>
<style>
html, body { margin: 0; height: 100%; background: #0b0d12; color: #e8eaf0; font: 13px/1.35 sans-serif; overflow: hidden; }
#app { display: flex; height: 100%; }
#view { position: relative; flex: 1 1 auto; background: linear-gradient(__BG0__, __BG1__); }
#gl, #c2d { position: absolute; left: 0; top: 0; width: 100%; height: 100%; display: block; }
#labels { position: absolute; left: 0; top: 0; width: 100%; height: 100%; pointer-events: none; overflow: hidden; }
#labels div { position: absolute; transform: translate(-100%, -50%); font-weight: bold; color: #f0f2f8; text-shadow: 0 0 3px #000; }
#side { width: 380px; flex: 0 0 380px; overflow-y: auto; background: #141821; border-left: 1px solid #2a3040; padding: 8px 10px; box-sizing: border-box; }
h1 { font-size: 15px; margin: 2px 0 8px; }
h2 { font-size: 13px; margin: 10px 0 4px; color: #9fb0d0; }
button { background: #243048; color: #e8eaf0; border: 1px solid #3a4a6a; border-radius: 3px; padding: 3px 9px; margin: 0 4px 4px 0; cursor: pointer; }
button.on { background: #3d6fd0; }
.lvhead { margin-top: 6px; font-weight: bold; color: #c8d4ee; }
.cand { padding: 2px 4px; cursor: pointer; border-radius: 3px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.cand:hover { background: #222a3a; }
.cand.sel { background: #1d4060; outline: 1px solid #4dd0ff; }
.cand.rec { color: #ffb070; }
.cand .inst { color: #8a96b0; margin-left: 6px; font-size: 11px; }
.sw { display: inline-block; width: 10px; height: 10px; margin-right: 5px; border: 1px solid #000; vertical-align: -1px; }
.blk, .none { color: #d87878; font-size: 11px; padding-left: 4px; }
#metrics { font: 11px/1.3 monospace; white-space: pre-wrap; background: #0e1118; border: 1px solid #2a3040; padding: 6px; margin: 4px 0; }
#groups label { display: inline-block; margin: 0 10px 2px 0; white-space: nowrap; }
#cbar { position: absolute; right: 14px; top: 30%; height: 40%; width: 16px; background: linear-gradient(to top, __GRADIENT__); border: 1px solid #000; }
#cbar span { position: absolute; left: 22px; font-size: 11px; white-space: nowrap; }
#cbtitle { position: absolute; right: 8px; top: calc(30% - 20px); font-size: 12px; }
#msg { position: absolute; left: 10px; bottom: 8px; font-size: 11px; color: #9aa4ba; }
#title { position: absolute; left: 10px; top: 8px; font-size: 15px; text-shadow: 0 0 3px #000; }
</style>
</head>
<body data-render-status="pending">
<div id="app">
<div id="view">
<canvas id="gl"></canvas>
<canvas id="c2d" style="display:none"></canvas>
<div id="labels"></div>
<div id="title">__TITLE__</div>
<div id="cbtitle">candidate score</div>
<div id="cbar"><span style="top:-7px">__CBHI__</span><span style="bottom:-7px">__CBLO__</span></div>
<div id="msg">drag: rotate &middot; shift/right-drag: pan &middot; wheel: zoom &middot; keys n/p candidate, l level</div>
</div>
<div id="side">
<h1>Plan: __TITLE__</h1>
<div id="levels">__LEVELS__<button id="reset">reset view</button></div>
<h2>selected path</h2>
<div id="metrics">(select a candidate)</div>
<h2>structures</h2>
<div id="groups">__GROUPS__</div>
<h2>candidates (feasible, by level)</h2>
<div id="cands">
__CANDIDATES__
</div>
</div>
</div>
<script id="plan-data" type="application/json">__DATA__</script>
<script>
__SCRIPT__
</script>
</body>
</html>
"""

_SCRIPT = r"""
(function () {
'use strict';
var D = JSON.parse(document.getElementById('plan-data').textContent);
function dec(b64, kind) {
  var s = atob(b64), n = s.length, u = new Uint8Array(n);
  for (var i = 0; i < n; i++) u[i] = s.charCodeAt(i);
  if (kind === 'f4') return new Float32Array(u.buffer);
  if (kind === 'u4') return new Uint32Array(u.buffer);
  return new Uint16Array(u.buffer);
}
// ---- meshes: positions, indices, vertex normals, centroid
var M = D.meshes.map(function (m) {
  var p = dec(m.pos, 'f4'), ix = dec(m.idx, m.idx32 ? 'u4' : 'u2');
  var nr = new Float32Array(p.length), c = [0, 0, 0];
  for (var f = 0; f < ix.length; f += 3) {
    var a = 3 * ix[f], b = 3 * ix[f + 1], d = 3 * ix[f + 2];
    var ux = p[b] - p[a], uy = p[b + 1] - p[a + 1], uz = p[b + 2] - p[a + 2];
    var vx = p[d] - p[a], vy = p[d + 1] - p[a + 1], vz = p[d + 2] - p[a + 2];
    var nx = uy * vz - uz * vy, ny = uz * vx - ux * vz, nz = ux * vy - uy * vx;
    [a, b, d].forEach(function (k) { nr[k] += nx; nr[k + 1] += ny; nr[k + 2] += nz; });
  }
  for (var i = 0; i < p.length; i += 3) {
    var l = Math.hypot(nr[i], nr[i + 1], nr[i + 2]) || 1;
    nr[i] /= l; nr[i + 1] /= l; nr[i + 2] /= l;
    c[0] += p[i]; c[1] += p[i + 1]; c[2] += p[i + 2];
  }
  var nv = Math.max(1, p.length / 3);
  return { d: m, p: p, ix: ix, n: nr, c: [c[0] / nv, c[1] / nv, c[2] / nv], vis: !m.hidden };
});
var groupOn = {};
Object.keys(D.groups).forEach(function (g) { groupOn[g] = true; });
var state = { level: D.levels.length ? D.levels[0].name : null, cand: null, focus: null };
// ---- camera (LPS, z up): orbit about a target
var cam = { target: [0, 0, 0], dist: 300, yaw: 0, pitch: 0 };
function setView(lo, hi, dir) {
  cam.target = [(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2];
  var r = 0.5 * Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]);
  cam.dist = r / Math.sin(Math.PI * 30 / 360) * 0.85;
  var l = Math.hypot(dir[0], dir[1], dir[2]);
  cam.yaw = Math.atan2(dir[1] / l, dir[0] / l);
  cam.pitch = Math.asin(dir[2] / l);
}
function eye() {
  var cp = Math.cos(cam.pitch);
  return [cam.target[0] + cam.dist * cp * Math.cos(cam.yaw), cam.target[1] + cam.dist * cp * Math.sin(cam.yaw),
          cam.target[2] + cam.dist * Math.sin(cam.pitch)];
}
function sub(a, b) { return [a[0] - b[0], a[1] - b[1], a[2] - b[2]]; }
function cross(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
function norm(a) { var l = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / l, a[1] / l, a[2] / l]; }
function dot(a, b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
function viewMatrix() {
  var e = eye(), f = norm(sub(cam.target, e)), s = norm(cross(f, [0, 0, 1])), u = cross(s, f);
  return { e: e, f: f, s: s, u: u,
    m: [s[0], u[0], -f[0], 0, s[1], u[1], -f[1], 0, s[2], u[2], -f[2], 0, -dot(s, e), -dot(u, e), dot(f, e), 1] };
}
function projMatrix(aspect) {
  var fov = 30 * Math.PI / 180, t = 1 / Math.tan(fov / 2), n = Math.max(1, cam.dist * 0.05), fa = cam.dist * 6 + 2000;
  return [t / aspect, 0, 0, 0, 0, t, 0, 0, 0, 0, (fa + n) / (n - fa), -1, 0, 0, 2 * fa * n / (n - fa), 0];
}
function mul(a, b) {  // column-major 4x4: a * b
  var o = new Array(16);
  for (var c = 0; c < 4; c++) for (var r = 0; r < 4; r++) {
    var s = 0; for (var k = 0; k < 4; k++) s += a[k * 4 + r] * b[c * 4 + k]; o[c * 4 + r] = s;
  }
  return o;
}
function visible(mm) {
  var d = mm.d;
  if (!groupOn[d.group]) return false;
  if (d.kind === 'selection') { var sc = candById(d.candidate); return state.cand === d.candidate && !(sc && sc.recommended); }
  if (d.kind === 'blocked') return d.level === state.level;
  if (state.focus && d.level && d.kind !== 'anatomy' && d.level !== state.focus) return false;
  return mm.vis;
}
function ambientOf(mm) {  // paths and instruments stay bright even when seen end-on
  var k = mm.d.kind;
  return (k === 'needle' || k === 'selection' || k === 'line' || k === 'entry' || k === 'blocked') ? 0.6 : 0.22;
}
function alphaOf(mm) {
  var d = mm.d;
  if ((d.kind === 'line' || d.kind === 'entry') && d.level !== state.level) return 0.25;
  return d.opacity;
}
// ---- renderers
var view = document.getElementById('view'), glc = document.getElementById('gl'), c2 = document.getElementById('c2d');
var gl = null, renderer = 'canvas2d';
var want2d = /canvas2d/.test(window.location.hash);  // '#canvas2d' forces the fallback renderer
try { if (!want2d) gl = glc.getContext('webgl', { antialias: true, preserveDrawingBuffer: true }) || glc.getContext('experimental-webgl'); } catch (e) { gl = null; }
var prog = null, loc = {};
function shader(type, src) {
  var s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
  return s;
}
if (gl) {
  try {
    var vs = 'attribute vec3 p; attribute vec3 n; uniform mat4 mvp; uniform mat4 mv; varying vec3 vn; varying vec3 vp;' +
      'void main(){ vn = (mv * vec4(n, 0.0)).xyz; vp = (mv * vec4(p, 1.0)).xyz; gl_Position = mvp * vec4(p, 1.0); }';
    var fs = 'precision mediump float; varying vec3 vn; varying vec3 vp; uniform vec3 col; uniform float alpha; uniform float spec; uniform float amb;' +
      'void main(){ vec3 N = normalize(vn); vec3 V = normalize(-vp); if (dot(N, V) < 0.0) N = -N;' +
      ' float d = max(dot(N, V), 0.0); vec3 H = normalize(V + vec3(0.3, 0.5, 0.8));' +
      ' float s = spec * pow(max(dot(N, normalize(V + V)), 0.0), 40.0) + 0.25 * spec * pow(max(dot(N, H), 0.0), 20.0);' +
      ' gl_FragColor = vec4(col * (amb + (1.0 - amb) * d) + vec3(s), alpha); }';
    prog = gl.createProgram();
    gl.attachShader(prog, shader(gl.VERTEX_SHADER, vs)); gl.attachShader(prog, shader(gl.FRAGMENT_SHADER, fs));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error('link');
    ['mvp', 'mv', 'col', 'alpha', 'spec', 'amb'].forEach(function (k) { loc[k] = gl.getUniformLocation(prog, k); });
    loc.p = gl.getAttribLocation(prog, 'p'); loc.n = gl.getAttribLocation(prog, 'n');
    var u32 = gl.getExtension('OES_element_index_uint');
    M.forEach(function (mm) {
      if (mm.d.idx32 && !u32) { mm.skip = true; return; }
      mm.pb = gl.createBuffer(); gl.bindBuffer(gl.ARRAY_BUFFER, mm.pb); gl.bufferData(gl.ARRAY_BUFFER, mm.p, gl.STATIC_DRAW);
      mm.nb = gl.createBuffer(); gl.bindBuffer(gl.ARRAY_BUFFER, mm.nb); gl.bufferData(gl.ARRAY_BUFFER, mm.n, gl.STATIC_DRAW);
      mm.ib = gl.createBuffer(); gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, mm.ib); gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, mm.ix, gl.STATIC_DRAW);
    });
    renderer = 'webgl';
  } catch (e) { gl = null; renderer = 'canvas2d'; }
}
if (!gl) { glc.style.display = 'none'; c2.style.display = 'block'; }
function resize(cv) {
  var r = view.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  var w = Math.max(1, Math.round(r.width * dpr)), h = Math.max(1, Math.round(r.height * dpr));
  if (cv.width !== w || cv.height !== h) { cv.width = w; cv.height = h; }
  return [w, h];
}
function drawGL() {
  var wh = resize(glc), V = viewMatrix(), P = projMatrix(wh[0] / wh[1]), MVP = mul(P, V.m);
  gl.viewport(0, 0, wh[0], wh[1]); gl.clearColor(0, 0, 0, 0); gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
  gl.useProgram(prog); gl.enable(gl.DEPTH_TEST);
  gl.uniformMatrix4fv(loc.mvp, false, new Float32Array(MVP)); gl.uniformMatrix4fv(loc.mv, false, new Float32Array(V.m));
  var opaque = [], trans = [];
  M.forEach(function (mm) { if (mm.skip || !visible(mm)) return; (alphaOf(mm) >= 0.999 ? opaque : trans).push(mm); });
  trans.sort(function (a, b) { return dot(sub(b.c, V.e), V.f) - dot(sub(a.c, V.e), V.f); });
  function draw(mm, a) {
    gl.bindBuffer(gl.ARRAY_BUFFER, mm.pb); gl.enableVertexAttribArray(loc.p); gl.vertexAttribPointer(loc.p, 3, gl.FLOAT, false, 0, 0);
    gl.bindBuffer(gl.ARRAY_BUFFER, mm.nb); gl.enableVertexAttribArray(loc.n); gl.vertexAttribPointer(loc.n, 3, gl.FLOAT, false, 0, 0);
    gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, mm.ib);
    gl.uniform3fv(loc.col, mm.d.rgb); gl.uniform1f(loc.alpha, a); gl.uniform1f(loc.spec, mm.d.metallic ? 0.55 : 0.06);
    gl.uniform1f(loc.amb, ambientOf(mm));
    gl.drawElements(gl.TRIANGLES, mm.ix.length, mm.d.idx32 ? gl.UNSIGNED_INT : gl.UNSIGNED_SHORT, 0);
  }
  gl.disable(gl.BLEND); gl.depthMask(true);
  opaque.forEach(function (mm) { draw(mm, 1.0); });
  gl.enable(gl.BLEND); gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA); gl.depthMask(false);
  trans.forEach(function (mm) { draw(mm, alphaOf(mm)); });
  gl.depthMask(true);
  return MVP;
}
function draw2D() {  // painter's algorithm over every visible triangle, flat shaded
  var wh = resize(c2), V = viewMatrix(), P = projMatrix(wh[0] / wh[1]), MVP = mul(P, V.m), ctx = c2.getContext('2d');
  ctx.clearRect(0, 0, wh[0], wh[1]);
  var tris = [];
  M.forEach(function (mm) {
    if (!visible(mm)) return;
    var p = mm.p, ix = mm.ix, a = alphaOf(mm), col = mm.d.rgb, amb = ambientOf(mm), n = p.length / 3, sx = new Float32Array(n), sy = new Float32Array(n), sz = new Float32Array(n), ok = new Uint8Array(n);
    for (var i = 0; i < n; i++) {
      var x = p[3 * i], y = p[3 * i + 1], z = p[3 * i + 2];
      var cx = MVP[0] * x + MVP[4] * y + MVP[8] * z + MVP[12], cy = MVP[1] * x + MVP[5] * y + MVP[9] * z + MVP[13];
      var cw = MVP[3] * x + MVP[7] * y + MVP[11] * z + MVP[15];
      ok[i] = cw > 1e-6 ? 1 : 0; sx[i] = (cx / cw + 1) * 0.5 * wh[0]; sy[i] = (1 - cy / cw) * 0.5 * wh[1]; sz[i] = cw;
    }
    for (var f = 0; f < ix.length; f += 3) {
      var A = ix[f], B = ix[f + 1], C = ix[f + 2];
      if (!(ok[A] && ok[B] && ok[C])) continue;
      var ux = p[3 * B] - p[3 * A], uy = p[3 * B + 1] - p[3 * A + 1], uz = p[3 * B + 2] - p[3 * A + 2];
      var vx = p[3 * C] - p[3 * A], vy = p[3 * C + 1] - p[3 * A + 1], vz = p[3 * C + 2] - p[3 * A + 2];
      var nn = norm([uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx]), sh = amb + (1 - amb) * Math.abs(dot(nn, V.f));
      tris.push([sz[A] + sz[B] + sz[C], sx[A], sy[A], sx[B], sy[B], sx[C], sy[C], col[0] * sh, col[1] * sh, col[2] * sh, a]);
    }
  });
  tris.sort(function (a, b) { return b[0] - a[0]; });
  for (var t = 0; t < tris.length; t++) {
    var q = tris[t];
    ctx.fillStyle = 'rgba(' + Math.round(255 * Math.min(1, q[7])) + ',' + Math.round(255 * Math.min(1, q[8])) + ',' + Math.round(255 * Math.min(1, q[9])) + ',' + q[10] + ')';
    ctx.beginPath(); ctx.moveTo(q[1], q[2]); ctx.lineTo(q[3], q[4]); ctx.lineTo(q[5], q[6]); ctx.closePath(); ctx.fill();
  }
  return MVP;
}
var labelBox = document.getElementById('labels');
var labelDivs = D.labels.map(function (l) { var d = document.createElement('div'); d.textContent = l.text; labelBox.appendChild(d); return d; });
function placeLabels(MVP) {
  var r = view.getBoundingClientRect();
  D.labels.forEach(function (l, i) {
    var x = l.pos[0], y = l.pos[1], z = l.pos[2];
    var cx = MVP[0] * x + MVP[4] * y + MVP[8] * z + MVP[12], cy = MVP[1] * x + MVP[5] * y + MVP[9] * z + MVP[13], cw = MVP[3] * x + MVP[7] * y + MVP[11] * z + MVP[15];
    var d = labelDivs[i];
    if (cw <= 0 || state.focus) { d.style.display = 'none'; return; }
    d.style.display = 'block'; d.style.left = ((cx / cw + 1) * 0.5 * r.width) + 'px'; d.style.top = ((1 - cy / cw) * 0.5 * r.height) + 'px';
  });
}
var pending = false;
function render() {
  pending = false;
  var MVP = gl ? drawGL() : draw2D();
  placeLabels(MVP);
  document.body.setAttribute('data-renderer', renderer);
  document.body.setAttribute('data-render-status', 'ok');
}
function redraw() { if (!pending) { pending = true; (window.requestAnimationFrame || setTimeout)(render); } }
// ---- selection and panels
function levelOf(name) { for (var i = 0; i < D.levels.length; i++) if (D.levels[i].name === name) return D.levels[i]; return null; }
function candsOf(level) { return D.candidates.filter(function (c) { return c.level === level; }); }
function frameLevel(name) {
  var lv = levelOf(name); if (!lv) return;
  var dir = D.view.direction.slice(), c = candById(state.cand);
  if (c && c.side === 'right') dir[0] = -dir[0];
  setView(lv.bounds[0], lv.bounds[1], dir);
}
function candById(id) { for (var i = 0; i < D.candidates.length; i++) if (D.candidates[i].id === id) return D.candidates[i]; return null; }
function selectCand(id) {
  var c = candById(id); state.cand = id;
  document.getElementById('metrics').textContent = c ? c.lines.join('\n') : '(no feasible candidate at this level)';
  Array.prototype.forEach.call(document.querySelectorAll('.cand'), function (el) { el.classList.toggle('sel', el.getAttribute('data-id') === id); });
  redraw();
}
function selectLevel(name, keepCand) {
  state.level = name;
  Array.prototype.forEach.call(document.querySelectorAll('button.lvl'), function (b) { b.classList.toggle('on', b.getAttribute('data-level') === name); });
  if (!keepCand) { var lv = levelOf(name), cs = candsOf(name); selectCand(lv && lv.recommended.length ? lv.recommended[0] : (cs.length ? cs[0].id : null)); }
  frameLevel(name); redraw();
}
Array.prototype.forEach.call(document.querySelectorAll('button.lvl'), function (b) { b.onclick = function () { selectLevel(b.getAttribute('data-level')); }; });
Array.prototype.forEach.call(document.querySelectorAll('.cand'), function (el) {
  el.onclick = function () { var lv = el.getAttribute('data-level'); if (lv !== state.level) selectLevel(lv, true); selectCand(el.getAttribute('data-id')); };
});
Array.prototype.forEach.call(document.querySelectorAll('input.grp'), function (el) {
  el.onchange = function () { groupOn[el.getAttribute('data-group')] = el.checked; redraw(); };
});
document.getElementById('reset').onclick = function () { frameLevel(state.level); redraw(); };
document.addEventListener('keydown', function (ev) {
  var cs = candsOf(state.level), i = -1;
  for (var k = 0; k < cs.length; k++) if (cs[k].id === state.cand) i = k;
  if ((ev.key === 'n' || ev.key === 'p') && cs.length) { selectCand(cs[(i + (ev.key === 'n' ? 1 : cs.length - 1) + cs.length) % cs.length].id); }
  if (ev.key === 'l' && D.levels.length) {
    var j = 0; for (var q = 0; q < D.levels.length; q++) if (D.levels[q].name === state.level) j = q;
    selectLevel(D.levels[(j + 1) % D.levels.length].name);
  }
});
// ---- mouse
var drag = null;
view.addEventListener('contextmenu', function (e) { e.preventDefault(); });
view.addEventListener('mousedown', function (e) { drag = { x: e.clientX, y: e.clientY, pan: e.shiftKey || e.button === 2 }; });
window.addEventListener('mouseup', function () { drag = null; });
window.addEventListener('mousemove', function (e) {
  if (!drag) return;
  var dx = e.clientX - drag.x, dy = e.clientY - drag.y; drag.x = e.clientX; drag.y = e.clientY;
  if (drag.pan) {
    var V = viewMatrix(), k = cam.dist * 0.0015;
    for (var a = 0; a < 3; a++) cam.target[a] += -dx * k * V.s[a] + dy * k * V.u[a];
  } else {
    cam.yaw -= dx * 0.008; cam.pitch = Math.max(-1.55, Math.min(1.55, cam.pitch + dy * 0.008));
  }
  redraw();
});
view.addEventListener('wheel', function (e) { e.preventDefault(); cam.dist *= Math.exp(e.deltaY * 0.001); redraw(); }, { passive: false });
window.addEventListener('resize', redraw);
// ---- start: the first level with its recommended candidate
if (state.level) selectLevel(state.level); else { setView(D.scene_bounds[0], D.scene_bounds[1], D.view.direction); }
render();
})();
"""
