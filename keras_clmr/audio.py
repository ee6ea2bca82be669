"""Audio decoding (soundfile, with the ffmpeg CLI as a fallback), downmix and resampling (soxr)."""

import errno
import os
import re
import shutil
import struct
import subprocess
import warnings

import numpy as np

DEFAULT_SAMPLE_RATE = 22050
AUDIO_EXTENSIONS = (
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".aiff",
    ".aif",
    ".m4a",
    ".au",
)
# Formats libsndfile (>= 1.1) reads itself: a failure on these means bad data, not a missing codec.
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")
# Sample rates keras_clmr reads or resamples to: below 1 kHz is not music audio (a 1 Hz header
# would be upsampled 22050x in memory), above 384 kHz no recording format goes.
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
# Decoded audio larger than this (float32 samples x channels) is refused before decoding.
MAX_DECODED_BYTES = 4 << 30
_POINTER = re.compile(r"\[[^\]]*@ 0x[0-9a-fA-F]+\]\s*|0x[0-9a-fA-F]{6,}")


class AudioError(Exception):
    """An audio file that cannot be used; the message names the file and the reason."""

    def __init__(self, source, reason):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


class AudioFileNotFoundError(AudioError, FileNotFoundError):
    """The file does not exist."""


class EmptyAudioError(AudioError):
    """The file is empty or decodes to zero samples."""


class CorruptAudioError(AudioError):
    """The data cannot be decoded, or decodes to non-finite samples."""


class UnsupportedFormatError(AudioError):
    """soundfile cannot read this format and ffmpeg is not installed."""


class UnsupportedSampleRateError(AudioError):
    """A file whose sample rate is outside [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]."""


class AudioTooLargeError(AudioError):
    """A file that would decode to more than MAX_DECODED_BYTES."""


class TruncatedAudioWarning(UserWarning):
    """A file shorter than its header says (a cut download or copy); what is there is used."""


