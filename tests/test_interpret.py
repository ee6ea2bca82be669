"""keras_clmr.interpret: filter spectra, listening page (in headless Chromium), taggram, embedding map."""

import numpy as np
import pytest
from conftest import tiny_sample_cnn

from keras_clmr.interpret import filters as filters_lib

SAMPLE_RATE = 22050


def _set_stem(model, kernels, bias=None):
    """Set SampleCNN's first convolution to ``kernels`` [3, filters] (BatchNorm left at identity)."""
    conv = model.get_layer("block_0_conv") if hasattr(model, "get_layer") else None
    conv = next(layer for layer in model.stack if layer.name == "block_0_conv")
    filters = conv.kernel.shape[-1]
    assert kernels.shape == (3, filters)
    conv.kernel.assign(kernels[:, None, :].astype(np.float32))
    conv.bias.assign(np.zeros(filters, np.float32) if bias is None else bias.astype(np.float32))


def _tiled_spectrum(kernel, samples=729):
    """float64 reference: the maximiser of mean_t <w, x[3t:3t+3]> on a ball is x ~ tile(w)."""
    return np.abs(np.fft.rfft(np.tile(np.asarray(kernel, np.float64), samples // 3)))


@pytest.mark.multibackend
def test_layer1_peaks_at_the_frequencies_of_known_kernels():
    # The stem sees non-overlapping 3-sample frames, so a mean-activation maximiser is periodic
    # with period 3: it can only show 0 Hz and sr/3. Sinusoid kernels at those frequencies (any
    # phase and sign) must come back as peaks there; the order must sort them.
    model = tiny_sample_cnn()
    n = np.arange(3)
    chosen = np.array([SAMPLE_RATE / 3, 0.0, SAMPLE_RATE / 3, 0.0, SAMPLE_RATE / 3, 0.0, SAMPLE_RATE / 3, 0.0])
    phases = np.array([0.0, 0.0, 0.7, 0.0, 2.0, np.pi, -1.1, 0.0])
    scales = np.array([1.0, 0.5, 0.8, -0.7, 1.2, 0.3, 0.4, 1.0])
    kernels = np.stack([s * np.cos(2 * np.pi * f * n / SAMPLE_RATE + p) for f, p, s in zip(chosen, phases, scales)],
                       axis=1)
    _set_stem(model, kernels)
    result = filters_lib.filter_spectra(model, layers=(1,), steps=150, seed=3)
    entry = result[1]
    bin_width = SAMPLE_RATE / 729
    assert result.frequencies[1] == pytest.approx(bin_width)
    np.testing.assert_allclose(entry.peak_frequencies, chosen, atol=bin_width)
    assert np.all(np.diff(entry.peak_frequencies[entry.order]) >= 0)
    assert set(entry.order[:4]) == {1, 3, 5, 7}
    for j in range(kernels.shape[1]):
        reference = _tiled_spectrum(kernels[:, j])
        got = entry.spectra[j]
        np.testing.assert_allclose(got / got.max(), reference / reference.max(), atol=1e-3)


def test_hertz_axis_follows_the_model_sample_rate():
    model = tiny_sample_cnn(sample_rate=16000)
    _set_stem(model, np.stack([np.cos(2 * np.pi * np.arange(3) / 3)] * 8, axis=1))
    result = filters_lib.filter_spectra(model, layers=1, steps=60)
    np.testing.assert_allclose(result[1].peak_frequencies, 16000 / 3, atol=16000 / 729)


def test_deeper_layers_picture_and_determinism(tmp_path):
    model = tiny_sample_cnn()
    path = tmp_path / "spectra.png"
    first = filters_lib.filter_spectra(model, layers=(1, 4, 6), steps=20, seed=5, output=str(path))
    again = filters_lib.filter_spectra(model, layers=("block_0", "block_3", "block_5"), steps=20, seed=5)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and first.path == str(path)
    assert [e.layer for e in first.layers] == [1, 4, 6]
    assert [e.name for e in again.layers] == ["block_0", "block_3", "block_5"]
    for a, b in zip(first.layers, again.layers):
        assert a.spectra.shape == (8, 365)
        np.testing.assert_allclose(a.spectra, b.spectra, rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob(".*")), "no temporary files left behind"


def test_ascent_increases_each_filters_activation():
    model = tiny_sample_cnn()
    start = filters_lib.filter_spectra(model, layers=(4,), steps=0, seed=1)[4].activations
    end = filters_lib.filter_spectra(model, layers=(4,), steps=40, seed=1)[4].activations
    assert np.all(end > start)


def test_bad_layers_and_models_raise_clear_errors():
    import keras

    model = tiny_sample_cnn()
    with pytest.raises(filters_lib.FilterLayerError, match="no filter layer 12.*choose from layers 1 \\(block_0\\)"):
        filters_lib.filter_spectra(model, layers=(12,), steps=1)
    with pytest.raises(filters_lib.FilterLayerError, match="block_99"):
        filters_lib.filter_spectra(model, layers=("block_99",), steps=1)
    with pytest.raises(filters_lib.FilterLayerError, match="too short|no frames"):
        filters_lib.filter_spectra(model, layers=(11,), steps=1, input_samples=9)
    dense = keras.Sequential([keras.Input((16,)), keras.layers.Dense(4)])
    with pytest.raises(filters_lib.UnsupportedModelError, match="SampleCNN.*FCN"):
        filters_lib.filter_spectra(dense, steps=1)


def test_fcn_input_spectrum_method():
    from keras_clmr.models import FCN

    model = FCN(channels=(4, 4), pools=((2, 2), (2, 2)), input_samples=4096, n_mels=16, n_fft=64, hop_length=32)
    result = filters_lib.filter_spectra(model, layers=(1, 2), steps=10, input_samples=1024)
    assert [e.spectra.shape for e in result.layers] == [(4, 513), (4, 513)]
    assert all(np.all(np.isfinite(e.spectra)) for e in result.layers)
