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
