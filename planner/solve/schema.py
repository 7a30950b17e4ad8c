"""The plan file's JSON Schema (draft 2020-12): load it, validate a plan against it.

The schema is package data, ``planner/solve/plan.schema.json``, versioned with
:data:`planner.solve.plan.PLAN_SCHEMA_VERSION` (its ``$id`` ends with the version).  It
describes ``plan.json`` as :func:`planner.solve.api.write_plan` writes it: the dict that
:func:`planner.solve.plan.plan` returns without its ``run`` key (timings, written to
``run.json``).

Versioning: a new optional field where the schema allows additional properties (candidate,
metrics, verdict, stats, geometry, scene, options) is a minor version (1.0 -> 1.1); a
removed or renamed field, a new required field, a changed enum or meaning, or any new
top-level, per-level, route or recommendation key is a major version (1.x -> 2.0).

Beyond what JSON Schema can say, :func:`validate_plan` checks that the ids the plan refers
to exist (recommended candidates, a route's best candidate), that ids are unique within a
level, that each candidate's level is its level's, and that the summary agrees with the
levels.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

from planner.errors import SolverError

log = logging.getLogger(__name__)

#: Schema file name inside the ``planner.solve`` package.
SCHEMA_FILE = "plan.schema.json"

#: Most characters of a validator message quoted in an error (instances can be large).
_MAX_MESSAGE = 300


def schema_path() -> Path:
    """Path of the schema file shipped with the package.

    Returns
    -------
    pathlib.Path
        ``.../planner/solve/plan.schema.json``.
    """
    return Path(str(resources.files("planner.solve").joinpath(SCHEMA_FILE)))


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return json.loads(resources.files("planner.solve").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def load_schema() -> dict[str, Any]:
    """The plan schema as a dict (a fresh copy; changing it changes nothing here).

    Returns
    -------
    dict
        The JSON Schema (draft 2020-12) of ``plan.json``.
    """
    return copy.deepcopy(_schema())


@functools.lru_cache(maxsize=4)
def _validator(definition: str | None = None) -> Any:
    import jsonschema

    schema = _schema()
    if definition is not None:
        # a sub-schema that keeps the root's $defs and $id for its references
        schema = {"$schema": schema["$schema"], "$id": schema["$id"], "$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema)


def _first_error(validator: Any, instance: Any) -> Any | None:
    """The most relevant error (jsonschema's best match), or ``None``; deterministic."""
    from jsonschema.exceptions import best_match

    errors = sorted(validator.iter_errors(instance), key=lambda e: (list(map(str, e.absolute_path)), list(map(str, e.absolute_schema_path)), e.message))
    return best_match(errors) if errors else None


def _fail(what: str, path: str, message: str, details: dict[str, Any]) -> SolverError:
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return SolverError(
        f"{what} fails plan schema {_schema()['properties']['schema_version']['const']} at {path}: {message}. "
        "A plan file written by another planner version or edited by hand: regenerate it with 'planner plan'. "
        "A plan just computed by planner.solve.plan.plan: a bug, report it with this path",
        code="PLN-SOL-005",
        details={"path": path, **details},
    )


def validate_plan(plan: dict[str, Any]) -> None:
    """Check a plan dict against the schema and its cross references.

    A top-level ``run`` key (timings of the in-memory result of
    :func:`planner.solve.plan.plan`) is not part of the file and is ignored.

    Parameters
    ----------
    plan : dict
        A plan as returned by :func:`planner.solve.plan.plan` or read from ``plan.json``.

    Raises
    ------
    planner.errors.SolverError
        Code ``PLN-SOL-005``, naming the JSON path (``$.levels[0].candidates[2].route``) of
        the first error and what to do; ``details`` holds ``path``, ``schema_path`` and
        ``validator``.
    """
    if not isinstance(plan, dict):
        raise _fail("plan", "$", f"a plan is a JSON object, got {type(plan).__name__}", {"schema_path": "", "validator": "type"})
    body = {k: v for k, v in plan.items() if k != "run"}
    err = _first_error(_validator(), body)
    if err is not None:
        raise _fail(
            "plan", err.json_path, err.message,
            {"schema_path": "/".join(map(str, err.absolute_schema_path)), "validator": str(err.validator)},
        )
    _check_references(body)
    log.debug("plan validates against schema %s", body["schema_version"])


def validate_candidate(candidate: dict[str, Any]) -> None:
    """Check one candidate dict (a plan's, or one from trajectory evaluation) against the
    schema's candidate definition (``rank`` optional).

    Parameters
    ----------
    candidate : dict
        A candidate: id, level, side, route, points, metrics, verdict, score ...

    Raises
    ------
    planner.errors.SolverError
        Code ``PLN-SOL-005`` with the JSON path of the first error.
    """
    err = _first_error(_validator("candidate"), candidate)
    if err is not None:
        raise _fail(
            "candidate", err.json_path, err.message,
            {"schema_path": "/".join(map(str, err.absolute_schema_path)), "validator": str(err.validator)},
        )


def _check_references(plan: dict[str, Any]) -> None:
    """Cross references JSON Schema cannot express."""

    def fail(path: str, message: str) -> None:
        raise _fail("plan", path, message, {"schema_path": "", "validator": "reference"})

    without: list[str] = []
    for i, lv in enumerate(plan["levels"]):
        at = f"$.levels[{i}]"
        ids: set[str] = set()
        for j, c in enumerate(lv["candidates"]):
            if c["id"] in ids:
                fail(f"{at}.candidates[{j}].id", f"candidate id {c['id']!r} occurs twice in level {lv['level']}")
            ids.add(c["id"])
            if c["level"] != lv["level"]:
                fail(f"{at}.candidates[{j}].level", f"candidate of level {c['level']} listed under level {lv['level']}")
        rec = lv["recommendation"]
        for k, cid in enumerate(rec["candidates"]):
            if cid not in ids:
                fail(f"{at}.recommendation.candidates[{k}]", f"recommended candidate {cid!r} is not among the level's candidates")
        for k, r in enumerate(lv["routes"]):
            if r["status"] == "feasible" and r["best"] not in ids:
                fail(f"{at}.routes[{k}].best", f"best candidate {r['best']!r} of a feasible route is not among the level's candidates")
        if not rec["safe_route_found"]:
            without.append(lv["level"])
    planned = [lv["level"] for lv in plan["levels"]]
    if plan["summary"]["levels_planned"] != planned:
        fail("$.summary.levels_planned", f"lists {plan['summary']['levels_planned']} but the levels are {planned}")
    if plan["summary"]["levels_without_safe_route"] != without:
        fail("$.summary.levels_without_safe_route", f"lists {plan['summary']['levels_without_safe_route']} but the recommendations say {without}")
