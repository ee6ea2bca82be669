"""CLMR's supervised baseline: a randomly initialised SampleCNN + linear head trained end to end.

Dropout 0.5 before the head, SGD (Nesterov momentum 0.9, weight decay 1e-6), ReduceLROnPlateau
(x0.2, patience 5) and early stopping on the validation loss (CLMR ``SupervisedLearning``).
Keras' weight decay is decoupled; at 1e-6 the difference from PyTorch's L2 is negligible.
"""

import keras
import numpy as np

from keras_clmr.evaluation.data import label_fraction_indices
from keras_clmr.evaluation.encoders import config_of
from keras_clmr.evaluation.features import predict_clips
from keras_clmr.evaluation.fitting import data_summary, evaluate_scores, fit_end_to_end, stamp
from keras_clmr.models.tagger import MusicTagger

SUPERVISED_DEFAULTS = dict(
    epochs=200,
    learning_rate=0.01,
    weight_decay=1e-6,
    batch_size=48,
    patience=10,
    lr_patience=5,
    lr_factor=0.2,
    dropout=0.5,
    momentum=0.9,
)


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
    seed=0,
    extraction_batch_size=64,
    jit_compile="auto",
    run_eagerly=False,
    verbose=0,
    tensorboard_dir=None,
):
    """CLMR's supervised baseline: ``encoder`` (fresh SampleCNN) + linear head, end to end.

    ``tensorboard_dir``: where TensorBoard logs of the training go (loss, val_loss, lr)."""
    num_classes = int(np.asarray(train.labels).shape[1])
    tags = list(tags) if tags is not None else [f"tag_{j}" for j in range(num_classes)]
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
    history = fit_end_to_end(
        tagger,
        train,
        valid,
        optimizer=optimizer,
        epochs=epochs,
        batch_size=batch_size,
        patience=patience,
        lr_patience=lr_patience,
        lr_factor=0.2,
        train_indices=indices,
        seed=seed,
        jit_compile=jit_compile,
        run_eagerly=run_eagerly,
        verbose=verbose,
        tensorboard_dir=tensorboard_dir,
    )
    scores = predict_clips(tagger, test, extraction_batch_size)
    summary, per_tag = evaluate_scores(scores, np.asarray(test.labels), multi_label, tags)
    results = {
        "task": "supervised",
        "metrics": summary,
        "per_tag": per_tag,
        "protocol": {
            "head": "linear",
            "dropout": float(dropout),
            "finetune": True,
            "multi_label": bool(multi_label),
            "optimizer": "SGD (Nesterov)",
            "momentum": float(momentum),
            "learning_rate": float(learning_rate),
            "weight_decay": float(weight_decay),
            "batch_size": int(batch_size),
            "max_epochs": int(epochs),
            "early_stopping_patience": patience,
            "reduce_lr": {"factor": 0.2, "patience": lr_patience},
            "test": "mean of per-chunk probabilities over non-overlapping chunks "
            "(last partial dropped)",
            "restore_best_weights": True,
            "seed": int(seed),
        },
        "data": data_summary(train, valid, test, indices, label_fraction),
        "history": history,
        "encoder": {
            "kind": "random",
            "class_name": type(encoder).__name__,
            "config": config_of(encoder),
        },
    }
    return tagger, stamp(results)
