"""Training shared by probes, fine-tuning and the supervised baseline, and their results records.

Early stopping restores the best-validation weights (CLMR keeps the last ones; restoring the
best is the usual reading of early stopping and never worse on validation).
"""

import datetime
import inspect
import os
import warnings

import keras
import numpy as np

from keras_clmr import metrics as metrics_lib
from keras_clmr.evaluation.data import train_data, valid_data

# The published optimiser and schedule keywords (``LINEAR_EVAL_DEFAULTS`` and the like).
SCHEDULE_KEYWORDS = (
    "epochs",
    "learning_rate",
    "weight_decay",
    "batch_size",
    "patience",
    "lr_patience",
    "lr_factor",
)


def keyword_defaults(function, names):
    """``{name: default}`` of ``function``'s keywords: the published defaults read from the one
    place they are set (the signature)."""
    parameters = inspect.signature(function).parameters
    return {name: parameters[name].default for name in names}


def tag_names(train, tags):
    """(number of label columns of ``train``, their names: ``tags`` or ``tag_<j>``)."""
    num_classes = int(np.asarray(train.labels).shape[1])
    tags = list(tags) if tags is not None else [f"tag_{j}" for j in range(num_classes)]
    if len(tags) != num_classes:
        raise ValueError(f"{len(tags)} tag names for {num_classes} label columns.")
    return num_classes, tags


def schedule(epochs, batch_size, patience, lr_patience, lr_factor):
    """The schedule keywords of ``fit_head`` and ``fit_end_to_end`` (and of its record)."""
    return dict(
        epochs=epochs,
        batch_size=batch_size,
        patience=patience,
        lr_patience=lr_patience,
        lr_factor=lr_factor,
    )


def schedule_record(learning_rate, weight_decay, schedule):
    """The optimiser and schedule part of a results ``protocol`` record."""
    return {
        "learning_rate": float(learning_rate),
        "weight_decay": float(weight_decay),
        "batch_size": int(schedule["batch_size"]),
        "max_epochs": int(schedule["epochs"]),
        "early_stopping_patience": schedule["patience"],
        "reduce_lr": {"factor": schedule["lr_factor"], "patience": schedule["lr_patience"]},
    }


def loss(multi_label):
    if multi_label:
        return keras.losses.BinaryCrossentropy(from_logits=True)
    return keras.losses.CategoricalCrossentropy(from_logits=True)


def callbacks(patience, lr_patience, lr_factor, tensorboard_dir=None):
    """Plateau LR schedule and early stopping; TensorBoard logs (loss, val_loss, learning
    rate) in ``tensorboard_dir`` when given."""
    chosen = [
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=lr_factor, patience=lr_patience, verbose=0
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True
        ),
    ]
    if tensorboard_dir:
        os.makedirs(tensorboard_dir, exist_ok=True)
        chosen.append(keras.callbacks.TensorBoard(os.fspath(tensorboard_dir)))
    return chosen


def quiet_fit(model, *args, **kwargs):
    """``model.fit`` without Keras' "Your input ran out of data" warning: a finite dataset of
    unknown length (filtered TFRecords) ends each epoch that way, by design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        return model.fit(*args, **kwargs)


def history_summary(history):
    val = [float(v) for v in history.history.get("val_loss", [])]
    return {
        "epochs_run": len(val),
        "best_epoch": int(np.argmin(val)) + 1 if val else None,
        "best_val_loss": min(val) if val else None,
        "train_loss": [float(v) for v in history.history.get("loss", [])],
        "val_loss": val,
    }


def fit_end_to_end(
    tagger,
    train,
    valid,
    *,
    optimizer,
    epochs,
    batch_size,
    patience,
    lr_patience,
    lr_factor,
    train_indices=None,
    seed=0,
    jit_compile="auto",
    run_eagerly=False,
    verbose=0,
    tensorboard_dir=None,
):
    """Train a MusicTagger end to end on random crops (fine-tuning, supervised); the history."""
    indices = np.arange(len(train)) if train_indices is None else np.asarray(train_indices)
    view = tagger.logits_model()
    view.compile(
        optimizer=optimizer,
        loss=loss(tagger.multi_label),
        jit_compile=jit_compile,
        run_eagerly=run_eagerly,
    )
    data = train_data(train, tagger.input_samples, batch_size, seed, indices)
    validation = valid_data(valid, tagger.input_samples, batch_size, seed + 1)
    history = quiet_fit(
        view,
        data,
        validation_data=validation,
        epochs=int(epochs),
        verbose=verbose,
        callbacks=callbacks(patience, lr_patience, lr_factor, tensorboard_dir),
        validation_batch_size=batch_size,
    )
    return history_summary(history)


def evaluate_scores(scores, labels, multi_label, tags):
    computed = metrics_lib.tagging_metrics(labels, scores, multi_label=multi_label, tags=tags)
    per_tag = [
        {
            "tag": tag,
            "roc_auc": computed["per_tag_roc_auc"][j],
            "pr_auc": computed["per_tag_pr_auc"][j],
            "test_positives": int(labels[:, j].sum()),
        }
        for j, tag in enumerate(tags)
    ]
    summary = {k: v for k, v in computed.items() if not k.startswith("per_tag")}
    return summary, per_tag


def data_summary(train, valid, test, indices, label_fraction):
    return {
        "n_train_clips": len(train),
        "n_train_used": int(len(indices)),
        "label_fraction": float(label_fraction),
        "n_valid_clips": len(valid),
        "n_test_clips": len(test),
    }


def results_record(
    task, scores, splits, indices, label_fraction, *, tags, multi_label, protocol, history, encoder
):
    """The results dict of a tagger trained on ``splits`` (train, valid, test): test metrics and
    per-tag scores of its clip ``scores``, the records given, the data summary, the stamp."""
    train, valid, test = splits
    summary, per_tag = evaluate_scores(scores, np.asarray(test.labels), multi_label, tags)
    return stamp(
        {
            "task": task,
            "metrics": summary,
            "per_tag": per_tag,
            "protocol": protocol,
            "data": data_summary(train, valid, test, indices, label_fraction),
            "history": history,
            "encoder": encoder,
        }
    )


def stamp(results):
    results["keras_version"] = keras.__version__
    results["backend"] = keras.backend.backend()
    results["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return results
