"""InfoNCE of Contrastive Predictive Coding (van den Oord et al. 2018), written with keras.ops only.

The formulation is the one of the CLMR repository's ``modules/cpc/infonce.py`` (after Bas
Veeling & Sindy Lowe's implementation), which produced the CLMR thesis's CPC figures.
"""

import keras
from keras import ops


def draw_negative_indices(num_negatives, num_latents, seed=None):
    """``num_negatives`` independent random permutations of ``range(num_latents)``: [N, M] int32.

    The original draws ``torch.randperm(B * T)`` once per negative sample; a permutation here
    is the argsort of uniform noise (uniformly random, and expressible with keras.ops on
    every backend and under XLA). ``seed`` is an int or a ``keras.random.SeedGenerator``.
    """
    noise = keras.random.uniform((num_negatives, num_latents), seed=seed)
    return ops.cast(ops.argsort(noise, axis=-1), "int32")


def info_nce(predictions, targets, latents, negative_indices, groups=1):
    """The CPC InfoNCE loss, the mean over prediction steps of the per-step cross-entropy.

    Args:
        predictions: ``W_k c_t`` for every step k = 1..K, [B, L, K * C] (the bias-free
            predictor's output on the context window; step k is channel slice (k-1)C:kC).
        targets: the latents z of the same window, [B, L, C] (the positives).
        latents: all latents of the batch, [B, T, C] (T >= L); negatives come from these.
        negative_indices: [N, B * T] integer rows into ``latents`` flattened to [B * T, C],
            one permutation per negative sample (see ``draw_negative_indices``).

    For step k the positives are rows of ``targets[:, k:]`` flattened to R = B * (L - k)
    rows; row r's n-th negative is ``latents_flat[negative_indices[n, B*T - R + r]]`` (the
    original's "shortening z_neg from the front", which gives each step other negatives
    without re-sampling). Scores are dot products, the loss of a row is
    ``logsumexp([pos, negs]) - pos`` and each step averages over its R rows. As in the
    original, a negative may by chance be the positive itself. Computed in float32 (float64
    for float64 inputs) whatever the compute dtype.

    ``groups`` > 1 splits the batch into that many equal slices, each contrasted only with its
    own latents (``negative_indices`` [N, B/groups * T] index into every slice alike), and
    averages their losses: per-replica negatives in an SPMD program (JAX ``DataParallel``),
    as ``tf.distribute`` replicas and the original's per-GPU loss have them.
    """
    if groups > 1:
        batch = latents.shape[0]
        if batch is None or batch % groups:
            raise ValueError(
                f"info_nce: a batch of {batch} cannot be split into {groups} equal replica "
                "slices; use a global batch size divisible by the number of devices."
            )
        size = batch // groups
        losses = [
            info_nce(
                predictions[g * size : (g + 1) * size],
                targets[g * size : (g + 1) * size],
                latents[g * size : (g + 1) * size],
                negative_indices,
            )
            for g in range(groups)
        ]
        return sum(losses[1:], losses[0]) / groups
    dtype = "float64" if ops.dtype(predictions) == "float64" else "float32"
    predictions = ops.cast(predictions, dtype)
    targets = ops.cast(targets, dtype)
    latents = ops.cast(latents, dtype)
    depth = targets.shape[-1]
    if depth is None or predictions.shape[-1] is None or predictions.shape[-1] % depth:
        raise ValueError(
            f"info_nce: the predictions' last axis ({predictions.shape[-1]}) must be a multiple "
            f"of the latent size ({depth}): one C-wide slice per prediction step."
        )
    steps = predictions.shape[-1] // depth
    window = targets.shape[1]
    if window is not None and window <= steps:
        raise ValueError(
            f"info_nce: a window of {window} latents leaves no positive for prediction step "
            f"{steps}; "
            f"use a longer input or subsample window, or fewer prediction steps."
        )
    flat_latents = ops.reshape(latents, (-1, depth))
    num_latents = ops.shape(flat_latents)[0]
    negatives = ops.take(flat_latents, ops.cast(negative_indices, "int32"), axis=0)  # [N, M, C]
    total = 0.0
    for k in range(1, steps + 1):
        z_k = ops.reshape(targets[:, k:, :], (-1, depth))
        wc_k = ops.reshape(predictions[:, :-k, (k - 1) * depth : k * depth], (-1, depth))
        rows = ops.shape(z_k)[0]
        positive = ops.sum(wc_k * z_k, axis=-1)
        negatives_k = ops.slice(
            negatives, (0, num_latents - rows, 0), (ops.shape(negatives)[0], rows, depth)
        )
        negative = ops.einsum("rc,nrc->rn", wc_k, negatives_k)
        logits = ops.concatenate([positive[:, None], negative], axis=1)
        total = total + ops.mean(ops.logsumexp(logits, axis=1) - positive)
    return total / steps
