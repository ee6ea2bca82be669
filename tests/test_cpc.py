import keras
import numpy as np
import pytest

from keras_clmr.conversion.common import ConversionError
from keras_clmr.losses_cpc import draw_negative_indices, info_nce
from keras_clmr.models.cpc import CPC, CPCEncoder, conv_output_length

TINY = dict(
    strides=(4, 2),
    filter_sizes=(8, 4),
    paddings=(2, 1),
    latent_dim=16,
    context_dim=8,
    input_samples=512,
)  # 128 -> 64 latents


# JAX runs its own compiled mode: eager JAX re-traces the GRU's scan at every step (~15 s a
# step on the shared CPUs), compiled it is one trace. TF and torch stay eager (fast to start).
JAX_JIT = keras.backend.backend() == "jax"


def tiny_cpc(**kwargs):
    config = dict(prediction_steps=3, negative_samples=4, subsample_window=40, seed=0)
    config.update(kwargs)
    return CPC(CPCEncoder(**TINY), **config)


def tones(n, length, seed=0):
    """Sinusoids of random pitch and phase plus a little noise: each future is predictable."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / 22050
    freqs = rng.uniform(200, 3000, n)
    phases = rng.uniform(0, 2 * np.pi, n)
    x = np.sin(2 * np.pi * freqs[:, None] * t[None] + phases[:, None]) + 0.05 * rng.standard_normal(
        (n, length)
    )
    return x.astype("float32")


# ---- the original's formulation, written independently for the checks ------------------------


def numpy_info_nce(wc, z, full_z, permutations):
    """float64 numpy transcription of the original ``InfoNCE.infonce_loss`` with given randperms."""
    wc, z, full_z = (np.asarray(a, np.float64) for a in (wc, z, full_z))
    batch, seq_len, depth = z.shape
    steps = wc.shape[-1] // depth
    flat_full = full_z.reshape(-1, depth)
    z_neg = np.stack([flat_full[p] for p in permutations], axis=2)  # [M, C, N]
    total = 0.0
    for k in range(1, steps + 1):
        z_k = z[:, k:, :].reshape(-1, depth)
        wc_k = wc[:, :-k, (k - 1) * depth : k * depth].reshape(-1, depth)
        pos = np.sum(wc_k * z_k, axis=1, keepdims=True)
        neg = np.einsum("rc,rcn->rn", wc_k, z_neg[z_neg.shape[0] - wc_k.shape[0] :])
        results = np.concatenate([pos, neg], axis=1)
        log_softmax = (
            results
            - np.log(np.sum(np.exp(results - results.max(1, keepdims=True)), axis=1, keepdims=True))
            - results.max(1, keepdims=True)
        )
        total += -log_softmax[:, 0].sum() / ((seq_len - k) * batch)
    return total / steps


def torch_reference_modules(
    strides, filter_sizes, paddings, latent_dim, context_dim, prediction_steps, with_fc=True
):
    """The original ``CPCModel`` (CLMR ``modules/cpc``) rebuilt in plain torch: same module tree."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential()
            in_dim = 1
            for idx, (s, f, p) in enumerate(zip(strides, filter_sizes, paddings)):
                self.seq.add_module(
                    f"layer-{idx}",
                    nn.Sequential(nn.Conv1d(in_dim, latent_dim, f, stride=s, padding=p), nn.ReLU()),
                )
                in_dim = latent_dim
            if with_fc:
                self.avgpool = nn.AdaptiveAvgPool1d(1)
                self.fc = nn.Linear(latent_dim, 50)  # built, never called (as in the original)

        def forward(self, x):
            return self.seq(x)

    class Autoregressor(nn.Module):
        def __init__(self):
            super().__init__()
            self.autoregressor = nn.GRU(latent_dim, context_dim, batch_first=True)

        def forward(self, x):
            out, _ = self.autoregressor(x, torch.zeros(1, x.size(0), context_dim))
            return out

    class Loss(nn.Module):
        def __init__(self):
            super().__init__()
            self.predictor = nn.Linear(context_dim, latent_dim * prediction_steps, bias=False)

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.autoregressor, self.loss = Encoder(), Autoregressor(), Loss()

        def forward(self, audio):  # audio [B, 1, n]
            z = self.encoder(audio).permute(0, 2, 1)
            c = self.autoregressor(z)
            return z, c, self.loss.predictor(c)

    class CPCModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Reference()

    return CPCModel()


