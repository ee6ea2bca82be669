"""Flag groups shared by several commands (defined at run time, like every command's flags),
and what those commands read from them: the encoder of --checkpoint, the labelled splits of
--dataset/--data_dir, the keyword arguments of a fit (errors a user can fix as UsageError).

The flags defined here belong to the command that calls the group (``disclaim_key_flags``), so
``keras-clmr <command> --help`` lists them with the command's own flags.
"""

from absl import flags

flags.disclaim_key_flags()

PREPARED_SPLITS_HELP = "A directory prepared by keras_clmr.data.prepare (train/valid/test splits)."


def define_checkpoint_flags(flag_values, compare_random_help):
    """--checkpoint (the encoder under evaluation: ``keras_clmr.evaluation.load_encoder``), the
    encoder flags of --checkpoint=random, and --compare_random."""
    flags.DEFINE_string(
        "checkpoint",
        None,
        "Encoder source: pretraining dir/.keras, preset folder/name, 'random'.",
        flag_values=flag_values,
    )
    define_encoder_flags(
        flag_values,
        "Sample rate for --checkpoint=random and the demo corpus.",
        "SampleCNN widths (11 ints) for --checkpoint=random.",
    )
    flags.DEFINE_bool("compare_random", False, compare_random_help, flag_values=flag_values)


def checkpoint_encoder(values, checkpoint=None):
    """(encoder, identity record) of --checkpoint (or ``checkpoint``), a random one built from
    the encoder flags; ``app.UsageError`` when it is missing or cannot be loaded."""
    from absl import app

    checkpoint = checkpoint or values.checkpoint
    if not checkpoint:
        raise app.UsageError(
            "--checkpoint is required (a pretraining dir or .keras file, a preset, or 'random')."
        )
    from keras_clmr import evaluation

    try:
        return evaluation.load_encoder(
            checkpoint, values.sample_rate, values.channels, values.seed, values.strides
        )
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from error


def define_data_flags(flag_values, data_dir_help=PREPARED_SPLITS_HELP):
    """--dataset (the offline demo corpus by default) and --data_dir (real data)."""
    flags.DEFINE_string(
        "dataset",
        "demo",
        "'demo' (the offline synthetic corpus) when --data_dir is not given.",
        flag_values=flag_values,
    )
    flags.DEFINE_string("data_dir", None, data_dir_help, flag_values=flag_values)


def labelled_splits(values, sample_rate):
    """``evaluation.load_splits`` of --dataset/--data_dir and the demo flags: (splits, tags,
    multi_label, description); ``app.UsageError`` when the data cannot be used."""
    from absl import app

    from keras_clmr import evaluation

    try:
        return evaluation.load_splits(
            values.dataset, values.data_dir, sample_rate, values.demo_clips, values.demo_seconds
        )
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from error


def define_demo_flags(flag_values, clips_help="Clips in the demo corpus (--dataset=demo)."):
    """--demo_clips and --demo_seconds: the size of the offline demo corpus."""
    flags.DEFINE_integer("demo_clips", 96, clips_help, flag_values=flag_values)
    flags.DEFINE_float("demo_seconds", 6.0, "Seconds per demo clip.", flag_values=flag_values)


def define_encoder_flags(flag_values, sample_rate_help, channels_help):
    """--sample_rate, --strides, --channels: the SampleCNN a random or new encoder gets."""
    flags.DEFINE_integer("sample_rate", 22050, sample_rate_help, flag_values=flag_values)
    flags.DEFINE_list(
        "strides",
        None,
        "SampleCNN strides (9 ints) for a random encoder; default: by --sample_rate.",
        flag_values=flag_values,
    )
    flags.DEFINE_list("channels", None, channels_help, flag_values=flag_values)


def define_training_flags(flag_values, output_dir):
    """--label_fraction, --batch_size, --output_dir, --jit_compile, --run_eagerly, --verbose,
    --tensorboard_dir of a tagger's fit (read back by ``fit_arguments``)."""
    flags.DEFINE_float(
        "label_fraction",
        1.0,
        "Fraction of the training clips whose labels are used (seeded subset).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("batch_size", 48, "Training batch size.", flag_values=flag_values)
    flags.DEFINE_string(
        "output_dir",
        output_dir,
        "Where the results and the trained tagger go.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "jit_compile",
        True,
        "XLA-compile training steps where the backend supports it.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "run_eagerly",
        False,
        "Train eagerly (debugging; faster start for tiny runs).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("verbose", 0, "Keras fit verbosity.", flag_values=flag_values)
    flags.DEFINE_string(
        "tensorboard_dir",
        None,
        "Write TensorBoard logs of the training (loss, val_loss, learning rate) here.",
        flag_values=flag_values,
    )


def fit_arguments(values):
    """The keywords ``train_probe`` and ``train_supervised`` share, read from parsed flags:
    the training group, the schedule flags each command defines (--epochs, --learning_rate,
    --weight_decay, --patience) and --seed."""
    return dict(
        label_fraction=values.label_fraction,
        epochs=values.epochs,
        learning_rate=values.learning_rate,
        weight_decay=values.weight_decay,
        batch_size=values.batch_size,
        patience=values.patience,
        seed=values.seed,
        jit_compile="auto" if values.jit_compile else False,
        run_eagerly=values.run_eagerly,
        verbose=values.verbose,
        tensorboard_dir=values.tensorboard_dir,
    )
