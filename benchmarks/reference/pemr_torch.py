"""The original PEMR train step, in PyTorch (written for keras_clmr from the official code's
formulation, github.com/yaoodng7/PEMR; see docs/fidelity.md for the model itself).

    python -m benchmarks.reference.pemr_torch train --pairs=16 --steps=1

One step, as the official ``training_step``: torchaudio-style log-mel of both views (outside
autograd) -> tokens (CLS + frames + sinusoidal positions) -> the predicting module (BERT-style
masking of each view, the 3-layer post-LN transformer run on each view separately, FFN head,
Huber) -> the mask generation (both views through the first two layers, the last layer's Q of
each CLS against K of view 2's frames, the 10 % lowest-scoring frames masked by a hard sort) ->
the FCN encoder run three times (anchor, positive, negative: BatchNorm statistics per view
batch) -> projector -> the Barlow-Twins-style criterion with its own train-mode
``BatchNorm1d(256)`` (outside the optimiser, so its affine terms stay 1 and 0) -> backward ->
torch Adam (3e-4) over encoder, mask generator and projector. The FCN and projector are the
modules of ``keras_clmr.conversion.torch_reference``. Prints one JSON line.
"""

import argparse
import functools
import json
import math
import os

from benchmarks.reference.measure import peak_rss_gb, time_steps

SAMPLES = 59049
NUM_FRAMES = 462
N_MELS = 128


