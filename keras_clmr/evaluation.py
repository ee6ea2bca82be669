"""Downstream evaluation as the CLMR / PEMR papers do it: probes, fine-tuning, supervised
baseline, clip-level testing, cover-song identification and result files.

Protocol (clmr_reference.md §4, CLMR master ``linear_evaluation.py`` / ``clmr/evaluation.py``):

* **Linear / MLP probe** (``train_probe(..., finetune=False)``): the encoder is frozen; one
  random crop per training and validation clip (``crops_per_clip``) is encoded **once**, and
  the head is trained on these static features with Adam (lr 1e-3, weight decay 1e-6),
  ReduceLROnPlateau(x0.1, patience 5) and EarlyStopping(patience 10) on the validation loss,
  up to 200 epochs, batch 48. We restore the best-validation weights at the end (CLMR keeps
  the last ones; restoring the best is the usual reading of early stopping and never worse
  on validation).
* **Fine-tuning** (``finetune=True``): same head and optimiser, encoder trainable, a fresh
  random crop per clip each epoch.
* **Supervised baseline** (``train_supervised``): a randomly initialised SampleCNN trained end
  to end with dropout 0.5 before the head, SGD (Nesterov momentum 0.9, weight decay 1e-6),
  ReduceLROnPlateau(x0.2, patience 5) and EarlyStopping on the validation loss
  (CLMR ``SupervisedLearning``). Keras' weight decay is decoupled; at 1e-6 the difference
  from PyTorch's L2-in-the-gradient is negligible.
* **Test**: each clip is cut into non-overlapping chunks of the encoder's input length
  (last partial chunk dropped), per-chunk sigmoid (softmax) outputs are averaged per clip,
  then the tag-wise (and clip-wise) AUCs of ``keras_clmr.metrics`` are computed.
* **Label fractions** (``label_fraction_indices``): a seeded permutation of the training
  clips; the first ``round(f * n)`` are kept, so subsets are reproducible and nested
  (the 1 % subset is inside the 10 % subset for the same seed).

Data is either in memory (``ClipSet``, e.g. the demo corpus) or a prepared directory
(``PreparedSplit`` over ``keras_clmr.data.pipeline``), streamed in bounded memory.
"""

import csv
import dataclasses
import datetime
import hashlib
import io
import json
import os
import tempfile

import keras
import numpy as np

from keras_clmr import metrics as metrics_lib
from keras_clmr.models.tagger import MusicTagger, build_head, map_chunks, non_overlapping_chunks

LINEAR_EVAL_DEFAULTS = dict(epochs=200, learning_rate=1e-3, weight_decay=1e-6, batch_size=48,
                            patience=10, lr_patience=5, lr_factor=0.1)
SUPERVISED_DEFAULTS = dict(epochs=200, learning_rate=0.01, weight_decay=1e-6, batch_size=48,
                           patience=10, lr_patience=5, lr_factor=0.2, dropout=0.5, momentum=0.9)
VALID_SPLIT_NAMES = ("valid", "validation", "val")


# ------------------------------------------------------------------------------- data


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
                raise ValueError(f"labels must be [n_clips={len(self.clips)}, n_tags], got {self.labels.shape}.")
        if self.ids is None:
            self.ids = [f"clip_{i:05d}" for i in range(len(self.clips))]
        if self.groups is not None and len(self.groups) != len(self.clips):
            raise ValueError(f"{len(self.groups)} group ids for {len(self.clips)} clips.")

    def __len__(self):
        return len(self.clips)

    def subset(self, indices):
        indices = [int(i) for i in indices]
        return ClipSet([self.clips[i] for i in indices],
                       None if self.labels is None else self.labels[indices],
                       [self.ids[i] for i in indices],
                       None if self.groups is None else [self.groups[i] for i in indices])


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


def demo_splits(n_clips=96, seconds=6.0, sample_rate=22050, seed=0):
    """The offline demo corpus as ``{"train", "valid", "test"}`` ClipSets, plus tag names."""
    from keras_clmr.data.demo import make_demo_corpus

    corpus = make_demo_corpus(n_clips=n_clips, seconds=seconds, sample_rate=sample_rate, seed=seed)
    splits = {}
    for name in ("train", "valid", "test"):
        part = corpus.subset(name)
        if not len(part.ids):
            raise ValueError(f"The demo corpus of {n_clips} clips has no {name!r} clips; use more clips.")
        # A "version group" is a piece: same key (root + mode) and progression, any timbre/tempo/rhythm.
        groups = [f"{a['root']}-{a['mode']}" for a in part.attributes]
        splits[name] = ClipSet(list(part.audio), part.labels, list(part.ids), groups)
    return splits, list(corpus.tags)


