"""Views read straight from the shards' bytes (keras_clmr.data.records + pretraining_dataset's
index reader): exact slices of the decoded clip, independent whole-clip starts, older
preparations, damaged shards."""

import csv
import os
import shutil

import numpy as np
import pytest
import soundfile

from keras_clmr.data import datasets, pipeline, prepare, records

VIEW = 1000
RATE = 22050
CLIPS = {  # name -> samples (train split); "long" is a 2.5-minute track
    "long": RATE * 150,
    "mid": 5000,
    "exact": VIEW,
    "short": VIEW - 1,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(prepared directory, {name: int16 audio}) of noise clips, 2 clips per shard."""
    root = tmp_path_factory.mktemp("views")
    rng = np.random.default_rng(11)
    audio, rows = {}, ["path,labels,split"]
    for name, length in CLIPS.items():
        audio[name] = rng.integers(-32768, 32768, length, dtype=np.int16)
        soundfile.write(root / f"{name}.wav", audio[name], RATE, subtype="PCM_16")
        rows.append(f"{name}.wav,x,train")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    out = root / "prepared"
    prepare.prepare(
        datasets.csv_dataset(str(root)), str(out), workers=1, clips_per_shard=2, progress=False
    )
    return str(out), audio


class _Locator:
    """Finds where a float32 window comes from in the original int16 clips (exact match)."""

    def __init__(self, audio):
        self.names = list(audio)
        self.pcm = np.concatenate([audio[n] for n in self.names]).astype(np.int64)
        self.ends = np.cumsum([len(audio[n]) for n in self.names])
        keys = (self.pcm[:-1] + 32768) * 65536 + (self.pcm[1:] + 32768)
        self.order = np.argsort(keys)
        self.keys = keys[self.order]

    def __call__(self, window):
        """(clip name, start) of ``window``; asserts it is an exact slice of one clip."""
        pcm = np.asarray(window, np.float64) * 32768
        np.testing.assert_array_equal(pcm, np.rint(pcm))  # int16 / 32768 exactly
        pcm = pcm.astype(np.int64)
        key = (pcm[0] + 32768) * 65536 + (pcm[1] + 32768)
        low, high = np.searchsorted(self.keys, [key, key + 1])
        for position in self.order[low:high]:
            clip = int(np.searchsorted(self.ends, position, side="right"))
            first = self.ends[clip - 1] if clip else 0
            if position + len(pcm) <= self.ends[clip] and np.array_equal(
                self.pcm[position : position + len(pcm)], pcm
            ):
                return self.names[clip], int(position - first)
        raise AssertionError("the window is not an exact slice of any clip")


def _pairs(prepared, batches, **kwargs):
    dataset = pipeline.pretraining_dataset(prepared, VIEW, 32, seed=3, deterministic=True, **kwargs)
    return np.concatenate([b.numpy() for b in dataset.take(batches)])


def test_views_are_exact_independent_whole_clip_slices(corpus):
    prepared, audio = corpus
    locate = _Locator(audio)
    pairs = _pairs(prepared, 20)
    assert pairs.shape == (640, 2, VIEW) and pairs.dtype == np.float32
    starts = {name: [] for name in CLIPS}
    for view_1, view_2 in pairs:
        (clip_1, start_1), (clip_2, start_2) = locate(view_1), locate(view_2)
        assert clip_1 == clip_2
        starts[clip_1].append((start_1, start_2))
        # The view is numpy's slice of the original clip, int16 / 32768.
        np.testing.assert_array_equal(
            view_1, audio[clip_1][start_1 : start_1 + VIEW].astype(np.float64) / 32768
        )
    assert not starts["short"]  # shorter than one view: skipped
    assert set(starts["exact"]) == {(0, 0)}  # exactly one view: both views are the whole clip
    assert len(starts["long"]) > 180 and len(starts["mid"]) > 180
    for name in ("long", "mid"):
        u = np.array(starts[name], np.float64) / (CLIPS[name] - VIEW)  # uniform on [0, 1]
        assert u.min() < 0.03 and u.max() > 0.97  # the whole clip, not a 2-view segment
        assert np.all(np.abs(u.mean(axis=0) - 0.5) < 0.08)  # 4 sd of the mean of ~200
        for column in (0, 1):  # Kolmogorov-Smirnov distance to U(0, 1)
            sorted_u = np.sort(u[:, column])
            grid = np.arange(1, len(sorted_u) + 1) / len(sorted_u)
            assert np.max(np.abs(sorted_u - grid)) < 0.13
        assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.25  # independent starts
        assert 0.15 < np.mean(np.abs(u[:, 0] - u[:, 1]) > 0.5) < 0.35  # 0.25 if independent


def test_views_are_reproducible_with_a_seed(corpus):
    prepared, _ = corpus
    first = _pairs(prepared, 3)
    np.testing.assert_array_equal(first, _pairs(prepared, 3))
    other = pipeline.pretraining_dataset(prepared, VIEW, 32, seed=4, deterministic=True)
    assert not np.array_equal(first[:32], next(iter(other)).numpy())


def test_index_comes_from_clips_tsv_and_matches_the_records(corpus):
    import tensorflow as tf

    prepared, audio = corpus
    with open(os.path.join(prepared, "clips.tsv")) as file:
        rows = list(csv.DictReader(file, delimiter="\t"))
    assert all(r["shard"].endswith(".tfrecord") and r["offset"].isdigit() for r in rows)
    index = pipeline.pcm_index(prepared, "train")
    assert len({int(o) % 2 for o in index["offset"]}) == 2  # odd offsets too (unaligned int16)
    for i, name in enumerate(CLIPS):  # clip order = the CSV's order
        with open(index["files"][index["file"][i]], "rb") as file:
            file.seek(index["offset"][i])
            pcm = np.frombuffer(file.read(2 * index["num_samples"][i]), "<i2")
        np.testing.assert_array_equal(pcm, audio[name])
    parsed = [
        tf.io.parse_single_example(r, {"audio": tf.io.FixedLenFeature([], tf.string)})["audio"]
        for r in tf.data.TFRecordDataset(index["files"])
    ]
    assert [p.numpy() for p in parsed] == [audio[n].astype("<i2").tobytes() for n in CLIPS]


def _older_copy(prepared, destination):
    """A copy of ``prepared`` as an earlier version wrote it: clips.tsv without shard/offset."""
    shutil.copytree(prepared, destination)
    path = os.path.join(destination, "clips.tsv")
    with open(path) as file:
        rows = list(csv.DictReader(file, delimiter="\t"))
    with open(path, "w", newline="") as file:
        columns = ["split", "index", "position", "id", "num_samples", "labels"]
        writer = csv.DictWriter(
            file, columns, delimiter="\t", lineterminator="\n", extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)
    return str(destination)


def test_older_preparations_are_read_by_scanning_record_headers(corpus, tmp_path):
    prepared, _ = corpus
    older = _older_copy(prepared, tmp_path / "older")
    new, old = pipeline.pcm_index(prepared, "train"), pipeline.pcm_index(older, "train")
    for key in ("file", "offset", "num_samples", "sizes"):
        np.testing.assert_array_equal(new[key], old[key])
    np.testing.assert_array_equal(_pairs(prepared, 2), _pairs(older, 2))


def test_damaged_shards_name_the_command_that_reprepares(corpus, tmp_path):
    prepared, _ = corpus
    older = _older_copy(prepared, tmp_path / "older")
    shard = pipeline.shard_files(older, "train")[0]
    with open(shard, "r+b") as file:
        file.truncate(os.path.getsize(shard) - 10)
    with pytest.raises(
        records.ShardLayoutError, match="bytes, its manifest says.*keras-clmr prepare"
    ):
        pipeline.pcm_index(older, "train")
    with pytest.raises(records.ShardLayoutError, match="runs past the end"):
        records.scan_shard(shard)
    os.remove(shard)
    with pytest.raises(records.ShardLayoutError, match="missing.*keras-clmr prepare"):
        pipeline.pretraining_dataset(older, VIEW, 2)


def test_reader_choice():
    with pytest.raises(ValueError, match="reader must be one of"):
        pipeline.pretraining_dataset("somewhere", VIEW, 2, reader="mmap")
    with pytest.raises(ValueError, match="remote.*reader='records'"):
        pipeline.pretraining_dataset("gs://bucket/prepared", VIEW, 2, reader="index")


def test_audio_span_finds_the_field_in_any_example():
    import tensorflow as tf

    pcm = np.arange(-5, 300, dtype="<i2").tobytes()
    feature = tf.train.Feature
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "aaa": feature(int64_list=tf.train.Int64List(value=[1, 2, 300])),
                "audio": feature(bytes_list=tf.train.BytesList(value=[pcm, b"second"])),
                "name": feature(bytes_list=tf.train.BytesList(value=[b"x" * 200])),
                "gain": feature(float_list=tf.train.FloatList(value=[0.5])),
            }
        )
    )
    for serialized in (example.SerializeToString(), example.SerializeToString(deterministic=True)):
        offset, length = records.audio_span(serialized)
        assert serialized[offset : offset + length] == pcm
    with pytest.raises(records.ShardLayoutError, match="no bytes feature 'audio'"):
        records.audio_span(tf.train.Example().SerializeToString())


def test_view_reader_pads_short_clips_and_is_seeded(tmp_path):
    path = tmp_path / "raw.bin"
    pcm = np.arange(0, 700, dtype="<i2")
    path.write_bytes(b"\x07" + pcm.tobytes())  # odd offset
    reader = records.ViewReader([str(path)], 500, 2)
    lengths = np.array([700, 300])
    views = reader(np.array([0, 0]), np.array([1, 1]), lengths, np.array([5, 6]))
    assert views.shape == (2, 2, 500) and views.ctypes.data % 64 == 0
    starts = reader.starts(lengths, [5, 6])
    for view, start in zip(views[0], starts[0]):
        np.testing.assert_array_equal(view, pcm[start : start + 500] / 32768)
    for view in views[1]:  # a 300-sample clip: the whole clip, then zeros
        np.testing.assert_array_equal(view[:300], pcm[:300] / 32768)
        np.testing.assert_array_equal(view[300:], 0.0)
    np.testing.assert_array_equal(
        views, reader(np.array([0, 0]), np.array([1, 1]), lengths, [5, 6])
    )


def test_view_reader_without_preadv_reads_the_same_views(tmp_path, monkeypatch):
    """Where os.preadv is missing (macOS), the os.pread fallback gives the same views."""
    path = tmp_path / "raw.bin"
    pcm = np.arange(-350, 350, dtype="<i2")
    path.write_bytes(b"\x07" + pcm.tobytes())  # odd offset
    lengths, seeds = np.array([700, 300]), np.array([5, 6])
    expected = records.ViewReader([str(path)], 500, 2)(
        np.array([0, 0]), np.array([1, 1]), lengths, seeds
    )
    monkeypatch.delattr(records.os, "preadv")
    views = records.ViewReader([str(path)], 500, 2)(
        np.array([0, 0]), np.array([1, 1]), lengths, seeds
    )
    np.testing.assert_array_equal(views, expected)
    start = records.ViewReader([str(path)], 500, 2).starts(lengths, seeds)[0, 0]
    np.testing.assert_array_equal(views[0, 0], pcm[start : start + 500] / 32768)
