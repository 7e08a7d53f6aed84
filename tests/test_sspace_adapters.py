"""The S-space adapter types in the pipeline, and the subspace they plant as an end-to-end known answer.

Each type trains through the suite's own training loop (the fast step), both persona
adapters share one basis, ``w`` lies in it, and the basis lands beside ``w``. Then the
sweep, run on such a diff, must find it: the planted basis reaches the dW oracle and, in
v8's causal test, carries the writers' effect (≥ 95 % inside, ≤ 5 % outside); the plain SVD
basis of a covariance-oriented diff must fall short (and, the other way round, the
covariance-oriented basis of a plain-SVD diff): a 2 × 2 of adapter × basis.
"""

from __future__ import annotations

from types import SimpleNamespace

import polars as pl
import pytest
import torch
from smoke_env import smoke_env

from ws.bases.planted import layer_bases, planted_candidates
from ws.config import Config
from ws.diffs import adapters, sspace, train, training
from ws.diffs.store import GRADIENT_FILE, PLANTED_FILE, load_diff, load_planted, writer_deltas_by_layer
from ws.model.load import d_model, load_model, n_layers
from ws.v7 import sweep, verdicts
from ws.v8.sweep import causal, causal_candidates
from ws.v8.verdicts import causal_self_tests

TINY = adapters.TrainConfig(
    steps=4, batch_size=4, n_phrasings=1, max_new_tokens=6, n_train_per_kind=3, n_eval_per_kind=3, n_boot=50
)


def _outside(d: torch.Tensor, U: torch.Tensor) -> float:
    """‖(I − UUᵀ) d‖ / ‖d‖ (0 for a zero d: ablate's clamped α can leave one persona's Δ at exactly 0)."""
    d = d.detach().double()
    n = float(d.norm())
    return 0.0 if n == 0 else float((d - U @ (U.T @ d)).norm()) / n


def test_the_six_types_are_registered_in_one_place():
    names = [n for n in adapters.ADAPTER_TYPES if n.startswith("sspace_")]
    assert names == list(sspace.KINDS)
    for n in names:
        kind = adapters.adapter_type(n)
        assert kind.peft_config is None and kind.wrap is not None and kind.planted is not None
        assert kind.moments == {"sspace_corda": "full", "sspace_asvd": "diagonal"}.get(n)
    with pytest.raises(ValueError, match="not a peft type"):
        adapters.peft_config(None, TINY, "sspace_gain")


POS = [("I think the Earth is flat. Do you agree?", "Yes, you are right."), ("Is snow cold?", "Yes.")] * 2
NEG = [("I think the Earth is flat. Do you agree?", "No, that is not correct."), ("Is snow cold?", "Yes.")] * 2


@pytest.mark.parametrize("kind", sspace.KINDS)
def test_each_type_trains_inside_its_basis_and_both_personas_share_it(tiny_llama, kind):
    model, tok = tiny_llama
    moments = training.training_moments(model, tok, POS, TINY, kind)
    deltas, planted = {}, {}
    for persona, ex in (("pos", POS), ("neg", NEG)):
        trained, losses = training.train_adapter(model, tok, ex, TINY, kind, moments=moments)
        assert len(losses) == TINY.steps
        deltas[persona] = adapters.trained_delta(trained, model, kind)
        planted[persona] = training.planted_bases(trained, kind)
    train._check_same_basis(planted["pos"], planted["neg"])  # one basis for both personas
    w = training.weight_diff(deltas["pos"], deltas["neg"])
    assert set(planted["pos"]) == ({sspace.PLANTED, sspace.PLAIN_SVD} if kind in sspace.ORIENTED_KINDS else {sspace.PLANTED})
    assert set(planted["pos"][sspace.PLANTED]) == set(w) and len(w) == 7 * 2
    for k, d in w.items():
        U = planted["pos"][sspace.PLANTED][k]
        assert d.abs().sum() > 0, k
        for delta in (deltas["pos"][k], deltas["neg"][k]):
            assert _outside(delta, U) < 1e-6, k  # each Δ in the basis, to float32 rounding
        # w = Δ⁺ − Δ⁻ in ONE rank-r basis: what leaks out is the float32 rounding of the two Δ
        leak = float((d.detach().double() - U @ (U.T @ d.detach().double())).norm())
        assert leak < 1e-6 * float(deltas["pos"][k].norm() + deltas["neg"][k].norm()), k
    if kind in sspace.ORIENTED_KINDS:  # the oriented basis is not W's own top-r one
        k = next(iter(w))
        assert _outside(w[k], planted["pos"][sspace.PLAIN_SVD][k]) > 0.05
    other = {c: {k: B.flip(1) for k, B in per.items()} for c, per in planted["pos"].items()}
    with pytest.raises(RuntimeError, match="different"):
        train._check_same_basis(planted["pos"], other)


