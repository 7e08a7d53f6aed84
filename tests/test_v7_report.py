"""Tests for ws.v7.report: byte-stable tables, atomic writes, the scatter, the markdown."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from ws.core.io import atomic_path, format_float, write_table
from ws.core.markdown import SelfTest
from ws.v7 import figure, report, verdicts

FAMILIES = [
    ("W:write", "write"),
    ("W:OV", "write"),
    ("act:persona", "mixed"),
    ("compound", "mixed"),
    ("W:read", "read"),
    ("W:unembed", "read"),
]


def synthetic_summary(n: int = 14, seed: int = 0) -> pl.DataFrame:
    """A summary_pct-like table: hypotheses of every axis kind, both ceilings, one NaN and
    one zero score (to exercise the floor), sorted by joint_score like the real one."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        fam, ak = FAMILIES[i % len(FAMILIES)]
        a, w = float(np.exp(rng.normal(0.7, 0.8))), float(np.exp(rng.normal(0.3, 0.5)))
        rows.append(
            dict(
                subspace=f"candidate_with_a_long_name_{i:02d}",
                family=fam,
                axis_kind=ak,
                source="A",
                kind="A-hypothesis",
                mean_conc_act=a,
                mean_conc_w_combined=w,
            )
        )
    rows[1]["mean_conc_act"] = float("nan")
    rows[2]["mean_conc_w_combined"] = 0.0
    rows.append(
        dict(
            subspace=report.CEILING_ACT,
            family="ceiling",
            axis_kind="ceiling",
            source="B",
            kind="ceiling",
            mean_conc_act=30.0,
            mean_conc_w_combined=2.0,
        )
    )
    rows.append(
        dict(
            subspace=report.CEILING_W,
            family="ceiling",
            axis_kind="ceiling",
            source="B",
            kind="ceiling",
            mean_conc_act=3.0,
            mean_conc_w_combined=40.0,
        )
    )
    df = pl.DataFrame(rows)
    df = df.with_columns(
        (pl.col("mean_conc_act") * 0.8).alias("mean_conc_w_oproj"),
        (pl.col("mean_conc_w_combined") * 1.2).alias("mean_conc_w_downproj"),
        (pl.col("mean_conc_act") * 2.1).alias("mean_z_act"),
        (pl.col("mean_conc_w_combined") * 1.7).alias("mean_z_w_combined"),
        (pl.col("mean_conc_act") * 1.1).alias("mean_z_w_oproj"),
        (pl.col("mean_conc_act") * 1.3).alias("mean_z_w_downproj"),
        (pl.col("mean_conc_act") / 50).alias("mean_energy_frac_act"),
        pl.lit(0.25).alias("mean_cos_dW"),
        pl.lit(8.0).alias("mean_rank"),
        (pl.col("mean_conc_act") * pl.col("mean_conc_w_combined")).sqrt().alias("joint_score"),
        (pl.col("mean_conc_act") / pl.col("mean_conc_w_combined")).log(2).alias("act_w_gap_log2"),
    )
    ca = 30.0
    cw = {"combined": 40.0, "oproj": 3.0 * 0.8, "downproj": 40.0 * 1.2}
    df = df.with_columns(
        (100 * pl.col("mean_conc_act") / ca).alias("pct_act_ceiling"),
        *[(100 * pl.col(f"mean_conc_w_{t}") / v).alias(f"pct_w_oracle_{t}") for t, v in cw.items()],
    )
    return (
        df.with_columns(pl.col("joint_score").fill_nan(None).alias("k"))
        .sort(["k", "subspace"], descending=[True, False], nulls_last=True)
        .drop("k")
    )


def specific_summary(summary: pl.DataFrame) -> pl.DataFrame:
    return summary.select(
        "subspace",
        "family",
        "source",
        "kind",
        (pl.col("mean_conc_act") * 0.9).alias("mean_specific_conc_act"),
        (pl.col("mean_z_act") * 0.9).alias("mean_specific_z_act"),
        (pl.col("mean_energy_frac_act") * 0.9).alias("mean_specific_energy_frac_act"),
        pl.lit(7.5).alias("mean_specific_rank"),
    ).sort("mean_specific_conc_act", descending=True, nulls_last=True)


# ------------------------------------------------------------------------------ tables


