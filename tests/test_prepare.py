"""keras_clmr.data.prepare / datasets: real audio trees -> shards + manifest, read back."""

import csv
import json
import multiprocessing
import os
import random

import numpy as np
import pytest
import soundfile

from keras_clmr import audio
from keras_clmr.data import datasets, pipeline, prepare
from keras_clmr.data.demo import write_demo_corpus


def _records(directory, split):
    """(id, position, labels, int16 audio) of every record of ``split``, in shard order."""
    import tensorflow as tf

    spec = {
        "audio": tf.io.FixedLenFeature([], tf.string),
        "id": tf.io.FixedLenFeature([], tf.string),
        "position": tf.io.FixedLenFeature([], tf.int64),
        "labels": tf.io.VarLenFeature(tf.int64),
        "num_samples": tf.io.FixedLenFeature([], tf.int64),
        "split": tf.io.FixedLenFeature([], tf.string),
    }
    out = []
    for record in tf.data.TFRecordDataset(pipeline.shard_files(directory, split)):
        p = tf.io.parse_single_example(record, spec)
        pcm = np.frombuffer(p["audio"].numpy(), dtype="<i2")
        assert len(pcm) == int(p["num_samples"]) and p["split"].numpy().decode() == split
        out.append(
            (
                p["id"].numpy().decode(),
                int(p["position"]),
                sorted(tf.sparse.to_dense(p["labels"]).numpy().tolist()),
                pcm,
            )
        )
    return out


def _tone(seed, seconds, rate):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (
        0.4 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.05 * rng.standard_normal(len(t))
    ).astype(np.float32)


# ----------------------------------------------------------------------------- MTAT

MTAT_LAYOUT = [  # (clip_id, folder) -> split by folder: 0-b train, c valid, d-f test
    ("2", "0"),
    ("6", "1"),
    ("10", "b"),
    ("11", "b"),
    ("15", "c"),
    ("20", "c"),
    ("31", "d"),
    ("40", "f"),
]
EXTRA_TAGS = ("bagpipes", "kazoo", "no singer")


def _write_annotations(path, rows, columns):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file, delimiter="\t", quoting=csv.QUOTE_ALL)
        writer.writerow(["clip_id"] + list(columns) + ["mp3_path"])
        for clip_id, tags, mp3_path in rows:
            writer.writerow([clip_id] + ["1" if c in tags else "0" for c in columns] + [mp3_path])


@pytest.fixture(scope="module")
def mtat_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtat")
    rows, expected = [], {}
    for n, (clip_id, folder) in enumerate(MTAT_LAYOUT):
        tags = {tag for k, tag in enumerate(datasets.MTAT_TAGS) if k % len(MTAT_LAYOUT) == n}
        relative = f"{folder}/artist-album-{n:02d}-song-0-29.mp3"
        os.makedirs(root / folder, exist_ok=True)
        soundfile.write(
            root / relative, _tone(n, 0.6, 16000), 16000, format="MP3", subtype="MPEG_LAYER_III"
        )
        rows.append((clip_id, tags, relative))
        expected[clip_id] = (tags, root / relative)
    # MTAT ships a few broken mp3s: one empty, one with garbage bytes.
    (root / "e").mkdir()
    (root / "e" / "broken-empty-0-29.mp3").write_bytes(b"")
    (root / "e" / "broken-junk-0-29.mp3").write_bytes(np.random.default_rng(5).bytes(3000))
    rows += [
        ("50", {"guitar"}, "e/broken-empty-0-29.mp3"),
        ("51", {"rock"}, "e/broken-junk-0-29.mp3"),
    ]
    columns = list(datasets.MTAT_TAGS) + list(EXTRA_TAGS)
    random.Random(3).shuffle(columns)  # tag order must come from frequency, not column order
    _write_annotations(root / "annotations_final.csv", rows, columns)
    return root, expected


def test_mtat_top_tags_by_frequency(tmp_path):
    # 60 annotation rows; tag k of MTAT_TAGS is on 60 - k rows, extra tags on fewer.
    columns = list(datasets.MTAT_TAGS) + list(EXTRA_TAGS)
    random.Random(0).shuffle(columns)
    rows = []
    for r in range(60):
        tags = {t for k, t in enumerate(datasets.MTAT_TAGS) if r < 60 - k} | (
            {"kazoo"} if r < 5 else set()
        )
        rows.append((str(r), tags, f"0/x{r}.mp3"))
    path = tmp_path / "annotations_final.csv"
    _write_annotations(path, rows, columns)
    assert datasets.top_tags(path) == datasets.MTAT_TAGS
    # A tag more frequent than all of them changes the set: plain frequency order then.
    rows = [(c, tags | {"bagpipes"}, p) for c, tags, p in rows]
    _write_annotations(path, rows, columns)
    assert datasets.top_tags(path) == ("bagpipes",) + datasets.MTAT_TAGS[:49]