def prepared_splits(data_dir):
    """``({"train", "valid", "test"}: PreparedSplit, tags, multi_label, sample_rate)`` of a prepared dir."""
    from keras_clmr.data import pipeline

    if not pipeline.is_prepared(data_dir):
        raise FileNotFoundError(
            f"{data_dir} is not a prepared directory (no manifest.json). Prepare it first: "
            f"python -m keras_clmr.data.prepare --dataset=... --source=... --output={data_dir}")
    manifest = pipeline.load_manifest(data_dir)
    if manifest.get("task") == "none":
        raise ValueError(f"{data_dir} has no labels (task 'none'): it can be pretrained on, not evaluated.")
    available = {k for k, v in manifest["splits"].items() if v.get("count")}
    valid = next((s for s in VALID_SPLIT_NAMES if s in available), None)
    missing = [s for s, present in (("train", "train" in available), ("valid", valid), ("test", "test" in available))
               if not present]
    if missing:
        raise ValueError(f"{data_dir} has no {missing} split(s) (has {sorted(available)}); evaluation needs "
                         "train, valid and test splits.")
    splits = {"train": PreparedSplit(data_dir, "train"), "valid": PreparedSplit(data_dir, valid),
              "test": PreparedSplit(data_dir, "test")}
    return splits, list(manifest["labels"]), manifest.get("task") != "multiclass", manifest.get("sample_rate")


def load_splits(dataset="demo", data_dir=None, sample_rate=22050, demo_clips=96, demo_seconds=6.0, demo_seed=0):
    """The scripts' data: ``(splits, tags, multi_label, description)`` from ``data_dir`` (prepared)
    or the in-memory demo corpus (``dataset="demo"``)."""
    if data_dir:
        splits, tags, multi_label, prepared_rate = prepared_splits(data_dir)
        if prepared_rate and sample_rate and int(prepared_rate) != int(sample_rate):
            raise ValueError(f"{data_dir} was prepared at {prepared_rate} Hz but the encoder expects {sample_rate} Hz: "
                             "prepare the data at the encoder's sample rate.")
        description = (f"prepared {data_dir}: {len(splits['train'])} train / {len(splits['valid'])} valid / "
                       f"{len(splits['test'])} test clips, {len(tags)} labels")
        return splits, tags, multi_label, description
    if dataset != "demo":
        raise ValueError(f"Unknown dataset {dataset!r}: use 'demo' or pass a prepared data_dir "
                         "(python -m keras_clmr.data.prepare ...).")
    splits, tags = demo_splits(n_clips=demo_clips, seconds=demo_seconds, sample_rate=sample_rate, seed=demo_seed)
    description = (f"demo corpus: {len(splits['train'])} train / {len(splits['valid'])} valid / "
                   f"{len(splits['test'])} test clips, {len(tags)} tags")
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
            raise ValueError(f"Clip {i} has {len(clip)} samples, fewer than the encoder's {crop_samples}-sample "
                             f"input: drop clips shorter than the input (or pad them) before evaluating.")
        for _ in range(int(crops_per_clip)):
            start = int(rng.integers(0, len(clip) - crop_samples + 1))
            out.append(clip[start:start + crop_samples])
            owner.append(i)
    return np.stack(out).astype(np.float32), np.asarray(owner)


def _predict_fixed(model, x, batch_size):
    """``model.predict_on_batch`` over ``x`` in batches of exactly ``batch_size`` (zero-padded)."""
    x = np.asarray(x, dtype=np.float32)
    outputs = []
    for start in range(0, x.shape[0], batch_size):
        batch = x[start:start + batch_size]
        n = batch.shape[0]
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:], np.float32)])
        outputs.append(np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(batch)))[:n])
    return np.concatenate(outputs) if outputs else np.zeros((0,))


def embed_crops(encoder, split, crops_per_clip=1, seed=0, batch_size=64):
    """Static probe features: (features [N*k, D], labels [N*k, C], clip index [N*k])."""
    n = int(encoder.input_samples)
    if isinstance(split, ClipSet):
        audio, owner = random_crops(split.clips, n, crops_per_clip, seed)
        return _predict_fixed(encoder, audio, batch_size), split.labels[owner], owner
    from keras_clmr.data import pipeline

    features, labels = [], []
    for k in range(int(crops_per_clip)):
        dataset = pipeline.supervised_dataset(split.data_dir, split.split, crop_samples=n, batch_size=batch_size,
                                              shuffle=False, seed=seed * 1009 + k)
        for x, y in dataset.as_numpy_iterator():
            features.append(_predict_fixed(encoder, x, batch_size))
            labels.append(y)
    owner = np.tile(np.arange(len(split)), int(crops_per_clip))
    return np.concatenate(features), np.concatenate(labels), owner


