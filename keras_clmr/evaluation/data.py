"""Evaluation data: labelled clips in memory or in a prepared directory, splits, subsets, crops.

Data is either in memory (``ClipSet``, e.g. the demo corpus) or a prepared directory
(``PreparedSplit`` over ``keras_clmr.data.pipeline``), streamed in bounded memory. Label
fractions are the head of a seeded permutation, so smaller subsets are nested in larger ones.
"""

import dataclasses

import keras
import numpy as np

VALID_SPLIT_NAMES = ("valid", "validation", "val")


@dataclasses.dataclass
class ClipSet:
    """In-memory clips of one split: ``clips`` (mono float32 arrays), ``labels`` [N, C]
    multi-hot or one-hot, ``ids`` and optional version ``groups`` (cover-song eval)."""

    clips: list
    labels: np.ndarray
    ids: list = None
    groups: list = None

    def __post_init__(self):
        self.clips = [np.asarray(c, dtype=np.float32) for c in self.clips]
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.float32)
            if self.labels.ndim != 2 or self.labels.shape[0] != len(self.clips):
                raise ValueError(
                    f"labels must be [n_clips={len(self.clips)}, n_tags], got {self.labels.shape}."
                )
        if self.ids is None:
            self.ids = [f"clip_{i:05d}" for i in range(len(self.clips))]
        if self.groups is not None and len(self.groups) != len(self.clips):
            raise ValueError(f"{len(self.groups)} group ids for {len(self.clips)} clips.")

    def __len__(self):
        return len(self.clips)

    def subset(self, indices):
        indices = [int(i) for i in indices]
        return ClipSet(
            [self.clips[i] for i in indices],
            None if self.labels is None else self.labels[indices],
            [self.ids[i] for i in indices],
            None if self.groups is None else [self.groups[i] for i in indices],
        )


@dataclasses.dataclass
class PreparedSplit:
    """One split of a directory written by ``keras_clmr.data.prepare`` (streamed, not loaded)."""

    data_dir: str
    split: str

    def __post_init__(self):
        from keras_clmr.data import pipeline

        table = pipeline.clip_table(self.data_dir, self.split)
        self.ids = table["ids"]
        self.labels = table["labels"]
        self.num_samples = table["num_samples"]

    def __len__(self):
        return len(self.ids)

    def crops(self, crop_samples, batch_size, shuffle, seed):
        """A tf.data dataset of (random crop [b, crop_samples], labels [b, C]) batches."""
        from keras_clmr.data import pipeline

        return pipeline.supervised_dataset(
            self.data_dir,
            self.split,
            crop_samples=crop_samples,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
        )


def demo_splits(n_clips=96, seconds=6.0, sample_rate=22050, seed=0):
    """The offline demo corpus as ``{"train", "valid", "test"}`` ClipSets, plus tag names."""
    from keras_clmr.data.demo import make_demo_corpus

    corpus = make_demo_corpus(n_clips=n_clips, seconds=seconds, sample_rate=sample_rate, seed=seed)
    splits = {}
    for name in ("train", "valid", "test"):
        part = corpus.subset(name)
        if not len(part.ids):
            raise ValueError(
                f"The demo corpus of {n_clips} clips has no {name!r} clips; use more clips."
            )
        # A "version group" is a piece: same key (root + mode) and progression, any
        # timbre/tempo/rhythm.
        groups = [f"{a['root']}-{a['mode']}" for a in part.attributes]
        splits[name] = ClipSet(list(part.audio), part.labels, list(part.ids), groups)
    return splits, list(corpus.tags)


def prepared_splits(data_dir):
    """``({"train", "valid", "test"}: PreparedSplit, tags, multi_label, sample_rate)`` of a
    prepared directory."""
    from keras_clmr.data import pipeline

    if not pipeline.is_prepared(data_dir):
        raise FileNotFoundError(
            f"{data_dir} is not a prepared directory (no manifest.json). Prepare it first: "
            f"python -m keras_clmr.data.prepare --dataset=... --source=... --output={data_dir}"
        )
    manifest = pipeline.load_manifest(data_dir)
    if manifest.get("task") == "none":
        raise ValueError(
            f"{data_dir} has no labels (task 'none'): it can be pretrained on, not evaluated."
        )
    available = {k for k, v in manifest["splits"].items() if v.get("count")}
    valid = next((s for s in VALID_SPLIT_NAMES if s in available), None)
    missing = [
        s
        for s, present in (
            ("train", "train" in available),
            ("valid", valid),
            ("test", "test" in available),
        )
        if not present
    ]
    if missing:
        raise ValueError(
            f"{data_dir} has no {missing} split(s) (has {sorted(available)}); evaluation needs "
            "train, valid and test splits."
        )
    splits = {
        "train": PreparedSplit(data_dir, "train"),
        "valid": PreparedSplit(data_dir, valid),
        "test": PreparedSplit(data_dir, "test"),
    }
    return (
        splits,
        list(manifest["labels"]),
        manifest.get("task") != "multiclass",
        manifest.get("sample_rate"),
    )


