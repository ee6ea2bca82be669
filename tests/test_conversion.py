"""Checkpoint conversion: every CLMR family saved in its exact layout by the PyTorch reference,
converted, and compared (max abs diff <= 1e-4, equal parameter counts); bad checkpoints fail
naming the keys; pickles that would run code are refused."""

import io
import json
import os
import sys
import types
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from keras_clmr.conversion import (  # noqa: E402
    ConversionError,
    ParityError,
    UnsafeCheckpointError,
    common,  # noqa: E402
    convert_checkpoint,
    read_checkpoint,
)
from keras_clmr.conversion import torch_reference as tr  # noqa: E402

TINY = dict(strides=(3, 3, 3, 3, 2, 2, 2, 2, 2), channels=(8, 8, 8, 8, 8, 8, 8, 8, 8, 16, 16))
TINY_16K = dict(strides=(3, 3, 3, 3, 3, 3, 5, 2, 2), channels=(4, 4, 4, 4, 4, 4, 4, 4, 4, 8, 8))


def _simclr(config, projection_dim=12, seed=0, layout="sequential"):
    torch.manual_seed(seed)
    encoder = tr.randomize_batchnorm(tr.sample_cnn(layout=layout, **config), seed=seed)
    return tr.simclr(encoder, config["channels"][-1], projection_dim)


def _audio(n, batch=2, seed=5):
    return (0.3 * np.random.default_rng(seed).standard_normal((batch, n))).astype(np.float32)


def _check_against(model, reference, n, projection=True):
    """Independent check (not the converter's own): Keras vs the reference on fresh inputs."""
    audio = _audio(n)
    h_ref, z_ref = tr.run(reference, audio[:, None, :])
    encoder = model.encoder
    h = common.to_numpy(encoder(audio, training=False))
    np.testing.assert_allclose(h, h_ref, atol=1e-4)
    if projection:
        z = common.to_numpy(model.projector(h, training=False))
        np.testing.assert_allclose(z, z_ref, atol=1e-4)
    assert float(np.abs(h_ref).max()) > 1e-2  # the comparison is not on vanishing activations


@pytest.mark.large  # full-size SampleCNN converted and compared
def test_release_2_0_full_size_zip(tmp_path):
    """Release 2.0: a plain state_dict of SimCLR inside the release .zip; full size (2,368,512)."""
    reference = _simclr(
        dict(strides=(3,) * 9, channels=(128, 128, 128, 256, 256, 256, 256, 256, 256, 512, 512)),
        projection_dim=128,
    )
    keys = list(reference.state_dict())
    assert (
        any(k.startswith("encoder.sequential.10.1.") for k in keys) and "projector.2.weight" in keys
    )
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)
    path = tmp_path / "clmr_checkpoint_10000.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("clmr_checkpoint_10000.pt", buffer.getvalue())

    model, meta = convert_checkpoint(str(path))
    assert meta["source_format"] == "clmr-2.0"
    assert meta["converted_from"]["member"] == "clmr_checkpoint_10000.pt"
    assert (
        meta["architecture"]["projection_dim"] == 128
        and meta["architecture"]["input_samples"] == 59049
    )
    counts = meta["parity"]["parameter_counts"]
    assert counts["reference_parameters"] == counts["keras_parameters"] == 2_368_512 + 327_680
    assert max(meta["parity"]["max_abs_diff"].values()) <= 1e-4
    _check_against(model, reference, 59049)


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(TINY, marks=pytest.mark.multibackend, id="22k-tiny"),
        pytest.param(TINY_16K, id="16k-strides-tiny"),
    ],
)
def test_release_2_0_tiny(tmp_path, config):
    reference = _simclr(config)
    path = tmp_path / "clmr.pt"
    torch.save(reference.state_dict(), path)
    model, meta = convert_checkpoint(str(path), format="clmr-2.0")
    assert tuple(meta["architecture"]["strides"]) == config["strides"]
    assert meta["architecture"]["sample_rate"] == (16000 if config is TINY_16K else 22050)
    _check_against(model, reference, model.encoder.input_samples)
    counts = meta["parity"]["parameter_counts"]
    assert counts["reference_parameters"] == counts["keras_parameters"]
    assert counts["reference_bn_statistics"] == counts["keras_bn_statistics"]