def _parity(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 1e-4 * max(1.0, np.max(np.abs(want)))


# ---- loss ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, rel", [("float64", 1e-10), ("float32", 1e-5)])
def test_info_nce_equals_the_original_formulation(dtype, rel):
    rng = np.random.default_rng(0)
    batch, full_len, window, depth, steps, negatives = 3, 20, 12, 5, 4, 6
    full_z = rng.standard_normal((batch, full_len, depth))
    z = full_z[:, 5 : 5 + window]
    wc = rng.standard_normal((batch, window, depth * steps))
    permutations = np.stack([rng.permutation(batch * full_len) for _ in range(negatives)])
    want = numpy_info_nce(wc, z, full_z, permutations)
    got = info_nce(
        *(keras.ops.convert_to_tensor(a.astype(dtype)) for a in (wc, z, full_z)),
        keras.ops.convert_to_tensor(permutations.astype("int32")),
    )
    assert float(keras.ops.convert_to_numpy(got)) == pytest.approx(want, rel=rel)


def test_info_nce_rejects_a_window_too_short_for_the_steps():
    with pytest.raises(ValueError, match="too short|no positive"):
        info_nce(
            np.zeros((2, 3, 12), "float32"),
            np.zeros((2, 3, 4), "float32"),
            np.zeros((2, 3, 4), "float32"),
            np.zeros((2, 6), "int32"),
        )


def test_info_nce_groups_contrast_each_slice_with_its_own_latents():
    """groups=2 (per-replica negatives in an SPMD program) = the mean of the original loss on
    each half of the batch with the same permutations; a batch that does not split is refused."""
    rng = np.random.default_rng(1)
    batch, length, depth, steps, negatives = 4, 10, 3, 2, 5
    full_z = 2 * rng.standard_normal((batch, length, depth))
    wc = 2 * rng.standard_normal((batch, length, depth * steps))
    permutations = np.stack([rng.permutation(2 * length) for _ in range(negatives)])
    want = np.mean(
        [
            numpy_info_nce(wc[s], full_z[s], full_z[s], permutations)
            for s in (slice(0, 2), slice(2, 4))
        ]
    )
    whole = numpy_info_nce(
        wc, full_z, full_z, np.stack([rng.permutation(batch * length) for _ in range(negatives)])
    )
    assert abs(want - whole) > 1e-2  # the grouping changes the loss
    got = info_nce(wc, full_z, full_z, permutations.astype("int32"), groups=2)
    assert float(keras.ops.convert_to_numpy(got)) == pytest.approx(want, rel=1e-10)
    with pytest.raises(ValueError, match="divisible"):
        info_nce(wc[:3], full_z[:3], full_z[:3], permutations.astype("int32"), groups=2)


@pytest.mark.multibackend
def test_negative_indices_are_independent_permutations():
    indices = keras.ops.convert_to_numpy(
        draw_negative_indices(10, 50, seed=keras.random.SeedGenerator(1))
    )
    assert indices.shape == (10, 50)
    for row in indices:
        np.testing.assert_array_equal(np.sort(row), np.arange(50))
    assert len({tuple(row) for row in indices}) == 10


def test_compute_loss_is_info_nce_of_the_outputs():
    model = tiny_cpc()
    out = model(tones(4, 600), training=True)
    assert tuple(out["latents"].shape) == (4, 64, 16)
    assert tuple(out["targets"].shape) == (4, 40, 16)
    assert tuple(out["predictions"].shape) == (4, 40, 48)
    assert tuple(out["negative_indices"].shape) == (4, 4 * 64)
    got = float(model.compute_loss(y_pred=out))
    want = numpy_info_nce(
        *(keras.ops.convert_to_numpy(out[k]) for k in ("predictions", "targets", "latents")),
        keras.ops.convert_to_numpy(out["negative_indices"]),
    )
    assert got == pytest.approx(want, rel=1e-5)


def test_positive_window_is_a_slice_of_the_latents_with_context_from_the_start():
    model = tiny_cpc(subsample_window=40)
    x = tones(2, 512)
    out = model(x, training=True)
    latents = keras.ops.convert_to_numpy(out["latents"])
    targets = keras.ops.convert_to_numpy(out["targets"])
    starts = [s for s in range(64 - 40) if np.array_equal(latents[:, s : s + 40], targets)]
    assert len(starts) >= 1  # start in [0, T - window), as np.random.randint(0, T - window)
    start = starts[0]
    context = keras.ops.convert_to_numpy(model.encoder.context(out["latents"]))[
        :, start : start + 40
    ]
    want = context @ keras.ops.convert_to_numpy(model.predictor.kernel)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out["predictions"]), want, rtol=1e-4, atol=1e-5
    )


# ---- architecture vs the original ------------------------------------------------------------


