"""Pretraining machinery: the pretrainer builders, in-memory segment batches, atomic
checkpoints with resume, and the fit loop. The command line is ``keras-clmr pretrain``
(keras_clmr/commands/pretrain.py; ``python -m training.pretrain`` runs the same)."""

import glob
import json
import os
import re

import keras
import numpy as np

from keras_clmr import io

CHECKPOINT_PATTERN = "epoch-{epoch:05d}.keras"
STEP_CHECKPOINT_PATTERN = "step-{step:010d}.keras"
STATE_FILE = "state.json"


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed from; the message says why and what to do."""


def atomic_write_json(path, payload):
    """``state.json`` atomically (NaN losses are kept as NaN, as ``json.dump`` writes them)."""
    return io.atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True))


atomic_save_model = io.atomic_save_model


def seed_states(model):
    """The states of the model's random seed generators (crops, augmentations), in layer order.

    ``.keras`` files do not store them, so checkpoints keep them in ``state.json``: a resumed
    run then draws the crops the uninterrupted run would have drawn.
    """
    states = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for generator in getattr(layer, "_seed_generators", []):
            states.append(
                [int(v) for v in np.asarray(keras.ops.convert_to_numpy(generator.state)).ravel()]
            )
    return states


def restore_seed_states(model, states):
    generators = [
        g
        for layer in model._flatten_layers(include_self=True, recursive=True)
        for g in getattr(layer, "_seed_generators", [])
    ]
    if len(generators) != len(states):
        raise CheckpointError(
            f"The checkpoint holds {len(states)} seed states, the model has {len(generators)} "
            f"seed generators: it was written by a different model."
        )
    for generator, state in zip(generators, states):
        generator.state.assign(
            np.asarray(state, dtype=generator.state.dtype).reshape(generator.state.shape)
        )


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


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: the whole model (weights + optimizer state) to
    ``<directory>/epoch-NNNNN.keras`` atomically, then ``state.json`` naming it.

    A kill at any moment leaves either the previous complete checkpoint or the new one,
    never a truncated file that looks finished. Only the newest ``keep`` are kept.
    """

    def __init__(self, directory, keep=3, extra_state=None, steps_per_epoch=None, write=True):
        super().__init__()
        self.directory = directory
        self.keep = int(keep)
        self.extra_state = dict(extra_state or {})
        self.steps_per_epoch = steps_per_epoch
        # Under multi-worker training only the chief writes (write=False elsewhere).
        self.write = bool(write)

    def on_epoch_end(self, epoch, logs=None):
        if not self.write:
            return
        path = os.path.join(self.directory, CHECKPOINT_PATTERN.format(epoch=epoch + 1))
        atomic_save_model(self.model, path)
        state = {
            "epoch": epoch + 1,
            "step_in_epoch": 0,
            "checkpoint": os.path.basename(path),
            "logs": {k: float(v) for k, v in (logs or {}).items()},
            "seed_states": seed_states(self.model),
            **self.extra_state,
        }
        if self.steps_per_epoch:
            state["step"] = (epoch + 1) * int(self.steps_per_epoch)
        atomic_write_json(os.path.join(self.directory, STATE_FILE), state)
        for old in list_checkpoints(self.directory)[: -self.keep]:
            os.remove(old)


