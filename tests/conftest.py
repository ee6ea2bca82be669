"""Shared test set-up: quiet TensorFlow, offline Hub, a seeded RNG per test, tiny models, and
session fixtures for what is expensive to build (musicnn converted once per test session)."""

import importlib.util
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {BACKEND}"


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
    keras.backend.clear_session()


def compiled_training_step(model, x, upstream):
    """Output, gradients (input, then every trainable weight) and all weights after one
    compiled TensorFlow forward/backward of ``model`` in training mode, loss sum(y * upstream)."""
    import tensorflow as tf

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        return y, tape.gradient(loss, [x] + [w.value for w in model.trainable_weights])

    y, grads = step(tf.constant(x))
    return y.numpy(), [g.numpy() for g in grads], [np.asarray(w) for w in model.weights]


def tiny_sample_cnn(**kwargs):
    """A SampleCNN with the full block structure but short input (3**5 samples) and few channels."""
    from keras_clmr.models import SampleCNN

    config = dict(strides=(3, 3, 3, 3, 2, 2, 2, 2, 2), channels=(8, 8, 8, 8, 8, 8, 8, 8, 8, 16, 16))
    config.update(kwargs)
    return SampleCNN(**config)


HAVE_MUSICNN_WHEEL = importlib.util.find_spec("musicnn") is not None


@pytest.fixture(scope="session")
def musicnn_mtt_converted():
    """``convert_musicnn("MTT_musicnn")`` (tagger, metadata), once per test session."""
    if not HAVE_MUSICNN_WHEEL:
        pytest.skip("the musicnn wheel is not installed (pip install --no-deps musicnn==0.1.0)")
    from keras_clmr.conversion.musicnn import convert_musicnn

    return convert_musicnn("MTT_musicnn")


@pytest.fixture(scope="session")
def _musicnn_session_cache(tmp_path_factory, musicnn_mtt_converted):
    """A keras_clmr cache holding the ``musicnn-mtt`` tag preset, built once per session from
    ``musicnn_mtt_converted`` (the preset builder's conversion is served from it)."""
    from keras_clmr.conversion import musicnn as musicnn_conversion

    original = musicnn_conversion.convert_musicnn

    def convert_once(name, *args, **kwargs):
        defaults = {"parity": True, "audio": None, "audio_label": None}
        if (
            name == "MTT_musicnn"
            and not args
            and all(k in defaults and defaults[k] == v for k, v in kwargs.items())
        ):
            served.append(name)
            return musicnn_mtt_converted
        return original(name, *args, **kwargs)

    served = []

    cache = tmp_path_factory.mktemp("keras_clmr_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_CLMR_CACHE", str(cache))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(musicnn_conversion, "convert_musicnn", convert_once)
        from keras_clmr import load_pretrained

        load_pretrained("musicnn-mtt", task="tag")
    if not served:
        warnings.warn(
            "the musicnn-mtt preset builder converted again instead of using the "
            "session's conversion: update conftest._musicnn_session_cache",
            stacklevel=1,
        )
    return cache


@pytest.fixture
def musicnn_cache(monkeypatch, _musicnn_session_cache):
    """``$KERAS_CLMR_CACHE`` pointed at the session's cache that holds ``musicnn-mtt`` (tag)."""
    monkeypatch.setenv("KERAS_CLMR_CACHE", str(_musicnn_session_cache))
    return _musicnn_session_cache