def test_mtat_tags_constant():
    assert len(datasets.MTAT_TAGS) == 50 and len(set(datasets.MTAT_TAGS)) == 50
    assert datasets.MTAT_TAGS[:4] == ("guitar", "classical", "slow", "techno")
    assert datasets.MTAT_TAGS[-2:] == ("female voice", "choral")


def test_prepare_mtat(mtat_tree, tmp_path):
    root, expected = mtat_tree
    spec = datasets.mtat(str(root))
    manifest = prepare.prepare(
        spec, str(tmp_path / "out"), workers=1, progress=False, config={"source": str(root)}
    )
    assert manifest["labels"] == list(datasets.MTAT_TAGS) and manifest["task"] == "multilabel"
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {
        "train": 4,
        "valid": 2,
        "test": 2,
    }
    assert manifest["splits"]["test"]["planned"] == 4
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"e/broken-empty-0-29.mp3", "e/broken-junk-0-29.mp3"}
    assert "empty" in reasons["e/broken-empty-0-29.mp3"]
    assert pipeline.is_prepared(str(tmp_path / "out"))
    by_split = {"train": "0123456789ab", "valid": "c", "test": "def"}
    for split, folders in by_split.items():
        table = pipeline.clip_table(str(tmp_path / "out"), split)
        for clip_id, _position, labels, pcm in _records(str(tmp_path / "out"), split):
            assert dict(MTAT_LAYOUT)[clip_id] in folders
            tags, path = expected[clip_id]
            assert [datasets.MTAT_TAGS[i] for i in labels] == [
                t for t in datasets.MTAT_TAGS if t in tags
            ]
            row = table["ids"].index(clip_id)
            np.testing.assert_array_equal(np.flatnonzero(table["labels"][row]), labels)
            # The stored int16 is bit-exactly the quantised decode of the mp3.
            np.testing.assert_array_equal(pcm, audio.to_int16(audio.load(path)))


def test_prepare_mtat_pons_split(mtat_tree, tmp_path):
    root, _ = mtat_tree
    split_dir = tmp_path / "pons"
    split_dir.mkdir()
    annotations = list(csv.reader(open(root / "annotations_final.csv"), delimiter="\t"))[1:]
    (split_dir / "index_mtt.tsv").write_text("".join(f"{r[0]}\t{r[-1]}\n" for r in annotations))
    vector = lambda on: str([1 if k in on else 0 for k in range(50)])  # noqa: E731
    (split_dir / "train_gt_mtt.tsv").write_text(f"2\t{vector({0, 3})}\n6\t{vector({49})}\n")
    (split_dir / "val_gt_mtt.tsv").write_text(f"15\t{vector({1})}\n")
    (split_dir / "test_gt_mtt.tsv").write_text(f"40\t{vector({2, 4})}\n")
    spec = datasets.mtat(str(root), split_dir=str(split_dir))
    assert spec.excluded == len(annotations) - 4
    manifest = prepare.prepare(spec, str(tmp_path / "out"), workers=1, progress=False)
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {
        "train": 2,
        "valid": 1,
        "test": 1,
    }
    table = pipeline.clip_table(str(tmp_path / "out"), "train")
    assert table["ids"] == ["2", "6"]
    np.testing.assert_array_equal(np.flatnonzero(table["labels"][0]), [0, 3])
    np.testing.assert_array_equal(np.flatnonzero(table["labels"][1]), [49])


# ----------------------------------------------------------------------------- GTZAN


@pytest.fixture(scope="module")
def gtzan_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("gtzan")
    genres = ("blues", "jazz", "rock")
    written = {}
    for g, genre in enumerate(genres):
        os.makedirs(root / "genres_original" / genre)
        for i in range(10):
            path = root / "genres_original" / genre / f"{genre}.{i:05d}.wav"
            soundfile.write(path, _tone(100 * g + i, 0.25, 22050), 22050, subtype="PCM_16")
            written[f"{genre}.{i:05d}"] = path
    # GTZAN's jazz.00054 is unreadable; here jazz.00009 is the broken one.
    (root / "genres_original" / "jazz" / "jazz.00009.wav").write_bytes(
        b"RIFF\x00\x00not a wave file"
    )
    return root, written


