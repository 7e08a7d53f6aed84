"""Names that become folders (ws.core.paths.safe_component): every kind of name a user brings
(a behaviour's, a grid's, an adapter's, a model's slug, a steering-vector file's) goes through
the one check, and no hostile value becomes a path that climbs out of the output tree, names
another folder or lands in one of the tree's own folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ws.behavior import files as behavior
from ws.behavior.files import BehaviorError
from ws.config import ConfigError, from_env
from ws.core.paths import RESERVED_OUT_DIRS, UnsafeNameError, model_root, model_slug, safe_component
from ws.grid.spec import GridError, load_grid
from ws.model.vectors import VectorError, read_vectors

ROOT = Path(__file__).resolve().parent.parent
RESERVED = sorted(RESERVED_OUT_DIRS)
#: every hostile value and what the message says about it
HOSTILE = {
    "../": "path separator",
    "..": "climbs out of its folder",
    ".": "names its own folder",
    "": "is empty",
    "/etc/passwd": "absolute path",
    "\\\\server\\share": "absolute path",
    "C:evil": "names a drive",
    "a/b": "path separator ('/')",
    "a\\b": "path separator ('\\\\')",
    "../../../ESCAPED": "path separator",
    "a\x00b": "control",
    "a\nb": "control",
    "a\tb": "control",
    " padded": "starts or ends with a space",
    "padded ": "starts or ends with a space",
    **{r: "is the output folder of" for r in RESERVED},
    "MODELS": "is the output folder of",
}


# ----------------------------------------------------------------------------- the one check
@pytest.mark.parametrize("value, why", list(HOSTILE.items()))
def test_safe_component_refuses_each_hostile_value_naming_it_what_and_the_fix(value, why):
    with pytest.raises(UnsafeNameError) as e:
        safe_component(value, "a test's name")
    msg = str(e.value)
    assert msg.startswith(repr(value)) and why in msg and "it cannot be a test's name" in msg
    assert "give a name without" in msg and all(r in msg for r in RESERVED)


@pytest.mark.parametrize("value", ["sycophancy", "my-behaviour_2", "Qwen__Qwen3-0.6B", "..__x", "a b", "lora", "vector.v2"])
def test_safe_component_keeps_a_safe_value_as_it_is(value):
    assert safe_component(value, "x") == value


def test_the_reserved_names_are_the_output_trees_own_folders():
    assert {"grids", "models", "data", "bench", "cross_adapter"} <= set(RESERVED_OUT_DIRS)


# ----------------------------------------------------------------------------- model slugs
def test_model_slugs_keep_their_mapping_and_pass_the_check(tmp_path):
    assert model_slug("Qwen/Qwen3-0.6B") == "Qwen__Qwen3-0.6B"
    assert model_slug("../x") == "..__x"  # one folder named '..__x', not a climb
    assert model_slug("/abs/model/folder") == "abs__model__folder"
    assert model_root("../x", tmp_path) == tmp_path / "models" / "..__x"


@pytest.mark.parametrize("value", list(HOSTILE))
def test_no_model_name_gives_a_folder_outside_models(tmp_path, value):
    try:
        root = model_root(value, tmp_path)
    except UnsafeNameError as e:
        assert "it cannot be the folder name of model" in str(e)
        return
    assert root.parent == tmp_path / "models" and root.name not in ("", ".", "..")
    assert safe_component(root.name, "x", reserved=False) == root.name


@pytest.mark.parametrize("value", ["..", ".", "", "a\x00b", " x"])
def test_a_model_slug_that_cannot_be_a_folder_is_refused(value):
    with pytest.raises(UnsafeNameError):
        model_slug(value)


@pytest.mark.parametrize("value", RESERVED)
def test_a_reserved_name_is_a_model_slug_like_any_other_below_models(tmp_path, value):
    """A slug only ever sits below ``models/`` (and ``data/``): a model named ``models`` gets
    ``<out>/models/models/``, a folder of its own."""
    assert model_root(value, tmp_path) == tmp_path / "models" / value


@pytest.mark.parametrize("value", ["/", "a\x00b"])
def test_ws_model_that_cannot_be_a_folder_stops_at_configuration_time(value):
    with pytest.raises(ConfigError, match=r"^WS_MODEL=.* cannot name a folder: .*it cannot be the folder name of model"):
        from_env({"WS_MODEL": value})


# ----------------------------------------------------------------------------- behaviour names
@pytest.mark.parametrize("value", [v for v in HOSTILE if v.strip()])
def test_a_behaviour_name_that_cannot_be_a_folder_is_refused(tmp_path, value):
    spec = json.loads((ROOT / "behaviors" / "refusal.json").read_text())
    spec["name"] = value
    p = tmp_path / "mine.json"
    p.write_text(json.dumps(spec))
    with pytest.raises(BehaviorError, match=r"top level, field 'name': "):
        behavior.load(p)
    with pytest.raises(ConfigError, match="is not a built-in behaviour"):
        from_env({"WS_BEHAVIOR": str(p)})


def test_a_behaviour_name_goes_through_the_one_check(tmp_path):
    spec = json.loads((ROOT / "behaviors" / "refusal.json").read_text())
    for value, why in (("..", "climbs out of its folder"), ("grids", "output folder of the grids"), (" x", "space")):
        spec["name"] = value
        (tmp_path / "mine.json").write_text(json.dumps(spec))
        with pytest.raises(BehaviorError, match=rf"field 'name': {value!r} .*{why}.*it cannot be a behaviour's name"):
            behavior.load(tmp_path / "mine.json")


# ----------------------------------------------------------------------------- grid and adapter names
def _grid(tmp_path: Path, **keys) -> Path:
    p = tmp_path / "g.yaml"
    p.write_text(json.dumps({"behaviors": ["sycophancy"], "adapters": ["lora"], **keys}))
    return p


@pytest.mark.parametrize("value", [v for v in HOSTILE if v])  # an empty name means the file's own name
def test_a_grid_name_that_cannot_be_a_folder_is_refused(tmp_path, value):
    with pytest.raises(GridError, match=r"it cannot be the grid's name"):
        load_grid(_grid(tmp_path, name=value))


@pytest.mark.parametrize("value", [v for v in HOSTILE if v.strip() == v])
def test_an_adapter_name_that_cannot_be_a_folder_is_refused(tmp_path, value):
    with pytest.raises(GridError, match=r"it cannot be an adapter type's name"):
        load_grid(_grid(tmp_path, adapters=[value]))


def test_an_adapter_name_with_spaces_around_it_is_normalised_not_refused(tmp_path):
    assert load_grid(_grid(tmp_path, adapters=[" lora "])).adapters == ("lora",)


# ----------------------------------------------------------------------------- steering-vector names
@pytest.mark.parametrize("value", list(HOSTILE))
def test_a_vector_name_is_sanitised_or_refused_never_a_path(tmp_path, value):
    p = tmp_path / "v.npy"
    np.save(p, np.ones((4, 8), dtype=np.float32))
    try:
        name = read_vectors(p, 4, 8, name=value).name
    except VectorError as e:
        assert value.lower() in RESERVED_OUT_DIRS and "it cannot be a steering-vector file's name" in str(e)
        return
    assert safe_component(name, "x") == name


@pytest.mark.parametrize("stem", RESERVED)
def test_a_vector_file_whose_stem_is_a_reserved_folder_is_refused(tmp_path, stem):
    p = tmp_path / f"{stem}.npy"
    np.save(p, np.ones((4, 8), dtype=np.float32))
    with pytest.raises(VectorError, match=rf"steering vectors .*: {stem!r} is the output folder of"):
        read_vectors(p, 4, 8)