def test_release_1_0_conv_layout_legacy_pickle(tmp_path):
    """Release 1.0: SampleCNN59049's conv1..conv11 names, in torch's legacy (non-zip) format."""
    reference = _simclr(TINY, layout="conv")
    assert "encoder.conv11.1.running_var" in reference.state_dict()
    path = tmp_path / "clmr_checkpoint_1550.pt"
    torch.save(reference.state_dict(), path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    model, meta = convert_checkpoint(str(path))
    assert meta["source_format"] == "clmr-1.0"
    _check_against(model, reference, model.encoder.input_samples)


def _fake_lightning_module():
    """Make Lightning's AttributeDict picklable without Lightning installed."""
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

    AttributeDict.__module__ = names[-1]
    AttributeDict.__qualname__ = "AttributeDict"
    sys.modules[names[-1]].AttributeDict = AttributeDict
    return AttributeDict, saved


def _restore_modules(saved):
    for n, module in saved.items():
        if module is None:
            sys.modules.pop(n, None)
        else:
            sys.modules[n] = module


def _lightning_checkpoint(path, module):
    attribute_dict, saved = _fake_lightning_module()
    try:
        hparams = attribute_dict(
            batch_size=48,
            projection_dim=module.model.projector[2].out_features,
            dataset="magnatagatune",
        )
        checkpoint = {
            "epoch": 9999,
            "global_step": 123,
            "pytorch-lightning_version": "1.4.9",
            "state_dict": module.state_dict(),
            "hyper_parameters": hparams,
            "optimizer_states": [
                {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 3e-4}]}
            ],
            "lr_schedulers": [],
            "callbacks": {
                "ModelCheckpoint": {"best_model_score": torch.tensor(0.5), "dirpath": "/runs"}
            },
        }
        torch.save(checkpoint, path)
    finally:
        _restore_modules(saved)


def test_lightning_ckpt(tmp_path):
    """master's Lightning .ckpt: encoder registered twice, model.projector, AttributeDict."""
    torch.manual_seed(1)
    encoder = tr.randomize_batchnorm(tr.sample_cnn(**TINY), seed=1)
    module = tr.lightning_clmr(encoder, 16, 10)
    keys = module.state_dict().keys()
    assert "encoder.sequential.0.0.weight" in keys and "model.encoder.sequential.0.0.weight" in keys
    path = tmp_path / "epoch=9999.ckpt"
    _lightning_checkpoint(path, module)
    model, meta = convert_checkpoint(str(path))
    assert meta["source_format"] == "clmr-lightning"
    assert meta["converted_from"]["pytorch-lightning_version"] == "1.4.9"
    assert meta["converted_from"]["hyper_parameters"]["batch_size"] == 48
    reasons = meta["keys"]["ignored_keys"]
    assert any("duplicate" in reason for reason in reasons)
    assert model.projection_dim == 10
    _check_against(model, module.model, model.encoder.input_samples)


