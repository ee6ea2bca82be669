"""Linear / MLP probes and fine-tuning of a pretrained encoder (CLMR's linear evaluation).

Frozen probe: one random crop per training and validation clip is encoded once and the head is
trained on these static features with torch's Adam as the original (lr 1e-3, epsilon 1e-8,
L2 weight decay 1e-6 added to the gradient), ReduceLROnPlateau (x0.1, patience 5) and early
stopping (patience 10) on the validation loss, up to 200 epochs, batch 48. Fine-tuning: same
head and optimiser, encoder trainable, a fresh crop per epoch.
"""

import keras
import numpy as np

from keras_clmr.evaluation.data import ClipSet, label_fraction_indices
from keras_clmr.evaluation.encoders import describe_encoder
from keras_clmr.evaluation.features import embed_crops, frozen_clip_scores, predict_clips
from keras_clmr.evaluation.fitting import (
    SCHEDULE_KEYWORDS,
    callbacks,
    fit_end_to_end,
    history_summary,
    keyword_defaults,
    loss,
    quiet_fit,
    results_record,
    schedule,
    schedule_record,
    tag_names,
)
from keras_clmr.models.tagger import MusicTagger, build_head
from keras_clmr.optimizers import TorchAdam


def fit_head(
    train_x,
    train_y,
    valid_x,
    valid_y,
    *,
    head="linear",
    multi_label=True,
    epochs=200,
    learning_rate=1e-3,
    weight_decay=1e-6,
    batch_size=48,
    patience=10,
    lr_patience=5,
    lr_factor=0.1,
    hidden_dim=512,
    seed=0,
    jit_compile="auto",
    run_eagerly=False,
    verbose=0,
    tensorboard_dir=None,
):
    """Train a probe head on static features (CLMR's linear evaluation): (head, history)."""
    keras.utils.set_random_seed(int(seed))
    model = build_head(train_x.shape[1], train_y.shape[1], head=head, hidden_dim=hidden_dim)
    model.compile(
        optimizer=TorchAdam(learning_rate, torch_weight_decay=weight_decay or 0.0),
        loss=loss(multi_label),
        jit_compile=jit_compile,
        run_eagerly=run_eagerly,
    )
    history = quiet_fit(
        model,
        train_x,
        train_y,
        validation_data=(valid_x, valid_y),
        epochs=int(epochs),
        batch_size=int(batch_size),
        shuffle=True,
        verbose=verbose,
        callbacks=callbacks(patience, lr_patience, lr_factor, tensorboard_dir),
    )
    return model, history_summary(history)


LINEAR_EVAL_DEFAULTS = keyword_defaults(fit_head, SCHEDULE_KEYWORDS)


def train_probe(
    encoder,
    train,
    valid,
    test,
    *,
    tags=None,
    multi_label=True,
    head="linear",
    finetune=False,
    label_fraction=1.0,
    epochs=200,
    learning_rate=1e-3,
    weight_decay=1e-6,
    batch_size=48,
    patience=10,
    lr_patience=5,
    lr_factor=0.1,
    crops_per_clip=1,
    seed=0,
    encoder_identity=None,
    extraction_batch_size=64,
    jit_compile="auto",
    run_eagerly=False,
    verbose=0,
    tensorboard_dir=None,
):
    """Linear/MLP probe (frozen encoder) or fine-tuning. Returns (MusicTagger, results dict).

    ``train``/``valid``/``test`` are ClipSets or PreparedSplits; ``tensorboard_dir``: where
    TensorBoard logs of the head's (or fine-tuning's) training go. The results dict holds
    ``metrics``, ``per_tag``, ``protocol``, ``data``, ``history`` and ``encoder``.
    """
    num_classes, tags = tag_names(train, tags)
    indices = label_fraction_indices(len(train), label_fraction, seed)
    tagger = MusicTagger(
        encoder,
        num_classes,
        head=head,
        multi_label=multi_label,
        tags=tags,
        freeze_backbone=not finetune,
    )
    tagger.build((None, tagger.input_samples))
    plan = schedule(epochs, batch_size, patience, lr_patience, lr_factor)
    run = dict(
        seed=seed,
        jit_compile=jit_compile,
        run_eagerly=run_eagerly,
        verbose=verbose,
        tensorboard_dir=tensorboard_dir,
    )
    if not finetune:
        sub = train.subset(indices) if isinstance(train, ClipSet) else train
        train_x, train_y, owner = embed_crops(
            encoder, sub, crops_per_clip, seed, extraction_batch_size
        )
        if not isinstance(train, ClipSet):
            keep = np.isin(owner, indices)
            train_x, train_y = train_x[keep], train_y[keep]
        valid_x, valid_y, _ = embed_crops(
            encoder, valid, crops_per_clip, seed + 1, extraction_batch_size
        )
        head_model, history = fit_head(
            train_x,
            train_y,
            valid_x,
            valid_y,
            head=head,
            multi_label=multi_label,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            **plan,
            **run,
        )
        tagger.head.set_weights(head_model.get_weights())
        scores = frozen_clip_scores(encoder, head_model, test, multi_label, extraction_batch_size)
    else:
        keras.utils.set_random_seed(int(seed))
        optimizer = TorchAdam(learning_rate, torch_weight_decay=weight_decay or 0.0)
        history = fit_end_to_end(
            tagger, train, valid, optimizer=optimizer, train_indices=indices, **plan, **run
        )
        scores = predict_clips(tagger, test, extraction_batch_size)
    protocol = {
        "head": head,
        "finetune": bool(finetune),
        "multi_label": bool(multi_label),
        "optimizer": "Adam (torch: epsilon 1e-8, L2 weight decay)",
        **schedule_record(learning_rate, weight_decay, plan),
        "crops_per_clip": int(crops_per_clip),
        "train_features": "static (extracted once)"
        if not finetune
        else "fresh random crop per epoch",
        "test": f"mean of per-chunk {'sigmoid' if multi_label else 'softmax'} over "
        "non-overlapping "
        f"{tagger.input_samples}-sample chunks (last partial chunk dropped)",
        "restore_best_weights": True,
        "seed": int(seed),
    }
    results = results_record(
        "finetune" if finetune else f"{head}_probe",
        scores,
        (train, valid, test),
        indices,
        label_fraction,
        tags=tags,
        multi_label=multi_label,
        protocol=protocol,
        history=history,
        encoder=encoder_identity or describe_encoder(encoder),
    )
    return tagger, results


def linear_probe(encoder, train, valid, test, **kwargs):
    """``train_probe`` returning only the results dict (see its arguments)."""
    return train_probe(encoder, train, valid, test, **kwargs)[1]