def chunk_outputs(predict_batch, split, chunk_samples, batch_size=64):
    """Apply ``predict_batch`` to every non-overlapping chunk of every clip: list of [k_i, ...]."""
    if isinstance(split, ClipSet):
        return map_chunks(predict_batch, split.clips, chunk_samples, batch_size)
    from keras_clmr.data import pipeline

    per_clip = [[] for _ in range(len(split))]
    dataset = pipeline.evaluation_dataset(split.data_dir, split.split, chunk_samples=chunk_samples,
                                          batch_size=batch_size)
    for batch in dataset.as_numpy_iterator():
        audio = batch["audio"]
        n = audio.shape[0]
        if n < batch_size:
            audio = np.concatenate([audio, np.zeros((batch_size - n, chunk_samples), np.float32)])
        result = np.asarray(predict_batch(audio))[:n]
        for row, index in zip(result, batch["clip_index"]):
            per_clip[int(index)].append(row)
    return [np.stack(rows) for rows in per_clip]


def clip_embeddings(encoder, split, batch_size=64):
    """Per-clip chunk embeddings: list of [k_i, D] (k_i non-overlapping chunks of clip i)."""
    return chunk_outputs(lambda x: keras.ops.convert_to_numpy(encoder.predict_on_batch(x)),
                         split, int(encoder.input_samples), batch_size)


def _activation(logits, multi_label):
    logits = np.asarray(logits, dtype=np.float64)
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def predict_clips(tagger, split, batch_size=64):
    """Clip-level probabilities [N, C] of a MusicTagger: mean of per-chunk probabilities."""
    per_clip = chunk_outputs(lambda x: keras.ops.convert_to_numpy(tagger.predict_on_batch(x)),
                             split, tagger.input_samples, batch_size)
    return np.stack([p.mean(axis=0) for p in per_clip])


# ------------------------------------------------------------------------------- training


def _loss(multi_label):
    if multi_label:
        return keras.losses.BinaryCrossentropy(from_logits=True)
    return keras.losses.CategoricalCrossentropy(from_logits=True)


def _callbacks(patience, lr_patience, lr_factor):
    return [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=lr_factor, patience=lr_patience,
                                              verbose=0),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)]


def _history_summary(history):
    val = [float(v) for v in history.history.get("val_loss", [])]
    return {"epochs_run": len(val), "best_epoch": int(np.argmin(val)) + 1 if val else None,
            "best_val_loss": min(val) if val else None,
            "train_loss": [float(v) for v in history.history.get("loss", [])], "val_loss": val}


def fit_head(train_x, train_y, valid_x, valid_y, *, head="linear", multi_label=True, epochs=200,
             learning_rate=1e-3, weight_decay=1e-6, batch_size=48, patience=10, lr_patience=5,
             lr_factor=0.1, hidden_dim=512, seed=0, jit_compile="auto", run_eagerly=False, verbose=0):
    """Train a probe head on static features (CLMR's linear evaluation). Returns (head, history dict)."""
    keras.utils.set_random_seed(int(seed))
    model = build_head(train_x.shape[1], train_y.shape[1], head=head, hidden_dim=hidden_dim)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, weight_decay=weight_decay or None),
                  loss=_loss(multi_label), jit_compile=jit_compile, run_eagerly=run_eagerly)
    history = model.fit(train_x, train_y, validation_data=(valid_x, valid_y), epochs=int(epochs),
                        batch_size=int(batch_size), shuffle=True, verbose=verbose,
                        callbacks=_callbacks(patience, lr_patience, lr_factor))
    return model, _history_summary(history)