@pytest.mark.parametrize("variant", ["linear", "mlp", "lightning-linear"])
def test_finetuner_head(tmp_path, variant):
    reference = _simclr(TINY)
    encoder_path = tmp_path / "clmr.pt"
    torch.save(reference.state_dict(), encoder_path)
    torch.manual_seed(2)
    head = tr.linear_head(16, 50, mlp=variant == "mlp", hidden=16)
    head_state = head.state_dict()
    if variant == "lightning-linear":
        head_state = {"model." + k: v for k, v in head_state.items()}
    head_path = tmp_path / "finetuner_checkpoint_200.pt"
    torch.save(head_state, head_path)

    tagger, meta = convert_checkpoint(str(encoder_path), finetuner=str(head_path))
    assert type(tagger).__name__ == "MusicTagger"
    assert meta["finetuner"]["head"] == ("mlp" if variant == "mlp" else "linear")
    assert tagger.tags[0] == "guitar" and len(tagger.tags) == 50
    audio = _audio(tagger.input_samples)
    expected = tr.run(head, tr.run(reference.encoder, audio[:, None, :]))
    np.testing.assert_allclose(common.to_numpy(tagger.logits(audio)), expected, atol=1e-4)
    np.testing.assert_allclose(
        common.to_numpy(tagger(audio)), 1 / (1 + np.exp(-expected)), atol=1e-5
    )
    counts = meta["finetuner"]["parity"]["parameter_counts"]
    assert counts["reference_parameters"] == counts["keras_parameters"]


def test_head_alone_is_not_an_encoder(tmp_path):
    path = tmp_path / "head.pt"
    torch.save(tr.linear_head(512, 50).state_dict(), path)
    with pytest.raises(ConversionError, match="--finetuner"):
        convert_checkpoint(str(path))


def _saved_state(tmp_path, edit):
    state = dict(_simclr(TINY).state_dict())
    edit(state)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    return str(path)


def test_missing_key_is_named(tmp_path):
    path = _saved_state(tmp_path, lambda s: s.pop("encoder.sequential.4.1.running_var"))
    with pytest.raises(
        ConversionError, match=r"missing keys: encoder\.sequential\.4\.1\.running_var"
    ):
        convert_checkpoint(path, format="clmr-2.0")


def test_extra_key_is_named(tmp_path):
    path = _saved_state(
        tmp_path, lambda s: s.update({"encoder.extra_layer.weight": torch.zeros(3)})
    )
    with pytest.raises(ConversionError, match=r"unexpected keys: encoder\.extra_layer\.weight"):
        convert_checkpoint(path, format="clmr-2.0")


def test_misshaped_key_is_named(tmp_path):
    path = _saved_state(
        tmp_path, lambda s: s.update({"encoder.sequential.3.1.weight": torch.ones(9)})
    )
    with pytest.raises(
        ConversionError,
        match=r"mis-shaped keys: encoder\.sequential\.3\.1\.weight: expected \[8\], "
        r"got \[9\]",
    ):
        convert_checkpoint(path, format="clmr-2.0")


