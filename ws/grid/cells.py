"""One grid cell: is it done, and running it (in a Ray worker process of its own).

A cell is **done** when its file set is complete (every file of the sweep's set is in its
folder) and was made with the cell's settings: the cell's stamp (``.ws-grid-cell.json``,
written beside the set when a grid cell finishes) carries the same fingerprint, or, for a
set made outside a grid (``make sweep``), it has the cell's seeds. A complete set made with
other settings is **kept**, never redone over (give the grid another ``WS_OUT``, or remove
that folder). A run writes its set atomically, so a killed cell leaves no half set: it is
simply not done, and the next run of the grid does it.

:func:`run_cell` is what a worker runs: it takes the cell's environment as its own, holds
the cell's folder alone and the output root shared (:func:`ws.config.start_run`), builds
what is missing and runs the sweep the way its notebook does; every error becomes the
cell's status, so one failing cell never stops the grid.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import polars as pl
import torch

from ws.analysis import analyse
from ws.config import OTHER_KNOWN, start_run
from ws.core.device import input_device
from ws.core.io import write_text
from ws.core.log import logger
from ws.cross_adapter import compare as cross_adapter
from ws.cross_adapter.results import CONCLUSION, FIGURES, TABLES
from ws.grid.spec import Cell
from ws.model.load import load_model
from ws.v7 import sweep
from ws.v7.results import EXTRA_FILES, V7_FILES
from ws.v8.results import V8_FILES

STAMP = ".ws-grid-cell.json"
FILES = {"v7": (*V7_FILES, *EXTRA_FILES), "v8": V8_FILES, "cross_adapter": (*TABLES, *FIGURES, CONCLUSION)}


def complete(cell: Cell) -> bool:
    """Every file of the cell's set is in its folder."""
    f = cell.folder
    return f is not None and all((f / n).is_file() for n in FILES[cell.sweep])


def read_stamp(cell: Cell) -> dict | None:
    p = cell.folder / STAMP if cell.folder is not None else None
    if p is None or not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _set_seeds(cell: Cell) -> tuple[int, ...] | None:
    """The seeds of a v7 or v8 set made outside a grid (its v7 seed table: v8 reuses v7's
    seeds); None when they cannot be read, and for a comparison (its seeds are not checked)."""
    if cell.sweep == "cross_adapter":
        return None
    try:
        df = pl.read_csv(cell.config.v7_dir / "v7_seeds.tsv", separator="\t", infer_schema_length=0)
    except Exception:  # noqa: BLE001 - an unreadable table: the set's seeds are unknown
        return None
    return tuple(sorted({int(s) for s in df["seed"].to_list()}))


def state(cell: Cell) -> tuple[str, str]:
    """``("todo" | "done" | "kept", why)`` for a cell that can run (see the module doc)."""
    if not complete(cell):
        return "todo", ""
    stamp = read_stamp(cell)
    if stamp is not None:
        if stamp.get("fingerprint") == cell.fingerprint:
            return "done", "done earlier by a grid with these settings"
        return "kept", (
            f"{cell.folder} holds a complete set made by a grid with other settings ({stamp.get('fingerprint')}); "
            "it is kept: give this grid another WS_OUT, or remove that folder to redo it"
        )
    seeds = _set_seeds(cell)
    if seeds is not None and seeds == tuple(sorted(cell.config.seeds)):
        return "done", "done earlier (outside a grid) with these seeds"
    return "kept", (
        f"{cell.folder} holds a complete set made outside this grid (seeds {seeds or 'unknown'}, the cell asks "
        f"{','.join(map(str, cell.config.seeds))}); it is kept: give this grid another WS_OUT, or remove that folder"
    )


# ----------------------------------------------------------------------------- running
def _take_env(env: dict[str, str]) -> None:
    """This worker process runs with exactly the cell's ``WS_*`` variables."""
    for k in [k for k in os.environ if k.startswith("WS_") and k not in OTHER_KNOWN]:
        del os.environ[k]
    os.environ.update(env)


def _v7(cfg) -> str:
    model, tok = load_model(cfg.model, **cfg.model_kwargs())
    analyse(model, tok, sweep.get_diffs(cfg, model, tok), config=cfg)
    return _device(model)


def _v8(cfg) -> str:
    model, tok = load_model(cfg.model, **cfg.model_kwargs())
    analyse(model, tok, sweep.get_diffs(cfg, model, tok), config=cfg, stages=("v8",))
    return _device(model)


def _cross(cfg) -> str:
    model, tok = load_model(cfg.model, **cfg.model_kwargs())
    cross_adapter.check_all_diffs(cfg, model)
    probes = sweep.probe_prompts(cfg, tok)
    runs = [cross_adapter.run_adapter(cfg, model, tok, probes, a) for a in cfg.adapters]
    cross_adapter.write_cross_adapter(cfg, cross_adapter.compare(cfg, runs))
    return _device(model)


RUNNERS = {"v7": _v7, "v8": _v8, "cross_adapter": _cross}


def _device(model) -> str:
    dev = input_device(model)
    return f"{dev} ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else str(dev)


def write_stamp(cell: Cell, result: dict[str, Any]) -> Path:
    body = {"fingerprint": cell.fingerprint, "sweep": cell.sweep, "env": cell.env_dict, **result}
    return write_text(cell.folder / STAMP, json.dumps(body, indent=2, sort_keys=True) + "\n")


def one_line(e: BaseException, limit: int = 400) -> str:
    """The exception as one line for the summary (its type and message, cut at ``limit``)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:limit]}{'…' if len(text) > limit else ''}"


def run_cell(cell: Cell, threads: int = 0) -> dict[str, Any]:
    """Run ``cell`` here (a Ray worker of its own); returns ``status`` (``ran`` or ``failed``),
    ``seconds``, ``device``, ``host`` and ``error`` (:func:`one_line`; the traceback is in the
    cell's log). ``threads``: torch's CPU threads (0: torch's default)."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"status": "failed", "device": "", "host": socket.gethostname(), "error": ""}
    try:
        _take_env(cell.env_dict)
        if threads:
            torch.set_num_threads(int(threads))
        cfg = start_run(f"grid_{cell.slug}", cell.env_dict, cell=cell.lock)
        out["device"] = RUNNERS[cell.sweep](cfg)
        out["status"] = "ran"
    except BaseException as e:  # noqa: BLE001 - the cell's failure is its result, the grid goes on
        logger.error(f"grid cell {cell.key} failed:\n{traceback.format_exc()}")
        out["error"] = one_line(e)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if out["status"] == "ran":
        write_stamp(cell, {k: out[k] for k in ("seconds", "device", "host")})
    return out
