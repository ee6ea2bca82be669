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
        raise ValueError(f"nt_xent needs two equally sized batches, got {z_i.shape} and {z_j.shape}.")
    groups = int(groups)
    if groups < 1 or (z_i.shape[0] is not None and z_i.shape[0] % groups):
        raise ValueError(f"nt_xent: groups={groups} must divide the batch of {z_i.shape[0]} pairs "
                         f"(use a batch size divisible by the number of replicas).")
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
    positives = ops.take_along_axis(logits, ops.broadcast_to(positive_index[None, :, None], (groups, n2, 1)),
                                    axis=2)[..., 0]
    return ops.mean(ops.logsumexp(logits, axis=2) - positives)
