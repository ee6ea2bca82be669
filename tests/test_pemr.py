"""FCN, PEMR masks, objective terms, gradients, fit and serialization."""

import json

import keras
import numpy as np
import pytest

from keras_clmr.losses import (
    cross_correlation,
    huber,
    pemr_negative_loss,
    pemr_positive_loss,
    pemr_prediction_loss,
)
from keras_clmr.models.fcn import FCN
from keras_clmr.models.pemr import PEMR, PEMRMaskGenerator

BACKEND = keras.backend.backend()
to_np = keras.ops.convert_to_numpy


def tiny_fcn():
    """The FCN structure on a short input.

    992 samples -> 16 mels x 32 frames -> 8 x 1 x 2 = 16-d.
    """
    return FCN(
        channels=(4, 8, 8, 8),
        pools=((2, 2), (2, 2), (2, 2), (2, 2)),
        input_samples=992,
        n_fft=64,
        hop_length=32,
        n_mels=16,
    )


def tiny_pemr(**kwargs):
    config = dict(
        projection_dim=8,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        key_dim=8,
        ffn_dim=16,
        pred_hidden_dim=16,
        mask_ratio=0.25,
        seed=3,
    )  # 32 frames, K = 8
    config.update(kwargs)
    return PEMR(tiny_fcn(), **config)


def source(batch=4, samples=1200, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, samples)).astype("float32")


# ----------------------------------------------------------------------------------------- FCN


def test_fcn_full_size_shapes_and_parameter_count():
    fcn = FCN()
    out = fcn(source(2, 59049))
    assert out.shape == (2, 512) and fcn.embedding_dim == 512
    assert (fcn.input_samples, fcn.sample_rate, fcn.num_frames, fcn.n_mels) == (
        59049,
        22050,
        462,
        128,
    )
    trainable = sum(int(np.prod(w.shape)) for w in fcn.trainable_weights)
    running = sum(int(np.prod(w.shape)) for w in fcn.non_trainable_weights)
    # Original: convs 369,664 + BN affine 898 = 370,562 parameters, + 898 BN running stats.
    assert (trainable, running) == (370_562, 898)
    names = {w.path.split("/", 1)[1] for w in fcn.weights}
    assert {"spec_bn/moving_variance", "layer1_conv/kernel", "layer4_bn/gamma"} <= names


def test_fcn_flattens_in_pytorch_channel_freq_time_order():
    fcn = FCN(
        channels=(3, 4, 4, 5),
        pools=((2, 2), (2, 2), (2, 2), (1, 2)),
        input_samples=992,
        n_fft=64,
        hop_length=32,
        n_mels=16,
    )  # ends at 5 channels x 2 freq x 2 time
    spec = fcn.spectrogram(source(2, 992))
    out = to_np(fcn.embed_spectrogram(spec, training=False))
    x = fcn.spec_bn(keras.ops.expand_dims(spec, -1), training=False)
    for block in fcn.blocks:
        for layer in block:
            x = (
                layer(x, training=False)
                if isinstance(layer, keras.layers.BatchNormalization)
                else layer(x)
            )
    grid = to_np(x)  # [B, freq, time, channels]
    assert grid.shape == (2, 2, 2, 5) and fcn.embedding_dim == 20
    np.testing.assert_allclose(out, grid.transpose(0, 3, 1, 2).reshape(2, -1), atol=1e-6)


def test_fcn_bad_input():
    fcn = tiny_fcn()
    with pytest.raises(ValueError, match="exactly 992 samples"):
        fcn(source(1, 1000))
    with pytest.raises(ValueError, match="mono audio"):
        fcn(np.zeros((1, 992, 1), "float32"))
    with pytest.raises(ValueError, match="reduce"):
        FCN(input_samples=1000)
    with pytest.raises(ValueError, match="log-mel encoder"):
        PEMR(encoder=keras.Sequential([keras.layers.Dense(4)]))
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny_pemr(mask_ratio=0.01)


# ---------------------------------------------------------------------------------------- masks