def load_splits(
    dataset="demo", data_dir=None, sample_rate=22050, demo_clips=96, demo_seconds=6.0, demo_seed=0
):
    """The scripts' data: ``(splits, tags, multi_label, description)`` from ``data_dir`` (prepared)
    or the in-memory demo corpus (``dataset="demo"``)."""
    if data_dir:
        splits, tags, multi_label, prepared_rate = prepared_splits(data_dir)
        if prepared_rate and sample_rate and int(prepared_rate) != int(sample_rate):
            raise ValueError(
                f"{data_dir} was prepared at {prepared_rate} Hz but the encoder expects "
                f"{sample_rate} Hz: "
                "prepare the data at the encoder's sample rate."
            )
        description = (
            f"prepared {data_dir}: {len(splits['train'])} train / {len(splits['valid'])} valid / "
            f"{len(splits['test'])} test clips, {len(tags)} labels"
        )
        return splits, tags, multi_label, description
    if dataset != "demo":
        raise ValueError(
            f"Unknown dataset {dataset!r}: use 'demo' or pass a prepared data_dir "
            "(python -m keras_clmr.data.prepare ...)."
        )
    splits, tags = demo_splits(
        n_clips=demo_clips, seconds=demo_seconds, sample_rate=sample_rate, seed=demo_seed
    )
    description = (
        f"demo corpus: {len(splits['train'])} train / {len(splits['valid'])} valid / "
        f"{len(splits['test'])} test clips, {len(tags)} tags"
    )
    return splits, tags, True, description


def label_fraction_indices(n, fraction, seed=0):
    """Sorted indices of a reproducible ``fraction`` of ``n`` training clips (at least one).

    The subset is the head of a seeded permutation, so for one seed smaller fractions are
    nested in larger ones.
    """
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}.")
    if n < 1:
        raise ValueError("No training clips to subsample.")
    size = max(1, int(round(fraction * n)))
    permutation = np.random.default_rng(seed).permutation(n)
    return np.sort(permutation[:size])


def random_crops(clips, crop_samples, crops_per_clip=1, seed=0):
    """``crops_per_clip`` uniform random crops of each clip: (audio [N*k, n], clip index [N*k])."""
    rng = np.random.default_rng(seed)
    out, owner = [], []
    for i, clip in enumerate(clips):
        if len(clip) < crop_samples:
            raise ValueError(
                f"Clip {i} has {len(clip)} samples, fewer than the encoder's {crop_samples}-sample "
                f"input: drop clips shorter than the input (or pad them) before evaluating."
            )
        for _ in range(int(crops_per_clip)):
            start = int(rng.integers(0, len(clip) - crop_samples + 1))
            out.append(clip[start : start + crop_samples])
            owner.append(i)
    return np.stack(out).astype(np.float32), np.asarray(owner)


class CropBatches(keras.utils.PyDataset):
    """(audio [b, n], labels [b, C]): a fresh random crop of every clip each epoch, shuffled.

    Batch ``i`` of epoch ``e`` is a pure function of (seed, e, i).
    """

    def __init__(self, clipset, crop_samples, batch_size, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.clipset, self.crop_samples, self.batch_size = (
            clipset,
            int(crop_samples),
            int(batch_size),
        )
        self.seed, self.epoch = int(seed), 0
        short = [i for i, c in enumerate(clipset.clips) if len(c) < self.crop_samples]
        if short:
            raise ValueError(
                f"{len(short)} training clips are shorter than the {self.crop_samples}-sample "
                "input "
                f"(e.g. clip {short[0]}): drop or pad them."
            )

    def __len__(self):
        return max(1, -(-len(self.clipset) // self.batch_size))

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.clipset))
        chosen = order[index * self.batch_size : (index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x = np.stack([self._crop(self.clipset.clips[i], rng) for i in chosen])
        return x, self.clipset.labels[chosen]

    def _crop(self, clip, rng):
        start = int(rng.integers(0, len(clip) - self.crop_samples + 1))
        return clip[start : start + self.crop_samples]


def train_data(split, crop_samples, batch_size, seed, indices):
    if isinstance(split, ClipSet):
        return CropBatches(split.subset(indices), crop_samples, batch_size, seed=seed)
    if len(indices) == len(split):
        return split.crops(crop_samples, batch_size, shuffle=True, seed=seed)
    import tensorflow as tf

    keep = tf.constant(np.isin(np.arange(len(split)), indices))
    dataset = split.crops(crop_samples, 1, shuffle=False, seed=None).unbatch().enumerate()
    dataset = dataset.filter(lambda i, example: tf.gather(keep, i)).map(lambda i, example: example)
    return dataset.shuffle(len(indices), seed=seed).batch(batch_size).prefetch(-1)


def valid_data(split, crop_samples, batch_size, seed):
    if isinstance(split, ClipSet):
        x, owner = random_crops(split.clips, crop_samples, 1, seed)
        return x, split.labels[owner]
    return split.crops(crop_samples, batch_size, shuffle=False, seed=seed)
