"""Batched prediction with padded batches: the one place that pads a partial last batch.

A compiled (XLA / traced) model retraces for every new batch shape, so a partial last batch
is zero-padded and the padding rows are dropped from the outputs. Two policies: ``"full"``
pads to ``batch_size`` (one shape in all; evaluation), ``"power_of_two"`` pads to the next
power of two up to ``batch_size`` (few shapes, little wasted work on short inputs; inference).
"""

import numpy as np

PAD_POLICIES = ("full", "power_of_two")


def padded_size(n, batch_size, policy="full"):
    """The number of rows a batch of ``n`` real rows is padded to (``n <= batch_size``)."""
    if policy not in PAD_POLICIES:
        raise ValueError(f"Unknown padding policy {policy!r}; choose from {PAD_POLICIES}.")
    if policy == "full":
        return int(batch_size)
    size = 1
    while size < n:
        size *= 2
    return min(size, int(batch_size))


def pad_rows(batch, size):
    """``batch`` with zero rows appended up to ``size`` rows (unchanged when already that long)."""
    batch = np.asarray(batch, dtype=np.float32)
    missing = size - batch.shape[0]
    if missing <= 0:
        return batch
    return np.concatenate([batch, np.zeros((missing,) + batch.shape[1:], np.float32)])


def keras_predictor(model):
    """``batch -> numpy outputs`` of ``model.predict_on_batch`` (inference mode, compiled once)."""
    import keras

    return lambda batch: np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(batch)))


def predict_batched(predict, x, batch_size, policy="full"):
    """``predict`` over the rows of ``x`` in padded batches of ``batch_size``: [len(x), ...].

    ``predict`` is a callable ``batch -> array`` or a ``keras.Model`` (run with
    ``predict_on_batch``). Padding rows are never part of the result.
    """
    if hasattr(predict, "predict_on_batch"):
        predict = keras_predictor(predict)
    x = np.asarray(x, dtype=np.float32)
    outputs = []
    for start in range(0, x.shape[0], int(batch_size)):
        batch = x[start : start + int(batch_size)]
        n = batch.shape[0]
        outputs.append(np.asarray(predict(pad_rows(batch, padded_size(n, batch_size, policy))))[:n])
    return np.concatenate(outputs) if outputs else np.zeros((0,))
