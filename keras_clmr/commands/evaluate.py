"""Linear / MLP probe or fine-tuning of a pretrained encoder, evaluated as CLMR does.

    keras-clmr evaluate --checkpoint=runs/pretrain --dataset=demo
    keras-clmr evaluate --checkpoint=runs/pretrain/model.keras --data_dir=/data/mtat_prepared
    keras-clmr evaluate --checkpoint=clmr-mtat --data_dir=/data/mtat_prepared --head=mlp
    keras-clmr evaluate --checkpoint=... --data_dir=... --label_fraction=0.01
    keras-clmr evaluate --checkpoint=... --data_dir=... --finetune
    keras-clmr evaluate --checkpoint=runs/pretrain --dataset=demo --compare_random

--checkpoint: a pretraining output directory or .keras file (CLMR -> its encoder), an encoder
.keras file, a preset folder / name / hf:// handle, ``random`` (a fresh SampleCNN for
--sample_rate / --channels) or ``random:<checkpoint>`` (fresh weights, that architecture).

Writes <output_dir>/results.json, per_tag.csv, per_tag_auc.png, training_curves.png,
results.md and tagger.keras, and prints the Markdown table. Protocol: keras_clmr/evaluation/.
"""

import os

from absl import flags

from keras_clmr.commands import _flags

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Define this command's flags (when it runs, so importing the module defines nothing)."""
    _flags.define_checkpoint_flags(
        flag_values, "Also probe a randomly initialised encoder of the same architecture."
    )
    _flags.define_data_flags(flag_values)
    flags.DEFINE_enum(
        "head",
        "linear",
        ["linear", "mlp"],
        "Probe head: Dense(n) or Dense(512)-ReLU-Dense(n).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "finetune",
        False,
        "Train the encoder too (fresh random crops every epoch).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "epochs",
        200,
        "Maximum epochs (early stopping on the validation loss, patience 10).",
        flag_values=flag_values,
    )
    flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.", flag_values=flag_values)
    flags.DEFINE_float("weight_decay", 1e-6, "Adam weight decay.", flag_values=flag_values)
    flags.DEFINE_integer(
        "patience",
        10,
        "Early-stopping patience (epochs without a better validation loss).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "crops_per_clip",
        1,
        "Random crops per training/validation clip for the static features.",
        flag_values=flag_values,
    )
    _flags.define_demo_flags(flag_values)
    flags.DEFINE_integer(
        "seed",
        42,
        "Seed of the crops, label subset and head initialisation.",
        flag_values=flag_values,
    )
    _flags.define_training_flags(flag_values, "runs/linear_eval")


def run(checkpoint, output_dir, random_baseline=False):
    encoder, identity = _flags.checkpoint_encoder(FLAGS, checkpoint)
    from keras_clmr import evaluation

    sample_rate = getattr(encoder, "sample_rate", None) or FLAGS.sample_rate
    splits, tags, multi_label, description = _flags.labelled_splits(FLAGS, sample_rate)
    mode = "fine-tuning" if FLAGS.finetune else f"{FLAGS.head} probe"
    print(
        f"{mode} of {identity['class_name']} ({identity['parameters']:,} parameters, "
        f"{identity['kind']}) "
        f"on {description}; label fraction {FLAGS.label_fraction:g}.",
        flush=True,
    )
    rows = []
    candidates = [
        ("pretrained" if identity["kind"] != "random" else "random init", encoder, identity)
    ]
    if random_baseline and identity["kind"] != "random":
        fresh = evaluation.random_encoder(like=encoder, seed=FLAGS.seed)
        candidates.append(
            (
                "random init",
                fresh,
                evaluation.describe_encoder(
                    fresh, kind="random", seed=FLAGS.seed, architecture_of=identity
                ),
            )
        )
    for name, model, ident in candidates:
        tagger, results = evaluation.train_probe(
            model,
            splits["train"],
            splits["valid"],
            splits["test"],
            tags=tags,
            multi_label=multi_label,
            head=FLAGS.head,
            finetune=FLAGS.finetune,
            crops_per_clip=FLAGS.crops_per_clip,
            encoder_identity=ident,
            **_flags.fit_arguments(FLAGS),
        )
        results["dataset"] = description
        target = (
            output_dir
            if name != "random init" or len(candidates) == 1
            else os.path.join(output_dir, "random_init")
        )
        evaluation.write_results(target, results, tagger, name=name)
        rows.append((name, results))
    return rows


def main(argv):
    del argv
    rows = run(FLAGS.checkpoint, FLAGS.output_dir, FLAGS.compare_random)
    from keras_clmr import evaluation

    table = evaluation.markdown_table(rows)
    if len(rows) > 1:
        from keras_clmr import io

        io.atomic_write_text(os.path.join(FLAGS.output_dir, "comparison.md"), table)
    print()
    print(table)
    written = evaluation.written_result_files(FLAGS.output_dir)
    print(f"Results in {FLAGS.output_dir}/ ({', '.join(written)}).")