def test_prepare_gtzan_stratified(gtzan_tree, tmp_path):
    root, written = gtzan_tree
    spec = datasets.gtzan(str(root), seed=3)
    assert spec.labels == datasets.GTZAN_GENRES and spec.task == "multiclass"
    manifest = prepare.prepare(
        spec, str(tmp_path / "out"), workers=2, clips_per_shard=4, progress=False
    )
    planned = {k: v["planned"] for k, v in manifest["splits"].items()}
    assert planned == {"train": 24, "valid": 3, "test": 3}  # 8/1/1 of each genre
    assert [s["id"] for s in manifest["skipped"]] == ["jazz.00009"]
    for split in ("train", "valid", "test"):
        per_genre = {}
        for clip_id, _, labels, pcm in _records(str(tmp_path / "out"), split):
            genre = clip_id.split(".")[0]
            assert labels == [datasets.GTZAN_GENRES.index(genre)]
            per_genre[genre] = per_genre.get(genre, 0) + 1
            # 16-bit wav at 22050 Hz: the stored samples are exactly the file's samples.
            np.testing.assert_array_equal(pcm, soundfile.read(written[clip_id], dtype="int16")[0])
        expected = {"train": 8, "valid": 1, "test": 1}[split]
        assert all(n == expected for g, n in per_genre.items() if g != "jazz")
    table = pipeline.clip_table(str(tmp_path / "out"), "train")
    assert table["labels"].shape == (len(table["ids"]), 10)
    np.testing.assert_array_equal(table["labels"].sum(1), 1.0)
    # The same seed gives the same split; another seed another one.
    assert [c.split for c in datasets.gtzan(str(root), seed=3).clips] == [
        c.split for c in spec.clips
    ]
    assert [c.split for c in datasets.gtzan(str(root), seed=4).clips] != [
        c.split for c in spec.clips
    ]


def test_prepare_gtzan_filtered_lists(gtzan_tree, tmp_path):
    root, _ = gtzan_tree
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train_filtered.txt").write_text(
        "blues/blues.00000.au\nblues.00001\njazz/jazz.00002.wav\n"
    )
    (lists / "valid_filtered.txt").write_text("rock.00003.wav\n")
    (lists / "test_filtered.txt").write_text("rock/rock.00004.au\n\n")
    spec = datasets.gtzan(str(root), split_dir=str(lists))
    assert {c.id: c.split for c in spec.clips} == {
        "blues.00000": "train",
        "blues.00001": "train",
        "jazz.00002": "train",
        "rock.00003": "valid",
        "rock.00004": "test",
    }
    assert spec.excluded == 30 - 5


# ----------------------------------------------------------------------------- folder, CSV


def test_prepare_folder_of_mixed_formats(tmp_path):
    src = tmp_path / "music"
    (src / "sub").mkdir(parents=True)
    formats = {
        "a.wav": ("WAV", "PCM_16", 22050),
        "b.flac": ("FLAC", "PCM_24", 44100),
        "sub/c.ogg": ("OGG", "VORBIS", 22050),
        "sub/d.mp3": ("MP3", "MPEG_LAYER_III", 24000),
    }
    for n, (name, (fmt, subtype, rate)) in enumerate(formats.items()):
        soundfile.write(src / name, _tone(n, 0.5, rate), rate, format=fmt, subtype=subtype)
    (src / "e.wav").write_bytes(b"")
    (src / "notes.txt").write_text("not audio")
    spec = datasets.folder(str(src))
    manifest = prepare.prepare(
        spec, str(tmp_path / "out"), workers=1, progress=False, config={"source": str(src)}
    )
    assert manifest["task"] == "none" and manifest["labels"] == []
    assert list(manifest["splits"]) == ["train"] and manifest["splits"]["train"]["count"] == 4
    assert manifest["skipped"][0]["path"] == "e.wav" and "empty" in manifest["skipped"][0]["reason"]
    records = {r[0]: r[3] for r in _records(str(tmp_path / "out"), "train")}
    assert set(records) == set(formats)
    for name in formats:
        np.testing.assert_array_equal(records[name], audio.to_int16(audio.load(src / name)))
    assert manifest["total_seconds"] == pytest.approx(
        sum(len(v) for v in records.values()) / 22050, abs=1e-3
    )