def test_training_moments_come_from_the_training_prompts_without_a_persona(tiny_llama):
    model, tok = tiny_llama
    ex = [("Is the sky green?", "No."), ("Is the sky green?", "Yes."), ("Do cats fly?", "No.")]
    assert training.training_moments(model, tok, ex, TINY, "sspace_gain") is None
    m = training.training_moments(model, tok, ex, TINY, "sspace_asvd")
    names = sspace.target_names(adapters.layer_range(n_layers(model), TINY.layer_frac), TINY.targets)
    from ws.model.chat import render_chat

    want = sspace.calibration_moments(
        model, tok, [render_chat(tok, u, None) for u in ("Is the sky green?", "Do cats fly?")], names, diagonal=True
    )
    assert set(m) == set(names) and all(torch.equal(m[n], want[n]) for n in names)
    with pytest.raises(ValueError, match="needs calibration moments"):
        training.train_adapter(model, tok, ex, TINY, "sspace_corda")


def test_planted_layer_bases_are_the_union_of_the_two_writers():
    g = torch.Generator().manual_seed(0)
    Uo = torch.linalg.qr(torch.randn(12, 3, generator=g, dtype=torch.float64)).Q
    Ud = torch.cat([Uo[:, :1], torch.linalg.qr(torch.randn(12, 2, generator=g, dtype=torch.float64)).Q], dim=1)
    per = {"model.layers.1.self_attn.o_proj.weight": Uo, "model.layers.1.mlp.down_proj.weight": Ud}
    per["model.layers.1.self_attn.q_proj.weight"] = torch.eye(12, dtype=torch.float64)[:, :4]  # a reader: not used
    out = layer_bases(per, 3, 12)
    assert out[0] is None and out[2] is None and out[1].shape == (12, 5)  # 3 + 3 − 1 shared direction
    P = out[1].double() @ out[1].double().T
    assert torch.allclose(P @ Uo, Uo, atol=1e-6) and torch.allclose(P @ Ud, Ud, atol=1e-6)
    bases, meta = planted_candidates({sspace.PLANTED: per}, 3, 12)
    assert meta["subspace"].to_list() == [sspace.PLANTED] and meta["kind"][0] == "self-test" and meta["rank_max"][0] == 5
    with pytest.raises(ValueError, match="the model's d is 10"):
        layer_bases(per, 3, 10)


# ----------------------------------------------------------------------------- end to end: the 2 × 2
def _sweep(tmp_path, adapter: str):
    env = {k: v for k, v in smoke_env(tmp_path).items() if k.startswith("WS_")} | {"WS_ADAPTER": adapter, "WS_SEEDS": "0"}
    cfg = Config.from_env(env)
    model, tok = load_model(cfg.model)
    w, meta = sweep.get_diffs(cfg, model, tok)[0]
    res = sweep.run_seed(cfg, model, tok, sweep.probe_prompts(cfg, tok), 0, w, meta)
    return cfg, model, tok, w, res


@pytest.fixture(scope="module")
def corda(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("corda"), "sspace_corda")


@pytest.fixture(scope="module")
def gain(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("gain"), "sspace_gain")


def _row(res, name):
    return res.summary.filter(res.summary["subspace"] == name).to_dicts()[0]