class CropBatches(keras.utils.PyDataset):
    """(audio [b, n], labels [b, C]): a fresh random crop of every clip each epoch, shuffled.

    Batch ``i`` of epoch ``e`` is a pure function of (seed, e, i).
    """

    def __init__(self, clipset, crop_samples, batch_size, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.clipset, self.crop_samples, self.batch_size = clipset, int(crop_samples), int(batch_size)
        self.seed, self.epoch = int(seed), 0
        short = [i for i, c in enumerate(clipset.clips) if len(c) < self.crop_samples]
        if short:
            raise ValueError(f"{len(short)} training clips are shorter than the {self.crop_samples}-sample input "
                             f"(e.g. clip {short[0]}): drop or pad them.")

    def __len__(self):
        return max(1, -(-len(self.clipset) // self.batch_size))

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.clipset))
        chosen = order[index * self.batch_size:(index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x = np.stack([self._crop(self.clipset.clips[i], rng) for i in chosen])
        return x, self.clipset.labels[chosen]

    def _crop(self, clip, rng):
        start = int(rng.integers(0, len(clip) - self.crop_samples + 1))
        return clip[start:start + self.crop_samples]


def _train_data(split, crop_samples, batch_size, seed, indices):
    if isinstance(split, ClipSet):
        return CropBatches(split.subset(indices), crop_samples, batch_size, seed=seed)
    from keras_clmr.data import pipeline

    if len(indices) == len(split):
        return pipeline.supervised_dataset(split.data_dir, split.split, crop_samples=crop_samples,
                                           batch_size=batch_size, shuffle=True, seed=seed)
    import tensorflow as tf

    keep = tf.constant(np.isin(np.arange(len(split)), indices))
    dataset = pipeline.supervised_dataset(split.data_dir, split.split, crop_samples=crop_samples, batch_size=1,
                                          shuffle=False, seed=None).unbatch().enumerate()
    dataset = dataset.filter(lambda i, example: tf.gather(keep, i)).map(lambda i, example: example)
    return dataset.shuffle(len(indices), seed=seed).batch(batch_size).prefetch(-1)


def _valid_data(split, crop_samples, batch_size, seed):
    if isinstance(split, ClipSet):
        x, owner = random_crops(split.clips, crop_samples, 1, seed)
        return x, split.labels[owner]
    from keras_clmr.data import pipeline

    return pipeline.supervised_dataset(split.data_dir, split.split, crop_samples=crop_samples,
                                       batch_size=batch_size, shuffle=False, seed=seed)


def fit_end_to_end(tagger, train, valid, *, optimizer, epochs, batch_size, patience, lr_patience, lr_factor,
                   train_indices=None, seed=0, jit_compile="auto", run_eagerly=False, verbose=0):
    """Train a MusicTagger end to end on random crops (fine-tuning / supervised). Returns history dict."""
    indices = np.arange(len(train)) if train_indices is None else np.asarray(train_indices)
    view = tagger.logits_model()
    view.compile(optimizer=optimizer, loss=_loss(tagger.multi_label), jit_compile=jit_compile, run_eagerly=run_eagerly)
    data = _train_data(train, tagger.input_samples, batch_size, seed, indices)
    valid_data = _valid_data(valid, tagger.input_samples, batch_size, seed + 1)
    history = view.fit(data, validation_data=valid_data, epochs=int(epochs), verbose=verbose,
                       callbacks=_callbacks(patience, lr_patience, lr_factor), validation_batch_size=batch_size)
    return _history_summary(history)


def frozen_clip_scores(encoder, head_model, split, multi_label=True, batch_size=64):
    """Clip-level probabilities [N, C] with a frozen encoder: embed every chunk once, apply the
    head (logits), then average the per-chunk sigmoid (softmax) outputs per clip. Equals
    ``MusicTagger.predict_clips`` of the same encoder and head, computed faster."""
    per_clip = clip_embeddings(encoder, split, batch_size)
    probs = _activation(_predict_fixed(head_model, np.concatenate(per_clip), 1024), multi_label)
    return np.stack([p.mean(axis=0) for p in np.split(probs, np.cumsum([len(p) for p in per_clip])[:-1])])


def _test_metrics(scores, labels, multi_label, tags):
    computed = metrics_lib.tagging_metrics(labels, scores, multi_label=multi_label, tags=tags)
    per_tag = [{"tag": tag, "roc_auc": computed["per_tag_roc_auc"][j], "pr_auc": computed["per_tag_pr_auc"][j],
                "test_positives": int(labels[:, j].sum())} for j, tag in enumerate(tags)]
    summary = {k: v for k, v in computed.items() if not k.startswith("per_tag")}
    return summary, per_tag


def _data_summary(train, valid, test, indices, label_fraction):
    return {"n_train_clips": len(train), "n_train_used": int(len(indices)), "label_fraction": float(label_fraction),
            "n_valid_clips": len(valid), "n_test_clips": len(test)}


def train_probe(encoder, train, valid, test, *, tags=None, multi_label=True, head="linear", finetune=False,
                label_fraction=1.0, epochs=200, learning_rate=1e-3, weight_decay=1e-6, batch_size=48,
                patience=10, lr_patience=5, crops_per_clip=1, seed=0, encoder_identity=None,
                extraction_batch_size=64, jit_compile="auto", run_eagerly=False, verbose=0):
    """Linear/MLP probe (frozen encoder) or fine-tuning. Returns (MusicTagger, results dict).

    ``train``/``valid``/``test`` are ClipSets or PreparedSplits. The results dict holds
    ``metrics``, ``per_tag``, ``protocol``, ``data``, ``history`` and ``encoder``.
    """
    num_classes = int(np.asarray(train.labels).shape[1])
    tags = list(tags) if tags is not None else [f"tag_{j}" for j in range(num_classes)]
    if len(tags) != num_classes:
        raise ValueError(f"{len(tags)} tag names for {num_classes} label columns.")
    indices = label_fraction_indices(len(train), label_fraction, seed)
    tagger = MusicTagger(encoder, num_classes, head=head, multi_label=multi_label, tags=tags,
                         freeze_backbone=not finetune)
    tagger.build((None, tagger.input_samples))
    if not finetune:
        sub = train.subset(indices) if isinstance(train, ClipSet) else train
        train_x, train_y, owner = embed_crops(encoder, sub, crops_per_clip, seed, extraction_batch_size)
        if not isinstance(train, ClipSet):
            keep = np.isin(owner, indices)
            train_x, train_y = train_x[keep], train_y[keep]
        valid_x, valid_y, _ = embed_crops(encoder, valid, crops_per_clip, seed + 1, extraction_batch_size)
        head_model, history = fit_head(train_x, train_y, valid_x, valid_y, head=head, multi_label=multi_label,
                                       epochs=epochs, learning_rate=learning_rate, weight_decay=weight_decay,
                                       batch_size=batch_size, patience=patience, lr_patience=lr_patience,
                                       seed=seed, jit_compile=jit_compile, run_eagerly=run_eagerly, verbose=verbose)
        tagger.head.set_weights(head_model.get_weights())
        scores = frozen_clip_scores(encoder, head_model, test, multi_label, extraction_batch_size)
    else:
        keras.utils.set_random_seed(int(seed))
        optimizer = keras.optimizers.Adam(learning_rate, weight_decay=weight_decay or None)
        history = fit_end_to_end(tagger, train, valid, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                                 patience=patience, lr_patience=lr_patience, lr_factor=0.1, train_indices=indices,
                                 seed=seed, jit_compile=jit_compile, run_eagerly=run_eagerly, verbose=verbose)
        scores = predict_clips(tagger, test, extraction_batch_size)
    summary, per_tag = _test_metrics(scores, np.asarray(test.labels), multi_label, tags)
    results = {
        "task": "finetune" if finetune else f"{head}_probe",
        "metrics": summary, "per_tag": per_tag,
        "protocol": {"head": head, "finetune": bool(finetune), "multi_label": bool(multi_label),
                     "optimizer": "Adam", "learning_rate": float(learning_rate), "weight_decay": float(weight_decay),
                     "batch_size": int(batch_size), "max_epochs": int(epochs), "early_stopping_patience": patience,
                     "reduce_lr": {"factor": 0.1, "patience": lr_patience}, "crops_per_clip": int(crops_per_clip),
                     "train_features": "static (extracted once)" if not finetune else "fresh random crop per epoch",
                     "test": f"mean of per-chunk {'sigmoid' if multi_label else 'softmax'} over non-overlapping "
                             f"{tagger.input_samples}-sample chunks (last partial chunk dropped)",
                     "restore_best_weights": True, "seed": int(seed)},
        "data": _data_summary(train, valid, test, indices, label_fraction),
        "history": history,
        "encoder": encoder_identity or describe_encoder(encoder),
    }
    return tagger, _stamp(results)


def linear_probe(encoder, train, valid, test, **kwargs):
    """``train_probe`` returning only the results dict (see its arguments)."""
    return train_probe(encoder, train, valid, test, **kwargs)[1]


def train_supervised(encoder, train, valid, test, *, tags=None, multi_label=True, label_fraction=1.0,
                     epochs=200, learning_rate=0.01, weight_decay=1e-6, momentum=0.9, dropout=0.5, batch_size=48,
                     patience=10, lr_patience=5, seed=0, extraction_batch_size=64, jit_compile="auto",
                     run_eagerly=False, verbose=0):
    """CLMR's supervised baseline: ``encoder`` (fresh SampleCNN) + linear head trained end to end."""
    num_classes = int(np.asarray(train.labels).shape[1])
    tags = list(tags) if tags is not None else [f"tag_{j}" for j in range(num_classes)]
    indices = label_fraction_indices(len(train), label_fraction, seed)
    keras.utils.set_random_seed(int(seed))
    tagger = MusicTagger(encoder, num_classes, head="linear", multi_label=multi_label, tags=tags,
                         freeze_backbone=False, dropout=dropout)
    tagger.build((None, tagger.input_samples))
    optimizer = keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=True,
                                     weight_decay=weight_decay or None)
    history = fit_end_to_end(tagger, train, valid, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                             patience=patience, lr_patience=lr_patience, lr_factor=0.2, train_indices=indices,
                             seed=seed, jit_compile=jit_compile, run_eagerly=run_eagerly, verbose=verbose)
    scores = predict_clips(tagger, test, extraction_batch_size)
    summary, per_tag = _test_metrics(scores, np.asarray(test.labels), multi_label, tags)
    results = {
        "task": "supervised", "metrics": summary, "per_tag": per_tag,
        "protocol": {"head": "linear", "dropout": float(dropout), "finetune": True, "multi_label": bool(multi_label),
                     "optimizer": "SGD (Nesterov)", "momentum": float(momentum), "learning_rate": float(learning_rate),
                     "weight_decay": float(weight_decay), "batch_size": int(batch_size), "max_epochs": int(epochs),
                     "early_stopping_patience": patience, "reduce_lr": {"factor": 0.2, "patience": lr_patience},
                     "test": "mean of per-chunk probabilities over non-overlapping chunks (last partial dropped)",
                     "restore_best_weights": True, "seed": int(seed)},
        "data": _data_summary(train, valid, test, indices, label_fraction),
        "history": history,
        "encoder": {"kind": "random", "class_name": type(encoder).__name__, "config": _config_of(encoder)},
    }
    return tagger, _stamp(results)


def _stamp(results):
    results["keras_version"] = keras.__version__
    results["backend"] = keras.backend.backend()
    results["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return results


# ------------------------------------------------------------------------------- cover songs


def cover_song_eval(encoder, clipset, batch_size=64, top_k=10):
    """Version identification: clip embedding = mean of its chunk embeddings; cosine distance;
    every clip queries all others. Returns MAP / MR1 / P@k (``keras_clmr.metrics``)."""
    groups = clipset.groups
    if groups is None:
        raise ValueError("Cover-song evaluation needs a version-group id per clip (ClipSet.groups).")
    embeddings = np.stack([e.mean(axis=0) for e in clip_embeddings(encoder, clipset, batch_size)])
    return metrics_lib.cover_song_metrics(metrics_lib.cosine_distance_matrix(embeddings), groups, top_k=top_k)


def demo_cover_set(n_clips=96, seconds=6.0, sample_rate=22050, seed=0):
    """All demo clips as one collection whose version groups are keys (root + mode)."""
    splits, _ = demo_splits(n_clips=n_clips, seconds=seconds, sample_rate=sample_rate, seed=seed)
    parts = [splits[name] for name in ("train", "valid", "test")]
    return ClipSet([c for p in parts for c in p.clips], np.concatenate([p.labels for p in parts]),
                   [i for p in parts for i in p.ids], [g for p in parts for g in p.groups])


def cover_markdown_table(rows):
    """A Markdown table of cover-song rows (dicts with model, map, mr1, precision_at_10, n_queries)."""
    lines = ["| Model | MAP | MR1 | P@10 | Queries |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['map']:.4f} | {row['mr1']:.2f} | {row['precision_at_10']:.4f} | "
                     f"{row['n_queries']} |")
    return "\n".join(lines) + "\n"


def load_cover_csv(path, sample_rate=22050):
    """A ClipSet from a CSV with ``path`` and ``group`` columns (paths relative to the CSV)."""
    from keras_clmr import audio

    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows or "path" not in rows[0] or not ({"group", "version_group", "work"} & set(rows[0])):
        raise ValueError(f"{path}: expected a header with 'path' and 'group' (or 'version_group'/'work') columns.")
    key = next(k for k in ("group", "version_group", "work") if k in rows[0])
    base = os.path.dirname(os.path.abspath(path))
    clips = [audio.load(os.path.join(base, r["path"]), sample_rate=sample_rate) for r in rows]
    return ClipSet(clips, None, [r["path"] for r in rows], [r[key] for r in rows])


# ------------------------------------------------------------------------------- encoders


def _config_of(model):
    try:
        return model.get_config()
    except Exception:  # a backbone without a config is still evaluable
        return None


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_encoder(encoder, **extra):
    weights = [np.asarray(keras.ops.convert_to_numpy(w)) for w in encoder.weights]
    digest = hashlib.sha256(b"".join(w.tobytes() for w in weights)).hexdigest()[:16]
    return {"class_name": type(encoder).__name__, "parameters": int(sum(w.size for w in weights)),
            "weights_digest": digest, **extra}


def _as_encoder(model, source):
    if hasattr(model, "input_samples") and hasattr(model, "embedding_dim") and not hasattr(model, "encoder") \
            and not hasattr(model, "backbone"):
        return model
    for attribute in ("encoder", "backbone"):
        inner = getattr(model, attribute, None)
        if inner is not None and hasattr(inner, "input_samples"):
            return inner
    raise ValueError(f"{source} holds a {type(model).__name__}, which is neither a keras_clmr encoder nor a model "
                     "with an `.encoder` (pretrainer) or `.backbone` (tagger).")


def random_encoder(sample_rate=22050, channels=None, seed=0, like=None, strides=None):
    """A randomly initialised SampleCNN (CLMR's stride set for ``sample_rate`` unless
    ``strides`` is given), or one with the configuration of encoder ``like``."""
    from keras_clmr.models import SampleCNN

    keras.utils.set_random_seed(int(seed))
    if like is not None:
        encoder = type(like).from_config(like.get_config())
    else:
        kwargs = {"channels": tuple(int(c) for c in channels)} if channels else {}
        if strides:
            encoder = SampleCNN(strides=tuple(int(s) for s in strides), sample_rate=int(sample_rate), **kwargs)
        else:
            encoder = SampleCNN.for_sample_rate(int(sample_rate), **kwargs)
    if not encoder.built:
        encoder.build((None, encoder.input_samples))
    return encoder


def load_encoder(checkpoint, sample_rate=22050, channels=None, seed=0, strides=None):
    """Resolve ``--checkpoint``: (encoder, identity dict).

    Accepts ``random`` (a fresh SampleCNN for ``sample_rate``/``channels``), ``random:<ckpt>``
    (a fresh encoder with the architecture of checkpoint ``<ckpt>``), a ``.keras`` file
    (a CLMR pretrainer -> its ``.encoder``; a tagger -> its ``.backbone``; or an encoder), a
    pretraining output directory (its ``model.keras``), a preset folder, or a preset
    name / ``hf://`` handle (``keras_clmr.hub.load_pretrained``).
    """
    if not checkpoint:
        raise ValueError("--checkpoint is required: a pretraining .keras file, a preset folder or name, or 'random'.")
    checkpoint = str(checkpoint)
    if checkpoint == "random":
        encoder = random_encoder(sample_rate, channels, seed, strides=strides)
        return encoder, describe_encoder(encoder, kind="random", seed=int(seed), config=_config_of(encoder))
    if checkpoint.startswith("random:"):
        template, identity = load_encoder(checkpoint[len("random:"):], sample_rate, channels, seed)
        encoder = random_encoder(like=template, seed=seed)
        return encoder, describe_encoder(encoder, kind="random", seed=int(seed), architecture_of=identity)
    path = checkpoint
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "model.keras")) \
            and not os.path.isfile(os.path.join(path, "metadata.json")):
        path = os.path.join(path, "model.keras")
    if os.path.isfile(path):
        if not path.endswith(".keras"):
            raise ValueError(f"{path}: expected a .keras file written by keras_clmr (or a preset folder); "
                             "convert PyTorch checkpoints with `python -m export.convert_checkpoint` first.")
        model = keras.models.load_model(path, compile=False)
        encoder = _as_encoder(model, path)
        return encoder, describe_encoder(encoder, kind="keras_file", path=os.path.abspath(path),
                                         sha256=sha256_file(path), model_class=type(model).__name__)
    try:
        from keras_clmr import hub
    except ImportError as error:
        raise ValueError(f"{checkpoint}: not a file or pretraining directory, and presets are unavailable "
                         f"(keras_clmr.hub could not be imported: {error}).") from error
    if not os.path.exists(checkpoint) and "/" in checkpoint and not checkpoint.startswith("hf://"):
        raise FileNotFoundError(f"{checkpoint}: no such file or directory.")
    model = hub.load_pretrained(checkpoint, task="embed")
    encoder = _as_encoder(model, checkpoint)
    metadata = getattr(model, "preset_metadata", None) or getattr(encoder, "preset_metadata", None) or {}
    weights_file = (metadata.get("files") or {}).get("model.weights.h5") or {}
    return encoder, describe_encoder(encoder, kind="preset", preset=checkpoint, preset_name=metadata.get("name"),
                                     preset_saved_with=metadata.get("keras_clmr_version"),
                                     sha256=weights_file.get("sha256"))


# ------------------------------------------------------------------------------- outputs


def atomic_write(path, data, mode="w"):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, mode) as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _percent(value):
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{100 * value:.2f}"


