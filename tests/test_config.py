"""The one configuration: every WS_* variable parsed and validated in one place, before any model loads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ws import config
from ws.config import ConfigError, from_env
from ws.core import io
from ws.core.io import OutputNotWritableError, RunLockedError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_and_smoke_defaults():
    cfg = from_env({})
    assert (cfg.model, cfg.seeds, cfg.k, cfg.k_broad, cfg.n_fit, cfg.n_eval, cfg.n_boot) == (
        "smollm2-135m",
        (0, 1, 2),
        8,
        64,
        None,
        None,
        2000,
    )
    assert cfg.cache and not cfg.smoke and not cfg.rebuild and cfg.train_config() is None
    smoke = from_env({"WS_SMOKE": "1"})
    assert (smoke.model, smoke.seeds, smoke.k_broad, smoke.n_fit, smoke.n_eval, smoke.n_boot) == (
        "tiny-llama",
        (0,),
        16,
        12,
        8,
        300,
    )
    assert smoke.train_config().steps == config.SMOKE_TRAIN["steps"]
    # an explicit value beats the smoke default; WS_STEPS overrides the training steps
    assert from_env({"WS_SMOKE": "1", "WS_SEEDS": "3,4", "WS_STEPS": "7"}).seeds == (3, 4)
    assert from_env({"WS_STEPS": "7"}).train_config().steps == 7
    assert cfg.causal_null_max is None and from_env({"WS_CAUSAL_NULL_MAX": "20"}).causal_null_max == 20  # a fixed null
    # the cross-adapter comparison: every adapter type unless told
    assert cfg.adapters == smoke.adapters == config.ADAPTERS
    assert config.ADAPTERS[:8] == ("lora", "dora", "pissa", "ia3", "oft", "boft", "delora", "bidir")
    assert config.ADAPTERS[8:] == tuple(f"sspace_{k}" for k in ("gain", "lowrank", "ablate", "corda", "asvd", "rot"))
    assert from_env({"WS_ADAPTERS": " bidir, lora "}).adapters == ("bidir", "lora")
    assert from_env({"WS_OUT": "/x"}).cross_dir == Path("/x/sycophancy/cross_adapter")


@pytest.mark.parametrize(
    "spelling,value",
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_booleans_accept_the_usual_spellings_everywhere(spelling, value):
    # the same parser for the sweep and the train notebook: WS_SMOKE=true is smoke in both
    cfg = from_env({"WS_SMOKE": spelling, "WS_CACHE_ACTIVATIONS": spelling, "WS_REBUILD": spelling})
    assert cfg.smoke is value and cfg.cache is value and cfg.rebuild is value
    assert (cfg.train_config() is not None) is value


@pytest.mark.parametrize(
    "env,pattern",
    [
        ({"WS_SMOKE": "maybe"}, r"WS_SMOKE='maybe' is not a boolean: use one of 1, true"),
        ({"WS_CACHE_ACTIVATIONS": "of"}, r"WS_CACHE_ACTIVATIONS='of' is not a boolean"),
        ({"WS_N_EVAL": "0"}, r"WS_N_EVAL='0' is too small: it must be ≥ 1"),
        ({"WS_N_FIT": "0"}, r"WS_N_FIT='0' is too small"),
        ({"WS_SEEDS": ""}, r"WS_SEEDS is set but empty: unset it to use the default \(0,1,2\)"),
        ({"WS_SEEDS": "abc"}, r"WS_SEEDS='abc' is not a whole number"),
        ({"WS_SEEDS": "0,,1"}, r"WS_SEEDS='0,,1' has an empty entry"),
        ({"WS_SEEDS": "1,1"}, r"WS_SEEDS='1,1' repeats a seed"),
        ({"WS_SEEDS": "-1"}, r"WS_SEEDS='-1' is too small: it must be ≥ 0"),
        ({"WS_N_BOOT": "-1"}, r"WS_N_BOOT='-1' is too small"),
        ({"WS_BATCH": "0"}, r"WS_BATCH='0' is too small"),
        ({"WS_PCS": "eight"}, r"WS_PCS='eight' is not a whole number"),
        ({"WS_STEPS": "1.5"}, r"WS_STEPS='1.5' is not a whole number"),
        (
            {"WS_BEHAVIOR": "flattery"},
            r"WS_BEHAVIOR='flattery' is not a built-in behaviour \(refusal, sycophancy\) or a "
            r"usable behaviour file: unknown behaviour 'flattery'",
        ),
        (
            {"WS_BEHAVIOR": "no-such-dir/mine.json"},
            r"WS_BEHAVIOR='no-such-dir/mine.json' is not a built-in .*: behaviour "
            r"file .*mine.json: no such file",
        ),
        (
            {"WS_ADAPTER": "lokr"},
            r"WS_ADAPTER='lokr' is not supported: choose one of lora, dora, pissa, ia3, oft, boft, delora, bidir, "
            r"sspace_gain",
        ),
        ({"WS_KL_BUDGET": "0"}, r"WS_KL_BUDGET='0' is out of range: it must be a finite number > 0"),
        ({"WS_KL_BUDGET": "tiny"}, r"WS_KL_BUDGET='tiny' is not a number"),
        ({"WS_ADAPTERS": "lora,lokr"}, r"WS_ADAPTERS='lora,lokr' names an adapter type the suite does not have \(lokr\)"),
        ({"WS_ADAPTERS": "lora,,bidir"}, r"WS_ADAPTERS='lora,,bidir' has an empty entry"),
        ({"WS_ADAPTERS": "ia3,ia3"}, r"WS_ADAPTERS='ia3,ia3' repeats an adapter type"),
        ({"WS_OUT": "  "}, r"WS_OUT is set but empty"),
        ({"WS_CAUSAL_NULL_MAX": "10"}, r"WS_CAUSAL_NULL_MAX=10 is below WS_N_CAUSAL_NULL=20: .* ≥ 20 \(equal: a fixed null\)"),
        ({"WS_CAUSAL_NULL_MAX": "1"}, r"WS_CAUSAL_NULL_MAX='1' is too small: it must be ≥ 2"),
    ],
)
def test_every_bad_value_names_the_variable_the_value_and_what_is_allowed(env, pattern):
    with pytest.raises(ConfigError, match=pattern):
        from_env(env)


def test_relative_paths_resolve_against_the_folder_the_user_ran_from(tmp_path, monkeypatch):
    elsewhere = tmp_path / "kernel-runs-here"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a kernel started in logs/ or nbs/
    monkeypatch.setenv("WS_RUN_DIR", str(tmp_path))
    (tmp_path / "my-model").mkdir()
    cfg = from_env({"WS_OUT": "results", "WS_CACHE": "c", "WS_LOGS": "l", "WS_MODEL": "my-model"})
    assert cfg.out_root == tmp_path / "results" and cfg.cache_root == tmp_path / "c" and cfg.logs_root == tmp_path / "l"
    assert cfg.model == str(tmp_path / "my-model"), "a model folder resolves like every other path"
    assert from_env({"WS_MODEL": "Qwen/Qwen3-0.6B"}).model == "Qwen/Qwen3-0.6B", "a hub id stays a name"
    from ws.core.paths import out_dir

    monkeypatch.setenv("WS_OUT", "results")
    assert out_dir() == tmp_path / "results"
    # without WS_RUN_DIR, the shell's PWD (inherited by a kernel) is the run folder
    monkeypatch.delenv("WS_RUN_DIR")
    monkeypatch.setenv("PWD", str(tmp_path))
    assert from_env({"WS_OUT": "results"}).out_root == tmp_path / "results"


def test_output_folders_follow_the_model(tmp_path):
    from ws.diffs.store import diff_path
    from ws.diffs.train import DiffSpec

    default = from_env({"WS_OUT": str(tmp_path)})
    assert default.model_root == tmp_path, "the embedded model keeps the spec's locations"
    assert default.v7_dir == tmp_path / "sycophancy" / "lora" / "v7" and default.v8_dir == tmp_path / "sycophancy" / "lora" / "v8"
    assert default.cross_dir == tmp_path / "sycophancy" / "cross_adapter"
    other = from_env({"WS_OUT": str(tmp_path), "WS_MODEL": "tiny-qwen3", "WS_ADAPTER": "dora"})
    root = tmp_path / "models" / "tiny-qwen3"
    assert other.model_root == root and from_env({"WS_OUT": str(tmp_path), "WS_SMOKE": "1"}).model_root.name == "tiny-llama"
    assert other.v7_dir == root / "sycophancy" / "dora" / "v7" and other.v8_dir == root / "sycophancy" / "dora" / "v8"
    assert other.cross_dir == root / "sycophancy" / "cross_adapter"
    for cfg in (default, other):  # one rule for the config, the diff spec and diff_path
        spec = DiffSpec(cfg.model, cfg.behavior, cfg.adapter, 1, root=cfg.out_root)
        assert cfg.diff_path(1) == spec.path == diff_path(cfg.behavior, cfg.adapter, 1, tmp_path, model=cfg.model)
        assert cfg.diff_path(1).parent.parent == cfg.v7_dir.parent, "the diffs sit beside the model's v7 set"
    assert other.diff_path(0, "ia3") == root / "sycophancy" / "ia3" / "seed0" / "w.safetensors"


def test_readme_variable_table_is_the_config_table():
    readme = (ROOT / "README.md").read_text()
    assert config.markdown_table() in readme, (
        "README's variable table differs from ws.config.VARIABLES: run `python -m ws.config`"
    )
    documented = set(re.findall(r"^\| `(WS_[A-Z_]+)` \|", readme, re.M))
    assert documented == set(config.BY_NAME), documented ^ set(config.BY_NAME)


def test_readme_adapter_table_is_the_registry():
    from ws.diffs.adapters import ADAPTER_TYPES, adapter_table

    readme = (ROOT / "README.md").read_text()
    assert adapter_table() in readme, "README's adapter table differs from ws.diffs.adapters: run `python -m ws.config`"
    listed = re.findall(r"^\| `(\w+)` \|", adapter_table(), re.M)
    assert listed == list(ADAPTER_TYPES) == list(config.ADAPTERS)


def test_an_unknown_variable_stops_the_run_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"WS_BEHAVIOUR \(did you mean WS_BEHAVIOR\?\): not a variable this suite reads"):
        config.from_env({"WS_BEHAVIOUR": "refusal"})
    with pytest.raises(ConfigError, match=r"WS_SMOKEE \(did you mean WS_SMOKE\?\)"):
        config.start_run("t", {"WS_OUT": str(tmp_path / "out"), "WS_SMOKEE": "1"})
    assert not (tmp_path / "out").exists(), "stopped before any folder was made"
    with pytest.raises(ConfigError, match=r"^WS_ZZZQQ: not a variable"):
        config.from_env({"WS_ZZZQQ": "1"})  # nothing close: no guess
    # the internal variables are known
    assert config.from_env({"WS_RUN_DIR": str(tmp_path), "WS_LOG_TERMINAL": "1", "WS_TEST_DEVICE": "cpu"}).seeds == (0, 1, 2)


def test_unknown_variables_are_named():
    assert config.unknown_variables({"WS_SEEDS": "0", "WS_SEEED": "1", "WS_RUN_DIR": "/"}) == ["WS_SEEED"]


def test_start_run_checks_folders_before_anything(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {"WS_OUT": str(blocker / "out"), "WS_CACHE": str(tmp_path / "c"), "WS_LOGS": str(tmp_path / "l")}
    with pytest.raises(OutputNotWritableError, match=r"cannot write into .*a-file/out \(WS_OUT\)"):
        config.start_run("t", env)
    with pytest.raises(ConfigError):
        config.start_run("t", {**env, "WS_N_BOOT": "x"})


_HOLD = """
import sys, time
from ws.core.io import hold_run_lock
hold_run_lock(sys.argv[1], "holder")
print("held", flush=True)
sys.stdin.readline()
"""


def test_a_second_run_into_the_same_out_stops_with_a_clear_message(tmp_path):
    out = tmp_path / "out"
    env = {"WS_OUT": str(out), "WS_CACHE": str(tmp_path / "c"), "WS_LOGS": str(tmp_path / "l")}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=r"another run is writing into .*\(holder, pid \d+"):
            config.start_run("second", env)
    finally:
        holder.communicate("\n", timeout=60)
    cfg = config.start_run("second", env)  # the holder ended: its lock went with it
    assert cfg.out_root == out
    assert config.start_run("again", env).out_root == out, "re-entrant within one process (a re-run cell)"
    release_run_lock(out)


def release_run_lock(folder) -> None:
    """Let go of a run lock this process holds (a real run's lock goes when its process ends)."""
    import fcntl

    fd = io._HELD.pop(str((Path(folder) / ".ws-run.lock").resolve()), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def test_every_default_lives_in_config_and_parses_back_to_it():
    """The table's defaults come from Config's fields (one home): each parses back to the field's
    value, so `WS_X=<the default shown>` and leaving `WS_X` unset give the same run."""
    from dataclasses import fields

    defaults = {f.name: f.default for f in fields(config.Config)}
    for var in config.VARIABLES:
        if var.attr in ("out_root", "cache_root", "logs_root"):
            continue
        if var.default == "":
            assert defaults[var.attr] in (None, ()), var.name
            continue
        got = var.parse(var.name, var.default)
        assert got == defaults[var.attr], (var.name, got, defaults[var.attr])
    assert config.from_env({}) == config.Config()
