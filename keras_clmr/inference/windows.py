"""Audio sources -> fixed-length windows (or musicnn's log-mel patches), streamed in bounded memory.

Files that soundfile can read are decoded in blocks (``soundfile`` block reads +
``soxr.ResampleStream`` to the model's rate), so an hour of audio never sits in memory; other
formats go through ``keras_clmr.audio.load`` (ffmpeg) and are decoded whole. Arrays are
resampled once. A window starts every ``hop`` samples; a remainder shorter than a window is
dropped, and a clip shorter than one window is zero-padded or refused.

musicnn models window as musicnn 0.1.0's ``extractor`` does (``MelPatching``): one log-mel of
the whole file (computed here in overlapping chunks whose frames equal the whole-file ones),
cut into patches of ``patch_frames`` frames every ``patch hop`` frames; decoded audio is not
clipped (librosa does not clip).
"""

import dataclasses
import os
import warnings

import numpy as np

from keras_clmr import audio as audio_lib
from keras_clmr.audio import AudioError, CorruptAudioError, EmptyAudioError

MEL_CHUNK_FRAMES = 2048  # frames per FFT call: bounds the float64 temporaries (~8 MB)


class ClipTooShortError(AudioError):
    """A clip shorter than one model window while ``short="error"``."""


@dataclasses.dataclass(frozen=True)
class MelPatching:
    """musicnn's extractor windowing: librosa's log-mel of the whole file, cut into patches.

    The log-mel is librosa 0.6/0.7's ``melspectrogram`` as musicnn 0.1.0 calls it (centred
    frames with reflect padding of ``n_fft // 2``, periodic Hann, a float64 FFT stored as
    complex64, power 2, float32 Slaney filterbank) rounded to float16, then
    ``log10(10000 * x + 1)`` in float32: what numpy 1 computes for musicnn's float16 array
    (numpy 2 keeps float16 there and overflows to inf above x = 6.55). The filterbank product
    runs in float64 (librosa: float32), so a frame does not depend on how many frames are
    computed together (BLAS rounds differently by shape) and streamed chunks equal the whole
    file; the float16 rounding can differ from librosa's at the rare exact ties.
    """

    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int
    patch_frames: int
    float16_rounding: bool
    filterbank: np.ndarray  # [n_fft // 2 + 1, n_mels] float32 (librosa's dtype)

    @property
    def patch_shape(self):
        return (self.patch_frames, self.n_mels)

    @property
    def patch_samples(self):
        """Samples from a patch's first frame centre to its last: its reported duration."""
        return (self.patch_frames - 1) * self.hop_length

    def hop_samples(self, hop_seconds):
        """Samples between patch starts: musicnn's default (``input_overlap=False``) is one
        patch (``patch_frames`` frames); a hop in seconds is rounded to whole frames."""
        if hop_seconds is None:
            return self.patch_frames * self.hop_length
        frames = int(round(float(hop_seconds) * self.sample_rate / self.hop_length))
        if frames < 1:
            raise ValueError(
                f"hop must be at least one mel frame ({self.hop_length / self.sample_rate:.4f} s"
                f" for this model), got {hop_seconds}."
            )
        return frames * self.hop_length

    def log_mel(self, padded):
        """Log-mel frames [k, n_mels] of already padded float32 audio (no centring here)."""
        count = 1 + (len(padded) - self.n_fft) // self.hop_length
        window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(self.n_fft) / self.n_fft)
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.n_fft)[:: self.hop_length]
        out = np.empty((count, self.n_mels), np.float32)
        for start in range(0, count, MEL_CHUNK_FRAMES):
            chunk = frames[start : start + MEL_CHUNK_FRAMES] * window  # float64, as librosa
            spectrum = np.fft.rfft(chunk, axis=1).astype(np.complex64)
            power = (np.abs(spectrum) ** 2).astype(np.float64)  # float32 values, as librosa
            mel = (power @ self.filterbank.astype(np.float64)).astype(np.float32)
            if self.float16_rounding:
                mel = mel.astype(np.float16).astype(np.float32)
            out[start : start + len(chunk)] = np.log10(np.float32(10000) * mel + np.float32(1))
        return out


def musicnn_patching(model):
    """The ``MelPatching`` of a musicnn model (tagger, backbone or pretrainer), else None."""
    from keras_clmr.models import encoder_of
    from keras_clmr.models.musicnn import Musicnn

    net = encoder_of(model)
    if not isinstance(net, Musicnn):
        return None
    frontend = net.frontend
    return MelPatching(
        sample_rate=frontend.sample_rate,
        n_fft=frontend.n_fft,
        hop_length=frontend.hop_length,
        n_mels=frontend.n_mels,
        patch_frames=net.n_frames,
        float16_rounding=frontend.float16_rounding,
        filterbank=np.asarray(frontend.filterbank, np.float32),
    )


