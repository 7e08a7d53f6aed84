"""Known answers of ``ws.monitor`` (screen a diff against a found subspace) and of v8's carrier
file (``ws.v8.carrier``): the math on random tensors with a planted subspace (no model), the
refusals, the file set, one checkpoint against the base, and ``make monitor`` on the session's
smoke v8 run."""

from __future__ import annotations

import math
import shutil

import numpy as np
import polars as pl
import pytest
import torch

from ws import monitor as M
from ws.core.caveats import MONITOR_ALPHA, MONITOR_MIN_RATIO
from ws.v8 import carrier as C

D, K, FFN, LAYERS = 64, 8, 128, 3


def shapes(n_layers: int = LAYERS, d: int = D) -> dict[str, tuple[int, ...]]:
    out = {}
    for l in range(n_layers):
        out[f"model.layers.{l}.self_attn.o_proj.weight"] = (d, d)
        out[f"model.layers.{l}.self_attn.q_proj.weight"] = (d, d)
        out[f"model.layers.{l}.mlp.down_proj.weight"] = (d, FFN)
    return out


def haar(d: int, k: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def write_subspace(path, bases: dict[int, torch.Tensor], model: str = "m", verdict: str = "carries"):
    c = C.CarrierBasis(bases, "planted", verdict, model, "sycophancy", "lora", 0, int(next(iter(bases.values())).shape[0]))
    return C.save_carrier(c, path)


@pytest.fixture
def planted(tmp_path):
    gen = torch.Generator().manual_seed(0)
    bases = {l: haar(D, K, gen) for l in range(LAYERS)}
    return M.read_subspace(write_subspace(tmp_path / "s.safetensors", bases), shapes(), model_name="m"), gen


def random_diff(gen: torch.Generator, rank: int | None = None) -> dict[str, torch.Tensor]:
    w = {}
    for l in range(LAYERS):
        for name, (rows, cols) in (("self_attn.o_proj", (D, D)), ("mlp.down_proj", (D, FFN))):
            if rank is None:
                t = torch.randn(rows, cols, generator=gen)
            else:
                t = torch.randn(rows, rank, generator=gen) @ torch.randn(rank, cols, generator=gen)
            w[f"model.layers.{l}.{name}.weight"] = t
    return w


def overall(r: M.MonitorResult) -> dict:
    o = r.overall
    assert o is not None
    return o


# ----------------------------------------------------------------------------- known answers
def test_a_diff_inside_the_subspace_scores_d_over_k_and_writes_into_it(planted):
    sub, gen = planted
    w = {}
    for l, B in sub.bases.items():
        w[f"model.layers.{l}.self_attn.o_proj.weight"] = (B @ torch.randn(K, D, generator=gen, dtype=torch.float64)).float()
        w[f"model.layers.{l}.mlp.down_proj.weight"] = (B @ torch.randn(K, FFN, generator=gen, dtype=torch.float64)).float()
    w["model.layers.0.self_attn.q_proj.weight"] = torch.randn(D, D, generator=gen)  # not a writer: not screened
    r = M.monitor(shapes(), w, sub, model_name="m")
    o = overall(r)
    assert r.writes_into and o["verdict"] == M.WRITES
    assert o["ratio"] == pytest.approx(D / K, rel=1e-5) and o["null_mean"] == pytest.approx(K / D)
    assert o["p"] < 1e-12
    tens = r.table.filter(pl.col("row") == "tensor")
    assert tens.height == 2 * LAYERS and set(tens["tensor"]) == {"oproj", "downproj"}
    assert np.allclose(tens["ratio"].to_numpy(), D / K, rtol=1e-5) and (tens["q"].to_numpy() < 1e-6).all()
    assert r.table.filter(pl.col("row") == "layer").height == LAYERS and r.other_tensors == 1
    text = r.conclusion
    assert M.WRITES in text and "1 tensor(s) of the diff are no residual writer" in text and "Rule:" in text


def test_a_random_diff_sits_in_the_null(planted):
    sub, gen = planted
    r = M.monitor(shapes(), random_diff(gen), sub)
    o = overall(r)
    assert not r.writes_into and o["verdict"] == M.DOES_NOT
    assert 0.7 < o["ratio"] < 1.3 and abs(o["z"]) < 4
    assert np.all(np.abs(r.table["ratio"].to_numpy() - 1) < 0.6)


@pytest.mark.parametrize("rank", [None, 1])
def test_random_diffs_write_into_the_subspace_at_most_at_the_nominal_rate(planted, rank):
    """Over random diffs (full rank: the Gaussian tail; rank one: the Monte Carlo null) the
    overall p is below 0.05 in at most 5 % + 3 Monte Carlo sds of them, and so is the verdict."""
    sub, gen = planted
    n = 200
    p = np.empty(n)
    verdicts = np.empty(n, dtype=bool)
    for i in range(n):
        r = M.monitor(shapes(), random_diff(gen, rank), sub, mc_draws=1000)
        p[i], verdicts[i] = overall(r)["p"], r.writes_into
    bound = MONITOR_ALPHA + 3 * math.sqrt(MONITOR_ALPHA * (1 - MONITOR_ALPHA) / n)
    assert (p < MONITOR_ALPHA).mean() <= bound, (p < MONITOR_ALPHA).mean()
    assert verdicts.mean() <= bound
    assert (p < 0.5).mean() > 0.3  # p is not degenerate (a null that never rejects would pass the bound)


def test_the_closed_form_null_matches_a_monte_carlo_of_random_subspaces(planted):
    sub, gen = planted
    w = random_diff(gen, rank=3)
    r = M.monitor(shapes(), w, sub)
    n = 4000
    layer_fracs = []
    for l in range(LAYERS):
        Mo, Md = w[f"model.layers.{l}.self_attn.o_proj.weight"].double(), w[f"model.layers.{l}.mlp.down_proj.weight"].double()
        Mc = torch.cat([Mo / Mo.norm(), Md / Md.norm()], dim=1)
        A = Mc @ Mc.T / (Mc * Mc).sum()
        Q, R = torch.linalg.qr(torch.randn(n, D, K, generator=gen, dtype=torch.float64))
        fr = ((A @ Q) * Q).sum(dim=(1, 2)).numpy()
        row = r.table.filter((pl.col("row") == "layer") & (pl.col("layer") == l)).row(0, named=True)
        assert fr.mean() == pytest.approx(row["null_mean"], abs=4 * row["null_std"] / math.sqrt(n))
        assert fr.std() == pytest.approx(row["null_std"], rel=0.1)
        layer_fracs.append(fr)
    mean_of_layers = np.mean(layer_fracs, axis=0)
    o = overall(r)
    assert mean_of_layers.mean() == pytest.approx(o["null_mean"], abs=4 * o["null_std"] / math.sqrt(n))
    assert mean_of_layers.std() == pytest.approx(o["null_std"], rel=0.1)


def test_the_rule_needs_both_halves(planted, monkeypatch):
    """A small but real excess (p tiny, ratio < MONITOR_MIN_RATIO) does not count as writing into it."""
    sub, gen = planted
    w = random_diff(gen)
    for l, B in sub.bases.items():
        for key in (f"model.layers.{l}.self_attn.o_proj.weight", f"model.layers.{l}.mlp.down_proj.weight"):
            Mx = w[key].double()
            w[key] = (Mx + 0.35 * B @ (B.T @ Mx)).float()  # a little more energy inside
    o = overall(M.monitor(shapes(), w, sub))
    assert o["p"] < MONITOR_ALPHA and 1 < o["ratio"] < MONITOR_MIN_RATIO and o["verdict"] == M.DOES_NOT


def test_layers_outside_the_subspace_are_named_not_screened(tmp_path):
    gen = torch.Generator().manual_seed(1)
    sub = M.read_subspace(write_subspace(tmp_path / "s.safetensors", {1: haar(D, K, gen)}), shapes())
    r = M.monitor(shapes(), random_diff(gen), sub)
    assert r.layers == [1] and r.unscreened_writer_layers == [0, 2] and 0.5 < r.unscreened_share < 0.8
    assert "where the subspace has no basis" in r.conclusion


# ----------------------------------------------------------------------------- refusals
def test_a_subspace_file_for_another_model_shape_or_basis_is_refused_with_its_path(tmp_path):
    gen = torch.Generator().manual_seed(2)
    good = {l: haar(D, K, gen) for l in range(LAYERS)}
    p = write_subspace(tmp_path / "other.safetensors", good, model="another-model")
    with pytest.raises(M.SubspaceFileError, match=r"other\.safetensors was made for model 'another-model', not for 'm'"):
        M.read_subspace(p, shapes(), model_name="m")
    p = write_subspace(tmp_path / "wide.safetensors", good)
    with pytest.raises(M.SubspaceFileError, match=r"wide\.safetensors does not fit the model's shapes: its bases have d = 64"):
        M.read_subspace(p, shapes(d=32))
    with pytest.raises(M.SubspaceFileError, match="layer 2 is not in the model"):
        M.read_subspace(p, shapes(n_layers=2))
    p = write_subspace(tmp_path / "skew.safetensors", {0: good[0] + 0.1})
    with pytest.raises(M.SubspaceFileError, match=r"skew\.safetensors at layer 0: its columns are not orthonormal"):
        M.read_subspace(p, shapes())
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 32)
    with pytest.raises(M.SubspaceFileError, match=r"junk\.safetensors could not be read"):
        M.read_subspace(tmp_path / "junk.safetensors", shapes())
    sub = M.read_subspace(write_subspace(tmp_path / "ok.safetensors", good), shapes())
    with pytest.raises(ValueError, match="does not fit the model"):
        M.monitor(shapes(), {"model.layers.0.self_attn.o_proj.weight": torch.ones(3, 3)}, sub)


