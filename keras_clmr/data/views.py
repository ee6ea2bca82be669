"""Whole-clip view pairs from in-memory clips (audio folders, the demo corpus, arrays).

CLMR and PEMR crop each of an example's two views independently from the whole clip
(torchaudio-augmentations' ``ComposeMany``); ``ClipViewBatches`` does that for clips held in
memory, as ``keras_clmr.data.pipeline.pretraining_dataset`` does for prepared shards.
"""

import logging

import keras
import numpy as np


class SegmentBatches(keras.utils.PyDataset):
    """Batches of random source segments [batch_size, segment_samples] from in-memory clips.

    Epoch ``e``, batch ``i`` is a pure function of (seed, e, i), so a resumed run sees the
    same data order it would have seen. Each epoch visits the clips in a new random order;
    each segment starts at a uniform random offset within its clip.
    """

    def __init__(self, clips, segment_samples, batch_size, steps_per_epoch=None, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.clips = [np.asarray(c, dtype=np.float32) for c in clips]
        self.segment_samples = int(segment_samples)
        self.batch_size = int(batch_size)
        if not self.clips:
            raise ValueError("No clips to pretrain on.")
        short = [i for i, c in enumerate(self.clips) if len(c) < self.segment_samples]
        if short:
            raise ValueError(
                f"{len(short)} clips are shorter than the {self.segment_samples}-sample source "
                "segment "
                f"(e.g. clip {short[0]} has {len(self.clips[short[0]])} samples): drop them or "
                "shorten "
                f"--segment_samples."
            )
        self.steps = int(steps_per_epoch or max(1, len(self.clips) // self.batch_size))
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self):
        return self.steps

    def __getitem__(self, index):
        return self.batch_at(self.epoch, index)

    def batch_at(self, epoch, index):
        """Batch ``index`` of epoch ``epoch`` (a pure function of seed, epoch and index)."""
        rng = np.random.default_rng([self.seed, epoch, index])
        order = np.random.default_rng([self.seed, epoch]).permutation(
            np.resize(
                np.arange(len(self.clips)), max(len(self.clips), self.batch_size * self.steps)
            )
        )
        chosen = order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = np.empty((self.batch_size, self.segment_samples), np.float32)
        for row, clip_index in enumerate(chosen):
            clip = self.clips[clip_index]
            start = rng.integers(0, len(clip) - self.segment_samples + 1)
            batch[row] = clip[start : start + self.segment_samples]
        return batch

    def on_epoch_end(self):
        self.epoch += 1


class ClipViewBatches(SegmentBatches):
    """View pairs [batch_size, 2, view_samples]: two independent uniformly random crops of
    each clip, drawn from the whole clip (any length).

    Batch ``i`` of epoch ``e`` is a pure function of (seed, e, i), as ``SegmentBatches``
    (resumed runs see the same data). Clips shorter than one view are skipped and counted
    (``skipped``; ``short_clips="skip"``, CLMR's behaviour) or zero-padded to one view
    (``"pad"``). A clip exactly one view long gives two identical views (warned once).
    """

    def __init__(
        self,
        clips,
        view_samples,
        batch_size,
        steps_per_epoch=None,
        seed=0,
        short_clips="skip",
        **kwargs,
    ):
        if short_clips not in ("skip", "pad"):
            raise ValueError(f"short_clips must be 'skip' or 'pad', got {short_clips!r}.")
        view_samples = int(view_samples)
        clips = [np.asarray(c, dtype=np.float32).reshape(-1) for c in clips]
        short = [c for c in clips if len(c) < view_samples]
        if short_clips == "skip":
            kept = [c for c in clips if len(c) >= view_samples]
            if clips and not kept:
                raise ValueError(
                    f"All {len(clips)} clips are shorter than one {view_samples}-sample view "
                    f"(the longest has {max(len(c) for c in clips)}): use longer clips or "
                    "short_clips='pad'."
                )
        else:
            kept = [np.pad(c, (0, max(0, view_samples - len(c)))) for c in clips]
        self.skipped = len(short) if short_clips == "skip" else 0
        self.padded = len(short) if short_clips == "pad" else 0
        if short:
            logging.warning(
                "%d of %d clips are shorter than one %d-sample view and are %s.",
                len(short),
                len(clips),
                view_samples,
                "skipped" if short_clips == "skip" else "zero-padded",
            )
        exact = sum(len(c) == view_samples for c in kept)
        if exact:
            logging.warning(
                "%d clips are exactly one %d-sample view long: both of their views are the whole "
                "clip (identical before augmentation).",
                exact,
                view_samples,
            )
        super().__init__(
            kept, view_samples, batch_size, steps_per_epoch=steps_per_epoch, seed=seed, **kwargs
        )
        self.view_samples = view_samples

    def batch_at(self, epoch, index):
        """Batch ``index`` of epoch ``epoch`` (a pure function of seed, epoch and index)."""
        rng = np.random.default_rng([self.seed, epoch, index])
        order = np.random.default_rng([self.seed, epoch]).permutation(
            np.resize(
                np.arange(len(self.clips)), max(len(self.clips), self.batch_size * self.steps)
            )
        )
        chosen = order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = np.empty((self.batch_size, 2, self.view_samples), np.float32)
        for row, clip_index in enumerate(chosen):
            clip = self.clips[clip_index]
            starts = rng.integers(0, len(clip) - self.view_samples + 1, size=2)
            for view, start in enumerate(starts):
                batch[row, view] = clip[start : start + self.view_samples]
        return batch