def test_misshaped_head_is_named(tmp_path):
    encoder_path = _saved_state(tmp_path, lambda s: None)
    head_path = tmp_path / "head.pt"
    torch.save({"0.weight": torch.zeros(50, 512), "0.bias": torch.zeros(50)}, head_path)
    with pytest.raises(ConversionError, match=r"0\.weight \[50, 512\].*16"):
        convert_checkpoint(encoder_path, finetuner=str(head_path))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_executing_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    state = dict(_simclr(TINY).state_dict())
    torch.save({"state_dict": state, "payload": _Exploit(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="Refused"):
        convert_checkpoint(str(path))
    assert not marker.exists()


def test_parity_failure_is_detected(tmp_path, monkeypatch):
    """A wrong kernel layout (no transpose) must fail the parity check, not slip through."""
    reference = _simclr(dict(TINY, channels=(8,) * 9 + (8, 8)))
    path = tmp_path / "clmr.pt"
    torch.save(reference.state_dict(), path)
    monkeypatch.setattr(
        common, "conv1d_kernel", lambda w: np.ascontiguousarray(np.transpose(w, (2, 1, 0))[::-1])
    )  # kernel taps reversed: a plausible layout bug
    with pytest.raises(ParityError, match="does not reproduce the reference"):
        convert_checkpoint(str(path))


def test_format_detection_and_unknown(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"backbone.weight": torch.zeros(3)}, path)
    with pytest.raises(ConversionError, match="--format"):
        convert_checkpoint(str(path))
    with pytest.raises(ConversionError, match="not found"):
        read_checkpoint(str(tmp_path / "nope.pt"))


def test_cli_writes_preset_with_parity(tmp_path):
    from export.convert_checkpoint import convert
    from keras_clmr.hub import load_preset

    reference = _simclr(TINY)
    encoder_path = tmp_path / "clmr.pt"
    torch.save(reference.state_dict(), encoder_path)
    head = tr.linear_head(16, 50)
    head_path = tmp_path / "head.pt"
    torch.save(head.state_dict(), head_path)

    summary = convert(
        str(encoder_path), str(tmp_path / "tagger"), finetuner=str(head_path), name="tiny-tagger"
    )
    assert summary["source_format"] == "clmr-2.0" and summary["model"] == "MusicTagger"
    assert summary["max_abs_diff"]["finetuner"]["logits"] <= 1e-4
    metadata = json.loads((tmp_path / "tagger" / "metadata.json").read_text())
    conversion = metadata["evaluation"]["conversion"]
    assert conversion["parity"]["passed"] and conversion["finetuner"]["parity"]["passed"]
    assert metadata["source_checkpoint"]["sha256"] == common.sha256_of(encoder_path)
    assert "max abs difference" in (tmp_path / "tagger" / "README.md").read_text()

    loaded = load_preset(str(tmp_path / "tagger"), task="tag")
    audio = _audio(loaded.input_samples)
    expected = tr.run(head, tr.run(reference.encoder, audio[:, None, :]))
    np.testing.assert_allclose(common.to_numpy(loaded.logits(audio)), expected, atol=1e-4)

    # Encoder-only preset (the projector is dropped by default) round-trips too.
    convert(str(encoder_path), str(tmp_path / "encoder"))
    encoder = load_preset(str(tmp_path / "encoder"))
    np.testing.assert_allclose(
        common.to_numpy(encoder(audio)), tr.run(reference.encoder, audio[:, None, :]), atol=1e-4
    )


def _pemr_checkpoint(path, seed=0):
    """PEMR's Lightning layout: encoder twice, model.projector, training-only parts, loss BN."""
    torch.manual_seed(seed)
    encoder = tr.randomize_batchnorm(tr.fcn(), seed=seed)
    with (
        torch.no_grad()
    ):  # dB input: give spec_bn statistics of a real log-mel (mean -30 dB, std 20 dB)
        encoder.spec_bn.running_mean.fill_(-30.0)
        encoder.spec_bn.running_var.fill_(400.0)
    module = tr.pemr(encoder, 512, 256)
    state = dict(module.state_dict())
    for prefix in ("encoder.", "model.encoder."):
        state[prefix + "unitedmodule.CLS_emb.weight"] = torch.randn(1, 128)
        state[prefix + "unitedmodule.MASK_emb.weight"] = torch.randn(1, 128)
        state[prefix + "unitedmodule.masking.layers.0.enc_self_attn.W_Q.weight"] = torch.randn(
            384, 128
        )
        state[prefix + "unitedmodule.pred_layer.fc.0.weight"] = torch.randn(512, 128, 1)
    for name, value in (
        ("weight", torch.ones(256)),
        ("bias", torch.zeros(256)),
        ("running_mean", torch.zeros(256)),
        ("running_var", torch.ones(256)),
        ("num_batches_tracked", torch.tensor(7)),
    ):
        state[f"criterion_B.bn.{name}"] = value
    attribute_dict, saved = _fake_lightning_module()
    try:
        torch.save(
            {
                "state_dict": state,
                "pytorch-lightning_version": "1.5.10",
                "epoch": 299,
                "hyper_parameters": attribute_dict(projection_dim=256, clips_num=462),
            },
            path,
        )
    finally:
        _restore_modules(saved)
    return module


def test_pemr_lightning_ckpt_and_head(tmp_path):
    from keras_clmr.conversion.pemr import torch_logmel

    path = tmp_path / "pre-trained_model.ckpt"
    module = _pemr_checkpoint(path)
    head = tr.linear_head(512, 50)
    head_path = tmp_path / "pemr_finetuner.ckpt"
    torch.save({"model." + k: v for k, v in head.state_dict().items()}, head_path)

    encoder, meta = convert_checkpoint(str(path))
    assert meta["source_format"] == "pemr" and type(encoder).__name__ == "FCN"
    counts = meta["parity"]["parameter_counts"]
    assert counts["reference_parameters"] == counts["keras_parameters"] == 370_562
    assert counts["reference_bn_statistics"] == counts["keras_bn_statistics"] == 898
    assert max(meta["parity"]["max_abs_diff"].values()) <= 1e-4
    reasons = " ".join(meta["keys"]["ignored_keys"])
    assert (
        "training-only mask generation" in reasons
        and "Barlow-Twins" in reasons
        and "duplicate" in reasons
    )
    # Independent end-to-end check: torch frontend + torch FCN vs the Keras encoder on audio.
    audio = _audio(encoder.input_samples)
    expected = tr.run(module.encoder, torch_logmel(audio))
    np.testing.assert_allclose(common.to_numpy(encoder(audio)), expected, atol=1e-4)
    assert float(np.abs(expected).max()) > 1e-2

    tagger, meta = convert_checkpoint(str(path), finetuner=str(head_path))
    assert (
        type(tagger).__name__ == "MusicTagger"
        and meta["finetuner"]["parity"]["max_abs_diff"]["logits"] <= 1e-4
    )
    np.testing.assert_allclose(
        common.to_numpy(tagger.logits(audio)), tr.run(head, expected), atol=1e-4
    )


def test_pemr_missing_key_is_named(tmp_path):
    module = tr.pemr(tr.fcn(), 512, 256)
    state = dict(module.state_dict())
    state.pop("model.encoder.layer2.bn.running_mean")
    path = tmp_path / "broken.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(
        ConversionError, match=r"missing keys: model\.encoder\.layer2\.bn\.running_mean"
    ):
        convert_checkpoint(str(path))


