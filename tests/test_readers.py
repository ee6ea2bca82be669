"""The torch-free checkpoint reader against torch.load(weights_only=True), and hostile files."""

import argparse
import collections
import io
import os
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest

from keras_clmr.conversion import readers
from keras_clmr.conversion.common import ConversionError, UnsafeCheckpointError

torch = pytest.importorskip("torch")


def _state_dict():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=generator)
    conv = torch.nn.Conv1d(4, 5, 3)
    state = collections.OrderedDict()
    state["contiguous"] = base
    state["transposed"] = base.t()  # strided view
    state["offset_view"] = base[2:, 3:]  # storage offset + strides
    state["every_other"] = base[:, ::2]
    state["half"] = torch.randn(5, generator=generator).half()
    state["bfloat16"] = torch.randn(4, generator=generator).bfloat16()
    state["double"] = torch.randn(2, 3, generator=generator).double()
    state["int64"] = torch.arange(7)
    state["num_batches_tracked"] = torch.tensor(3)  # 0-d int64
    state["bool"] = torch.tensor([True, False, True])
    state["empty"] = torch.zeros(0, 3)
    state["parameter"] = torch.nn.Parameter(torch.randn(3, generator=generator))
    state.update({f"conv.{k}": v for k, v in conv.state_dict().items()})
    return state


def _torch_numpy(tensor):
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy()


def _assert_same(ours, reference):
    assert set(ours) == set(reference)
    for key, value in reference.items():
        expected = _torch_numpy(value)
        assert isinstance(ours[key], np.ndarray), key
        assert ours[key].dtype == expected.dtype, key
        assert ours[key].shape == expected.shape, key
        np.testing.assert_array_equal(ours[key], expected, err_msg=key)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_state_dict_matches_torch_load(tmp_path, zip_format):
    path = tmp_path / "weights.pt"
    torch.save(_state_dict(), path, _use_new_zipfile_serialization=zip_format)
    obj, info = readers.load_checkpoint(path)
    assert info["serialization"] == ("zip" if zip_format else "legacy")
    assert isinstance(obj, collections.OrderedDict)
    _assert_same(obj, torch.load(path, weights_only=True))
    # Results own their memory and are writable copies (not views of the file's bytes).
    assert obj["transposed"].flags.owndata and obj["transposed"].flags.writeable


def test_big_endian_archive(tmp_path):
    """A ``byteorder`` of "big" (a checkpoint saved on a big-endian machine) is honoured."""
    path = tmp_path / "little.pt"
    values = torch.linspace(-3, 3, 10)
    torch.save({"w": values, "v": values[1::3]}, path)
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename:
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            target.writestr(info.filename, data)
    obj, _ = readers.load_checkpoint(big)
    np.testing.assert_array_equal(obj["w"], values.numpy())
    np.testing.assert_array_equal(obj["v"], values[1::3].numpy())


