"""The CLMR augmentation chain: exact maths against float64 numpy, meaning (pitch, filters,
reverb), per-example draws, seeds, serialization, jit and CLMR training on every backend."""

import json
import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_clmr.layers import (
    AugmentationChain,
    Delay,
    FilterDelayReverb,
    Gain,
    HighLowPass,
    Noise,
    PitchShift,
    PolarityInversion,
    RandomApply,
    RandomCrop,
    Reverb,
    clmr_augmentation,
)
from tests.conftest import BACKEND, tiny_sample_cnn

SR = 22050


def np_(x):
    return np.asarray(ops.convert_to_numpy(x))


def tone(freq, n, amplitude=0.5, sr=SR):
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype("float32")


def rms_db(x):
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-30)


def run_jit(layer, x):
    """Calls ``layer(x, training=True)`` compiled.

    XLA on TensorFlow, jax.jit on JAX, eager on torch.
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda a: layer(a, training=True), jit_compile=True)(x)
    if BACKEND == "jax":
        import jax

        if not layer.built:
            layer.build(x.shape)

        @jax.jit
        def step(non_trainable, a):
            return layer.stateless_call([], non_trainable, a, training=True)

        out, _ = step([v.value for v in layer.non_trainable_variables], x)
        return out
    return layer(x, training=True)


# ----------------------------------------------------------------------------- exact formulas


def test_polarity_and_gain_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, (4, 257)).astype("float32")
    np.testing.assert_array_equal(np_(PolarityInversion()(x)), -x)
    gains = np.array([-20.0, -6.0, -1.0, 12.0], "float32")
    want = np.clip(
        x.astype(np.float64) * 10.0 ** (gains.astype(np.float64)[:, None] / 20.0), -1.0, 1.0
    )
    got = np_(Gain().transform(ops.convert_to_tensor(x), ops.convert_to_tensor(gains)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.abs(got).max() <= 1.0 and (np.abs(got) == 1.0).any()  # the clamp is exercised
    drawn = np_(Gain(seed=1).draw(10_000)["gain_db"])
    assert drawn.min() >= -20.0 and drawn.max() <= -1.0 and abs(drawn.mean() + 10.5) < 0.2


def test_delay_matches_original_formula():
    rng = np.random.default_rng(1)
    n = 12000
    x = rng.uniform(-1, 1, (6, n)).astype("float32")
    layer = Delay(SR)
    assert layer.delays_ms == [200, 250, 300, 350, 400, 450]
    choice = np.arange(6, dtype="int32")
    got = np_(layer.transform(ops.convert_to_tensor(x), ops.convert_to_tensor(choice)))
    for b, ms in enumerate(layer.delays_ms):
        offset = int(ms * (SR / 1000))
        delayed = np.concatenate([np.zeros(offset), x[b, :-offset].astype(np.float64)]) * 0.5
        np.testing.assert_allclose(got[b], (x[b] + delayed) / 2, rtol=1e-6, atol=1e-7)


def julius_kernel(cutoff_hz, sr=SR, zeros=8):
    """julius.lowpass_filter's kernel, written out in float64."""
    cutoff = cutoff_hz / sr
    half = int(zeros / cutoff / 2)
    window = 0.5 - 0.5 * np.cos(
        2 * np.pi * np.arange(2 * half + 1) / (2 * half)
    )  # hann, periodic=False
    t = np.arange(-half, half + 1)
    arg = 2 * np.pi * cutoff * t
    sinc = np.where(t == 0, 1.0, np.sin(arg) / np.where(t == 0, 1.0, arg))
    kernel = 2 * cutoff * window * sinc
    return kernel / kernel.sum()


def test_fir_design_matches_julius():
    layer = HighLowPass(SR)
    assert layer.max_half_size == 441  # 883 taps at 200 Hz, as julius
    cutoffs = np.array([201.3, 555.5, 1199.0, 2210.7, 3999.0], "float32")
    kernels = np_(layer.kernels(ops.convert_to_tensor(cutoffs)))
    centre = layer.max_half_size
    for b, cutoff in enumerate(cutoffs):
        want = julius_kernel(float(cutoff))
        half = len(want) // 2
        np.testing.assert_allclose(kernels[b, centre - half : centre + half + 1], want, atol=2e-7)
        assert not kernels[b, : centre - half].any() and not kernels[b, centre + half + 1 :].any()