@pytest.mark.multibackend
def test_masks_hide_exactly_the_k_lowest_scored_frames():
    model = tiny_pemr()
    x = source()
    model(x)
    views = {k: to_np(v) for k, v in model.masked_views(x, training=True).items()}
    n, k = 32, 8
    mask_token = to_np(model.generator.mask_token)
    inessential = views["inessential"].astype(bool)
    assert inessential.shape == (4, n) and (inessential.sum(axis=1) == k).all()
    lowest = np.argsort(views["scores"], axis=1)[:, :k]
    for b in range(4):
        assert set(lowest[b]) == set(np.flatnonzero(inessential[b]))
    np.testing.assert_allclose(views["scores"].sum(axis=1), 1.0, atol=1e-5)
    for name, masked_frames in (("positive", inessential), ("negative", ~inessential)):
        frames = views[name].transpose(0, 2, 1)  # [B, N, mels]
        is_mask = np.all(np.abs(frames - mask_token) < 1e-5, axis=-1)
        np.testing.assert_array_equal(is_mask, masked_frames)
        kept = views["view_2"].transpose(0, 2, 1)
        np.testing.assert_allclose(frames[~masked_frames], kept[~masked_frames], atol=1e-5)
    assert is_mask.sum() == 4 * (n - k)  # the negative keeps K frames only


@pytest.mark.skipif(BACKEND != "tensorflow", reason="uses tf.GradientTape")
def test_generator_learns_from_l_pred_only():
    import tensorflow as tf

    model = tiny_pemr()
    x = source()
    model(x)
    mask_path = model.generator.mask_token.path
    transformer = [w for w in model.generator.trainable_weights if w.path != mask_path]
    assert len(transformer) > 20
    with tf.GradientTape(persistent=True) as tape:
        out = model(x, training=True)
        loss_pos, loss_neg, loss_pred = model.loss_terms(out)
        contrastive = loss_pos + loss_neg
    grads = tape.gradient(contrastive, transformer)
    assert all(g is None or not np.any(to_np(g)) for g in grads)
    assert np.abs(to_np(tape.gradient(contrastive, model.generator.mask_token))).sum() > 0
    enc_grads = tape.gradient(contrastive, model.encoder.trainable_weights)
    assert all(g is not None for g in enc_grads)
    pred_grads = tape.gradient(loss_pred, transformer)
    assert all(g is not None and np.abs(to_np(g)).sum() > 0 for g in pred_grads)
    assert all(g is None for g in tape.gradient(loss_pred, model.encoder.trainable_weights))


@pytest.mark.large
@pytest.mark.multibackend
def test_bert_masking_rates():
    generator = PEMRMaskGenerator(
        num_frames=32,
        feature_dim=4,
        num_layers=2,
        num_heads=1,
        key_dim=4,
        ffn_dim=8,
        pred_hidden_dim=8,
        seed=7,
    )
    tokens = np.tile((1.0 + np.arange(33 * 4, dtype="float32")).reshape(1, 33, 4), (64, 1, 1))
    tokens = tokens + 1000.0 * np.arange(64, dtype="float32")[:, None, None]  # all values distinct
    draws, masked, strategies = 800, 0, {"zero": 0, "random": 0, "keep": 0}
    for _ in range(draws):
        in_1, m_1, in_2, m_2 = (to_np(t) for t in generator.bert_mask(tokens, tokens))
        masked += m_1.sum() + m_2.sum()
        assert not np.array_equal(m_1, m_2)
        sel = m_1.astype(bool)
        np.testing.assert_array_equal(in_1[~sel], tokens[~sel])
        if np.array_equal(in_1, tokens):
            strategies["keep"] += 1
        elif not in_1[sel].any():
            strategies["zero"] += 1
        else:
            # One random position p, the same for the whole batch: every masked token is token p.
            p = np.flatnonzero((in_1[0, np.flatnonzero(sel[0])[0]] == tokens[0]).all(axis=-1))[0]
            np.testing.assert_array_equal(
                in_1[sel], np.broadcast_to(tokens[:, p : p + 1], tokens.shape)[sel]
            )
            strategies["random"] += 1
    rate = masked / (draws * 2 * 64 * 33)
    assert abs(rate - 0.15) < 0.003  # ~1.3 M draws: std 3e-4
    # 800 draws: std 0.014 (p=.8) and 0.011 (p=.1); tolerances are ~4 std.
    assert abs(strategies["zero"] / draws - 0.8) < 0.06
    assert abs(strategies["random"] / draws - 0.1) < 0.045
    assert abs(strategies["keep"] / draws - 0.1) < 0.045


# ------------------------------------------------------------------------------------ objective


def np_batchnorm(z, eps=1e-5):
    return (z - z.mean(0)) / np.sqrt(z.var(0) + eps)