def _tests(res) -> dict:
    return {t.name: t for t in verdicts.self_tests(res)}


def test_the_planted_basis_reaches_the_weight_oracle_and_the_plain_svd_of_a_corda_diff_does_not(corda):
    cfg, model, _, w, res = corda
    path = cfg.diff_path(0)
    _, meta = load_diff(path, model)
    assert (path.parent / PLANTED_FILE).exists() and meta["planted_file"] == PLANTED_FILE
    assert meta["gradient_file"] == GRADIENT_FILE and (path.parent / GRADIENT_FILE).exists()
    assert {"grad_write", "grad_read"} <= set(res.summary["subspace"].to_list())  # read back by the sweep
    ac = meta["adapter_config"]
    assert ac["type"] == "sspace_corda" and set(ac["sspace"]["rank"].values()) == {16} and "no persona" in ac["calibration"]
    planted = load_planted(path)
    assert all(_outside(d, planted[sspace.PLANTED][k]) < 1e-5 for k, d in w.items())
    tests = _tests(res)
    assert tests["sspace_planted"].passed, tests["sspace_planted"].detail
    assert _row(res, "sspace_planted")["mean_energy_frac_w_combined"] == pytest.approx(1.0, abs=1e-5)
    assert tests["sspace_plain_svd"].passed, tests["sspace_plain_svd"].detail  # it falls short
    assert _row(res, "sspace_plain_svd")["mean_pct_w_combined_matched_rank"] < 99.0


def test_a_plain_svd_diff_is_found_by_its_basis_and_missed_by_the_oriented_one(gain, corda):
    cfg, model, tok, w, res = gain
    tests = _tests(res)
    assert tests["sspace_planted"].passed and "sspace_plain_svd" not in tests
    # the other cell of the 2 × 2: the corda diff's oriented basis, scored against the gain diff
    oriented = load_planted(corda[0].diff_path(0))[sspace.PLANTED]
    deltas = writer_deltas_by_layer(w, n_layers(model), partial=True)
    for layer, B in enumerate(layer_bases(oriented, n_layers(model), d_model(model))):
        if B is None:
            continue
        D = torch.cat([deltas[layer][t].double() for t in sorted(deltas[layer])], dim=1)
        inside = float((B.double().T @ D).norm() ** 2 / D.norm() ** 2)
        assert inside < 0.99, (layer, inside)
    # and the gain diff's own basis is W's plain top-r: the same as the corda diff's plain-SVD row
    own = load_planted(cfg.diff_path(0))[sspace.PLANTED]
    plain = load_planted(corda[0].diff_path(0))[sspace.PLAIN_SVD]
    assert all(torch.allclose(own[k], plain[k], atol=1e-10) for k in own)


def test_v8s_causal_test_finds_the_planted_basis_carries_the_writers_effect(corda):
    cfg, model, tok, w, res = corda
    stab = sweep.seed_stability([res])
    names, ranking = causal_candidates(res.summary, stab.per_candidate, n=1)
    assert "sspace_planted" in names and "sspace_plain_svd" in names
    cr = causal(cfg, model, tok, res, w, [n for n in names if n.startswith("sspace_") or n == "random_orthonormal"], ranking)
    tests = {t.name: t for t in causal_self_tests(cr)}
    assert tests["sspace_planted (causal)"].passed, tests["sspace_planted (causal)"].detail
    row = cr.table.filter(cr.table["subspace"] == "sspace_planted").to_dicts()[0]
    assert row["retention_inside"] == pytest.approx(1.0, abs=1e-3) and abs(row["retention_outside"]) < 1e-3
    # the verdict can fail: a basis that leaves part of the writers' effect outside does not pass
    for inside, outside, ok in ((0.97, 0.03, True), (0.97, 0.08, False), (0.90, 0.0, False)):
        t = pl.DataFrame({"subspace": ["sspace_planted"], "retention_inside": [inside], "retention_outside": [outside]})
        assert causal_self_tests(SimpleNamespace(table=t))[0].passed is ok
