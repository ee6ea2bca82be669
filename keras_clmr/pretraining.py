"""Pretraining machinery: the pretrainer builders, in-memory segment batches, atomic
checkpoints with resume, and the fit loop. The command line is ``keras-clmr pretrain``
(keras_clmr/commands/pretrain.py; ``python -m training.pretrain`` runs the same)."""

import errno
import glob
import json
import logging
import math
import os
import re

import keras
import numpy as np

from keras_clmr import io
from keras_clmr.data.views import SegmentBatches  # noqa: F401  (re-exported: resume, tests)

CHECKPOINT_PATTERN = "epoch-{epoch:05d}.keras"
STEP_CHECKPOINT_PATTERN = "step-{step:010d}.keras"
STATE_FILE = "state.json"


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed from; the message says why and what to do."""


class TrainingDivergedError(RuntimeError):
    """The loss or the weights became NaN/inf: the run stopped and wrote no final model."""

    exit_status = 3


def atomic_write_json(path, payload):
    """``state.json`` atomically (only finite numbers: a non-finite run is never recorded)."""
    return io.atomic_write_json(path, payload, sort_keys=True)


def atomic_save_model(model, path):
    """``model.save`` through a temporary file; a full disk says so, naming the file."""
    try:
        return io.atomic_save_model(model, path)
    except Exception as error:
        if not _disk_full(error, os.path.dirname(os.path.abspath(path))):
            raise
        raise OSError(
            errno.ENOSPC,
            f"No space left on the device while writing {path} (nothing of it was kept)",
        ) from error


def _disk_full(error, directory):
    """True for ENOSPC, and for writers (h5py) that hide it behind their own message."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", 0)):
        return True
    if "No space left" in str(error):
        return True
    try:
        import shutil

        return shutil.disk_usage(directory).free < (1 << 20)
    except OSError:
        return False