class StepCheckpoint(keras.callbacks.Callback):
    """Every ``every_steps`` training steps (within an epoch): the whole model (weights,
    optimizer state, seed-generator states) to ``<directory>/step-NNNNNNNNNN.keras``
    atomically, then ``state.json`` naming it with the global step, the epoch and the step
    within the epoch. Use it next to ``EpochCheckpoint``, which covers the epoch ends. Only
    the newest ``keep`` step checkpoints are kept. A killed run loses at most
    ``every_steps`` steps: resume with ``resume_position`` + ``fit_resumable``.
    """

    def __init__(
        self,
        directory,
        every_steps,
        steps_per_epoch,
        keep=3,
        initial_step=0,
        extra_state=None,
        write=True,
    ):
        super().__init__()
        if int(every_steps) < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}.")
        self.directory = directory
        self.every_steps = int(every_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.keep = int(keep)
        self.step = int(initial_step)
        self.extra_state = dict(extra_state or {})
        self.write = bool(write)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
        if not self.write or self.step % self.every_steps or in_epoch == 0:
            return  # epoch ends are EpochCheckpoint's
        path = os.path.join(self.directory, STEP_CHECKPOINT_PATTERN.format(step=self.step))
        atomic_save_model(self.model, path)
        state = {
            "epoch": epoch,
            "step_in_epoch": in_epoch,
            "step": self.step,
            "checkpoint": os.path.basename(path),
            "logs": {k: float(v) for k, v in (logs or {}).items()},
            "seed_states": seed_states(self.model),
            **self.extra_state,
        }
        atomic_write_json(os.path.join(self.directory, STATE_FILE), state)
        for old in list_step_checkpoints(self.directory)[: -self.keep]:
            os.remove(old)


def list_step_checkpoints(directory):
    """Finished step checkpoints in ``directory``, oldest first."""
    paths = glob.glob(os.path.join(directory, "step-*.keras"))
    return sorted(paths, key=lambda p: int(re.search(r"step-(\d+)", os.path.basename(p)).group(1)))


def resume_position(directory):
    """(path, epoch, step_in_epoch) of the newest checkpoint named in ``state.json``:
    ``epoch`` finished epochs plus ``step_in_epoch`` steps of the next one."""
    path, epoch = latest_checkpoint(directory)
    with open(os.path.join(directory, STATE_FILE)) as file:
        state = json.load(file)
    return path, epoch, int(state.get("step_in_epoch", 0))


class _GlobalSteps(keras.utils.PyDataset):
    """``SegmentBatches`` addressed by global step: item i is batch (start + i) of the run.

    Keras fetches PyDataset items ahead, reorders them when shuffling and calls
    ``on_epoch_end`` on its own schedule; keying each batch on the global step (and not on
    a mutable epoch counter) makes the data position exactly restorable.
    """

    def __init__(self, data, start, stop):
        super().__init__()
        self.data = data
        self.start, self.stop = int(start), int(stop)

    def __len__(self):
        return self.stop - self.start

    def __getitem__(self, index):
        epoch, step = divmod(self.start + index, len(self.data))
        return self.data.batch_at(epoch, step)


def fit_resumable(
    model, data, *, epochs, steps_per_epoch, initial_epoch=0, initial_step_in_epoch=0, **kwargs
):
    """``model.fit`` that can start ``initial_step_in_epoch`` steps into ``initial_epoch``.

    With a ``SegmentBatches`` (a pure function of seed, epoch and index) the resumed run
    sees exactly the batches the killed run would have seen. Another dataset (tf.data)
    restarts its stream and only the step count is restored. Returns the last History.
    """
    history = None
    exact = isinstance(data, SegmentBatches)
    if exact:
        if len(data) != steps_per_epoch:
            raise ValueError(
                f"steps_per_epoch={steps_per_epoch} differs from the data's {len(data)} batches."
            )
        kwargs["shuffle"] = False  # SegmentBatches already draws a new order each epoch
    if initial_step_in_epoch:
        if not 0 < initial_step_in_epoch < steps_per_epoch:
            raise CheckpointError(
                f"Cannot resume {initial_step_in_epoch} steps into a {steps_per_epoch}-step epoch."
            )
        remaining = steps_per_epoch - initial_step_in_epoch
        start = initial_epoch * steps_per_epoch + initial_step_in_epoch
        partial = _GlobalSteps(data, start, start + remaining) if exact else data
        history = model.fit(
            partial,
            epochs=initial_epoch + 1,
            initial_epoch=initial_epoch,
            steps_per_epoch=remaining,
            **kwargs,
        )
        initial_epoch += 1
    if initial_epoch < epochs:
        rest = (
            _GlobalSteps(data, initial_epoch * steps_per_epoch, epochs * steps_per_epoch)
            if exact
            else data
        )
        history = model.fit(
            rest,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps_per_epoch,
            **kwargs,
        )
    if exact:
        data.epoch = epochs
    return history


def list_checkpoints(directory):
    """Finished checkpoints in ``directory``, oldest first."""
    paths = glob.glob(os.path.join(directory, "epoch-*.keras"))
    return sorted(paths, key=lambda p: int(re.search(r"epoch-(\d+)", os.path.basename(p)).group(1)))


def latest_checkpoint(directory):
    """(path, epoch) of the checkpoint named in ``state.json``; raises CheckpointError."""
    state_path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(state_path):
        raise CheckpointError(
            f"No checkpoint to resume from in {directory} (no {STATE_FILE}). Start without "
            "--resume, "
            f"or point --output_dir at the folder of an earlier run."
        )
    with open(state_path) as file:
        state = json.load(file)
    path = os.path.join(directory, state["checkpoint"])
    if not os.path.exists(path):
        raise CheckpointError(
            f"{state_path} names {state['checkpoint']}, which is missing; "
            f"delete {state_path} to start over."
        )
    return path, int(state["epoch"])


def load_checkpoint(path):
    """A pretrainer (with its optimizer state) from a checkpoint written by EpochCheckpoint."""
    import keras_clmr.models  # noqa: F401  (registers the classes)

    try:
        model = keras.saving.load_model(path, compile=True, safe_mode=True)
    except Exception as error:
        raise CheckpointError(f"Could not load checkpoint {path}: {error}") from error
    # The seed states live in state.json when it names this checkpoint (see seed_states).
    state_path = os.path.join(os.path.dirname(os.path.abspath(path)), STATE_FILE)
    if os.path.exists(state_path):
        with open(state_path) as file:
            state = json.load(file)
        if state.get("checkpoint") == os.path.basename(path) and "seed_states" in state:
            restore_seed_states(model, state["seed_states"])
    return model


def build_pretrainer(
    model,
    *,
    sample_rate=22050,
    channels=None,
    projection_dim=None,
    temperature=0.5,
    augment="clmr",
    seed=None,
    negatives="global",
    **pemr_options,
):
    """The pretrainer named ``model`` ("clmr" or "pemr"), uncompiled.

    ``pemr_options`` (model "pemr" only): mask_ratio, pred_weight, neg_weight, offdiag_weight,
    transformer_layers, transformer_heads, mel_sample_rate.
    """
    from keras_clmr.models import CLMR, SampleCNN

    kwargs = {"channels": tuple(int(c) for c in channels)} if channels else {}
    if model == "clmr":
        if pemr_options:
            raise ValueError(f"Options {sorted(pemr_options)} only apply to --model=pemr.")
        encoder = SampleCNN.for_sample_rate(sample_rate, **kwargs)
        return CLMR(
            encoder,
            projection_dim=projection_dim or 128,
            temperature=temperature,
            augmentation=build_augmentation(augment, sample_rate, seed),
            seed=seed,
            negatives=negatives,
        )
    if model == "pemr":
        from keras_clmr.models import FCN, PEMR

        options = dict(pemr_options)
        mel_sample_rate = options.pop("mel_sample_rate", 16000)
        if "transformer_layers" in options:
            options["num_layers"] = options.pop("transformer_layers")
        if "transformer_heads" in options:
            options["num_heads"] = options.pop("transformer_heads")
        encoder = FCN(sample_rate=sample_rate, mel_sample_rate=mel_sample_rate, **kwargs)
        # PEMR uses CLMR's chain without the pitch shift.
        augmentation = build_augmentation(augment, sample_rate, seed, pitch_shift=False)
        return PEMR(
            encoder,
            projection_dim=projection_dim or 256,
            augmentation=augmentation,
            seed=seed,
            **options,
        )
    raise ValueError(f"Unknown model {model!r}: use 'clmr' or 'pemr'.")


def build_augmentation(augment, sample_rate, seed, pitch_shift=True):
    """CLMR's augmentation chain for ``augment="clmr"``; None for "crop" / "none" (crops only)."""
    if augment in ("crop", "none"):
        return None
    if augment != "clmr":
        raise ValueError(f"Unknown augment {augment!r}: use 'clmr', 'crop' or 'none'.")
    from keras_clmr.layers import augmentations

    return augmentations.clmr_augmentation(
        sample_rate=sample_rate, seed=seed, pitch_shift=pitch_shift
    )


def default_jit_compile(backend):
    """XLA where it helps: always on JAX (its only compiled mode), on TF with an accelerator."""
    if backend == "jax":
        return True
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(
            tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU")
        )
    return False