def test_the_file_set_is_written_once_and_replaced_only_on_rebuild(planted, tmp_path):
    sub, gen = planted
    r = M.monitor(shapes(), random_diff(gen), sub, label="`x`")
    folder = tmp_path / "screen"
    written = r.write(folder)
    assert [p.name for p in written] == [M.MONITOR_TABLE, M.MONITOR_CONCLUSION]
    t = pl.read_csv(folder / M.MONITOR_TABLE, separator="\t")
    assert tuple(t.columns) == M.MONITOR_COLUMNS and t["row"].to_list()[-1] == "overall"
    before = (folder / M.MONITOR_TABLE).read_bytes()
    with pytest.raises(M.ScreeningExistsError, match="already holds a screening"):
        r.write(folder)
    r2 = M.monitor(shapes(), random_diff(gen), sub, label="`x`")
    assert (folder / M.MONITOR_TABLE).read_bytes() == before
    r2.write(folder, rebuild=True)
    assert (folder / M.MONITOR_TABLE).read_bytes() != before
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- the carrier file
def test_the_carrier_is_the_best_carrying_then_above_chance_then_the_dW_ceiling():
    def table(carries, chance):
        return pl.DataFrame(
            {
                "subspace": ["a", "b", "c", C.CEILING_W],
                "kind": ["A-hypothesis", "A-hypothesis", "A-hypothesis", "ceiling"],
                "retention_inside": [0.9, 0.7, 0.95, 1.0],
                "carries": carries,
                "above_chance": chance,
            }
        )

    assert C.choose_carrier(table([False, True, None, True], [True, True, True, True]))[:2] == ("b", "carries")
    assert C.choose_carrier(table([True, True, False, True], [True, True, True, True]))[:2] == ("a", "carries")
    assert C.choose_carrier(table([False, False, False, True], [False, True, True, True]))[:2] == ("c", "above_chance")
    assert C.choose_carrier(table([None, None, None, None], [None, None, None, None]))[:2] == (C.CEILING_W, "dW_ceiling")


