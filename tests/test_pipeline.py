"""keras_clmr.data.pipeline on a prepared set of int16 'ramp' clips whose samples say where
they are from.

Clip i holds int16 values OFFSETS[i] + t, so any window of it identifies the clip and start.
"""

import numpy as np
import pytest
import soundfile

from keras_clmr.data import datasets, pipeline, prepare

LENGTHS = [999, 1000, 2500, 3000, 4100, 5200, 640, 3333]  # train: all but the last two
OFFSETS = [-30000 + 7000 * i for i in range(len(LENGTHS))]
LABELS = ["a", "b;c", "c", "a;b", "b", "c", "a", "b;c"]
SPLITS = ["train"] * 6 + ["test"] * 2


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("ramps")
    rows = ["path,labels,split"]
    for i, (n, offset) in enumerate(zip(LENGTHS, OFFSETS)):
        soundfile.write(
            root / f"c{i}.wav", (offset + np.arange(n)).astype(np.int16), 22050, subtype="PCM_16"
        )
        rows.append(f"c{i}.wav,{LABELS[i]},{SPLITS[i]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    out = root / "prepared"
    prepare.prepare(
        datasets.csv_dataset(str(root)), str(out), workers=1, clips_per_shard=2, progress=False
    )
    return str(out)


def _identify(window):
    """(clip, start) of a float window taken from a ramp clip; asserts it is contiguous."""
    pcm = np.rint(np.asarray(window, np.float64) * 32768).astype(np.int64)
    np.testing.assert_array_equal(np.diff(pcm), 1)
    clip = int(np.argmin([abs(pcm[0] - o) if pcm[0] >= o else 1 << 30 for o in OFFSETS]))
    start = int(pcm[0] - OFFSETS[clip])
    assert 0 <= start and start + len(pcm) <= LENGTHS[clip]
    return clip, start


def _multi_hot(i):
    return np.array([float(t in LABELS[i].split(";")) for t in "abc"], np.float32)


def test_is_prepared_and_manifest(prepared, tmp_path):
    assert pipeline.is_prepared(prepared)
    assert not pipeline.is_prepared(str(tmp_path)) and not pipeline.is_prepared(
        str(tmp_path / "missing")
    )
    manifest = pipeline.load_manifest(prepared)
    assert manifest["labels"] == ["a", "b", "c"] and manifest["task"] == "multilabel"
    assert manifest["sample_rate"] == 22050 and manifest["splits"]["train"]["count"] == 6
    with pytest.raises(FileNotFoundError, match="not a prepared directory"):
        pipeline.load_manifest(str(tmp_path))
    with pytest.raises(ValueError, match="split 'valid' has no clips"):
        pipeline.shard_files(prepared, "valid")


def test_pretraining_segments_are_random_windows_of_long_enough_clips(prepared):
    dataset = pipeline.pretraining_dataset(
        prepared,
        segment_samples=1000,
        batch_size=4,
        seed=0,
        shuffle_buffer=8,
        view_source="segment",
    )
    seen = {}
    for batch in dataset.take(40):
        assert batch.shape == (4, 1000) and batch.dtype.name == "float32"
        for window in batch.numpy():
            clip, start = _identify(window)
            seen.setdefault(clip, set()).add(start)
    assert set(seen) == {1, 2, 3, 4, 5}  # clip 0 (999 samples) is shorter than a segment: skipped
    assert seen[1] == {0}
    assert len(seen[5]) > 5 and max(seen[5]) > 3000 and min(seen[5]) < 1200


def test_pretraining_pads_short_clips_when_asked(prepared):
    dataset = pipeline.pretraining_dataset(
        prepared,
        segment_samples=1200,
        batch_size=6,
        seed=1,
        short_clips="pad",
        repeat=False,
        shuffle_buffer=0,
        view_source="segment",
    )
    batches = list(dataset)
    assert len(batches) == 1  # 6 clips, drop_remainder
    windows = batches[0].numpy()
    padded = [w for w in windows if w[-1] == 0.0]
    assert len(padded) == 2  # clips 0 and 1 are shorter than 1200 samples
    for w in padded:
        n = 999 if np.count_nonzero(w) <= 999 else 1000
        _identify(w[:n])
        np.testing.assert_array_equal(w[n:], 0.0)


def test_pretraining_is_reproducible_with_a_seed(prepared):
    def first(seed):
        dataset = pipeline.pretraining_dataset(
            prepared, 800, 4, seed=seed, deterministic=True, shuffle_buffer=4, view_source="segment"
        )
        return np.concatenate([b.numpy() for b in dataset.take(5)])

    np.testing.assert_array_equal(first(7), first(7))
    assert not np.array_equal(first(7), first(8))


@pytest.mark.parametrize("reader", ["index", "records"])
def test_pretraining_shards_files_across_input_pipelines(prepared, reader):
    import tensorflow as tf

    clips = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker)
        dataset = pipeline.pretraining_dataset(
            prepared, 500, 2, seed=0, input_context=context, view_source="segment", reader=reader
        )
        clips.append({_identify(w)[0] for b in dataset.take(20) for w in b.numpy()})
    assert clips[0] and clips[1] and not clips[0] & clips[1]
    assert clips[0] | clips[1] == set(range(6))


