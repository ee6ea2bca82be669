"""Audio decoding (soundfile, with the ffmpeg CLI as a fallback), downmix and resampling (soxr)."""

import os
import shutil
import subprocess

import numpy as np

DEFAULT_SAMPLE_RATE = 22050
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".m4a", ".au")
# Formats libsndfile (>= 1.1) reads itself: a failure on these means bad data, not a missing codec.
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")


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
    command = [ffmpeg, "-nostdin", "-v", "error", "-i", path, "-vn", "-f", "f32le", "-acodec", "pcm_f32le",
               "-ar", str(rate), "-ac", str(channels), "-"]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        raise CorruptAudioError(path, f"ffmpeg could not decode it: {result.stderr.decode(errors='replace').strip()}")
    data = np.frombuffer(result.stdout, dtype=np.float32)
    data = data[: len(data) // channels * channels].reshape(-1, channels)
    return data, int(rate)


def _ffprobe_value(path, entry):
    ffprobe = shutil.which("ffprobe")
    if not ffprobe:
        return None
    out = subprocess.run([ffprobe, "-v", "error", "-select_streams", "a:0", "-show_entries",
                          f"stream={entry}", "-of", "csv=p=0", path], capture_output=True, check=False)
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


def load(path_or_file, sample_rate=DEFAULT_SAMPLE_RATE, mono=True):
    """Decode an audio file to float32 in [-1, 1] at ``sample_rate`` Hz.

    Returns [T] when ``mono`` (channels averaged), else [T, C]. ``sample_rate=None`` keeps
    the file's own rate. Reads wav/flac/ogg/opus/mp3 with soundfile and falls back to the
    ``ffmpeg`` command when soundfile cannot read the file and ffmpeg is installed.

    Raises ``AudioError`` subclasses naming the file and the reason: missing file, empty
    file, undecodable data, non-finite samples, unsupported format without ffmpeg.
    """
    name = _describe(path_or_file)
    is_path = isinstance(path_or_file, (str, os.PathLike))
    if is_path:
        if not os.path.exists(path_or_file):
            raise AudioFileNotFoundError(name, "no such file; check the path")
        if os.path.isdir(path_or_file):
            raise AudioError(name, "is a directory, not an audio file")
        if os.path.getsize(path_or_file) == 0:
            raise EmptyAudioError(name, "the file is empty (0 bytes)")
    try:
        data, rate = _decode_soundfile(path_or_file)
    except Exception as error:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        if not is_path:
            raise CorruptAudioError(name, f"could not be decoded ({error})") from error
        if shutil.which("ffmpeg") is None:
            if os.fspath(path_or_file).lower().endswith(SOUNDFILE_EXTENSIONS):
                raise CorruptAudioError(
                    name, f"could not be decoded ({error}); the file looks corrupt or truncated "
                          "(if it plays elsewhere, install ffmpeg so it can be decoded that way)") from error
            raise UnsupportedFormatError(
                name, f"soundfile cannot decode it ({error}) and ffmpeg is not installed; "
                      "install ffmpeg or convert the file to wav/flac") from error
        data, rate = _decode_ffmpeg(os.fspath(path_or_file), sample_rate, mono)
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
    return np.clip(data, -1.0, 1.0).astype(np.float32, copy=False)


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