def test_carrier_basis_keeps_the_touched_layers_and_its_provenance(tmp_path):
    gen = torch.Generator().manual_seed(3)
    per = [haar(D, K, gen) for _ in range(4)]
    causal = pl.DataFrame(
        {"subspace": ["a"], "kind": ["A-hypothesis"], "retention_inside": [0.8], "carries": [True], "above_chance": [True]}
    )
    c = C.carrier_basis(
        causal, {"a": per}, [1, 3], model="m", behavior="b", adapter="lora", seed=5, writers_share=(0.9, 0.8, 1.0)
    )
    p = C.save_carrier(c, tmp_path / C.CARRIER_FILE)
    sub = M.read_subspace(p, shapes(n_layers=4), model_name="m")
    assert sub.layers == [1, 3] and torch.equal(sub.bases[3], per[3])
    m = sub.meta
    assert (m["candidate"], m["verdict"], m["seed"], m["d"], m["ranks"]) == ("a", "carries", 5, D, [K, K])
    assert m["retention"]["retention_inside"] == 0.8 and m["retention"]["writers_share"] == 0.9


# ----------------------------------------------------------------------------- on a model
def test_one_checkpoint_against_the_base_through_the_variables(tiny_llama, tmp_path):
    """``WS_POS_MODEL`` alone: ``θ − θ₀`` (ws.diffs.imports.checkpoint_delta), screened."""
    import copy

    from ws.diffs import imports

    model, _tok = tiny_llama
    ft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(4)
    B = haar(64, 4, gen)
    with torch.no_grad():
        for l in range(4):
            ft.model.layers[l].self_attn.o_proj.weight += (B @ torch.randn(4, 64, generator=gen, dtype=torch.float64)).float()
            ft.model.layers[l].mlp.down_proj.weight += (B @ torch.randn(4, 128, generator=gen, dtype=torch.float64)).float()
    ft.save_pretrained(str(tmp_path / "ft"))
    delta, meta = imports.checkpoint_delta(model, tmp_path / "ft")
    assert sorted(delta) == sorted(k for k in dict(model.named_parameters()) if k.endswith(("o_proj.weight", "down_proj.weight")))
    sub = write_subspace(tmp_path / "s.safetensors", {l: B for l in range(4)}, model="tiny-llama")
    env = {
        "WS_SMOKE": "1",
        "WS_OUT": str(tmp_path / "out"),
        "WS_CACHE": str(tmp_path / "cache"),
        "WS_LOGS": str(tmp_path / "logs"),
        "WS_SUBSPACE": str(sub),
        "WS_POS_MODEL": str(tmp_path / "ft"),
    }
    r, written = M.run(env)
    assert r.writes_into and overall(r)["ratio"] == pytest.approx(64 / 4, rel=1e-3)
    assert written[0].parent.parent.name == "monitor" and written[0].parent.name.startswith("checkpoint-")
    with pytest.raises(M.ScreeningExistsError):
        M.run(env)
    neg_only = {k: v for k, v in env.items() if k != "WS_POS_MODEL"} | {"WS_NEG_MODEL": env["WS_POS_MODEL"]}
    with pytest.raises(M.ConfigError, match="WS_NEG_MODEL is set but WS_POS_MODEL is not"):
        M.config_from_env(neg_only)
    with pytest.raises(M.SubspaceFileError, match="was made for model 'tiny-llama', not for 'tiny-qwen3'"):
        M.run({**env, "WS_MODEL": "tiny-qwen3", "WS_REBUILD": "1"})


