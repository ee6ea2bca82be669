"""The original CLMR train step and torch-eager inference, in PyTorch (written for keras_clmr).

    python -m benchmarks.reference.clmr_torch train --pairs=48 --steps=1
    python -m benchmarks.reference.clmr_torch infer --batch=32 --batches=3

The network is CLMR's SampleCNN module tree (``keras_clmr.conversion.torch_reference``, the
same modules the checkpoint converter checks against) wrapped by SimCLR's projector
``Linear(512, 512, bias=False) -> ReLU -> Linear(512, 128, bias=False)``. A train step is CLMR's
``training_step``: two encoder passes of B views each (BatchNorm statistics per view batch),
the projector, NT-Xent (tau 0.5) in the ``simclr`` package's formulation, backward, torch Adam
(lr 3e-4). Prints one JSON line: views/s, peak RSS of this process, other processes' CPU share.
"""

import argparse
import json

import numpy as np

from benchmarks.reference.measure import peak_rss_gb, time_steps

SAMPLES = 59049
FLOP_PER_VIEW_FORWARD = 3.457e9  # 2 x the conv stack's MACs for one 59049-sample view


def build(projection_dim=128):
    """SimCLR(SampleCNN) as in CLMR: forward returns (h, z)."""
    from keras_clmr.conversion import torch_reference

    return torch_reference.simclr(torch_reference.sample_cnn(), 512, projection_dim)


def nt_xent(z_i, z_j, temperature=0.5):
    """NT-Xent as ``simclr.modules.NT_Xent`` computes it (one process).

    All 2B projections against each other by cosine similarity / tau; each row's positive is
    its other view, its negatives the 2B - 2 others; summed cross-entropy divided by 2B.
    """
    import torch

    batch = z_i.shape[0]
    n = 2 * batch
    z = torch.cat((z_i, z_j), dim=0)
    sim = torch.nn.functional.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=2)
    sim = sim / temperature
    positives = torch.cat((torch.diag(sim, batch), torch.diag(sim, -batch)), dim=0).reshape(n, 1)
    keep = torch.ones((n, n), dtype=torch.bool)
    keep.fill_diagonal_(False)
    for i in range(batch):
        keep[i, batch + i] = False
        keep[batch + i, i] = False
    negatives = sim[keep].reshape(n, -1)
    logits = torch.cat((positives, negatives), dim=1)
    labels = torch.zeros(n, dtype=torch.long)
    return torch.nn.functional.cross_entropy(logits, labels, reduction="sum") / n


def make_train_step(model, pairs, samples=SAMPLES, seed=0):
    """A closure running one CLMR training step on a fixed batch [pairs, 2, 1, samples]."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(pairs, 2, 1, samples, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    model.train()
    losses = []

    def step():
        x_i, x_j = x[:, 0], x[:, 1]
        _, z_i = model(x_i)
        _, z_j = model(x_j)
        loss = nt_xent(z_i, z_j, 0.5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))

    return step, losses


def train(pairs, steps):
    import torch

    model = build()
    step, losses = make_train_step(model, pairs)
    figures = time_steps(step, steps)
    views = 2 * pairs
    return {
        "reference": "clmr_torch",
        "model": "clmr",
        "pairs": pairs,
        "views": views,
        "views_per_s": round(views / figures["step_s"], 3),
        "gflop_per_s": round(3 * FLOP_PER_VIEW_FORWARD * views / figures["step_s"] / 1e9, 1),
        **figures,
        "loss": losses[-1],
        "peak_rss_gb": peak_rss_gb(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def infer(batch, batches):
    """Torch-eager encoder inference (eval mode, inference_mode): views/s at ``batch``."""
    import torch

    encoder = build().encoder.eval()
    audio = torch.from_numpy(
        np.random.default_rng(0).uniform(-0.5, 0.5, (batch, 1, SAMPLES)).astype("float32")
    )

    def step():
        with torch.inference_mode():
            encoder(audio)

    figures = time_steps(step, batches)
    return {
        "reference": "clmr_torch",
        "model": "sample_cnn",
        "batch": batch,
        "views_per_s": round(batch / figures["step_s"], 3),
        **figures,
        "peak_rss_gb": peak_rss_gb(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["train", "infer"])
    parser.add_argument("--pairs", type=int, default=48, help="train: pairs per step")
    parser.add_argument("--steps", type=int, default=1, help="train: timed steps after a warm-up")
    parser.add_argument("--batch", type=int, default=32, help="infer: windows per batch")
    parser.add_argument("--batches", type=int, default=3, help="infer: timed batches")
    args = parser.parse_args()
    if args.command == "train":
        print(json.dumps(train(args.pairs, args.steps)))
    else:
        print(json.dumps(infer(args.batch, args.batches)))


if __name__ == "__main__":
    main()
