"""Cover-song / version identification with a (pretrained) encoder: MAP, MR1, P@10.

    keras-clmr cover --checkpoint=runs/pretrain --dataset=demo
    keras-clmr cover --checkpoint=clmr-mtat --csv=/data/covers80/versions.csv

A clip's embedding is the mean of its non-overlapping chunk embeddings; items are compared
by cosine distance and every item queries all the others (keras_clmr.metrics). The CSV has
``path`` (relative to the CSV) and ``group`` (version-group id) columns. On the demo corpus a
"work" is a key (root + mode) with its chord progression; its versions differ in timbre,
tempo, rhythm and drums. Writes <output_dir>/cover_results.json and prints a Markdown table.
"""

import json
import os

from absl import app, flags

from keras_clmr.commands import _flags

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Define this command's flags (when it runs, so importing the module defines nothing)."""
    _flags.define_checkpoint_flags(
        flag_values, "Also evaluate a randomly initialised encoder of the same architecture."
    )
    flags.DEFINE_string(
        "dataset", "demo", "'demo' when --csv is not given.", flag_values=flag_values
    )
    flags.DEFINE_string("csv", None, "CSV with path,group columns.", flag_values=flag_values)
    _flags.define_demo_flags(flag_values, "Clips in the demo corpus.")
    flags.DEFINE_integer("seed", 42, "Seed of a random encoder.", flag_values=flag_values)
    flags.DEFINE_string(
        "output_dir", "runs/cover_eval", "Where cover_results.json goes.", flag_values=flag_values
    )


def main(argv):
    del argv
    encoder, identity = _flags.checkpoint_encoder(FLAGS)
    from keras_clmr import evaluation

    try:
        sample_rate = getattr(encoder, "sample_rate", None) or FLAGS.sample_rate
        if FLAGS.csv:
            clipset, description = evaluation.load_cover_csv(FLAGS.csv, sample_rate), FLAGS.csv
        elif FLAGS.dataset == "demo":
            clipset, description = (
                evaluation.demo_cover_set(FLAGS.demo_clips, FLAGS.demo_seconds, sample_rate),
                "demo corpus (all splits; work = key)",
            )
        else:
            raise ValueError(f"Unknown --dataset {FLAGS.dataset!r}: use 'demo' or pass --csv.")
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from error
    candidates = [
        ("pretrained" if identity["kind"] != "random" else "random init", encoder, identity)
    ]
    if FLAGS.compare_random and identity["kind"] != "random":
        fresh = evaluation.random_encoder(like=encoder, seed=FLAGS.seed)
        candidates.append(("random init", fresh, evaluation.describe_encoder(fresh, kind="random")))
    rows = []
    for name, model, ident in candidates:
        scores = evaluation.cover_song_eval(model, clipset)
        rows.append({"model": name, "encoder": ident, "dataset": description, **scores})
    from keras_clmr import io

    io.atomic_write_text(
        os.path.join(FLAGS.output_dir, "cover_results.json"),
        json.dumps(io.to_jsonable(rows), indent=2) + "\n",
    )
    print(evaluation.cover_markdown_table(rows))
