"""CLMR's augmentation chain and the fused filter -> delay -> reverb pass."""

import math

import keras
import numpy as np
from keras import ops

from keras_clmr.layers.augmentations.base import (
    AudioAugmentation,
    _fft_size,
    _smooth_fft_size,
    _static_length,
)
from keras_clmr.layers.augmentations.delay_reverb import Delay, Reverb
from keras_clmr.layers.augmentations.filters import HighLowPass
from keras_clmr.layers.augmentations.pitch_shift import PitchShift
from keras_clmr.layers.augmentations.polarity_noise_gain import Gain, Noise, PolarityInversion
from keras_clmr.layers.augmentations.random_apply import AugmentationChain, RandomApply


@keras.saving.register_keras_serializable(package="keras_clmr")
class FilterDelayReverb(AudioAugmentation):
    """``RandomApply(filter, p_filter)``, ``RandomApply(delay, p_delay)`` and
    ``RandomApply(reverb, p_reverb)`` in one pass: the three are linear and time-invariant,
    so the per-example high/low-pass kernel, delay kernel and reverb response are applied
    together in ONE batched FFT convolution (the delay as its analytic spectrum, the reverb as
    the Reverb layer's transfer function on the same FFT grid, plus a short FFT that removes
    the filtered edge before the clip start).

    Same draws, maths and order as the separate layers (filter, delay, reverb), up to float32
    rounding and the reverb tail's wrap-around past the FFT length (attenuated by the Reverb's
    epsilon; ~1e-4 at most, measured in tests/test_augmentations.py; docs/fidelity.md).
    """

    def __init__(
        self, filter, delay, reverb, p_filter=0.8, p_delay=0.3, p_reverb=0.6, seed=None, **kwargs
    ):
        super().__init__(seed=seed, **kwargs)

        def layer(obj, cls):
            obj = keras.saving.deserialize_keras_object(obj) if isinstance(obj, dict) else obj
            if not isinstance(obj, cls):
                raise TypeError(
                    f"FilterDelayReverb needs a {cls.__name__}, got {type(obj).__name__}."
                )
            return obj

        self.filter = layer(filter, HighLowPass)
        self.delay = layer(delay, Delay)
        self.reverb = layer(reverb, Reverb)
        for name, p in (("p_filter", p_filter), ("p_delay", p_delay), ("p_reverb", p_reverb)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"FilterDelayReverb needs 0 <= {name} <= 1, got {p}.")
        self.p_filter, self.p_delay, self.p_reverb = (
            float(p_filter),
            float(p_delay),
            float(p_reverb),
        )

    def build(self, input_shape):
        for layer in (self.filter, self.delay, self.reverb):
            if not layer.built:
                layer.build(input_shape)
        self.built = True

    def draw(self, batch):
        coins = keras.random.uniform((batch, 3), seed=self.seed_generator)
        return {
            "filter_on": coins[:, 0] < self.p_filter,
            "delay_on": coins[:, 1] < self.p_delay,
            "reverb_on": coins[:, 2] < self.p_reverb,
            "filter": self.filter.draw(batch),
            "delay": self.delay.draw(batch),
            "reverb": self.reverb.draw(batch),
        }

    def augment(self, audio):
        dtype = audio.dtype
        x = ops.cast(audio, "float32")
        return ops.cast(self.transform(x, **self.draw(ops.shape(x)[0])), dtype)

    def transform(self, audio, filter_on, delay_on, reverb_on, filter, delay, reverb):
        length = _static_length(audio, "FilterDelayReverb")
        half = self.filter.max_half_size
        x = audio
        padded = ops.concatenate(
            [ops.repeat(x[:, :1], half, axis=1), x, ops.repeat(x[:, -1:], half, axis=1)], axis=1
        )
        total = length + 2 * half
        # Room for the delayed copy past the end, so that it does not wrap around.
        longest_delay = max([o for o in self.delay.offsets if o < length], default=0)
        fft_length = _smooth_fft_size(int(math.ceil(1.05 * (total + longest_delay))))
        log_window = math.log(1.0 / self.reverb.epsilon) / fft_length
        window = np.exp(-log_window * np.arange(total, dtype=np.float64))
        identity = np.zeros(2 * half + 1, np.float32)
        identity[half] = 1.0
        identity = ops.convert_to_tensor(identity)[None, :]
        low = self.filter.kernels(filter["cutoff_hz"])
        kernel = ops.where(ops.reshape(filter["highpass"], (-1, 1)), identity - low, low)
        kernel = ops.where(ops.reshape(filter_on, (-1, 1)), kernel, identity)
        kernel = kernel * ops.convert_to_tensor(window[: 2 * half + 1].astype("float32"))[None, :]
        padded = padded * ops.convert_to_tensor(window.astype("float32"))[None, :]
        # The original filters first; the delay and the reverb then see the filtered clip with
        # zeros before its start. The filter output before the start (positions < 2 * half of
        # the linear convolution: the filtered replicated edge) is computed with a short FFT and
        # removed before the delay and reverb act, so the order is the original's exactly.
        head_fft = _fft_size(4 * half + 1)
        head = ops.irfft(
            _complex_product(ops.rfft(padded[:, : 2 * half], head_fft), ops.rfft(kernel, head_fft)),
            head_fft,
        )[:, : 2 * half]
        filtered = _complex_difference(
            _complex_product(ops.rfft(padded, fft_length), ops.rfft(kernel, fft_length)),
            ops.rfft(head, fft_length),
        )
        # The reverb as the Reverb layer's transfer function on this FFT grid and window (the
        # dry impulse is 1): no impulse response and no extra FFTs. Its tail past fft_length
        # wraps around attenuated by the window (epsilon).
        wet = self.reverb.frequency_response(fft_length, log_window=log_window, **reverb)
        reverb_gate = ops.reshape(reverb_on, (-1, 1))
        response = (1.0 + ops.where(reverb_gate, wet[0], 0.0), ops.where(reverb_gate, wet[1], 0.0))
        spectrum = _complex_product(filtered, response)
        spectrum = _complex_product(
            spectrum, self._delay_spectrum(delay, delay_on, fft_length, log_window, length)
        )
        y = ops.irfft(spectrum, fft_length)[:, 2 * half : 2 * half + length]
        unwindow = np.exp(log_window * (np.arange(length, dtype=np.float64) + 2 * half)).astype(
            "float32"
        )
        y = y * ops.convert_to_tensor(unwindow)[None, :]
        return ops.where(ops.reshape(reverb_on, (-1, 1)), ops.clip(y, -1.0, 1.0), y)

    def _delay_spectrum(self, delay, delay_on, fft_length, log_window, length):
        """The windowed delay kernel's spectrum, (delta + volume * delta_d) / 2 per example (an
        offset >= the clip length delays nothing past its end, as the Delay layer)."""
        offsets = np.array(self.delay.offsets, np.float64)
        gains = 0.5 * self.delay.volume_factor * np.exp(-log_window * offsets) * (offsets < length)
        choice = ops.cast(delay["choice"], "int32")
        offset = ops.take(ops.convert_to_tensor(offsets.astype("float32")), choice)[:, None]
        gain = ops.take(ops.convert_to_tensor(gains.astype("float32")), choice)[:, None]
        gain = ops.where(ops.reshape(delay_on, (-1, 1)), gain, 0.0)
        half_gain = ops.where(ops.reshape(delay_on, (-1, 1)), 0.5, 1.0)
        frequencies = np.arange(fft_length // 2 + 1, dtype=np.float64)
        # Phase 2 pi f d / N reduced exactly in integers, so float32 keeps it accurate.
        phase = ops.cast(
            ops.mod(
                ops.cast(offset, "int32")
                * ops.convert_to_tensor(frequencies.astype("int32"))[None, :],
                fft_length,
            ),
            "float32",
        ) * (2.0 * math.pi / fft_length)
        return half_gain + gain * ops.cos(phase), -gain * ops.sin(phase)

    def get_config(self):
        config = super().get_config()
        config.update(
            filter=keras.saving.serialize_keras_object(self.filter),
            delay=keras.saving.serialize_keras_object(self.delay),
            reverb=keras.saving.serialize_keras_object(self.reverb),
            p_filter=self.p_filter,
            p_delay=self.p_delay,
            p_reverb=self.p_reverb,
        )
        return config


def _complex_product(a, b):
    return a[0] * b[0] - a[1] * b[1], a[0] * b[1] + a[1] * b[0]


def _complex_difference(a, b):
    return a[0] - b[0], a[1] - b[1]


CLMR_PROBABILITIES = {
    "polarity": 0.8,
    "noise": 0.01,
    "gain": 0.3,
    "filter": 0.8,
    "delay": 0.3,
    "pitch_shift": 0.6,
    "reverb": 0.6,
}


def clmr_augmentation(sample_rate=22050, seed=None, pitch_shift=True, fused=True):
    """CLMR's augmentation chain after the crop, as ONE serializable layer [B, n] -> [B, n].

    Probabilities of CLMR master (torchaudio-augmentations 0.2.4): polarity 0.8, noise 0.01,
    gain 0.3, high/low-pass 0.8, delay 0.3, pitch shift 0.6, reverb 0.6, each drawn per
    example. ``pitch_shift=False`` drops the pitch shift (PEMR's chain). With an integer
    ``seed`` every transform and every coin gets its own derived seed, so a run is
    reproducible; ``None`` seeds from Keras' global seed generator.

    ``fused=False`` keeps the original order exactly; ``fused=True`` (default, less FFT work)
    runs filter, delay and reverb in one ``FilterDelayReverb`` pass (same order, same result
    to ~1e-4) and the pitch shift after it (a deviation, see docs/fidelity.md);
    probabilities and draws are unchanged.
    """

    def sub_seed(i):
        return None if seed is None else int(seed) * 1009 + i

    p = CLMR_PROBABILITIES
    layers = [
        RandomApply(
            PolarityInversion(seed=sub_seed(0), name="polarity_inversion"),
            p["polarity"],
            seed=sub_seed(1),
            name="random_polarity_inversion",
        ),
        RandomApply(
            Noise(1e-4, 1e-2, seed=sub_seed(2), name="noise"),
            p["noise"],
            seed=sub_seed(3),
            name="random_noise",
        ),
        RandomApply(
            Gain(-20.0, -1.0, seed=sub_seed(4), name="gain"),
            p["gain"],
            seed=sub_seed(5),
            name="random_gain",
        ),
    ]
    high_low_pass = HighLowPass(sample_rate, seed=sub_seed(6), name="high_low_pass")
    delay = Delay(sample_rate, seed=sub_seed(8), name="delay")
    reverb = Reverb(sample_rate, seed=sub_seed(12), name="reverb")
    pitch = (
        RandomApply(
            PitchShift(sample_rate, seed=sub_seed(10), name="pitch_shift"),
            p["pitch_shift"],
            seed=sub_seed(11),
            name="random_pitch_shift",
        )
        if pitch_shift
        else None
    )
    if fused:
        layers.append(
            FilterDelayReverb(
                high_low_pass,
                delay,
                reverb,
                p["filter"],
                p["delay"],
                p["reverb"],
                seed=sub_seed(7),
                name="filter_delay_reverb",
            )
        )
        layers += [pitch] if pitch is not None else []
    else:
        layers += [
            RandomApply(high_low_pass, p["filter"], seed=sub_seed(7), name="random_high_low_pass"),
            RandomApply(delay, p["delay"], seed=sub_seed(9), name="random_delay"),
        ]
        layers += [pitch] if pitch is not None else []
        layers.append(RandomApply(reverb, p["reverb"], seed=sub_seed(13), name="random_reverb"))
    return AugmentationChain(
        layers, name="clmr_augmentation" if pitch_shift else "pemr_augmentation"
    )
