"""The scale bench's report: the markdown tables and verdicts and the figure, from the JSON. See
:mod:`ws.bench.scale`."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ws.bench.fits import EXPONENT_MARGIN, GPU_REFERENCE, measured, predict
from ws.bench.measure import summary_line
from ws.bench.shapes import BY_KEY, SHAPES, STAGE_KEYS, stage_depth
from ws.core.io import write_text


# ----------------------------------------------------------------------------- report
def fmt_s(x: float | None) -> str:
    """Seconds in the unit that reads best (s, min, h); ``—`` when missing."""
    if x is None or not math.isfinite(x):
        return "—"
    if x < 60:
        return f"{x:.3g} s"
    if x < 3600:
        return f"{x / 60:.3g} min"
    return f"{x / 3600:.3g} h" if x < 360_000 else f"{x / 3600:,.0f} h"


def fmt_exp(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


#: the memory estimate must come within this share of every measured run's peak RSS
ESTIMATE_TOL = 0.2


def estimate_error(run: dict) -> float | None:
    """``estimate / measured − 1`` of a measured run's peak host memory (None when not measured)."""
    got, est = run.get("peak_rss_gib"), (run.get("memory_estimate_gib") or {}).get("peak")
    return est / got - 1 if got and est else None


def runs_table(r: dict) -> list[str]:
    head = ["run", "d", "layers", "params", *STAGE_KEYS, "analysis", "peak RSS analysis / all (estimate)"]
    rows = []
    for run in r["runs"]:
        if "stages_s" not in run:
            rows.append([f"`{run['spec']}`", *[""] * (len(head) - 2), run.get("skipped") or run.get("failed", "")])
            continue
        st, est = run["stages_s"], run["memory_estimate_gib"]["peak"]
        err = estimate_error(run)
        off = "" if err is None or abs(err) <= ESTIMATE_TOL else f", **off by more than {ESTIMATE_TOL:.0%}**"
        rel = "" if err is None else f", {err:+.0%}{off}"
        mem = f"{run['peak_rss_gib_analysis']:.2f} / {run['peak_rss_gib']:.2f} GiB ({est:.2f}{rel})"
        rows.append(
            [f"`{run['spec']}`", run["d_model"], run["n_layers"], f"{run['params'] / 1e6:.0f} M"]
            + [fmt_s(st[k]) for k in STAGE_KEYS]
            + [fmt_s(run["analysis_s"]), mem]
        )
    return table(head, rows)


#: each analysis phase of the estimate (ws.bench.shapes.ANALYSIS_PHASES) and the stage after
#: which the measured peak so far covers it (the build phase holds the lens's SVD too)
PHASE_ENDS = {"captures": "captures", "build": "lens", "v8": "v8_causal"}


def phase_errors(run: dict) -> dict[str, tuple[float, float]] | None:
    """Per analysis phase, ``(measured, estimated)`` GiB: the peak RSS so far when the phase's
    last stage ended, against the largest estimate of the phases up to it (a peak only grows).
    None for a run without per-stage peaks."""
    after, est = run.get("peak_rss_gib_after") or {}, run.get("memory_estimate_gib") or {}
    if not all(after.get(stage) for stage in PHASE_ENDS.values()):
        return None
    out, so_far = {}, 0.0
    for phase, stage in PHASE_ENDS.items():
        so_far = max(so_far, est[phase])
        out[phase] = (after[stage], so_far)
    return out


def phases_table(r: dict) -> list[str]:
    """The memory estimate phase by phase against each run's peak when the phase ended."""
    head = ["run", *(f"{p}: measured / estimate" for p in PHASE_ENDS)]
    rows = []
    for run in measured(r["runs"]):
        if (errs := phase_errors(run)) is None:
            continue
        cells = []
        for got, est in errs.values():
            off = "" if abs(est / got - 1) <= ESTIMATE_TOL else " **off**"
            cells.append(f"{got:.2f} / {est:.2f} GiB ({est / got - 1:+.0%}){off}")
        rows.append([f"`{run['spec']}`", *cells])
    return table(head, rows) if rows else ["No run recorded its peak per stage."]