def test_cli_main_exit_codes(tmp_path, capsys):
    from absl import flags

    from export import convert_checkpoint as cli

    def run(*args):
        fv = flags.FlagValues()
        cli.define_flags(fv)
        fv(["convert_checkpoint", *args])
        return cli.main([], flag_values=fv)

    path = tmp_path / "clmr.pt"
    torch.save(_simclr(TINY).state_dict(), path)
    out = tmp_path / "preset"
    assert run(f"--source={path}", f"--output={out}", "--name=tiny") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["source_format"] == "clmr-2.0" and summary["model"] == "SampleCNN"
    assert max(summary["max_abs_diff"]["model"].values()) <= 1e-4
    assert run(f"--source={path}", f"--output={out}") == 1
    assert "--overwrite" in capsys.readouterr().err
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Exploit(tmp_path / "pwned")}, evil)
    assert run(f"--source={evil}", f"--output={tmp_path / 'evil'}") == 1
    assert "Refused" in capsys.readouterr().err and not (tmp_path / "pwned").exists()
    assert run(f"--source={path}") == 2


def test_supervised_fc_and_dataparallel_prefix(tmp_path):
    """A supervised SampleCNN (encoder.fc kept) saved through DataParallel ('module.' prefix)."""
    torch.manual_seed(4)
    encoder = tr.randomize_batchnorm(tr.sample_cnn(n_classes=50, **TINY), seed=4)
    wrapper = torch.nn.Module()
    wrapper.encoder = encoder
    path = tmp_path / "supervised.pt"
    torch.save({"module." + k: v for k, v in wrapper.state_dict().items()}, path)
    tagger, meta = convert_checkpoint(str(path))
    assert meta["converted_from"]["stripped_prefix"] == "module."
    assert type(tagger).__name__ == "MusicTagger" and meta["finetuner"]["head"] == "linear"
    audio = _audio(tagger.input_samples)
    np.testing.assert_allclose(
        common.to_numpy(tagger.logits(audio)), tr.run(encoder, audio[:, None, :]), atol=1e-4
    )
