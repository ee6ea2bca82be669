import keras
import numpy as np
import pytest

from keras_clmr.layers import RandomCrop
from keras_clmr.models import CLMR

from conftest import tiny_sample_cnn


def toy_sources(n, length, seed=0):
    """Each source is a tone of its own frequency plus noise: two crops of one source share
    their pitch, so the pairing is learnable from either crop."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / 22050
    freqs = rng.uniform(100, 4000, n)
    x = np.sin(2 * np.pi * freqs[:, None] * t[None]) + 0.1 * rng.standard_normal((n, length))
    return x.astype("float32")


@pytest.mark.multibackend
def test_crop_is_uniform_per_example_and_reproducible():
    source = np.tile(np.arange(100, dtype="float32"), (400, 1))
    crop = RandomCrop(10, seed=3)
    out = keras.ops.convert_to_numpy(crop(source, training=True))
    starts = out[:, 0]
    assert out.shape == (400, 10)
    np.testing.assert_array_equal(out - starts[:, None], np.tile(np.arange(10), (400, 1)))
    assert starts.min() >= 0 and starts.max() <= 90
    assert len(np.unique(starts)) > 60  # per-example offsets, 91 possible
    again = keras.ops.convert_to_numpy(RandomCrop(10, seed=3)(source, training=True))
    np.testing.assert_array_equal(out, again)
    centre = keras.ops.convert_to_numpy(crop(source, training=False))
    np.testing.assert_array_equal(centre[:, 0], 45)


def test_segment_shorter_than_crop_is_a_clear_error():
    model = CLMR(tiny_sample_cnn(), projection_dim=8)
    with pytest.raises(ValueError, match="shorter than the 7776-sample crop"):
        model(np.zeros((2, 7000), "float32"))


@pytest.mark.multibackend
def test_views_are_independent_crops():
    model = CLMR(tiny_sample_cnn(), projection_dim=8, seed=1)
    source = np.tile(np.arange(3 * 7776, dtype="float32"), (64, 1))
    view_i, view_j = model.views(source, training=True)
    starts_i = keras.ops.convert_to_numpy(view_i)[:, 0]
    starts_j = keras.ops.convert_to_numpy(view_j)[:, 0]
    assert np.mean(starts_i == starts_j) < 0.1


@pytest.mark.large
@pytest.mark.multibackend
def test_fit_decreases_the_loss_on_a_learnable_toy():
    encoder = tiny_sample_cnn()
    model = CLMR(encoder, projection_dim=16, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False)
    x = toy_sources(16, 2 * encoder.input_samples)
    history = model.fit(x, batch_size=8, epochs=12, shuffle=True, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses


@pytest.mark.large
@pytest.mark.multibackend
def test_fit_under_jit_compile():
    if keras.backend.backend() == "torch":
        pytest.skip("jit_compile is an XLA option (TensorFlow and JAX).")
    encoder = tiny_sample_cnn()
    model = CLMR(encoder, projection_dim=8, seed=0)
    model.compile(optimizer="adam", jit_compile=True)
    history = model.fit(
        toy_sources(8, encoder.input_samples + 100), batch_size=4, epochs=1, verbose=0
    )
    assert np.isfinite(history.history["loss"][0])


def test_loss_equals_nt_xent_of_the_projections():
    from keras_clmr.losses import nt_xent

    model = CLMR(tiny_sample_cnn(), projection_dim=8, temperature=0.3, seed=0)
    z = model(toy_sources(6, 8000), training=False)
    loss = model.compute_loss(y_pred=z)
    want = nt_xent(z[:, 0], z[:, 1], temperature=0.3)
    assert float(loss) == pytest.approx(float(want), rel=1e-6)


@pytest.mark.multibackend
def test_round_trip_identical_outputs(tmp_path):
    model = CLMR(tiny_sample_cnn(), projection_dim=8, temperature=0.2, seed=5)
    x = toy_sources(3, 9000)
    before = keras.ops.convert_to_numpy(model(x, training=False))
    path = tmp_path / "clmr.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, CLMR)
    assert restored.temperature == 0.2 and restored.projection_dim == 8
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(x, training=False)), before)


def test_default_is_clmr_2_0():
    model = CLMR()
    assert model.encoder.input_samples == 59049
    assert model.projector.count_params() == 327_680  # 512*512 + 512*128, no bias
