"""The base classes answer what a model is: roles by isinstance, presets through the classes."""

import keras
import numpy as np
import pytest

from keras_clmr.models import (
    CLMR,
    FCN,
    PEMR,
    Backbone,
    MusicTagger,
    Pretrainer,
    SampleCNN,
    Task,
    encoder_of,
    is_pretrainer,
    is_tagger,
)

from conftest import tiny_sample_cnn


def test_roles_follow_the_base_classes():
    encoder = tiny_sample_cnn()
    clmr = CLMR(encoder, projection_dim=4, seed=0)
    tagger = MusicTagger(encoder, num_classes=3)
    assert isinstance(encoder, Backbone) and isinstance(FCN(), Backbone)
    assert isinstance(clmr, Pretrainer) and isinstance(PEMR(), Pretrainer)
    assert isinstance(tagger, Task)
    assert (is_pretrainer(clmr), is_tagger(clmr)) == (True, False)
    assert (is_pretrainer(tagger), is_tagger(tagger)) == (False, True)
    assert (is_pretrainer(encoder), is_tagger(encoder)) == (False, False)
    assert encoder_of(clmr) is encoder
    assert encoder_of(tagger) is encoder
    assert encoder_of(encoder) is encoder


def test_a_model_named_like_a_pretrainer_is_not_one():
    class CLMR(keras.Model):  # same class name, no base class
        encoder = None

    assert not is_pretrainer(CLMR())


def test_pretrainer_rejects_an_encoder_without_input_samples():
    with pytest.raises(ValueError, match="needs an encoder with `input_samples`"):
        CLMR(keras.layers.Dense(3))


def test_from_preset_and_save_to_preset_round_trip(tmp_path):
    encoder = tiny_sample_cnn()
    audio = np.random.default_rng(0).standard_normal((2, encoder.input_samples)).astype("float32")
    folder = encoder.save_to_preset(str(tmp_path / "tiny"))
    loaded = SampleCNN.from_preset(folder)
    assert isinstance(loaded, SampleCNN)
    np.testing.assert_allclose(
        loaded.predict_on_batch(audio), encoder.predict_on_batch(audio), rtol=0, atol=1e-6
    )
    with pytest.raises(TypeError, match="not a FCN"):
        FCN.from_preset(folder)

    tagger = MusicTagger(encoder, num_classes=3, tags=["a", "b", "c"])
    tagger.build((None, encoder.input_samples))
    tagger_folder = tagger.save_to_preset(str(tmp_path / "tagger"))
    loaded_tagger = MusicTagger.from_preset(tagger_folder)
    assert loaded_tagger.tags == ["a", "b", "c"]
    np.testing.assert_allclose(
        loaded_tagger.predict_on_batch(audio), tagger.predict_on_batch(audio), rtol=0, atol=1e-6
    )