def test_prepare_csv_demo_corpus_via_cli(tmp_path):
    corpus = write_demo_corpus(str(tmp_path / "demo"), n_clips=8, seconds=1.0)
    from absl import flags

    from keras_clmr.commands import prepare as command

    flag_values = flags.FlagValues()
    command.define_flags(flag_values)
    flag_values(
        [
            "prepare",
            "--dataset=csv",
            f"--source={tmp_path / 'demo'}",
            f"--output={tmp_path / 'out'}",
            "--workers=1",
            "--clips_per_shard=3",
            "--noprogress",
        ]
    )
    command.run_from_flags(flag_values)
    manifest = pipeline.load_manifest(str(tmp_path / "out"))
    present = sorted(t for k, t in enumerate(corpus.tags) if corpus.labels[:, k].any())
    assert manifest["labels"] == present and manifest["task"] == "multilabel"
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {
        s: corpus.splits.count(s) for s in ("train", "valid", "test")
    }
    for split in ("train", "valid", "test"):
        sub = corpus.subset(split)
        table = pipeline.clip_table(str(tmp_path / "out"), split)
        assert table["ids"] == [f"{i}.wav" for i in sub.ids]
        order = [list(corpus.tags).index(t) for t in manifest["labels"]]
        np.testing.assert_array_equal(table["labels"], sub.labels[:, order])


