"""Contrastive losses, written with keras.ops only."""

from keras import ops


def _l2_normalize(z, epsilon=1e-8):
    norm = ops.sqrt(ops.sum(ops.square(z), axis=-1, keepdims=True))
    return z / ops.maximum(norm, epsilon)


def nt_xent(z_i, z_j, temperature=0.5, negatives="global", groups=1):
    """NT-Xent (SimCLR) loss of two batches of projections, each [N, D].

    View k of z_i is the positive of view k of z_j; the other 2N - 2 views of the batch are
    its negatives. Similarities are cosine similarities divided by ``temperature``. Returns
    the mean over the 2N views of the cross-entropy, which equals SimCLR's
    ``NT_Xent`` (sum reduction divided by 2N). Computed in float32 (or float64 when the
    inputs are float64) whatever the compute dtype of the model.

    Under a ``tf.distribute`` strategy the function runs once per replica on its local
    slice. ``negatives="global"`` gathers the projections of all replicas, so each local
    view is contrasted against the whole global batch (the result is the mean over the
    local views; gradients reach every replica's slice). ``negatives="local"`` contrasts
    within the local slice only, like the original CLMR under DDP. ``groups`` > 1 splits the
    batch into that many equal contiguous slices and contrasts within each (returns the mean
    of the per-slice losses): per-replica negatives for SPMD programs (JAX ``DataParallel``)
    that see the global batch.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if negatives not in ("global", "local"):
        raise ValueError(f"negatives must be 'global' or 'local', got {negatives!r}.")
    if z_i.shape[0] is not None and z_j.shape[0] is not None and z_i.shape[0] != z_j.shape[0]:
        raise ValueError(
            f"nt_xent needs two equally sized batches, got {z_i.shape} and {z_j.shape}."
        )
    groups = int(groups)
    if groups < 1 or (z_i.shape[0] is not None and z_i.shape[0] % groups):
        raise ValueError(
            f"nt_xent: groups={groups} must divide the batch of {z_i.shape[0]} pairs "
            f"(use a batch size divisible by the number of replicas)."
        )
    dtype = "float64" if ops.dtype(z_i) == "float64" else "float32"
    z_i, z_j = ops.cast(z_i, dtype), ops.cast(z_j, dtype)
    if groups > 1:
        return _grouped_nt_xent(z_i, z_j, temperature, groups, dtype)
    from keras_clmr import distributed

    context = distributed.replica_context() if negatives == "global" else None
    if context is not None:
        return _global_nt_xent(z_i, z_j, temperature, context, dtype)
    z = ops.concatenate([z_i, z_j], axis=0)
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


def _global_nt_xent(z_i, z_j, temperature, context, dtype):
    """The local views' NT-Xent against the projections gathered from every replica."""
    from keras_clmr import distributed

    replica_id, num_replicas = context
    z_i, z_j = _l2_normalize(z_i), _l2_normalize(z_j)
    all_i, all_j = distributed.all_gather(z_i), distributed.all_gather(z_j)
    n = ops.shape(z_i)[0]
    total = ops.shape(all_i)[0]
    anchors = ops.concatenate([z_i, z_j], axis=0)
    candidates = ops.concatenate([all_i, all_j], axis=0)
    logits = ops.matmul(anchors, ops.transpose(candidates)) / temperature
    local = ops.arange(n) + replica_id * n
    self_index = ops.concatenate([local, local + total], axis=0)
    positive_index = ops.concatenate([local + total, local], axis=0)
    columns = ops.arange(2 * total)
    self_mask = ops.cast(ops.equal(self_index[:, None], columns[None, :]), dtype)
    logits = logits - self_mask * 1e9
    positives = ops.take_along_axis(logits, positive_index[:, None], axis=1)[:, 0]
    return ops.mean(ops.logsumexp(logits, axis=1) - positives)


def _grouped_nt_xent(z_i, z_j, temperature, groups, dtype):
    """Mean over ``groups`` contiguous slices of the slice's own NT-Xent."""
    depth = ops.shape(z_i)[-1]
    z_i = ops.reshape(z_i, (groups, -1, depth))
    z_j = ops.reshape(z_j, (groups, -1, depth))
    z = _l2_normalize(ops.concatenate([z_i, z_j], axis=1))
    n2 = ops.shape(z)[1]
    n = n2 // 2
    logits = ops.einsum("gad,gbd->gab", z, z) / temperature
    index = ops.arange(n2)
    self_mask = ops.cast(ops.equal(index[:, None], index[None, :]), dtype)
    logits = logits - self_mask[None] * 1e9
    positive_index = (index + n) % n2
    positives = ops.take_along_axis(
        logits, ops.broadcast_to(positive_index[None, :, None], (groups, n2, 1)), axis=2
    )[..., 0]
    return ops.mean(ops.logsumexp(logits, axis=2) - positives)


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
    diff = ops.abs(ops.convert_to_tensor(true) - ops.convert_to_tensor(pred))
    return ops.where(diff < delta, 0.5 * ops.square(diff), delta * diff - 0.5 * delta * delta)


def pemr_prediction_loss(tokens, predictions, mask, delta=0.1):
    """One view's L_pred per example: Huber of (tokens * mask, predictions * mask), [B].

    ``tokens``/``predictions`` are [B, L, D], ``mask`` is [B, L] (1 = BERT-masked position).
    Like the official code, the mean runs over ALL B * L * D elements (unmasked positions count
    as zeros), so ``mean`` of the result equals the code's ``torch.mean`` over the batch.
    """
    tokens, predictions = ops.convert_to_tensor(tokens), ops.convert_to_tensor(predictions)
    mask = ops.cast(mask, tokens.dtype)[:, :, None]
    loss = huber(tokens * mask, predictions * mask, delta)
    return ops.mean(ops.reshape(loss, (ops.shape(loss)[0], -1)), axis=1)