def non_finite(model, logs=None):
    """A description of the first NaN/inf in ``logs`` or the model's weights, else None."""
    for key, value in (logs or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isfinite(number):
            return f"{key} = {number}"
    for variable in model.weights:
        if "float" not in str(variable.dtype):
            continue
        values = np.asarray(keras.ops.convert_to_numpy(variable.value))
        if not np.all(np.isfinite(values)):
            return f"weight {variable.path} holds NaN/inf"
    return None


class NonFiniteGuard(keras.callbacks.Callback):
    """Stop training at the first batch whose loss is NaN/inf and remember where.

    The checkpoint callbacks given this guard then write nothing more, so the last written
    checkpoint (and ``state.json``) stay finite, and the caller raises
    ``TrainingDivergedError`` instead of saving a final model.
    """

    def __init__(self):
        super().__init__()
        self.diverged = None
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def report(self, what):
        if self.diverged is None:
            self.diverged = what
        self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        for key, value in (logs or {}).items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(number):
                self.report(f"{key} = {number} at epoch {self.epoch + 1}, batch {batch + 1}")
                return


def _checkpointable(callback, logs, where):
    """False (and the guard told) when the model or ``logs`` hold NaN/inf."""
    guard = callback.guard
    if guard is not None and guard.diverged is not None:
        return False
    problem = non_finite(callback.model, logs)
    if problem is None:
        return True
    if guard is not None:
        guard.report(f"{problem} at {where}")
    else:
        callback.model.stop_training = True
        callback.diverged = f"{problem} at {where}"
    return False


def _record(directory, path, state, keep_names):
    """Write ``state.json`` naming ``path``, with the resume entries of the kept checkpoints."""
    state_path = os.path.join(directory, STATE_FILE)
    history = {}
    try:
        history = dict(read_state(directory).get("checkpoints", {}))
    except CheckpointError:
        pass
    name = os.path.basename(path)
    history[name] = {
        k: state[k] for k in ("epoch", "step_in_epoch", "step", "seed_states") if k in state
    }
    state["checkpoints"] = {k: v for k, v in history.items() if k in keep_names or k == name}
    atomic_write_json(state_path, state)


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


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: the whole model (weights + optimizer state) to
    ``<directory>/epoch-NNNNN.keras`` atomically, then ``state.json`` naming it.

    A kill at any moment leaves either the previous complete checkpoint or the new one,
    never a truncated file that looks finished. Only the newest ``keep`` are kept.
    """

    def __init__(
        self, directory, keep=3, extra_state=None, steps_per_epoch=None, write=True, guard=None
    ):
        super().__init__()
        if int(keep) < 1:
            raise ValueError(f"keep={keep}: at least 1 checkpoint must be kept to resume from.")
        self.directory = directory
        self.keep = int(keep)
        self.extra_state = dict(extra_state or {})
        self.steps_per_epoch = steps_per_epoch
        # Under multi-worker training only the chief writes (write=False elsewhere).
        self.write = bool(write)
        self.guard = guard
        self.diverged = None

    def on_epoch_end(self, epoch, logs=None):
        if not self.write or not _checkpointable(self, logs, f"the end of epoch {epoch + 1}"):
            return
        path = os.path.join(self.directory, CHECKPOINT_PATTERN.format(epoch=epoch + 1))
        atomic_save_model(self.model, path)
        state = {
            **self.extra_state,
            "epoch": epoch + 1,
            "step_in_epoch": 0,
            "checkpoint": os.path.basename(path),
            "logs": {k: float(v) for k, v in (logs or {}).items()},
            "seed_states": seed_states(self.model),
        }
        if self.steps_per_epoch:
            state["step"] = (epoch + 1) * int(self.steps_per_epoch)
            state["steps_per_epoch"] = int(self.steps_per_epoch)
        kept = list_checkpoints(self.directory)[-self.keep :]
        keep_names = {os.path.basename(p) for p in kept + list_step_checkpoints(self.directory)}
        _record(self.directory, path, state, keep_names)
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
        guard=None,
    ):
        super().__init__()
        if int(every_steps) < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}.")
        if int(keep) < 1:
            raise ValueError(f"keep={keep}: at least 1 checkpoint must be kept to resume from.")
        self.directory = directory
        self.every_steps = int(every_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.keep = int(keep)
        self.step = int(initial_step)
        self.extra_state = dict(extra_state or {})
        self.write = bool(write)
        self.guard = guard
        self.diverged = None

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
        if not self.write or self.step % self.every_steps or in_epoch == 0:
            return  # epoch ends are EpochCheckpoint's
        if not _checkpointable(self, logs, f"step {self.step}"):
            return
        path = os.path.join(self.directory, STEP_CHECKPOINT_PATTERN.format(step=self.step))
        atomic_save_model(self.model, path)
        state = {
            **self.extra_state,
            "epoch": epoch,
            "step_in_epoch": in_epoch,
            "step": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "checkpoint": os.path.basename(path),
            "logs": {k: float(v) for k, v in (logs or {}).items()},
            "seed_states": seed_states(self.model),
        }
        kept = list_step_checkpoints(self.directory)[-self.keep :]
        keep_names = {os.path.basename(p) for p in kept + list_checkpoints(self.directory)}
        _record(self.directory, path, state, keep_names)
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
    return path, epoch, int(read_state(directory).get("step_in_epoch", 0))


def read_state(directory):
    """The run's ``state.json`` as a dict; CheckpointError when it is missing or corrupt."""
    state_path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(state_path):
        raise CheckpointError(
            f"No checkpoint to resume from in {directory} (no {STATE_FILE}). Start without "
            "--resume, or point --output_dir at the folder of an earlier run."
        )
    try:
        with open(state_path, encoding="utf-8") as file:
            state = json.load(file)
        if not isinstance(state, dict) or not isinstance(state.get("checkpoint"), str):
            raise ValueError("it does not name a checkpoint")
        int(state["epoch"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        newest = (list_step_checkpoints(directory) + list_checkpoints(directory))[-1:]
        hint = (
            f"to resume from the newest checkpoint ({os.path.basename(newest[0])})"
            if newest
            else "to start over"
        )
        raise CheckpointError(
            f"{state_path} is corrupt ({type(error).__name__}: {error}). Restore it from a "
            f"backup, or delete it and run again {hint} without the run's recorded settings "
            "(--resume then accepts the flags as given)."
        ) from None
    return state


def resume_candidates(directory):
    """[(path, epoch, step_in_epoch, seed_states or None)], newest first: the checkpoint that
    ``state.json`` names, then the older kept ones (the fallbacks when it is unreadable).

    Without ``state.json`` (deleted after it was corrupt) the files' names give the positions.
    """
    state_path = os.path.join(directory, STATE_FILE)
    state = read_state(directory) if os.path.exists(state_path) else {}
    history = dict(state.get("checkpoints") or {})
    if state:
        history.setdefault(
            state["checkpoint"],
            {
                "epoch": int(state["epoch"]),
                "step_in_epoch": int(state.get("step_in_epoch", 0)),
                "seed_states": state.get("seed_states"),
            },
        )
    steps_per_epoch = state.get("steps_per_epoch")
    candidates = {}
    for path in list_checkpoints(directory):
        epoch = int(re.search(r"epoch-(\d+)", os.path.basename(path)).group(1))
        candidates[os.path.basename(path)] = (epoch * 10**12, path, epoch, 0)
    for path in list_step_checkpoints(directory):
        step = int(re.search(r"step-(\d+)", os.path.basename(path)).group(1))
        entry = history.get(os.path.basename(path))
        if entry is not None:
            epoch, in_epoch = int(entry["epoch"]), int(entry["step_in_epoch"])
        elif steps_per_epoch:
            epoch, in_epoch = divmod(step, int(steps_per_epoch))
        else:
            continue  # its position within an epoch is unknown
        candidates[os.path.basename(path)] = (epoch * 10**12 + in_epoch, path, epoch, in_epoch)
    named = state.get("checkpoint")
    if named is not None and named not in candidates:
        raise CheckpointError(
            f"{state_path} names {named}, which is missing; delete {state_path} to resume from "
            "the newest checkpoint left, or start over in a new --output_dir."
        )
    ordered = sorted(candidates.items(), key=lambda item: item[1][0], reverse=True)
    if named is not None:  # state.json's choice first (it is the newest finite one)
        ordered.sort(key=lambda item: item[0] != named)
    if not ordered:
        raise CheckpointError(
            f"No checkpoint to resume from in {directory}. Start without --resume, or point "
            "--output_dir at the folder of an earlier run."
        )
    return [
        (path, epoch, in_epoch, (history.get(name) or {}).get("seed_states"))
        for name, (_, path, epoch, in_epoch) in ordered
    ]


def load_resume_point(directory, warn=logging.warning):
    """(model, path, epoch, step_in_epoch) of the newest checkpoint that loads and is finite.

    An unreadable newest checkpoint (truncated by a full disk, say) is skipped with a warning
    and the previous one is used: the run then loses one checkpoint interval, not everything.
    """
    problems = []
    for path, epoch, in_epoch, states in resume_candidates(directory):
        try:
            model = load_checkpoint(path, seed_states=states)
        except CheckpointError as error:
            problems.append(f"{os.path.basename(path)}: {error}")
            warn("Checkpoint %s is unreadable (%s); falling back to the one before.", path, error)
            continue
        problem = non_finite(model)
        if problem is not None:
            problems.append(f"{os.path.basename(path)}: {problem}")
            warn("Checkpoint %s is not finite (%s); falling back to the one before.", path, problem)
            continue
        return model, path, epoch, in_epoch
    raise CheckpointError(
        f"No checkpoint in {directory} can be resumed from ({'; '.join(problems)}). Start over "
        "in a new --output_dir."
    )


def mark_finished(directory, epoch, files):
    """Record in ``state.json`` that the final outputs of ``epoch`` epochs are written."""
    state = read_state(directory)
    state["finished"] = {"epoch": int(epoch), "files": sorted(files)}
    atomic_write_json(os.path.join(directory, STATE_FILE), state)


def finished_outputs(directory, epoch, output_dir):
    """True when ``state.json`` says the final outputs of ``epoch`` epochs exist (and they do)."""
    try:
        finished = read_state(directory).get("finished") or {}
    except CheckpointError:
        return False
    files = finished.get("files") or []
    return (
        finished.get("epoch") == int(epoch)
        and bool(files)
        and all(os.path.exists(os.path.join(output_dir, name)) for name in files)
    )


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
    state = read_state(directory)
    path = os.path.join(directory, state["checkpoint"])
    if not os.path.exists(path):
        state_path = os.path.join(directory, STATE_FILE)
        raise CheckpointError(
            f"{state_path} names {state['checkpoint']}, which is missing; "
            f"delete {state_path} to start over."
        )
    return path, int(state["epoch"])


def load_checkpoint(path, seed_states=None):
    """A pretrainer (with its optimizer state) from a checkpoint written by EpochCheckpoint.

    ``seed_states`` (default: the entry ``state.json`` keeps for this checkpoint) restore the
    crop/augmentation generators, so the resumed run draws what the uninterrupted one would.
    """
    import keras_clmr.models  # noqa: F401  (registers the classes)

    try:
        model = keras.saving.load_model(path, compile=True, safe_mode=True)
    except Exception as error:
        summary = " ".join(str(error).split())[:300]
        raise CheckpointError(f"Could not load checkpoint {path}: {summary}") from error
    if seed_states is None:
        directory = os.path.dirname(os.path.abspath(path))
        try:
            state = read_state(directory)
        except CheckpointError:
            state = {}
        name = os.path.basename(path)
        entry = (state.get("checkpoints") or {}).get(name) or {}
        seed_states = entry.get("seed_states")
        if seed_states is None and state.get("checkpoint") == name:
            seed_states = state.get("seed_states")
    if seed_states is not None:
        restore_seed_states(model, seed_states)
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
    """The pretrainer named ``model`` ("clmr", "pemr" or "cpc"), uncompiled.

    ``pemr_options`` (model "pemr" only): mask_ratio, pred_weight, neg_weight, offdiag_weight,
    transformer_layers, transformer_heads, mel_sample_rate; for model "cpc" they are the
    ``CPC_OPTIONS`` (see ``build_cpc``).
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
    if model == "cpc":
        return build_cpc(pemr_options, sample_rate=sample_rate, augment=augment, seed=seed)
    raise ValueError(f"Unknown model {model!r}: use 'clmr', 'pemr' or 'cpc'.")


CPC_OPTIONS = (
    "prediction_steps",
    "negative_samples",
    "subsample_window",
    "strides",
    "filter_sizes",
    "paddings",
    "latent_dim",
    "context_dim",
    "input_samples",
)


def build_cpc(options, *, sample_rate=22050, augment="none", seed=None):
    """The CPC pretrainer from ``options`` (``CPC_OPTIONS``; missing ones: the music defaults).

    The original CPC applied no augmentation: ``augment`` is "none" unless asked otherwise.
    ``subsample_window`` 0 or None turns the positive-window sub-sampling off.
    """
    from keras_clmr.models.cpc import CPC, CPCEncoder

    unknown = sorted(set(options) - set(CPC_OPTIONS))
    if unknown:
        raise ValueError(f"Options {unknown} do not apply to --model=cpc.")
    encoder_keys = ("strides", "filter_sizes", "paddings", "latent_dim", "context_dim")
    encoder_kwargs = {k: options[k] for k in encoder_keys if options.get(k) is not None}
    for key in ("strides", "filter_sizes", "paddings"):
        if key in encoder_kwargs:
            encoder_kwargs[key] = tuple(int(v) for v in encoder_kwargs[key])
    if options.get("input_samples"):
        encoder_kwargs["input_samples"] = int(options["input_samples"])
    encoder = CPCEncoder(sample_rate=sample_rate, **encoder_kwargs)
    model_kwargs = {
        k: int(options[k]) for k in ("prediction_steps", "negative_samples") if options.get(k)
    }
    if "subsample_window" in options:
        model_kwargs["subsample_window"] = options["subsample_window"] or None
    return CPC(
        encoder,
        augmentation=build_augmentation(augment, sample_rate, seed),
        seed=seed,
        **model_kwargs,
    )


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


def accelerator_visible(backend):
    """Whether the backend sees a GPU/TPU (the step estimate is calibrated on the CPU)."""
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(
            tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU")
        )
    if backend == "jax":
        import jax

        return any(device.platform != "cpu" for device in jax.devices())
    if backend == "torch":
        import torch

        return bool(torch.cuda.is_available())
    return False


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


FINAL_FILES = ("model.keras", "encoder.keras")


def save_final_outputs(model, output_dir, checkpoint_dir=None, epoch=None):
    """``model.keras`` (the pretrainer) and ``encoder.keras``, only from finite weights; then
    ``state.json`` records them, so ``--resume`` knows the run is finished."""
    problem = non_finite(model)
    if problem is not None:
        raise TrainingDivergedError(
            f"The trained model is not finite ({problem}): no final model was written."
        )
    paths = [os.path.join(output_dir, name) for name in FINAL_FILES]
    atomic_save_model(model, paths[0])
    atomic_save_model(model.encoder, paths[1])
    if checkpoint_dir is not None and os.path.exists(os.path.join(checkpoint_dir, STATE_FILE)):
        mark_finished(checkpoint_dir, epoch, FINAL_FILES)
    return paths


def cap_batch_size(batch_size, clip_count, source, replicas=1, warn=logging.warning):
    """The batch size to train with when the data holds only ``clip_count`` clips.

    A batch larger than the clip count repeats clips within a batch: a clip's views then
    meet another copy of the same clip as a negative (false negatives in NT-Xent). The batch
    is lowered to the clip count (a multiple of ``replicas``), with a warning naming the
    ``source``. Returns ``batch_size`` unchanged when the data is large enough or its size is
    unknown (``clip_count`` None).
    """
    batch_size = int(batch_size)
    if clip_count is None or batch_size <= int(clip_count):
        return batch_size
    capped = int(clip_count) - int(clip_count) % int(replicas)
    if capped < 1:
        raise ValueError(
            f"{source} holds {clip_count} clips: fewer than the {replicas} replicas, so no "
            "batch can give every replica a different clip. Add clips or use fewer devices."
        )
    warn(
        "%s holds %d clips, fewer than --batch_size=%d: training with batches of %d instead "
        "(a larger batch would repeat clips within a batch, whose copies would then count as "
        "negatives).",
        source,
        clip_count,
        batch_size,
        capped,
    )
    return capped


# Step estimates (``estimate_step``). Calibrated on this project's 2-core CPU machine, TF
# backend, no XLA, float32, full-size CLMR (SampleCNN, 59049-sample crops, --augment=crop):
# peak RSS of one warm-up + one timed ``train_on_batch`` (``python -m benchmarks.train_step
# --backends=tensorflow --jit=off --steps=1 --batch=N``) was 2.35 GB at 8 pairs, 4.42 GB at 24
# and 7.56 GB at 48 before the stem was recomputed in the backward: linear, 65.1 MB per view on
# top of 1.31 GB. SampleCNN's layers output 21.56 M floats per view (``layer_costs``), so a
# view costs 0.755 x its layer outputs (what the backward pass keeps, less what TF frees
# early). Since then SampleCNN's TF training path keeps 5.04 M floats per view fewer
# (``recomputed_output_floats``, left out of the count): 5.97 GB measured at 48 pairs, 6.10
# estimated. With TensorFlow's BFC allocator (``import keras_clmr`` turns it on), the folded
# stem and the fused middle blocks, the quiet re-measurement of 30 Nov 2026 (``python -m
# benchmarks.pretrain_estimate --batches=48``) peaked at 6.00 GB, estimate 6.10: the memory
# constants stay. Time: that run's process CPU seconds per step, 27.15 s for 96 views at 3.47
# GFLOP per view forward (x3 for a train step), give 36.8 GFLOP/s per core on an idle
# machine (other processes: 0.6 % of the CPU); the estimate uses 36 (a busy machine is
# slower). Other models, XLA, mixed precision and GPUs are extrapolations of the same
# formula: read them as the order of magnitude.
STEP_BASE_BYTES = 1.31e9  # TF runtime, weights, optimizer slots, graph: independent of batch
BYTES_PER_OUTPUT_FLOAT = 0.755 * 4  # peak bytes per float32 layer output of one view
# CLMR's augmentation chain (--augment=clmr) keeps its own temporaries (FFTs, the pitch
# shifter's grains): 6.82 vs 5.97 GB at 48 pairs (the train_step command above with
# --augment=clmr), 8.9 MB per 59049-sample view, 150 bytes per sample of the crop (at 8
# pairs it was 19 MB per view: part of it does not grow with the batch).
AUGMENTATION_BYTES_PER_SAMPLE = 150
CORE_FLOPS_PER_SECOND = 36e9  # sustained FLOP/s of one CPU core on the train step
TRAIN_FLOPS_PER_FORWARD = 3.0  # forward + backward (gradients of inputs and of weights)


def _leaf_layers(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if not list(layer._flatten_layers(include_self=False, recursive=False))
    ]


def layer_costs(model):
    """(floats output, FLOPs) of one example through ``model``'s built layers.

    Read from each leaf layer's build shape and ``compute_output_shape`` (no tracing, any
    backend). FLOPs count the multiply-adds of layers with a kernel (convolutions, dense,
    recurrent cells over their time steps); other layers count one per output float.
    Layers whose shapes are unknown (built on a shapeless input) are skipped.
    """
    floats = flops = 0
    for layer in _leaf_layers(model):
        shapes = getattr(layer, "_build_shapes_dict", None) or {}
        if len(shapes) != 1:
            continue
        try:
            output = layer.compute_output_shape(next(iter(shapes.values())))
        except Exception:  # noqa: BLE001 (a layer that cannot say: left out of the estimate)
            continue
        if not isinstance(output, (tuple, list)) or not output or isinstance(output[0], tuple):
            continue
        dims = output[1:]
        if any(d is None for d in dims):
            continue
        size = math.prod(int(d) for d in dims)
        floats += size
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and len(kernel.shape) >= 2:
            recurrent = getattr(layer, "recurrent_kernel", None)
            macs = math.prod(kernel.shape[:-1])
            if recurrent is not None:  # a recurrent cell: per step, gates of input and state
                macs += math.prod(recurrent.shape[:-1])
                size = kernel.shape[-1]  # per time step; the steps are not in its shapes
            flops += 2 * size * macs
        else:
            flops += size
    return floats, flops


def encoder_passes(model):
    """(encoder passes, views) per example: CLMR 2 and 2, PEMR 3 (anchor, positive,
    negative) and 2, CPC 1 and 1."""
    name = type(model).__name__
    return {"PEMR": (3, 2), "CPC": (1, 1)}.get(name, (2, 2))


def available_memory():
    """(bytes available to this process, bytes of memory in all), each None when unknown.

    psutil when installed, else /proc/meminfo (MemAvailable, MemTotal); a cgroup limit
    (containers) lowers both.
    """
    available = total = None
    try:
        import psutil

        memory = psutil.virtual_memory()
        available, total = int(memory.available), int(memory.total)
    except ImportError:
        try:
            with open("/proc/meminfo", encoding="ascii") as file:
                fields = dict(line.split(":", 1) for line in file if ":" in line)
            available = int(fields["MemAvailable"].split()[0]) * 1024
            total = int(fields["MemTotal"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as file:
            limit = file.read().strip()
        if limit.isdigit():
            with open("/sys/fs/cgroup/memory.current", encoding="ascii") as file:
                used = int(file.read().strip())
            total = min(total or int(limit), int(limit))
            available = min(available or int(limit), max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available, total


def cpu_cores():
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class StepEstimate:
    """Peak host memory and seconds of one CPU train step (see ``estimate_step``)."""

    def __init__(self, peak_bytes, seconds, views, cores, data_bytes=0):
        self.peak_bytes = float(peak_bytes)
        self.seconds = float(seconds)
        self.views = int(views)
        self.cores = int(cores)
        self.data_bytes = float(data_bytes)

    def describe(self):
        data = (
            f" (+{self.data_bytes / 1e9:.2f} GB of clips held in memory)" if self.data_bytes else ""
        )
        return (
            f"Estimated train step ({self.views} views): peak memory ~{self.peak_bytes / 1e9:.1f} "
            f"GB{data}, ~{self.seconds:.0f} s/step on {self.cores} CPU core"
            f"{'s' if self.cores != 1 else ''} (TF, no XLA, float32 calibration; the README's "
            "'Sizing a run' has settings that fit)."
        )


def estimate_step(model, batch_size, cores=None, data_bytes=0):
    """A ``StepEstimate`` of ``model`` (a built pretrainer) training on ``batch_size``
    examples: memory = base + views x layer outputs per view x a calibrated factor, time =
    train FLOPs / (cores x a calibrated per-core rate). See the constants above for the
    calibration; ``data_bytes``: clips already held in memory, added to the peak."""
    passes, views = encoder_passes(model)
    encoder_floats, encoder_flops = layer_costs(model.encoder)
    all_floats, all_flops = layer_costs(model)
    other_floats, other_flops = all_floats - encoder_floats, all_flops - encoder_flops
    recomputed = getattr(model.encoder, "recomputed_output_floats", None)
    encoder_floats -= recomputed() if recomputed is not None else 0
    per_example_floats = passes * encoder_floats + views * other_floats
    per_example_flops = passes * encoder_flops + views * other_flops
    itemsize = 2 if "16" in str(getattr(model, "compute_dtype", "float32")) else 4
    batch = int(batch_size)
    augmentation = (
        views * model.input_samples * AUGMENTATION_BYTES_PER_SAMPLE
        if getattr(model, "augmentation", None) is not None
        else 0
    )
    peak = (
        STEP_BASE_BYTES
        + batch * (per_example_floats * BYTES_PER_OUTPUT_FLOAT * itemsize / 4 + augmentation)
        + float(data_bytes)
    )
    cores = int(cores or cpu_cores())
    seconds = TRAIN_FLOPS_PER_FORWARD * batch * per_example_flops / (CORE_FLOPS_PER_SECOND * cores)
    return StepEstimate(peak, seconds, batch * views, cores, data_bytes)


def step_guidance(
    model, batch_size, cores=None, data_bytes=0, memory=available_memory, accelerator=False
):
    """(the estimate's line, a warning or None): the warning when the estimated peak exceeds
    the memory ``memory()`` reports as available, with the batch that would fit. With an
    ``accelerator`` the activations live in device memory: only a note, no warning."""
    estimate = estimate_step(model, batch_size, cores=cores, data_bytes=data_bytes)
    if accelerator:
        return (
            f"{estimate.describe()} An accelerator is visible: the activations go to its memory "
            "and steps are much faster than this CPU figure (see the README's table).",
            None,
        )
    available, total = memory()
    if available is None or estimate.peak_bytes <= available:
        return estimate.describe(), None
    per_example = (estimate.peak_bytes - STEP_BASE_BYTES - float(data_bytes)) / int(batch_size)
    fits = int((available - STEP_BASE_BYTES - float(data_bytes)) // max(per_example, 1.0))
    advice = (
        f"--batch_size={fits} would fit, or a smaller encoder (--channels)"
        if fits >= 2
        else "use a machine with more memory or a smaller encoder (--channels)"
    )
    in_all = f" of {total / 1e9:.1f} GB" if total else ""
    warning = (
        f"The estimated peak memory of a train step ({estimate.peak_bytes / 1e9:.1f} GB at "
        f"--batch_size={batch_size}) exceeds the memory available ({available / 1e9:.1f} GB"
        f"{in_all}): the run may be killed or swap. {advice[0].upper()}{advice[1:]}."
    )
    return estimate.describe(), warning


class PretrainingRate(keras.callbacks.Callback):
    """Adds ``views_per_second`` to each epoch's logs (so TensorBoard, placed after it, plots
    it): encoder views trained per second of wall time between the first and the last step
    of the epoch (the first step, which includes tracing, is left out when there are more)."""

    def __init__(self, views_per_step):
        super().__init__()
        self.views_per_step = int(views_per_step)
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        import time

        self.times = [time.perf_counter()]

    def on_train_batch_end(self, batch, logs=None):
        import time

        self.times.append(time.perf_counter())

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or len(self.times) < 2:
            return
        steps, elapsed = len(self.times) - 1, self.times[-1] - self.times[0]
        if steps > 1:
            steps, elapsed = steps - 1, self.times[-1] - self.times[1]
        if elapsed > 0:
            logs["views_per_second"] = self.views_per_step * steps / elapsed
