"""Self-supervised pretraining.

    keras-clmr pretrain --model=clmr --dataset=demo --epochs=5 --output_dir=runs/demo
    keras-clmr pretrain --model=clmr --data_dir=/data/audio --batch_size=48
    keras-clmr pretrain --model=pemr --data_dir=/data/audio --batch_size=48 --mask_ratio=0.1
    keras-clmr pretrain --model=cpc --data_dir=/data/audio --prediction_steps=12
    keras-clmr pretrain ... --resume        # continue from the last epoch checkpoint

(``python -m training.pretrain`` takes the same flags.)

Writes <output_dir>/checkpoints/epoch-NNNNN.keras after every epoch (atomically; the newest
three are kept), TensorBoard logs in <output_dir>/logs, and at the end model.keras (the
pretrainer) and encoder.keras (the backbone for evaluation and export).
"""

import math
import os
import sys

from absl import app, flags, logging

from keras_clmr.commands import _flags

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Define this command's flags (when it runs, so importing the module defines nothing)."""
    flags.DEFINE_enum(
        "model",
        "clmr",
        ["clmr", "pemr", "cpc"],
        "Which pretrainer to train.",
        flag_values=flag_values,
    )
    _flags.define_data_flags(
        flag_values, "A prepared directory (keras_clmr.data.prepare) or a folder of audio files."
    )
    flags.DEFINE_integer(
        "batch_size", 48, "Source segments (pairs of views) per step.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "epochs",
        100,
        "Epochs to train (an epoch = --steps_per_epoch steps).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "steps_per_epoch",
        None,
        "Steps per epoch (default: clips // batch_size).",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "learning_rate",
        3e-4,
        "Adam learning rate (--model=cpc: 1.5e-4 unless given, the CPC author's default).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "projection_dim",
        None,
        "Projector output size (default: 128 for clmr, 256 for pemr).",
        flag_values=flag_values,
    )
    flags.DEFINE_float("temperature", 0.5, "NT-Xent temperature.", flag_values=flag_values)
    flags.DEFINE_enum(
        "augment",
        "clmr",
        ["clmr", "crop", "none"],
        "'clmr': CLMR's augmentation chain after the crops; 'crop'/'none': random crops only "
        "(--model=cpc: 'none' unless given, as the original CPC).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "sample_rate",
        22050,
        "Audio sample rate; picks the SampleCNN stride set.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "channels",
        None,
        "Encoder widths for a smaller encoder: 11 ints (SampleCNN) or 4 (PEMR's FCN).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "segment_samples",
        None,
        "Source segment length (default: 2 x the crop).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "view_source",
        "clip",
        ["clip", "segment"],
        "clip: each view is cropped independently from the whole clip (as CLMR/PEMR); "
        "segment: both views are cropped from one --segment_samples source segment.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "jit_compile",
        None,
        "XLA-compile the train step (TensorFlow and JAX backends). Default: on for JAX, and on "
        "for TensorFlow only when a GPU/TPU is visible (on CPU, XLA measured slower than TF's "
        "oneDNN kernels for SampleCNN: benchmarks/train_step.py).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "seed",
        42,
        "Seed of the weights, crops, augmentations and data order.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "output_dir",
        "runs/pretrain",
        "Where checkpoints, logs and the final model go.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "resume",
        False,
        "Continue from the last checkpoint in --output_dir.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "keep_checkpoints",
        3,
        "How many epoch checkpoints to keep (>= 1; the older ones are the fallbacks when the "
        "newest is unreadable).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "override",
        [],
        "With --resume: settings that may differ from the run's recorded ones (e.g. "
        "batch_size,learning_rate,data_dir). Other differences are refused.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "demo_clips", 96, "Clips in the demo corpus (--dataset=demo).", flag_values=flag_values
    )
    flags.DEFINE_float(
        "mask_ratio",
        0.1,
        "PEMR: fraction of the 462 frames masked (the code's masked_factor).",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "pred_weight", 0.01, "PEMR: weight of the prediction loss L_pred.", flag_values=flag_values
    )
    flags.DEFINE_float(
        "neg_weight", 5e-3, "PEMR: weight of L_neg (the code's lambd1).", flag_values=flag_values
    )
    flags.DEFINE_float(
        "offdiag_weight",
        5e-3,
        "PEMR: off-diagonal weight of L_pos (the code's lambd2).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "transformer_layers",
        3,
        "PEMR: layers of the mask-generator transformer.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "transformer_heads",
        3,
        "PEMR: heads of the mask-generator transformer (128-d each).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "mel_sample_rate",
        16000,
        "PEMR: rate of the mel filterbank (16000 as in the official code, whatever the audio "
        "rate).",
        flag_values=flag_values,
    )

    define_cpc_flags(flag_values)
    flags.DEFINE_enum(
        "distribution",
        "none",
        ["none", "mirrored", "multi_worker", "tpu", "data_parallel"],
        "Data parallelism. TensorFlow: 'mirrored' (the devices of this host), 'multi_worker' "
        "(hosts "
        "listed in TF_CONFIG), 'tpu'; JAX: 'data_parallel' (keras.distribution.DataParallel).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "logical_cpus",
        0,
        "Split the CPU into N logical devices (to try a distribution without "
        "accelerators; JAX also needs XLA_FLAGS=--xla_force_host_platform_device_count=N).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "global_negatives",
        True,
        "Contrast every view against the whole global batch; "
        "--noglobal_negatives contrasts within each replica's slice, like the original CLMR.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "sync_batchnorm",
        True,
        "BatchNorm statistics over the global batch (TensorFlow strategies; "
        "JAX data_parallel always does this), as the original's sync_batchnorm.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "mixed_precision",
        "none",
        ["none", "bfloat16", "float16"],
        "Compute dtype (variables, loss and similarities stay float32; float16 adds loss scaling).",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "optimizer",
        "adam",
        ["adam", "lars"],
        "'adam' (3e-4, CLMR master) or 'lars' (CLMR 2.0 paper runs: lr 0.075*sqrt(batch), weight "
        "decay 1e-6, warm-up then cosine decay; --learning_rate overrides the peak when given).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "lars_exclude_bias_and_norm",
        False,
        "LARS: exclude BatchNorm and biases from weight decay and the trust ratio (SimCLR's "
        "TensorFlow LARS); the default applies both to every variable, as CLMR 2.0 did.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "warmup_epochs",
        10,
        "LARS: epochs of linear learning-rate warm-up (CLMR 2.0 used 30).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "checkpoint_every_steps",
        0,
        "Also checkpoint every N steps within an epoch (0: epoch "
        "ends only); a killed run then loses at most N steps.",
        flag_values=flag_values,
    )


