"""Audio sources -> fixed-length windows, streamed in bounded memory.

Files that soundfile can read are decoded in blocks (``soundfile`` block reads +
``soxr.ResampleStream`` to the model's rate), so an hour of audio never sits in memory; other
formats go through ``keras_clmr.audio.load`` (ffmpeg) and are decoded whole. Arrays are
resampled once. A window starts every ``hop`` samples; a remainder shorter than a window is
dropped, and a clip shorter than one window is zero-padded or refused.
"""

import os
import warnings

import numpy as np

from keras_clmr import audio as audio_lib
from keras_clmr.audio import AudioError, CorruptAudioError, EmptyAudioError


class ClipTooShortError(AudioError):
    """A clip shorter than one model window while ``short="error"``."""


class WindowStream:
    """Yields (start_sample, window) for one source; records duration and padding afterwards."""

    def __init__(self, source, sample_rate, window, hop, short, block_frames, source_rate=None):
        self.source = source
        self.sample_rate = sample_rate
        self.window = window
        self.hop = hop
        self.short = short
        self.block_frames = block_frames
        self.source_rate = source_rate
        self.name = describe(source)
        self.total = 0
        self.padded = False

    def _array_blocks(self):
        data = np.asarray(self.source)
        if data.ndim == 2:
            data = data.mean(axis=1)
        elif data.ndim != 1:
            raise ValueError(
                f"Audio arrays must be [samples] or [samples, channels], got shape {data.shape}."
            )
        if not np.issubdtype(data.dtype, np.floating):
            raise ValueError(f"Audio arrays must be float in [-1, 1], got dtype {data.dtype}.")
        data = data.astype(np.float32, copy=False)
        if not np.all(np.isfinite(data)):
            raise CorruptAudioError(self.name, "contains non-finite (NaN or Inf) samples")
        if self.source_rate and self.source_rate != self.sample_rate:
            data = audio_lib.resample(data, self.source_rate, self.sample_rate)
        for start in range(0, len(data), self.block_frames):
            yield data[start : start + self.block_frames]

    def _file_blocks(self):
        import soundfile

        path = os.fspath(self.source)
        if not os.path.exists(path):
            raise audio_lib.AudioFileNotFoundError(path, "no such file; check the path")
        if os.path.isdir(path):
            raise AudioError(path, "is a directory, not an audio file")
        if os.path.getsize(path) == 0:
            raise EmptyAudioError(path, "the file is empty (0 bytes)")
        try:
            handle = soundfile.SoundFile(path)
        except Exception:  # not readable by libsndfile: ffmpeg fallback, decoded whole
            data = audio_lib.load(path, sample_rate=self.sample_rate)
            for start in range(0, len(data), self.block_frames):
                yield data[start : start + self.block_frames]
            return
        with handle:
            rate = handle.samplerate
            stream = None
            if rate != self.sample_rate:
                import soxr

                stream = soxr.ResampleStream(
                    rate, self.sample_rate, 1, dtype="float32", quality="HQ"
                )
            in_frames = max(1, int(round(self.block_frames * rate / self.sample_rate)))
            while True:
                try:
                    block = handle.read(in_frames, dtype="float32", always_2d=True)
                except Exception as error:
                    raise CorruptAudioError(path, f"could not be decoded ({error})") from error
                last = len(block) < in_frames
                block = block.mean(axis=1)
                if not np.all(np.isfinite(block)):
                    raise CorruptAudioError(path, "decodes to non-finite (NaN or Inf) samples")
                if stream is not None:
                    block = stream.resample_chunk(np.ascontiguousarray(block), last=last)
                if len(block):
                    yield np.clip(block, -1.0, 1.0)
                if last:
                    break

    def __iter__(self):
        blocks = (
            self._array_blocks() if isinstance(self.source, np.ndarray) else self._file_blocks()
        )
        window, hop = self.window, self.hop
        buffer = np.zeros(0, np.float32)
        buffer_start = next_start = emitted = 0
        for block in blocks:
            self.total += len(block)
            buffer = np.concatenate([buffer, block]) if len(buffer) else block
            while next_start + window <= buffer_start + len(buffer):
                offset = next_start - buffer_start
                yield next_start, buffer[offset : offset + window]
                emitted += 1
                next_start += hop
            drop = min(next_start - buffer_start, len(buffer))
            if drop > 0:
                buffer = buffer[drop:]
                buffer_start += drop
        if self.total == 0:
            raise EmptyAudioError(self.name, "decodes to zero samples")
        if emitted == 0:
            seconds = self.total / self.sample_rate
            message = (
                f"only {self.total} samples ({seconds:.2f} s at {self.sample_rate} Hz), shorter "
                "than one "
                f"{window}-sample window ({window / self.sample_rate:.2f} s)"
            )
            if self.short == "error":
                raise ClipTooShortError(self.name, message + "; pass short='pad' to zero-pad it")
            warnings.warn(f"{self.name}: {message}; zero-padded to one window.", stacklevel=4)
            self.padded = True
            yield 0, np.pad(buffer, (0, window - len(buffer)))


def describe(source):
    """A short name of a source for messages and results: its path, or the array's shape."""
    if isinstance(source, np.ndarray):
        return f"<array {source.shape}>"
    return os.fspath(source)
