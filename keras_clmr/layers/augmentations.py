"""Batched, in-graph audio augmentations (keras.ops only).

Every layer works on a batch of mono waveforms [B, T], draws its random parameters per
example from a ``keras.random.SeedGenerator`` (so a seeded run is reproducible and the
layers run under ``jit_compile`` on TensorFlow and JAX, and on PyTorch), and never loops
over examples in Python.
"""

import math

import keras
import numpy as np
from keras import ops


class AudioAugmentation(keras.layers.Layer):
    """Base class: a seeded, per-example random transform of [B, T] audio.

    Subclasses implement ``augment(audio)``. The transform runs when the layer is called
    with ``training=True`` or, outside a training context, whenever it is called
    directly (``training=None``); ``training=False`` makes it the identity.
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False

    def augment(self, audio):
        raise NotImplementedError

    def call(self, audio, training=None):
        if training is False:
            return audio
        return self.augment(audio)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class RandomCrop(AudioAugmentation):
    """``n_samples`` consecutive samples at a uniform random offset, drawn per example.

    Unlike the other augmentations, the crop also runs at inference (``training=False``)
    when the input is longer than ``n_samples``: it then takes the centre, so that a
    pretrainer can be evaluated on source segments deterministically.
    """

    def __init__(self, n_samples, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.n_samples = int(n_samples)
        if self.n_samples < 1:
            raise ValueError(f"RandomCrop needs n_samples >= 1, got {n_samples}.")

    def _check(self, shape):
        if len(shape) != 2:
            raise ValueError(f"RandomCrop expects mono audio [batch, samples], got shape {tuple(shape)}.")
        if shape[1] is not None and shape[1] < self.n_samples:
            raise ValueError(
                f"Source segments of {shape[1]} samples are shorter than the {self.n_samples}-sample crop: "
                f"feed segments of at least {self.n_samples} samples (pad short clips or drop them).")

    def call(self, audio, training=None):
        self._check(audio.shape)
        length = ops.shape(audio)[1]
        if training is False:
            start = (length - self.n_samples) // 2
            return ops.slice(audio, [0, start], [ops.shape(audio)[0], self.n_samples])
        return self.augment(audio)

    def augment(self, audio):
        self._check(audio.shape)
        batch, length = ops.shape(audio)[0], ops.shape(audio)[1]
        max_offset = length - self.n_samples + 1
        offsets = keras.random.randint((batch,), 0, max_offset, seed=self.seed_generator)
        index = offsets[:, None] + ops.arange(self.n_samples, dtype=offsets.dtype)[None, :]
        return ops.take_along_axis(audio, index, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n_samples)

    def get_config(self):
        config = super().get_config()
        config.update(n_samples=self.n_samples)
        return config


# ---------------------------------------------------------------------------------------------
# The CLMR chain (torchaudio-augmentations 0.2.4 as used by CLMR master), batched and in-graph.
# ---------------------------------------------------------------------------------------------


def _fft_size(minimum):
    """The smallest power of two >= minimum (fastest FFT size on every backend's CPU FFT)."""
    return 1 << max(int(minimum) - 1, 0).bit_length()


def _static_length(audio, name):
    if len(audio.shape) != 2:
        raise ValueError(f"{name} expects mono audio [batch, samples], got shape {tuple(audio.shape)}.")
    length = audio.shape[1]
    if length is None:
        raise ValueError(f"{name} needs a static number of samples (crop to a fixed length first).")
    return int(length)


def _fft_convolve(signal, kernel, fft_length):
    """Circular convolution of two real [B, *] batches via the FFT (zero-padded to fft_length)."""
    sr, si = ops.rfft(signal, fft_length)
    kr, ki = ops.rfft(kernel, fft_length)
    return ops.irfft((sr * kr - si * ki, sr * ki + si * kr), fft_length)


class _ParametricAugmentation(AudioAugmentation):
    """An augmentation split into ``draw(batch)`` (random parameters, one per example) and a
    deterministic ``transform(audio, **params)``, so tests can call the maths with fixed values."""

    def draw(self, batch):
        raise NotImplementedError

    def transform(self, audio, **params):
        raise NotImplementedError

    def augment(self, audio):
        dtype = audio.dtype
        x = ops.cast(audio, "float32")
        params = self.draw(ops.shape(x)[0])
        return ops.cast(self.transform(x, **params), dtype)


@keras.saving.register_keras_serializable(package="keras_clmr")
class PolarityInversion(_ParametricAugmentation):
    """``-x`` (no parameters)."""

    def draw(self, batch):
        return {}

    def transform(self, audio):
        return -audio


@keras.saving.register_keras_serializable(package="keras_clmr")
class Gain(_ParametricAugmentation):
    """Gain by ``U(min_gain, max_gain)`` dB per example, then clamp to [-1, 1] (torchaudio ``Vol``)."""

    def __init__(self, min_gain=-20.0, max_gain=-1.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if min_gain > max_gain:
            raise ValueError(f"Gain needs min_gain <= max_gain, got {min_gain} > {max_gain}.")
        self.min_gain = float(min_gain)
        self.max_gain = float(max_gain)

    def draw(self, batch):
        return {"gain_db": keras.random.uniform((batch,), self.min_gain, self.max_gain, seed=self.seed_generator)}

    def transform(self, audio, gain_db):
        scale = ops.power(10.0, ops.cast(gain_db, "float32") / 20.0)
        return ops.clip(audio * scale[:, None], -1.0, 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(min_gain=self.min_gain, max_gain=self.max_gain)
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class Noise(_ParametricAugmentation):
    """Additive Gaussian noise with std ``U(min_snr, max_snr) * std(x)`` per example.

    ``std(x)`` is the unbiased (Bessel-corrected) std of the example, as ``torch.std``.
    Deviation: the original draws fresh ``np.random.normal`` samples. Drawing B x T
    Gaussians in-graph is slow on CPU (XLA's counter-based RNG: ~0.4 s for 96 x 59049), so
    the unit Gaussian comes from a fixed table (seeded numpy, normalised to mean 0, std 1)
    read at a random block-aligned offset (2048 choices) with a random sign, per example.
    Within an example the noise is white Gaussian; two examples may share shifted
    stretches of the table. At CLMR's p=0.01 and <= 1% of the signal's std this does not
    matter.
    """

    _BLOCK = 64
    _OFFSETS = 1024

    def __init__(self, min_snr=1e-4, max_snr=1e-2, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not 0 <= min_snr <= max_snr:
            raise ValueError(f"Noise needs 0 <= min_snr <= max_snr, got {min_snr}, {max_snr}.")
        self.min_snr = float(min_snr)
        self.max_snr = float(max_snr)
        self._tables = {}

    def _table(self, blocks):
        if blocks not in self._tables:
            rng = np.random.default_rng(20211122)
            table = rng.standard_normal((blocks + self._OFFSETS) * self._BLOCK)
            table = (table - table.mean()) / table.std()
            self._tables[blocks] = table.reshape(-1, self._BLOCK).astype("float32")
        return self._tables[blocks]

    def draw(self, batch):
        u = keras.random.uniform((batch, 2), seed=self.seed_generator)
        offset = keras.random.randint((batch,), 0, self._OFFSETS, seed=self.seed_generator)
        return {"level": self.min_snr + (self.max_snr - self.min_snr) * u[:, 0],
                "unit_noise": {"offset": offset, "sign": ops.where(u[:, 1] < 0.5, -1.0, 1.0)}}

    def unit_noise(self, batch, length, offset, sign):
        blocks = -(-length // self._BLOCK)
        table = ops.convert_to_tensor(self._table(blocks))
        index = ops.cast(offset, "int32")[:, None] + ops.arange(blocks, dtype="int32")[None, :]
        rows = ops.take(table, ops.reshape(index, (-1,)), axis=0)
        noise = ops.reshape(rows, (batch, blocks * self._BLOCK))[:, :length]
        return noise * ops.cast(sign, "float32")[:, None]

    def transform(self, audio, level, unit_noise=None, noise=None):
        """``noise``: a [B, T] unit-variance noise to use instead of the table (for tests)."""
        length = _static_length(audio, "Noise")
        batch = ops.shape(audio)[0]
        if noise is None:
            noise = self.unit_noise(batch, length, **unit_noise)
        mean = ops.mean(audio, axis=1, keepdims=True)
        std = ops.sqrt(ops.sum(ops.square(audio - mean), axis=1) / max(length - 1, 1))
        return audio + (ops.cast(level, "float32") * std)[:, None] * noise

    def get_config(self):
        config = super().get_config()
        config.update(min_snr=self.min_snr, max_snr=self.max_snr)
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class HighLowPass(_ParametricAugmentation):
    """A coin flip per example between a low-pass (cutoff U(2200, 4000) Hz) and a high-pass
    (cutoff U(200, 1200) Hz, ``x - lowpass(x)``), as torchaudio-augmentations 0.2.4.

    The filter is julius' windowed sinc: Hann window, ``zeros`` zero crossings, half size
    ``int(zeros / (cutoff / sr) / 2)`` (883 taps at 200 Hz), normalised to unit sum, with
    replicate padding. Each example gets its own kernel; all are applied in one batched FFT
    convolution (exact linear convolution, no wrap-around). The original flips the coin with
    ``random.randint(0, 1)`` (0: high-pass) and draws float cutoffs, as here.
    """

    def __init__(self, sample_rate=22050, lowpass_freq_low=2200.0, lowpass_freq_high=4000.0,
                 highpass_freq_low=200.0, highpass_freq_high=1200.0, zeros=8, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.sample_rate = int(sample_rate)
        self.lowpass_freq_low = float(lowpass_freq_low)
        self.lowpass_freq_high = float(lowpass_freq_high)
        self.highpass_freq_low = float(highpass_freq_low)
        self.highpass_freq_high = float(highpass_freq_high)
        self.zeros = float(zeros)
        nyquist = self.sample_rate / 2
        for low, high, kind in ((self.lowpass_freq_low, self.lowpass_freq_high, "lowpass"),
                                (self.highpass_freq_low, self.highpass_freq_high, "highpass")):
            if not 0 < low <= high < nyquist:
                raise ValueError(f"HighLowPass needs 0 < {kind}_freq_low <= {kind}_freq_high < sample_rate / 2 "
                                 f"= {nyquist}, got {low}, {high}.")
        self.max_half_size = int(self.zeros / (min(self.lowpass_freq_low, self.highpass_freq_low)
                                               / self.sample_rate) / 2)

    def draw(self, batch):
        u = keras.random.uniform((batch, 3), seed=self.seed_generator)
        highpass = u[:, 0] < 0.5
        hp = self.highpass_freq_low + (self.highpass_freq_high - self.highpass_freq_low) * u[:, 1]
        lp = self.lowpass_freq_low + (self.lowpass_freq_high - self.lowpass_freq_low) * u[:, 2]
        return {"cutoff_hz": ops.where(highpass, hp, lp), "highpass": highpass}

    def kernels(self, cutoff_hz):
        """julius' low-pass kernels [B, 2 * max_half_size + 1], zero outside each half size."""
        cutoff = ops.cast(cutoff_hz, "float32")[:, None] / self.sample_rate
        half = ops.floor(self.zeros / cutoff / 2.0)
        t = ops.arange(-self.max_half_size, self.max_half_size + 1, dtype="float32")[None, :]
        window = ops.where(ops.abs(t) <= half, 0.5 + 0.5 * ops.cos(math.pi * t / half), 0.0)
        arg = 2.0 * math.pi * cutoff * t
        sinc = ops.where(t == 0, 1.0, ops.sin(arg) / ops.where(t == 0, 1.0, arg))
        kernel = 2.0 * cutoff * window * sinc
        return kernel / ops.sum(kernel, axis=1, keepdims=True)

    def lowpass(self, audio, cutoff_hz):
        length = _static_length(audio, "HighLowPass")
        half = self.max_half_size
        # Replicate padding by the largest half size equals julius' padding by each example's own
        # half size: the kernel is zero beyond it.
        padded = ops.concatenate([ops.repeat(audio[:, :1], half, axis=1), audio,
                                  ops.repeat(audio[:, -1:], half, axis=1)], axis=1)
        full = _fft_convolve(padded, self.kernels(cutoff_hz), _fft_size(length + 2 * half))
        return full[:, 2 * half:2 * half + length]

    def transform(self, audio, cutoff_hz, highpass):
        low = self.lowpass(audio, cutoff_hz)
        return ops.where(ops.reshape(highpass, (-1, 1)), audio - low, low)

    def get_config(self):
        config = super().get_config()
        config.update(sample_rate=self.sample_rate, lowpass_freq_low=self.lowpass_freq_low,
                      lowpass_freq_high=self.lowpass_freq_high, highpass_freq_low=self.highpass_freq_low,
                      highpass_freq_high=self.highpass_freq_high, zeros=self.zeros)
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class Delay(_ParametricAugmentation):
    """``y = (x + volume_factor * delayed(x)) / 2`` with a delay drawn per example from
    ``range(min_delay, max_delay, delay_interval)`` ms ({200, 250, ..., 450}), offset
    ``int(ms * sr / 1000)`` samples, zero-padded at the front (as the original)."""

    def __init__(self, sample_rate=22050, volume_factor=0.5, min_delay=200, max_delay=500, delay_interval=50,
                 seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.sample_rate = int(sample_rate)
        self.volume_factor = float(volume_factor)
        self.min_delay = int(min_delay)
        self.max_delay = int(max_delay)
        self.delay_interval = int(delay_interval)
        self.delays_ms = [int(ms) for ms in np.arange(self.min_delay, self.max_delay, self.delay_interval)]
        if not self.delays_ms or self.delays_ms[0] <= 0:
            raise ValueError(f"Delay needs 0 < min_delay < max_delay and delay_interval > 0, got "
                             f"{min_delay}, {max_delay}, {delay_interval}.")
        self.offsets = [int(ms * (self.sample_rate / 1000)) for ms in self.delays_ms]

    def draw(self, batch):
        return {"choice": keras.random.randint((batch,), 0, len(self.offsets), seed=self.seed_generator)}

    def transform(self, audio, choice):
        length = _static_length(audio, "Delay")
        choice = ops.reshape(ops.cast(choice, "int32"), (-1, 1))
        delayed = ops.zeros_like(audio)
        # A handful of static shifts selected per example: cheaper under XLA than a gather.
        for i, offset in enumerate(self.offsets):
            if offset >= length:
                continue
            shifted = ops.pad(audio[:, :length - offset], [[0, 0], [offset, 0]])
            delayed = ops.where(choice == i, shifted, delayed)
        return (audio + self.volume_factor * delayed) / 2.0

    def get_config(self):
        config = super().get_config()
        config.update(sample_rate=self.sample_rate, volume_factor=self.volume_factor, min_delay=self.min_delay,
                      max_delay=self.max_delay, delay_interval=self.delay_interval)
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class PitchShift(_ParametricAugmentation):
    """Pitch shift by a uniform integer number of cents in [100 * pitch_shift_min,
    100 * pitch_shift_max] per example, duration preserved.

    Method (deviation: the original runs libsox ``pitch``, i.e. a WSOLA time stretch plus
    ``rate`` resampling, per example on the CPU): a batched WSOLA-style granular shifter.
    Output grains of ``2 * hop`` samples (``grain_seconds``, 93 ms by default; sox's WSOLA
    segment is 82 ms), Hann-windowed at 50 % overlap (the windows sum to 1), each reads the
    input around its own centre at ``ratio = 2 ** (cents / 1200)`` times the speed with
    linear interpolation, so every grain is resampled by ``ratio`` and stays in place
    (length and timing kept). As in WSOLA, each grain's read position may move by up to
    ``search_seconds`` (12 ms) to the offset where the input best continues the previous
    grain: cross-correlations of all grains in one batched FFT on an 8x decimated signal,
    refined to a fraction of a sample, then a short sequential pass over the grains (only
    per-example scalars, in a compiled loop). Remaining differences to sox: linear interpolation without an
    anti-aliasing filter (upward shifts fold content above ``sr / (2 * ratio)``), 50 %
    grain overlap instead of sox's 12 ms crossfade. Samples read outside the input are zero
    (sox's output is likewise trimmed/zero-padded to the input length). The output is
    clipped to [-1, 1] as sox's integer samples are; never NaN/Inf for finite input.
    """

    _DECIMATION = 8

    def __init__(self, sample_rate=22050, pitch_shift_min=-7.0, pitch_shift_max=7.0, grain_seconds=0.093,
                 search_seconds=0.012, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.sample_rate = int(sample_rate)
        self.pitch_shift_min = float(pitch_shift_min)
        self.pitch_shift_max = float(pitch_shift_max)
        self.grain_seconds = float(grain_seconds)
        self.search_seconds = float(search_seconds)
        self.cents_min = int(self.pitch_shift_min * 100)
        self.cents_max = int(self.pitch_shift_max * 100)
        if self.cents_min > self.cents_max:
            raise ValueError(f"PitchShift needs pitch_shift_min <= pitch_shift_max, got {pitch_shift_min}, "
                             f"{pitch_shift_max}.")
        if self.grain_seconds <= 0 or self.search_seconds < 0:
            raise ValueError(f"PitchShift needs grain_seconds > 0 and search_seconds >= 0, got {grain_seconds}, "
                             f"{search_seconds}.")
        dec = self._DECIMATION
        self.hop = max(int(round(self.sample_rate * self.grain_seconds / 2 / dec)), 1) * dec
        self.search = min(float(self.search_seconds * self.sample_rate), self.hop / 2)

    def draw(self, batch):
        return {"cents": keras.random.randint((batch,), self.cents_min, self.cents_max + 1, seed=self.seed_generator)}

    @staticmethod
    def _read(audio, position, length):
        """Linear interpolation of [B, T] audio at fractional [B, T] positions (zero outside)."""
        valid = (position >= 0.0) & (position <= length - 1.0)
        position = ops.clip(position, 0.0, length - 1.0)
        index = ops.minimum(ops.cast(ops.floor(position), "int32"), max(length - 2, 0))
        frac = position - ops.cast(index, "float32")
        left = ops.take_along_axis(audio, index, axis=1)
        right = ops.take_along_axis(audio, ops.minimum(index + 1, length - 1), axis=1)
        return ops.where(valid, left + frac * (right - left), 0.0)

    def grain_offsets(self, audio, ratio, grains):
        """WSOLA offsets [B, grains] (samples) of each grain's read position."""
        length = audio.shape[1]
        dec, hop = self._DECIMATION, self.hop
        block = hop // dec
        if self.search <= 0 or grains < 2:
            return ops.zeros((ops.shape(audio)[0], grains), "float32")
        padded = ops.pad(audio, [[0, 0], [0, grains * hop - length]])
        coarse = ops.mean(ops.reshape(padded, (-1, grains * block, dec)), axis=2)
        heads = ops.reshape(coarse, (-1, grains, block))              # input [j hop, (j + 1) hop)
        blocks = ops.reshape(ops.pad(coarse, [[0, 0], [block, 2 * block]]), (-1, grains + 3, block))
        around = ops.concatenate([blocks[:, i:i + grains] for i in range(3)], axis=2)  # [(j-1) hop, (j+2) hop)
        size = 4 * block
        hr, hi = ops.rfft(heads, size)
        ar, ai = ops.rfft(around, size)
        # corr[k] = sum_s head[s] around[s + k]: lag (k - block) * dec samples, k in [0, 2 block].
        corr = ops.irfft((hr * ar + hi * ai, hr * ai - hi * ar), size)[:, :, :2 * block + 1]
        lags = dec * ops.arange(-block, block + 1, dtype="float32")[None, :]
        base = hop * (1.0 - ratio)                                     # [B, 1]
        scale = ops.mean(ops.abs(corr), axis=(1, 2))[:, None] + 1e-20
        search = self.search
        columns = ops.arange(grains, dtype="int32")[None, :]

        def step(j, state):
            # Sequential in the grains (each offset depends on the previous one), batched over B;
            # a compiled loop keeps the graph small.
            previous, offsets = state
            c = ops.take(corr, j - 1, axis=1)
            candidate = lags - base + previous                          # grain j's offset for each lag
            score = ops.where(ops.abs(candidate) <= search, c - 1e-3 * scale * ops.abs(candidate) / hop, -1e30)
            k = ops.argmax(score, axis=1)[:, None]
            centre = ops.take_along_axis(c, k, axis=1)
            left = ops.take_along_axis(c, ops.maximum(k - 1, 0), axis=1)
            right = ops.take_along_axis(c, ops.minimum(k + 1, 2 * block), axis=1)
            curve = left - 2.0 * centre + right
            shift = ops.where(curve < 0, 0.5 * (left - right) / ops.where(curve < 0, curve, -1.0), 0.0)
            chosen = ops.take_along_axis(candidate, k, axis=1) + dec * ops.clip(shift, -0.5, 0.5)
            chosen = ops.clip(chosen, -search - dec, search + dec)
            return chosen, ops.where(columns == j, chosen, offsets)

        start = (ops.zeros_like(base), ops.zeros_like(base) * ops.cast(columns, "float32"))
        return ops.fori_loop(1, grains, step, start)[1]

    def transform(self, audio, cents):
        length = _static_length(audio, "PitchShift")
        hop = self.hop
        ratio = ops.power(2.0, ops.cast(cents, "float32") / 1200.0)[:, None]
        grains = -(-length // hop) + 1
        offsets = self.grain_offsets(audio, ratio, grains)
        per_sample = ops.repeat(offsets, hop, axis=1)                 # offset of grain floor(t / hop)
        offset_a = per_sample[:, :length]
        offset_b = per_sample[:, hop:hop + length]
        t = np.arange(length, dtype=np.float64)
        centre = (t // hop) * hop                                      # t is in this grain's second half
        fade_out = ops.convert_to_tensor((np.cos(np.pi * (t - centre) / hop / 2) ** 2).astype("float32"))[None, :]
        centre_a = ops.convert_to_tensor(centre.astype("float32"))[None, :]
        rel_a = ops.convert_to_tensor((t - centre).astype("float32"))[None, :]
        pos_a = centre_a + offset_a + ratio * rel_a
        pos_b = centre_a + hop + offset_b + ratio * (rel_a - hop)
        out = fade_out * self._read(audio, pos_a, length) + (1.0 - fade_out) * self._read(audio, pos_b, length)
        return ops.clip(out, -1.0, 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(sample_rate=self.sample_rate, pitch_shift_min=self.pitch_shift_min,
                      pitch_shift_max=self.pitch_shift_max, grain_seconds=self.grain_seconds,
                      search_seconds=self.search_seconds)
        return config


def _exp_ramp(rate, length, block=256):
    """exp(rate * t) for t in [0, length) and per-example rates [B, 1], from B * (length / block
    + block) exps instead of B * length (exps are slow on XLA's CPU backend)."""
    blocks = -(-length // block)
    coarse = ops.exp(rate * (block * ops.arange(blocks, dtype="float32"))[None, :])
    fine = ops.exp(rate * ops.arange(block, dtype="float32")[None, :])
    ramp = coarse[:, :, None] * fine[:, None, :]
    return ops.reshape(ramp, (-1, blocks * block))[:, :length]


# sox reverb.c (Freeverb): comb lengths at 44.1 kHz and the wet gain of its filter array.
_SOX_COMB_LENGTHS = (1116, 1188, 1277, 1356, 1422, 1491, 1557, 1617)
_SOX_WET_SCALE = 0.015
# sox's "allpass" stages (out = buf - in, buf = in + 0.5 buf) are not allpass: each multiplies
# the mean energy by 7/3; the two decorrelated stereo channels averaged to mono halve it. This
# matches sox's tail energy within ~25% (libsox 14.4.2 impulse responses, see the tests).
_REVERB_ENERGY_SCALE = (7.0 / 3.0) ** 4 / 2.0
_REVERB_BAND_EDGES_HZ = (250.0, 700.0, 1600.0, 3500.0, 7000.0)


@keras.saving.register_keras_serializable(package="keras_clmr")
class Reverb(_ParametricAugmentation):
    """Reverb with reverberance, damping and room size drawn per example as integers in
    [min, max) (the original's ``torch.randint(0, 100)``), output length preserved.

    Deviation: the original runs libsox ``reverb`` (Freeverb: 8 damped combs + 4 "allpass"
    stages, stereo, then mixed to mono), sample by sample. Here each example is convolved (one
    batched FFT) with a synthetic impulse response parameterised like sox's: feedback
    ``f = 1 - exp((reverberance - b) / (a b))`` (0.3 .. 0.98), loop damping
    ``d = 0.2 + 0.3 * damping / 100``, room scale ``0.1 + 0.9 * room_size / 100`` scaling the
    comb loop length (mean 1378 samples at 44.1 kHz). The response is the dry impulse plus a
    noise tail from the first comb delay on (as sox), in 6 frequency bands; band k decays per
    loop by ``f |H(w_k)|`` with sox's one-pole loop filter ``H = (1 - d) / (1 - d z^-1)`` and
    carries the comb array's energy there, ``8 * 0.015**2 / (1 - f**2 |H|**2)`` times sox's
    allpass/channel-mix gain. Checked against libsox 14.4.2 impulse responses: same onset,
    total tail energy within ~25 %, late/early energy ratio within 2x (sox builds its tail up
    over the first tens of ms, ours starts at full density). The tail noise is a fixed seeded
    sequence, so like Freeverb the response is a deterministic function of the parameters.
    The convolution uses an exponential window (decay ``epsilon`` over the FFT length) so that
    a transform only >= 1.05x the clip length gives the linear convolution of the wet part to
    ~1e-4 relative error. Output clipped to [-1, 1]
    as sox's integer samples are.
    """

    def __init__(self, sample_rate=22050, reverberance_min=0, reverberance_max=100, dumping_factor_min=0,
                 dumping_factor_max=100, room_size_min=0, room_size_max=100, wet_gain_db=0.0, epsilon=1e-3,
                 seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.sample_rate = int(sample_rate)
        self.reverberance_min, self.reverberance_max = int(reverberance_min), int(reverberance_max)
        self.dumping_factor_min, self.dumping_factor_max = int(dumping_factor_min), int(dumping_factor_max)
        self.room_size_min, self.room_size_max = int(room_size_min), int(room_size_max)
        for name, low, high in (("reverberance", self.reverberance_min, self.reverberance_max),
                                ("dumping_factor", self.dumping_factor_min, self.dumping_factor_max),
                                ("room_size", self.room_size_min, self.room_size_max)):
            if not 0 <= low < high <= 100:
                raise ValueError(f"Reverb needs 0 <= {name}_min < {name}_max <= 100, got {low}, {high}.")
        self.wet_gain_db = float(wet_gain_db)
        self.epsilon = float(epsilon)
        if not 0 < self.epsilon < 1:
            raise ValueError(f"Reverb needs 0 < epsilon < 1, got {epsilon}.")
        self._noise = {}  # length -> (bands, centres, shares)

    def draw(self, batch):
        def randint(low, high):
            return keras.random.randint((batch,), low, high, seed=self.seed_generator)

        return {"reverberance": randint(self.reverberance_min, self.reverberance_max),
                "damping": randint(self.dumping_factor_min, self.dumping_factor_max),
                "room_size": randint(self.room_size_min, self.room_size_max)}

    def _tail_bands(self, length):
        """A fixed seeded white noise split into frequency bands [K, length] (their sum is the
        noise), the bands' centre frequencies (rad/sample) and shares of the spectrum."""
        if length not in self._noise:
            noise = np.random.default_rng(44100).standard_normal(length)
            spectrum = np.fft.rfft((noise - noise.mean()) / noise.std())
            freqs = np.fft.rfftfreq(length, 1.0 / self.sample_rate)
            edges = [0.0, *[e for e in _REVERB_BAND_EDGES_HZ if e < self.sample_rate / 2], np.inf]
            bands, centres, shares = [], [], []
            for low, high in zip(edges[:-1], edges[1:]):
                mask = (freqs >= low) & (freqs < high)
                bands.append(np.fft.irfft(spectrum * mask, length))
                top = min(high, self.sample_rate / 2)
                centres.append(2 * np.pi * (top / 2 if low == 0 else math.sqrt(low * top)) / self.sample_rate)
                shares.append(mask.mean())
            self._noise[length] = (np.stack(bands).astype("float32"), np.array(centres, "float32"),
                                   np.array(shares, "float32"))
        return self._noise[length]

    def impulse_response(self, length, reverberance, damping, room_size, log_window=0.0):
        """The wet part [B, length] of the responses (the dry impulse is added separately),
        times ``exp(-log_window * t)``."""
        reverberance = ops.cast(reverberance, "float32")[:, None]
        damping = ops.cast(damping, "float32")[:, None]
        room_size = ops.cast(room_size, "float32")[:, None]
        a = -1.0 / math.log(1.0 - 0.3)
        b = 100.0 / (math.log(1.0 - 0.98) * a + 1.0)
        feedback = 1.0 - ops.exp((reverberance - b) / (a * b))
        hf_damping = damping / 100.0 * 0.3 + 0.2
        scale = (room_size / 100.0 * 0.9 + 0.1) * (self.sample_rate / 44100.0)
        loop = scale * float(np.mean(_SOX_COMB_LENGTHS))
        onset = ops.floor(scale * _SOX_COMB_LENGTHS[0])
        bands, centres, _ = self._tail_bands(length)
        # Per band k: loop gain f |H(w_k)| of sox's one-pole loop filter H = (1 - d) / (1 - d z^-1),
        # a per-sample decay rate, and the comb array's energy there, sum_m (f |H|)^(2m) per comb.
        loop_gain_sq = ops.square(feedback) * ops.square(1.0 - hf_damping) / (
            1.0 - 2.0 * hf_damping * ops.cos(centres)[None, :] + ops.square(hf_damping))   # [B, K]
        rates = 0.5 * ops.log(loop_gain_sq) / loop
        wet = _SOX_WET_SCALE * 10.0 ** (self.wet_gain_db / 20.0)
        energy = _REVERB_ENERGY_SCALE * wet ** 2 * len(_SOX_COMB_LENGTHS) / (1.0 - loop_gain_sq)
        amplitude = ops.sqrt(energy * (1.0 - ops.exp(2.0 * rates))) * ops.exp(-rates * onset)
        tail = 0.0
        for k in range(bands.shape[0]):
            # exp(rate * (t - onset)) as an outer product of two short exps (see _exp_ramp).
            envelope = _exp_ramp(rates[:, k:k + 1] - log_window, length) * amplitude[:, k:k + 1]
            tail = tail + envelope * ops.convert_to_tensor(bands[k])[None, :]
        t = ops.arange(length, dtype="float32")[None, :]
        return ops.where(t >= onset, tail, 0.0)

    def transform(self, audio, reverberance, damping, room_size):
        length = _static_length(audio, "Reverb")
        fft_length = _fft_size(int(math.ceil(1.05 * length)))
        log_window = math.log(1.0 / self.epsilon) / fft_length
        t = np.arange(length, dtype=np.float64)
        window = ops.convert_to_tensor(np.exp(-log_window * t).astype("float32"))[None, :]
        unwindow = ops.convert_to_tensor(np.exp(log_window * t).astype("float32"))[None, :]
        response = self.impulse_response(length, reverberance, damping, room_size, log_window)
        wet = _fft_convolve(audio * window, response, fft_length)[:, :length] * unwindow
        return ops.clip(audio + wet, -1.0, 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(sample_rate=self.sample_rate, reverberance_min=self.reverberance_min,
                      reverberance_max=self.reverberance_max, dumping_factor_min=self.dumping_factor_min,
                      dumping_factor_max=self.dumping_factor_max, room_size_min=self.room_size_min,
                      room_size_max=self.room_size_max, wet_gain_db=self.wet_gain_db, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class RandomApply(AudioAugmentation):
    """Applies ``layer`` to each example independently with probability ``p`` (``u < p``).

    The wrapped transform is computed for the whole batch and selected per example, so the
    cost does not depend on ``p`` (static shapes, no Python branching)."""

    def __init__(self, layer, p=0.5, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(f"RandomApply wraps a Keras layer, got {type(layer).__name__}.")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"RandomApply needs 0 <= p <= 1, got {p}.")
        self.layer = layer
        self.p = float(p)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def augment(self, audio):
        applied = keras.random.uniform((ops.shape(audio)[0], 1), seed=self.seed_generator) < self.p
        return ops.where(applied, self.layer(audio, training=True), audio)

    def get_config(self):
        config = super().get_config()
        config.update(layer=keras.saving.serialize_keras_object(self.layer), p=self.p)
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class AugmentationChain(AudioAugmentation):
    """Applies ``layers`` in order (each with the same ``training`` flag)."""

    def __init__(self, layers, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.chain = [keras.saving.deserialize_keras_object(layer) if isinstance(layer, dict) else layer
                      for layer in layers]

    def build(self, input_shape):
        for layer in self.chain:
            if not layer.built:
                layer.build(input_shape)
        self.built = True

    def call(self, audio, training=None):
        if training is False:
            return audio
        for layer in self.chain:
            audio = layer(audio, training=training)
        return audio

    def augment(self, audio):
        return self.call(audio)

    def get_config(self):
        config = super().get_config()
        config.update(layers=[keras.saving.serialize_keras_object(layer) for layer in self.chain])
        return config


@keras.saving.register_keras_serializable(package="keras_clmr")
class FilterDelayReverb(AudioAugmentation):
    """``RandomApply(filter, p_filter)``, ``RandomApply(delay, p_delay)`` and
    ``RandomApply(reverb, p_reverb)`` in one pass: the three are linear and time-invariant,
    so the delay runs first in the time domain (static shifts) and the per-example high/low-pass
    kernel and reverb response are applied together in ONE batched FFT convolution (4 FFTs
    instead of 6 for the two layers on their own).

    Same draws and maths as the separate layers (julius kernel with replicate padding,
    delay, synthetic-IR reverb, clip after reverb), up to: the order filter -> delay becomes
    delay -> filter (they commute; only the replicate-padded edges differ), the reverb also
    hears the ``max_half_size`` replicated edge samples before the clip start, and examples
    that draw neither filter nor reverb still pass the exponentially windowed FFT (relative
    error ~1e-5).
    """

    def __init__(self, filter, delay, reverb, p_filter=0.8, p_delay=0.3, p_reverb=0.6, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)

        def layer(obj, cls):
            obj = keras.saving.deserialize_keras_object(obj) if isinstance(obj, dict) else obj
            if not isinstance(obj, cls):
                raise TypeError(f"FilterDelayReverb needs a {cls.__name__}, got {type(obj).__name__}.")
            return obj

        self.filter = layer(filter, HighLowPass)
        self.delay = layer(delay, Delay)
        self.reverb = layer(reverb, Reverb)
        for name, p in (("p_filter", p_filter), ("p_delay", p_delay), ("p_reverb", p_reverb)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"FilterDelayReverb needs 0 <= {name} <= 1, got {p}.")
        self.p_filter, self.p_delay, self.p_reverb = float(p_filter), float(p_delay), float(p_reverb)

    def build(self, input_shape):
        for layer in (self.filter, self.delay, self.reverb):
            if not layer.built:
                layer.build(input_shape)
        self.built = True

    def draw(self, batch):
        coins = keras.random.uniform((batch, 3), seed=self.seed_generator)
        return {"filter_on": coins[:, 0] < self.p_filter, "delay_on": coins[:, 1] < self.p_delay,
                "reverb_on": coins[:, 2] < self.p_reverb, "filter": self.filter.draw(batch),
                "delay": self.delay.draw(batch), "reverb": self.reverb.draw(batch)}

    def augment(self, audio):
        dtype = audio.dtype
        x = ops.cast(audio, "float32")
        return ops.cast(self.transform(x, **self.draw(ops.shape(x)[0])), dtype)

    def transform(self, audio, filter_on, delay_on, reverb_on, filter, delay, reverb):
        length = _static_length(audio, "FilterDelayReverb")
        half = self.filter.max_half_size
        x = ops.where(ops.reshape(delay_on, (-1, 1)), self.delay.transform(audio, **delay), audio)
        padded = ops.concatenate([ops.repeat(x[:, :1], half, axis=1), x, ops.repeat(x[:, -1:], half, axis=1)],
                                 axis=1)
        total = length + 2 * half
        fft_length = _fft_size(int(math.ceil(1.05 * total)))
        log_window = math.log(1.0 / self.reverb.epsilon) / fft_length
        window = np.exp(-log_window * np.arange(total, dtype=np.float64))
        identity = np.zeros(2 * half + 1, np.float32)
        identity[half] = 1.0
        identity = ops.convert_to_tensor(identity)[None, :]
        low = self.filter.kernels(filter["cutoff_hz"])
        kernel = ops.where(ops.reshape(filter["highpass"], (-1, 1)), identity - low, low)
        kernel = ops.where(ops.reshape(filter_on, (-1, 1)), kernel, identity)
        kernel = kernel * ops.convert_to_tensor(window[:2 * half + 1].astype("float32"))[None, :]
        wet = self.reverb.impulse_response(total, log_window=log_window, **reverb)
        first = ops.convert_to_tensor(np.eye(1, total, dtype=np.float32))  # the dry impulse
        response = first + ops.where(ops.reshape(reverb_on, (-1, 1)), wet, 0.0)
        xr, xi = ops.rfft(padded * ops.convert_to_tensor(window.astype("float32"))[None, :], fft_length)
        kr, ki = ops.rfft(kernel, fft_length)
        rr, ri = ops.rfft(response, fft_length)
        hr, hi = kr * rr - ki * ri, kr * ri + ki * rr
        y = ops.irfft((xr * hr - xi * hi, xr * hi + xi * hr), fft_length)[:, 2 * half:2 * half + length]
        unwindow = np.exp(log_window * (np.arange(length, dtype=np.float64) + 2 * half)).astype("float32")
        y = y * ops.convert_to_tensor(unwindow)[None, :]
        return ops.where(ops.reshape(reverb_on, (-1, 1)), ops.clip(y, -1.0, 1.0), y)

    def get_config(self):
        config = super().get_config()
        config.update(filter=keras.saving.serialize_keras_object(self.filter),
                      delay=keras.saving.serialize_keras_object(self.delay),
                      reverb=keras.saving.serialize_keras_object(self.reverb),
                      p_filter=self.p_filter, p_delay=self.p_delay, p_reverb=self.p_reverb)
        return config


CLMR_PROBABILITIES = {"polarity": 0.8, "noise": 0.01, "gain": 0.3, "filter": 0.8, "delay": 0.3,
                      "pitch_shift": 0.6, "reverb": 0.6}


def clmr_augmentation(sample_rate=22050, seed=None, pitch_shift=True, fused=True):
    """CLMR's augmentation chain after the crop, as ONE serializable layer [B, n] -> [B, n].

    Probabilities of CLMR master (torchaudio-augmentations 0.2.4): polarity 0.8, noise 0.01,
    gain 0.3, high/low-pass 0.8, delay 0.3, pitch shift 0.6, reverb 0.6, each drawn per
    example. ``pitch_shift=False`` drops the pitch shift (PEMR's chain). With an integer
    ``seed`` every transform and every coin gets its own derived seed, so a run is
    reproducible; ``None`` seeds from Keras' global seed generator.

    ``fused=False`` keeps the original order exactly (polarity, noise, gain, filter, delay,
    pitch, reverb; one ``RandomApply`` each). ``fused=True`` (default; ~1/3 less FFT work)
    runs filter, delay and reverb in one ``FilterDelayReverb`` pass and the pitch shift
    LAST (deviation: the original shifts the pitch before the reverb, so here the reverb tail
    is pitch-shifted too); all probabilities and parameter draws are unchanged.
    """
    def sub_seed(i):
        return None if seed is None else int(seed) * 1009 + i

    p = CLMR_PROBABILITIES
    layers = [RandomApply(PolarityInversion(seed=sub_seed(0), name="polarity_inversion"), p["polarity"],
                          seed=sub_seed(1), name="random_polarity_inversion"),
              RandomApply(Noise(1e-4, 1e-2, seed=sub_seed(2), name="noise"), p["noise"], seed=sub_seed(3),
                          name="random_noise"),
              RandomApply(Gain(-20.0, -1.0, seed=sub_seed(4), name="gain"), p["gain"], seed=sub_seed(5),
                          name="random_gain")]
    high_low_pass = HighLowPass(sample_rate, seed=sub_seed(6), name="high_low_pass")
    delay = Delay(sample_rate, seed=sub_seed(8), name="delay")
    reverb = Reverb(sample_rate, seed=sub_seed(12), name="reverb")
    pitch = (RandomApply(PitchShift(sample_rate, seed=sub_seed(10), name="pitch_shift"), p["pitch_shift"],
                         seed=sub_seed(11), name="random_pitch_shift") if pitch_shift else None)
    if fused:
        layers.append(FilterDelayReverb(high_low_pass, delay, reverb, p["filter"], p["delay"], p["reverb"],
                                        seed=sub_seed(7), name="filter_delay_reverb"))
        layers += [pitch] if pitch is not None else []
    else:
        layers += [RandomApply(high_low_pass, p["filter"], seed=sub_seed(7), name="random_high_low_pass"),
                   RandomApply(delay, p["delay"], seed=sub_seed(9), name="random_delay")]
        layers += [pitch] if pitch is not None else []
        layers.append(RandomApply(reverb, p["reverb"], seed=sub_seed(13), name="random_reverb"))
    return AugmentationChain(layers, name="clmr_augmentation" if pitch_shift else "pemr_augmentation")
