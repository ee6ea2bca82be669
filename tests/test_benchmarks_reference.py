"""The in-repo PyTorch references of the benchmarks: same sizes as keras_clmr's models, and the
losses they time match float64 numpy."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _count(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def _torch_count(module):
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def test_clmr_reference_has_keras_clmr_sizes():
    from benchmarks.reference import clmr_torch
    from keras_clmr.models import SampleCNN
    from keras_clmr.models.pretrainer import build_projector

    model = clmr_torch.build()
    assert _torch_count(model.encoder) == 2_368_512
    assert _torch_count(model.encoder) == _count(SampleCNN().trainable_weights)
    projector = build_projector(512, 512, 128)
    projector.build((None, 512))
    assert _torch_count(model.projector) == _count(projector.trainable_weights) == 327_680


def test_pemr_reference_has_keras_clmr_sizes():
    from benchmarks.reference import pemr_torch
    from keras_clmr.pretraining import build_pretrainer

    framework, generator, criterion = pemr_torch.build()
    keras_pemr = build_pretrainer("pemr", augment="crop", seed=0)
    keras_pemr.build((None, keras_pemr.input_samples))
    assert _torch_count(framework.encoder) == _count(keras_pemr.encoder.trainable_weights)
    assert _torch_count(framework.encoder) == 370_562
    assert _torch_count(framework.projector) == _count(keras_pemr.projector.trainable_weights)
    assert _torch_count(generator) == _count(keras_pemr.generator.trainable_weights)
    # Adam sees encoder + projector + generator; the criterion's BatchNorm stays outside.
    assert _count(keras_pemr.trainable_weights) == _torch_count(framework) + _torch_count(generator)
    assert criterion.bn.num_features == 256


def _nt_xent_float64(z_i, z_j, tau):
    z = np.concatenate([z_i, z_j]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n, batch = len(z), len(z_i)
    logits = z @ z.T / tau
    total = 0.0
    for row in range(n):
        others = np.delete(logits[row], row)
        partner = (row + batch) % n
        total += np.log(np.sum(np.exp(others))) - logits[row, partner]
    return total / n


def test_nt_xent_matches_float64_numpy():
    from benchmarks.reference.clmr_torch import nt_xent

    rng = np.random.default_rng(0)
    z_i, z_j = rng.standard_normal((2, 5, 8)).astype("float32")
    got = float(nt_xent(torch.from_numpy(z_i), torch.from_numpy(z_j), 0.5))
    want = _nt_xent_float64(z_i, z_j, 0.5)
    assert abs(got - want) <= 1e-5 * abs(want)


def test_pemr_criterion_matches_float64_numpy():
    from benchmarks.reference.pemr_torch import _classes

    criterion = _classes()["Criterion"](projection_dim=6, lambd1=0.3, lambd2=0.2).train()
    rng = np.random.default_rng(1)
    z = rng.standard_normal((3, 7, 6)).astype("float32")
    got = float(criterion(*(torch.from_numpy(v) for v in z)).detach())

    def bn(v):  # train mode: batch mean, biased variance, eps 1e-5, affine 1 / 0
        v = v.astype(np.float64)
        return (v - v.mean(0)) / np.sqrt(v.var(0) + 1e-5)

    c_pos = bn(z[0]).T @ bn(z[1]) / 7
    c_neg = bn(z[0]).T @ bn(z[2]) / 7
    off = c_pos - np.diag(np.diag(c_pos))
    want = np.sum((np.diag(c_pos) - 1) ** 2) + 0.2 * np.sum(off**2)
    want += 0.3 * np.sum(np.diag(c_neg) ** 2)
    assert abs(got - want) <= 1e-5 * abs(want)


def test_pemr_mask_generator_masks_the_lowest_frames_of_view_2():
    from benchmarks.reference.pemr_torch import _classes

    torch.manual_seed(0)
    generator = _classes()["MaskGenerator"](num_frames=30, d_model=8, layers=2, heads=2).eval()
    frames_i, frames_j = torch.randn(2, 3, 30, 8)
    m_i, m_j = generator.tokens(frames_i), generator.tokens(frames_j)
    assert m_i.shape == (3, 31, 8)
    with torch.no_grad():
        keep = generator.frame_mask(m_i, m_j)[:, :, 0]
        positive, negative, loss_pred = generator(frames_i, frames_j)
    assert (keep == 0).sum(dim=1).tolist() == [3, 3, 3]  # int(0.1 * 30) per row
    mask_token = generator.mask.weight[0]
    masked = keep == 0
    # positive: the masked frames are [MASK], the others view 2; negative: the other way round
    assert torch.equal(positive.transpose(1, 2)[masked], mask_token.expand(9, 8))
    assert torch.equal(positive.transpose(1, 2)[~masked], frames_j[~masked])
    assert torch.equal(negative.transpose(1, 2)[masked], frames_j[masked])
    assert float(loss_pred) >= 0.0


def test_clmr_reference_train_step_updates_a_tiny_model():
    from benchmarks.reference import clmr_torch
    from keras_clmr.conversion import torch_reference

    torch.manual_seed(0)
    encoder = torch_reference.sample_cnn(channels=(4,) * 10 + (8,))
    model = torch_reference.simclr(encoder, 8, 4)
    before = [p.detach().clone() for p in model.parameters()]
    step, losses = clmr_torch.make_train_step(model, pairs=3)
    step()
    step()
    assert len(losses) == 2 and all(np.isfinite(losses))
    moved = [float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before)]
    assert min(moved) > 0  # Adam moved every parameter (about lr = 3e-4 per step)
    assert max(moved) < 3 * 2 * 3e-4


@pytest.mark.large
def test_pemr_reference_train_step_runs_full_size():
    from benchmarks.reference import pemr_torch

    step, losses, _ = pemr_torch.make_train_step(pairs=2)
    step()
    assert np.isfinite(losses[0])
