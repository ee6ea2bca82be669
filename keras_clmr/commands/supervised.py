"""CLMR's supervised baseline: a SampleCNN trained end to end on the labels.

    keras-clmr supervised --dataset=demo --channels=16,16,16,16,16,16,16,16,16,32,32 --epochs=20
    keras-clmr supervised --data_dir=/data/mtat_prepared

Dropout 0.5 before a linear head, SGD with Nesterov momentum 0.9 and weight decay 1e-6,
ReduceLROnPlateau(x0.2, patience 5) and early stopping on the validation loss (CLMR
``SupervisedLearning``); tested like the probes (mean of per-chunk probabilities per clip).
The default learning rate 0.01 is SampleCNN's (Lee et al. 2017); CLMR's config default is 3e-4.
Writes <output_dir>/results.json, per_tag.csv, per_tag_auc.png, training_curves.png,
results.md and tagger.keras.
"""

import os

from absl import app, flags

from keras_clmr.commands import _flags

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Define this command's flags (when it runs, so importing the module defines nothing)."""
    flags.DEFINE_string(
        "dataset",
        "demo",
        "'demo' (the offline synthetic corpus) when --data_dir is not given.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "A directory prepared by keras_clmr.data.prepare (train/valid/test splits).",
        flag_values=flag_values,
    )
    _flags.define_encoder_flags(
        flag_values,
        "Sample rate; picks the SampleCNN stride set.",
        "SampleCNN widths (11 ints) for a smaller model; default CLMR's.",
    )
    flags.DEFINE_float(
        "label_fraction",
        1.0,
        "Fraction of the training clips whose labels are used (seeded subset).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "epochs",
        200,
        "Maximum epochs (early stopping on the validation loss).",
        flag_values=flag_values,
    )
    flags.DEFINE_float("learning_rate", 0.01, "SGD learning rate.", flag_values=flag_values)
    flags.DEFINE_float("momentum", 0.9, "Nesterov momentum.", flag_values=flag_values)
    flags.DEFINE_float("weight_decay", 1e-6, "Weight decay.", flag_values=flag_values)
    flags.DEFINE_float("dropout", 0.5, "Dropout before the head.", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 48, "Training batch size.", flag_values=flag_values)
    flags.DEFINE_integer(
        "patience", 10, "Early-stopping patience (epochs).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "demo_clips", 96, "Clips in the demo corpus (--dataset=demo).", flag_values=flag_values
    )
    flags.DEFINE_float("demo_seconds", 6.0, "Seconds per demo clip.", flag_values=flag_values)
    flags.DEFINE_integer(
        "seed", 42, "Seed of the weights, crops and label subset.", flag_values=flag_values
    )
    _flags.define_training_flags(flag_values, "runs/supervised")


def main(argv):
    del argv
    from keras_clmr import evaluation

    try:
        encoder = evaluation.random_encoder(
            FLAGS.sample_rate, FLAGS.channels, FLAGS.seed, strides=FLAGS.strides
        )
        splits, tags, multi_label, description = evaluation.load_splits(
            FLAGS.dataset, FLAGS.data_dir, FLAGS.sample_rate, FLAGS.demo_clips, FLAGS.demo_seconds
        )
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from error
    print(
        f"Supervised SampleCNN ({encoder.count_params():,} parameters) on {description}; "
        f"label fraction {FLAGS.label_fraction:g}.",
        flush=True,
    )
    tagger, results = evaluation.train_supervised(
        encoder,
        splits["train"],
        splits["valid"],
        splits["test"],
        tags=tags,
        multi_label=multi_label,
        label_fraction=FLAGS.label_fraction,
        epochs=FLAGS.epochs,
        learning_rate=FLAGS.learning_rate,
        weight_decay=FLAGS.weight_decay,
        momentum=FLAGS.momentum,
        dropout=FLAGS.dropout,
        batch_size=FLAGS.batch_size,
        patience=FLAGS.patience,
        seed=FLAGS.seed,
        jit_compile="auto" if FLAGS.jit_compile else False,
        run_eagerly=FLAGS.run_eagerly,
        verbose=FLAGS.verbose,
        tensorboard_dir=FLAGS.tensorboard_dir,
    )
    results["dataset"] = description
    evaluation.write_results(FLAGS.output_dir, results, tagger, name="supervised SampleCNN")
    print()
    print(evaluation.markdown_table([("supervised SampleCNN", results)]))
    written = sorted(
        name for name in evaluation.RESULT_FILES if name in os.listdir(FLAGS.output_dir)
    )
    print(f"Results in {FLAGS.output_dir}/ ({', '.join(written)}).")