def test_filtering_matches_direct_convolution():
    rng = np.random.default_rng(2)
    n = 3000
    x = rng.uniform(-1, 1, (4, n)).astype("float32")
    cutoffs = np.array([250.0, 900.0, 2500.0, 3800.0], "float32")
    highpass = np.array([True, True, False, False])
    layer = HighLowPass(SR)
    got = np_(
        layer.transform(
            ops.convert_to_tensor(x),
            ops.convert_to_tensor(cutoffs),
            ops.convert_to_tensor(highpass),
        )
    )
    for b in range(4):
        kernel = julius_kernel(float(cutoffs[b]))
        half = len(kernel) // 2
        padded = np.pad(x[b].astype(np.float64), half, mode="edge")  # julius: replicate padding
        low = np.convolve(padded, kernel, mode="valid")
        want = x[b] - low if highpass[b] else low
        np.testing.assert_allclose(got[b], want, atol=2e-5)


def test_noise_level_matches_formula():
    rng = np.random.default_rng(3)
    n = 16384
    x = rng.uniform(-0.5, 0.5, (3, n)).astype("float32")
    unit = rng.standard_normal((3, n)).astype("float32")
    level = np.array([1e-4, 3e-3, 1e-2], "float32")
    layer = Noise()
    got = np_(
        layer.transform(
            ops.convert_to_tensor(x),
            ops.convert_to_tensor(level),
            noise=ops.convert_to_tensor(unit),
        )
    )
    std = x.astype(np.float64).std(axis=1, ddof=1)  # torch.std is unbiased
    np.testing.assert_allclose(got, x + (level * std)[:, None] * unit, rtol=1e-5, atol=1e-8)
    # The layer's own noise: zero-mean, unit-std per example, scaled into [min_snr, max_snr] * std.
    drawn = np_(layer(x)) - x
    ratio = drawn.std(axis=1) / std
    assert ((ratio >= 1e-4 * 0.95) & (ratio <= 1e-2 * 1.05)).all(), ratio
    table = np_(
        layer.unit_noise(
            2,
            n,
            ops.convert_to_tensor(np.array([0, 700], "int32")),
            ops.convert_to_tensor(np.array([1.0, -1.0], "float32")),
        )
    )
    assert abs(table.std() - 1) < 0.02 and abs(table.mean()) < 0.02
    assert abs(np.corrcoef(table[0], table[1])[0, 1]) < 0.03  # different offsets: different noise


# ----------------------------------------------------------------------------- meaning


@pytest.mark.parametrize(
    "freq,cents",
    [(440.0, 700), (440.0, -700), (261.6, 300), (1000.0, -500), (110.0, 100), (2000.0, -200)],
)
def test_pitch_shift_moves_a_tone(freq, cents):
    n = 16384
    x = tone(freq, n)[None]
    y = np_(
        PitchShift(SR).transform(
            ops.convert_to_tensor(x), ops.convert_to_tensor(np.array([cents], "int32"))
        )
    )
    assert y.shape == x.shape and np.isfinite(y).all()
    spectrum = np.abs(np.fft.rfft(y[0] * np.hanning(n), 8 * n))
    peak = np.argmax(spectrum) * SR / (8 * n)
    want = freq * 2 ** (cents / 1200)
    assert abs(peak - want) / want < 0.01, (peak, want)
    # Duration and level preserved: the middle keeps the tone's RMS within 3 dB.
    assert abs(rms_db(y[0, 2000:-2000]) - rms_db(x[0])) < 3.0


def test_pitch_shift_draws_integer_cents_and_stays_finite():
    layer = PitchShift(SR, seed=3)
    cents = np_(layer.draw(20_000)["cents"])
    assert cents.min() == -700 and cents.max() == 700 and abs(cents.mean()) < 15
    silence = np.zeros((2, 5000), "float32")
    loud = np.random.default_rng(4).uniform(-1, 1, (2, 5000)).astype("float32")
    for x in (silence, loud):
        y = np_(layer(x))
        assert y.shape == x.shape and np.isfinite(y).all()
    assert not np_(layer(silence)).any()


@pytest.mark.parametrize(
    "highpass,cutoff,stop,passed", [(False, 3000.0, 6000.0, 1000.0), (True, 1000.0, 200.0, 5000.0)]
)
def test_filters_attenuate_and_pass(highpass, cutoff, stop, passed):
    n = 8192
    x = np.stack([tone(stop, n), tone(passed, n)])
    layer = HighLowPass(SR)
    y = np_(
        layer.transform(
            ops.convert_to_tensor(x),
            ops.convert_to_tensor(np.full(2, cutoff, "float32")),
            ops.convert_to_tensor(np.full(2, highpass)),
        )
    )
    middle = slice(1000, -1000)
    assert rms_db(x[0, middle]) - rms_db(y[0, middle]) >= 20.0
    assert abs(rms_db(x[1, middle]) - rms_db(y[1, middle])) <= 1.0


