"""Steering-vector files written by their own libraries, read back with known answers; every refusal."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors.torch
import torch

from ws.model.vectors import SteeringVectors, VectorError, read_vectors

D, L = 64, 4


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def _write_gguf(path: Path, dirs: dict[int, np.ndarray], hint: str = "smollm2", arch: str = "controlvector", count=None) -> Path:
    """A control vector written the way the GGUF control-vector writers do it."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_string(f"{arch}.model_hint", hint)
    w.add_uint32(f"{arch}.layer_count", len(dirs) if count is None else count)
    for layer, v in dirs.items():
        w.add_tensor(f"direction.{layer}", np.asarray(v, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _refused(path: Path, *needles: str, n_layers: int = L, d: int = D, **kw) -> str:
    """Assert ``read_vectors`` refuses ``path`` with a message naming the file and each needle."""
    with pytest.raises(VectorError) as info:
        read_vectors(path, n_layers, d, **kw)
    msg = str(info.value)
    assert path.name in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in: {msg}"
    return msg


# ----------------------------------------------------------------------------- formats, known answers
def test_safetensors_per_layer_keys(tmp_path: Path) -> None:
    a, b, c = _rand(D, seed=1), _rand(2, D, seed=2), _rand(D, seed=3)
    p = tmp_path / "refusal.safetensors"
    safetensors.torch.save_file({"direction.0": a, "layers.2": b, "3": c}, str(p))
    sv = read_vectors(p, L, D)
    assert (sv.format, sv.convention, sv.shift, sv.layers) == ("safetensors", "block", 0, [0, 2, 3])
    assert torch.equal(sv.directions[0], a[None]) and torch.equal(sv.directions[2], b) and torch.equal(sv.directions[3], c[None])
    assert all(t.dtype == torch.float32 and t.shape[1] == D for t in sv.directions.values())
    assert sv.name == "refusal" and sv.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


def test_safetensors_full_stacks(tmp_path: Path) -> None:
    s2, s3 = _rand(L, D, seed=4), _rand(L, 3, D, seed=5)
    safetensors.torch.save_file({"caa": s2}, str(tmp_path / "a.safetensors"))
    safetensors.torch.save_file({"pcs": s3}, str(tmp_path / "b.safetensors"))
    sv2, sv3 = read_vectors(tmp_path / "a.safetensors", L, D), read_vectors(tmp_path / "b.safetensors", L, D)
    assert sv2.layers == sv3.layers == [0, 1, 2, 3] and sv2.convention == "block"
    for l in range(L):
        assert torch.equal(sv2.directions[l], s2[l][None]) and torch.equal(sv3.directions[l], s3[l])


def test_pt_dict_and_stack(tmp_path: Path) -> None:
    v1, v3 = _rand(D, seed=6).double(), _rand(2, D, seed=7)
    torch.save({1: v1, "layer.3": v3}, tmp_path / "cv.pt")
    sv = read_vectors(tmp_path / "cv.pt", L, D)
    assert sv.format == "pt" and sv.layers == [1, 3]
    assert torch.equal(sv.directions[1], v1.float()[None]) and torch.equal(sv.directions[3], v3)
    stack = _rand(L, D, seed=8)
    torch.save(stack, tmp_path / "stack.pth")
    sv = read_vectors(tmp_path / "stack.pth", L, D)
    assert sv.layers == [0, 1, 2, 3] and torch.equal(sv.directions[2], stack[2][None])


def test_npy_block_and_hidden_stacks(tmp_path: Path) -> None:
    block = _rand(L, D, seed=9).numpy()
    np.save(tmp_path / "block.npy", block)
    sv = read_vectors(tmp_path / "block.npy", L, D)
    assert (sv.format, sv.convention) == ("npy", "block")
    assert np.array_equal(sv.directions[1].numpy(), block[1:2])
    hidden = np.concatenate([np.zeros((1, D), np.float32), block])  # [L + 1, d], row 0 = embeddings
    np.save(tmp_path / "hidden.npy", hidden)
    sv = read_vectors(tmp_path / "hidden.npy", L, D)
    assert sv.convention == "hidden" and sv.layers == [0, 1, 2, 3]
    for l in range(L):  # hidden_states[i] is the output of block i - 1
        assert np.array_equal(sv.directions[l].numpy(), hidden[l + 1 : l + 2])


def test_gguf_control_vector_direction_n_is_block_n(tmp_path: Path) -> None:
    dirs = {l: _rand(D, seed=10 + l).numpy() for l in (1, 2, 3)}  # the format has no direction.0
    p = _write_gguf(tmp_path / "happy.gguf", dirs, hint="qwen2")
    sv = read_vectors(p, L, D)
    assert (sv.format, sv.convention, sv.model_hint, sv.layers) == ("gguf", "block", "qwen2", [1, 2, 3])
    for n, v in dirs.items():  # direction.N is added after block N: block index N
        assert np.array_equal(sv.directions[n].numpy(), v[None])
    measured = read_vectors(p, L, D, shift=-1)  # where a generator measuring at block N - 1 took it
    assert measured.layers == [0, 1, 2] and np.array_equal(measured.directions[0].numpy(), dirs[1][None])
    as_hidden = read_vectors(p, L, D, convention="hidden")
    assert as_hidden.convention == "hidden" and as_hidden.layers == [0, 1, 2]
    assert np.array_equal(as_hidden.directions[2].numpy(), dirs[3][None])


def test_hidden_convention_keys_and_shift(tmp_path: Path) -> None:
    v = _rand(D, seed=20)
    p = tmp_path / "h.safetensors"
    safetensors.torch.save_file({"0": torch.zeros(D), "2": v}, str(p))
    sv = read_vectors(p, L, D, convention="hidden")
    assert sv.layers == [1] and torch.equal(sv.directions[1], v[None])  # zero embeddings row dropped
    sv = read_vectors(p, L, D, convention="hidden", shift=2)
    assert sv.layers == [3] and sv.shift == 2


# ----------------------------------------------------------------------------- bases
def test_bases_orthonormal_and_spanning(tmp_path: Path) -> None:
    a, b = _rand(D, seed=30), _rand(D, seed=31)
    three = torch.stack([a, b, _rand(D, seed=32)])
    dependent = torch.stack([a, b, 2 * a - 0.5 * b])
    safetensors.torch.save_file({"layer.0": three, "layer.1": dependent, "layer.2": a}, str(tmp_path / "v.safetensors"))
    sv = read_vectors(tmp_path / "v.safetensors", L, D)
    bases = sv.bases()
    assert {l: tuple(B.shape) for l, B in bases.items()} == {0: (D, 3), 1: (D, 2), 2: (D, 1)}
    for l, B in bases.items():
        assert B.dtype == torch.float64
        assert torch.allclose(B.T @ B, torch.eye(B.shape[1], dtype=torch.float64), atol=1e-10)
        X = sv.directions[l].double()
        assert torch.allclose(X @ B @ B.T, X, atol=1e-5 * float(X.abs().max()))
    assert [sv.rank(l) for l in sv.layers] == [3, 2, 1]
    meta = sv.to_meta()
    assert json.loads(json.dumps(meta)) == meta
    assert (meta["layers"], meta["ranks"], meta["n_directions"]) == ([0, 1, 2], [3, 2, 1], [3, 3, 1])
    assert meta["sha256"] == sv.sha256 and meta["format"] == "safetensors"


def test_name_default_and_sanitised(tmp_path: Path) -> None:
    p = tmp_path / "my vec (v2)!.npy"
    np.save(p, _rand(L, D, seed=40).numpy())
    assert read_vectors(p, L, D).name == "my_vec__v2"
    assert read_vectors(p, L, D, name="a/b c").name == "a_b_c"
    assert isinstance(read_vectors(p, L, D), SteeringVectors)


# ----------------------------------------------------------------------------- refusals
def test_refuse_missing_unknown_empty(tmp_path: Path) -> None:
    _refused(tmp_path / "absent.safetensors", "no such file")
    (tmp_path / "vec.txt").write_text("0.1 0.2")
    _refused(tmp_path / "vec.txt", "unknown suffix '.txt'", ".safetensors")
    for suffix in (".safetensors", ".pt", ".npy", ".gguf"):
        (tmp_path / f"empty{suffix}").write_bytes(b"")
        _refused(tmp_path / f"empty{suffix}", "empty")
    safetensors.torch.save_file({}, str(tmp_path / "none.safetensors"))
    _refused(tmp_path / "none.safetensors", "holds no vectors")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    _refused(tmp_path / "junk.gguf", "cannot be read as GGUF")


def test_refuse_layer_out_of_range(tmp_path: Path) -> None:
    p = tmp_path / "far.safetensors"
    safetensors.torch.save_file({"layer.4": _rand(D)}, str(p))
    _refused(p, "'layer.4'", "block 4", "0..3", "n_layers=4")
    safetensors.torch.save_file({"layer.2": _rand(D)}, str(tmp_path / "near.safetensors"))
    _refused(tmp_path / "near.safetensors", "'layer.2'", "shift 2", "block 4", shift=2)
    _refused(tmp_path / "near.safetensors", "block -1", shift=-3)


def test_refuse_width_zero_nonfinite_k_gt_d(tmp_path: Path) -> None:
    def save(key: str, t: torch.Tensor) -> Path:
        p = tmp_path / f"{key.replace('.', '_')}.safetensors"
        safetensors.torch.save_file({key: t, "layer.0": _rand(D)}, str(p))
        return p

    _refused(save("layer.1", _rand(D + 1)), "'layer.1'", "width 65", "d is 64")
    _refused(save("layer.2", torch.zeros(D)), "'layer.2'", "zero direction")
    tiny = torch.zeros(2, D)
    tiny[0, 0], tiny[1] = 1e-14, _rand(D)
    _refused(save("layer.3", tiny), "'layer.3'", "zero direction", "[0]")
    bad = _rand(D)
    bad[5] = float("nan")
    _refused(save("direction.1", bad), "'direction.1'", "NaN or Inf")
    bad[5] = float("inf")
    _refused(save("direction.2", bad), "'direction.2'", "NaN or Inf")
    _refused(save("layers.3", _rand(D + 1, D)), "'layers.3'", "k=65", "d=64")


def test_refuse_wrong_stack_length(tmp_path: Path) -> None:
    np.save(tmp_path / "seven.npy", _rand(7, D).numpy())
    _refused(tmp_path / "seven.npy", "L=7", "n_layers=4", "expected L = 4", "5")
    hidden = _rand(L + 1, D).numpy()  # row 0 (the embeddings) not zero
    np.save(tmp_path / "emb.npy", hidden)
    _refused(tmp_path / "emb.npy", "the array[0]", "embeddings")
    np.save(tmp_path / "flat.npy", _rand(D).numpy())
    _refused(tmp_path / "flat.npy", "shape (64,)")


def test_refuse_bad_keys_and_types(tmp_path: Path) -> None:
    p = tmp_path / "keys.safetensors"
    safetensors.torch.save_file({"layer.1": _rand(D), "bias": _rand(D)}, str(p))
    _refused(p, "'bias'", "names no layer")
    safetensors.torch.save_file({"1": _rand(D), "layer.1": _rand(D, seed=1)}, str(tmp_path / "dup.safetensors"))
    _refused(tmp_path / "dup.safetensors", "'1'", "'layer.1'", "block 1")
    np.save(tmp_path / "ints.npy", np.ones((L, D), dtype=np.int64))
    _refused(tmp_path / "ints.npy", "int64", "not a float")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _refused(tmp_path / "obj.npy", "without pickle")
    torch.save([_rand(D)], tmp_path / "list.pt")
    _refused(tmp_path / "list.pt", "holds a list")
    np.save(tmp_path / "ok.npy", _rand(L, D).numpy())
    _refused(tmp_path / "ok.npy", "convention 'layer'", convention="layer")


def test_refuse_gguf_metadata(tmp_path: Path) -> None:
    v = {1: _rand(D).numpy()}
    _refused(_write_gguf(tmp_path / "model.gguf", v, arch="qwen2"), "architecture is 'qwen2'")
    _refused(_write_gguf(tmp_path / "count.gguf", v, count=3), "layer_count says 3", "holds 1")
    _refused(_write_gguf(tmp_path / "wide.gguf", {2: _rand(D + 8).numpy()}), "'direction.2'", "width 72", "d is 64")
    w = gguf.GGUFWriter(str(tmp_path / "names.gguf"), "controlvector")
    w.add_tensor("token_embd.weight", _rand(D).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _refused(tmp_path / "names.gguf", "'token_embd.weight'", "direction.<layer>")


class _Evil:
    """Unpickling this would create ``marker``: the reader must never execute it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_refuse_pickled_object_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "EXECUTED"
    torch.save({1: _Evil(marker)}, tmp_path / "evil.pt")
    torch.save(_Evil(marker), tmp_path / "evil2.pth")
    with (tmp_path / "raw.pt").open("wb") as fh:
        pickle.dump(_Evil(marker), fh, protocol=2)
    for name in ("evil.pt", "evil2.pth", "raw.pt"):
        _refused(tmp_path / name, "weights_only=True", "open", "never executed")
        assert not marker.exists(), f"{name}: the pickle was executed"