def np_bt_loss(z_i, z_pos, z_neg, batch_size, lambd1=5e-3, lambd2=5e-3):
    """pemr/modules/BTLoss.py in numpy (inputs already batch-normalised)."""
    c_cru = z_i.T @ z_pos / batch_size
    c_imma = z_i.T @ z_neg / batch_size
    n = c_cru.shape[0]
    off_diag = c_cru.flatten()[:-1].reshape(n - 1, n + 1)[:, 1:].flatten()
    loss_pos = ((np.diagonal(c_cru) - 1) ** 2).sum() + lambd2 * (off_diag**2).sum()
    loss_neg = lambd1 * (np.diagonal(c_imma) ** 2).sum()
    return loss_pos, loss_neg


@pytest.mark.multibackend
def test_barlow_terms_match_numpy_reference():
    rng = np.random.default_rng(4)
    z_i, z_pos, z_neg = (np_batchnorm(rng.normal(size=(12, 6))) for _ in range(3))
    z_pos = 0.7 * z_i + 0.3 * z_pos
    ref_pos, ref_neg = np_bt_loss(z_i, z_pos, z_neg, 12, lambd1=0.3, lambd2=0.02)
    got_pos = float(
        to_np(
            pemr_positive_loss(z_i.astype("float32"), z_pos.astype("float32"), offdiag_weight=0.02)
        )
    )
    got_neg = float(
        to_np(pemr_negative_loss(z_i.astype("float32"), z_neg.astype("float32"), diag_weight=0.3))
    )
    np.testing.assert_allclose([got_pos, got_neg], [ref_pos, ref_neg], rtol=1e-5)
    np.testing.assert_allclose(to_np(cross_correlation(z_i, z_neg)), z_i.T @ z_neg / 12, atol=1e-6)


@pytest.mark.multibackend
def test_prediction_loss_matches_numpy_reference():
    rng = np.random.default_rng(5)
    tokens, preds = rng.normal(0, 0.2, (2, 3, 5, 4))
    mask = (rng.uniform(size=(3, 5)) < 0.4).astype("float32")
    d = np.abs(tokens * mask[..., None] - preds * mask[..., None])
    expected = np.where(d < 0.1, 0.5 * d**2, 0.1 * d - 0.005).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(
        to_np(pemr_prediction_loss(tokens, preds, mask, delta=0.1)), expected, rtol=1e-5
    )
    np.testing.assert_allclose(
        to_np(huber(np.array([0.0, 0.0]), np.array([0.05, 2.0]), 0.1)), [0.00125, 0.195], rtol=1e-6
    )


@pytest.mark.multibackend
def test_compute_loss_is_code_objective_on_batch_normalised_projections():
    model = tiny_pemr(pred_weight=0.5)
    out = model(source(6), training=True)
    z = to_np(out["projections"]).astype(np.float64)
    # loss_bn in train mode at init (gamma 1, beta 0): zero-mean, unit-variance columns.
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    # (var / (var + 1e-5) of the raw projections: slightly under 1.)
    assert np.all(z.var(axis=0) <= 1.0) and np.all(z.var(axis=0) > 0.9)
    loss_pos, loss_neg = np_bt_loss(z[:, 0], z[:, 1], z[:, 2], 6)
    expected = loss_pos + loss_neg + 0.5 * to_np(out["pred_loss"]).mean()
    np.testing.assert_allclose(float(to_np(model.compute_loss(y_pred=out))), expected, rtol=1e-5)


def np_official_criterion(raw_anchor, raw_positive, raw_negative, lambd1=5e-3, lambd2=5e-3):
    """The official criterion on raw projections, float64: BTLoss's own BatchNorm1d in train mode
    (affine 1 / 0, never optimised: it is not in Adam(model.parameters())), then the BT terms."""
    normalised = [
        np_batchnorm(np.asarray(z, np.float64)) for z in (raw_anchor, raw_positive, raw_negative)
    ]
    return np_bt_loss(*normalised, len(raw_anchor), lambd1=lambd1, lambd2=lambd2)