def markdown_table(rows):
    """A Markdown table of ``[(name, results), ...]`` (AUCs and accuracy in %, as in the papers)."""
    multi = all(r["protocol"].get("multi_label", True) for _, r in rows)
    if multi:
        header = ["Model", "Evaluation", "Labels", "ROC-AUC (tag)", "PR-AUC (tag)", "ROC-AUC (clip)", "PR-AUC (clip)"]
        keys = ("roc_auc_tag", "pr_auc_tag", "roc_auc_clip", "pr_auc_clip")
    else:
        header = ["Model", "Evaluation", "Labels", "Accuracy", "ROC-AUC (tag)", "PR-AUC (tag)"]
        keys = ("accuracy", "roc_auc_tag", "pr_auc_tag")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, results in rows:
        labels = f"{100 * results['data']['label_fraction']:g} %"
        lines.append("| " + " | ".join([name, results["task"], labels]
                                       + [_percent(results["metrics"].get(k)) for k in keys]) + " |")
    return "\n".join(lines) + "\n"


def per_tag_csv(results):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(("tag", "roc_auc", "pr_auc", "test_positives"))
    for row in results["per_tag"]:
        writer.writerow((row["tag"], f"{row['roc_auc']:.6f}", f"{row['pr_auc']:.6f}", row["test_positives"]))
    return buffer.getvalue()


