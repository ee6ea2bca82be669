"""Registry names backed by the official release files, through a real HTTP server on 127.0.0.1.

Each family's file is written in its official format (CLMR 2.0: a zip holding the torch.save
of SimCLR's state dict, and the fine-tuner zip; CLMR 1.0: a legacy-format .pt and the 1.0-l
head; PEMR: a Lightning .ckpt) with realistic weight scales (Kaiming-initialised convolutions,
BatchNorm statistics measured on music-like audio), served over HTTP, and the registry's URLs
are pointed at the server. Checked: first use downloads, converts and caches; the second use
makes no request; a cut transfer resumes; every failure is a typed error naming the URL and the
fix and leaves nothing in the cache that later loads; offline the error names the URL and the
one ``keras-clmr convert`` command, which fills the cache; ``keras-clmr tag FILE`` uses the chain.
Model outputs are compared with the PyTorch reference (independent of the converter's numpy one).
"""

import dataclasses
import http.server
import io
import json
import os
import sys
import threading
import types
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from keras_clmr import hub, presets  # noqa: E402
from keras_clmr.conversion import common  # noqa: E402
from keras_clmr.conversion import torch_reference as tr  # noqa: E402
from keras_clmr.conversion.pemr import torch_logmel  # noqa: E402
from keras_clmr.hub import release  # noqa: E402

TINY = dict(strides=(3, 3, 3, 3, 2, 2, 2, 2, 2), channels=(8, 8, 8, 8, 8, 8, 8, 8, 8, 16, 16))
FULL = dict(strides=(3,) * 9, channels=(128, 128, 128, 256, 256, 256, 256, 256, 256, 512, 512))
TINY_FCN = (4, 8, 8, 8)  # FCN channels: 8 x 4 x 1 -> 32-d embedding


# ----------------------------------------------------------------------------- the server


