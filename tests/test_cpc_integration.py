"""CPC through the rest of keras_clmr: the pretrain command, probes, cover songs, conversion,
presets, cards, exports and filter spectra (tiny configurations; TensorFlow backend)."""

import json
import os

import keras
import numpy as np
import pytest
from test_cpc import torch_reference_modules

from keras_clmr import commands
from keras_clmr.models.cpc import (
    CPC,
    MUSIC_FILTER_SIZES,
    MUSIC_PADDINGS,
    MUSIC_STRIDES,
    CPCEncoder,
)

TINY_FLAGS = [
    "--model=cpc",
    "--cpc_strides=4,2",
    "--cpc_filter_sizes=8,4",
    "--cpc_paddings=2,1",
    "--cpc_latent_dim=16",
    "--cpc_context_dim=8",
    "--cpc_input_samples=512",
    "--prediction_steps=3",
    "--negative_samples=4",
    "--subsample_window=40",
]
TINY = dict(
    strides=(4, 2), filter_sizes=(8, 4), paddings=(2, 1), latent_dim=16, context_dim=8,
    input_samples=512,
)  # fmt: skip


def run_command(name, args):
    """``keras-clmr <name> args`` in-process: its exit status."""
    with pytest.raises(SystemExit) as exit_info:
        commands.run(name, [name, *args])
    return exit_info.value.code


def numpy_clip_embedding(encoder, audio):
    """The clip embedding recomputed from the encoder's parts: mean over t of c_t."""
    context = encoder.context(encoder.latents(audio))
    return np.asarray(keras.ops.convert_to_numpy(context), np.float64).mean(axis=1)


