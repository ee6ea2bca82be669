"""The float64 numpy references against the PyTorch re-implementations, and the parity gate."""

import numpy as np
import pytest

from keras_clmr.conversion import numpy_reference as nr
from keras_clmr.conversion.common import ParityError

torch = pytest.importorskip("torch")
from keras_clmr.conversion import torch_reference  # noqa: E402  (needs torch)
from keras_clmr.conversion.pemr import torch_logmel  # noqa: E402

SMALL_CHANNELS = (8, 8, 8, 16, 16, 16, 16, 16, 16, 24, 24)
STRIDES = {22050: (3,) * 9, 16000: (3, 3, 3, 3, 3, 3, 5, 2, 2), 8000: (3, 3, 3, 2, 2, 4, 4, 2, 2)}
INPUT_SAMPLES = {22050: 59049, 16000: 43740, 8000: 20736}


def _audio(batch, samples, rate=22050, seed=0):
    """Music-like test audio: a few tones plus noise, peak well inside [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / rate
    tones = sum(
        np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) for f in (110.0, 220.0, 330.0, 523.0)
    )
    return 0.1 * tones[None, :] + 0.1 * rng.standard_normal((batch, samples))


def _realistic(module, calibration_input, seed=0):
    """Weights at trained-network scale: Kaiming init (as CLMR 2.0 applied it), spread BN affine
    terms, and BN running statistics measured on real-like input (train-mode passes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (torch.nn.Conv1d, torch.nn.Conv2d)):
                torch.nn.init.kaiming_uniform_(
                    layer.weight, mode="fan_in", nonlinearity="relu", generator=generator
                )
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                layer.weight.copy_(0.5 + 2.0 * torch.rand(layer.num_features, generator=generator))
                layer.bias.copy_(0.3 * torch.randn(layer.num_features, generator=generator))
                layer.momentum = None  # cumulative average over the calibration passes
                layer.reset_running_stats()
        module.train()
        module(torch.from_numpy(np.asarray(calibration_input, np.float32)))
    module.eval()
    return module