@functools.cache
def _classes():
    import torch
    from torch import nn

    class LayerNorm(nn.Module):
        """PEMR's layer norm: (z - mean) / (unbiased std + eps), then gamma and beta."""

        def __init__(self, dim, eps=1e-6):
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(dim))
            self.beta = nn.Parameter(torch.zeros(dim))
            self.eps = eps

        def forward(self, z):
            mean = z.mean(dim=-1, keepdim=True)
            std = z.std(dim=-1, keepdim=True)
            return self.gamma * ((z - mean) / (std + self.eps)) + self.beta

    def xavier_linear(n_in, n_out):
        layer = nn.Linear(n_in, n_out)
        nn.init.xavier_normal_(layer.weight)
        nn.init.zeros_(layer.bias)
        return layer

    class SelfAttention(nn.Module):
        """Post-LN multi-head self-attention with d_k = d_v per head (d_model -> heads x d_k)."""

        def __init__(self, d_model=128, heads=3, d_k=128, dropout=0.1):
            super().__init__()
            self.heads, self.d_k = heads, d_k
            self.w_q = xavier_linear(d_model, heads * d_k)
            self.w_k = xavier_linear(d_model, heads * d_k)
            self.w_v = xavier_linear(d_model, heads * d_k)
            self.proj = xavier_linear(heads * d_k, d_model)
            self.attention_dropout = nn.Dropout(dropout)
            self.dropout = nn.Dropout(dropout)
            self.layer_norm = LayerNorm(d_model)

        def split_heads(self, x):
            return x.view(x.shape[0], -1, self.heads, self.d_k).transpose(1, 2)

        def query_heads(self, x):
            return self.split_heads(self.w_q(x))

        def key_heads(self, x):
            return self.split_heads(self.w_k(x))

        def forward(self, x):
            q, k = self.query_heads(x), self.key_heads(x)
            v = self.split_heads(self.w_v(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.d_k)
            context = torch.matmul(self.attention_dropout(torch.softmax(scores, dim=-1)), v)
            context = (
                context.transpose(1, 2).contiguous().view(x.shape[0], -1, self.heads * self.d_k)
            )
            return self.layer_norm(x + self.dropout(self.proj(context)))

    class FeedForward(nn.Module):
        """Post-LN position-wise FFN written as two kernel-1 Conv1d, as in the code."""

        def __init__(self, d_model=128, hidden=2048, dropout=0.1):
            super().__init__()
            self.conv1 = nn.Conv1d(d_model, hidden, kernel_size=1)
            self.conv2 = nn.Conv1d(hidden, d_model, kernel_size=1)
            self.dropout = nn.Dropout(dropout)
            self.layer_norm = LayerNorm(d_model)

        def forward(self, x):
            out = self.conv2(torch.relu(self.conv1(x.transpose(1, 2)))).transpose(1, 2)
            return self.layer_norm(x + self.dropout(out))

    class EncoderLayer(nn.Module):
        def __init__(self, d_model=128, heads=3, d_k=128, hidden=2048, dropout=0.1):
            super().__init__()
            self.self_attention = SelfAttention(d_model, heads, d_k, dropout)
            self.feed_forward = FeedForward(d_model, hidden, dropout)

        def forward(self, x):
            return self.feed_forward(self.self_attention(x))

    class MaskGenerator(nn.Module):
        """PEMR's ``UnitedModule``: tokens, the predicting module (L_pred) and the frame mask."""

        def __init__(
            self,
            num_frames=NUM_FRAMES,
            d_model=N_MELS,
            layers=3,
            heads=3,
            mask_ratio=0.1,
            dropout=0.1,
        ):
            super().__init__()
            self.num_frames, self.d_model = num_frames, d_model
            self.num_masked = int(num_frames * mask_ratio)
            self.cls = nn.Embedding(1, d_model)
            self.mask = nn.Embedding(1, d_model)
            self.input_dropout = nn.Dropout(dropout)
            self.layers = nn.ModuleList(
                [EncoderLayer(d_model, heads, 128, 2048, dropout) for _ in range(layers)]
            )
            self.pred_layer = FeedForward(d_model, 512, dropout)
            length, position = num_frames + 1, torch.arange(num_frames + 1.0)[:, None]
            div = torch.exp(torch.arange(0, d_model, 2.0) * -(math.log(10000.0) / d_model))
            table = torch.zeros(length, d_model)
            table[:, 0::2] = torch.sin(position * div)
            table[:, 1::2] = torch.cos(position * div)
            self.register_buffer("positions", table, persistent=False)

        def tokens(self, frames):
            cls = self.cls.weight[None].expand(frames.shape[0], 1, self.d_model)
            return torch.cat((cls, frames), dim=1) + self.positions[None]

        def transformer(self, x):
            x = self.input_dropout(x)
            for layer in self.layers:
                x = layer(x)
            return x

        @staticmethod
        def huber(true, pred, delta=0.1):
            diff = torch.abs(true - pred)
            return torch.mean(
                torch.where(diff < delta, 0.5 * diff**2, delta * diff - 0.5 * delta**2)
            )

        def prediction_loss(self, m_i, m_j):
            """BERT-style masking (p 0.15 per position; one strategy per batch), each view
            through the transformer on its own, Huber at the masked positions."""
            shape = (m_i.shape[0], m_i.shape[1], 1)
            mask_i = torch.bernoulli(torch.full(shape, 0.15))
            mask_j = torch.bernoulli(torch.full(shape, 0.15))
            strategy = int(torch.multinomial(torch.tensor([0.8, 0.1, 0.1]), 1))
            if strategy == 0:
                in_i, in_j = m_i * (1 - mask_i), m_j * (1 - mask_j)
            elif strategy == 1:
                index = int(torch.randint(m_i.shape[1], (1,)))
                in_i = m_i * (1 - mask_i) + mask_i * m_i[:, index : index + 1]
                in_j = m_j * (1 - mask_j) + mask_j * m_j[:, index : index + 1]
            else:
                in_i, in_j = m_i, m_j
            pred_i = self.pred_layer(self.transformer(in_i))
            pred_j = self.pred_layer(self.transformer(in_j))
            return self.huber(m_i * mask_i, pred_i * mask_i) + self.huber(
                m_j * mask_j, pred_j * mask_j
            )

        def frame_mask(self, m_i, m_j):
            """[B, frames, 1]: 0 at view 2's ``num_masked`` least important frames, else 1."""
            out_i, out_j = self.input_dropout(m_i), self.input_dropout(m_j)
            for layer in self.layers[:-1]:
                out_i, out_j = layer(out_i), layer(out_j)
            attention = self.layers[-1].self_attention
            keys = attention.key_heads(out_j[:, 1:]).transpose(2, 3)
            scale = math.sqrt(self.d_model)  # the code scales by sqrt(d_model) here
            scores = torch.softmax(
                torch.matmul(attention.query_heads(out_i[:, :1]), keys) / scale, dim=-1
            ) + torch.softmax(torch.matmul(attention.query_heads(out_j[:, :1]), keys) / scale, -1)
            scores = scores[:, :, 0].mean(dim=1)  # [B, frames]
            lowest = torch.sort(scores, dim=-1).indices[:, : self.num_masked]
            keep = torch.ones(scores.shape)
            keep.scatter_(1, lowest, 0.0)  # a hard selection: no gradient, as in the code
            return keep[:, :, None]

        def forward(self, frames_i, frames_j):
            """Frames [B, N, D] of both views -> (positive, negative [B, D, N], L_pred)."""
            m_i, m_j = self.tokens(frames_i), self.tokens(frames_j)
            loss_pred = self.prediction_loss(m_i, m_j)
            keep = self.frame_mask(m_i, m_j)
            mask_token = self.mask.weight[None]
            positive = frames_j * keep + (1 - keep) * mask_token
            negative = frames_j * (1 - keep) + keep * mask_token
            return positive.transpose(1, 2), negative.transpose(1, 2), loss_pred

    class Criterion(nn.Module):
        """The code's ``BTLoss``: L_pos + L_neg on train-mode batch-normalised projections."""

        def __init__(self, projection_dim=256, lambd1=5e-3, lambd2=5e-3):
            super().__init__()
            self.bn = nn.BatchNorm1d(projection_dim, affine=True)
            self.lambd1, self.lambd2 = lambd1, lambd2

        def forward(self, z_i, z_pos, z_neg):
            batch = z_i.shape[0]
            anchor = self.bn(z_i)
            c_pos = anchor.T @ self.bn(z_pos) / batch
            c_neg = anchor.T @ self.bn(z_neg) / batch
            diag = torch.diagonal(c_pos)
            on_diag = (diag - 1).pow(2).sum()
            off_diag = c_pos.pow(2).sum() - diag.pow(2).sum()
            return (
                on_diag + self.lambd2 * off_diag + self.lambd1 * torch.diagonal(c_neg).pow(2).sum()
            )

    return {"MaskGenerator": MaskGenerator, "Criterion": Criterion}


def build():
    """(framework, generator, criterion): SimCLR-style FCN + projector (512 -> 512 -> 256), the
    mask generator, and the criterion whose BatchNorm Adam never sees."""
    from keras_clmr.conversion import torch_reference

    framework = torch_reference.simclr(torch_reference.fcn(), 512, 256)
    classes = _classes()
    return framework, classes["MaskGenerator"](), classes["Criterion"]()


def log_mel(audio):
    """torchaudio ``MelSpectrogram(n_fft=256, hop=128, n_mels=128)`` + dB, [B, 128, 462]."""
    import torch

    from keras_clmr.conversion.pemr import torch_logmel

    return torch.from_numpy(torch_logmel(audio.numpy()))


def make_train_step(pairs, seed=0):
    """A closure running one PEMR training step on a fixed batch of audio pairs."""
    import torch

    torch.manual_seed(seed)
    framework, generator, criterion = build()
    x = 0.1 * torch.randn(pairs, 2, SAMPLES)
    parameters = list(framework.parameters()) + list(generator.parameters())
    optimizer = torch.optim.Adam(parameters, lr=3e-4)
    for module in (framework, generator, criterion):
        module.train()
    losses = []

    def step():
        x_i, x_j = log_mel(x[:, 0]), log_mel(x[:, 1])
        positive, negative, loss_pred = generator(x_i.transpose(1, 2), x_j.transpose(1, 2))
        h_i, h_pos, h_neg = (
            framework.encoder(x_i),
            framework.encoder(positive),
            framework.encoder(negative),
        )
        project = framework.projector
        loss = criterion(project(h_i), project(h_pos), project(h_neg)) + 0.01 * loss_pred
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))

    return step, losses, (framework, generator, criterion)


def train(pairs, steps):
    import torch

    step, losses, _ = make_train_step(pairs)
    cpu_s = []  # this process's CPU seconds (user + system) of each step: load-independent

    def timed_step():
        start = os.times()
        step()
        end = os.times()
        cpu_s.append((end.user + end.system) - (start.user + start.system))

    figures = time_steps(timed_step, steps)
    timed_cpu = cpu_s[1:] if steps else cpu_s
    views = 2 * pairs
    return {
        "reference": "pemr_torch",
        "model": "pemr",
        "pairs": pairs,
        "views": views,
        "views_per_s": round(views / figures["step_s"], 3),
        **figures,
        "process_cpu_s_per_step": round(sum(timed_cpu) / len(timed_cpu), 3),
        "loss": losses[-1],
        "peak_rss_gb": peak_rss_gb(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["train"])
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--steps", type=int, default=1, help="timed steps after a warm-up")
    args = parser.parse_args()
    print(json.dumps(train(args.pairs, args.steps)))


if __name__ == "__main__":
    main()
