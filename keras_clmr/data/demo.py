"""A small, deterministic, offline music-like corpus for smoke runs and demos.

Every clip is synthesised from a seed: a chord progression in a major or minor key,
played by one of several timbres in one of several rhythm patterns at one of several
tempi, optionally over a drum pattern. The labels describe exactly those choices, so a
representation that captures timbre, harmony and rhythm can be probed on them.

It is for smoke tests, demos and CI: nothing here says anything about real music, and
scores on it are not comparable with any paper.
"""

import csv
import dataclasses
import os

import numpy as np

TIMBRES = ("sine", "square", "saw", "pluck")
MODES = ("major", "minor")
TEMPI = {"slow": 72.0, "medium": 108.0, "fast": 150.0}
RHYTHMS = ("sustained", "pulse", "arpeggio")
TAGS = TIMBRES + MODES + tuple(TEMPI) + RHYTHMS + ("drums",)

_MAJOR = (0, 4, 7)
_MINOR = (0, 3, 7)
_PROGRESSION = (0, 5, 7, 9)  # I, IV, V, vi (as semitone offsets of the chord roots)


@dataclasses.dataclass
class DemoCorpus:
    """Clips [N, T] float32, multi-hot ``labels`` [N, len(tags)], and per-clip metadata."""

    audio: np.ndarray
    labels: np.ndarray
    tags: tuple
    ids: list
    splits: list
    attributes: list
    sample_rate: int

    def subset(self, split):
        keep = [i for i, s in enumerate(self.splits) if s == split]
        return DemoCorpus(
            self.audio[keep],
            self.labels[keep],
            self.tags,
            [self.ids[i] for i in keep],
            [self.splits[i] for i in keep],
            [self.attributes[i] for i in keep],
            self.sample_rate,
        )


def _midi_to_hz(note):
    return 440.0 * 2.0 ** ((note - 69) / 12.0)


def _tone(freq, n, sample_rate, timbre, rng_phase):
    t = np.arange(n) / sample_rate
    if timbre == "sine":
        partials = [(1, 1.0)]
    elif timbre == "square":
        partials = [(k, 1.0 / k) for k in (1, 3, 5, 7, 9)]
    elif timbre == "saw":
        partials = [(k, 1.0 / k) for k in range(1, 9)]
    else:  # pluck: bright attack, fast decay of the upper partials
        partials = [(k, 1.0 / k**1.5) for k in range(1, 7)]
    out = np.zeros(n)
    nyquist = sample_rate / 2
    for k, amplitude in partials:
        if k * freq >= nyquist:
            break
        decay = np.exp(-t * (2.0 + 3.0 * k)) if timbre == "pluck" else 1.0
        out += amplitude * decay * np.sin(2 * np.pi * k * freq * t + rng_phase * k)
    attack = min(n, int(0.01 * sample_rate))
    release = min(n - attack, int(0.05 * sample_rate))
    envelope = np.ones(n)
    envelope[:attack] = np.linspace(0, 1, attack, endpoint=False)
    if release:
        envelope[n - release :] = np.linspace(1, 0, release)
    return out * envelope


def _drum(kind, n, sample_rate, rng):
    t = np.arange(n) / sample_rate
    if kind == "kick":
        return np.sin(2 * np.pi * (50 + 80 * np.exp(-t * 30)) * t) * np.exp(-t * 12)
    noise = rng.standard_normal(n)
    return noise * np.exp(-t * (40 if kind == "hat" else 18)) * (0.3 if kind == "hat" else 0.6)


