"""The grid's summary: one row per cell, read from the cells' own files, and a page across cells.

``<WS_OUT>/grids/<name>/grid_summary.tsv``: per cell its status (``ran``, ``done`` earlier,
``kept``, ``failed``, ``skipped``), time, device, host, the error, and the figures its files
hold: the diffs' target spread and specificity (mean over seeds, from each diff's
metadata, as the conclusions print them), v7's answer across seeds (each seed's winner by
:func:`ws.stats.summaries.ranked` on ``v7_seeds.tsv``, as :func:`ws.v7.sweep.seed_stability`
picks it: ``stable`` when one candidate wins every seed), v8's verdict (the tested
write/mixed candidate that carries the behaviour by the rule, best inside retention first,
from ``v8_causal.tsv``), and the cross-adapter comparison's mean Kendall τ.

``grid_summary.md``: the cells, the failures with their errors, and per behaviour where the
answer depends on the adapter type or on the model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl

from ws.behavior import data
from ws.core.io import staged_files, write_staged
from ws.core.markdown import df_table
from ws.diffs.store import read_meta
from ws.grid.spec import Cell
from ws.stats.summaries import ranked

SUMMARY = "grid_summary.tsv"
PAGE = "grid_summary.md"
FIGURE = "grid_summary.png"
NAN = math.nan


def _tsv(path: Path) -> pl.DataFrame | None:
    try:
        return pl.read_csv(path, separator="\t", infer_schema_length=None)
    except Exception:  # noqa: BLE001 - a missing or unreadable table: the figure is left empty
        return None


def diff_figures(cell: Cell) -> dict[str, Any]:
    """Mean target spread and specificity over the cell's seeds (the diffs' metadata)."""
    cfg = cell.config
    target = data.get_behavior(cfg.behavior).target
    spreads, specs = [], []
    for seed in cfg.seeds:
        try:
            m = read_meta(cfg.diff_path(seed))
        except Exception:  # noqa: BLE001 - no diff (a failed cell): no figure
            continue
        if target in (m.get("effect_spread") or {}):
            spreads.append(float(m["effect_spread"][target]))
        if m.get("specificity_ratio") is not None:
            specs.append(float(m["specificity_ratio"]))
    mean = lambda v: sum(v) / len(v) if v else NAN  # noqa: E731
    return {"target_set": target, "target_spread": mean(spreads), "specificity": mean(specs)}


def v7_answer(v7_seeds: pl.DataFrame) -> dict[str, Any]:
    """Each seed's winner (write/mixed A-hypotheses by joint score) and the answer across seeds."""
    seeds = sorted(set(v7_seeds["seed"].to_list()))
    winners = {}
    for s in seeds:
        rk = ranked(v7_seeds.filter(pl.col("seed") == s))
        winners[s] = rk["subspace"][0] if rk.height else ""
    first = winners[seeds[0]] if seeds else ""
    won = sum(w == first for w in winners.values())
    stable = bool(seeds) and won == len(seeds)
    return {
        "v7_answer": first if stable else "no stable winner",
        "v7_seed0_winner": first,
        "v7_winner_seeds_won": won,
        "v7_stable": stable,
    }


def v8_carrier(causal: pl.DataFrame) -> dict[str, Any]:
    """The write/mixed candidate that carries the behaviour (best inside retention), or none."""
    hyp = causal.filter(pl.col("kind") == "A-hypothesis")
    yes = hyp.filter(pl.col("carries").cast(pl.String).str.to_lowercase() == "true")
    yes = yes.sort(["retention_inside", "subspace"], descending=[True, False])
    if not yes.height:
        return {"v8_carrier": "none", "v8_retention_inside": NAN, "v8_retention_outside": NAN}
    r = yes.row(0, named=True)
    return {
        "v8_carrier": r["subspace"],
        "v8_retention_inside": r["retention_inside"],
        "v8_retention_outside": r["retention_outside"],
    }


