"""ws.core.show outside a notebook: plain text, so a notebook's .py also runs as a script."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ws.config import Config
from ws.core import show


def test_outside_a_notebook_it_prints(tmp_path, capsys):
    assert not show.in_notebook()
    png = tmp_path / "x.png"
    show.image(png, title="a title")
    show.table(pl.DataFrame({"a": [1, 2]}))
    show.markdown("# heading")
    out = capsys.readouterr().out
    assert "a title" in out and str(png) in out and "shape: (2, 1)" in out and "# heading" in out


def test_effect_plots_lie_beside_each_seeds_diff(tmp_path):
    cfg = Config(seeds=(0, 2), out_root=tmp_path)
    assert show.effect_plots(cfg) == {s: Path(tmp_path, "sycophancy", "lora", f"seed{s}", "effect.png") for s in (0, 2)}