@pytest.mark.multibackend
def test_loss_batchnorm_keeps_unit_scale_zero_offset_and_is_the_official_criterion():
    model = tiny_pemr(pred_weight=0.5)
    x = source(8)
    model(x[:8])
    assert not model.loss_bn.trainable_weights  # gamma and beta are never optimised
    mean_before = to_np(model.loss_bn.moving_mean).copy()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=False)
    model.fit(x, batch_size=8, epochs=1, verbose=0)
    np.testing.assert_array_equal(to_np(model.loss_bn.gamma), 1.0)
    np.testing.assert_array_equal(to_np(model.loss_bn.beta), 0.0)
    assert np.abs(to_np(model.loss_bn.moving_mean) - mean_before).max() > 0  # statistics still move
    # The loss on the same inputs: raw projections -> the official criterion in numpy.
    views = model.masked_views(x, training=True)
    raw = [
        model.projector(model.encoder.embed_spectrogram(views[key], training=True))
        for key in ("anchor", "positive", "negative")
    ]
    y_pred = {
        "projections": keras.ops.stack([model.loss_bn(z, training=True) for z in raw], axis=1),
        "pred_loss": views["pred_loss"],
    }
    loss_pos, loss_neg = np_official_criterion(*(to_np(z) for z in raw))
    expected = loss_pos + loss_neg + 0.5 * to_np(views["pred_loss"]).astype(np.float64).mean()
    got = float(to_np(model.compute_loss(y_pred=y_pred)))
    np.testing.assert_allclose(got, expected, rtol=2e-5)


# ------------------------------------------------------------------------- training and saving


@pytest.mark.large
@pytest.mark.multibackend
def test_fit_trains_encoder_projector_mask_and_generator():
    model = tiny_pemr()
    x = source(16)
    model(x[:8])
    before = {w.path: to_np(w).copy() for w in model.trainable_weights}
    # XLA on TensorFlow and JAX (the pretraining default); PyTorch runs without it.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=BACKEND != "torch")
    history = model.fit(x, batch_size=8, epochs=1, verbose=0)
    for key in ("loss", "pos_loss", "neg_loss", "pred_loss"):
        assert np.isfinite(history.history[key][0]), key
    changed = {
        w.path for w in model.trainable_weights if np.abs(to_np(w) - before[w.path]).max() > 0
    }
    for needle in (
        "layer1_conv",
        "projector",
        "mask_token",
        "cls_token",
        "encoder_layer_0",
        "pred_layer",
    ):
        assert any(needle in path for path in changed), needle


@pytest.mark.multibackend
def test_keras_file_round_trip(tmp_path):
    model = tiny_pemr()
    x = source()
    model(x, training=True)  # moves BN statistics away from their initial values
    path = tmp_path / "pemr.keras"
    model.save(path)
    clone = keras.saving.load_model(path)
    assert isinstance(clone, PEMR) and isinstance(clone.encoder, FCN)
    assert json.loads(json.dumps(clone.get_config())) == json.loads(json.dumps(model.get_config()))
    np.testing.assert_allclose(
        to_np(clone(x, training=False)["projections"]),
        to_np(model(x, training=False)["projections"]),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        to_np(clone.encoder(x[:, :992])), to_np(model.encoder(x[:, :992])), atol=1e-6
    )


def test_pretrain_script_builds_pemr_with_its_options():
    from keras_clmr.pretraining import build_pretrainer

    model = build_pretrainer(
        "pemr",
        channels=["8", "16", "16", "16"],
        augment="clmr",
        seed=0,
        mask_ratio=0.2,
        pred_weight=0.1,
        neg_weight=1e-2,
        offdiag_weight=1e-3,
        transformer_layers=2,
        transformer_heads=1,
        mel_sample_rate=22050,
    )
    assert isinstance(model, PEMR) and model.encoder.channels == (8, 16, 16, 16)
    assert (
        model.num_masked,
        model.projection_dim,
        model.pred_weight,
        model.neg_weight,
        model.offdiag_weight,
    ) == (92, 256, 0.1, 1e-2, 1e-3)
    assert (model.generator.num_layers, model.generator.num_heads) == (2, 1)
    assert model.encoder.frontend.sample_rate == 22050 and model.encoder.sample_rate == 22050
    names = [layer.name for layer in model.augmentation._flatten_layers()]
    assert model.augmentation is not None and not any("pitch" in name for name in names)
    from keras_clmr.layers.augmentations import clmr_augmentation

    assert any(
        "pitch" in layer.name for layer in clmr_augmentation(22050, seed=0)._flatten_layers()
    )
    assert build_pretrainer("pemr", augment="crop").augmentation is None
    with pytest.raises(ValueError, match="only apply to --model=pemr"):
        build_pretrainer("clmr", mask_ratio=0.1)