class WindowStream:
    """Yields (start_sample, window) for one source; records duration and padding afterwards.

    With ``patching`` (a ``MelPatching``) it yields (start_sample, log-mel patch) instead:
    ``start_sample`` is the patch's first frame centre, ``hop`` a multiple of the mel hop.
    """

    def __init__(
        self,
        source,
        sample_rate,
        window,
        hop,
        short,
        block_frames,
        source_rate=None,
        patching=None,
    ):
        self.source = source
        self.sample_rate = sample_rate
        self.window = window
        self.hop = hop
        self.short = short
        self.block_frames = block_frames
        self.source_rate = source_rate
        self.patching = patching
        self.clip = patching is None  # librosa (musicnn) does not clip decoded audio
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
            data = audio_lib.load(path, sample_rate=self.sample_rate, clip=self.clip)
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
                    yield np.clip(block, -1.0, 1.0) if self.clip else block
                if last:
                    break

    def __iter__(self):
        blocks = (
            self._array_blocks() if isinstance(self.source, np.ndarray) else self._file_blocks()
        )
        if self.patching is not None:
            yield from self._patches(blocks)
            return
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
            self._too_short()
            yield 0, np.pad(buffer, (0, window - len(buffer)))

    def _too_short(self, depth=0):
        """Raise ``ClipTooShortError`` (short="error") or warn that the clip is zero-padded
        (``depth``: generator frames between ``__iter__`` and here, for the warning's line)."""
        seconds = self.total / self.sample_rate
        message = (
            f"only {self.total} samples ({seconds:.2f} s at {self.sample_rate} Hz), shorter "
            f"than one {self.window}-sample window ({self.window / self.sample_rate:.2f} s)"
        )
        if self.short == "error":
            raise ClipTooShortError(self.name, message + "; pass short='pad' to zero-pad it")
        warnings.warn(f"{self.name}: {message}; zero-padded to one window.", stacklevel=5 + depth)
        self.padded = True

    def _reflect_padded(self, blocks):
        """The audio with librosa's centring (reflect padding of n_fft // 2 on both ends), in
        blocks. A clip shorter than one window is first zero-padded to it (or refused)."""
        pad = self.patching.n_fft // 2
        head, held = [], 0
        for block in blocks:  # hold the start until one window is known
            self.total += len(block)
            head.append(block)
            held += len(block)
            if held >= self.window:
                break
        if self.total == 0:
            raise EmptyAudioError(self.name, "decodes to zero samples")
        start = np.concatenate(head)
        if len(start) < self.window:
            self._too_short(depth=2)
            start = np.pad(start, (0, self.window - len(start)))
        yield start[1 : pad + 1][::-1]
        yield start
        tail = start[-(pad + 1) :]
        for block in blocks:
            self.total += len(block)
            yield block
            tail = np.concatenate([tail, block[-(pad + 1) :]])[-(pad + 1) :]
        yield tail[:-1][::-1]

    def _patches(self, blocks):
        """(start_sample, patch [patch_frames, n_mels]) cut from the whole-file log-mel, which
        is computed chunk by chunk: frame f covers padded samples [f * hop, f * hop + n_fft),
        so chunks overlap by n_fft - hop samples and every frame equals the whole-file one."""
        patching = self.patching
        n_fft, frame_hop, size = patching.n_fft, patching.hop_length, patching.patch_frames
        patch_hop = self.hop // frame_hop
        audio = np.zeros(0, np.float32)
        audio_start = next_frame = 0  # padded-signal index of audio[0]; next frame to compute
        mel = np.zeros((0, patching.n_mels), np.float32)
        mel_start = next_patch = 0  # frame index of mel[0]; first frame of the next patch
        for piece in self._reflect_padded(blocks):
            audio = np.concatenate([audio, piece]) if len(audio) else piece
            last = (audio_start + len(audio) - n_fft) // frame_hop
            if last >= next_frame:
                offset = next_frame * frame_hop - audio_start
                span = (last - next_frame) * frame_hop + n_fft
                mel = np.concatenate([mel, patching.log_mel(audio[offset : offset + span])])
                next_frame = last + 1
                drop = next_frame * frame_hop - audio_start
                audio = audio[drop:]
                audio_start += drop
            while next_patch + size <= mel_start + len(mel):
                offset = next_patch - mel_start
                yield next_patch * frame_hop, mel[offset : offset + size]
                next_patch += patch_hop
            drop = min(next_patch - mel_start, len(mel))
            if drop > 0:
                mel = mel[drop:]
                mel_start += drop


def describe(source):
    """A short name of a source for messages and results: its path, or the array's shape."""
    if isinstance(source, np.ndarray):
        return f"<array {source.shape}>"
    return os.fspath(source)