def fits_table(r: dict) -> list[str]:
    head = [
        "stage",
        "L counts",
        "fit used",
        "d exponent b",
        "L exponent c",
        "per-layer fit b",
        "required (d, L)",
        "faster than required?",
    ]
    depth = {
        "all": "all layers",
        "touched": "the LoRA's layers",
        "from_first": "blocks from the LoRA's first",
        "none": "none (fixed)",
    }
    rows = []
    for key, f in r["fits"].items():
        per = f["per_layer"]["b"] if f["per_layer"] else None
        fast = {True: "**yes**", False: "no", None: "—"}[f["faster_than_required"]]
        exps = [fmt_exp(f["b"]), fmt_exp(f["c"]), fmt_exp(per)]
        name = f"{key} (without {', '.join(f['left_out'])}: other causal settings)" if f.get("left_out") else key
        rows.append(
            [
                name,
                depth[f["depth"]],
                f["used"] or "—",
                *exps,
                f"d^{f['required_d']}" + (" · L" if f["depth"] != "none" else ""),
                fast,
            ]
        )
    return table(head, rows)


def cell_text(cell: dict | None, key: str) -> str:
    if cell is None:
        return "—"
    rng = cell.get(key.replace("_s", "_range_s"))
    span = f", {fmt_s(rng[0])}–{fmt_s(rng[1])} over both fits" if rng and len(rng) == 2 and rng[0] != rng[1] else ""
    return f"{fmt_s(cell[key])} ({cell['how']}{span})"


def cells_table(r: dict) -> list[str]:
    head = ["shape", "d × L", "CPU: analysis", "CPU: training step", "one GPU: analysis", "one GPU: training step", "memory"]
    rows = []
    for name, c in r["extrapolated"].items():
        mem = f"host {c['memory_estimate_gib']:.0f} GiB (estimated); bf16 weights {c['gpu_weights_gib_bf16']:.0f} GiB"
        mem += "" if c["fits_one_gpu"] else f" (over one {GPU_REFERENCE['memory_gib']:.0f} GiB GPU)"
        cpu, gpu = c.get("cpu"), c.get("gpu")
        rows.append(
            [f"`{name}`", f"{c['d_model']} × {c['n_layers']}", cell_text(cpu, "analysis_s"), cell_text(cpu, "train_step_s")]
            + [cell_text(gpu, "analysis_s"), cell_text(gpu, "train_step_s"), mem]
        )
    return table(head, rows)


def verdict_lines(r: dict) -> list[str]:
    t, out = r["targets"], []
    if "analysis_s_got" in t:
        out.append(
            f"- **Targets at the `{t['shape']}` shape** (the analysis, no training): ≤ {fmt_s(t['analysis_s'])}: "
            f"{fmt_s(t['analysis_s_got'])} ({t['analysis_how']}), {'met' if t['analysis_met'] else '**missed**'}; "
            f"peak RSS ≤ {t['peak_rss_gib']:g} GiB: {t['peak_rss_gib_got']:.2f} GiB ({t['rss_how']}), "
            f"{'met' if t['rss_met'] else '**missed**'}."
        )
    if "beside_weights" in t:
        h = t["beside_weights"]
        out.append(
            f"- **Host memory at the whole `{h['shape']}` shape**, the analysis beside the float32 weights ≤ {h['gib']:g} GiB: "
            f"{h['got_gib']:.1f} GiB ({h['how']}), {'met' if h['met'] else '**missed**'}."
        )
    for name, b in r["bottleneck"].items():
        out.append(
            f"- **Bottleneck at `{name}`** ({b['how']}): `{b['stage']}`, {100 * b['share']:.0f} % of the analysis; "
            f"it grows as d^{fmt_exp(b['b'])} · L^{fmt_exp(b['c'])} (its arithmetic: d^{b['required_d']} · L)."
        )
    fast = [k for k, f in r["fits"].items() if f["faster_than_required"]]
    out.append(
        "- **Grows faster than its arithmetic requires** (b over the required exponent by more than "
        f"{EXPONENT_MARGIN}): " + (", ".join(f"`{k}`" for k in fast) if fast else "none") + "."
    )
    return out


def report_md(r: dict, figure: str) -> str:
    """The markdown page of a ``bench_scale.json``."""
    s, ok = r["settings"], measured(r["runs"])
    n = f"{ok[0]['n_fit']} FIT / {ok[0]['n_eval']} EVAL probes" if ok and "n_fit" in ok[0] else "FIT / EVAL probes"
    lines = [
        f"# {r['date']} — `make bench-scale` on {r['device']}",
        "",
        f"- **Settings:** {n} ({s['probe_counts']}), k = {s['k']}, k_broad = {s['k_broad']}, "
        f"{s['n_boot']} bootstrap resamples, {s['n_causal']} causal candidates, {s['n_causal_null']} null draws per "
        f"rank; {s['diff']}; the training step is the median of {s['train_steps']}.",
        "- **Method:** [../scale.md](../scale.md). Every figure marked *extrapolated* is a fit's, not a measurement.",
        "",
        *verdict_lines(r),
        "",
        "## Measured runs",
        "",
        *runs_table(r),
        "",
        f"The memory estimate phase by phase (the peak so far when the phase ended; **off**: by more than {ESTIMATE_TOL:.0%}):",
        "",
        *phases_table(r),
        "",
        "## How each stage grows",
        "",
        *fits_table(r),
        "",
        "## One cell at the 0.6B, 8B and 70B shapes",
        "",
        *cells_table(r),
        "",
        f"The GPU columns are extrapolated from this run under one assumption: {gpu_assumption(r)}",
        "",
        f"![stage seconds against d_model]({figure})",
        "",
    ]
    return "\n".join(lines)


