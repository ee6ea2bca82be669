"""The Reverb augmentation against libsox 14.4.2's ``reverb`` (torchaudio-augmentations' Reverb):
responses recorded from sox (tests/data/sox_reverb_*.npz, made by
tests/data/record_sox_reverb.py) and an independent float64 formulation of sox's reverb.c
(its combs and allpass stages as scipy IIR filters). Needs no sox; the maths run on every
backend (the recorded-grid test on the default one only: same maths, most time)."""

import math
import pathlib

import keras
import numpy as np
import pytest
from keras import ops
from scipy import signal

from keras_clmr.layers import Reverb

DATA = pathlib.Path(__file__).parent / "data"
SR = 22050
COMBS = (1116, 1188, 1277, 1356, 1422, 1491, 1557, 1617)
ALLPASSES = (225, 341, 441, 556)


def sox_reverb_wet(x, sr, reverberance, damping, room, wet_db=0.0, depth=100.0, pre_ms=0.0):
    """float64 libsox 14.4.2 reverb.c: the wet part of ``reverb R D S depth pre wet`` then
    ``channels 1`` (the stereo channels' mean), each filter as an IIR difference equation."""
    scale = room / 100 * 0.9 + 0.1
    a = -1 / math.log(1 - 0.3)
    b = 100 / (math.log(1 - 0.98) * a + 1)
    feedback = 1 - math.exp((reverberance - b) / (a * b))
    hf = damping / 100 * 0.3 + 0.2
    delay = int(pre_ms / 1000 * sr + 0.5)
    x = np.concatenate([np.zeros(delay), np.asarray(x, np.float64)])[: len(x)]
    rate = sr / 44100.0
    channels = []
    for channel in range(int(math.ceil(depth / 100)) + 1):
        offset, wet = channel * depth / 100, np.zeros(len(x))
        for length in COMBS:  # out = buf; store = out + (store - out) d; buf = in + store f
            n = int(scale * rate * (length + 12 * offset) + 0.5)
            offset = -offset
            num, den = np.zeros(n + 2), np.zeros(n + 1)
            num[n], num[n + 1] = 1.0, -hf
            den[0], den[1], den[n] = 1.0, -hf, -feedback * (1 - hf)
            wet += signal.lfilter(num, den, x)
        for length in ALLPASSES:  # out = buf - in; buf = in + 0.5 buf
            m = int(rate * (length + 12 * offset) + 0.5)
            offset = -offset
            num, den = np.zeros(m + 1), np.zeros(m + 1)
            num[0], num[m], den[0], den[m] = -1.0, 1.5, 1.0, -0.5
            wet = signal.lfilter(num, den, wet)
        channels.append(wet * 10 ** (wet_db / 20) * 0.015)
    return np.mean(channels, axis=0)


def t(values, dtype="int32"):
    return ops.convert_to_tensor(np.array(values, dtype))


def responses(layer, length, settings):
    """The layer's wet impulse responses [len(settings), length] as float64."""
    r, d, s = (t([row[i] for row in settings]) for i in range(3))
    return np.asarray(ops.convert_to_numpy(layer.impulse_response(length, r, d, s)), np.float64)


def test_reference_is_sox():
    """The float64 formulation equals the recorded sox responses (sox computes in float32)."""
    data = np.load(DATA / "sox_reverb_energy.npz")
    for (r, d, s, gain), head in zip(data["head_settings"], data["heads"]):
        impulse = np.zeros(len(head))
        impulse[0] = 1.0
        want = sox_reverb_wet(impulse, SR, r, d, s, gain)
        error = np.abs(head - want).max() / np.abs(want).max()
        print(f"sox {(r, d, s, gain)}: float64 reverb.c within {error:.1e} of the peak")
        assert error < 1e-5  # measured: 3.6e-6
        assert np.abs(head).max() > 1e-3


@pytest.mark.multibackend
@pytest.mark.parametrize(
    "settings, options",
    [
        ([(50, 50, 50), (99, 0, 99), (0, 99, 0), (90, 20, 3)], {}),
        ([(80, 20, 10), (30, 70, 60)], {"stereo_depth": 0.0, "wet_gain_db": -6.0}),
        ([(70, 30, 40)], {"stereo_depth": 50.0, "pre_delay_ms": 20.0, "wet_gain_db": 3.0}),
    ],
)
def test_impulse_response_equals_sox_reverb(settings, options):
    n = 20000
    got = responses(Reverb(SR, **options), n, settings)
    impulse = np.zeros(n)
    impulse[0] = 1.0
    for row, response in zip(settings, got):
        want = sox_reverb_wet(
            impulse,
            SR,
            *row,
            wet_db=options.get("wet_gain_db", 0.0),
            depth=options.get("stereo_depth", 100.0),
            pre_ms=options.get("pre_delay_ms", 0.0),
        )
        error = np.abs(response - want).max() / np.abs(want).max()
        print(f"reverb {row} {options}: response within {error:.1e} of the peak")
        assert error < 2e-5, row  # measured: <= 3.5e-6 (float32 FFTs)


@pytest.mark.multibackend
def test_transform_equals_sox_reverb_on_noise():
    rng = np.random.default_rng(3)
    n = 16000
    x = (0.25 * rng.standard_normal((3, n))).astype("float32")
    settings = [(99, 0, 99), (40, 60, 0), (75, 25, 50)]
    r, d, s = (t([row[i] for row in settings]) for i in range(3))
    got = np.asarray(ops.convert_to_numpy(Reverb(SR).transform(ops.convert_to_tensor(x), r, d, s)))
    for i, row in enumerate(settings):
        wet = sox_reverb_wet(x[i], SR, *row)
        want = np.clip(x[i] + wet, -1.0, 1.0)
        assert np.abs(wet).max() > 0.05  # a real effect
        error = np.abs(got[i] - want).max()
        print(f"reverb {row} on noise: max error {error:.1e}")
        assert error < 3e-4, (row, error)  # measured: 1.0e-4 at reverberance 99 (wrap-around)


