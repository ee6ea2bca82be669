"""Pretraining guidance: the step estimate and its memory warning, the batch cap for small data
(prepared shards as audio folders), the positive-pair cosine metric and the TensorBoard
scalars (views/s, learning rate, positive cosine).

The estimate's formula against measured peaks is a benchmark
(``python -m benchmarks.pretrain_estimate``), not a test: nothing here depends on timing.
"""

import io
import logging
import os
from contextlib import redirect_stderr, redirect_stdout

import keras
import numpy as np
import pytest

from keras_clmr import pretraining
from keras_clmr.models import CLMR, SampleCNN
from keras_clmr.models.pretrainer import Pretrainer, positive_cosine

TINY_CHANNELS = (4, 4, 4, 4, 4, 4, 4, 4, 4, 8, 8)
TINY = [
    "--channels=4,4,4,4,4,4,4,4,4,8,8",
    "--projection_dim=8",
    "--nojit_compile",
    "--augment=crop",
    "--batch_size=4",
    "--steps_per_epoch=2",
    "--epochs=1",
]


def tiny_clmr(seed=0):
    """CLMR on a 1536-sample SampleCNN (stride-2 blocks), 8-d projections: fast steps."""
    encoder = SampleCNN(strides=(2,) * 9, channels=TINY_CHANNELS)
    return CLMR(encoder, projection_dim=8, seed=seed)


def numpy_cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# ------------------------------------------------------------------ positive-pair cosine


def test_positive_cosine_matches_float64_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 8)) * rng.uniform(0.01, 100, size=(16, 1))
    b = a + rng.normal(size=(16, 8))
    got = keras.ops.convert_to_numpy(positive_cosine(a.astype("float32"), b.astype("float32")))
    np.testing.assert_allclose(got, numpy_cosine(a, b), atol=1e-6)
    got64 = keras.ops.convert_to_numpy(positive_cosine(a, b))
    np.testing.assert_allclose(got64, numpy_cosine(a, b), atol=1e-12)
    zero = keras.ops.convert_to_numpy(positive_cosine(np.zeros((1, 8)), b[:1]))
    assert zero[0] == 0.0


def test_train_step_logs_the_mean_positive_cosine_of_its_projections():
    model = tiny_clmr()
    rng = np.random.default_rng(1)
    # View pairs exactly one window long: no crop, no augmentation, so the step's forward
    # pass is model(x, training=True) with the weights before the update.
    x = (0.1 * rng.standard_normal((4, 2, model.input_samples))).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
    projections = keras.ops.convert_to_numpy(model(x, training=True))
    logs = model.train_on_batch(x, return_dict=True)
    expected = numpy_cosine(projections[:, 0], projections[:, 1]).mean()
    assert "positive_cosine" in logs
    np.testing.assert_allclose(logs["positive_cosine"], expected, atol=1e-5)


def test_pemr_and_cpc_positive_pairs():
    rng = np.random.default_rng(2)
    projections = rng.normal(size=(3, 3, 5)).astype("float32")
    # PEMR's output dict: anchor, positive, negative projections; the pair is the first two.
    first, second = Pretrainer.positive_pair(None, {"projections": projections, "pred_loss": 0})
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(first), projections[:, 0])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(second), projections[:, 1])

    from keras_clmr.models.cpc import CPC

    class Steps:
        prediction_steps = 2

    batch, window, depth = 2, 5, 3
    predictions = rng.normal(size=(batch, window, 2 * depth))
    targets = rng.normal(size=(batch, window, depth))
    first, second = CPC.positive_pair(Steps(), {"predictions": predictions, "targets": targets})
    first, second = keras.ops.convert_to_numpy(first), keras.ops.convert_to_numpy(second)
    # Independent pairing: prediction k at time t with target t + k.
    pairs = [
        (predictions[b, t, (k - 1) * depth : k * depth], targets[b, t + k])
        for k in (1, 2)
        for b in range(batch)
        for t in range(window - k)
    ]
    expected = np.mean([numpy_cosine(p, q) for p, q in pairs])
    got = keras.ops.convert_to_numpy(keras.ops.mean(positive_cosine(first, second)))
    # Cosines are of scale 1; JAX (no x64) and torch's slicing of float64 arrays reach float32
    # precision on the way, so the tolerance is float32's.
    np.testing.assert_allclose(got, expected, atol=1e-6)


# ------------------------------------------------------------------ TensorBoard scalars


