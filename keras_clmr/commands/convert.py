r"""Convert an official PyTorch checkpoint (CLMR, PEMR) or a musicnn model into a keras_clmr preset.

Into the keras_clmr cache, as what a registry name loads (the offline fix: the release file
downloaded by hand; checked against the sha256 kept from a first download, if any):

    keras-clmr convert --input clmr_checkpoint_10000.zip --preset clmr-mtat
    keras-clmr convert --input clmr_checkpoint_10000.zip \
        --finetuner finetuner_checkpoint_200.zip --preset clmr-mtat --task tag

Into any folder:

    keras-clmr convert --source=clmr_checkpoint_10000.zip \
        --finetuner=finetuner_checkpoint_200.zip --output=presets/clmr-mtat-tagger
    keras-clmr convert --source=clmr_checkpoint_10000.zip --output=presets/clmr-mtat
    keras-clmr convert --source=pre-trained_model.ckpt --output=presets/pemr-mtat
    keras-clmr convert --source=musicnn:MTT_musicnn --output=presets/musicnn-mtt

Checkpoints are read without torch by a restricted unpickler (no pickled code runs), every
tensor is mapped or reported, and the float64 numpy reference of the original network must
agree with the Keras model: max|keras - reference| <= 1e-4 * max(1, max|reference|), equal
parameter counts (the figures go into metadata.json). Prints a JSON summary.
"""

import json
import sys

from absl import flags

FORMATS = ["auto", "clmr-1.0", "clmr-2.0", "clmr-lightning", "clmr-finetuner", "pemr", "cpc"]


def define_flags(flag_values=flags.FLAGS):
    """Define this command's flags (when it runs, so importing the module defines nothing)."""
    fv = flag_values
    flags.DEFINE_string(
        "source",
        None,
        "A .pt/.ckpt checkpoint, a release .zip, or musicnn:<MTT_musicnn|"
        "MSD_musicnn|MTT_vgg|MSD_vgg> (from the installed musicnn wheel).",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "format",
        "auto",
        FORMATS,
        "Checkpoint family; 'auto' reads it from the keys.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "finetuner",
        None,
        "Optional head checkpoint to attach (CLMR: 0.weight [50, 512], 0.bias).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "input",
        None,
        "A release file downloaded by hand (with --preset: converted into the keras_clmr "
        "cache as that registry preset).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "preset",
        None,
        "Registry preset whose release file --input is (e.g. clmr-mtat); the result goes to "
        "the keras_clmr cache ($KERAS_CLMR_CACHE).",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "task", "embed", ["embed", "tag"], "With --preset: the variant to build.", flag_values=fv
    )
    flags.DEFINE_string("output", None, "The preset folder to write.", flag_values=fv)
    flags.DEFINE_string(
        "name",
        None,
        "Preset name for metadata and the card (default: the output folder name).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "description", None, "One-line description for metadata and the card.", flag_values=fv
    )
    flags.DEFINE_string(
        "source_url",
        None,
        "Where the checkpoint was downloaded from (recorded in metadata.json).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "sample_rate",
        None,
        "Override the sample rate (default: from the SampleCNN strides).",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "tags",
        None,
        "Names of the head's outputs (default: the 50 MTAT tags for a 50-way head).",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "keep_projector",
        False,
        "CLMR: store the whole pretrainer (encoder + projector), not just the encoder.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "parity_audio",
        None,
        "musicnn: an audio file for the parity check (default: a synthetic clip).",
        flag_values=fv,
    )
    flags.DEFINE_bool("overwrite", False, "Replace an existing --output folder.", flag_values=fv)


def convert(
    source,
    output,
    format="auto",
    finetuner=None,
    name=None,
    description=None,
    source_url=None,
    sample_rate=None,
    tags=None,
    keep_projector=False,
    parity_audio=None,
    overwrite=False,
):
    """Convert and write the preset; returns a JSON-able summary (parity, parameter counts).

    An existing ``output`` is refused unless ``overwrite``; then only the files its
    metadata.json lists are replaced (the user's own files there stay, unlisted), and the new
    preset is built aside and swapped in whole (a kill leaves the old one or the new one).
    """
    import os

    from keras_clmr import io
    from keras_clmr.export.preset import staged_output, user_entries_to_keep

    output = os.path.abspath(os.fspath(output))
    io.recover_folder(output)
    if os.path.lexists(output) and not overwrite:
        raise io.OutputExistsError(f"{output} already exists; pass --overwrite to replace it.")
    keep = user_entries_to_keep(output, overwrite=True)
    name = name or os.path.basename(os.path.normpath(output))
    with staged_output(output, keep=keep) as work:
        metadata = _convert_into(
            work,
            source,
            format=format,
            finetuner=finetuner,
            name=name,
            description=description,
            source_url=source_url,
            sample_rate=sample_rate,
            tags=tags,
            keep_projector=keep_projector,
            parity_audio=parity_audio,
        )
    return _summary(output, metadata)