def test_write_table_is_byte_identical_and_formatted(tmp_path):
    df = pl.DataFrame(
        {"name": ["a", "b,c", "d"], "x": [1 / 3, float("nan"), 1e-12], "y": [None, float("inf"), -2.0], "n": [1, None, 3]},
        schema={"name": pl.String, "x": pl.Float64, "y": pl.Float64, "n": pl.Int64},
    )
    p1, p2 = tmp_path / "a.csv", tmp_path / "b.csv"
    write_table(df, p1)
    write_table(df.clone(), p2)
    assert p1.read_bytes() == p2.read_bytes()
    lines = p1.read_text().splitlines()
    assert lines[0] == "name,x,y,n"
    assert lines[1] == "a,0.333333,,1"
    assert lines[2] == '"b,c",NaN,inf,'
    assert lines[3] == "d,1e-12,-2,3"
    t = tmp_path / "a.tsv"
    write_table(df, t)
    assert t.read_text().splitlines()[1] == "a\t0.333333\t\t1"
    with pytest.raises(ValueError, match="suffix"):
        write_table(df, tmp_path / "a.txt")


def test_atomic_write_keeps_old_file_when_writer_raises(tmp_path):
    p = tmp_path / "t.tsv"
    write_table(pl.DataFrame({"a": [1.0]}), p)
    before = p.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("writer crashed")
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["t.tsv"]  # no temporary left behind


def test_write_table_failure_leaves_old_file(tmp_path, monkeypatch):
    p = tmp_path / "t.csv"
    write_table(pl.DataFrame({"a": [1.0]}), p)
    before = p.read_bytes()

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_csv", boom)
    with pytest.raises(OSError):
        write_table(pl.DataFrame({"a": [2.0]}), p)
    assert p.read_bytes() == before


def test_write_table_full_precision_is_polars_own_csv(tmp_path):
    """``sig=None`` (the training tables) writes exactly what polars writes by default."""
    df = pl.DataFrame({"step": [0, 1, 2], "loss": [0.1 + 0.2, None, float("nan")], "text": ["a", "b,c", None]})
    p = write_table(df, tmp_path / "t.csv", sig=None)
    plain = tmp_path / "plain.csv"
    df.write_csv(plain)
    assert p.read_bytes() == plain.read_bytes()
    assert "0.30000000000000004" in p.read_text()


def test_format_float():
    assert format_float(float("nan")) == "NaN"
    assert format_float(-0.0) == "0"
    assert format_float(123456789.0) == "1.23457e+08"
    assert format_float(None) == ""


# ------------------------------------------------------------------------------ figure


def test_joint_scatter_writes_png_and_pdf(tmp_path):
    summ = synthetic_summary()
    png, pdf = figure.joint_scatter(summ, tmp_path / "s.png", tmp_path / "s.pdf", top_n=8)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000
    # no read rows at all, and all-NaN scores: still draws
    empty = summ.filter(pl.col("axis_kind") != "read").with_columns(pl.lit(float("nan")).alias("mean_conc_act"))
    figure.joint_scatter(empty, tmp_path / "e.png", tmp_path / "e.pdf")
    assert (tmp_path / "e.png").stat().st_size > 0


def test_joint_scatter_draws_every_row_and_labels_the_top_ranked():
    summ = synthetic_summary()
    fig = figure.joint_scatter_figure(summ, top_n=4)
    hyps = summ.filter(pl.col("kind") != "ceiling")
    ceilings = summ.filter(pl.col("kind") == "ceiling")["subspace"].to_list()
    assert len(fig.axes) == 2
    for ax, kinds in zip(fig.axes, (("write", "mixed"), ("read",)), strict=True):
        rows = hyps.filter(pl.col("axis_kind").is_in(kinds))  # in joint-score order, like the summary
        drawn = [(tuple(c.get_offsets()[0]), c) for c in ax.collections]
        assert sum(len(c.get_offsets()) for c in ax.collections) == rows.height + len(ceilings)
        assert sum(c.get_sizes()[0] == 420 for _, c in drawn) == len(ceilings), "one star per ceiling"
        # every finite row sits at its own scores, in its family's colour (one colour per family)
        at = {(round(float(x), 9), round(float(y), 9)): c for (x, y), c in drawn}
        colour_of: dict[str, tuple] = {}
        for r in rows.iter_rows(named=True):
            x, y = r["mean_conc_act"], r["mean_conc_w_combined"]
            if not (np.isfinite(x) and np.isfinite(y) and x > 0 and y > 0):
                continue
            face = tuple(at[(round(x, 9), round(y, 9))].get_facecolor()[0])
            assert colour_of.setdefault(r["family"], face) == face
        assert len(set(colour_of.values())) == len(colour_of)
        # the numbered labels are the panel's top four by joint score, in that order
        numbered = [t.get_text() for t in ax.texts if re.match(r"\d+\. ", t.get_text())]
        numbered.sort(key=lambda s: int(s.split(".")[0]))
        assert [s.split(". ", 1)[1].split("  (")[0] for s in numbered] == rows["subspace"].to_list()[:4]
        assert sorted(t.get_text() for t in ax.texts if t.get_text().startswith("★")) == sorted(f"★  {c}" for c in ceilings)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [*sorted(set(hyps["family"])), "ceiling (B side)", "≤ 0 or NaN: drawn at floor"]


