"""Encoder outputs over a split: static probe features, per-chunk outputs, clip-level scores.

Test protocol: each clip is cut into non-overlapping chunks of the encoder's input length (last
partial chunk dropped) and per-chunk sigmoid (softmax) outputs are averaged per clip.
"""

import numpy as np

from keras_clmr.batching import keras_predictor, pad_rows, predict_batched
from keras_clmr.evaluation.data import ClipSet, random_crops
from keras_clmr.models.tagger import map_chunks
from keras_clmr.progress import progress_bar


def embed_crops(encoder, split, crops_per_clip=1, seed=0, batch_size=64):
    """Static probe features: (features [N*k, D], labels [N*k, C], clip index [N*k])."""
    n = int(encoder.input_samples)
    if isinstance(split, ClipSet):
        audio, owner = random_crops(split.clips, n, crops_per_clip, seed)
        bar = progress_bar(len(audio), progress=None, desc="probe features", unit="crop")
        try:
            predict = _counted(keras_predictor(encoder), bar)
            return predict_batched(predict, audio, batch_size), split.labels[owner], owner
        finally:
            bar.close()
    features, labels = [], []
    for k in range(int(crops_per_clip)):
        dataset = split.crops(n, batch_size, shuffle=False, seed=seed * 1009 + k)
        for x, y in dataset.as_numpy_iterator():
            features.append(predict_batched(encoder, x, batch_size))
            labels.append(y)
    owner = np.tile(np.arange(len(split)), int(crops_per_clip))
    return np.concatenate(features), np.concatenate(labels), owner


def _counted(predict_batch, bar):
    """``predict_batch`` that advances ``bar`` by the rows of each batch."""

    def predict(x):
        out = predict_batch(x)
        total = getattr(bar, "total", None)  # the last batch is padded: count real rows only
        bar.update(len(x) if total is None else max(0, min(len(x), total - bar.n)))
        return out

    return predict


def chunk_outputs(predict_batch, split, chunk_samples, batch_size=64, progress=None):
    """Apply ``predict_batch`` to every non-overlapping chunk of every clip: list of [k_i, ...].

    ``progress``: a bar over the chunks on stderr (None: only on a terminal; True; False).
    """
    if isinstance(split, ClipSet):
        total = sum(len(clip) // int(chunk_samples) for clip in split.clips)
        bar = progress_bar(total, progress=progress, desc="chunks", unit="chunk")
        try:
            return map_chunks(_counted(predict_batch, bar), split.clips, chunk_samples, batch_size)
        finally:
            bar.close()
    from keras_clmr.data import pipeline

    per_clip = [[] for _ in range(len(split))]
    dataset = pipeline.evaluation_dataset(
        split.data_dir, split.split, chunk_samples=chunk_samples, batch_size=batch_size
    )
    bar = progress_bar(None, progress=progress, desc="chunks", unit="chunk")
    try:
        for batch in dataset.as_numpy_iterator():
            audio = batch["audio"]
            n = audio.shape[0]
            result = np.asarray(predict_batch(pad_rows(audio, batch_size)))[:n]
            for row, index in zip(result, batch["clip_index"]):
                per_clip[int(index)].append(row)
            bar.update(n)
    finally:
        bar.close()
    return [np.stack(rows) for rows in per_clip]


def clip_embeddings(encoder, split, batch_size=64):
    """Per-clip chunk embeddings: list of [k_i, D] (k_i non-overlapping chunks of clip i)."""
    return chunk_outputs(keras_predictor(encoder), split, int(encoder.input_samples), batch_size)


def _activation(logits, multi_label):
    logits = np.asarray(logits, dtype=np.float64)
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def predict_clips(tagger, split, batch_size=64):
    """Clip-level probabilities [N, C] of a MusicTagger: mean of per-chunk probabilities."""
    per_clip = chunk_outputs(keras_predictor(tagger), split, tagger.input_samples, batch_size)
    return np.stack([p.mean(axis=0) for p in per_clip])


def frozen_clip_scores(encoder, head_model, split, multi_label=True, batch_size=64):
    """Clip-level probabilities [N, C] with a frozen encoder: embed every chunk once, apply the
    head (logits), then average the per-chunk sigmoid (softmax) outputs per clip. Equals
    ``MusicTagger.predict_clips`` of the same encoder and head, computed faster."""
    per_clip = clip_embeddings(encoder, split, batch_size)
    probs = _activation(predict_batched(head_model, np.concatenate(per_clip), 1024), multi_label)
    return np.stack(
        [p.mean(axis=0) for p in np.split(probs, np.cumsum([len(p) for p in per_clip])[:-1])]
    )