def _convert_into(
    output,
    source,
    format,
    finetuner,
    name,
    description,
    source_url,
    sample_rate,
    tags,
    keep_projector,
    parity_audio,
):
    """Convert ``source`` and save it as a preset at ``output`` (a new folder)."""
    import os

    from keras_clmr.conversion.report import save_converted

    if source.startswith("musicnn:"):
        from keras_clmr.conversion import musicnn

        model_name = source.split(":", 1)[1]
        audio = label = None
        if parity_audio:
            from keras_clmr.audio import load

            audio, label = load(parity_audio, sample_rate=16000), os.path.basename(parity_audio)
            audio = audio if audio.ndim == 1 else audio.mean(axis=-1)
        model, metadata = musicnn.convert_musicnn(model_name, audio=audio, audio_label=label)
        preset = next((p for p, info in musicnn.PRESET_INFO.items() if info[0] == model_name), None)
        scores = musicnn.reported_scores(preset) if preset else ()
        save_converted(
            model,
            metadata,
            output,
            name=name,
            description=description,
            reported_scores=scores,
            license_id="isc",
            source_url=source_url,
        )
    else:
        from keras_clmr.conversion import convert_checkpoint

        model, metadata = convert_checkpoint(
            source, format=format, finetuner=finetuner, sample_rate=sample_rate, tags=tags
        )
        save_converted(
            model,
            metadata,
            output,
            name=name,
            description=description,
            source_url=source_url,
            encoder_only=False if keep_projector else None,
        )
    return metadata


def _summary(path, metadata):
    """The JSON-able summary of a conversion written to ``path``."""
    parity = {"model": metadata.get("parity", {}).get("max_abs_diff")}
    if metadata.get("finetuner", {}).get("parity"):
        parity["finetuner"] = metadata["finetuner"]["parity"]["max_abs_diff"]
    counts = metadata.get("parameter_counts") or metadata.get("parity", {}).get("parameter_counts")
    if metadata.get("finetuner", {}).get("parity"):
        counts = metadata["finetuner"]["parity"]["parameter_counts"]
    from keras_clmr.hub import read_metadata

    stored = read_metadata(path)
    return {
        "output": path,
        "source_format": metadata.get("source_format"),
        "model": stored["class_name"],
        "stored_from": stored.get("stored_from"),
        "parameter_count": stored.get("parameter_count"),
        "max_abs_diff": parity,
        "parameter_counts": counts,
    }


def convert_preset(files, preset, task="embed", overwrite=False):
    """Convert hand-downloaded release file(s) of a registry preset into the keras_clmr cache."""
    from keras_clmr.hub import convert_into_cache, read_metadata

    path = convert_into_cache(preset, files, task=task, overwrite=overwrite)
    stored = read_metadata(path)
    conversion = stored["evaluation"]["conversion"]
    parity = (conversion.get("finetuner") or {}).get("parity") or conversion.get("parity") or {}
    return {
        "output": path,
        "preset": preset,
        "task": task,
        "source_checkpoint": stored.get("source_checkpoint"),
        "model": stored["class_name"],
        "parameter_count": stored.get("parameter_count"),
        "max_abs_diff": parity.get("max_abs_diff"),
        "relative_diff": parity.get("relative_diff"),
        "parameter_counts": parity.get("parameter_counts"),
    }


def _main_preset(FLAGS):
    from keras_clmr.conversion import ConversionError
    from keras_clmr.presets import PresetError

    if not FLAGS.input or FLAGS.source or FLAGS.output:
        print(
            "convert: --preset takes --input FILE (and --finetuner FILE with --task tag), not "
            "--source/--output.",
            file=sys.stderr,
        )
        return 2
    files = [FLAGS.input] + ([FLAGS.finetuner] if FLAGS.finetuner else [])
    try:
        summary = convert_preset(files, FLAGS.preset, task=FLAGS.task, overwrite=FLAGS.overwrite)
    except FileExistsError as error:
        print(f"convert: {error}", file=sys.stderr)
        return 1
    except (PresetError, ConversionError) as error:
        print(f"convert: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


def main(argv, flag_values=flags.FLAGS):
    del argv
    FLAGS = flag_values
    if FLAGS.preset:
        return _main_preset(FLAGS)
    if FLAGS.input and not FLAGS.source:
        FLAGS.source = FLAGS.input
    if not FLAGS.source or not FLAGS.output:
        print(
            "convert_checkpoint: --source (or --input) and --output are required, or --input "
            "with --preset NAME to convert into the keras_clmr cache (see --help).",
            file=sys.stderr,
        )
        return 2
    from keras_clmr.conversion import ConversionError

    try:
        summary = convert(
            FLAGS.source,
            FLAGS.output,
            format=FLAGS.format,
            finetuner=FLAGS.finetuner,
            name=FLAGS.name,
            description=FLAGS.description,
            source_url=FLAGS.source_url,
            sample_rate=FLAGS.sample_rate,
            tags=FLAGS.tags,
            keep_projector=FLAGS.keep_projector,
            parity_audio=FLAGS.parity_audio,
            overwrite=FLAGS.overwrite,
        )
    except FileExistsError as error:  # io.OutputExistsError: names the folder and the fix
        print(f"convert_checkpoint: {error}", file=sys.stderr)
        return 1
    except (ConversionError, FileNotFoundError) as error:
        print(f"convert_checkpoint: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0