def reverb_impulse(reverberance, damping=50, room=50, n=SR):
    x = np.zeros((1, n), "float32")
    x[0, 0] = 0.5
    layer = Reverb(SR)
    params = {
        k: ops.convert_to_tensor(np.array([v], "int32"))
        for k, v in (("reverberance", reverberance), ("damping", damping), ("room_size", room))
    }
    return np_(layer.transform(ops.convert_to_tensor(x), **params))[0], layer, params


def test_reverb_lengthens_decay_and_grows_with_reverberance():
    tails = []
    for reverberance in (0, 40, 90):
        y, _, _ = reverb_impulse(reverberance)
        assert y.shape == (SR,) and np.isfinite(y).all()
        assert y[0] == pytest.approx(0.5, abs=1e-3)  # the dry path
        tails.append(np.sum(np.square(y[int(0.03 * SR) :], dtype=np.float64)))  # energy after 30 ms
    assert tails[0] > 1e-6  # the input is silent there: the reverb made a tail
    assert tails[0] < tails[1] < tails[2]
    # Decay time: late (300 ms - 1 s) vs early (50 - 300 ms) energy grows with reverberance.
    ratios = []
    for reverberance in (10, 90):
        y, _, _ = reverb_impulse(reverberance)
        early = np.sum(np.square(y[int(0.05 * SR) : int(0.3 * SR)], dtype=np.float64))
        late = np.sum(np.square(y[int(0.3 * SR) :], dtype=np.float64))
        ratios.append(late / early)
    assert ratios[1] > 10 * ratios[0]

    # Damping darkens the tail; a bigger room starts it later.
    def high_share(y):
        spectrum = np.abs(np.fft.rfft(y[int(0.2 * SR) :])) ** 2
        return spectrum[len(spectrum) // 2 :].sum() / spectrum.sum()

    assert high_share(reverb_impulse(60, damping=90)[0]) < high_share(
        reverb_impulse(60, damping=0)[0]
    )

    def onset(y):
        tail = np.abs(y[1:])
        return np.argmax(tail > 1e-3 * tail.max()) + 1

    onset_small, onset_big = (
        onset(reverb_impulse(60, room=0)[0]),
        onset(reverb_impulse(60, room=99)[0]),
    )
    assert onset_big > 5 * onset_small


# libsox 14.4.2 ``reverb R D S`` + ``channels 1`` on a 0.5 impulse (59049 samples at 22050 Hz),
# measured through torchaudio 2.8 sox_effects (WavAugment's path): first tail sample above
# 1e-3 of the tail's peak, tail energy, energy after 300 ms.
SOX_REVERB = {
    (99, 0, 99): (553, 0.0359, 0.01236),
    (50, 50, 50): (307, 0.01275, 5.24e-5),
    (90, 90, 20): (156, 0.01549, 6.39e-4),
    (0, 0, 0): (56, 0.00872, 0.0),
}


@pytest.mark.parametrize("params", sorted(SOX_REVERB))
def test_reverb_matches_sox_energy_and_decay(params):
    onset, energy, late = SOX_REVERB[params]
    y, _, _ = reverb_impulse(*params, n=59049)
    tail = y[1:]
    assert abs((np.argmax(np.abs(tail) > 1e-3 * np.abs(tail).max()) + 1) - onset) <= 2
    got = np.sum(np.square(tail, dtype=np.float64))
    assert 1 / 1.3 < got / energy < 1.3
    got_late = np.sum(np.square(y[int(0.3 * SR) :], dtype=np.float64))
    if late > 0:
        assert 0.5 < got_late / late < 2.0
    else:
        assert got_late < 1e-9


def test_reverb_fft_convolution_equals_direct_convolution():
    rng = np.random.default_rng(5)
    n = 6000
    x = (0.3 * rng.standard_normal((1, n))).astype("float32")
    layer = Reverb(SR)
    params = {
        "reverberance": np.array([95], "int32"),
        "damping": np.array([10], "int32"),
        "room_size": np.array([80], "int32"),
    }
    params = {k: ops.convert_to_tensor(v) for k, v in params.items()}
    got = np_(layer.transform(ops.convert_to_tensor(x), **params))[0]
    response = np_(layer.impulse_response(n, **params))[0].astype(np.float64)
    want = np.clip(x[0] + np.convolve(x[0].astype(np.float64), response)[:n], -1, 1)
    assert np.abs(want - x[0]).max() > 0.05  # a real effect
    np.testing.assert_allclose(got, want, atol=2e-4)


# ----------------------------------------------------------------------------- random draws


@pytest.mark.parametrize("p", [0.01, 0.3, 0.6, 0.8])
def test_random_apply_rates(p):
    rows = 200_000
    layer = RandomApply(PolarityInversion(), p, seed=11)
    applied = np_(layer(np.ones((rows, 2), "float32")))[:, 0] < 0
    sigma = math.sqrt(p * (1 - p) / rows)
    assert abs(applied.mean() - p) <= max(0.02 * p, 5 * sigma)
    # Independent per example: neighbours are both applied with probability p ** 2.
    both = (applied[:-1] & applied[1:]).mean()
    assert abs(both - p * p) <= max(0.02 * p * p, 5 * math.sqrt(p * p / rows))
    again = np_(layer(np.ones((rows, 2), "float32")))[:, 0] < 0
    assert (again != applied).any()  # every call draws anew


def test_each_example_draws_its_own_parameters():
    x = np.repeat(tone(440.0, 8000)[None], 6, axis=0)
    for layer in (Gain(), HighLowPass(SR), Delay(SR), PitchShift(SR), Reverb(SR), Noise()):
        y = np_(layer(x))
        assert y.shape == x.shape and np.isfinite(y).all()
        assert len({row.tobytes() for row in y}) > 1, type(layer).__name__


def test_seeds_make_runs_reproducible():
    x = np.random.default_rng(6).uniform(-0.5, 0.5, (4, 9000)).astype("float32")
    first, second = np_(clmr_augmentation(SR, seed=7)(x)), np_(clmr_augmentation(SR, seed=7)(x))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, np_(clmr_augmentation(SR, seed=8)(x)))
    chain = clmr_augmentation(SR, seed=7)
    assert not np.array_equal(np_(chain(x)), np_(chain(x)))  # two views differ
    assert np.array_equal(np_(chain(x, training=False)), x)