@pytest.mark.parametrize("pad_last", [False, True])
def test_evaluation_chunks_cover_each_clip_in_order(prepared, pad_last):
    chunk = 1000
    table = pipeline.clip_table(prepared, "train")
    assert table["ids"] == [f"c{i}.wav" for i in range(6)]
    np.testing.assert_array_equal(table["num_samples"], LENGTHS[:6])
    np.testing.assert_array_equal(table["labels"], np.stack([_multi_hot(i) for i in range(6)]))
    batches = list(
        pipeline.evaluation_dataset(
            prepared, "train", chunk_samples=chunk, batch_size=3, pad_last=pad_last
        )
    )
    assert all(b["audio"].shape[1] == chunk for b in batches)
    index = np.concatenate([b["clip_index"].numpy() for b in batches])
    audio = np.concatenate([b["audio"].numpy() for b in batches])
    labels = np.concatenate([b["labels"].numpy() for b in batches])
    expected_counts = [pipeline.chunk_count(n, chunk, pad_last) for n in LENGTHS[:6]]
    assert expected_counts == ([1, 1, 3, 3, 5, 6] if pad_last else [1, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(np.bincount(index, minlength=6), expected_counts)
    assert np.all(np.diff(index) >= 0)
    for i in range(6):
        rows = audio[index == i].reshape(-1)
        full = (OFFSETS[i] + np.arange(LENGTHS[i])) / 32768.0
        n = min(len(rows), LENGTHS[i])
        np.testing.assert_array_equal(rows[:n], full[:n].astype(np.float32))
        np.testing.assert_array_equal(rows[n:], 0.0)  # padding only (short clip or pad_last)
        np.testing.assert_array_equal(
            labels[index == i], np.tile(_multi_hot(i), (expected_counts[i], 1))
        )


def test_supervised_crops_with_labels(prepared):
    dataset = pipeline.supervised_dataset(prepared, "test", crop_samples=600, batch_size=2, seed=0)
    ((x, y),) = list(dataset)
    assert x.shape == (2, 600) and y.shape == (2, 3)
    for window, label in zip(x.numpy(), y.numpy()):
        clip, _ = _identify(window)
        assert clip in (6, 7)
        np.testing.assert_array_equal(label, _multi_hot(clip))
    train = pipeline.supervised_dataset(prepared, "train", crop_samples=1500, batch_size=8, seed=0)
    ((x, y),) = list(train)
    assert x.shape == (6, 1500)  # one crop per clip; short clips zero-padded
    assert sorted(int(np.count_nonzero(w)) for w in x.numpy())[:2] == [999, 1000]


def test_supervised_needs_labels(tmp_path):
    for i in range(2):
        soundfile.write(tmp_path / f"{i}.wav", np.zeros(100, np.int16), 22050, subtype="PCM_16")
    prepare.prepare(
        datasets.folder(str(tmp_path)), str(tmp_path / "out"), workers=1, progress=False
    )
    with pytest.raises(ValueError, match="no labels"):
        pipeline.supervised_dataset(str(tmp_path / "out"), "train")


def test_several_segments_per_clip_read(prepared):
    dataset = pipeline.pretraining_dataset(
        prepared,
        1000,
        3,
        seed=2,
        repeat=False,
        shuffle_buffer=0,
        segments_per_clip=3,
        deterministic=True,
        view_source="segment",
    )
    batches = [b.numpy() for b in dataset]
    assert len(batches) == 5  # 5 clips of >= 1000 samples, 3 segments each
    clips = [{_identify(w)[0] for w in batch} for batch in batches]
    assert all(len(c) == 1 for c in clips) and set().union(*clips) == {1, 2, 3, 4, 5}
    starts = [_identify(w)[1] for batch in batches for w in batch if _identify(w)[0] == 5]
    assert len(set(starts)) > 1  # independent starts within a clip


@pytest.mark.parametrize("reader", ["index", "records"])
def test_tf_distribute_auto_shards_by_file(prepared, reader):
    """What tf.distribute does to the dataset on each of 2 workers.

    Every worker reads its own shards.
    """
    try:
        from tensorflow.python.data.experimental.ops.distribute import _AutoShardDataset
    except ImportError:  # private TF API; the behaviour is covered by input_context otherwise
        pytest.skip("tf.data auto-shard internals not available")
    seen = []
    for worker in range(2):
        dataset = pipeline.pretraining_dataset(
            prepared, 500, 2, seed=0, shuffle_buffer=64, view_source="segment", reader=reader
        )
        dataset = _AutoShardDataset(dataset, num_workers=2, index=worker)
        seen.append({_identify(w)[0] for b in dataset.take(20) for w in b.numpy()})
    assert seen == [{0, 1, 4, 5}, {2, 3}]  # 3 train shards of 2 clips: shards 0 and 2, shard 1


def test_segments_longer_than_every_clip_are_refused(prepared):
    with pytest.raises(ValueError, match="no 'train' clip has 6000 samples.*longest has 5200"):
        pipeline.pretraining_dataset(prepared, 6000, 2, view_source="segment")
    padded = pipeline.pretraining_dataset(
        prepared, 6000, 2, short_clips="pad", view_source="segment"
    )
    assert padded.element_spec.shape[1] == 6000


# Whole-clip views (the default): two independent crops per clip from anywhere in the clip.


@pytest.mark.parametrize("reader", ["index", "records"])
def test_clip_views_are_independent_crops_of_the_whole_clip(prepared, reader):
    dataset = pipeline.pretraining_dataset(
        prepared, 1000, 4, seed=0, shuffle_buffer=8, reader=reader
    )
    assert dataset.element_spec.shape.as_list() == [4, 2, 1000]
    gaps, starts = [], {}
    for batch in dataset.take(60):
        for pair in batch.numpy():
            (clip_1, start_1), (clip_2, start_2) = _identify(pair[0]), _identify(pair[1])
            assert clip_1 == clip_2  # both views come from the same clip
            starts.setdefault(clip_1, set()).update((start_1, start_2))
            gaps.append(abs(start_1 - start_2))
    assert set(starts) == {1, 2, 3, 4, 5}  # clip 0 (999 samples) is shorter than a view: skipped
    assert starts[1] == {0}  # exactly one view long: both views are the whole clip
    # Clip 5 has 5200 samples: starts cover the whole clip, not a 2 x 1000 segment.
    assert max(starts[5]) > 4000 and min(starts[5]) < 200
    assert max(gaps) > 2500


def test_clip_views_log_skipped_and_identical_clips(prepared, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        pipeline.pretraining_dataset(prepared, 1000, 2, seed=0)
    text = caplog.text
    assert "1 of 6 'train' clips are shorter than one 1000-sample view and are skipped" in text
    assert "1 'train' clips are exactly one 1000-sample view long" in text
    assert pipeline.short_clip_counts(prepared, "train", 1000) == {
        "clips": 6,
        "shorter": 1,
        "exactly_one_view": 1,
        "longest": 5200,
    }


@pytest.mark.parametrize("reader", ["index", "records"])
def test_clip_views_pad_short_clips_when_asked(prepared, reader):
    dataset = pipeline.pretraining_dataset(
        prepared, 1200, 6, seed=1, short_clips="pad", repeat=False, shuffle_buffer=0, reader=reader
    )
    (batch,) = [b.numpy() for b in dataset]
    padded = [pair for pair in batch if pair[0][-1] == 0.0]
    assert len(padded) == 2
    for pair in padded:
        np.testing.assert_array_equal(pair[0], pair[1])  # a padded clip is one view long


def test_clip_views_longer_than_every_clip_are_refused_not_hung(prepared):
    with pytest.raises(ValueError, match="no 'train' clip has 6000 samples"):
        pipeline.pretraining_dataset(prepared, 6000, 2)
    with pytest.raises(ValueError, match="view_source"):
        pipeline.pretraining_dataset(prepared, 1000, 2, view_source="whole")


@pytest.mark.parametrize("reader", ["index", "records"])
def test_clip_view_pairs_several_per_clip_read(prepared, reader):
    dataset = pipeline.pretraining_dataset(
        prepared,
        1000,
        3,
        seed=2,
        repeat=False,
        shuffle_buffer=0,
        segments_per_clip=3,
        deterministic=True,
        reader=reader,
    )
    batches = [b.numpy() for b in dataset]
    assert len(batches) == 5 and batches[0].shape == (3, 2, 1000)
    for batch in batches:
        assert len({_identify(w)[0] for pair in batch for w in pair}) == 1


def test_in_memory_clip_view_batches(caplog):
    import logging

    from keras_clmr.data.views import ClipViewBatches

    clips = [(1000 * i + np.arange(n)).astype(np.float32) for i, n in enumerate([50, 100, 900])]
    with caplog.at_level(logging.WARNING):
        data = ClipViewBatches(clips, 100, 4, steps_per_epoch=30, seed=3)
    assert data.skipped == 1 and "1 of 3 clips are shorter than one 100-sample view" in caplog.text
    assert "1 clips are exactly one 100-sample view long" in caplog.text
    batch = data.batch_at(0, 0)
    assert batch.shape == (4, 2, 100)
    np.testing.assert_array_equal(
        batch, data.batch_at(0, 0)
    )  # pure function of (seed, epoch, index)
    starts = []
    for index in range(30):
        for pair in data.batch_at(0, index):
            assert np.all(np.diff(pair, axis=1) == 1) and pair[0, 0] // 1000 == pair[1, 0] // 1000
            if pair[0, 0] >= 2000:
                starts.append((pair[0, 0] - 2000, pair[1, 0] - 2000))
            else:
                np.testing.assert_array_equal(pair[0], pair[1])  # the one-view clip
    starts = np.array(starts)
    assert (
        starts.max() > 700
        and starts.min() < 100
        and np.abs(starts[:, 0] - starts[:, 1]).max() > 500
    )
    padded = ClipViewBatches(clips, 100, 2, steps_per_epoch=1, seed=0, short_clips="pad")
    assert padded.skipped == 0 and padded.padded == 1 and len(padded.clips) == 3
    with pytest.raises(ValueError, match="All 3 clips are shorter"):
        ClipViewBatches(clips, 1000, 2)


def test_pretrainer_takes_view_pairs_without_recropping():
    import keras

    from keras_clmr.models import CLMR, SampleCNN

    encoder = SampleCNN(channels=[4] * 11)
    model = CLMR(encoder=encoder, projection_dim=8, seed=0)
    pairs = np.random.default_rng(0).standard_normal((2, 2, 59049)).astype(np.float32)
    view_1, view_2 = model.views(keras.ops.convert_to_tensor(pairs), training=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(view_1), pairs[:, 0])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(view_2), pairs[:, 1])
    segment_views = model.views(keras.ops.convert_to_tensor(pairs[:, 0]), training=False)
    assert tuple(segment_views[0].shape) == (2, 59049)
    with pytest.raises(ValueError, match=r"\[batch, 2, samples\]"):
        model.build((2, 3, 59049))