def scalars(log_dir):
    """{tag: [values]} of every scalar in the TensorBoard event files under ``log_dir``."""
    import tensorflow as tf

    found = {}
    for folder, _, names in os.walk(log_dir):
        for name in names:
            if "tfevents" not in name:
                continue
            for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
                for value in event.summary.value:
                    number = (
                        float(tf.make_ndarray(value.tensor))
                        if value.HasField("tensor")
                        else value.simple_value
                    )
                    found.setdefault(value.tag, []).append(number)
    return found


@pytest.mark.large
def test_tensorboard_gets_views_per_second_learning_rate_and_positive_cosine(tmp_path):
    model = tiny_clmr()
    rng = np.random.default_rng(3)
    x = (0.1 * rng.standard_normal((4, 2, model.input_samples))).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    log_dir = tmp_path / "logs"
    model.fit(
        x,
        batch_size=4,
        epochs=1,
        verbose=0,
        callbacks=[
            pretraining.PretrainingRate(views_per_step=8),
            keras.callbacks.TensorBoard(str(log_dir), write_graph=False),
        ],
    )
    found = scalars(log_dir)
    for tag in ("epoch_views_per_second", "epoch_learning_rate", "epoch_positive_cosine"):
        assert tag in found and len(found[tag]) == 1, sorted(found)
    assert found["epoch_views_per_second"][0] > 0
    np.testing.assert_allclose(found["epoch_learning_rate"], [1e-3], rtol=1e-6)
    assert -1.0 <= found["epoch_positive_cosine"][0] <= 1.0