class _Server:
    """Files by path, with per-path misbehaviour; records every request (path, Range)."""

    def __init__(self):
        self.files, self.behaviour, self.requests = {}, {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                mode = server.behaviour.get(self.path)
                if mode == "404" or self.path not in server.files:
                    self.send_error(404, "Not Found")
                    return
                if mode == "html":
                    body = b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = server.files[self.path]
                start = 0
                wanted = self.headers.get("Range")
                if wanted and mode != "disconnect":
                    start = int(wanted.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if mode in ("cut-once", "disconnect"):
                    if mode == "cut-once":
                        server.behaviour.pop(self.path)
                    self.wfile.write(data[start : start + (len(data) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def count(self, path=None):
        return sum(1 for p, _ in self.requests if path is None or p == path)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def online(tmp_path, monkeypatch):
    """An empty keras_clmr cache, downloads allowed, retries without waiting."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("KERAS_CLMR_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("KERAS_CLMR_OFFLINE", raising=False)
    monkeypatch.setattr(release, "DOWNLOAD_OPTIONS", {"sleep": lambda s: None, "retries": 2})
    return cache


def _point(monkeypatch, server, name, files, assets=None):
    """Serve ``files`` ({task: (file name, bytes)}) and point preset ``name`` at them."""
    preset = presets.get_preset(name)
    source = {}
    for task, (file_name, data) in files.items():
        path = f"/{name}/{file_name}"
        server.files[path] = data
        source[task] = server.url(path)
    patched = dataclasses.replace(preset, source=source, assets=assets or {})
    monkeypatch.setitem(presets._REGISTRY, name, patched)
    return patched


# ----------------------------------------------------------------------------- release files


def _music(n, batch=4, seed=0, rate=22050):
    """Music-like clips: a few random partials with decaying envelopes plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    clips = []
    for _ in range(batch):
        x = sum(
            rng.uniform(0.05, 0.3)
            * np.sin(2 * np.pi * rng.uniform(80, 2000) * t + rng.uniform(0, 6.3))
            * np.exp(-t * rng.uniform(0.5, 4))
            for _ in range(6)
        )
        clips.append(x + 0.02 * rng.standard_normal(n))
    return np.stack(clips).astype(np.float32)


def _calibrate(module, inputs):
    """Kaiming-uniform convolutions (CLMR 2.0's init) and BatchNorm statistics from audio."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (torch.nn.Conv1d, torch.nn.Conv2d)):
                torch.nn.init.kaiming_uniform_(layer.weight, mode="fan_in", nonlinearity="relu")
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                layer.reset_running_stats()
                layer.momentum = None  # cumulative average over the calibration batch
                layer.weight.copy_(torch.rand(layer.num_features, generator=generator) + 0.5)
                layer.bias.copy_(0.1 * torch.randn(layer.num_features, generator=generator))
        module.train()
        module(torch.from_numpy(inputs))
        module.eval()
    return module


def _simclr(config=TINY, layout="sequential", projection_dim=128, seed=0):
    torch.manual_seed(seed)
    encoder = tr.sample_cnn(layout=layout, **config)
    n = int(np.prod(config["strides"])) * 3
    _calibrate(encoder, _music(n, batch=6, seed=seed)[:, None, :])
    return tr.simclr(encoder, config["channels"][-1], projection_dim)


def _torch_bytes(obj, legacy=False):
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def _release_zip(member, obj):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(member, _torch_bytes(obj))
    return buffer.getvalue()


def clmr_2_0_files(config=TINY, seed=0):
    """(SimCLR reference, head, {task: (file, bytes)}) in the 2.0 release's layout."""
    reference = _simclr(config, seed=seed)
    head = tr.linear_head(config["channels"][-1], 50)
    files = {
        "embed": (
            "clmr_checkpoint_10000.zip",
            _release_zip("clmr_checkpoint_10000.pt", reference.state_dict()),
        ),
        "tag": (
            "finetuner_checkpoint_200.zip",
            _release_zip("finetuner_checkpoint_200.pt", head.state_dict()),
        ),
    }
    return reference, head, files


def _fake_lightning():
    """Lightning's AttributeDict importable (for torch.save) without Lightning installed."""
    names = [
        "pytorch_lightning",
        "pytorch_lightning.utilities",
        "pytorch_lightning.utilities.parsing",
    ]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = types.ModuleType(n)

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = names[-1], "AttributeDict"
    sys.modules[names[-1]].AttributeDict = AttributeDict
    return AttributeDict, saved


def pemr_ckpt(channels=TINY_FCN, seed=0):
    """(PEMR reference module, .ckpt bytes) in PEMR's Lightning layout, with optimizer state."""
    torch.manual_seed(seed)
    encoder = tr.fcn(channels)
    _calibrate(encoder, torch_logmel(_music(59049, batch=4, seed=seed)).astype(np.float32))
    n_features = channels[-1] * 4
    module = tr.pemr(encoder, n_features, 16)
    state = dict(module.state_dict())
    for prefix in ("encoder.", "model.encoder."):
        state[prefix + "unitedmodule.CLS_emb.weight"] = torch.randn(1, 128)
        state[prefix + "unitedmodule.pred_layer.fc.0.weight"] = torch.randn(8, 128, 1)
    state["criterion_B.bn.running_mean"] = torch.zeros(16)
    state["criterion_B.bn.num_batches_tracked"] = torch.tensor(7)
    attribute_dict, saved = _fake_lightning()
    try:
        data = _torch_bytes(
            {
                "epoch": 299,
                "global_step": 123,
                "pytorch-lightning_version": "1.5.10",
                "state_dict": state,
                "optimizer_states": [
                    {
                        "state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.randn(3)}},
                        "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.999), "params": [0]}],
                    }
                ],
                "lr_schedulers": [],
                "hyper_parameters": attribute_dict(projection_dim=16, batch_size=48),
            }
        )
    finally:
        for name, module_ in saved.items():
            if module_ is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module_
    return module, data


def _cli(argv):
    """``keras-clmr ARGV`` in this process; its exit status (absl commands exit)."""
    from keras_clmr import cli

    try:
        return cli.main(argv)
    except SystemExit as stop:
        return stop.code


def _embedding(model, audio):
    return common.to_numpy(model(audio, training=False))


def _assert_close_to(reference_out, keras_out):
    scale = max(1.0, float(np.abs(reference_out).max()))
    assert float(np.abs(reference_out).max()) > 0.1  # not vanishing activations
    np.testing.assert_allclose(keras_out, reference_out, atol=1e-4 * scale)


def _nothing_cached(name, task="embed"):
    """No preset folder for the name, and an offline load still says 'not cached'."""
    assert not os.path.exists(hub.cached_preset_path(name, task))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_CLMR_OFFLINE", "1")
        with pytest.raises(hub.ReleaseNotCachedError):
            hub.load_pretrained(name, task=task, progress=False)


# ----------------------------------------------------------------------------- first use


def test_first_use_downloads_converts_caches_then_loads_without_a_request(
    server, online, monkeypatch, capsys
):
    reference, _, files = clmr_2_0_files()
    preset = _point(monkeypatch, server, "clmr-mtat", {"embed": files["embed"]})
    url = preset.source["embed"]

    model = hub.load_pretrained("clmr-mtat", progress=True)
    progress = capsys.readouterr().err
    assert (
        "converting clmr_checkpoint_10000.zip" in progress and "max relative difference" in progress
    )
    assert server.count() == 1
    audio = _music(model.input_samples, batch=3, seed=9)
    _assert_close_to(tr.run(reference.encoder, audio[:, None, :]), _embedding(model, audio))

    metadata = model.preset_metadata
    source = metadata["source_checkpoint"]
    assert source["url"] == url and source["size"] == len(files["embed"][1])
    assert source["sha256"] == common.sha256_of(release._asset_path(url))
    assert source["member"] == "clmr_checkpoint_10000.pt"
    parity = metadata["evaluation"]["conversion"]["parity"]
    assert parity["passed"] and "0.0001 * max(1, max|reference|)" in parity["rule"]
    assert set(parity["relative_diff"]) == {"embedding", "projection"}
    assert max(parity["relative_diff"].values()) <= 1e-4
    counts = parity["parameter_counts"]
    assert counts["reference_parameters"] == counts["keras_parameters"] > 0
    known = json.loads((online / "release_assets.json").read_text())
    assert known[url]["sha256"] == source["sha256"]

    again = hub.load_pretrained("clmr-mtat", progress=True)
    assert server.count() == 1  # served from the cache: no second request
    assert "converting" not in capsys.readouterr().err
    np.testing.assert_array_equal(_embedding(again, audio), _embedding(model, audio))


def test_tagger_from_the_2_0_encoder_and_finetuner_zips(server, online, monkeypatch):
    reference, head, files = clmr_2_0_files(seed=1)
    _point(monkeypatch, server, "clmr-mtat", files)
    tagger = hub.load_pretrained("clmr-mtat", task="tag", progress=False)
    assert server.count() == 2 and type(tagger).__name__ == "MusicTagger"
    audio = _music(tagger.input_samples, batch=3, seed=4)
    expected = tr.run(head, tr.run(reference.encoder, audio[:, None, :]))
    _assert_close_to(expected, common.to_numpy(tagger.logits(audio)))
    conversion = tagger.preset_metadata["evaluation"]["conversion"]
    assert conversion["finetuner"]["converted_from"]["url"].endswith("finetuner_checkpoint_200.zip")
    assert conversion["finetuner"]["parity"]["passed"]
    # The encoder file is downloaded once for both variants.
    hub.load_pretrained("clmr-mtat", task="embed", progress=False)
    assert server.count() == 2


def test_release_1_0_legacy_pt_and_1_0_l_head(server, online, monkeypatch):
    reference = _simclr(layout="conv", seed=2)
    head = tr.linear_head(16, 50)
    files = {
        "embed": ("clmr_checkpoint_1550.pt", _torch_bytes(reference.state_dict(), legacy=True)),
        "tag": ("finetuner_checkpoint_20.pt", _torch_bytes(head.state_dict(), legacy=True)),
    }
    _point(monkeypatch, server, "clmr-mtat-1550", files)
    tagger = hub.load_pretrained("clmr-mtat-1550", task="tag", progress=False)
    source = tagger.preset_metadata["source_checkpoint"]
    assert source["format"] == "clmr-1.0" and source["serialization"] == "legacy"
    audio = _music(tagger.input_samples, batch=2, seed=5)
    expected = tr.run(head, tr.run(reference.encoder, audio[:, None, :]))
    _assert_close_to(expected, common.to_numpy(tagger.logits(audio)))


def test_pemr_lightning_ckpt(server, online, monkeypatch):
    module, data = pemr_ckpt()
    _point(monkeypatch, server, "pemr-mtat", {"embed": ("pre-trained_model.ckpt", data)})
    encoder = hub.load_pretrained("pemr-mtat", progress=False)
    source = encoder.preset_metadata["source_checkpoint"]
    assert source["container"] == "lightning" and source["epoch"] == 299
    parity = encoder.preset_metadata["evaluation"]["conversion"]["parity"]
    assert {"embedding", "embedding_end_to_end", "projection"} == set(parity["relative_diff"])
    audio = _music(59049, batch=2, seed=6)
    expected = tr.run(module.encoder, torch_logmel(audio))
    _assert_close_to(expected, _embedding(encoder, audio))


def test_cut_transfer_resumes_with_a_range_request(server, online, monkeypatch):
    _, _, files = clmr_2_0_files()
    preset = _point(monkeypatch, server, "clmr-mtat", {"embed": files["embed"]})
    path = "/clmr-mtat/clmr_checkpoint_10000.zip"
    server.behaviour[path] = "cut-once"
    model = hub.load_pretrained("clmr-mtat", progress=False)
    size = len(files["embed"][1])
    assert server.requests == [(path, None), (path, f"bytes={size // 2}-")]
    assert model.preset_metadata["source_checkpoint"]["size"] == size
    assert preset.source["embed"] == model.preset_metadata["source_checkpoint"]["url"]


# ----------------------------------------------------------------------------- failures


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_zip(state):
    return _release_zip("clmr_checkpoint_10000.pt", state)


@pytest.mark.parametrize("failure", ["404", "html", "wrong-size", "disconnect"])
def test_download_failures_are_typed_and_leave_nothing(server, online, monkeypatch, failure):
    _, _, files = clmr_2_0_files()
    data = files["embed"][1]
    assets = {}
    preset = _point(monkeypatch, server, "clmr-mtat", {"embed": files["embed"]})
    url = preset.source["embed"]
    path = "/clmr-mtat/clmr_checkpoint_10000.zip"
    if failure == "wrong-size":  # the registry knows the size; the server sends another body
        assets = {url: {"size": len(data) + 10}}
        monkeypatch.setitem(
            presets._REGISTRY, "clmr-mtat", dataclasses.replace(preset, assets=assets)
        )
    else:
        server.behaviour[path] = failure
    expected_type = hub.AssetChangedError if failure == "wrong-size" else hub.ReleaseDownloadError
    with pytest.raises(expected_type) as caught:
        hub.load_pretrained("clmr-mtat", progress=False)
    message = str(caught.value)
    assert caught.value.url == url and url in message
    fixes = {
        "404": "keras-clmr convert --input FILE --preset clmr-mtat",
        "html": "web page",
        "wrong-size": "expected",
        "disconnect": "partial download is kept and resumed",
    }
    assert fixes[failure] in message
    if failure == "disconnect":
        assert server.count() == 3  # retried
    _nothing_cached("clmr-mtat")


def test_changed_asset_on_a_later_download_is_refused(server, online, monkeypatch):
    _, _, files = clmr_2_0_files()
    preset = _point(monkeypatch, server, "clmr-mtat", {"embed": files["embed"]})
    url = preset.source["embed"]
    hub.load_pretrained("clmr-mtat", progress=False)
    first = json.loads((online / "release_assets.json").read_text())[url]["sha256"]
    # The cache is cleared, and the server now hosts other weights of the same size.
    import shutil

    shutil.rmtree(online / "presets")
    shutil.rmtree(online / "downloads")
    _, _, other = clmr_2_0_files(seed=7)
    changed = bytearray(files["embed"][1])
    changed[-200:] = other["embed"][1][-200:]
    server.files["/clmr-mtat/clmr_checkpoint_10000.zip"] = bytes(changed)
    with pytest.raises(hub.AssetChangedError) as caught:
        hub.load_pretrained("clmr-mtat", progress=False)
    assert url in str(caught.value) and "release_assets.json" in str(caught.value)
    assert json.loads((online / "release_assets.json").read_text())[url]["sha256"] == first
    _nothing_cached("clmr-mtat")


def test_registry_sha256_is_checked_before_conversion(server, online, monkeypatch):
    _, _, files = clmr_2_0_files()
    preset = _point(monkeypatch, server, "clmr-mtat", {"embed": files["embed"]})
    url = preset.source["embed"]
    patched = dataclasses.replace(preset, assets={url: {"sha256": "0" * 64}})
    monkeypatch.setitem(presets._REGISTRY, "clmr-mtat", patched)
    with pytest.raises(hub.AssetChangedError, match="0000000000"):
        hub.load_pretrained("clmr-mtat", progress=False)
    _nothing_cached("clmr-mtat")


@pytest.mark.parametrize("damage", ["malicious", "missing", "extra"])
def test_bad_release_contents_are_refused(server, online, monkeypatch, tmp_path, damage):
    reference = _simclr()
    state = dict(reference.state_dict())
    marker = tmp_path / "pwned"
    if damage == "malicious":
        state["payload"] = _Exploit(marker)
        match = "Refused"
    elif damage == "missing":
        del state["encoder.sequential.3.1.running_var"]
        match = "encoder.sequential.3.1.running_var"
    else:
        state["encoder.sequential.3.2.weight"] = torch.ones(3)
        match = "unexpected keys: encoder.sequential.3.2.weight"
    preset = _point(
        monkeypatch, server, "clmr-mtat", {"embed": ("clmr_checkpoint_10000.zip", _bad_zip(state))}
    )
    with pytest.raises(hub.ReleaseConversionError, match=match) as caught:
        hub.load_pretrained("clmr-mtat", progress=False)
    assert caught.value.url == preset.source["embed"] and preset.source["embed"] in str(
        caught.value
    )
    assert "Nothing was cached" in str(caught.value)
    assert not marker.exists()
    assert not (online / "release_assets.json").exists()  # a refused file is not trusted
    assert not os.listdir(online / "downloads")  # and not kept: the next load fetches it afresh
    _nothing_cached("clmr-mtat")


# ----------------------------------------------------------------------------- offline


def test_offline_error_names_the_url_and_the_command_that_fills_the_cache(
    server, online, monkeypatch, tmp_path, capsys
):
    reference, _, files = clmr_2_0_files()
    preset = _point(monkeypatch, server, "clmr-mtat", {"embed": files["embed"]})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.ReleaseNotCachedError) as caught:
        hub.load_pretrained("clmr-mtat", progress=False)
    message = str(caught.value)
    command = "keras-clmr convert --input clmr_checkpoint_10000.zip --preset clmr-mtat"
    assert preset.source["embed"] in message and command in message
    assert server.count() == 0

    download = tmp_path / "clmr_checkpoint_10000.zip"
    download.write_bytes(files["embed"][1])
    argv = command.split()[1:]
    argv[argv.index("clmr_checkpoint_10000.zip")] = str(download)
    assert _cli(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output"] == hub.cached_preset_path("clmr-mtat")
    assert max(summary["relative_diff"].values()) <= 1e-4
    model = hub.load_pretrained("clmr-mtat", progress=False)
    audio = _music(model.input_samples, batch=2, seed=3)
    _assert_close_to(tr.run(reference.encoder, audio[:, None, :]), _embedding(model, audio))
    assert server.count() == 0
    assert _cli(argv) == 1 and "--overwrite" in capsys.readouterr().err


def test_cli_tag_default_model_online_then_offline(server, online, monkeypatch, tmp_path, capsys):
    import soundfile as sf

    _, _, files = clmr_2_0_files()
    _point(monkeypatch, server, "clmr-mtat", files)
    wav = tmp_path / "song.wav"
    sf.write(wav, _music(3 * 7776, batch=1, seed=8)[0], 22050)

    monkeypatch.setenv("KERAS_CLMR_OFFLINE", "1")
    assert _cli(["tag", str(wav), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "finetuner_checkpoint_200.zip" in error and "keras-clmr convert --input" in error
    assert server.count() == 0

    monkeypatch.delenv("KERAS_CLMR_OFFLINE")
    assert _cli(["tag", str(wav), "--no-progress"]) == 0
    from keras_clmr.data.datasets import MTAT_TAGS

    captured = capsys.readouterr()
    printed = captured.out
    assert "song.wav" in printed and any(name in printed for name in MTAT_TAGS)
    assert server.count() == 2
    # --no-progress silences the first use too: no download bar, no conversion messages.
    assert "keras_clmr:" not in captured.err and "%|" not in captured.err, captured.err

    assert _cli(["embed", str(wav), "--no-progress"]) == 0  # converts the embed variant
    captured = capsys.readouterr()
    assert "song.wav" in captured.out and "keras_clmr:" not in captured.err, captured.err
    assert server.count() == 2  # the encoder file was downloaded once, for both variants

    import shutil

    shutil.rmtree(hub.cached_preset_path("clmr-mtat", "embed"))
    assert _cli(["embed", str(wav)]) == 0  # without the flag the conversion is reported
    assert "keras_clmr: converting clmr_checkpoint_10000.zip" in capsys.readouterr().err


def test_embed_progress_false_silences_the_first_use(server, online, monkeypatch, capsys):
    from keras_clmr.inference import embed, engines

    _, _, files = clmr_2_0_files()
    _point(monkeypatch, server, "clmr-mtat", {"embed": files["embed"]})
    monkeypatch.setattr(engines, "_LOADED", {})  # no model kept from another test
    audio = _music(3 * 7776, batch=1, seed=2)[0]
    result = embed(audio, model="clmr-mtat", sample_rate=22050, progress=False)
    assert result.embeddings.shape == (3, 16) and server.count() == 1
    err = capsys.readouterr().err
    assert "keras_clmr:" not in err and "%|" not in err, err


# ----------------------------------------------------------------------------- full size


@pytest.mark.large  # full-size SampleCNN (2.4M parameters) through the loopback server
def test_full_size_clmr_mtat_first_use(server, online, monkeypatch):
    reference, _, files = clmr_2_0_files(FULL)
    _point(monkeypatch, server, "clmr-mtat", {"embed": files["embed"]})
    model = hub.load_pretrained("clmr-mtat", progress=False)
    parity = model.preset_metadata["evaluation"]["conversion"]["parity"]
    assert parity["parameter_counts"]["reference_parameters"] == 2_368_512 + 327_680
    audio = _music(59049, batch=2, seed=11)
    _assert_close_to(tr.run(reference.encoder, audio[:, None, :]), _embedding(model, audio))


def test_pinned_hub_commit_comes_before_the_release(server, online, monkeypatch, tmp_path):
    """A registry entry that pins a Hub commit loads that snapshot (offline HF cache) and never
    asks the release server; without the pin the same handle is not followed."""
    from conftest import tiny_sample_cnn

    folder = hub.save_preset(tiny_sample_cnn(), tmp_path / "tiny")
    commit = "1234567890abcdef1234567890abcdef12345678"
    hf_cache = tmp_path / "hf"
    hub.populate_local_cache(
        str(folder), "test-org/pinned", cache_dir=str(hf_cache), revision=commit
    )
    _, _, files = clmr_2_0_files()
    preset = _point(monkeypatch, server, "clmr-mtat", {"embed": files["embed"]})
    server.behaviour["/clmr-mtat/clmr_checkpoint_10000.zip"] = "404"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pinned = dataclasses.replace(
        preset, handles={"embed": "hf://test-org/pinned"}, revision={"embed": commit}
    )
    monkeypatch.setitem(presets._REGISTRY, "clmr-mtat", pinned)
    model = hub.load_pretrained("clmr-mtat", cache_dir=str(hf_cache), progress=False)
    assert model.input_samples == tiny_sample_cnn().input_samples and server.count() == 0
    unpinned = dataclasses.replace(pinned, revision={})
    monkeypatch.setitem(presets._REGISTRY, "clmr-mtat", unpinned)
    with pytest.raises(hub.ReleaseNotCachedError):
        hub.load_pretrained("clmr-mtat", cache_dir=str(hf_cache), progress=False)