def cell_figures(cell: Cell) -> dict[str, Any]:
    """What the cell's files say (empty figures where the files are not there)."""
    out: dict[str, Any] = {"target_set": "", "target_spread": NAN, "specificity": NAN, "v7_answer": "", "v7_seed0_winner": ""}
    out.update({"v7_winner_seeds_won": None, "v7_stable": None, "v8_carrier": "", "v8_retention_inside": NAN})
    out.update({"v8_retention_outside": NAN, "cross_mean_tau": NAN})
    if cell.config is None:
        return out
    if cell.sweep in ("v7", "v8"):
        out.update(diff_figures(cell))
    if cell.sweep == "v7" and (s := _tsv(cell.folder / "v7_seeds.tsv")) is not None:
        out.update(v7_answer(s))
    if cell.sweep == "v8" and (c := _tsv(cell.folder / "v8_causal.tsv")) is not None:
        out.update(v8_carrier(c))
    if cell.sweep == "cross_adapter" and (t := _tsv(cell.folder / "cross_adapter_tau.tsv")) is not None and t.height:
        out["cross_mean_tau"] = float(t["kendall_tau"].cast(pl.Float64).fill_nan(None).mean() or NAN)
    return out


COLUMNS = {
    "sweep": pl.String,
    "model": pl.String,
    "behavior": pl.String,
    "adapter": pl.String,
    "status": pl.String,
    "seconds": pl.Float64,
    "device": pl.String,
    "host": pl.String,
    "target_set": pl.String,
    "target_spread": pl.Float64,
    "specificity": pl.Float64,
    "v7_answer": pl.String,
    "v7_seed0_winner": pl.String,
    "v7_winner_seeds_won": pl.Int64,
    "v7_stable": pl.Boolean,
    "v8_carrier": pl.String,
    "v8_retention_inside": pl.Float64,
    "v8_retention_outside": pl.Float64,
    "cross_mean_tau": pl.Float64,
    "folder": pl.String,
    "error": pl.String,
}


def summary_table(run) -> pl.DataFrame:
    """One row per cell of ``run`` (a :class:`ws.grid.runner.GridRun`), in plan order."""
    root = Path(run.cells[0].env_dict["WS_OUT"]) if run.cells else Path()
    rows = []
    for cell in run.cells:
        r = run.results.get(cell.key, {"status": "not run"})
        folder = cell.folder.relative_to(root) if cell.folder is not None and cell.folder.is_relative_to(root) else cell.folder
        rows.append(
            {
                "sweep": cell.sweep,
                "model": cell.model,
                "behavior": cell.behavior,
                "adapter": cell.adapter,
                "status": r["status"],
                "seconds": r.get("seconds", NAN),
                "device": r.get("device", ""),
                "host": r.get("host", ""),
                **cell_figures(cell),
                "folder": str(folder or ""),
                "error": r.get("error", ""),
            }
        )
    return pl.DataFrame(rows, schema=COLUMNS)


def _num(x: Any, fmt: str = "{:+.2f}") -> str:
    return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def dependence_lines(df: pl.DataFrame) -> list[str]:
    """Per behaviour: does v7's answer (and v8's carrier) change with the adapter type or the model?"""
    out = []
    for b in dict.fromkeys(df["behavior"].to_list()):
        sub = df.filter((pl.col("behavior") == b) & (pl.col("sweep") == "v7") & (pl.col("v7_answer") != ""))
        if not sub.height:
            continue
        out.append(f"### {b}")
        for by, over in (("model", "adapter"), ("adapter", "model")):
            for key in dict.fromkeys(sub[by].to_list()):
                part = sub.filter(pl.col(by) == key)
                answers = dict(zip(part[over].to_list(), part["v7_answer"].to_list(), strict=True))
                if len(answers) < 2:
                    continue
                same = len(set(answers.values())) == 1
                what = ", ".join(f"{k}: `{v}`" for k, v in answers.items())
                verdict = "the same answer" if same else f"**the answer depends on the {over}**"
                out.append(f"- {by} {key}, across {over}s: {verdict} ({what})")
        v8 = df.filter((pl.col("behavior") == b) & (pl.col("sweep") == "v8") & (pl.col("v8_carrier") != ""))
        for r in v8.iter_rows(named=True):
            out.append(
                f"- v8, {r['model']} · {r['adapter']}: carried by `{r['v8_carrier']}`"
                + (
                    f" (inside {_num(r['v8_retention_inside'], '{:.1%}')}, outside {_num(r['v8_retention_outside'], '{:.1%}')})"
                    if r["v8_carrier"] != "none"
                    else " (no tested candidate carries it)"
                )
            )
        for r in df.filter((pl.col("behavior") == b) & (pl.col("sweep") == "cross_adapter")).iter_rows(named=True):
            if r["status"] in ("ran", "done"):
                out.append(
                    f"- cross-adapter on {r['model']}: mean Kendall τ between the adapters' rankings "
                    f"{_num(r['cross_mean_tau'])} (see `{r['folder']}/cross_adapter_conclusion.md`)"
                )
        out.append("")
    return out


