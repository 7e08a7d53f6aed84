"""Every paired notebook, executed the way a Jupyter user runs it.

The committed ``nbs/*.ipynb`` (not the ``.py``) is run through nbclient with the kernel its
metadata names and the kernel's working directory set to ``nbs/``, as Jupyter does, in
smoke mode (tiny random model) with ``WS_OUT``, ``WS_CACHE`` and ``WS_LOGS`` in a temporary
folder (``tests/smoke_runs.py``). The v7, v8 and cross-adapter runs are the session's shared
runs, which the end-to-end tests read too; the tests here read the executed notebooks and
the files they wrote.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest
from smoke_runs import execute_notebook, nbs_tree

from ws.v7 import sweep

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
NOTEBOOKS = sorted(p for p in NBS.glob("*.ipynb") if p.with_suffix(".py").exists())
SWEEP, V8, DIFF, CROSS = "hypothesis_sweep_v7.ipynb", "hypothesis_sweep_v8.ipynb", "train_diff.ipynb", "cross_adapter.ipynb"
GRID = "grid.ipynb"
STEER = "steering_head_to_head.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"


def _kernel_name(path: Path) -> str:
    return nbformat.read(path, as_version=4).metadata["kernelspec"]["name"]


@pytest.fixture(scope="module")
def runs(smoke_sweeps, smoke_cross_refusal, smoke_grid, smoke_steering, nbs_tree_before, tmp_path_factory) -> dict:
    """Every paired notebook as Jupyter runs it: the session's shared runs of v7, v8 and the
    cross-adapter comparison and the grid (tests/smoke_runs.py), the steering head to head (into the
    sweeps' folder), and a run of the training notebook."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    for path in NOTEBOOKS:
        if _kernel_name(path) not in specs:
            pytest.fail(f"{path.name} names kernel {_kernel_name(path)!r}, which is not registered: run `make setup`")
    base = tmp_path_factory.mktemp("train_diff")
    out = {
        SWEEP: (smoke_sweeps.v7, smoke_sweeps.base),
        V8: (smoke_sweeps.v8, smoke_sweeps.base),
        CROSS: (smoke_cross_refusal.nb, smoke_cross_refusal.base),
        DIFF: (execute_notebook("train_diff", base), base),
        GRID: (smoke_grid.nb, smoke_grid.base),
        STEER: (smoke_steering.nb, smoke_steering.base),
    }
    assert set(out) == {p.name for p in NOTEBOOKS}, "a paired notebook has no run here"
    out["nbs_tree_changes"] = nbs_tree() ^ nbs_tree_before
    return out


def _outputs(nb, source_contains: str | None = None):
    for c in nb.cells:
        if c.cell_type == "code" and (source_contains is None or source_contains in c.source):
            yield from c.get("outputs", [])


def _images(nb, source_contains: str | None = None) -> int:
    return sum("image/png" in o.get("data", {}) for o in _outputs(nb, source_contains))


def test_every_paired_notebook_is_covered():
    assert {p.name for p in NOTEBOOKS} >= {SWEEP, DIFF, CROSS, STEER}


def test_the_notebooks_kernel_is_this_environment():
    """The kernel the notebooks name is registered and runs this environment's Python."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    for path in NOTEBOOKS:
        name = _kernel_name(path)
        try:
            spec = KernelSpecManager().get_kernel_spec(name)
        except NoSuchKernel:
            pytest.fail(f"{path.name} names kernel {name!r}, which is not registered: run `make setup`")
        assert Path(spec.argv[0]).parent.parent.resolve() == Path(sys.prefix).resolve(), (
            f"kernel {name!r} runs {spec.argv[0]}, not this environment ({sys.prefix}): run `make setup`"
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.name for p in NOTEBOOKS])
def test_no_cell_fails(runs, name):
    nb, _ = runs[name]
    errors = [o for o in _outputs(nb) if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}\n" + "\n".join(errors[0].traceback)[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.name for p in NOTEBOOKS])
def test_progress_is_a_widget_without_a_warning(runs, name):
    nb, _ = runs[name]
    text = "".join(o.get("text", "") for o in _outputs(nb) if o.output_type == "stream")
    assert "IProgress not found" not in text
    assert "it/s]" not in text and "s/it]" not in text, f"{name}: a text progress bar in a notebook"
    if name == DIFF:  # training always shows bars
        assert any(WIDGET in o.get("data", {}) for o in _outputs(nb)), "no widget progress bar"


@pytest.mark.slow
def test_outputs_go_to_ws_out_not_to_nbs(runs):
    _, base = runs[SWEEP]
    v7 = base / "out" / "models" / "tiny-llama" / "sycophancy" / "lora" / "v7"
    for f in sweep.V7_FILES + sweep.EXTRA_FILES:
        assert (v7 / f).is_file() and (v7 / f).stat().st_size > 0, f"missing or empty {f}"
    _, base = runs[DIFF]
    seed0 = base / "out" / "models" / "tiny-llama" / "sycophancy" / "lora" / "seed0"
    for f in ("w.safetensors", "effect.csv", "effect.png"):
        assert (seed0 / f).is_file(), f"missing {f}"
    from ws.cross_adapter import compare as cross_adapter

    _, base = runs[CROSS]
    for f in (*cross_adapter.TABLES, cross_adapter.CONCLUSION):
        assert (base / "out" / "models" / "tiny-llama" / "refusal" / "cross_adapter" / f).is_file(), f"missing {f}"
    assert not runs["nbs_tree_changes"], f"the notebooks wrote into nbs/: {sorted(runs['nbs_tree_changes'])}"


@pytest.mark.slow
def test_figures_are_shown_inline(runs):
    sweep_nb, _ = runs[SWEEP]
    assert _images(sweep_nb, "v7_joint_act_weight_scatter.png") == 1, "the scatter is not shown"
    assert _images(sweep_nb, "show.effect_plots(cfg)") >= 1, "the diff's effect plot is not shown"
    diff_nb, _ = runs[DIFF]
    assert _images(diff_nb, "effect.png") == 1, "the effect plot is not shown"
    cross_nb, _ = runs[CROSS]
    assert _images(cross_nb, "cross_adapter_ranks.png") == 1, "the rank heat map is not shown"


@pytest.mark.slow
def test_sweep_sections_come_in_reading_order(runs):
    nb, _ = runs[SWEEP]
    heads = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    order = [
        "## What the diff does",
        "## Bottom line",
        "## The joint scatter",
        "## Which claims survive",
        "## Specificity",
        "## Seeds",
        "## Where the files went",
    ]
    at = [next(i for i, h in enumerate(heads) if h.startswith(o)) for o in order]
    assert at == sorted(at), heads
    assert heads[-1].startswith("## Where the files went")


@pytest.mark.slow
def test_claims_shown_match_the_conclusion(runs):
    nb, base = runs[SWEEP]
    html = "".join(o.get("data", {}).get("text/html", "") for o in _outputs(nb, "verdicts.claims_table("))
    shown = re.findall(r"does not survive|survives|not tested", html)
    text = (base / "out" / "models" / "tiny-llama" / "sycophancy" / "lora" / "v7" / "v7_conclusion.md").read_text()
    section = text.split("## Which claims survive", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| claim")]
    written = [line.rstrip(" |").rsplit("| ", 1)[1].replace("**", "") for line in rows]
    assert shown and shown == written