@pytest.mark.slow
def test_make_monitor_screens_the_smoke_runs_diff_against_its_carrier(smoke_sweeps, tmp_path):
    """``make monitor`` on the session's smoke v7/v8 run: its v8 file set holds the carrier's
    basis, and screening the run's own diff against it writes the screening's set."""
    from make_targets import checkout, ok, run_make

    lora = smoke_sweeps.base / "out" / "models" / "tiny-llama" / "sycophancy" / "lora"
    carrier = lora / "v8" / C.CARRIER_FILE
    sub = M.read_subspace(carrier, model_name="tiny-llama")
    assert sub.verdict in C.VERDICTS and sub.meta["behavior"] == "sycophancy" and sub.meta["layers"] == sub.layers
    # the diff in a folder of its own, so the shared run's folder is left as it is
    shutil.copytree(lora / "seed0", tmp_path / "out" / "models" / "tiny-llama" / "sycophancy" / "lora" / "seed0")
    repo = checkout(tmp_path / "repo")
    out = ok(run_make(repo, "monitor", base=tmp_path, WS_SUBSPACE=str(carrier)))
    folder = tmp_path / "out" / "models" / "tiny-llama" / "sycophancy" / "lora" / "monitor" / "lora-seed0"
    assert M.WRITES in out or M.DOES_NOT in out
    t = pl.read_csv(folder / M.MONITOR_TABLE, separator="\t")
    assert t["row"].to_list()[-1] == "overall" and set(t["layer"].drop_nulls()) <= set(sub.layers)
    again = run_make(repo, "monitor", base=tmp_path, WS_SUBSPACE=str(carrier))
    assert again.returncode != 0 and "ScreeningExistsError" in again.stderr