def test_chain_structure_and_pemr_variant():
    def summary(chain):
        out = []
        for step in chain.chain:
            if isinstance(step, FilterDelayReverb):
                out += [
                    ("HighLowPass", step.p_filter),
                    ("Delay", step.p_delay),
                    ("Reverb", step.p_reverb),
                ]
            else:
                out.append((type(step.layer).__name__, step.p))
        return out

    head = [("PolarityInversion", 0.8), ("Noise", 0.01), ("Gain", 0.3)]
    assert summary(clmr_augmentation(SR, seed=0, fused=False)) == head + [
        ("HighLowPass", 0.8),
        ("Delay", 0.3),
        ("PitchShift", 0.6),
        ("Reverb", 0.6),
    ]
    assert summary(clmr_augmentation(SR, seed=0)) == head + [
        ("HighLowPass", 0.8),
        ("Delay", 0.3),
        ("Reverb", 0.6),
        ("PitchShift", 0.6),
    ]
    for fused in (True, False):
        pemr = summary(clmr_augmentation(SR, seed=0, pitch_shift=False, fused=fused))
        assert "PitchShift" not in [name for name, _ in pemr] and len(pemr) == 6


@pytest.mark.large
def test_fused_filter_delay_reverb_equals_the_separate_layers():
    """Same draws through the fused pass and through filter -> delay -> reverb on their own, in
    the original order, with hard (non-faded) edges and all combinations of the three."""
    rng = np.random.default_rng(9)
    n, batch = 12000, 8
    x = (0.3 * rng.standard_normal((batch, n))).astype("float32") + 0.2  # offset: hard edges
    filt, delay, reverb = HighLowPass(SR), Delay(SR), Reverb(SR)
    fused = FilterDelayReverb(filt, delay, reverb)

    def t(values, dtype):
        return ops.convert_to_tensor(np.array(values, dtype))

    fp = {
        "cutoff_hz": t([300, 1100, 2500, 3900, 700, 250, 3000, 1000], "float32"),
        "highpass": t([1, 1, 0, 0, 1, 0, 1, 0], bool),
    }
    dp = {"choice": t([0, 2, 5, 3, 1, 4, 0, 2], "int32")}
    rp = {
        "reverberance": t([99, 50, 10, 80, 30, 60, 90, 5], "int32"),
        "damping": t([0, 50, 99, 20, 60, 10, 40, 70], "int32"),
        "room_size": t([99, 50, 0, 70, 10, 30, 80, 20], "int32"),
    }
    filter_on = [1, 1, 0, 0, 0, 1, 1, 0]
    delay_on = [1, 0, 1, 1, 0, 1, 1, 0]
    reverb_on = [1, 0, 1, 0, 0, 0, 1, 1]
    want = x
    for on, layer, params in ((filter_on, filt, fp), (delay_on, delay, dp)):
        want = np.where(
            np.array(on, bool)[:, None],
            np_(layer.transform(ops.convert_to_tensor(want), **params)),
            want,
        )
    # The reverb of the original order as an exact float64 linear convolution with the layer's
    # response (the Reverb layer's own windowed float32 FFT is accurate to ~1e-4 only).
    response = np_(reverb.impulse_response(n, **rp)).astype(np.float64)
    response[:, 0] += 1.0  # the dry impulse
    reverbed = np.stack(
        [np.convolve(want[i].astype(np.float64), response[i])[:n] for i in range(batch)]
    )
    want = np.where(np.array(reverb_on, bool)[:, None], np.clip(reverbed, -1.0, 1.0), want)
    got = np_(
        fused.transform(
            ops.convert_to_tensor(x),
            t(filter_on, bool),
            t(delay_on, bool),
            t(reverb_on, bool),
            fp,
            dp,
            rp,
        )
    )
    assert (
        np.abs(want - x).max(axis=1)[[0, 1, 2, 3, 5, 6, 7]] > 0.01
    ).all()  # example 4 draws none
    error = np.abs(got - want)
    print(f"fused vs separate: max error {error.max():.1e}")
    # measured: 6.2e-5 (reverberance 99: the reverb's tail past the FFT length wraps around,
    # attenuated by the window's epsilon = 1e-3; the other examples <= 2.4e-5)
    assert error.max() < 1.5e-4, error.max()