def test_seed_ranges_and_whiskers(tmp_path):
    summ = synthetic_summary()
    long = pl.concat(
        [
            summ.select(
                "subspace",
                (pl.col("mean_conc_act") * f).alias("mean_conc_act"),
                (pl.col("mean_conc_w_combined") * f).alias("mean_conc_w_combined"),
            ).with_columns(pl.lit(i).alias("seed"))
            for i, f in enumerate((0.5, 1.0, 2.0))
        ]
    )
    rg = figure._seed_ranges(long, floor=1e-3)
    r = summ.filter(pl.col("subspace") == "candidate_with_a_long_name_00").row(0, named=True)
    (x0, x1), (y0, y1) = rg["candidate_with_a_long_name_00"]
    assert (x0, x1) == pytest.approx((0.5 * r["mean_conc_act"], 2.0 * r["mean_conc_act"]))
    assert (y0, y1) == pytest.approx((0.5 * r["mean_conc_w_combined"], 2.0 * r["mean_conc_w_combined"]))
    assert "candidate_with_a_long_name_01" not in rg  # NaN act score: no whisker
    assert rg["candidate_with_a_long_name_02"][1] == (1e-3, 1e-3)  # zero raised to the floor
    assert figure._seed_ranges(long.filter(pl.col("seed") == 0), floor=1e-3) == {}  # one seed: none
    png, _ = figure.joint_scatter(summ, tmp_path / "w.png", tmp_path / "w.pdf", seeds=long)
    assert png.stat().st_size > 20_000


def test_label_spread_never_overlaps():
    ys = figure._spread([0.5, 0.5, 0.51, 0.99, 0.99, 0.0], 0.05)
    assert all(b - a >= 0.05 - 1e-12 for a, b in zip(ys, ys[1:], strict=False))
    assert min(ys) >= 0.0 and max(ys) <= 1.0
    crowded = figure._spread([0.5] * 40, 0.05)
    assert crowded == sorted(crowded) and len(set(crowded)) == 40


# ---------------------------------------------------------------------------- markdown


def test_definitions_md_has_every_row():
    meta = pl.DataFrame(
        [
            dict(subspace="a|b", family="W:write", axis_kind="write", source="w", definition="left SVD of [W_o | W_down]"),
            dict(subspace="c", family="act:clean", axis_kind="mixed", source="a", definition="PCA"),
        ]
    )
    md = report.definitions_md(meta)
    assert "| name | family | axis_kind | source | definition |" in md
    assert "a\\|b" in md and "[W_o \\| W_down]" in md
    assert len([l for l in md.splitlines() if l.startswith("| ") and "---" not in l]) == 3


def info_for(summary: pl.DataFrame, fail: bool = False) -> dict:
    return dict(
        model="tiny-test-model",
        n_fit=48,
        n_eval=24,
        layers_touched=list(range(9, 24)),
        layers_without_delta=[0, 1, 2],
        rank_collapses=["chars_clusters: rank 7 at layer 3"],
        quantized=True,
        diff_specificity_ratio=1.7,
        self_tests=[
            ("null_vs_mc", True, "closed form within 3 SE"),
            ("steer_roundtrip", not fail, "max abs diff 0.5 after restore"),
        ],
        artifacts=["v7_summary.tsv", "v7_per_layer.csv"],
        seed=11,
        n_boot=2000,
        ci_level=0.95,
        bootstrap_ci=pl.DataFrame(
            {
                "subspace": summary["subspace"],
                "mean_conc_act_ci_lo": summary["mean_conc_act"] * 0.9,
                "mean_conc_act_ci_hi": summary["mean_conc_act"] * 1.1,
                "mean_energy_frac_act_ci_lo": summary["mean_energy_frac_act"] * 0.9,
                "mean_energy_frac_act_ci_hi": summary["mean_energy_frac_act"] * 1.1,
                "joint_score_ci_lo": summary["joint_score"] * 0.95,
                "joint_score_ci_hi": summary["joint_score"] * 1.05,
            }
        ),
    )


