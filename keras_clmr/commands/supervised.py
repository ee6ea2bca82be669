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

from absl import app, flags

from keras_clmr.commands import _flags

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Define this command's flags (when it runs, so importing the module defines nothing)."""
    _flags.define_data_flags(flag_values)
    _flags.define_encoder_flags(
        flag_values,
        "Sample rate; picks the SampleCNN stride set.",
        "SampleCNN widths (11 ints) for a smaller model; default CLMR's.",
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
    flags.DEFINE_integer(
        "patience", 10, "Early-stopping patience (epochs).", flag_values=flag_values
    )
    _flags.define_demo_flags(flag_values)
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
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from error
    splits, tags, multi_label, description = _flags.labelled_splits(FLAGS, FLAGS.sample_rate)
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
        momentum=FLAGS.momentum,
        dropout=FLAGS.dropout,
        **_flags.fit_arguments(FLAGS),
    )
    results["dataset"] = description
    evaluation.write_results(FLAGS.output_dir, results, tagger, name="supervised SampleCNN")
    print()
    print(evaluation.markdown_table([("supervised SampleCNN", results)]))
    written = evaluation.written_result_files(FLAGS.output_dir)
    print(f"Results in {FLAGS.output_dir}/ ({', '.join(written)}).")