@pytest.mark.large
def test_pretrain_command_trains_cpc_then_probe_and_cover_songs(tmp_path, capsys):
    from keras_clmr.evaluation import demo_cover_set, demo_splits, linear_probe
    from keras_clmr.evaluation.cover import cover_song_eval

    output = tmp_path / "run"
    status = run_command(
        "pretrain",
        TINY_FLAGS
        + [
            "--demo_clips=8",
            "--batch_size=4",
            "--steps_per_epoch=2",
            "--epochs=1",
            "--nojit_compile",
            f"--output_dir={output}",
        ],
    )
    assert status in (0, None), capsys.readouterr().err
    settings = json.loads((output / "checkpoints" / "state.json").read_text())["settings"]
    assert settings["model"] == "cpc"
    assert settings["learning_rate"] == pytest.approx(1.5e-4)  # the CPC default
    assert settings["augment"] == "none"  # the original CPC had no augmentation
    assert settings["cpc_strides"] == [4, 2] and settings["prediction_steps"] == 3

    pretrainer = keras.saving.load_model(output / "model.keras")
    assert isinstance(pretrainer, CPC)
    assert (pretrainer.prediction_steps, pretrainer.negative_samples) == (3, 4)
    assert pretrainer.subsample_window == 40
    assert float(pretrainer.optimizer.learning_rate) == pytest.approx(1.5e-4)
    encoder = keras.saving.load_model(output / "encoder.keras")
    assert isinstance(encoder, CPCEncoder)
    assert encoder.get_config()["strides"] == [4, 2] and encoder.embedding_dim == 8
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 512)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(encoder(audio)),
        keras.ops.convert_to_numpy(pretrainer.encoder(audio)),
        rtol=0,
        atol=1e-6,
    )

    splits, tags = demo_splits(n_clips=12, seconds=0.5)
    results = linear_probe(
        encoder, splits["train"], splits["valid"], splits["test"], tags=tags, epochs=2
    )
    assert results["encoder"]["class_name"] == "CPCEncoder"
    assert 0.0 <= results["metrics"]["roc_auc_tag"] <= 1.0
    assert results["protocol"]["head"] == "linear"

    covers = cover_song_eval(encoder, demo_cover_set(n_clips=12, seconds=0.5))
    assert 0.0 < covers["map"] <= 1.0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cpc_paddings=2"], "one stride, filter size and padding per conv block"),
        (["--channels=8,8"], "--channels does not apply to --model=cpc"),
        (["--prediction_steps=64", "--subsample_window=0"], "too few to predict"),
    ],
)
def test_pretrain_command_refuses_bad_cpc_flags(tmp_path, capsys, extra, message):
    status = run_command("pretrain", TINY_FLAGS + extra + [f"--output_dir={tmp_path / 'run'}"])
    assert status not in (0, None)
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_convert_command_detects_a_cpc_checkpoint_and_writes_a_preset(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    import keras_clmr

    torch.manual_seed(0)
    # The music configuration's seven blocks with narrow layers (the layout is what matters).
    reference = torch_reference_modules(
        MUSIC_STRIDES, MUSIC_FILTER_SIZES, MUSIC_PADDINGS, 16, 8, 12
    )
    checkpoint = tmp_path / "cpc_checkpoint.pt"
    torch.save(reference.state_dict(), checkpoint)
    output = tmp_path / "cpc-preset"
    status = run_command("convert", [f"--source={checkpoint}", f"--output={output}"])
    out, err = capsys.readouterr()
    assert status in (0, None), err
    summary = json.loads(out[out.index("{") :])
    assert summary["source_format"] == "cpc" and summary["model"] == "CPCEncoder"
    metadata = json.loads((output / "metadata.json").read_text())
    parity = metadata["evaluation"]["conversion"]["parity"]
    assert parity["passed"] and set(parity["max_abs_diff"]) == {
        "latents",
        "context",
        "predictions",
    }
    fc = 16 * 50 + 50  # the original Encoder's unused Linear(latent, 50)
    own = sum(p.numel() for p in reference.parameters())
    assert parity["parameter_counts"]["reference_parameters"] == own - fc
    assert parity["parameter_counts"]["reference_unused_fc_parameters"] == fc

    encoder = keras_clmr.load_pretrained(str(output))
    assert isinstance(encoder, CPCEncoder) and encoder.input_samples == 59049
    audio = np.random.default_rng(1).uniform(-0.5, 0.5, (2, 59049)).astype("float32")
    with torch.no_grad():
        _, context, _ = reference.model(torch.from_numpy(audio)[:, None, :])
    want = context.numpy().astype(np.float64).mean(axis=1)
    got = np.asarray(keras.ops.convert_to_numpy(encoder(audio)), np.float64)
    assert np.max(np.abs(got - want)) <= 1e-4 * max(1.0, np.max(np.abs(want)))
    card = (output / "README.md").read_text()
    assert "Contrastive Predictive Coding" in card and "| architecture | CPCEncoder |" in card
    assert "cpc" in card and "context" in card  # the parity table names the outputs


def test_preset_round_trip_card_and_filter_spectra(tmp_path):
    import keras_clmr
    from keras_clmr.hub import save_preset
    from keras_clmr.interpret.filters import filter_spectra

    model = CPC(CPCEncoder(**TINY), prediction_steps=3, negative_samples=4, seed=0)
    folder = save_preset(model, tmp_path / "cpc-tiny", name="cpc-tiny", description="Tiny CPC.")
    metadata = json.loads(open(os.path.join(folder, "metadata.json")).read())
    assert metadata["class_name"] == "CPCEncoder" and metadata["stored_from"] == "CPC.encoder"
    assert metadata["embedding_dim"] == 8 and metadata["input_samples"] == 512
    loaded = keras_clmr.load_pretrained(folder)
    audio = np.random.default_rng(2).uniform(-0.5, 0.5, (3, 512)).astype("float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(audio)), keras.ops.convert_to_numpy(model.encoder(audio))
    )
    want = numpy_clip_embedding(model.encoder, audio)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(audio)), want, atol=1e-6)
    card = open(os.path.join(folder, "README.md")).read()
    assert "CPC (van den Oord et al. 2018)" in card
    assert "| outputs | `embedding` [batch, 8]" in card and "oord2018cpc" in card

    result = filter_spectra(model, layers=(1, 2), steps=3, input_samples=64)
    assert [(entry.layer, entry.name) for entry in result.layers] == [(1, "conv_0"), (2, "conv_1")]
    assert result[1].spectra.shape == (16, 33) and np.all(np.isfinite(result[2].spectra))
    with pytest.raises(Exception, match="no filter layer 3"):
        filter_spectra(model, layers=(3,), steps=1, input_samples=64)


@pytest.mark.large
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="exports need TensorFlow")
def test_export_preset_savedmodel_and_onnx_with_the_gru(tmp_path):
    pytest.importorskip("onnxruntime")
    from keras_clmr.export import export_preset
    from keras_clmr.hub import save_preset

    encoder = CPCEncoder(**TINY)
    folder = save_preset(encoder, tmp_path / "cpc-tiny", name="cpc-tiny", description="Tiny CPC.")
    summary = export_preset(folder, formats="all")
    assert summary["model"] == "CPCEncoder"
    onnx = summary["exports"]["onnx"]
    assert "tf2onnx" in onnx["exporter"]
    for fmt in ("savedmodel", "onnx"):
        diffs = summary["exports"][fmt]["parity"]["max_abs_diff"]["embedding"]
        assert diffs and max(diffs.values()) <= 1e-4
    assert os.path.isfile(os.path.join(folder, "model.onnx"))
    assert os.path.isdir(os.path.join(folder, "saved_model"))