def define_cpc_flags(flag_values):
    """--model=cpc's flags; defaults of the CPC author's repository and CLMR's modules/cpc."""
    flags.DEFINE_integer(
        "prediction_steps",
        12,
        "CPC: future latents predicted (12: contrastive-predictive-coding; CLMR's "
        "config_cpc.yaml: 20).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "negative_samples",
        10,
        "CPC: negatives per positive (10: contrastive-predictive-coding; config_cpc.yaml: 15).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "subsample_window",
        81,
        "CPC: positives from a random window of this many latents (0: all latents).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "cpc_strides",
        None,
        "CPC: conv strides (default 5,3,2,2,2,2,2, the music configuration).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "cpc_filter_sizes",
        None,
        "CPC: conv filter sizes (default 10,6,4,4,4,2,2).",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "cpc_paddings", None, "CPC: conv paddings (default 2,2,2,2,1,1,1).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "cpc_latent_dim", 512, "CPC: channels of every conv block.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "cpc_context_dim", 256, "CPC: GRU state size (the embedding size).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "cpc_input_samples",
        59049,
        "CPC: window length in samples (59049 = CLMR's audio_length).",
        flag_values=flag_values,
    )


def cpc_options(flag_values):
    """The ``build_cpc`` options from the CPC flags."""
    return {
        "prediction_steps": flag_values.prediction_steps,
        "negative_samples": flag_values.negative_samples,
        "subsample_window": flag_values.subsample_window,
        "strides": flag_values.cpc_strides,
        "filter_sizes": flag_values.cpc_filter_sizes,
        "paddings": flag_values.cpc_paddings,
        "latent_dim": flag_values.cpc_latent_dim,
        "context_dim": flag_values.cpc_context_dim,
        "input_samples": flag_values.cpc_input_samples,
    }