def as_info(d: dict) -> verdicts.ConclusionInfo:
    """The typed run facts from one of these tests' plain dicts (self-tests as tuples, seed
    stability as a dict)."""
    d = dict(d)
    if "self_tests" in d:
        d["self_tests"] = [SelfTest(*t) for t in d["self_tests"]]
    if d.get("seed_stability"):
        d["seed_stability"] = verdicts.SeedSummary(**d["seed_stability"])
    return verdicts.ConclusionInfo(**d)


def allowed_numbers(*frames: pl.DataFrame, info: dict, extra: list) -> set[str]:
    """Every string a number in the conclusion may take: each input value formatted as
    the report formats it (plus list lengths and the CI level as a percentage)."""
    vals: list = list(extra)
    for df in frames:
        for c, dt in df.schema.items():
            if dt.is_numeric():
                vals += df[c].to_list()
    values = list(info.values())
    values += [x for v in info.values() if isinstance(v, dict) for x in v.values()]
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals.append(v)
        elif isinstance(v, list):
            vals.append(len(v))
            vals += [x for x in v if isinstance(x, (int, float))]
        elif isinstance(v, pl.DataFrame):
            for c, dt in v.schema.items():
                if dt.is_numeric():
                    vals += v[c].to_list()
    vals.append(100 * info["ci_level"])
    out = set()
    for v in vals:
        if v is None:
            continue
        out.add(report.fmt_num(v))
        out.add(report.fmt_pct(v).rstrip("%"))
    return out


def test_conclusion_reports_best_row_from_table():
    summ = synthetic_summary()
    spec = specific_summary(summ)
    info = info_for(summ)
    md = report.conclusion_md(summ, spec, None, as_info(info))
    best = (
        summ.filter((pl.col("kind") == "A-hypothesis") & pl.col("axis_kind").is_in(["write", "mixed"]))
        .filter(pl.col("joint_score").is_not_nan())
        .row(0, named=True)
    )
    bottom = md.split("## Bottom line")[1].split("##")[0]
    assert f"`{best['subspace']}`" in bottom
    for col in (
        "joint_score",
        "mean_conc_act",
        "mean_conc_w_combined",
        "mean_conc_w_oproj",
        "mean_conc_w_downproj",
        "mean_z_act",
    ):
        assert report.fmt_num(best[col]) in bottom, col
    for col in ("pct_act_ceiling", "pct_w_oracle_combined", "pct_w_oracle_oproj", "pct_w_oracle_downproj"):
        assert report.fmt_pct(best[col]) in bottom, col
    assert "SELF-TEST FAILED" not in md
    assert "4-bit" in md and "v7_summary.tsv" in md and "tiny-test-model" in md
    assert "Top-5" in md and "overlap:" in md
    # every number in the text comes from the inputs (names and paths stripped first)
    text = re.sub(r"`[^`]*`|\([^)]*\.(tsv|csv)\)|\[[^\]]*\]\([^)]*\)", " ", md)
    text = re.sub(r"[A-Za-z_]+\d+[A-Za-z_\d]*|\d+-bit|Top-\d+|z_act|R_w|R_act", " ", text)
    nums = re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?", text)
    wm = summ.filter((pl.col("kind") == "A-hypothesis") & pl.col("axis_kind").is_in(["write", "mixed"]))
    top_a = set(wm.filter(pl.col("mean_conc_act").is_not_nan()).sort("mean_conc_act", descending=True)["subspace"].head(5))
    top_w = set(
        wm.filter(pl.col("mean_conc_w_combined").is_not_nan()).sort("mean_conc_w_combined", descending=True)["subspace"].head(5)
    )
    strings = " ".join(s for v in info.values() if isinstance(v, list) for s in v if isinstance(s, str))
    extra = [5, len(top_a & top_w), verdicts.SPECIFICITY_TARGET, 1, len(info["self_tests"])] + [
        int(x) for x in re.findall(r"\d+", strings)
    ]
    allowed = allowed_numbers(summ, spec, info=info, extra=extra)
    stray = [n for n in nums if n not in allowed]
    assert not stray, stray