def _fake_lightning_attribute_dict():
    """An AttributeDict class importable as pytorch_lightning's (Lightning is not installed)."""
    names = [
        "pytorch_lightning",
        "pytorch_lightning.utilities",
        "pytorch_lightning.utilities.parsing",
    ]
    modules = {name: types.ModuleType(name) for name in names}

    class AttributeDict(dict):
        pass

    AttributeDict.__module__ = names[-1]
    AttributeDict.__qualname__ = "AttributeDict"
    modules[names[-1]].AttributeDict = AttributeDict
    return modules, AttributeDict


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_lightning_checkpoint(tmp_path, monkeypatch, zip_format):
    modules, AttributeDict = _fake_lightning_attribute_dict()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    encoder = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.BatchNorm1d(4))
    state = collections.OrderedDict()
    for key, value in encoder.state_dict().items():  # the encoder registered twice shares storages
        state[f"encoder.{key}"] = value
        state[f"model.encoder.{key}"] = value
    hparams = AttributeDict(batch_size=48, projection_dim=64, sample_rate=22050)
    checkpoint = {
        "epoch": 299,
        "global_step": 12000,
        "pytorch-lightning_version": "1.5.10",
        "state_dict": state,
        "hyper_parameters": hparams,
        "optimizer_states": [
            {
                "state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.randn(4, 1, 3)}},
                "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.999), "params": [0]}],
            }
        ],
        "callbacks": {
            "ModelCheckpoint{'monitor': None}": {"best_model_score": None, "dirpath": "/runs"}
        },
        "lr_schedulers": [],
        "args": argparse.Namespace(dataset="magnatagatune", seed=42),
    }
    path = tmp_path / "pemr.ckpt"
    torch.save(checkpoint, path, _use_new_zipfile_serialization=zip_format)
    state_ours, info = readers.read_state_dict(path)
    with torch.serialization.safe_globals(
        [argparse.Namespace, (dict, AttributeDict.__module__ + ".AttributeDict")]
    ):
        reference = torch.load(path, weights_only=True)
    _assert_same(state_ours, reference["state_dict"])
    assert info["container"] == "lightning"
    assert info["epoch"] == 299 and info["global_step"] == 12000
    assert info["hyper_parameters"] == {
        "batch_size": 48,
        "projection_dim": 64,
        "sample_rate": 22050,
    }
    assert info["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    obj, _ = readers.load_checkpoint(path)
    assert obj["args"] == {"dataset": "magnatagatune", "seed": 42}
    np.testing.assert_array_equal(
        obj["optimizer_states"][0]["state"][0]["exp_avg"],
        reference["optimizer_states"][0]["state"][0]["exp_avg"].numpy(),
    )


@pytest.mark.parametrize("zip_format", [True, False], ids=["inner-zip", "inner-legacy"])
def test_release_zip_with_nested_checkpoint(tmp_path, zip_format):
    """CLMR's 2.0 release: a .zip holding clmr_checkpoint_10000.pt (plus macOS metadata)."""
    inner = tmp_path / "clmr_checkpoint_10000.pt"
    state = {
        "encoder.sequential.0.0.weight": torch.randn(128, 1, 3),
        "projector.0.weight": torch.randn(512, 512)[:, :256],
    }
    torch.save(state, inner, _use_new_zipfile_serialization=zip_format)
    release = tmp_path / "clmr_checkpoint_10000.zip"
    with zipfile.ZipFile(release, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(inner, "clmr_checkpoint_10000.pt")
        archive.writestr("__MACOSX/._clmr_checkpoint_10000.pt", b"\x00\x05\x16\x07junk")
    ours, info = readers.read_state_dict(release)
    _assert_same(ours, torch.load(inner, weights_only=True))
    assert info["member"] == "clmr_checkpoint_10000.pt" and info["container"] == "state_dict"


def test_numpy_scalars_in_metadata(tmp_path):
    """Lightning callbacks may hold numpy numbers; they are read as numpy scalars."""
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.ones(2), "score": np.float64(0.8125), "count": np.int32(7)}, path)
    obj, _ = readers.load_checkpoint(path)
    assert obj["score"] == 0.8125 and obj["score"].dtype == np.float64
    assert obj["count"] == 7 and obj["count"].dtype == np.int32


def test_data_parallel_prefix_is_stripped(tmp_path):
    path = tmp_path / "dp.pt"
    torch.save({"module.fc.weight": torch.ones(2, 2), "module.fc.bias": torch.zeros(2)}, path)
    state, info = readers.read_state_dict(path)
    assert sorted(state) == ["fc.bias", "fc.weight"] and info["stripped_prefix"] == "module."


# ---- hostile and broken files ----


