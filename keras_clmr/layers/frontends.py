"""The one STFT/mel module: spectrogram frontends in keras.ops (exportable, backend-agnostic).

Mel filterbanks (torchaudio's HTK, librosa's Slaney), the windowed DFT kernel and the power
spectrogram are shared by PEMR's ``LogMelSpectrogram`` and musicnn's ``MusicnnLogMel``.
"""

import math

import keras
import numpy as np
from keras import ops


def hz_to_mel_htk(freq):
    return 2595.0 * np.log10(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def mel_to_hz_htk(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def torchaudio_mel_filterbank(n_freqs, n_mels, sample_rate, f_min=0.0, f_max=None):
    """torchaudio's ``melscale_fbanks(..., norm=None, mel_scale="htk")`` in float64 numpy.

    Returns [n_freqs, n_mels]: unnormalised HTK triangles over the linear frequencies
    ``linspace(0, sample_rate // 2, n_freqs)``. With few FFT bins some triangles fall
    between bins and come out all zero (torchaudio only warns); they are kept as is.
    """
    f_max = float(sample_rate // 2) if f_max is None else float(f_max)
    all_freqs = np.linspace(0.0, sample_rate // 2, n_freqs)
    m_pts = np.linspace(hz_to_mel_htk(f_min), hz_to_mel_htk(f_max), n_mels + 2)
    f_pts = mel_to_hz_htk(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


def hz_to_mel_slaney(freq):
    """librosa's Slaney mel scale: linear below 1 kHz, logarithmic above (float64)."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    log_part = min_log_mel + np.log(np.maximum(freq, 1e-10) / min_log_hz) / logstep
    return np.where(freq >= min_log_hz, log_part, freq / f_sp)


def mel_to_hz_slaney(mels):
    """Inverse of ``hz_to_mel_slaney`` (float64)."""
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(
        mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels
    )


def slaney_mel_filterbank(sample_rate=16000, n_fft=512, n_mels=96, f_min=0.0, f_max=None):
    """librosa's default mel filterbank (Slaney scale, area normalisation) as [n_fft//2+1, n_mels].

    This is what ``librosa.feature.melspectrogram`` (used by musicnn) applies.
    """
    f_max = sample_rate / 2.0 if f_max is None else f_max
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mel_points = mel_to_hz_slaney(
        np.linspace(hz_to_mel_slaney(f_min), hz_to_mel_slaney(f_max), n_mels + 2)
    )
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, fft_freqs.size))
    for i in range(n_mels):
        lower = -ramps[i] / widths[i]
        upper = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_points[2 : n_mels + 2] - mel_points[:n_mels]))[:, None]
    return weights.T


def periodic_hann(n):
    """``torch.hann_window(n)`` (periodic=True) in float64."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def dft_kernels(n_fft):
    """Windowed one-sided DFT as a conv kernel [n_fft, 1, 2 * (n_fft // 2 + 1)] (cos, then -sin)."""
    n_freqs = n_fft // 2 + 1
    t = np.arange(n_fft)[:, None]
    f = np.arange(n_freqs)[None, :]
    angle = 2.0 * np.pi * t * f / n_fft
    window = periodic_hann(n_fft)[:, None]
    kernel = np.concatenate([window * np.cos(angle), -window * np.sin(angle)], axis=1)
    return kernel[:, None, :]


def power_spectrogram(audio, dft_kernel, hop_length, dtype="float32"):
    """|STFT|^2 [B, frames, n_fft // 2 + 1] of audio [B, T] with a ``dft_kernels(n_fft)`` kernel.

    Centred frames: reflect padding by n_fft // 2 (numpy/torch/librosa "reflect": the edge
    sample is not repeated), written as flips so it exports everywhere.
    """
    audio = ops.cast(audio, dtype)
    n_fft = dft_kernel.shape[0]
    n_freqs = n_fft // 2 + 1
    pad = n_fft // 2
    left = ops.flip(audio[:, 1 : pad + 1], axis=1)
    right = ops.flip(audio[:, -pad - 1 : -1], axis=1)
    padded = ops.concatenate([left, audio, right], axis=1)[:, :, None]
    kernel = ops.convert_to_tensor(dft_kernel, dtype=dtype)
    spectrum = ops.conv(padded, kernel, strides=hop_length, padding="valid")
    real, imag = spectrum[..., :n_freqs], spectrum[..., n_freqs:]
    return real * real + imag * imag


@keras.saving.register_keras_serializable(package="keras_clmr")
class LogMelSpectrogram(keras.layers.Layer):
    """torchaudio's ``MelSpectrogram(...)`` followed by ``AmplitudeToDB()``, exactly.

    audio [B, T] -> log-mel [B, n_mels, 1 + T // hop_length] in dB (torchaudio's layout).
    Same definition as torchaudio's defaults: periodic Hann window of ``n_fft`` samples,
    ``center=True`` with reflect padding of ``n_fft // 2``, power 2, HTK mel scale,
    unnormalised triangles (``norm=None``), ``f_min=0``, ``f_max=sample_rate // 2``, then
    ``10 * log10(max(x, 1e-10))`` with no ``top_db`` clipping.

    The windowed DFT and the filterbank are float64 numpy constants (cast to the compute
    dtype) so the layer has no weights and exports to ONNX as a strided conv + matmul.

    ``sample_rate`` is the rate used to build the mel filterbank, NOT necessarily the rate of
    the audio: PEMR's official code calls ``MelSpectrogram`` without ``sample_rate`` on
    22050 Hz audio, so its filterbank is torchaudio's default 16000 Hz one. Keep 16000 to
    match PEMR checkpoints; pass the true rate for a physically correct mel scale.

    The layer computes in float32 by default even under a mixed-precision policy (the 1e-10
    floor underflows in float16); pass ``dtype="float64"`` for a float64 computation.
    """

    def __init__(
        self,
        n_fft=256,
        hop_length=128,
        n_mels=128,
        sample_rate=16000,
        f_min=0.0,
        f_max=None,
        amin=1e-10,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.sample_rate = int(sample_rate)
        self.f_min = float(f_min)
        self.f_max = None if f_max is None else float(f_max)
        self.amin = float(amin)
        if self.n_fft < 2 or self.hop_length < 1 or self.n_mels < 1:
            raise ValueError(
                f"LogMelSpectrogram needs n_fft >= 2, hop_length >= 1 and n_mels >= 1, got "
                f"n_fft={n_fft}, hop_length={hop_length}, n_mels={n_mels}."
            )
        top = self.sample_rate // 2 if self.f_max is None else self.f_max
        if not 0.0 <= self.f_min < top:
            raise ValueError(f"Need 0 <= f_min < f_max, got f_min={self.f_min}, f_max={top}.")
        self.n_freqs = self.n_fft // 2 + 1
        self.filterbank = torchaudio_mel_filterbank(
            self.n_freqs, self.n_mels, self.sample_rate, self.f_min, self.f_max
        )
        self._dft = dft_kernels(self.n_fft)

    def num_frames(self, num_samples):
        """Frames produced for ``num_samples`` samples (center=True): 1 + T // hop_length."""
        return 1 + int(num_samples) // self.hop_length

    def _check(self, shape):
        if len(shape) != 2:
            raise ValueError(
                f"LogMelSpectrogram expects mono audio [batch, samples], got shape {tuple(shape)}."
            )
        pad = self.n_fft // 2
        if shape[1] is not None and shape[1] <= pad:
            raise ValueError(
                f"Reflect padding by n_fft // 2 = {pad} needs more than {pad} samples, got "
                f"{shape[1]}."
            )

    def build(self, input_shape):
        self._check(input_shape)
        self.built = True

    def power_spectrogram(self, audio):
        """|STFT|^2 as [B, frames, n_fft // 2 + 1]."""
        return power_spectrogram(audio, self._dft, self.hop_length, self.compute_dtype)

    def call(self, audio):
        self._check(audio.shape)
        power = self.power_spectrogram(audio)
        filterbank = ops.convert_to_tensor(self.filterbank, dtype=self.compute_dtype)
        mel = ops.matmul(power, filterbank)
        log_mel = 10.0 * ops.log(ops.maximum(mel, self.amin)) / math.log(10.0)
        return ops.transpose(log_mel, (0, 2, 1))

    def compute_output_shape(self, input_shape):
        frames = None if input_shape[1] is None else self.num_frames(input_shape[1])
        return (input_shape[0], self.n_mels, frames)

    def get_config(self):
        config = super().get_config()
        config.update(
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            sample_rate=self.sample_rate,
            f_min=self.f_min,
            f_max=self.f_max,
            amin=self.amin,
        )
        return config
