"""Atomic file sets: all or nothing, and a killed run's stage is cleaned up by the next."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ws.core.io import STAGING_PREFIX, remove_stale_staging, staged_files


def test_a_set_lands_whole_or_not_at_all(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    with pytest.raises(RuntimeError):
        with staged_files(tmp_path) as stage:
            (stage / "a.txt").write_text("new a")
            (stage / "b.txt").write_text("new b")
            raise RuntimeError("failed half way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old a"
    with staged_files(tmp_path, last=("a.txt",)) as stage:
        (stage / "a.txt").write_text("new a")
        (stage / "b.txt").write_text("new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    assert (tmp_path / "a.txt").read_text() == "new a"


def test_a_killed_runs_stage_is_removed_by_the_next_run(tmp_path):
    # a real process that made a stage and died
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{STAGING_PREFIX}{int(p.stdout)}-abc"
    old_form = tmp_path / f"{STAGING_PREFIX}k3j4h5"
    alive = tmp_path / f"{STAGING_PREFIX}{os.getpid()}-xyz"
    for d in (dead, old_form, alive):
        d.mkdir()
        (d / "v7_summary.tsv").write_text("half")
    with staged_files(tmp_path) as stage:
        (stage / "x.csv").write_text("1")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([alive.name, "x.csv"]), left
    assert remove_stale_staging(tmp_path) == []


class _Evil:
    def __reduce__(self):
        return (print, ("a pickle ran",))


def _refusal(obj, tmp_path) -> BaseException:
    import torch

    path = tmp_path / "x.pt"
    torch.save(obj, path)
    with pytest.raises(Exception) as e:
        torch.load(path, weights_only=True)
    return e.value


def test_pickle_refusal_names_the_global_and_drops_torchs_advice(tmp_path):
    import torch

    from ws.core.io import pickle_refusal

    blocked = pickle_refusal(_refusal({"a": torch.ones(1), "f": os.system}, tmp_path))  # a blocked module
    assert blocked.startswith(f"it asks for {os.system.__module__}.system,"), blocked
    not_allowed = pickle_refusal(_refusal({"a": _Evil()}, tmp_path))  # a global not allowed by default
    assert not_allowed.startswith("it asks for print,"), not_allowed
    for text in (blocked, not_allowed):
        assert "weights_only" not in text and "never executed" in text
    plain = pickle_refusal(ValueError("first line\nweights_only=False would work\n"))
    assert plain == "ValueError: first line"


def test_a_safetensors_file_is_the_same_bytes_from_process_to_process(tmp_path):
    """The library writes the metadata's keys in a per-process order; ``save_safetensors``
    sorts them in the header, so two processes write the same bytes, read back unchanged."""
    import json

    import torch
    from safetensors import safe_open

    code = (
        "import sys, torch\nfrom ws.core.io import save_safetensors\n"
        "save_safetensors({'b': torch.arange(5.0), 'a': torch.eye(3, dtype=torch.float64)}, sys.argv[1],"
        " {k: f'{i} é \"q\"' for i, k in enumerate('lkjihgfedcba')})"
    )
    paths = [tmp_path / f"{i}.safetensors" for i in range(2)]
    for p in paths:
        subprocess.run([sys.executable, "-c", code, str(p)], check=True)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    with safe_open(str(paths[0]), framework="pt") as f:
        assert f.metadata() == {k: f'{i} é "q"' for i, k in enumerate("lkjihgfedcba")}
        assert torch.equal(f.get_tensor("a"), torch.eye(3, dtype=torch.float64))
    raw = paths[0].read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert list(header["__metadata__"]) == sorted("lkjihgfedcba")
