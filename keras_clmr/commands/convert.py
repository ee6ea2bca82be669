r"""Convert an official PyTorch checkpoint (CLMR, PEMR) or a musicnn model into a keras_clmr preset.

    keras-clmr convert --source=clmr_checkpoint_10000.zip \
        --finetuner=finetuner_checkpoint_200.zip --output=presets/clmr-mtat-tagger
    keras-clmr convert --source=clmr_checkpoint_10000.zip --output=presets/clmr-mtat
    keras-clmr convert --source=pre-trained_model.ckpt --output=presets/pemr-mtat
    keras-clmr convert --source=musicnn:MTT_musicnn --output=presets/musicnn-mtt

Checkpoints are read with torch.load(weights_only=True) (no pickled code runs), every
tensor is mapped or reported, and the PyTorch reference of the same network must agree
with the Keras model within 1e-4 (the figures go into metadata.json). Prints a JSON summary.
"""

import json
import sys

from absl import flags

FORMATS = ["auto", "clmr-1.0", "clmr-2.0", "clmr-lightning", "clmr-finetuner", "pemr"]


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
    """Convert and write the preset; returns a JSON-able summary (parity, parameter counts)."""
    import os

    from keras_clmr.conversion.report import save_converted

    name = name or os.path.basename(os.path.normpath(output))
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
        path = save_converted(
            model,
            metadata,
            output,
            name=name,
            description=description,
            reported_scores=scores,
            license_id="isc",
            source_url=source_url,
            overwrite=overwrite,
        )
    else:
        from keras_clmr.conversion import convert_checkpoint

        model, metadata = convert_checkpoint(
            source, format=format, finetuner=finetuner, sample_rate=sample_rate, tags=tags
        )
        path = save_converted(
            model,
            metadata,
            output,
            name=name,
            description=description,
            source_url=source_url,
            overwrite=overwrite,
            encoder_only=False if keep_projector else None,
        )
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


def main(argv, flag_values=flags.FLAGS):
    del argv
    FLAGS = flag_values
    if not FLAGS.source or not FLAGS.output:
        print(
            "convert_checkpoint: --source and --output are required (see --help).", file=sys.stderr
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
    except FileExistsError:
        print(
            f"convert_checkpoint: {FLAGS.output} already exists; pass --overwrite to replace it.",
            file=sys.stderr,
        )
        return 1
    except (ConversionError, FileNotFoundError) as error:
        print(f"convert_checkpoint: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0