def test_csv_validation(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("x.wav,rock,holdout\n")
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        datasets.csv_dataset(str(tmp_path))
    (tmp_path / "labels.csv").write_text("x.wav,rock\ny.wav,pop\n")
    spec = datasets.csv_dataset(str(tmp_path))
    assert spec.task == "multiclass" and spec.labels == ("pop", "rock")
    assert datasets.csv_dataset(str(tmp_path), vocabulary=["rock", "pop"]).labels == ("rock", "pop")
    with pytest.raises(ValueError, match="not in the given vocabulary"):
        datasets.csv_dataset(str(tmp_path), vocabulary=["rock"])
    (tmp_path / "labels.csv").write_text("x.wav,rock,pop\n")
    with pytest.raises(ValueError, match="unknown split 'pop'.*';'-separated"):
        datasets.csv_dataset(str(tmp_path / "labels.csv"))
    (tmp_path / "labels.csv").write_text("x.wav,rock,pop,train\n")
    with pytest.raises(ValueError, match="separate labels with ';'"):
        datasets.csv_dataset(str(tmp_path / "labels.csv"))


# ----------------------------------------------------------------------------- resume, atomicity


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_demo_corpus(str(root), n_clips=10, seconds=0.5)
    return root


def _prepare_small(corpus, output, **kwargs):
    spec = datasets.csv_dataset(str(corpus))
    return prepare.prepare(
        spec,
        str(output),
        workers=1,
        clips_per_shard=2,
        progress=False,
        config={"source": str(corpus)},
        **kwargs,
    )


def test_resume_after_interrupted_run_gives_same_manifest(small_corpus, tmp_path, monkeypatch):
    reference = _prepare_small(small_corpus, tmp_path / "clean")
    calls = {"n": 0}
    real_decode = prepare._decode

    def dying_decode(job):
        calls["n"] += 1
        if (
            calls["n"] == 6
        ):  # killed while decoding the 6th clip: shards 0-1 done, shard 2 half-written
            raise KeyboardInterrupt
        return real_decode(job)

    monkeypatch.setattr(prepare, "_decode", dying_decode)
    with pytest.raises(KeyboardInterrupt):
        _prepare_small(small_corpus, tmp_path / "out")
    assert not pipeline.is_prepared(str(tmp_path / "out"))
    done = sorted(os.listdir(tmp_path / "out" / "progress"))
    assert done == ["train-00000-of-00004.tfrecord.json", "train-00001-of-00004.tfrecord.json"]
    assert not (tmp_path / "out" / "train-00002-of-00004.tfrecord").exists()  # only a temp file
    monkeypatch.setattr(prepare, "_decode", real_decode)
    calls["n"] = 0
    count = {"n": 0}
    monkeypatch.setattr(
        prepare,
        "_decode",
        lambda job: (count.__setitem__("n", count["n"] + 1), real_decode(job))[1],
    )
    resumed = _prepare_small(small_corpus, tmp_path / "out")
    assert count["n"] == 10 - 4  # finished shards were not decoded again
    assert resumed == reference
    assert json.load(open(tmp_path / "out" / "manifest.json")) == reference
    assert not [f for f in os.listdir(tmp_path / "out") if ".tmp" in f]


def test_pcm_offsets_in_clips_tsv_also_after_markers_of_an_older_version(small_corpus, tmp_path):
    from keras_clmr.data import records

    reference = _prepare_small(small_corpus, tmp_path / "out")
    index = pipeline.pcm_index(str(tmp_path / "out"), "train")
    scanned = [records.scan_shard(path) for path in index["files"]]
    np.testing.assert_array_equal(index["offset"], np.concatenate([o for o, _ in scanned]))
    np.testing.assert_array_equal(index["num_samples"], np.concatenate([n for _, n in scanned]))
    # An earlier version's progress markers list clips without the PCM offset; a resumed run
    # assembles them (empty offsets in clips.tsv) and the pipeline finds the offsets itself.
    marker_path = tmp_path / "out" / "progress" / "train-00000-of-00004.tfrecord.json"
    marker = json.loads(marker_path.read_text())
    marker["clips"] = [clip[:4] for clip in marker["clips"]]
    marker_path.write_text(json.dumps(marker))
    assert _prepare_small(small_corpus, tmp_path / "out") == reference
    with open(tmp_path / "out" / "clips.tsv") as file:
        rows = [r for r in csv.DictReader(file, delimiter="\t") if r["split"] == "train"]
    assert [r["offset"] == "" for r in rows] == [True, True] + [False] * (len(rows) - 2)
    again = pipeline.pcm_index(str(tmp_path / "out"), "train")
    for key in ("file", "offset", "num_samples"):
        np.testing.assert_array_equal(again[key], index[key])


def test_deleted_marker_redoes_the_shard(small_corpus, tmp_path):
    reference = _prepare_small(small_corpus, tmp_path / "out")
    shard = tmp_path / "out" / "valid-00000-of-00001.tfrecord"
    shard.write_bytes(shard.read_bytes()[:100])  # a truncated shard ...
    os.remove(
        tmp_path / "out" / "progress" / "valid-00000-of-00001.tfrecord.json"
    )  # ... without marker
    assert _prepare_small(small_corpus, tmp_path / "out") == reference
    sha = next(s["sha256"] for s in reference["shards"] if s["file"] == shard.name)
    import hashlib

    assert hashlib.sha256(shard.read_bytes()).hexdigest() == sha


def test_other_settings_in_same_output_are_refused(small_corpus, tmp_path):
    _prepare_small(small_corpus, tmp_path / "out")
    spec = datasets.csv_dataset(str(small_corpus))
    with pytest.raises(ValueError, match="other settings"):
        prepare.prepare(
            spec,
            str(tmp_path / "out"),
            workers=1,
            clips_per_shard=3,
            progress=False,
            config={"source": str(small_corpus)},
        )


def test_shard_size_planning(small_corpus):
    spec = datasets.csv_dataset(str(small_corpus))
    # 0.5 s clips at 22050 Hz are ~22 kB of int16: a 1 MiB shard holds ~47 of them.
    plan = prepare.make_plan(spec, shard_mb=1)
    assert 40 <= plan["clips_per_shard"] <= 48
    assert [s["name"] for s in plan["shards"]] == [
        "train-00000-of-00001.tfrecord",
        "valid-00000-of-00001.tfrecord",
        "test-00000-of-00001.tfrecord",
    ]


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs forked workers"
)
def test_a_decoder_process_that_dies_skips_only_its_file(tmp_path, monkeypatch):
    for name in ("a", "b", "crash", "d"):
        soundfile.write(tmp_path / f"{name}.wav", np.zeros(500, np.int16), 22050, subtype="PCM_16")
    real_load = audio.load

    def load(path, **kwargs):
        if "crash" in str(path):
            os._exit(1)  # e.g. a decoder library segfaulting on a malicious file
        return real_load(path, **kwargs)

    monkeypatch.setattr(audio, "load", load)  # inherited by the forked workers
    monkeypatch.setattr(prepare, "DECODE_TIMEOUT", 5)
    manifest = prepare.prepare(
        datasets.folder(str(tmp_path)), str(tmp_path / "out"), workers=2, progress=False
    )
    assert manifest["splits"]["train"]["count"] == 3
    assert [s["id"] for s in manifest["skipped"]] == ["crash.wav"] and "died" in manifest[
        "skipped"
    ][0]["reason"]


def test_records_serialize_the_same_whatever_the_map_order():
    """Shard bytes (and so the manifest's sha256) must not depend on the process.

    Map keys are sorted.
    """
    import tensorflow as tf

    record = prepare._example(tf, 3, "x.wav", [1, 4], "train", b"\x01\x00\x02\x00", 2, 22050)
    example = tf.train.Example.FromString(record)
    reordered = tf.train.Example()
    for key in sorted(example.features.feature, reverse=True):
        reordered.features.feature[key].CopyFrom(example.features.feature[key])
    assert reordered.SerializeToString(deterministic=True) == record