def summary_md(run, df: pl.DataFrame) -> str:
    counts = df.group_by("status", maintain_order=True).len()
    lines = [
        f"# Grid `{run.grid.name}`",
        "",
        f"{df.height} cells: " + ", ".join(f"{n} {s}" for s, n in counts.iter_rows()) + ".",
        "Figures are read from each cell's own files (see `docs/grid.md`); times are this run's, or the earlier "
        "run's for cells done before.",
        "",
        "## Cells",
        "",
    ]
    cols = [
        "sweep",
        "model",
        "behavior",
        "adapter",
        "status",
        "seconds",
        "device",
        "target_spread",
        "specificity",
        "v7_answer",
        "v8_carrier",
    ]
    show = df.select(cols).with_columns(
        pl.col("target_spread").map_elements(_num, return_dtype=pl.String),
        pl.col("specificity").map_elements(lambda x: _num(x, "{:.2f}"), return_dtype=pl.String),
        pl.col("seconds").map_elements(lambda x: _num(x, "{:.0f}"), return_dtype=pl.String),
    )
    lines += [df_table(show), ""]
    bad = df.filter(pl.col("status").is_in(["failed", "skipped", "kept"]))
    if bad.height:
        lines += ["## Cells that did not run", ""]
        lines += [
            f"- `{r['sweep']} · {r['model']} · {r['behavior']} · {r['adapter']}` ({r['status']}): {r['error']}"
            for r in bad.iter_rows(named=True)
        ]
        lines.append("")
    lines += [f"![the v7 cells]({FIGURE})", ""]
    dep = dependence_lines(df)
    if dep:
        lines += ["## Across cells", "", *dep]
    return "\n".join(lines).rstrip() + "\n"


def plot_cells(df: pl.DataFrame, path: Path, title: str) -> None:
    """One bar per v7 cell: the diffs' mean target spread, labelled with v7's answer and the
    specificity; cells without figures (failed, skipped) are listed with their status."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v7 = df.filter(pl.col("sweep") == "v7")
    labels = [f"{r['model']} · {r['behavior']} · {r['adapter']}" for r in v7.iter_rows(named=True)]
    vals = [r["target_spread"] if math.isfinite(r["target_spread"] or NAN) else 0.0 for r in v7.iter_rows(named=True)]
    fig, ax = plt.subplots(figsize=(9, 0.45 * max(len(labels), 2) + 1.2))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, vals, color=["tab:blue" if r["status"] in ("ran", "done") else "0.8" for r in v7.iter_rows(named=True)])
    for yi, r, v in zip(y, v7.iter_rows(named=True), vals, strict=True):
        if r["status"] in ("ran", "done"):
            note = f" {r['v7_answer'] or '—'} · specificity {_num(r['specificity'], '{:.2f}')}"
        else:
            note = f" {r['status']}"
        ax.text(v if v > 0 else 0, yi, note, va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("target spread (nats, mean over seeds; logratio at α=+2 minus α=−2)")
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(run) -> list[Path]:
    """``grid_summary.tsv``, ``grid_summary.png`` and ``grid_summary.md`` into the grid's
    folder, as one set (the page last)."""
    df = summary_table(run)
    with staged_files(run.folder, last=(PAGE,)) as stage:
        plot_cells(df, stage / FIGURE, f"grid {run.grid.name}: each v7 cell's diff and the answer across its seeds")
        written = write_staged(stage, run.folder, {SUMMARY: df}, {PAGE: summary_md(run, df)})
    return written