def test_music_configuration_shapes_and_parameter_counts_match_the_original():
    torch = pytest.importorskip("torch")
    encoder = CPCEncoder()
    model = CPC(encoder)
    assert (encoder.input_samples, encoder.sample_rate, encoder.num_latents) == (59049, 22050, 124)
    assert encoder.embedding_dim == 256 and encoder.latent_dim == 512
    reference = torch_reference_modules(
        encoder.strides, encoder.filter_sizes, encoder.paddings, 512, 256, 12
    ).model
    conv_params = sum(p.numel() for p in reference.encoder.seq.parameters())
    gru_params = sum(p.numel() for p in reference.autoregressor.parameters())
    predictor_params = sum(p.numel() for p in reference.loss.parameters())
    fc_params = sum(p.numel() for p in reference.encoder.fc.parameters())
    keras_conv = sum(layer.count_params() for layer in encoder.stack)
    assert keras_conv == conv_params == 5_775_872
    assert encoder.autoregressor.count_params() == gru_params == 591_360
    assert model.predictor.count_params() == predictor_params == 1_572_864
    assert model.count_params() == sum(p.numel() for p in reference.parameters()) - fc_params
    audio = np.zeros((1, 59049), "float32")
    with torch.no_grad():
        z, c, wc = reference(torch.zeros(1, 1, 59049))
    assert tuple(encoder.latents(audio).shape) == tuple(z.shape) == (1, 124, 512)
    assert tuple(encoder(audio).shape) == (1, 256) and tuple(c.shape) == (1, 124, 256)
    assert tuple(wc.shape) == (1, 124, 512 * 12)


def test_conv_arithmetic_is_torchs():
    for length in (59049, 20480, 1000, 333):
        want = length
        for s, f, p in zip((5, 3, 2, 2, 2, 2, 2), (10, 6, 4, 4, 4, 2, 2), (2, 2, 2, 2, 1, 1, 1)):
            want = int(np.floor((want + 2 * p - (f - 1) - 1) / s + 1))
        assert (
            conv_output_length(
                length, (5, 3, 2, 2, 2, 2, 2), (10, 6, 4, 4, 4, 2, 2), (2, 2, 2, 2, 1, 1, 1)
            )
            == want
        )


def test_clip_embedding_is_the_time_mean_of_the_gru_states():
    encoder = CPCEncoder(**TINY)
    x = tones(3, 512)
    context = keras.ops.convert_to_numpy(encoder.context(encoder.latents(x)))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(encoder(x)), context.mean(axis=1), rtol=1e-5, atol=1e-6
    )


def test_clear_errors():
    with pytest.raises(ValueError, match="as many strides"):
        CPCEncoder(strides=(2, 2), filter_sizes=(4,), paddings=(1, 1))
    with pytest.raises(ValueError, match="too short to predict"):
        CPC(CPCEncoder(**TINY), prediction_steps=12, subsample_window=10)
    with pytest.raises(ValueError, match="shorter than"):
        tiny_cpc()(np.zeros((2, 100), "float32"))


# ---- training --------------------------------------------------------------------------------


@pytest.mark.multibackend
def test_fit_lowers_the_loss():
    model = tiny_cpc()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=JAX_JIT)
    history = model.fit(tones(32, 600), batch_size=8, epochs=14, shuffle=True, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    # Chance level is log(1 + negatives) = 1.609; the tones' futures are predictable.
    assert np.mean(losses[-3:]) < np.mean(losses[:2]) - 0.1, losses


@pytest.mark.large  # XLA compiles the GRU's loop: ~160 s on TF, ~40 s on JAX (2 shared CPU cores)
@pytest.mark.multibackend
def test_fit_under_jit_compile():
    if keras.backend.backend() == "torch":
        pytest.skip("jit_compile is an XLA option (TensorFlow and JAX).")
    model = tiny_cpc()
    model.compile(optimizer="adam", jit_compile=True)
    history = model.fit(tones(16, 600), batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.large
@pytest.mark.multibackend
def test_fit_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny_cpc()
        model.compile(optimizer="adam", jit_compile=JAX_JIT)
        history = model.fit(tones(16, 600), batch_size=8, epochs=2, verbose=0)
        assert model.encoder.get_layer("conv_0").compute_dtype == "bfloat16"
        assert np.all(np.isfinite(history.history["loss"]))
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.multibackend
def test_round_trip_identical_outputs(tmp_path):
    model = tiny_cpc(prediction_steps=2, negative_samples=3, subsample_window=None, seed=4)
    x = tones(3, 700)
    before = model(x, training=False)
    path = tmp_path / "cpc.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, CPC) and isinstance(restored.encoder, CPCEncoder)
    assert (restored.prediction_steps, restored.negative_samples, restored.subsample_window) == (
        2,
        3,
        None,
    )
    after = restored(x, training=False)
    for key in ("latents", "targets", "predictions"):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(after[key]), keras.ops.convert_to_numpy(before[key])
        )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(restored.encoder(x[:, :512])),
        keras.ops.convert_to_numpy(model.encoder(x[:, :512])),
    )


# ---- conversion ------------------------------------------------------------------------------


def _torch_outputs(reference, audio):
    import torch

    with torch.no_grad():
        return [t.numpy() for t in reference.model(torch.from_numpy(audio)[:, None, :])]