def test_views_per_second_leaves_the_first_step_out(monkeypatch):
    import time

    clock = iter([100.0, 130.0, 132.0, 134.0, 200.0, 204.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    rate = pretraining.PretrainingRate(views_per_step=96)
    rate.on_epoch_begin(0)
    for batch in range(3):  # steps end at 130 (with tracing), 132 and 134
        rate.on_train_batch_end(batch)
    logs = {}
    rate.on_epoch_end(0, logs)
    assert logs["views_per_second"] == 96 * 2 / 4.0
    rate.on_epoch_begin(1)  # one step: the whole epoch counts
    rate.on_train_batch_end(0)
    logs = {}
    rate.on_epoch_end(1, logs)
    assert logs["views_per_second"] == 96 / 4.0


# ------------------------------------------------------------------ estimate and warning


def test_layer_costs_of_sample_cnn_match_its_architecture():
    encoder = SampleCNN(channels=TINY_CHANNELS)
    floats, flops = pretraining.layer_costs(encoder)
    # By hand: stem conv (k3, s3) then per block conv (k3, same) + BN + ReLU (+ pool).
    length, channels, expected_floats, expected_macs = encoder.input_samples // 3, 4, 0, 0
    expected_floats += 3 * length * channels  # stem conv, BN, ReLU
    expected_macs += length * channels * 3 * 1
    previous = channels
    for i, stride in enumerate(encoder.strides, start=1):
        channels = TINY_CHANNELS[i]
        expected_floats += 3 * length * channels
        expected_macs += length * channels * 3 * previous
        length //= stride
        expected_floats += length * channels  # max pooling
        previous = channels
    expected_floats += 3 * length * TINY_CHANNELS[10] + TINY_CHANNELS[10]  # last block, flatten
    expected_macs += length * TINY_CHANNELS[10] * 3 * previous
    assert floats == expected_floats
    elementwise = (
        expected_floats
        - sum(  # conv outputs counted as multiply-adds instead
            [encoder.input_samples // 3 * 4]
            + [
                (encoder.input_samples // 3 // np.prod(encoder.strides[: i - 1], dtype=int))
                * TINY_CHANNELS[i]
                for i in range(1, 11)
            ]
        )
    )
    assert flops == 2 * expected_macs + elementwise


def test_estimate_scales_with_the_batch_and_the_cores():
    model = tiny_clmr()
    small = pretraining.estimate_step(model, 4, cores=2)
    large = pretraining.estimate_step(model, 8, cores=2)
    assert small.views == 8 and large.views == 16
    base = pretraining.STEP_BASE_BYTES
    np.testing.assert_allclose(large.peak_bytes - base, 2 * (small.peak_bytes - base), rtol=1e-12)
    np.testing.assert_allclose(
        pretraining.estimate_step(model, 4, cores=4).seconds, small.seconds / 2, rtol=1e-12
    )
    with_data = pretraining.estimate_step(model, 4, cores=2, data_bytes=1e9)
    np.testing.assert_allclose(with_data.peak_bytes - small.peak_bytes, 1e9)


def test_full_size_clmr_estimate_is_near_the_calibration_points():
    # Measured (keras_clmr/pretraining.py): 48 pairs, crop only 5.97 GB, CLMR's augmentation
    # chain 6.82 GB (TensorFlow, the stem recomputed in the backward).
    if keras.backend.backend() != "tensorflow":
        pytest.skip("calibrated on TensorFlow (its SampleCNN training path keeps fewer floats)")
    for augment, points in (("crop", ((48, 5.97e9),)), ("clmr", ((48, 6.82e9),))):
        model = pretraining.build_pretrainer("clmr", augment=augment, seed=0)
        for pairs, measured in points:
            estimate = pretraining.estimate_step(model, pairs, cores=2).peak_bytes
            assert abs(estimate - measured) <= 0.05 * measured, (augment, pairs, estimate)


def tiny_pemr_and_cpc():
    from keras_clmr.models import FCN, PEMR
    from keras_clmr.models.cpc import CPC, CPCEncoder

    fcn = FCN(
        channels=(4, 8, 8, 8),
        pools=((2, 2),) * 4,
        input_samples=992,
        n_fft=64,
        hop_length=32,
        n_mels=16,
    )
    pemr = PEMR(
        fcn,
        projection_dim=8,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        key_dim=8,
        ffn_dim=16,
        pred_hidden_dim=16,
        mask_ratio=0.25,
        seed=3,
    )
    pemr.build((None, 2, 992))
    encoder = CPCEncoder(
        strides=(4, 2),
        filter_sizes=(8, 4),
        paddings=(2, 1),
        latent_dim=16,
        context_dim=8,
        input_samples=512,
    )
    return pemr, CPC(encoder, prediction_steps=2, seed=0)


def test_estimate_for_pemr_and_cpc():
    pemr, cpc = tiny_pemr_and_cpc()
    for model, views, passes in ((pemr, 2, 3), (cpc, 1, 1)):
        assert pretraining.encoder_passes(model) == (passes, views)
        floats, _ = pretraining.layer_costs(model.encoder)
        assert floats > 0
        estimate = pretraining.estimate_step(model, 4, cores=1)
        assert estimate.views == 4 * views
        assert estimate.peak_bytes > pretraining.STEP_BASE_BYTES + 4 * passes * floats * 3


@pytest.mark.large  # traces PEMR's and CPC's train steps: ~2 min on the shared 2 cores
def test_pemr_and_cpc_train_steps_log_positive_cosine():
    pemr, cpc = tiny_pemr_and_cpc()
    rng = np.random.default_rng(4)
    for model, shape in ((pemr, (4, 2, 992)), (cpc, (4, 512))):
        model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
        logs = model.train_on_batch(rng.normal(size=shape).astype("float32"), return_dict=True)
        assert -1.0 <= logs["positive_cosine"] <= 1.0


def test_warning_when_the_estimate_exceeds_the_memory():
    model = tiny_clmr()
    estimate = pretraining.estimate_step(model, 4, cores=2)
    line, warning = pretraining.step_guidance(
        model, 4, cores=2, memory=lambda: (estimate.peak_bytes * 10, None)
    )
    assert "Estimated train step (8 views)" in line and warning is None
    line, warning = pretraining.step_guidance(model, 4, cores=2, memory=lambda: (0.5e9, 1e9))
    assert "exceeds the memory available (0.5 GB of 1.0 GB)" in warning
    assert "--batch_size=4" in warning and "smaller encoder" in warning
    # Unknown memory: no warning; an accelerator: a note instead of a warning.
    assert pretraining.step_guidance(model, 4, memory=lambda: (None, None))[1] is None
    line, warning = pretraining.step_guidance(model, 4, memory=lambda: (1.0, 1.0), accelerator=True)
    assert warning is None and "accelerator is visible" in line


def test_warning_suggests_a_batch_that_fits():
    model = pretraining.build_pretrainer("clmr", augment="crop", seed=0)
    per_pair = (
        pretraining.estimate_step(model, 2).peak_bytes
        - pretraining.estimate_step(model, 1).peak_bytes
    )
    available = pretraining.STEP_BASE_BYTES + 10.5 * per_pair
    _, warning = pretraining.step_guidance(model, 48, memory=lambda: (available, 2 * available))
    assert "--batch_size=10 would fit" in warning


def test_available_memory_reads_the_machine():
    available, total = pretraining.available_memory()
    if total is None:
        pytest.skip("no /proc/meminfo and no psutil here")
    assert 0 < available <= total


# ------------------------------------------------------------------ the batch cap


def test_cap_batch_size():
    messages = []
    warn = lambda *args: messages.append(args[0] % args[1:])  # noqa: E731
    assert pretraining.cap_batch_size(48, 100, "data", warn=warn) == 48
    assert pretraining.cap_batch_size(48, None, "data", warn=warn) == 48
    assert not messages
    assert pretraining.cap_batch_size(48, 7, "/data/set", warn=warn) == 7
    assert "/data/set holds 7 clips, fewer than --batch_size=48" in messages[0]
    assert "training with batches of 7" in messages[0]
    assert pretraining.cap_batch_size(48, 7, "d", replicas=2, warn=warn) == 6
    with pytest.raises(ValueError, match="holds 1 clips: fewer than the 2 replicas"):
        pretraining.cap_batch_size(4, 1, "d", replicas=2, warn=warn)


def call_pretrain(*args):
    from keras_clmr.commands import run

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as done:
        run("pretrain", ["keras-clmr pretrain", *args])
    return (0 if done.value.code is None else done.value.code), out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def small_prepared_set(tmp_path_factory):
    """A prepared set of 3 training clips, each long enough for one 59049-sample view."""
    from keras_clmr.data import datasets, prepare
    from keras_clmr.data.demo import write_demo_corpus

    root = tmp_path_factory.mktemp("small")
    write_demo_corpus(str(root / "audio"), n_clips=4, seconds=3.0)
    spec = datasets.csv_dataset(str(root / "audio"))
    prepare.prepare(
        spec, str(root / "prepared"), workers=1, progress=False, config={"source": "test"}
    )
    return root / "prepared"


@pytest.mark.large  # a whole (tiny) pretraining run: ~2 min on the shared 2 cores; the default
# tier checks the same logic in test_cap_batch_size and test_warning_when_the_estimate_exceeds..
def test_small_prepared_set_caps_the_batch_and_the_run_warns_of_memory(
    small_prepared_set, tmp_path, monkeypatch, caplog
):
    from keras_clmr.commands import pretrain
    from keras_clmr.data import pipeline

    count = pipeline.load_manifest(str(small_prepared_set))["splits"]["train"]["count"]
    assert 1 <= count < 4
    monkeypatch.setattr(pretrain, "memory_probe", lambda: (1e6, 2e6))
    with caplog.at_level(logging.WARNING):
        code, out, err = call_pretrain(
            *TINY,
            f"--data_dir={small_prepared_set}",
            f"--output_dir={tmp_path / 'run'}",
        )
    assert code == 0, err
    logged = caplog.text + err
    assert f"holds {count} clips, fewer than --batch_size=4" in logged
    assert f"training with batches of {count}" in logged
    assert f"batch {count}," in out and f"Estimated train step ({2 * count} views)" in out
    assert "exceeds the memory available (0.0 GB of 0.0 GB)" in logged
    found = scalars(tmp_path / "run" / "logs")
    for tag in ("epoch_views_per_second", "epoch_learning_rate", "epoch_positive_cosine"):
        assert tag in found, sorted(found)


# ------------------------------------------------------------------ parameter counts in cards


def test_cards_state_trainable_plus_non_trainable_parameters():
    from keras_clmr import cards

    encoder = SampleCNN(channels=TINY_CHANNELS)
    config = keras.saving.serialize_keras_object(encoder)
    trainable = sum(int(np.prod(w.shape)) for w in encoder.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in encoder.non_trainable_weights)
    assert frozen == 2 * sum(TINY_CHANNELS)  # BatchNorm moving mean and variance per channel
    assert cards.parameter_split(config) == (trainable, frozen)
    info = cards.describe_metadata(
        {"class_name": "SampleCNN", "parameter_count": encoder.count_params()}, config
    )
    text = cards.parameters_text(info)
    assert text == (
        f"{trainable + frozen:,} = {trainable:,} trainable + {frozen:,} non-trainable "
        "(BatchNorm moving statistics)"
    )
    assert f"| parameters | {text} |" in str(cards.render_card(info))
    # Without a buildable config: the total, saying what it counts.
    assert cards.parameters_text({"parameter_count": 1234}) == "1,234 (trainable and non-trainable)"


def test_registry_card_counts_match_the_registry():
    from keras_clmr import cards, presets

    info = cards.describe_registry("pemr-mtat", "embed")
    assert info["parameter_split"] == (370_562, 898)  # FCN: the original's 370,562 + BN stats
    assert info["parameter_count"] == presets.get_preset("pemr-mtat").params["embed"]
