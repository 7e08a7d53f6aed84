"""What one sweep costs as the model grows: ``make bench-scale`` (``python -m ws.bench.scale``).

Random-weight models built from the configurations of real model families (no weights are
downloaded; float32, seeded) run every stage of one sweep on this machine, each shape in a
fresh child process so that its peak resident memory is its own:

- v7: the captures, the candidate building (no steering-vector, planted or gradient rows: a
  random diff has none of their files), the scoring with the closed-form null, the
  bootstrap and the q-values, the S-space lens, the report (``ws.v7.sweep.run_seed`` with the
  activation cache off, then ``write_v7``);
- v8: the block-local label with its scores, and the causal projection test with the
  run's defaults (:func:`ws.bench.common.v8_stages`);
- one LoRA training step (the median of a few, after one warm-up step), through the suite's
  own step (:func:`ws.diffs.fasttrain.step_loss`), on a few short examples;
- the peak RSS after the analysis (v7 + v8) and after the training step.

The diff is not trained: a random rank-8 ``B·A`` on every tensor a LoRA diff touches (the
seven projections of the LoRA's layers, :func:`ws.diffs.adapters.layer_range`), each scaled
to 2 % of its weight's Frobenius norm. The stages' work does not depend on what the diff
learnt, only on its shape.

The shapes (:data:`SHAPES`; the numbers are those of each family's published ``config.json``;
rotary and norm constants are left at the library's defaults, they do not change the cost):

======================  ======  ======  =====  =====  ===  ========  ======  ====
name                    family  d       L      ff     H    KV heads  vocab   tied
======================  ======  ======  =====  =====  ===  ========  ======  ====
``smollm2-135m``        Llama   576     30     1536   9    3         49152   yes
``qwen3-0.6b``          Qwen3   1024    28     3072   16   8         151936  yes
``qwen3-1.7b``          Qwen3   2048    28     6144   16   8         151936  yes
``llama-3-8b``          Llama   4096    32     14336  32   8         128256  no
``llama-3-70b``         Llama   8192    80     28672  64   8         128256  no
``tiny``                Llama   64      2      128    4    2         49152   yes
======================  ======  ======  =====  =====  ===  ========  ======  ====

Qwen3's head dimension is 128 (so its attention width 16 · 128 = 2048 exceeds d at 0.6B);
the Llamas' is d / H. ``llama-3-70b`` is never built: its shape is a target of the
extrapolation. ``tiny`` is for the tests. A run names a shape, optionally with the number of
layers to build (``llama-3-8b:2``); without one the parent builds the full depth when the
memory estimate (:func:`memory_estimate`) fits the memory available, else the deepest
model that does, and says so.

From the measured shapes the parent fits how each stage grows (:func:`fit_stages`), with
``L`` the number of layers the stage's work runs over (all of them, the LoRA's touched
layers, or the blocks from its first: :func:`stage_depth`):
``log t = a + b·log d + c·log L`` by least squares when the shapes determine it (≥ 4 runs,
two distinct depths and widths), and always the per-layer fit ``t / L = e^a · d^b``; compares
each exponent ``b`` with what the stage's arithmetic requires (:data:`STAGES`); names the
bottleneck; and extrapolates one cell (the analysis, and one training step) to the 0.6B, 8B
and 70B shapes on this CPU and on one GPU (:func:`extrapolate`). Every such figure is
labelled ``extrapolated``; the GPU figures rest on the assumption stated in
:data:`GPU_REFERENCE`. ``python -m ws.bench.scale --report <folder>`` writes the markdown
table and the log-log figure (docs/scale.md says how to read them).

    python -m ws.bench.scale                          # every default shape → <out>/bench/bench_scale.json
    python -m ws.bench.scale --shapes qwen3-0.6b,llama-3-8b:2
    python -m ws.bench.scale --shapes tiny --smoke    # the smoke run's probe counts: seconds
    python -m ws.bench.scale --report docs/measured   # <date>-<cpu|gpu>-scale.md and .png from the JSON
    python -m ws.bench.scale --merge a.json,b.json --json all.json   # shapes run one at a time, fitted together

Options: ``--probes N`` (N FIT and EVAL probes), ``--force`` (run a shape whose memory
estimate exceeds the memory available), ``--json PATH`` (the JSON to write, or to read with
``--report``). ``WS_DEVICE`` / ``WS_DTYPE`` apply as in a sweep (on a GPU: bfloat16 weights).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from ws.bench.measure import measure, merge, run_all, write_json
from ws.bench.report import summary_text, write_report
from ws.bench.shapes import DEFAULT_RUNS
from ws.core.io import write_text
from ws.core.log import setup_logging
from ws.core.paths import BENCH_DIR, out_dir, resolve_user_path


# ----------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None):
    p = argparse.ArgumentParser(prog="python -m ws.bench.scale", description="What one sweep costs as the model grows.")
    p.add_argument("--shapes", default=",".join(DEFAULT_RUNS), help="runs, comma-separated: name or name:layers")
    p.add_argument("--smoke", action="store_true", help="the smoke run's probe, bootstrap and causal-test counts")
    p.add_argument("--probes", type=int, help="this many FIT and EVAL probes")
    p.add_argument("--force", action="store_true", help="run a shape whose memory estimate exceeds the memory available")
    p.add_argument(
        "--json", help="the bench_scale.json to write, or to read with --report (default <out>/bench/bench_scale.json)"
    )
    p.add_argument("--report", metavar="FOLDER", help="write the table and the figure of the JSON into FOLDER")
    p.add_argument(
        "--merge",
        metavar="JSONS",
        help="comma-separated bench_scale.json files of one machine: their runs, fitted together, into --json",
    )
    p.add_argument("--shape", help=argparse.SUPPRESS)  # a child: one run in this process
    p.add_argument("--result", help=argparse.SUPPRESS)  # the child's JSON record
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    a = parse_args(argv)
    path = resolve_user_path(a.json) if a.json else out_dir() / BENCH_DIR / "bench_scale.json"
    if a.shape:
        setup_logging("bench_scale")
        rec = json.dumps(measure(a.shape, a.smoke, a.probes), indent=2, default=float)
        if a.result:
            write_text(Path(a.result), rec)
        else:
            print(rec)
        return
    if a.merge:
        if not a.json:
            raise SystemExit("--merge writes the merged runs to the file --json names: give --json")
        write_json(path, merge([resolve_user_path(p.strip()) for p in a.merge.split(",") if p.strip()]))
        print(f"written: {path}")
        if not a.report:
            return
    if a.report:
        for p in write_report(path, resolve_user_path(a.report)):
            print(f"written: {p}")
        return
    r = run_all([s.strip() for s in a.shapes.split(",") if s.strip()], a.smoke, a.probes, a.force, path)
    write_json(path, r)
    print(summary_text(r))
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