def test_converter_matches_the_torch_reference_and_accounts_for_every_key():
    torch = pytest.importorskip("torch")
    from keras_clmr.conversion.cpc import convert_cpc

    torch.manual_seed(0)
    reference = torch_reference_modules(
        TINY["strides"], TINY["filter_sizes"], TINY["paddings"], 16, 8, 3
    )
    state = {"module." + k: v for k, v in reference.state_dict().items()}  # DataParallel-saved
    model, report = convert_cpc(
        state,
        strides=TINY["strides"],
        paddings=TINY["paddings"],
        input_samples=512,
        subsample_window=None,
    )
    assert report["config"]["prediction_steps"] == 3 and report["config"]["context_dim"] == 8
    assert set(report["parity"]) == {"latents", "context", "predictions"}
    assert "encoder.fc.weight" in str(report["ignored_keys"])
    audio = tones(2, 512)
    z, c, wc = _torch_outputs(reference, audio)
    latents = model.encoder.latents(audio)
    context = model.encoder.context(latents)
    _parity(keras.ops.convert_to_numpy(latents), z)
    _parity(keras.ops.convert_to_numpy(context), c)
    _parity(keras.ops.convert_to_numpy(model.predictor(context)), wc)
    _parity(keras.ops.convert_to_numpy(model.encoder(audio)), c.mean(axis=1))


@pytest.mark.large
def test_converter_full_size_music_configuration():
    torch = pytest.importorskip("torch")
    from keras_clmr.conversion.cpc import convert_cpc

    torch.manual_seed(1)
    encoder = CPCEncoder()
    reference = torch_reference_modules(
        encoder.strides, encoder.filter_sizes, encoder.paddings, 512, 256, 12
    )
    model, report = convert_cpc(reference.state_dict(), parity_batch=1)
    audio = tones(1, 59049)
    z, c, wc = _torch_outputs(reference, audio)
    out = model.encoder.latents(audio)
    context = model.encoder.context(out)
    _parity(keras.ops.convert_to_numpy(out), z)
    _parity(keras.ops.convert_to_numpy(context), c)
    _parity(keras.ops.convert_to_numpy(model.predictor(context)), wc)


def test_converter_names_missing_and_misshaped_keys():
    pytest.importorskip("torch")
    from keras_clmr.conversion.cpc import convert_cpc

    reference = torch_reference_modules(
        TINY["strides"], TINY["filter_sizes"], TINY["paddings"], 16, 8, 3
    )
    state = dict(reference.state_dict())
    del state["model.autoregressor.autoregressor.bias_hh_l0"]
    with pytest.raises(ConversionError, match="bias_hh_l0"):
        convert_cpc(
            state,
            strides=TINY["strides"],
            paddings=TINY["paddings"],
            input_samples=512,
            parity=False,
        )
    with pytest.raises(ConversionError, match="pass strides= and paddings="):
        convert_cpc(reference.state_dict(), input_samples=512, parity=False)
    with pytest.raises(ConversionError, match="Not a CPC state dict"):
        convert_cpc({"encoder.conv1.weight": np.zeros((3, 1, 3))}, parity=False)


def test_gru_gate_reordering_against_torch_step():
    torch = pytest.importorskip("torch")
    from keras_clmr.conversion.cpc import torch_gru_to_keras

    torch.manual_seed(2)
    gru = torch.nn.GRU(5, 3, batch_first=True)
    layer = keras.layers.GRU(3, return_sequences=True, reset_after=True)
    x = np.random.default_rng(0).standard_normal((2, 7, 5)).astype("float32")
    layer.build(x.shape)
    params = {k: v.detach().numpy() for k, v in gru.state_dict().items()}
    layer.set_weights(
        list(
            torch_gru_to_keras(
                params["weight_ih_l0"],
                params["weight_hh_l0"],
                params["bias_ih_l0"],
                params["bias_hh_l0"],
            )
        )
    )
    with torch.no_grad():
        want = gru(torch.from_numpy(x))[0].numpy()
    _parity(keras.ops.convert_to_numpy(layer(x)), want)


def test_view_pairs_use_the_first_view():
    model = tiny_cpc(subsample_window=None)
    pairs = np.stack([tones(2, 512, seed=1), tones(2, 512, seed=2)], axis=1)  # [B, 2, S]
    from_pairs = model(pairs, training=False)
    from_first = model(pairs[:, 0], training=False)
    for name in ("latents", "targets", "predictions"):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(from_pairs[name]),
            keras.ops.convert_to_numpy(from_first[name]),
        )
    other = keras.ops.convert_to_numpy(model(pairs[:, 1], training=False)["latents"])
    assert np.max(np.abs(other - keras.ops.convert_to_numpy(from_pairs["latents"]))) > 1e-3