def test_conclusion_puts_failing_self_test_on_top():
    summ = synthetic_summary()
    md = report.conclusion_md(summ, specific_summary(summ), None, as_info(info_for(summ, fail=True)))
    head = md.split("## Bottom line")[0]
    assert "SELF-TEST FAILED" in head and "steer_roundtrip" in head
    assert md.index("SELF-TEST FAILED") < md.index("## Bottom line")


def test_conclusion_uses_qvalues_and_null_methods():
    summ = synthetic_summary()
    best = summ.filter(
        (pl.col("kind") == "A-hypothesis") & pl.col("axis_kind").is_in(["write", "mixed"]) & pl.col("joint_score").is_not_nan()
    )["subspace"][0]
    per_layer = pl.DataFrame(
        {
            "layer": [9, 10, 11],
            "subspace": [best] * 3,
            "kind": ["A-hypothesis"] * 3,
            "q_act": [0.01, 0.2, 0.03],
            "q_w_combined": [0.5, 0.5, 0.001],
            "null_method_act": ["gaussian", "monte_carlo", "gaussian"],
            "null_method_w_combined": ["gaussian"] * 3,
        }
    )
    info = info_for(summ) | {"fdr_alpha": 0.05}
    md = report.conclusion_md(summ, specific_summary(summ), per_layer, as_info(info))
    assert "q ≤ 0.05 on 2 of 3 layers" in md and "q ≤ 0.05 on 1 of 3 layers" in md
    assert "monte_carlo 1" in md


def test_conclusion_without_rankable_rows_does_not_crash():
    summ = synthetic_summary().with_columns(pl.lit(float("nan")).alias("joint_score"))
    md = report.conclusion_md(summ, None, None, as_info({}))
    assert "nothing to rank" in md


def test_plan_merge_md():
    md = report.plan_merge_md(["render captures through the chat template", "closed-form null"])
    assert md.startswith("# ") and md.count("\n- ") == 2


# ------------------------------------------------------------------------------ claims
def _best_two(summ: pl.DataFrame) -> tuple[str, str]:
    r = (
        summ.filter((pl.col("kind") == "A-hypothesis") & pl.col("axis_kind").is_in(["write", "mixed"]))
        .filter(pl.col("joint_score").is_not_nan())
        .sort(["joint_score", "subspace"], descending=[True, False])
    )
    return r["subspace"][0], r["subspace"][1]


def _per_layer(name: str, q_act: list, q_w: list) -> pl.DataFrame:
    n = len(q_act)
    return pl.DataFrame(
        {
            "layer": list(range(9, 9 + n)),
            "subspace": [name] * n,
            "kind": ["A-hypothesis"] * n,
            "q_act": q_act,
            "q_w_combined": q_w,
        }
    )


def _verdicts(summ, per_layer, info) -> dict[str, bool | None]:
    out = {}
    for c in verdicts.claim_checks(summ, per_layer, as_info(info)):
        claim, ok = c.claim, c.survives
        key = (
            "act"
            if "activation effect" in claim
            else "weight"
            if "weight energy" in claim
            else "runner"
            if "runner-up" in claim
            else "seed"
            if "LoRA seed" in claim
            else "specific"
            if "specific to the behaviour" in claim
            else "selftest"
        )
        out[key] = ok
    return out


