"""CPC checkpoints in the original's layout -> Keras ``CPC`` (encoder + GRU + predictors).

No CPC music checkpoint was released with CLMR, so this converts state dicts in the layout
of the CLMR repository's older ``modules/cpc`` (``CPCModel.model`` = ``CPC``), optionally
under ``model.`` and/or DataParallel's ``module.``:

- ``encoder.seq.layer-{i}.0.{weight, bias}``: Conv1d [512, in, f] -> ``encoder.conv_i``;
- ``encoder.fc.{weight, bias}``: a Linear(512, 50) the original's Encoder builds but never
  calls (ignored, reported);
- ``autoregressor.autoregressor.{weight,bias}_{ih,hh}_l0``: torch GRU, gates stacked r, z, n
  -> Keras GRU (``reset_after=True``, the same equations) with gates z, r, h and the two
  bias vectors as rows of a [2, 3H] bias;
- ``loss.predictor.weight``: Linear(256, 512 * K, bias=False) -> ``predictor``.

Strides and paddings are not in a state dict: pass them when they differ from the music
configuration. Parity is checked against ``numpy_reference`` (float64, the original's maths).
"""

import numpy as np

from keras_clmr.conversion.common import (
    PARITY_TOLERANCE,
    ConversionError,
    KeyLedger,
    ParityError,
    WeightSetter,
    dense_kernel,
    max_abs_diff,
    summarize_ledger,
    to_numpy,
)

CONV_KEY = "encoder.seq.layer-{}.0"
GRU_KEY = "autoregressor.autoregressor"
PREDICTOR_KEY = "loss.predictor.weight"


def strip_prefixes(state):
    """The state dict with DataParallel's ``module.`` and CPCModel's ``model.`` prefixes removed."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def detect_cpc_format(state):
    """'cpc' when the keys are the original CPC's, else None."""
    return "cpc" if any(k.endswith(f"{GRU_KEY}.weight_ih_l0") for k in state) else None


def infer_cpc_config(state):
    """Layer count, filter sizes, latent/context sizes and prediction steps from the shapes."""
    state = strip_prefixes(state)
    filter_sizes = []
    while f"{CONV_KEY.format(len(filter_sizes))}.weight" in state:
        filter_sizes.append(int(state[f"{CONV_KEY.format(len(filter_sizes))}.weight"].shape[-1]))
    if not filter_sizes or f"{GRU_KEY}.weight_hh_l0" not in state or PREDICTOR_KEY not in state:
        raise ConversionError(
            f"Not a CPC state dict in the original's layout: need {CONV_KEY.format(0)}.weight, "
            f"{GRU_KEY}.weight_hh_l0 and {PREDICTOR_KEY} (optionally under model./module.)."
        )
    latent_dim = int(state[f"{CONV_KEY.format(0)}.weight"].shape[0])
    context_dim = int(state[f"{GRU_KEY}.weight_hh_l0"].shape[1])
    outputs = int(state[PREDICTOR_KEY].shape[0])
    if outputs % latent_dim:
        raise ConversionError(
            f"{PREDICTOR_KEY} has {outputs} outputs, not a multiple of the latent size "
            f"{latent_dim}."
        )
    return {
        "filter_sizes": tuple(filter_sizes),
        "latent_dim": latent_dim,
        "context_dim": context_dim,
        "prediction_steps": outputs // latent_dim,
    }


def torch_gru_to_keras(weight_ih, weight_hh, bias_ih, bias_hh):
    """torch GRU (gates r, z, n stacked on axis 0) -> Keras GRU kernel, recurrent kernel, bias.

    Keras orders the gates z, r, h; with ``reset_after=True`` its candidate is
    tanh(x W_h + b_h + r * (h U_h + b_rh)), which is torch's n-gate, so only the order and
    the transposition change.
    """

    def reorder(matrix):
        r, z, n = np.split(np.asarray(matrix), 3, axis=0)
        return np.concatenate([z, r, n], axis=0)

    kernel = reorder(weight_ih).T
    recurrent = reorder(weight_hh).T
    bias = np.stack([reorder(bias_ih), reorder(bias_hh)], axis=0)
    return kernel, recurrent, bias


