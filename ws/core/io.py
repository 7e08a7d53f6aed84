"""Atomic file writes: every output goes to a temporary file in the same folder and is
renamed into place, so a crash never leaves a half-written file that looks complete.
:func:`write_table` is the one table writer of the suite."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import torch
from safetensors.torch import save_file

from ws.core.log import logger


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on clean exit rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` keeps its old content.
    The temporary name keeps the suffix so writers that look at it (matplotlib) work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` with ``metadata`` to a safetensors file at ``path``, atomically, the
    same bytes from run to run: the library writes the metadata's keys in an order that changes
    with every process, so the header is rewritten with them sorted (the same length: only
    their order changes; the tensors' bytes are untouched)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata) if metadata else None)
        sort_safetensors_metadata(tmp)
    return path


def sort_safetensors_metadata(path: str | Path) -> None:
    """Rewrite a safetensors file's header in place with its metadata keys sorted."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        header = json.loads(raw)
        if not header.get("__metadata__"):
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n or raw[len(text) :].strip(b" "):  # not a reordering of the same text
            raise ValueError(f"{Path(path).name}: its safetensors header did not re-serialise to the same length")
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def format_float(x: float | None, sig: int = 6) -> str:
    """Fixed table format: ``sig`` significant digits (``%g``), ``NaN``, ``inf``,
    ``-inf``; None (null) → empty string."""
    if x is None:
        return ""
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    s = f"{x:.{sig}g}"
    return "0" if s == "-0" else s


def write_table(df: pl.DataFrame, path: str | Path, sig: int | None = 6) -> Path:
    """Write ``df`` atomically as ``.csv`` (comma) or ``.tsv`` (tab).

    Float columns are formatted with ``sig`` significant digits (``NaN``/``inf`` spelled
    out, nulls empty), so identical inputs give byte-identical files. ``sig=None`` keeps
    polars' own shortest round-trip float text (full precision: the training logs).
    """
    path = Path(path)
    sep = {".csv": ",", ".tsv": "\t"}.get(path.suffix.lower())
    if sep is None:
        raise ValueError(f"write_table: unknown table suffix {path.suffix!r} (use .csv or .tsv): {path}")
    cols = []
    for name, dtype in df.schema.items():
        s = df[name]
        if dtype.is_float() and sig is not None:
            # nulls stay null (written as an empty field, not as a quoted empty string)
            cols.append(pl.Series(name, [None if v is None else format_float(v, sig) for v in s.to_list()], dtype=pl.String))
        else:
            cols.append(s)
    out = pl.DataFrame(cols) if cols else df
    with atomic_path(path) as tmp:
        out.write_csv(tmp, separator=sep, null_value="", quote_style="necessary", line_terminator="\n")
    logger.debug(f"wrote {path} ({df.height} rows × {df.width} cols)")
    return path


# ----------------------------------------------------------------------------- file sets
STAGING_PREFIX = ".staging-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_staging(folder: str | Path) -> list[Path]:
    """Remove ``.staging-<pid>-*`` folders whose process is gone (a killed run's leftovers;
    folders of the older ``.staging-<random>`` form too). Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(f"{STAGING_PREFIX}*"):
        head = p.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if p.is_dir() and not (head.isdigit() and _pid_alive(int(head))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextmanager
def staged_files(dest: str | Path, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write a set of files as one: yield a staging folder inside ``dest``; on clean exit move
    every file in it into ``dest`` (the names in ``last`` last, in that order), then remove
    the stage. On an exception nothing in ``dest`` changes. A killed run's stage is removed
    by the next call (:func:`remove_stale_staging`)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(dest)
    stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=dest))
    try:
        yield stage
        names = sorted(p.name for p in stage.iterdir() if p.name not in last)
        for name in [*names, *(n for n in last if (stage / n).exists())]:
            os.replace(stage / name, dest / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_staged(stage: Path, dest: str | Path, tables: Mapping[str, pl.DataFrame], texts: Mapping[str, str]) -> list[Path]:
    """Write ``tables`` (:func:`write_table`) and ``texts`` into ``stage`` (a
    :func:`staged_files` folder that will land in ``dest`` with the texts last); returns the
    paths every staged file will have in ``dest``, in the order they are moved there."""
    for name, df in tables.items():
        write_table(df, stage / name)
    for name, text in texts.items():
        write_text(stage / name, text)
    names = sorted(p.name for p in stage.iterdir())
    dest = Path(dest)
    return [dest / n for n in names if n not in texts] + [dest / n for n in texts]


# ----------------------------------------------------------------------------- run folders
class OutputNotWritableError(OSError):
    """An output folder cannot be written: found before any work starts."""


def check_writable(folder: str | Path, variable: str) -> Path:
    """Create ``folder`` if needed and write and remove a probe file in it; raise
    :class:`OutputNotWritableError` naming ``variable`` (the setting that chose it) otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputNotWritableError(
            f"cannot write into {folder} ({variable}): {type(e).__name__}: {e.strerror or e}. "
            f"Give {variable} a folder you can write to."
        ) from None
    return folder


class RunLockedError(RuntimeError):
    """Another run holds the output folder."""


_HELD: dict[str, int] = {}  # lock path -> open file descriptor, for the life of this process


def hold_run_lock(folder: str | Path, what: str = "run", shared: bool = False) -> Path:
    """Take ``<folder>/.ws-run.lock`` for the rest of this process (re-entrant within it).

    A second process that asks for the same folder gets :class:`RunLockedError` at once,
    naming the holder, instead of both writing into one output set. The operating system
    drops the lock when the holding process ends, killed or not, so it never goes stale.

    ``shared``: many processes may hold the folder together (the cells of a grid share the
    output root, each holding its own cell folder alone), but none while one holds it alone
    (a plain ``make sweep``), and the other way round.
    """
    import fcntl

    path = Path(folder) / ".ws-run.lock"
    key = str(path.resolve())
    if key in _HELD:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLockedError(
            f"another run is writing into {folder} ({holder}). Wait for it to finish, or give this "
            f"run another output folder (WS_OUT=...)."
        ) from None
    note = f"{what}, pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    if shared:  # the holders share the note: the latest one's, padded over the previous
        os.pwrite(fd, note.encode().ljust(200), 0)
    else:
        os.ftruncate(fd, 0)
        os.write(fd, note.encode())
    _HELD[key] = fd
    return path


def pickle_refusal(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a pickle, in one line: the global it asks
    for when torch names one (either phrasing torch has used: ``Unsupported global: GLOBAL x.y``
    or ``unsupported GLOBAL x.y whose module x is blocked``), else the error's first line —
    never torch's advice to load with ``weights_only=False``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    m = re.search(r"GLOBAL\s+([\w.]+)", text)
    if m:
        return f"it asks for {m.group(1)}, which is not a tensor type: arbitrary pickles are never executed"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    return f"{type(err).__name__}: {(lines[0] if lines else 'not a plain pickle of tensors')[:300]}"