def test_claim_checks_known_verdicts():
    summ = synthetic_summary()
    best, second = _best_two(summ)
    info = info_for(summ) | {"fdr_alpha": 0.05}
    # significant activation on 3 of 4 layers, weight on 1 of 4; CIs of the top two do not overlap
    ci = info["bootstrap_ci"].with_columns(
        pl.when(pl.col("subspace") == best).then(pl.lit(100.0)).otherwise(pl.col("joint_score_ci_lo")).alias("joint_score_ci_lo"),
        pl.when(pl.col("subspace") == best)
        .then(pl.lit(2.0))
        .otherwise(pl.col("mean_conc_act_ci_lo"))
        .alias("mean_conc_act_ci_lo"),
    )
    info["bootstrap_ci"] = ci
    v = _verdicts(summ, _per_layer(best, [0.01, 0.02, 0.5, 0.001], [0.3, 0.04, 0.6, 0.9]), info)
    assert v["act"] is True and v["weight"] is False and v["runner"] is True
    assert v["seed"] is None  # one seed: not tested
    assert v["specific"] is False  # ratio 1.7 < 3
    assert v["selftest"] is True
    # half the layers is not a majority; a CI reaching below 1 fails the activation claim
    v = _verdicts(summ, _per_layer(best, [0.01, 0.5], [0.01, 0.01]), info)
    assert v["act"] is False and v["weight"] is True
    info2 = info | {"bootstrap_ci": ci.with_columns(pl.lit(0.9).alias("mean_conc_act_ci_lo"))}
    assert _verdicts(summ, _per_layer(best, [0.01] * 3, [0.01] * 3), info2)["act"] is False
    # overlapping joint CIs: the order of the top two is not resolved
    second_hi = float(ci.filter(pl.col("subspace") == second)["joint_score_ci_hi"][0])
    overlap = ci.with_columns(
        pl.when(pl.col("subspace") == best)
        .then(pl.lit(second_hi - 0.01))
        .otherwise(pl.col("joint_score_ci_lo"))
        .alias("joint_score_ci_lo")
    )
    assert _verdicts(summ, None, info | {"bootstrap_ci": overlap})["runner"] is False
    # several seeds: every win needed, for the seed claim and the runner-up claim
    seeds = {
        "n_seeds": 3,
        "winner": best,
        "winner_wins": 2,
        "winners": {0: best, 1: best, 2: second},
        "mean_tau": 0.4,
        "seed_mean_joint": 1.0,
        "seed_sd_joint": 0.1,
    }
    v = _verdicts(summ, None, info | {"seed_stability": seeds})
    assert v["seed"] is False and v["runner"] is False
    v = _verdicts(summ, None, info | {"seed_stability": seeds | {"winner_wins": 3}})
    assert v["seed"] is True and v["runner"] is True
    # a failing self-test and a specific diff
    v = _verdicts(summ, None, info_for(summ, fail=True) | {"diff_specificity_ratio": 3.5})
    assert v["selftest"] is False and v["specific"] is True


def test_conclusion_names_claims_that_do_not_survive():
    summ = synthetic_summary()
    best, second = _best_two(summ)
    seeds = {
        "n_seeds": 3,
        "winner": best,
        "winner_wins": 2,
        "winners": {0: best, 1: best, 2: second},
        "mean_tau": 0.4,
        "seed_mean_joint": 1.0,
        "seed_sd_joint": 0.1,
    }
    seeds |= {"mean_leader": second, "mean_leader_joint": 2.5, "mean_leader_sd": 0.7}
    md = report.conclusion_md(summ, specific_summary(summ), None, as_info(info_for(summ) | {"seed_stability": seeds}))
    bottom = md.split("## Bottom line")[1].split("\n## ")[0]
    assert "wins in 2 of 3 seeds" in bottom and "NOT stable" in bottom
    assert f"by the mean over seeds the leader is `{second}` (joint 2.5 ± 0.7 sd)" in bottom
    dead = [l for l in bottom.splitlines() if l.startswith("- claims that do NOT survive")]
    assert len(dead) == 1 and "whatever the LoRA seed" in dead[0] and "runner-up" in dead[0]
    table = md.split("## Which claims survive")[1].split("\n## ")[0]
    assert table.count("**does not survive**") == 3  # seed, runner-up, specificity 1.7 < 3
    md1 = report.conclusion_md(summ, specific_summary(summ), None, as_info(info_for(summ)))
    assert "one seed only" in md1 and "not tested" in md1


def test_low_rank_label_caveat_from_the_table():
    summ = synthetic_summary()

    def per_layer(prs):
        n = len(prs)
        return pl.DataFrame(
            {
                "layer": [9 + i for i in range(n) for _ in range(2)],
                "subspace": ["a", "b"] * n,
                "pr_act": [p for p in prs for _ in range(2)],
            }
        )

    info = info_for(summ) | {"pr_threshold": 3.0}
    md = report.conclusion_md(summ, None, per_layer([1.1, 1.3, 2.0, 40.0]), as_info(info))
    assert "nearly rank one: median participation ratio 1.65 over 4 touched layers" in md
    assert "nearly rank one" not in report.conclusion_md(summ, None, per_layer([5.0, 6.0, 2.0]), as_info(info))
    # layers outside the touched ones do not count
    assert "nearly rank one" not in report.conclusion_md(
        summ, None, per_layer([1.0] * 30), as_info(info | {"layers_touched": [100]})
    )