def test_a_screening_into_a_locked_out_stops_first_with_one_line(tmp_path, monkeypatch, capsys):
    """The run lock is taken before the model loads, as in every run of the suite, and ``make
    monitor`` prints the refusal in one line (exit 2), not a traceback."""
    import subprocess
    import sys

    from test_config import _HOLD, ROOT

    out = tmp_path / "out"
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)  # read after the lock: never reached here
    env = {
        "WS_SMOKE": "1",
        "WS_OUT": str(out),
        "WS_LOGS": str(tmp_path / "logs"),
        "WS_SUBSPACE": str(tmp_path / "junk.safetensors"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert M.main() == 2
    finally:
        holder.communicate("\n", timeout=60)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("RunLockedError: another run is writing into"), err


def test_a_trained_diff_of_another_behaviour_gets_a_folder_of_its_own(tiny_llama, tmp_path):
    """Screening the refusal diff of seed 0 against a sycophancy subspace writes
    ``monitor/refusal-lora-seed0``, never the sycophancy seed-0 diff's ``monitor/lora-seed0``."""
    from ws.diffs.store import diff_path, save_diff

    model, _tok = tiny_llama
    gen = torch.Generator().manual_seed(6)
    sub = write_subspace(tmp_path / "s.safetensors", {1: haar(64, 4, gen)}, model="tiny-llama")
    env = {"WS_SMOKE": "1", "WS_OUT": str(tmp_path / "out"), "WS_LOGS": str(tmp_path / "logs"), "WS_SUBSPACE": str(sub)}
    params = dict(model.named_parameters())
    for behavior in ("refusal", "sycophancy"):
        w = {k: torch.randn(v.shape, generator=gen) for k, v in params.items() if k.endswith("1.mlp.down_proj.weight")}
        save_diff(w, diff_path(behavior, "lora", 0, tmp_path / "out", model="tiny-llama"), {"model": "tiny-llama"})
    _, ref = M.run({**env, "WS_BEHAVIOR": "refusal"})
    _, syc = M.run({**env, "WS_BEHAVIOR": "sycophancy"})
    assert ref[0].parent.name == "refusal-lora-seed0" and syc[0].parent.name == "lora-seed0"
    assert ref[0].parent.parent == syc[0].parent.parent, "both beside the subspace's own v8 folder"
