"""Flag groups shared by several commands (defined at run time, like every command's flags)."""

from absl import flags


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
    """--output_dir, --jit_compile, --run_eagerly, --verbose, --tensorboard_dir of a fit."""
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