def gpu_assumption(r: dict) -> str:
    cells = [c.get("gpu") for c in r["extrapolated"].values() if c.get("gpu")]
    return cells[0]["assumption"] + "." if cells else "none (no CPU run to scale)."


def plot(r: dict, path: Path) -> None:
    """Two log-log panels: each stage's seconds per layer it runs over against d (measured
    points, the per-layer fit as a line), and one cell's seconds at the target shapes on this
    device (filled where measured, hollow where extrapolated; black: the analysis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for i, key in enumerate(STAGE_KEYS):
        _per_layer_panel(ax1, r, key, f"C{i}")
        _cells_panel(ax2, r, key, f"C{i}")
    _cells_panel(ax2, r, "analysis", "black")
    ax1.set(xlabel="d_model", ylabel="seconds per layer it runs over", title="measured (dots), per-layer fit (lines)")
    ax2.set(xlabel="d_model", ylabel="seconds", title="one cell at 0.6B, 8B, 70B: hollow = extrapolated")
    for ax in (ax1, ax2):
        _log_axes(ax)
    if ax2.has_data():
        cells = r["extrapolated"]
        ax2.set_xticks([c["d_model"] for c in cells.values()], [f"{n}\n{c['d_model']}" for n, c in cells.items()], minor=False)
        ax2.set_xticks([], minor=True)
    fig.suptitle(f"make bench-scale, {r['date']}: {r['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _log_axes(ax) -> None:
    if not ax.has_data():  # a single width: nothing to fit or extrapolate
        ax.text(0.5, 0.5, "no fit: fewer than two widths measured", ha="center", transform=ax.transAxes)
        return
    ax.set(xscale="log", yscale="log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _per_layer_panel(ax, r: dict, key: str, color: str) -> None:
    ok = measured(r["runs"])
    per_layer = [x["stages_s"][key] / stage_depth(BY_KEY[key], x["n_layers"]) for x in ok]
    ax.plot([x["d_model"] for x in ok], per_layer, "o", color=color, label=key)
    per = r["fits"][key]["per_layer"]
    if per and ok:
        xs = np.geomspace(min(x["d_model"] for x in ok), SHAPES["llama-3-70b"].d, 50)
        ax.plot(xs, [predict(per, x, 1) for x in xs], "-", color=color, alpha=0.6)


def _cells_panel(ax, r: dict, key: str, color: str) -> None:
    """One stage's (or, for ``analysis``, the analysis total's) seconds at the target shapes."""
    cells = [(c["d_model"], c.get("cpu") or c.get("gpu")) for c in r["extrapolated"].values()]
    pts = [(d, c["analysis_s"] if key == "analysis" else c["stages_s"][key], c["how"]) for d, c in cells if c]
    if pts:
        label = "analysis (v7 + v8)" if key == "analysis" else None
        ax.plot([d for d, _, _ in pts], [t for _, t, _ in pts], "-", color=color, alpha=0.6, label=label)
    for d, t, how in pts:
        ax.plot([d], [t], "o", color=color, mfc=color if how == "measured" else "none")


def write_report(json_path: Path, folder: Path) -> list[Path]:
    """``<date>-<cpu|gpu>-scale.md`` and ``.png`` in ``folder`` from a ``bench_scale.json``."""
    r = json.loads(Path(json_path).read_text())
    stem = f"{r['date']}-{'gpu' if r['machine']['kind'] == 'cuda' else 'cpu'}-scale"
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{stem}.png"
    with tempfile.TemporaryDirectory() as tmp:  # the figure written whole, then moved into place
        plot(r, Path(tmp) / png.name)
        os.replace(Path(tmp) / png.name, png)
    md = write_text(folder / f"{stem}.md", report_md(r, png.name))
    return [md, png]


def summary_text(r: dict) -> str:
    lines = [r["device"], *(f"{x['spec']}: {summary_line(x)}" for x in r["runs"]), *verdict_lines(r)]
    return "\n".join(lines)
