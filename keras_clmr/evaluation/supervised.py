"""CLMR's supervised baseline: a randomly initialised SampleCNN + linear head trained end to end.

Dropout 0.5 before the head, SGD (Nesterov momentum 0.9, weight decay 1e-6), ReduceLROnPlateau
(x0.2, patience 5) and early stopping on the validation loss (CLMR ``SupervisedLearning``).
Keras' weight decay is decoupled; at 1e-6 the difference from PyTorch's L2 is negligible.
"""

import keras

from keras_clmr.evaluation.data import label_fraction_indices
from keras_clmr.evaluation.encoders import config_of
from keras_clmr.evaluation.features import predict_clips
from keras_clmr.evaluation.fitting import (
    SCHEDULE_KEYWORDS,
    fit_end_to_end,
    keyword_defaults,
    results_record,
    schedule,
    schedule_record,
    tag_names,
)
from keras_clmr.models.tagger import MusicTagger


def train_supervised(
    encoder,
    train,
    valid,
    test,
    *,
    tags=None,
    multi_label=True,
    label_fraction=1.0,
    epochs=200,
    learning_rate=0.01,
    weight_decay=1e-6,
    momentum=0.9,
    dropout=0.5,
    batch_size=48,
    patience=10,
    lr_patience=5,
    lr_factor=0.2,
    seed=0,
    extraction_batch_size=64,
    jit_compile="auto",
    run_eagerly=False,
    verbose=0,
    tensorboard_dir=None,
):
    """CLMR's supervised baseline: ``encoder`` (fresh SampleCNN) + linear head, end to end.

    ``tensorboard_dir``: where TensorBoard logs of the training go (loss, val_loss, lr)."""
    num_classes, tags = tag_names(train, tags)
    indices = label_fraction_indices(len(train), label_fraction, seed)
    keras.utils.set_random_seed(int(seed))
    tagger = MusicTagger(
        encoder,
        num_classes,
        head="linear",
        multi_label=multi_label,
        tags=tags,
        freeze_backbone=False,
        dropout=dropout,
    )
    tagger.build((None, tagger.input_samples))
    optimizer = keras.optimizers.SGD(
        learning_rate, momentum=momentum, nesterov=True, weight_decay=weight_decay or None
    )
    plan = schedule(epochs, batch_size, patience, lr_patience, lr_factor)
    history = fit_end_to_end(
        tagger,
        train,
        valid,
        optimizer=optimizer,
        train_indices=indices,
        **plan,
        seed=seed,
        jit_compile=jit_compile,
        run_eagerly=run_eagerly,
        verbose=verbose,
        tensorboard_dir=tensorboard_dir,
    )
    scores = predict_clips(tagger, test, extraction_batch_size)
    protocol = {
        "head": "linear",
        "dropout": float(dropout),
        "finetune": True,
        "multi_label": bool(multi_label),
        "optimizer": "SGD (Nesterov)",
        "momentum": float(momentum),
        **schedule_record(learning_rate, weight_decay, plan),
        "test": "mean of per-chunk probabilities over non-overlapping chunks "
        "(last partial dropped)",
        "restore_best_weights": True,
        "seed": int(seed),
    }
    encoder_record = {
        "kind": "random",
        "class_name": type(encoder).__name__,
        "config": config_of(encoder),
    }
    results = results_record(
        "supervised",
        scores,
        (train, valid, test),
        indices,
        label_fraction,
        tags=tags,
        multi_label=multi_label,
        protocol=protocol,
        history=history,
        encoder=encoder_record,
    )
    return tagger, results


SUPERVISED_DEFAULTS = keyword_defaults(
    train_supervised, SCHEDULE_KEYWORDS + ("dropout", "momentum")
)