def _numpy_state(module, prefix=""):
    return {prefix + k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _torch64(module, array):
    module = module.double().eval()
    with torch.no_grad():
        out = module(torch.from_numpy(np.asarray(array, np.float64)))
    module.float()
    return out.numpy()


def _assert_close(ours, reference, rel=1e-9):
    scale = max(1.0, float(np.max(np.abs(reference))))
    assert ours.shape == reference.shape
    assert np.max(np.abs(ours - reference)) <= rel * scale


@pytest.fixture(scope="module")
def full_sample_cnn():
    """Full-size CLMR SampleCNN (22.05 kHz) with realistic weights, and its outputs."""
    torch.manual_seed(0)
    module = torch_reference.sample_cnn()
    _realistic(module, _audio(4, 59049, seed=1)[:, None, :])
    audio = _audio(2, 59049, seed=2)
    state = _numpy_state(module, prefix="encoder.")
    return module, state, audio, nr.sample_cnn(state, audio, prefix="encoder.")


def test_sample_cnn_full_size_matches_torch_float64(full_sample_cnn):
    module, state, audio, h = full_sample_cnn
    reference = _torch64(module, audio[:, None, :])
    assert h.shape == (2, 512)
    assert np.max(np.abs(reference)) > 2.0  # trained-like scale, not a near-zero output
    _assert_close(h, reference)
    assert nr.sample_cnn_strides(state, "encoder.") == (3,) * 9


def test_float32_torch_passes_the_gate_at_realistic_scale(full_sample_cnn):
    """A correct float32 implementation (torch here, Keras in a conversion) passes the gate."""
    module, state, audio, h = full_sample_cnn
    h32 = torch_reference.run(module, audio[:, None, :].astype(np.float32))
    counts = nr.state_parameter_counts(state, prefix="encoder.")
    assert counts == (2_368_512, 5_888)  # SampleCNN encoder parameters; 2 x BN channels
    from keras_clmr.conversion.common import torch_parameter_counts

    report = nr.parity_check(h32, h, torch_parameter_counts(module), counts, what="SampleCNN")
    assert report["passed"] and report["parameters"]["keras"] == list(counts)
    figures = report["outputs"]["output"]
    assert figures["relative_diff"] == pytest.approx(
        figures["max_abs_diff"] / max(1, figures["reference_max_abs"])
    )
    assert 0 < figures["max_abs_diff"] < figures["bound"]


@pytest.mark.parametrize("rate", [22050, 16000, 8000])
@pytest.mark.parametrize("layout", ["sequential", "conv"])
def test_sample_cnn_variants_and_layouts(rate, layout):
    """Every stride variant (input 59049 / 43740 / 20736), release 1.0 (convN) and 2.0 key names."""
    strides, samples = STRIDES[rate], INPUT_SAMPLES[rate]
    torch.manual_seed(1)
    module = torch_reference.sample_cnn(strides, SMALL_CHANNELS, layout=layout)
    _realistic(module, _audio(3, samples, rate, seed=3)[:, None, :], seed=1)
    state = _numpy_state(module)
    audio = _audio(2, samples, rate, seed=4)
    assert nr.sample_cnn_strides(state) == strides
    _assert_close(nr.sample_cnn(state, audio), _torch64(module, audio[:, None, :]))


def test_supervised_fc():
    torch.manual_seed(2)
    module = torch_reference.sample_cnn(STRIDES[8000], SMALL_CHANNELS, n_classes=10)
    _realistic(module, _audio(3, 20736, 8000, seed=5)[:, None, :])
    state = _numpy_state(module)
    audio = _audio(2, 20736, 8000, seed=6)
    logits = nr.sample_cnn(state, audio)
    assert logits.shape == (2, 10)
    _assert_close(logits, _torch64(module, audio[:, None, :]))
    assert nr.sample_cnn(state, audio, with_fc=False).shape == (2, 24)


@pytest.mark.parametrize("mlp", [False, True], ids=["linear", "mlp"])
def test_projector_and_heads(mlp):
    torch.manual_seed(3)
    h = np.random.default_rng(7).standard_normal((5, 32)) * 4.0
    proj = torch_reference._classes()["projector"](32, 32, 16)
    z = nr.projector(_numpy_state(proj, "projector."), h)
    _assert_close(z, _torch64(proj, h))
    head = torch_reference.linear_head(32, 50, mlp=mlp, hidden=32)
    state = _numpy_state(head)
    logits = nr.head(state, h)
    reference = _torch64(head, h)
    _assert_close(logits, reference)
    _assert_close(nr.sigmoid(logits), torch.sigmoid(torch.from_numpy(reference)).numpy())
    assert np.all(np.isfinite(nr.sigmoid(np.array([-1000.0, 1000.0]))))


def test_pemr_logmel_matches_the_torch_frontend():
    audio = _audio(2, 59049, seed=8)
    ours = nr.pemr_logmel(audio)
    assert ours.shape == (2, 128, 462)  # 1 + 59049 // 128 frames
    reference = torch_logmel(audio)  # float32 torch
    # Compared as mel power relative to the largest (float32 FFT noise dominates quiet bins in dB).
    power, power_ref = 10.0 ** (ours / 10.0), 10.0 ** (reference.astype(np.float64) / 10.0)
    assert np.max(np.abs(power - power_ref)) <= 1e-5 * np.max(power_ref)
    loud = power_ref > 1e-3 * np.max(power_ref)
    assert np.max(np.abs(ours - reference)[loud]) <= 1e-3  # dB, where float32 is accurate
    empty = nr.mel_filterbank().max(axis=0) == 0  # the 16 kHz bank has empty filters for 129 bins
    assert empty.any() and np.all(ours[:, empty] == -100.0)


def test_pemr_fcn_matches_torch_float64():
    torch.manual_seed(4)
    module = torch_reference.fcn()
    _realistic(module, nr.pemr_logmel(_audio(3, 59049, seed=9)))
    state = _numpy_state(module, prefix="model.encoder.")
    audio = _audio(2, 59049, seed=10)
    logmel = nr.pemr_logmel(audio)
    h = nr.fcn(state, logmel, prefix="model.encoder.")
    assert h.shape == (2, 512)
    _assert_close(h, _torch64(module, logmel))
    np.testing.assert_array_equal(nr.pemr_embed(state, audio), h)
    assert nr.state_parameter_counts(state, "model.encoder.")[0] == sum(
        p.numel() for p in module.parameters()
    )


# ---- the gate ----


def _scaled_output(scale, seed=0):
    out = np.random.default_rng(seed).standard_normal((2, 512))
    return out * (scale / np.max(np.abs(out)))


def test_gate_accepts_float32_noise_at_scale_ten():
    """The case the old absolute 1e-4 rejected: 1.18e-4 on an embedding of magnitude 10."""
    reference = _scaled_output(10.0)
    keras_out = reference.copy()
    keras_out[0, 0] += 1.18e-4
    report = nr.parity_check(keras_out, reference, 2_368_512, 2_368_512)
    assert report["passed"]
    assert report["max_abs_diff"] == pytest.approx(1.18e-4, rel=1e-6)
    assert report["max_relative_diff"] == pytest.approx(1.18e-5, rel=1e-6)
    assert report["outputs"]["output"]["bound"] == pytest.approx(1e-3)


def test_gate_rejects_the_same_difference_at_unit_scale():
    reference = _scaled_output(0.5)
    keras_out = reference + 1.18e-4
    with pytest.raises(ParityError, match="bound 0.0001"):
        nr.parity_check(keras_out, reference, 10, 10)


def test_gate_rejects_a_wrong_mapping(full_sample_cnn):
    """A kernel read back to front / BN scale and shift swapped in one block: both caught."""
    module, state, audio, h = full_sample_cnn
    counts = nr.state_parameter_counts(state, "encoder.")
    flipped = dict(state)
    key = "encoder.sequential.3.0.weight"
    flipped[key] = state[key][:, :, ::-1]
    swapped = dict(state)
    gamma, beta = "encoder.sequential.5.1.weight", "encoder.sequential.5.1.bias"
    swapped[gamma], swapped[beta] = state[beta], state[gamma]
    for wrong in (flipped, swapped):
        with pytest.raises(ParityError, match="does not reproduce") as error:
            nr.parity_check(
                nr.sample_cnn(wrong, audio[:1], prefix="encoder."), h[:1], counts, counts
            )
        assert error.value.report["passed"] is False


def test_gate_rejects_parameter_count_mismatch_and_nan():
    reference = _scaled_output(3.0)
    with pytest.raises(ParityError, match="parameter counts differ"):
        nr.parity_check(reference, reference, (100, 20), (100, 24))
    broken = reference.copy()
    broken[1, 3] = np.nan
    with pytest.raises(ParityError):
        nr.parity_check(broken, reference, 1, 1)
    with pytest.raises(ParityError, match="shapes differ"):
        nr.parity_check(reference[:1], reference, 1, 1)


def test_gate_with_named_outputs():
    h, z = _scaled_output(12.0, seed=1), _scaled_output(0.3, seed=2)
    report = nr.parity_check(
        {"embedding": h + 5e-4, "projection": z}, {"embedding": h, "projection": z}, 5, 5
    )
    assert set(report["outputs"]) == {"embedding", "projection"}
    assert (
        report["outputs"]["embedding"]["passed"]
        and report["outputs"]["projection"]["max_abs_diff"] == 0
    )
    with pytest.raises(ParityError, match="projection"):
        nr.parity_check(
            {"embedding": h, "projection": z + 5e-4}, {"embedding": h, "projection": z}, 5, 5
        )
    with pytest.raises(ParityError, match="names"):
        nr.parity_check({"embedding": h}, {"embedding": h, "projection": z}, 5, 5)