@pytest.mark.multibackend
def test_comb_lengths_are_sox_for_every_room_size():
    rooms = np.arange(101)
    for sr in (16000, 22050, 44100, 48000):
        got = np.asarray(ops.convert_to_numpy(Reverb(sr).comb_lengths(t(rooms))))
        for channel, offset in enumerate((0, 1)):
            signs = (-1) ** np.arange(8)
            want = np.floor(
                (rooms[:, None] / 100 * 0.9 + 0.1)
                * (sr / 44100.0)
                * (np.array(COMBS) + 12 * offset * signs)[None, :]
                + 0.5
            )
            np.testing.assert_array_equal(got[:, channel], want)


# sox hands torchaudio 32-bit integer samples: 1 LSB is 9.3e-10 of the recorded (0.5) impulse,
# so energies below ~1e-11 over the ~26,000 samples after 300 ms are quantization (sox: 0).
SOX_QUANTIZATION_ENERGY = 1e-11


def test_late_energy_against_recorded_sox_responses():
    """Energy after 300 ms of the response against sox's on the recorded grid (reverberance,
    damping, room size 0/50/100, wet gain 0/-6 dB): issue 14 asks >= 90 % within 2x."""
    data = np.load(DATA / "sox_reverb_energy.npz")
    rate, bin_seconds = int(data["sample_rate"]), float(data["bin_seconds"])
    step = int(round(bin_seconds * rate))
    length, first = data["energy"].shape[1] * step, int(round(0.3 / bin_seconds))
    ours, theirs, total = [], [], []
    for gain in np.unique(data["settings"][:, 3]):
        rows = data["settings"][:, 3] == gain
        got = responses(Reverb(rate, wet_gain_db=float(gain)), length, data["settings"][rows])
        energy = np.add.reduceat(got**2, np.arange(0, length, step), axis=1)
        sox = data["energy"][rows].astype(np.float64)
        ours += list(energy[:, first:].sum(1))
        theirs += list(sox[:, first:].sum(1))
        total += list(energy.sum(1) / sox.sum(1))
    ours, theirs, total = np.array(ours), np.array(theirs), np.array(total)
    audible = theirs > SOX_QUANTIZATION_ENERGY
    ratio = ours[audible] / theirs[audible]
    within = np.where(
        audible,
        (ours > 0.5 * theirs) & (ours < 2.0 * theirs),
        ours < SOX_QUANTIZATION_ENERGY,
    ).mean()
    print(
        f"reverb: {within:.0%} of {len(ours)} settings within 2x of sox after 300 ms; ratios "
        f"{ratio.min():.4f}-{ratio.max():.4f} ({audible.sum()} above sox's quantization), whole "
        f"response {total.min():.5f}-{total.max():.5f}"
    )
    assert within >= 0.9  # issue 14's target; measured: 100 %
    loud = theirs > 1e-8  # far above the quantization: measured within 0.2 % (room size 0 too)
    assert np.abs(ours[loud] / theirs[loud] - 1).max() < 0.01
    assert np.abs(total - 1).max() < 0.005  # measured: 6e-4


@pytest.mark.multibackend
def test_wet_rms_on_music_against_recorded_sox():
    data = np.load(DATA / "sox_reverb_music.npz")
    music = data["excerpt"].astype("float32") / 32768.0
    settings = data["settings"]
    x = ops.convert_to_tensor(np.repeat(music[None, :], len(settings), axis=0))
    r, d, s = (t(settings[:, i]) for i in range(3))
    out = np.asarray(ops.convert_to_numpy(Reverb(int(data["sample_rate"])).transform(x, r, d, s)))
    assert np.abs(out).max() < 1.0  # no clipping: out - music is the wet part
    wet = np.sqrt(np.mean((out.astype(np.float64) - music) ** 2, axis=1)) / data["wet_rms"]
    total = np.sqrt(np.mean(out.astype(np.float64) ** 2, axis=1)) / data["output_rms"]
    print(
        f"reverb on music: wet RMS {wet.min():.4f}-{wet.max():.4f}x of sox, "
        f"output RMS {total.min():.4f}-{total.max():.4f}x"
    )
    assert ((wet > 0.7) & (wet < 1.3)).all()  # issue 14's bound
    assert np.abs(wet - 1).max() < 0.01 and np.abs(total - 1).max() < 0.01  # measured: 1e-4


@pytest.mark.multibackend
def test_new_options_serialize_and_bad_values_are_rejected():
    layer = Reverb(16000, stereo_depth=40.0, pre_delay_ms=12.0, wet_gain_db=-3.0, seed=4)
    clone = Reverb.from_config(layer.get_config())
    assert (clone.stereo_depth, clone.pre_delay_ms, clone.wet_gain_db) == (40.0, 12.0, -3.0)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, Reverb) and restored.sample_rate == 16000
    with pytest.raises(ValueError, match="stereo_depth"):
        Reverb(SR, stereo_depth=150)
    with pytest.raises(ValueError, match="pre_delay_ms"):
        Reverb(SR, pre_delay_ms=-1)
    with pytest.raises(ValueError, match="2\\*\\*22"):
        Reverb(SR).frequency_response(1 << 23, t([1]), t([1]), t([1]))
