"""MusicTagger: probabilities, freezing, serialization and CLMR's clip-level averaging."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_clmr.models.tagger import MusicTagger, map_chunks, non_overlapping_chunks

from conftest import tiny_sample_cnn


@keras.saving.register_keras_serializable(package="keras_clmr_tests")
class ChunkMean(keras.Model):
    """A backbone with known outputs: the mean of each 4-sample chunk, as a 1-d embedding."""

    input_samples = 4
    embedding_dim = 1

    def call(self, audio, training=None):
        return ops.mean(audio, axis=1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.multibackend
def test_probabilities_match_numpy_head():
    tagger = MusicTagger(tiny_sample_cnn(), 6, head="mlp", tags=[f"t{i}" for i in range(6)])
    x = np.random.default_rng(0).standard_normal((3, tagger.input_samples)).astype("float32")
    probs = ops.convert_to_numpy(tagger(x))
    features = ops.convert_to_numpy(tagger.backbone(x, training=False)).astype(np.float64)
    w1, b1 = [ops.convert_to_numpy(v) for v in tagger.head.get_layer("hidden").weights]
    w2, b2 = [ops.convert_to_numpy(v) for v in tagger.head.get_layer("logits").weights]
    expected = _sigmoid(np.maximum(features @ w1 + b1, 0) @ w2 + b2)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(
        ops.convert_to_numpy(tagger.logits(x)), np.log(expected / (1 - expected)), atol=1e-4
    )

    single = MusicTagger(tiny_sample_cnn(), 4, multi_label=False)
    p = ops.convert_to_numpy(single(x))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_freezing_controls_trainable_weights():
    frozen = MusicTagger(tiny_sample_cnn(), 5, head="linear")
    frozen.build((None, frozen.input_samples))
    assert len(frozen.trainable_weights) == 2  # the head's kernel and bias only
    trainable = MusicTagger(tiny_sample_cnn(), 5, head="mlp", freeze_backbone=False, dropout=0.5)
    trainable.build((None, trainable.input_samples))
    assert len(trainable.trainable_weights) == len(trainable.backbone.trainable_weights) + 4
    # A frozen tagger trained through its logits view changes the head only.
    x = np.random.default_rng(1).standard_normal((8, frozen.input_samples)).astype("float32")
    y = (np.random.default_rng(2).random((8, 5)) < 0.5).astype("float32")
    before = [ops.convert_to_numpy(v).copy() for v in frozen.backbone.weights]
    view = frozen.logits_model()
    view.compile(optimizer=keras.optimizers.Adam(1e-2), loss=frozen.loss_function())
    view.fit(x, y, epochs=2, batch_size=4, verbose=0)
    for b, v in zip(before, frozen.backbone.weights):
        np.testing.assert_array_equal(b, ops.convert_to_numpy(v))


@pytest.mark.multibackend
def test_round_trip_through_keras_file(tmp_path):
    tagger = MusicTagger(tiny_sample_cnn(), 3, head="mlp", tags=["a", "b", "c"], multi_label=False)
    x = np.random.default_rng(0).standard_normal((2, tagger.input_samples)).astype("float32")
    expected = ops.convert_to_numpy(tagger(x))
    path = os.path.join(tmp_path, "tagger.keras")
    tagger.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, MusicTagger)
    assert loaded.tags == ["a", "b", "c"] and not loaded.multi_label and loaded.num_classes == 3
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)


def test_chunking_drops_partial_last_chunk():
    clip = np.arange(11, dtype=np.float32)
    chunks = non_overlapping_chunks(clip, 4)
    np.testing.assert_array_equal(chunks, [[0, 1, 2, 3], [4, 5, 6, 7]])
    with pytest.raises(ValueError, match="shorter than one 4-sample chunk"):
        non_overlapping_chunks(np.zeros(3), 4)
    with pytest.raises(ValueError, match="mono"):
        non_overlapping_chunks(np.zeros((2, 8)), 4)


@pytest.mark.multibackend
def test_clip_prediction_is_mean_of_per_chunk_probabilities():
    tagger = MusicTagger(ChunkMean(), 2, head="linear")
    tagger.build((None, 4))
    dense = tagger.head.get_layer("logits")
    dense.set_weights([np.array([[1.0, -2.0]], np.float32), np.array([0.0, 0.5], np.float32)])
    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) for n in (4, 9, 17, 12, 7)]
    expected = []
    for clip in clips:
        m = (
            clip[: len(clip) // 4 * 4].reshape(-1, 4).astype(np.float64).mean(axis=1)
        )  # partial chunk dropped
        expected.append(np.stack([_sigmoid(m), _sigmoid(-2 * m + 0.5)], axis=1).mean(axis=0))
    # batch_size 3 makes batches straddle clips and leaves a padded last batch
    np.testing.assert_allclose(
        tagger.predict_clips(clips, batch_size=3), np.stack(expected), atol=1e-6
    )
    np.testing.assert_allclose(tagger.predict_clip(clips[2]), expected[2], atol=1e-6)
    # averaging probabilities, not logits (CLMR since 2021): they differ for a multi-chunk clip
    m = clips[2][:16].reshape(-1, 4).mean(axis=1)
    assert abs(_sigmoid(m.mean()) - expected[2][0]) > 1e-4


def test_map_chunks_batches_equal_one_by_one():
    rng = np.random.default_rng(3)
    clips = [rng.standard_normal(n).astype(np.float32) for n in (20, 5, 13, 40)]
    calls = []

    def fn(batch):
        calls.append(batch.shape)
        return batch.sum(axis=1, keepdims=True)

    out = map_chunks(fn, clips, 5, batch_size=4)
    assert all(shape == (4, 5) for shape in calls)  # one compiled shape, padded last batch
    for clip, result in zip(clips, out):
        np.testing.assert_allclose(
            result[:, 0], non_overlapping_chunks(clip, 5).sum(axis=1), rtol=1e-6
        )


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="head must be"):
        MusicTagger(tiny_sample_cnn(), 3, head="transformer")
    with pytest.raises(ValueError, match="tag names"):
        MusicTagger(tiny_sample_cnn(), 3, tags=["a"])
    with pytest.raises(ValueError, match="input_samples"):
        MusicTagger(keras.layers.Dense(3), 3)
