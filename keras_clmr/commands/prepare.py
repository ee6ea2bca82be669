"""Decode a dataset once into sharded TFRecords (22050 Hz mono int16) plus manifest.json.

    keras-clmr prepare --dataset=mtat --source=/data/mtat --output=/data/mtat_prepared
    keras-clmr prepare --dataset=gtzan --source=/data/gtzan --output=/data/gtzan_prepared
    keras-clmr prepare --dataset=folder --source=/data/music --output=gs://bucket/music
    keras-clmr prepare --dataset=csv --source=/data/mine/labels.csv --output=/data/mine_prepared

(``python -m keras_clmr.data.prepare`` takes the same flags.) Worker processes decode; each
shard is written atomically with a progress marker, so a killed run resumes where it stopped.
A file that cannot be decoded is skipped and listed in manifest.json. Details:
keras_clmr/data/prepare.py.
"""

import os
import time

DEFAULT_SAMPLE_RATE = 22050  # keras_clmr.audio.DEFAULT_SAMPLE_RATE, without importing numpy here


def run_from_flags(FLAGS):
    """The command line's work, from parsed absl flags; returns the manifest."""
    from keras_clmr.data import datasets
    from keras_clmr.data.prepare import _remove_previous, prepare

    if not FLAGS.source or not FLAGS.output:
        raise ValueError("--source and --output are required.")
    vocabulary = None
    if FLAGS.vocabulary:
        if len(FLAGS.vocabulary) == 1 and os.path.isfile(FLAGS.vocabulary[0]):
            with open(FLAGS.vocabulary[0], encoding="utf-8") as file:
                vocabulary = [line.strip() for line in file if line.strip()]
        else:
            vocabulary = list(FLAGS.vocabulary)
    source = os.path.abspath(FLAGS.source)
    spec = datasets.get(
        FLAGS.dataset,
        source,
        split_dir=FLAGS.split_dir,
        seed=FLAGS.seed,
        annotations=FLAGS.annotations,
        task=FLAGS.task,
        vocabulary=vocabulary,
    )
    if FLAGS.overwrite:
        _remove_previous(FLAGS.output)
    config = {
        "source": source,
        "split_dir": FLAGS.split_dir and os.path.abspath(FLAGS.split_dir),
        "seed": FLAGS.seed,
        "task": FLAGS.task,
        "vocabulary": vocabulary,
    }
    started = time.time()
    manifest = prepare(
        spec,
        FLAGS.output,
        sample_rate=FLAGS.sample_rate,
        shard_mb=FLAGS.shard_mb,
        workers=FLAGS.workers,
        clips_per_shard=FLAGS.clips_per_shard,
        progress=FLAGS.progress,
        config=config,
    )
    elapsed = time.time() - started
    counts = ", ".join(f"{k}: {v['count']}" for k, v in manifest["splits"].items())
    skipped = manifest["skipped"]
    note = (
        f", e.g. {skipped[0]['path']}: {skipped[0]['reason']} (all listed in manifest.json)"
        if skipped
        else ""
    )
    print(
        f"Prepared {manifest['num_clips']} clips ({manifest['total_seconds'] / 3600:.2f} h of "
        f"audio; {counts}) "
        f"in {elapsed:.0f} s into {FLAGS.output}; {len(skipped)} skipped{note}."
    )
    return manifest


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        run_from_flags(flags.FLAGS)
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from error
    return 0


def define_flags(flag_values=None):
    """Define the command line's flags (on ``flag_values``, default the global absl FLAGS)."""
    from absl import flags

    fv = flag_values if flag_values is not None else flags.FLAGS
    flags.DEFINE_enum(
        "dataset",
        None,
        ["mtat", "gtzan", "folder", "csv"],
        "Source layout.",
        required=True,
        flag_values=fv,
    )
    flags.DEFINE_string(
        "source", None, "Dataset folder (or the CSV file for --dataset=csv).", flag_values=fv
    )
    flags.DEFINE_string(
        "output",
        None,
        "Output directory (local or any tf.io.gfile path, e.g. gs://).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "workers", None, "Decoding processes (default: all cores).", flag_values=fv
    )
    flags.DEFINE_integer(
        "shard_mb", 128, "Target shard size in MiB of decoded audio.", flag_values=fv
    )
    flags.DEFINE_integer(
        "clips_per_shard", None, "Clips per shard (overrides --shard_mb).", flag_values=fv
    )
    flags.DEFINE_integer("sample_rate", DEFAULT_SAMPLE_RATE, "Target sample rate.", flag_values=fv)
    flags.DEFINE_string(
        "split_dir",
        None,
        "mtat: musicnn-training pons2017 TSVs; gtzan: *_filtered.txt lists.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "annotations",
        None,
        "mtat: annotations_final.csv (default: in --source or its parent).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "seed", 0, "gtzan: seed of the stratified split when no --split_dir.", flag_values=fv
    )
    flags.DEFINE_enum(
        "task", "auto", ["auto", "multilabel", "multiclass"], "csv: the label task.", flag_values=fv
    )
    flags.DEFINE_list(
        "vocabulary",
        None,
        "csv: label order (comma-separated, or a file with one per line).",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "overwrite", False, "Delete an earlier preparation in --output first.", flag_values=fv
    )
    flags.DEFINE_bool("progress", True, "Show a progress bar with ETA.", flag_values=fv)