def apply_cpc_defaults(flag_values):
    """--model=cpc on a new run: lr 1.5e-4 and no augmentation unless the flags are given."""
    if flag_values.model != "cpc" or flag_values.resume:
        return
    if not flag_values["learning_rate"].present:
        flag_values.learning_rate = 1.5e-4
    if not flag_values["augment"].present:
        flag_values.augment = "none"


def load_training_data(segment_samples, batch_size, steps_per_epoch, seed, replicas=1):
    """(dataset of source segments for ``fit``, steps per epoch, a one-line description, the
    batch size used): a batch larger than the clip count is lowered to it, with a warning
    (``cap_batch_size``), for prepared shards as for audio folders and the demo corpus."""
    from keras_clmr import audio
    from keras_clmr.pretraining import SegmentBatches, cap_batch_size

    if FLAGS.data_dir:
        prepared = _prepared_pipeline()
        if prepared is not None and prepared.is_prepared(FLAGS.data_dir):
            manifest = prepared.load_manifest(FLAGS.data_dir)
            train = manifest.get("splits", {}).get("train", {})
            count = train.get("count", train) if isinstance(train, dict) else train
            if not count:
                raise app.UsageError(
                    f"--data_dir {FLAGS.data_dir} is prepared but holds no training clips (see "
                    "its manifest.json 'skipped'): prepare a folder with decodable audio."
                )
            known = count if isinstance(count, int) else None
            try:
                batch_size = cap_batch_size(
                    batch_size, known, FLAGS.data_dir, replicas, warn=logging.warning
                )
            except ValueError as error:
                raise app.UsageError(str(error)) from error
            dataset = prepared.pretraining_dataset(
                FLAGS.data_dir,
                segment_samples=segment_samples,
                batch_size=batch_size,
                seed=seed,
                view_source=FLAGS.view_source,
            )
            if steps_per_epoch is None:
                steps_per_epoch = max(1, int(count or 0) // batch_size) if count else None
            if steps_per_epoch is None:
                raise app.UsageError("Pass --steps_per_epoch for this prepared directory.")
            return dataset, steps_per_epoch, f"prepared shards in {FLAGS.data_dir}", batch_size
        try:
            paths = audio.list_audio_files(FLAGS.data_dir)
        except FileNotFoundError as error:
            raise app.UsageError(str(error)) from error
        if not paths:
            raise app.UsageError(
                f"--data_dir {FLAGS.data_dir} holds no audio files "
                f"({', '.join(audio.AUDIO_EXTENSIONS)}): "
                "point it at a folder of audio or at a directory written by "
                "keras_clmr.data.prepare."
            )
        clips, skipped = audio.load_many(
            paths, sample_rate=FLAGS.sample_rate, min_samples=segment_samples
        )
        for path, reason in skipped:
            logging.warning("Skipped %s: %s", path, reason)
        if not clips:
            raise app.UsageError(
                f"None of the {len(paths)} files in {FLAGS.data_dir} could be used (see the "
                "warnings above); "
                f"each needs at least {segment_samples} samples at {FLAGS.sample_rate} Hz."
            )
        description = f"{len(clips)} audio files from {FLAGS.data_dir} ({len(skipped)} skipped)"
        source = FLAGS.data_dir
    else:
        if FLAGS.dataset != "demo":
            raise app.UsageError(
                f"Unknown --dataset {FLAGS.dataset!r}: use 'demo' or pass --data_dir."
            )
        from keras_clmr.data.demo import make_demo_corpus

        corpus = make_demo_corpus(n_clips=FLAGS.demo_clips, sample_rate=FLAGS.sample_rate)
        clips = list(corpus.subset("train").audio)
        description = f"demo corpus ({len(clips)} training clips)"
        source = "The demo corpus (--demo_clips)"
    try:
        batch_size = cap_batch_size(batch_size, len(clips), source, replicas, warn=logging.warning)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    batches = SegmentBatches
    if FLAGS.view_source == "clip":
        from keras_clmr.data.views import ClipViewBatches as batches
    data = batches(clips, segment_samples, batch_size, steps_per_epoch=steps_per_epoch, seed=seed)
    return data, len(data), description, batch_size


def memory_probe():
    """(available, total) bytes of memory: ``pretraining.available_memory`` (tests replace
    this to check the warning)."""
    from keras_clmr.pretraining import available_memory

    return available_memory()


def _prepared_pipeline():
    try:
        from keras_clmr.data import pipeline
    except ImportError:
        return None
    return pipeline


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import keras

    from keras_clmr import distributed
    from keras_clmr.optimizers import build_optimizer
    from keras_clmr.pretraining import (
        STATE_FILE,
        CheckpointError,
        EpochCheckpoint,
        NonFiniteGuard,
        PretrainingRate,
        StepCheckpoint,
        TrainingDivergedError,
        accelerator_visible,
        build_pretrainer,
        default_jit_compile,
        encoder_passes,
        finished_outputs,
        fit_resumable,
        load_resume_point,
        read_state,
        save_final_outputs,
        step_guidance,
    )

    checkpoint_dir = os.path.join(FLAGS.output_dir, "checkpoints")
    state_path = os.path.join(checkpoint_dir, STATE_FILE)
    stored = {}
    if FLAGS.resume:
        try:
            if os.path.exists(state_path):
                stored = read_state(checkpoint_dir).get("settings") or {}
        except CheckpointError as error:
            raise app.UsageError(str(error)) from error
        reconcile_settings(stored, FLAGS)
    else:
        if FLAGS.override:
            raise app.UsageError("--override applies only with --resume.")
        if os.path.exists(state_path):
            raise app.UsageError(
                f"{FLAGS.output_dir} holds a run already ({state_path}): pass --resume to "
                "continue it, or choose a new --output_dir."
            )
    apply_cpc_defaults(FLAGS)
    check_architecture(FLAGS)

    try:
        if FLAGS.logical_cpus:
            distributed.split_logical_cpus(FLAGS.logical_cpus)
        dist = distributed.setup_distribution(FLAGS.distribution)
    except distributed.DistributionError as error:
        raise app.UsageError(str(error)) from error
    if FLAGS.batch_size % dist.num_replicas:
        raise app.UsageError(
            f"--batch_size={FLAGS.batch_size} is not divisible by the {dist.num_replicas} replicas."
        )
    if FLAGS.mixed_precision != "none":
        keras.config.set_dtype_policy(f"mixed_{FLAGS.mixed_precision}")
    keras.utils.set_random_seed(FLAGS.seed)
    backend = keras.backend.backend()
    jit_compile = default_jit_compile(backend) if FLAGS.jit_compile is None else FLAGS.jit_compile
    jit_compile = jit_compile and backend in ("tensorflow", "jax")
    if FLAGS.jit_compile and not jit_compile:
        logging.info("jit_compile is not used on the %s backend.", backend)
    if jit_compile and FLAGS.distribution in ("mirrored", "multi_worker") and dist.num_replicas > 1:
        # XLA clusters in a multi-device tf.distribute step fail on per-replica resources (the crop
        # seed state: "Trying to access resource ... located in device ... CPU:1 from ... CPU:0").
        logging.warning(
            "jit_compile is turned off under --distribution=%s (XLA and tf.distribute replicas).",
            FLAGS.distribution,
        )
        jit_compile = False

    initial_epoch = initial_step = 0
    if FLAGS.resume:
        from keras_clmr import io

        for folder in (checkpoint_dir, FLAGS.output_dir):  # what a killed writer left
            io.recover_entries(folder)
        try:
            with dist.scope():
                model, path, initial_epoch, initial_step = load_resume_point(checkpoint_dir)
        except CheckpointError as error:
            raise app.UsageError(str(error)) from error
        with dist.scope():
            # Backbones rebuild their BatchNorm layers from their own config: set the sync again.
            distributed.set_sync_batchnorm(model, FLAGS.sync_batchnorm)
        if "learning_rate" in FLAGS.override and FLAGS["learning_rate"].present:
            set_learning_rate(model, FLAGS.learning_rate)
        logging.info(
            "Resuming from %s (epoch %d, step %d of the next).", path, initial_epoch, initial_step
        )
        if initial_epoch >= FLAGS.epochs:
            if finished_outputs(checkpoint_dir, initial_epoch, FLAGS.output_dir):
                print(
                    f"Already trained {initial_epoch} >= --epochs={FLAGS.epochs} epochs and "
                    "wrote the final model; nothing to do."
                )
                return 0
            # Killed after its last checkpoint, before the final outputs: write them now.
            if dist.is_chief:
                try:
                    written = save_final_outputs(
                        model, FLAGS.output_dir, checkpoint_dir, initial_epoch
                    )
                except OSError as error:
                    raise _with_resume_hint(error, checkpoint_dir) from error
                print(
                    f"The run had trained {initial_epoch} epochs but not written its final "
                    f"outputs: wrote {' and '.join(written)} from {path}."
                )
            return 0
    else:
        pemr_options = {}
        if FLAGS.model == "pemr":
            pemr_options = {name: getattr(FLAGS, name) for name in _PEMR_FLAGS}
        if FLAGS.model == "cpc":
            pemr_options = cpc_options(FLAGS)
        with dist.scope():
            model = build_pretrainer(
                FLAGS.model,
                sample_rate=FLAGS.sample_rate,
                channels=FLAGS.channels,
                projection_dim=FLAGS.projection_dim,
                temperature=FLAGS.temperature,
                augment=FLAGS.augment,
                seed=FLAGS.seed,
                negatives="global" if FLAGS.global_negatives else "local",
                **pemr_options,
            )
            if FLAGS.sync_batchnorm:
                distributed.set_sync_batchnorm(model)

    crop = model.input_samples
    segment_samples = FLAGS.segment_samples or 2 * crop
    if FLAGS.view_source == "clip":
        segment_samples = crop  # each item is a view pair cropped from the whole clip
    if segment_samples < crop:
        raise app.UsageError(
            f"--segment_samples={segment_samples} is shorter than the {crop}-sample crop."
        )
    data, steps, description, batch_size = load_training_data(
        segment_samples, FLAGS.batch_size, FLAGS.steps_per_epoch, FLAGS.seed, dist.num_replicas
    )
    if hasattr(data, "epoch"):
        data.epoch = initial_epoch
    if not FLAGS.resume:
        learning_rate = (
            FLAGS.learning_rate
            if (FLAGS.optimizer == "adam" or FLAGS["learning_rate"].present)
            else None
        )
        with dist.scope():
            model.compile(
                optimizer=build_optimizer(
                    FLAGS.optimizer,
                    batch_size=batch_size,
                    steps_per_epoch=steps,
                    epochs=FLAGS.epochs,
                    warmup_epochs=FLAGS.warmup_epochs,
                    learning_rate=learning_rate,
                    lars_exclude_bias_and_norm=FLAGS.lars_exclude_bias_and_norm,
                ),
                jit_compile=jit_compile,
            )
    if not model.built:
        with dist.scope():
            clip_mode = FLAGS.view_source == "clip"
            model.build((None, 2, segment_samples) if clip_mode else (None, segment_samples))
    trainable = sum(math.prod(w.shape) for w in model.encoder.trainable_weights)
    frozen = sum(math.prod(w.shape) for w in model.encoder.non_trainable_weights)
    print(
        f"Pretraining {FLAGS.model} ({trainable:,} trainable + {frozen:,} non-trainable encoder "
        f"parameters) on {description}: batch {batch_size}, "
        f"{steps} steps/epoch, backend {backend}, jit_compile={jit_compile}, {dist}.",
        flush=True,
    )
    clips = getattr(data, "clips", None) or ()
    estimate, warning = step_guidance(
        model,
        batch_size // dist.num_replicas,
        data_bytes=sum(clip.nbytes for clip in clips),
        memory=memory_probe,
        accelerator=accelerator_visible(backend),
    )
    print(estimate, flush=True)
    if warning:
        logging.warning(warning)

    try:  # only now that the flags, the model and the data are known to be good
        os.makedirs(checkpoint_dir, exist_ok=True)
    except OSError as error:
        raise app.UsageError(
            f"--output_dir={FLAGS.output_dir} cannot be created ({error.strerror}): choose a "
            "writable folder."
        ) from error
    guard = NonFiniteGuard()
    extra_state = {"settings": current_settings(FLAGS)}
    callbacks = [
        guard,
        EpochCheckpoint(
            checkpoint_dir,
            keep=FLAGS.keep_checkpoints,
            extra_state=extra_state,
            steps_per_epoch=steps,
            write=dist.is_chief,
            guard=guard,
        ),
        PretrainingRate(batch_size * encoder_passes(model)[1]),  # before TensorBoard: it logs
        keras.callbacks.TensorBoard(os.path.join(FLAGS.output_dir, "logs")),
    ]
    if FLAGS.checkpoint_every_steps:
        callbacks.insert(
            2,
            StepCheckpoint(
                checkpoint_dir,
                FLAGS.checkpoint_every_steps,
                steps,
                keep=FLAGS.keep_checkpoints,
                initial_step=initial_epoch * steps + initial_step,
                extra_state=extra_state,
                write=dist.is_chief,
                guard=guard,
            ),
        )
    try:
        fit_resumable(
            model,
            data,
            epochs=FLAGS.epochs,
            steps_per_epoch=steps,
            initial_epoch=initial_epoch,
            initial_step_in_epoch=initial_step,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )
    except KeyboardInterrupt:
        print(f"\nInterrupted. Finished epochs are in {checkpoint_dir}; continue with --resume.")
        raise SystemExit(130) from None
    except OSError as error:
        raise _with_resume_hint(error, checkpoint_dir) from error
    if guard.diverged is not None:
        raise TrainingDivergedError(
            f"Training diverged ({guard.diverged}): stopped, no final model written. "
            f"{_resume_point_text(checkpoint_dir)} Lower --learning_rate and continue with "
            "--resume --override=learning_rate, or start over in a new --output_dir."
        )
    if not dist.is_chief:
        return 0
    try:
        written = save_final_outputs(model, FLAGS.output_dir, checkpoint_dir, FLAGS.epochs)
    except OSError as error:
        raise _with_resume_hint(error, checkpoint_dir) from error
    print(f"Saved the pretrainer to {written[0]} and its encoder to {written[1]}.")
    return 0


def _resume_point_text(checkpoint_dir):
    from keras_clmr.pretraining import CheckpointError, read_state

    try:
        state = read_state(checkpoint_dir)
    except CheckpointError:
        return "No finite checkpoint was written."
    return (
        f"The last finite checkpoint is {state['checkpoint']} (epoch {state['epoch']}), the "
        "resume point."
    )


def _with_resume_hint(error, checkpoint_dir):
    """The OSError again, its message naming the checkpoint a ``--resume`` continues from."""
    return OSError(error.errno, f"{error.strerror or error}. {_resume_point_text(checkpoint_dir)}")


# Settings a resumed run must share with the run it continues. FIXED ones are in the
# checkpoint itself (the architecture, the loss, the optimizer): a resume cannot change them.
FIXED_SETTINGS = (
    "model",
    "channels",
    "sample_rate",
    "projection_dim",
    "temperature",
    "augment",
    "seed",
    "global_negatives",
    "mixed_precision",
    "optimizer",
    "warmup_epochs",
    "mask_ratio",
    "pred_weight",
    "neg_weight",
    "offdiag_weight",
    "transformer_layers",
    "transformer_heads",
    "mel_sample_rate",
    "prediction_steps",
    "negative_samples",
    "subsample_window",
    "cpc_strides",
    "cpc_filter_sizes",
    "cpc_paddings",
    "cpc_latent_dim",
    "cpc_context_dim",
    "cpc_input_samples",
)
OVERRIDABLE_SETTINGS = (
    "dataset",
    "data_dir",
    "demo_clips",
    "batch_size",
    "steps_per_epoch",
    "segment_samples",
    "learning_rate",
)


def current_settings(flag_values):
    """The run's settings as JSON values (recorded in state.json)."""
    return {
        name: _normal(name, flag_values[name].value)
        for name in FIXED_SETTINGS + OVERRIDABLE_SETTINGS
    }


_CPC_LIST_FLAGS = ("cpc_strides", "cpc_filter_sizes", "cpc_paddings")


def _normal(name, value):
    if name in ("channels",) + _CPC_LIST_FLAGS and value is not None:
        return [int(c) for c in value]
    return value


def _same(old, new):
    if isinstance(old, float) or isinstance(new, float):
        try:
            return abs(float(old) - float(new)) <= 1e-12 * max(abs(float(old)), 1e-300)
        except (TypeError, ValueError):
            return False
    return old == new


def reconcile_settings(stored, flag_values):
    """On ``--resume``: flags not given take the run's recorded settings; given ones that
    differ are refused (UsageError naming each, stored vs given) unless ``--override`` names
    them and they can change."""
    override = [name.strip() for name in flag_values.override if name.strip()]
    unknown = [name for name in override if name not in FIXED_SETTINGS + OVERRIDABLE_SETTINGS]
    if unknown:
        raise app.UsageError(
            f"--override={','.join(unknown)}: not a recorded setting; choose from "
            f"{', '.join(OVERRIDABLE_SETTINGS)}."
        )
    conflicts = []
    for name, old in stored.items():
        if name not in FIXED_SETTINGS + OVERRIDABLE_SETTINGS:
            continue
        flag = flag_values[name]
        new = _normal(name, flag.value)
        if _same(old, new):
            continue
        if not flag.present:
            flag.value = old  # the run's own setting
            continue
        if name in OVERRIDABLE_SETTINGS and name in override:
            continue
        if name in FIXED_SETTINGS:
            conflicts.append(
                f"--{name}: the run has {old!r}, given {new!r} (fixed by the checkpoint; start a "
                "new --output_dir to change it)"
            )
        else:
            conflicts.append(f"--{name}: the run has {old!r}, given {new!r}")
    if conflicts:
        changeable = [c.split(":")[0][2:] for c in conflicts if "fixed by" not in c]
        hint = (
            f" Pass --override={','.join(changeable)} to use the new values." if changeable else ""
        )
        conflicts_text = "; ".join(conflicts)
        raise app.UsageError(
            f"--resume with settings that differ from the run's: {conflicts_text}.{hint}"
        )


def check_architecture(flag_values):
    """Cross-flag checks: the channel count and sample rate the chosen model can build."""
    if flag_values.model == "clmr":
        rates = (22050, 16000, 8000)  # keras_clmr.models.sample_cnn.STRIDES_BY_SAMPLE_RATE
        if flag_values.sample_rate not in rates:
            raise app.UsageError(
                f"--sample_rate={flag_values.sample_rate}: CLMR's SampleCNN has stride sets for "
                f"{', '.join(map(str, rates))} Hz only."
            )
    if flag_values.model == "cpc":
        check_cpc_architecture(flag_values)
        return
    expected, parts = {"clmr": (11, "stem, 9 blocks, final"), "pemr": (4, "4 FCN blocks")}[
        flag_values.model
    ]
    channels = flag_values.channels
    if channels is not None and len(channels) != expected:
        raise app.UsageError(
            f"--channels={','.join(map(str, channels))} has {len(channels)} widths; "
            f"--model={flag_values.model} needs {expected} ({parts})."
        )


def check_cpc_architecture(flag_values):
    """--model=cpc: no --channels; as many strides, filter sizes and paddings; a window long
    enough for the prediction steps."""
    from keras_clmr.models.cpc import (
        MUSIC_FILTER_SIZES,
        MUSIC_PADDINGS,
        MUSIC_STRIDES,
        conv_output_length,
    )

    if flag_values.channels is not None:
        raise app.UsageError(
            "--channels does not apply to --model=cpc: use --cpc_latent_dim (conv width) and "
            "--cpc_context_dim (GRU size)."
        )
    lists = {}
    for name, default in (
        ("cpc_strides", MUSIC_STRIDES),
        ("cpc_filter_sizes", MUSIC_FILTER_SIZES),
        ("cpc_paddings", MUSIC_PADDINGS),
    ):
        value = flag_values[name].value
        try:
            lists[name] = tuple(int(v) for v in value) if value is not None else default
        except ValueError:
            raise app.UsageError(f"--{name}={','.join(value)}: give integers.") from None
    if len({len(v) for v in lists.values()}) != 1:
        counts = ", ".join(f"--{k} has {len(v)}" for k, v in lists.items())
        raise app.UsageError(
            f"CPC needs one stride, filter size and padding per conv block: {counts}."
        )
    for name in ("prediction_steps", "negative_samples", "cpc_latent_dim", "cpc_context_dim"):
        if flag_values[name].value < 1:
            raise app.UsageError(f"--{name}={flag_values[name].value}: must be >= 1.")
    if flag_values.subsample_window < 0:
        raise app.UsageError(f"--subsample_window={flag_values.subsample_window}: must be >= 0.")
    latents = conv_output_length(flag_values.cpc_input_samples, *lists.values())
    window = min(latents, flag_values.subsample_window or latents)
    if window <= flag_values.prediction_steps:
        raise app.UsageError(
            f"--cpc_input_samples={flag_values.cpc_input_samples} gives {latents} latents "
            f"(window {window}): too few to predict --prediction_steps="
            f"{flag_values.prediction_steps} steps ahead; use a longer window or fewer steps."
        )


def set_learning_rate(model, learning_rate):
    """``--override=learning_rate`` on resume: the restored Adam's rate becomes the new one."""
    optimizer = model.optimizer
    try:
        optimizer.learning_rate = float(learning_rate)
    except (TypeError, ValueError) as error:
        raise app.UsageError(
            f"--learning_rate cannot be overridden for this run: its optimizer uses a schedule "
            f"({type(optimizer).__name__}: {error})."
        ) from error


_PEMR_FLAGS = (
    "mask_ratio",
    "pred_weight",
    "neg_weight",
    "offdiag_weight",
    "transformer_layers",
    "transformer_heads",
    "mel_sample_rate",
)