def synthesize_clip(seed, seconds=6.0, sample_rate=22050):
    """One clip and its attributes (timbre, mode, tempo, rhythm, drums, root)."""
    rng = np.random.default_rng(seed)
    attributes = {
        "timbre": TIMBRES[rng.integers(len(TIMBRES))],
        "mode": MODES[rng.integers(len(MODES))],
        "tempo": tuple(TEMPI)[rng.integers(len(TEMPI))],
        "rhythm": RHYTHMS[rng.integers(len(RHYTHMS))],
        "drums": bool(rng.integers(2)),
        "root": int(rng.integers(48, 60)),
    }
    n = int(round(seconds * sample_rate))
    out = np.zeros(n)
    beat = int(sample_rate * 60.0 / TEMPI[attributes["tempo"]])
    intervals = _MAJOR if attributes["mode"] == "major" else _MINOR
    beats_per_chord = 4
    for b, start in enumerate(range(0, n, beat)):
        chord_root = attributes["root"] + _PROGRESSION[(b // beats_per_chord) % len(_PROGRESSION)]
        notes = [chord_root + i for i in intervals] + [chord_root + 12]
        if attributes["rhythm"] == "sustained":
            if b % beats_per_chord:
                continue
            events = [(start, beat * beats_per_chord, notes)]
        elif attributes["rhythm"] == "pulse":
            events = [(start, beat // 2, notes), (start + beat // 2, beat // 2, notes[:2])]
        else:  # arpeggio: one note per quarter of a beat
            q = beat // 4
            events = [(start + j * q, q, [notes[j % len(notes)]]) for j in range(4)]
        for onset, length, chord in events:
            length = min(length, n - onset)
            if length <= 0:
                continue
            for note in chord:
                out[onset : onset + length] += _tone(
                    _midi_to_hz(note),
                    length,
                    sample_rate,
                    attributes["timbre"],
                    rng.uniform(0, 2 * np.pi),
                ) / len(chord)
        if attributes["drums"]:
            for kind, offset in (("kick" if b % 2 == 0 else "snare", 0), ("hat", beat // 2)):
                onset = start + offset
                length = min(beat // 2, n - onset)
                if length > 0:
                    out[onset : onset + length] += 0.5 * _drum(kind, length, sample_rate, rng)
    out += 10 ** (-60 / 20) * rng.standard_normal(n)
    out *= 0.8 / max(np.max(np.abs(out)), 1e-9)
    return out.astype(np.float32), attributes


def _tags_of(attributes):
    tags = [attributes["timbre"], attributes["mode"], attributes["tempo"], attributes["rhythm"]]
    if attributes["drums"]:
        tags.append("drums")
    return tags


def make_demo_corpus(
    n_clips=96, seconds=6.0, sample_rate=22050, seed=0, split_fractions=(0.7, 0.15)
):
    """Synthesise ``n_clips`` clips; the same arguments always give the same corpus.

    Splits are assigned by position: the first 70 % train, the next 15 % valid, the rest
    test (by default).
    """
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}.")
    clips, labels, ids, splits, attrs = [], [], [], [], []
    n_train = int(round(split_fractions[0] * n_clips))
    n_valid = int(round(split_fractions[1] * n_clips))
    for i in range(n_clips):
        audio, attributes = synthesize_clip(seed * 100003 + i, seconds, sample_rate)
        clips.append(audio)
        multi_hot = np.zeros(len(TAGS), np.float32)
        for tag in _tags_of(attributes):
            multi_hot[TAGS.index(tag)] = 1.0
        labels.append(multi_hot)
        ids.append(f"demo_{i:05d}")
        splits.append("train" if i < n_train else "valid" if i < n_train + n_valid else "test")
        attrs.append(attributes)
    return DemoCorpus(np.stack(clips), np.stack(labels), TAGS, ids, splits, attrs, sample_rate)


def write_demo_corpus(directory, **kwargs):
    """Write the corpus as 16-bit wav files plus ``labels.csv`` (path,labels,split; labels
    ';'-separated). Returns the corpus."""
    import soundfile

    corpus = make_demo_corpus(**kwargs)
    os.makedirs(directory, exist_ok=True)
    rows = []
    for audio, clip_id, split, attributes in zip(
        corpus.audio, corpus.ids, corpus.splits, corpus.attributes
    ):
        name = f"{clip_id}.wav"
        final = os.path.join(directory, name)
        temporary = os.path.join(directory, f".{name}.tmp")
        soundfile.write(temporary, audio, corpus.sample_rate, subtype="PCM_16", format="WAV")
        os.replace(temporary, final)
        rows.append((name, ";".join(_tags_of(attributes)), split))
    temporary = os.path.join(directory, ".labels.csv.tmp")
    with open(temporary, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(("path", "labels", "split"))
        writer.writerows(rows)
    os.replace(temporary, os.path.join(directory, "labels.csv"))
    return corpus