def per_tag_plot(results, path, title=None):
    """A PNG bar chart of per-tag ROC-AUC and PR-AUC (undefined tags left empty)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = results["per_tag"]
    x = np.arange(len(rows))
    figure, axis = plt.subplots(figsize=(max(6.0, 0.35 * len(rows) + 2), 4.0))
    axis.bar(x - 0.2, [r["roc_auc"] for r in rows], 0.4, label="ROC-AUC")
    axis.bar(x + 0.2, [r["pr_auc"] for r in rows], 0.4, label="PR-AUC")
    axis.set_xticks(x)
    axis.set_xticklabels([r["tag"] for r in rows], rotation=90, fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("score")
    axis.set_title(title or f"Per-tag AUCs ({results['task']})")
    axis.legend(loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write(path, buffer.getvalue(), mode="wb")


RESULT_FILES = ("results.json", "per_tag.csv", "per_tag_auc.png", "results.md", "tagger.keras")


def write_results(output_dir, results, tagger=None, name=None):
    """Write results.json, per_tag.csv, per_tag_auc.png, results.md and (with a tagger)
    tagger.keras into ``output_dir``; every file atomically. Returns the paths written."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {}
    paths["results.json"] = os.path.join(output_dir, "results.json")
    atomic_write(paths["results.json"], json.dumps(_jsonable(results), indent=2, sort_keys=True) + "\n")
    paths["per_tag.csv"] = os.path.join(output_dir, "per_tag.csv")
    atomic_write(paths["per_tag.csv"], per_tag_csv(results))
    paths["per_tag_auc.png"] = os.path.join(output_dir, "per_tag_auc.png")
    per_tag_plot(results, paths["per_tag_auc.png"])
    paths["results.md"] = os.path.join(output_dir, "results.md")
    atomic_write(paths["results.md"], markdown_table([(name or results["encoder"].get("class_name", "model"),
                                                         results)]))
    if tagger is not None:
        paths["tagger.keras"] = os.path.join(output_dir, "tagger.keras")
        fd, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".keras", dir=output_dir)
        os.close(fd)
        try:
            tagger.save(temporary)
            os.replace(temporary, paths["tagger.keras"])
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
    return paths


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    return value


__all__ = ["ClipSet", "PreparedSplit", "load_splits", "demo_splits", "demo_cover_set", "prepared_splits",
           "label_fraction_indices", "random_crops", "embed_crops", "clip_embeddings", "predict_clips",
           "frozen_clip_scores", "fit_head", "fit_end_to_end", "train_probe", "linear_probe", "train_supervised",
           "cover_song_eval", "load_cover_csv", "load_encoder", "random_encoder", "describe_encoder",
           "markdown_table", "cover_markdown_table", "write_results", "atomic_write", "non_overlapping_chunks"]