def test_bad_input_is_rejected_clearly():
    with pytest.raises(ValueError, match=r"mono audio \[batch, samples\]"):
        PitchShift(SR)(np.zeros((2, 100, 1), "float32"))
    with pytest.raises(ValueError, match="lowpass_freq_low"):
        HighLowPass(SR, lowpass_freq_low=12000.0, lowpass_freq_high=13000.0)
    with pytest.raises(ValueError, match="0 <= p <= 1"):
        RandomApply(Gain(), 1.5)
    with pytest.raises(TypeError, match="Keras layer"):
        RandomApply(lambda x: x, 0.5)


def test_layers_round_trip_through_config():
    chain = clmr_augmentation(16000, seed=3)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(chain))
    assert isinstance(clone, AugmentationChain)
    assert clone.get_config() == chain.get_config()
    assert clone.chain[3].filter.sample_rate == 16000


# ---------------------------------------------------------------------- compiled, every backend


@pytest.mark.large
@pytest.mark.multibackend
def test_chain_compiles_and_runs():
    x = ops.convert_to_tensor(
        np.random.default_rng(7).uniform(-0.5, 0.5, (3, 7776)).astype("float32")
    )
    for chain, run in (
        (clmr_augmentation(SR, seed=1), run_jit),
        (clmr_augmentation(SR, seed=1, pitch_shift=False, fused=False), lambda layer, a: layer(a)),
    ):
        y = np_(run(chain, x))
        assert y.shape == (3, 7776) and np.isfinite(y).all() and np.abs(y).max() <= 1.0
        assert not np.allclose(y, np_(x))


@pytest.mark.large
@pytest.mark.multibackend
def test_clmr_with_augmentation_trains_and_round_trips(tmp_path):
    from keras_clmr.models import CLMR

    encoder = tiny_sample_cnn()
    model = CLMR(encoder, projection_dim=8, augmentation=clmr_augmentation(SR, seed=5), seed=5)
    sources = np.random.default_rng(8).uniform(-0.5, 0.5, (8, 9000)).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=BACKEND != "torch")
    history = model.fit(sources, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()

    path = str(tmp_path / "clmr_aug.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.augmentation, AugmentationChain)
    assert json.loads(json.dumps(loaded.augmentation.get_config())) == json.loads(
        json.dumps(model.augmentation.get_config())
    )
    np.testing.assert_allclose(
        np_(loaded(sources[:2], training=False)), np_(model(sources[:2], training=False)), atol=1e-5
    )
    # The chain's seeds travel in the config: the loaded chain replays a fresh chain's stream.
    view = ops.convert_to_tensor(sources[:, :7776])
    np.testing.assert_allclose(
        np_(loaded.augmentation(view, training=True)),
        np_(clmr_augmentation(SR, seed=5)(view, training=True)),
        atol=1e-6,
    )


def test_random_crop_api_unchanged():
    crop = RandomCrop(100, seed=1)
    x = np.arange(2 * 300, dtype="float32").reshape(2, 300)
    y = np_(crop(x))
    assert y.shape == (2, 100) and (np.diff(y, axis=1) == 1).all()
