"""Contrastive losses, written with keras.ops only."""

from keras import ops


def _l2_normalize(z, epsilon=1e-8):
    norm = ops.sqrt(ops.sum(ops.square(z), axis=-1, keepdims=True))
    return z / ops.maximum(norm, epsilon)


def nt_xent(z_i, z_j, temperature=0.5):
    """NT-Xent (SimCLR) loss of two batches of projections, each [N, D].

    View k of z_i is the positive of view k of z_j; the other 2N - 2 views of the batch are
    its negatives. Similarities are cosine similarities divided by ``temperature``. Returns
    the mean over the 2N views of the cross-entropy, which equals SimCLR's
    ``NT_Xent`` (sum reduction divided by 2N). Computed in float32 (or float64 when the
    inputs are float64) whatever the compute dtype of the model.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if z_i.shape[0] is not None and z_j.shape[0] is not None and z_i.shape[0] != z_j.shape[0]:
        raise ValueError(f"nt_xent needs two equally sized batches, got {z_i.shape} and {z_j.shape}.")
    dtype = "float64" if ops.dtype(z_i) == "float64" else "float32"
    z = ops.concatenate([ops.cast(z_i, dtype), ops.cast(z_j, dtype)], axis=0)
    z = _l2_normalize(z)
    n2 = ops.shape(z)[0]
    n = n2 // 2
    logits = ops.matmul(z, ops.transpose(z)) / temperature
    index = ops.arange(n2)
    self_mask = ops.cast(ops.equal(index[:, None], index[None, :]), dtype)
    # Remove each view's similarity with itself from the softmax denominator.
    logits = logits - self_mask * 1e9
    positive_index = (index + n) % n2
    positives = ops.take_along_axis(logits, positive_index[:, None], axis=1)[:, 0]
    log_denominator = ops.logsumexp(logits, axis=1)
    return ops.mean(log_denominator - positives)


# --- PEMR (Yao et al. 2022) objective terms, as the official code computes them. ---------------
# The official code's contrastive objective is a Barlow-Twins variant on the cross-correlation
# of batch-normalised projections (pemr/modules/BTLoss.py), not an InfoNCE: there is no
# temperature and no softmax denominator. The paper's text may state the objective
# differently; these functions follow the code (checkpoint compatibility).


def _float_dtype(x):
    return "float64" if ops.dtype(x) == "float64" else "float32"


def cross_correlation(z_a, z_b):
    """C = z_a^T z_b / N for two batches [N, D] (already batch-normalised): [D, D]."""
    dtype = _float_dtype(z_a)
    z_a, z_b = ops.cast(z_a, dtype), ops.cast(z_b, dtype)
    return ops.matmul(ops.transpose(z_a), z_b) / ops.cast(ops.shape(z_a)[0], dtype)


def pemr_positive_loss(z_anchor, z_positive, offdiag_weight=5e-3):
    """L_pos = sum_k (1 - C_kk)^2 + offdiag_weight * sum_{k != l} C_kl^2, C = cross_correlation.

    Inputs are the train-mode batch-normalised projections [N, D] of the anchor (view 1) and
    of the positive (view 2 with its inessential frames masked). ``offdiag_weight`` is the
    code's ``lambd2``.
    """
    c = cross_correlation(z_anchor, z_positive)
    diag = ops.diagonal(c)
    on_diag = ops.sum(ops.square(1.0 - diag))
    off_diag = ops.sum(ops.square(c)) - ops.sum(ops.square(diag))
    return on_diag + offdiag_weight * off_diag


def pemr_negative_loss(z_anchor, z_negative, diag_weight=5e-3):
    """L_neg = diag_weight * sum_k C_kk^2 with C the cross-correlation of anchor and negative.

    The negative is view 2 keeping only its inessential frames. ``diag_weight`` is the code's
    ``lambd1``.
    """
    c = cross_correlation(z_anchor, z_negative)
    return diag_weight * ops.sum(ops.square(ops.diagonal(c)))


def huber(true, pred, delta=0.1):
    """Element-wise Huber: 0.5 d^2 where |d| < delta, else delta * |d| - 0.5 * delta^2."""
    diff = ops.abs(true - pred)
    return ops.where(diff < delta, 0.5 * ops.square(diff), delta * diff - 0.5 * delta * delta)


def pemr_prediction_loss(tokens, predictions, mask, delta=0.1):
    """One view's L_pred per example: Huber of (tokens * mask, predictions * mask), [B].

    ``tokens``/``predictions`` are [B, L, D], ``mask`` is [B, L] (1 = BERT-masked position).
    Like the official code, the mean runs over ALL B * L * D elements (unmasked positions count
    as zeros), so ``mean`` of the result equals the code's ``torch.mean`` over the batch.
    """
    mask = ops.cast(mask, tokens.dtype)[:, :, None]
    loss = huber(tokens * mask, predictions * mask, delta)
    return ops.mean(ops.reshape(loss, (ops.shape(loss)[0], -1)), axis=1)