def numpy_reference(state, audio, strides, paddings):
    """The original CPC's forward pass in float64 numpy: (z [B,T,C], c [B,T,H], W c [B,T,K*C]).

    Conv1d + ReLU per block on audio [B, n] (zero padding both sides), a zero-initialised
    torch-formulation GRU over z, the bias-free predictor on every c_t.
    """
    state = {k: np.asarray(v, np.float64) for k, v in strip_prefixes(state).items()}
    x = np.asarray(audio, np.float64)[:, :, None]  # [B, n, channels]
    for i, (stride, pad) in enumerate(zip(strides, paddings)):
        weight, bias = state[f"{CONV_KEY.format(i)}.weight"], state[f"{CONV_KEY.format(i)}.bias"]
        size = weight.shape[-1]
        x = np.pad(x, ((0, 0), (pad, pad), (0, 0)))
        frames = (x.shape[1] - size) // stride + 1
        index = np.arange(frames)[:, None] * stride + np.arange(size)[None, :]
        patches = x[:, index, :].reshape(x.shape[0], frames, -1)  # [B, T, size * in]
        kernel = np.transpose(weight, (2, 1, 0)).reshape(-1, weight.shape[0])  # [size * in, out]
        x = np.maximum(patches @ kernel + bias, 0.0)
    z = x
    w_ih, w_hh = state[f"{GRU_KEY}.weight_ih_l0"], state[f"{GRU_KEY}.weight_hh_l0"]
    b_ih, b_hh = state[f"{GRU_KEY}.bias_ih_l0"], state[f"{GRU_KEY}.bias_hh_l0"]
    hidden = w_hh.shape[1]
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    h = np.zeros((z.shape[0], hidden))
    states = []
    for t in range(z.shape[1]):
        gi = z[:, t] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        r = sigmoid(gi[:, :hidden] + gh[:, :hidden])
        u = sigmoid(gi[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
        n = np.tanh(gi[:, 2 * hidden :] + r * gh[:, 2 * hidden :])
        h = (1.0 - u) * n + u * h
        states.append(h)
    c = np.stack(states, axis=1)
    return z, c, c @ state[PREDICTOR_KEY].T


def convert_cpc(
    state,
    strides=None,
    paddings=None,
    input_samples=59049,
    sample_rate=22050,
    negative_samples=10,
    subsample_window=81,
    parity=True,
    source="checkpoint",
    parity_batch=2,
    seed=0,
):
    """A Keras ``CPC`` with the weights of ``state`` (numpy or torch tensors): (model, report).

    ``strides``/``paddings`` default to the music configuration when the layer count matches
    it (seven blocks); other layouts must pass them. With ``parity``, the latents, GRU states
    and predictions on random audio must match ``numpy_reference`` within
    ``PARITY_TOLERANCE * max(1, max|reference|)``, else :class:`ParityError`.
    """
    from keras_clmr.models.cpc import CPC, MUSIC_PADDINGS, MUSIC_STRIDES, CPCEncoder

    state = {
        k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
        for k, v in strip_prefixes(state).items()
    }
    config = infer_cpc_config(state)
    layers_count = len(config["filter_sizes"])
    if strides is None or paddings is None:
        if layers_count != len(MUSIC_STRIDES):
            raise ConversionError(
                f"{source} has {layers_count} conv blocks, not the music configuration's "
                f"{len(MUSIC_STRIDES)}: pass strides= and paddings= "
                f"(they are not stored in a state dict)."
            )
        strides = MUSIC_STRIDES if strides is None else strides
        paddings = MUSIC_PADDINGS if paddings is None else paddings
    encoder = CPCEncoder(
        strides=strides,
        filter_sizes=config["filter_sizes"],
        paddings=paddings,
        latent_dim=config["latent_dim"],
        context_dim=config["context_dim"],
        input_samples=input_samples,
        sample_rate=sample_rate,
    )
    model = CPC(
        encoder,
        prediction_steps=config["prediction_steps"],
        negative_samples=negative_samples,
        subsample_window=subsample_window,
    )
    ledger = KeyLedger(state, source)
    setter = WeightSetter(model)
    in_channels = 1
    for i, size in enumerate(config["filter_sizes"]):
        key = CONV_KEY.format(i)
        weight = ledger.take(f"{key}.weight", (config["latent_dim"], in_channels, size))
        bias = ledger.take(f"{key}.bias", (config["latent_dim"],))
        if weight is not None and bias is not None:
            setter.conv1d(encoder.get_layer(f"conv_{i}"), weight, bias, key)
        in_channels = config["latent_dim"]
    hidden, latent = config["context_dim"], config["latent_dim"]
    gru = [
        ledger.take(f"{GRU_KEY}.{name}", shape)
        for name, shape in (
            ("weight_ih_l0", (3 * hidden, latent)),
            ("weight_hh_l0", (3 * hidden, hidden)),
            ("bias_ih_l0", (3 * hidden,)),
            ("bias_hh_l0", (3 * hidden,)),
        )
    ]
    if all(part is not None for part in gru):
        kernel, recurrent, bias = torch_gru_to_keras(*gru)
        cell = encoder.autoregressor.cell
        setter.assign(cell.kernel, kernel, f"{GRU_KEY}.weight_ih_l0")
        setter.assign(cell.recurrent_kernel, recurrent, f"{GRU_KEY}.weight_hh_l0")
        setter.assign(cell.bias, bias, f"{GRU_KEY}.bias_ih_l0 + bias_hh_l0")
    predictor = ledger.take(PREDICTOR_KEY, (latent * config["prediction_steps"], hidden))
    if predictor is not None:
        setter.assign(model.predictor.kernel, dense_kernel(predictor), PREDICTOR_KEY)
    for name in ("weight", "bias"):
        ledger.ignore(
            f"encoder.fc.{name}", "the original Encoder's unused Linear(512, 50) (never called)"
        )
    ledger_report = ledger.finish()
    seed_weights = [v for v in model.weights if "seed" in v.path]
    for variable in seed_weights:  # seed-generator state, not a parameter
        setter.assigned.add(id(variable))
    for variable in model.crop.weights:
        setter.assigned.add(id(variable))
    setter.finish()
    report = {
        "config": {**config, "strides": list(strides), "paddings": list(paddings)},
        **summarize_ledger(ledger_report),
    }
    if parity:
        report["parity"] = cpc_parity(
            model, state, strides, paddings, batch=parity_batch, seed=seed
        )
    return model, report


def cpc_parity(model, state, strides, paddings, batch=2, seed=0):
    """Max-abs differences of z, c and W c, Keras vs ``numpy_reference`` (raises if too big)."""
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal((batch, model.encoder.input_samples))).astype("float32")
    want_z, want_c, want_wc = numpy_reference(state, audio, strides, paddings)
    latents = model.encoder.latents(audio)
    context = model.encoder.context(latents)
    got = {
        "latents": to_numpy(latents),
        "context": to_numpy(context),
        "predictions": to_numpy(model.predictor(context)),
    }
    diffs, bad = {}, {}
    for name, want in (("latents", want_z), ("context", want_c), ("predictions", want_wc)):
        diffs[name] = max_abs_diff(got[name], want)
        limit = PARITY_TOLERANCE * max(1.0, float(np.max(np.abs(want))))
        if not diffs[name] <= limit:
            bad[name] = (diffs[name], limit)
    if bad:
        raise ParityError(f"CPC: Keras and the numpy reference differ beyond tolerance: {bad}")
    return diffs


REFERENCE_NAME = "keras_clmr.conversion.cpc.numpy_reference (float64 numpy, no torch)"


def convert_cpc_checkpoint(state, sample_rate=None, parity=True, source="checkpoint", seed=0):
    """``convert_checkpoint``'s CPC family: ``(CPC model, metadata)`` in the CLMR/PEMR layout.

    The music configuration's strides and paddings (seven blocks; other layouts: call
    ``convert_cpc`` with them). Parity: latents, GRU states and predictions against the float64
    numpy reference under ``numpy_reference.parity_check`` (the same gate as CLMR/PEMR), with
    parameter counts of the state dict minus the original's unused ``encoder.fc``.
    """
    from keras_clmr.conversion import numpy_reference as reference_lib
    from keras_clmr.conversion.clmr import parity_audio, parity_figures

    rate = int(sample_rate or 22050)
    model, report = convert_cpc(state, sample_rate=rate, parity=False, source=source)
    config = report.pop("config")
    metadata = {
        "source_format": "cpc",
        "architecture": {
            "family": "cpc",
            "backbone": "CPCEncoder",
            **config,
            "sample_rate": rate,
            "input_samples": model.encoder.input_samples,
            "embedding_dim": model.encoder.embedding_dim,
        },
        "keys": report,
    }
    if not parity:
        return model, metadata
    numpy_state = {
        k: (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
        for k, v in strip_prefixes(state).items()
        if not k.startswith("encoder.fc.")
    }
    audio = parity_audio(model.encoder.input_samples, batch=2, seed=seed, sample_rate=rate)
    want_z, want_c, want_wc = numpy_reference(
        numpy_state, audio, config["strides"], config["paddings"]
    )
    latents = model.encoder.latents(audio)
    context = model.encoder.context(latents)
    got = {
        "latents": to_numpy(latents),
        "context": to_numpy(context),
        "predictions": to_numpy(model.predictor(context)),
    }
    keras_params = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    ref_params, ref_stats = reference_lib.state_parameter_counts(numpy_state)
    figures = reference_lib.parity_check(
        got,
        {"latents": want_z, "context": want_c, "predictions": want_wc},
        (keras_params, 0),
        (ref_params, ref_stats),
        what="CPC conversion",
    )
    counts = {
        "reference_parameters": ref_params,
        "reference_unused_fc_parameters": int(
            sum(np.size(v) for k, v in strip_prefixes(state).items() if k.startswith("encoder.fc."))
        ),
        "keras_parameters": keras_params,
    }
    metadata["parity"] = parity_figures(
        figures,
        REFERENCE_NAME,
        f"2 clips x {model.encoder.input_samples} samples (tones + noise, seed {seed})",
        counts,
    )
    return model, metadata