class _Payload:
    """Pickles as a call of ``function(*args)``: what a malicious checkpoint does."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _payloads(sentinel):
    command = f"touch {sentinel}"
    code = f"open({str(sentinel)!r}, 'w').close()"
    return {
        "os.system": _Payload(os.system, command),
        "eval": _Payload(eval, code),
        "exec": _Payload(exec, code),
        "getattr": _Payload(getattr, "", "join"),  # a first step towards reaching os.system
        "subprocess": _Payload(__import__("subprocess").call, ["touch", str(sentinel)]),
    }


@pytest.mark.parametrize("name", ["os.system", "eval", "exec", "getattr", "subprocess"])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_without_running(tmp_path, name, zip_format):
    sentinel = tmp_path / "pwned"
    payload = _payloads(sentinel)[name]
    path = tmp_path / "evil.pt"
    torch.save(
        {"weight": torch.ones(2), "payload": payload},
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    with pytest.raises(UnsafeCheckpointError, match="Refused"):
        readers.load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        readers.read_state_dict(path)
    assert not sentinel.exists()


def test_malicious_hyper_parameters_inside_release_zip(tmp_path):
    sentinel = tmp_path / "pwned"
    inner = tmp_path / "model.ckpt"
    torch.save(
        {"state_dict": {"w": torch.ones(1)}, "hyper_parameters": _payloads(sentinel)["os.system"]},
        inner,
    )
    release = tmp_path / "release.zip"
    with zipfile.ZipFile(release, "w") as archive:
        archive.write(inner, "model.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system|nt.system"):
        readers.read_state_dict(release)
    assert not sentinel.exists()


def test_plain_pickle_named_pt_is_refused(tmp_path):
    """A bare pickle (no torch header) whose first object already runs code."""
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_payloads(sentinel)["os.system"], protocol=2))
    with pytest.raises(UnsafeCheckpointError):
        readers.load_checkpoint(path)
    assert not sentinel.exists()


def test_build_on_foreign_object_is_refused(tmp_path):
    """BUILD (set an object's state) works only on the reader's own containers, not arrays."""
    buffer = io.BytesIO()
    torch.save(torch.ones(2), buffer)  # data.pkl: the tensor's REDUCE, then STOP
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        members = {i.filename: archive.read(i) for i in archive.infolist()}
    pkl_name = next(n for n in members if n.endswith("data.pkl"))
    assert members[pkl_name].endswith(b".")
    members[pkl_name] = members[pkl_name][:-1] + b"}b."  # EMPTY_DICT, BUILD onto the tensor, STOP
    path = tmp_path / "build.pt"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(UnsafeCheckpointError, match="state of a ndarray"):
        readers.load_checkpoint(path)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "starts with"),
        (b"<!DOCTYPE html><html><body>Not Found</body></html>", "HTML"),
        (b"", "empty"),
    ],
)
def test_not_a_checkpoint(tmp_path, content, match):
    path = tmp_path / "clmr_checkpoint_1550.pt"
    path.write_bytes(content)
    with pytest.raises(readers.NotACheckpointError, match=match) as error:
        readers.load_checkpoint(path)
    assert "keras-clmr convert" in str(error.value)


def test_missing_file():
    with pytest.raises(ConversionError, match="not found"):
        readers.load_checkpoint("/nonexistent/weights.pt")


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_checkpoint(tmp_path, zip_format):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.randn(1000)}, path, _use_new_zipfile_serialization=zip_format)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ConversionError):
        readers.load_checkpoint(path)


def test_storage_shorter_than_tensor(tmp_path):
    """A storage cut short inside an intact archive is an error, never a read past the buffer."""
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.randn(100)}, path)
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(damaged, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info.filename, data[:40] if "/data/" in info.filename else data)
    with pytest.raises(ConversionError, match="shorter than declared"):
        readers.load_checkpoint(damaged)


def test_size_limit(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(100_000)}, path)  # 400 kB of storage
    assert readers.load_checkpoint(path, max_bytes=1_000_000)[0]["w"].shape == (100_000,)
    with pytest.raises(readers.CheckpointSizeError, match="limit"):
        readers.load_checkpoint(path, max_bytes=100_000)


def test_zip_bomb_is_refused_before_unpacking(tmp_path):
    """A release zip whose member inflates far beyond the limit is refused from its directory."""
    bomb = tmp_path / "release.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("clmr_checkpoint_10000.pt", b"\x00" * (64 * 1024 * 1024))
    assert bomb.stat().st_size < 1024 * 1024
    with pytest.raises(readers.CheckpointSizeError):
        readers.load_checkpoint(bomb, max_bytes=16 * 1024 * 1024)


def test_release_zip_with_two_checkpoints_is_ambiguous(tmp_path):
    release = tmp_path / "release.zip"
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(1)}, buffer)
    with zipfile.ZipFile(release, "w") as archive:
        archive.writestr("a.pt", buffer.getvalue())
        archive.writestr("b.pt", buffer.getvalue())
    with pytest.raises(ConversionError, match="exactly one"):
        readers.load_checkpoint(release)