def check_sample_rate(sample_rate, what="sample_rate"):
    """``sample_rate`` as an int in [1 kHz, 384 kHz], else ValueError naming value and range."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.number)):
        raise ValueError(f"{what} must be a number of Hz, got {sample_rate!r}.")
    if (
        not np.isfinite(sample_rate)
        or int(sample_rate) != sample_rate
        or not (MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE)
    ):
        raise ValueError(
            f"{what} must be a whole number of Hz between {MIN_SAMPLE_RATE} and "
            f"{MAX_SAMPLE_RATE}, got {sample_rate!r}."
        )
    return int(sample_rate)


def summarize_tool_error(text, limit=200):
    """One deterministic line from a tool's stderr: the last message, without pointers."""
    lines = [_POINTER.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return "no message"
    line = lines[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _check_wav_length(path):
    """Warn when a RIFF/WAVE file's data chunk claims more bytes than the file holds."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as file:
            header = file.read(12)
            if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
                return
            while True:
                chunk = file.read(8)
                if len(chunk) < 8:
                    return
                chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if chunk_id == b"data":
                    available = size - file.tell()
                    if chunk_size != 0xFFFFFFFF and chunk_size > available:
                        warnings.warn(
                            f"{path}: truncated: the header announces {chunk_size} bytes of "
                            f"audio, the file holds {available}; the rest is missing "
                            "(re-copy or re-download the file).",
                            TruncatedAudioWarning,
                            stacklevel=3,
                        )
                    return
                file.seek(chunk_size + (chunk_size & 1), os.SEEK_CUR)
    except OSError:
        return


def _describe(path_or_file):
    if isinstance(path_or_file, (str, os.PathLike)):
        return os.fspath(path_or_file)
    return getattr(path_or_file, "name", "<file object>")


def _decode_soundfile(path_or_file):
    import soundfile

    data, rate = soundfile.read(path_or_file, dtype="float32", always_2d=True)
    return data, rate


def _decode_ffmpeg(path, sample_rate, mono):
    """Decode through the ffmpeg CLI to float32 [T, C] (downmixed by ffmpeg when ``mono``)."""
    ffmpeg = shutil.which("ffmpeg")
    rate = sample_rate or _ffprobe_value(path, "sample_rate")
    if not rate:
        raise UnsupportedFormatError(path, "ffmpeg cannot tell its sample rate; pass sample_rate=")
    channels = 1 if mono else (_ffprobe_value(path, "channels") or 1)
    # -protocol_whitelist file: a playlist (HLS .m3u8 named .mp3) cannot pull in other files
    # or URLs; the input is read as the local file it claims to be.
    command = [
        ffmpeg,
        "-nostdin",
        "-v",
        "error",
        "-protocol_whitelist",
        "file",
        "-i",
        path,
        "-vn",
        "-f",
        "f32le",
        "-acodec",
        "pcm_f32le",
        "-ar",
        str(rate),
        "-ac",
        str(channels),
        "-",
    ]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        reason = summarize_tool_error(result.stderr.decode(errors="replace"))
        raise CorruptAudioError(path, f"ffmpeg could not decode it: {reason}")
    data = np.frombuffer(result.stdout, dtype=np.float32)
    data = data[: len(data) // channels * channels].reshape(-1, channels)
    return data, int(rate)


def _ffprobe_value(path, entry):
    ffprobe = shutil.which("ffprobe")
    if not ffprobe:
        return None
    out = subprocess.run(
        [
            ffprobe,
            "-v",
            "error",
            "-protocol_whitelist",
            "file",
            "-select_streams",
            "a:0",
            "-show_entries",
            f"stream={entry}",
            "-of",
            "csv=p=0",
            path,
        ],
        capture_output=True,
        check=False,
    )
    try:
        return max(1, int(out.stdout.decode().strip().splitlines()[0]))
    except (ValueError, IndexError):
        return None


def resample(audio, orig_sr, target_sr):
    """Resample [T] or [T, C] float audio with soxr (high quality)."""
    if orig_sr == target_sr:
        return audio
    import soxr

    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def load(path_or_file, sample_rate=DEFAULT_SAMPLE_RATE, mono=True, clip=True):
    """Decode an audio file to float32 in [-1, 1] at ``sample_rate`` Hz.

    ``clip=False`` keeps samples beyond [-1, 1] (float files, resampling overshoot) as
    librosa does (musicnn's windowing needs that).

    Returns [T] when ``mono`` (channels averaged), else [T, C]. ``sample_rate=None`` keeps
    the file's own rate. Reads wav/flac/ogg/opus/mp3 with soundfile and falls back to the
    ``ffmpeg`` command when soundfile cannot read the file and ffmpeg is installed.

    Raises ``AudioError`` subclasses naming the file and the reason: missing file, empty
    file, undecodable data, non-finite samples, unsupported format without ffmpeg.
    """
    name = _describe(path_or_file)
    is_path = isinstance(path_or_file, (str, os.PathLike))
    if sample_rate is not None:
        sample_rate = check_sample_rate(sample_rate)
    if is_path:
        try:
            os.stat(path_or_file)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise AudioError(
                    name, "a symlink loop (the link points back at itself); fix or remove it"
                ) from error
            raise AudioFileNotFoundError(name, "no such file; check the path") from error
        if os.path.isdir(path_or_file):
            raise AudioError(name, "is a directory, not an audio file")
        if os.path.getsize(path_or_file) == 0:
            raise EmptyAudioError(name, "the file is empty (0 bytes)")
        _check_header(os.fspath(path_or_file), name)
    try:
        data, rate = _decode_soundfile(path_or_file)
    except Exception as error:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        if not is_path:
            raise CorruptAudioError(name, f"could not be decoded ({error})") from error
        if shutil.which("ffmpeg") is None:
            if os.fspath(path_or_file).lower().endswith(SOUNDFILE_EXTENSIONS):
                raise CorruptAudioError(
                    name,
                    f"could not be decoded ({error}); the file looks corrupt or truncated "
                    "(if it plays elsewhere, install ffmpeg so it can be decoded that way)",
                ) from error
            raise UnsupportedFormatError(
                name,
                f"soundfile cannot decode it ({error}) and ffmpeg is not installed; "
                "install ffmpeg or convert the file to wav/flac",
            ) from error
        data, rate = _decode_ffmpeg(os.fspath(path_or_file), sample_rate, mono)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise UnsupportedSampleRateError(
            name,
            f"its sample rate is {rate} Hz, outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz; "
            "it is not music audio or its header is damaged",
        )
    if data.size == 0:
        raise EmptyAudioError(name, "decodes to zero samples")
    if not np.all(np.isfinite(data)):
        raise CorruptAudioError(name, "decodes to non-finite (NaN or Inf) samples")
    if mono and data.shape[1] > 1:
        data = data.mean(axis=1)
    elif mono:
        data = data[:, 0]
    if sample_rate is not None and rate != sample_rate:
        data = resample(data, rate, sample_rate)
    if clip:
        data = np.clip(data, -1.0, 1.0)
    return data.astype(np.float32, copy=False)


def _check_header(path, name):
    """Refuse a too-low/high sample rate or a too-large decode from the header, before decoding."""
    import soundfile

    _check_wav_length(path)
    try:
        info = soundfile.info(path)
    except Exception:  # not a soundfile format: ffmpeg decides later
        return
    if info.samplerate and not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise UnsupportedSampleRateError(
            name,
            f"its sample rate is {info.samplerate} Hz, outside {MIN_SAMPLE_RATE}-"
            f"{MAX_SAMPLE_RATE} Hz; it is not music audio or its header is damaged",
        )
    decoded = max(info.frames, 0) * max(info.channels, 1) * 4
    if decoded > MAX_DECODED_BYTES:
        raise AudioTooLargeError(
            name,
            f"it would decode to {decoded / 2**30:.1f} GiB, more than "
            f"{MAX_DECODED_BYTES / 2**30:.0f} GiB; split the file or decode it in blocks",
        )


def list_audio_files(directory):
    """Sorted audio files (by extension) under ``directory``, recursively."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: not a directory; pass a folder of audio files.")
    found = []
    for root, _, files in os.walk(directory):
        for file in files:
            if file.lower().endswith(AUDIO_EXTENSIONS) and not file.startswith("."):
                found.append(os.path.join(root, file))
    return sorted(found)


def load_many(paths, sample_rate=DEFAULT_SAMPLE_RATE, min_samples=0):
    """Decode many files; returns (clips, skipped) where skipped is [(path, reason)].

    A file that fails to decode or is shorter than ``min_samples`` is skipped with its
    reason rather than aborting the whole batch.
    """
    clips, skipped = [], []
    for path in paths:
        try:
            audio = load(path, sample_rate=sample_rate)
        except AudioError as error:
            skipped.append((path, error.reason))
            continue
        if len(audio) < min_samples:
            skipped.append((path, f"only {len(audio)} samples, shorter than {min_samples}"))
            continue
        clips.append(audio)
    return clips, skipped


def to_int16(audio):
    """Float audio in [-1, 1] -> int16 PCM (x * 32768, rounded, saturated).

    The inverse of ``from_int16`` and of how soundfile reads 16-bit PCM, so audio that came
    from a 16-bit file survives float -> int16 -> float bit-exactly.
    """
    scaled = np.rint(np.asarray(audio, dtype=np.float64) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def from_int16(pcm):
    """int16 PCM -> float32 in [-1, 1) (pcm / 32768)."""
    return np.asarray(pcm, dtype=np.int16).astype(np.float32) / np.float32(32768.0)


def duration(path):
    """The file's duration in seconds from its header (soundfile), or None if unknown."""
    import soundfile

    try:
        info = soundfile.info(os.fspath(path))
    except Exception:  # unreadable header: the caller decides (e.g. estimate from other files)
        return None
    if not info.samplerate or info.frames <= 0:
        return None
    return info.frames / info.samplerate
