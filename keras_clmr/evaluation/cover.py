"""Cover-song (version) identification: clip embedding = mean of its chunk embeddings, cosine
distance, every clip queries all others; MAP / MR1 / P@k from ``keras_clmr.metrics``."""

import csv
import os

import numpy as np

from keras_clmr import metrics as metrics_lib
from keras_clmr.evaluation.data import ClipSet, demo_splits
from keras_clmr.evaluation.features import clip_embeddings
from keras_clmr.progress import iterate


def cover_song_eval(encoder, clipset, batch_size=64, top_k=10):
    """Version identification: clip embedding = mean of its chunk embeddings; cosine distance;
    every clip queries all others. Returns MAP / MR1 / P@k (``keras_clmr.metrics``)."""
    groups = clipset.groups
    if groups is None:
        raise ValueError(
            "Cover-song evaluation needs a version-group id per clip (ClipSet.groups)."
        )
    embeddings = np.stack([e.mean(axis=0) for e in clip_embeddings(encoder, clipset, batch_size)])
    return metrics_lib.cover_song_metrics(
        metrics_lib.cosine_distance_matrix(embeddings), groups, top_k=top_k
    )


def demo_cover_set(n_clips=96, seconds=6.0, sample_rate=22050, seed=0):
    """All demo clips as one collection whose version groups are keys (root + mode)."""
    splits, _ = demo_splits(n_clips=n_clips, seconds=seconds, sample_rate=sample_rate, seed=seed)
    parts = [splits[name] for name in ("train", "valid", "test")]
    return ClipSet(
        [c for p in parts for c in p.clips],
        np.concatenate([p.labels for p in parts]),
        [i for p in parts for i in p.ids],
        [g for p in parts for g in p.groups],
    )


def load_cover_csv(path, sample_rate=22050):
    """A ClipSet from a CSV with ``path`` and ``group`` columns (paths relative to the CSV)."""
    from keras_clmr import audio

    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows or "path" not in rows[0] or not ({"group", "version_group", "work"} & set(rows[0])):
        raise ValueError(
            f"{path}: expected a header with 'path' and 'group' (or 'version_group'/'work') "
            "columns."
        )
    key = next(k for k in ("group", "version_group", "work") if k in rows[0])
    base = os.path.dirname(os.path.abspath(path))
    clips = [
        audio.load(os.path.join(base, r["path"]), sample_rate=sample_rate)
        for r in iterate(rows, desc="decoding", unit="file")
    ]
    return ClipSet(clips, None, [r["path"] for r in rows], [r[key] for r in rows])
