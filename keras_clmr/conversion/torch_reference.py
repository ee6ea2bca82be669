"""PyTorch re-implementations of the original networks, for parity checks (written for keras_clmr).

They reproduce the module structure (and therefore the state-dict keys) of the original code:

* CLMR's SampleCNN (release 2.0 / master ``sequential.i.j`` layout, or release 1.0's
  ``convN.j`` layout) with its optional ``fc``;
* SimCLR's projector (``Linear(n, n, bias=False) -> ReLU -> Linear(n, d, bias=False)``);
* the linear-evaluation heads (``Sequential(Linear)`` or the MLP ``Linear -> ReLU -> Linear``);
* PEMR's encoder (``spec_bn`` BatchNorm2d(1) + 4 conv blocks) and projector.

torch is imported lazily: it is an optional dependency needed only for conversion.
"""

import functools

import numpy as np

from keras_clmr.conversion.common import require_torch


@functools.cache
def _classes():
    torch = require_torch()
    nn = torch.nn

    class SampleCNNReference(nn.Module):
        """CLMR's SampleCNN: input [B, 1, T] -> [B, channels[-1]] (or fc logits)."""

        def __init__(
            self,
            strides=(3,) * 9,
            channels=(128, 128, 128, 256, 256, 256, 256, 256, 256, 512, 512),
            n_classes=None,
            layout="sequential",
        ):
            super().__init__()
            blocks = [
                nn.Sequential(
                    nn.Conv1d(1, channels[0], kernel_size=3, stride=3, padding=0),
                    nn.BatchNorm1d(channels[0]),
                    nn.ReLU(),
                )
            ]
            for i, stride in enumerate(strides, start=1):
                blocks.append(
                    nn.Sequential(
                        nn.Conv1d(
                            channels[i - 1], channels[i], kernel_size=stride, stride=1, padding=1
                        ),
                        nn.BatchNorm1d(channels[i]),
                        nn.ReLU(),
                        nn.MaxPool1d(stride, stride=stride),
                    )
                )
            blocks.append(
                nn.Sequential(
                    nn.Conv1d(channels[9], channels[10], kernel_size=3, stride=1, padding=1),
                    nn.BatchNorm1d(channels[10]),
                    nn.ReLU(),
                )
            )
            self.layout = layout
            if layout == "sequential":
                self.sequential = nn.Sequential(*blocks)
            elif layout == "conv":  # release 1.0: SampleCNN59049.conv1 ... conv11
                for i, block in enumerate(blocks, start=1):
                    setattr(self, f"conv{i}", block)
            else:
                raise ValueError(f"layout must be 'sequential' or 'conv', got {layout!r}")
            self.fc = nn.Linear(channels[10], n_classes) if n_classes else nn.Identity()

        def blocks(self):
            if self.layout == "sequential":
                return list(self.sequential)
            return [getattr(self, f"conv{i}") for i in range(1, 12)]

        def forward(self, x):
            for block in self.blocks():
                x = block(x)
            x = x.reshape(x.shape[0], x.shape[1] * x.shape[2])
            return self.fc(x)

    def projector(n_features, hidden, projection_dim):
        return nn.Sequential(
            nn.Linear(n_features, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, projection_dim, bias=False),
        )

    class SimCLRReference(nn.Module):
        """SimCLR(encoder, projector): forward returns (h, z). ``encoder.fc`` is Identity."""

        def __init__(self, encoder, n_features=512, projection_dim=128, hidden=None):
            super().__init__()
            self.encoder = encoder
            self.projector = projector(n_features, hidden or n_features, projection_dim)

        def forward(self, x):
            h = self.encoder(x)
            return h, self.projector(h)

    class LightningCLMRReference(nn.Module):
        """CLMR master's ContrastiveLearning module: the encoder is registered twice
        (``encoder.*`` and ``model.encoder.*``), as in its Lightning checkpoints."""

        def __init__(self, encoder, n_features=512, projection_dim=64):
            super().__init__()
            self.encoder = encoder
            self.model = SimCLRReference(encoder, n_features, projection_dim)

        def forward(self, x):
            return self.model(x)

    def head(n_features, n_classes, mlp=False, hidden=None):
        if mlp:
            hidden = hidden or n_features
            return nn.Sequential(
                nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)
            )
        return nn.Sequential(nn.Linear(n_features, n_classes))

    class Conv2dBlock(nn.Module):
        """PEMR's ``Conv_2d``: conv (3x3, pad 1) -> bn -> relu -> max-pool (module names kept)."""

        def __init__(self, c_in, c_out, pooling):
            super().__init__()
            self.conv = nn.Conv2d(c_in, c_out, 3, stride=1, padding=1)
            self.bn = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU()
            self.mp = nn.MaxPool2d(pooling)

        def forward(self, x):
            return self.mp(self.relu(self.bn(self.conv(x))))

    class FCNReference(nn.Module):
        """PEMR's ``Architecture`` encoder.

        log-mel [B, mels, frames] -> spec_bn -> 4 blocks -> flatten.
        """

        def __init__(self, channels=(64, 128, 128, 128), pools=((2, 4), (2, 4), (2, 4), (4, 5))):
            super().__init__()
            self.spec_bn = nn.BatchNorm2d(1)
            c_in = 1
            for i, (c_out, pool) in enumerate(zip(channels, pools), start=1):
                setattr(self, f"layer{i}", Conv2dBlock(c_in, c_out, tuple(pool)))
                c_in = c_out
            self.n_layers = len(channels)

        def forward(self, x):
            x = self.spec_bn(x.unsqueeze(1))
            for i in range(1, self.n_layers + 1):
                x = getattr(self, f"layer{i}")(x)
            return x.reshape(x.shape[0], -1)

    class PEMRReference(nn.Module):
        """PEMR's Lightning layout.

        ``encoder.*`` and ``model.encoder.*`` (shared) + ``model.projector``.
        """

        def __init__(self, encoder, n_features=512, projection_dim=256):
            super().__init__()
            self.encoder = encoder
            self.model = SimCLRReference(encoder, n_features, projection_dim)

        def forward(self, x):
            return self.model(x)

    return {
        "SampleCNNReference": SampleCNNReference,
        "SimCLRReference": SimCLRReference,
        "LightningCLMRReference": LightningCLMRReference,
        "projector": projector,
        "head": head,
        "FCNReference": FCNReference,
        "PEMRReference": PEMRReference,
    }


def sample_cnn(
    strides=(3,) * 9,
    channels=(128, 128, 128, 256, 256, 256, 256, 256, 256, 512, 512),
    n_classes=None,
    layout="sequential",
):
    """CLMR's SampleCNN in PyTorch (``layout='conv'`` gives release 1.0's module names)."""
    return _classes()["SampleCNNReference"](tuple(strides), tuple(channels), n_classes, layout)


def simclr(encoder, n_features=512, projection_dim=128, hidden=None):
    """SimCLR wrapper with CLMR's two-layer bias-free projector."""
    return _classes()["SimCLRReference"](encoder, n_features, projection_dim, hidden)


def lightning_clmr(encoder, n_features=512, projection_dim=64):
    """CLMR master's Lightning module layout (encoder registered twice)."""
    return _classes()["LightningCLMRReference"](encoder, n_features, projection_dim)


def linear_head(n_features=512, n_classes=50, mlp=False, hidden=None):
    """CLMR's fine-tuner head: ``Sequential(Linear)`` or the MLP ``Linear -> ReLU -> Linear``."""
    return _classes()["head"](n_features, n_classes, mlp, hidden)


def fcn(channels=(64, 128, 128, 128), pools=((2, 4), (2, 4), (2, 4), (4, 5))):
    """PEMR's FCN encoder in PyTorch (input: log-mel [B, mels, frames])."""
    return _classes()["FCNReference"](tuple(channels), tuple(tuple(p) for p in pools))


def pemr(encoder, n_features=512, projection_dim=256):
    """PEMR's Lightning module layout around an FCN encoder."""
    return _classes()["PEMRReference"](encoder, n_features, projection_dim)


def randomize_batchnorm(module, seed=0):
    """Give every BatchNorm plausible non-default statistics and affine terms (for tests)."""
    torch = require_torch()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                n = layer.num_features
                layer.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                layer.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
                layer.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                layer.bias.copy_(0.1 * torch.randn(n, generator=generator))
    return module


def run(module, array):
    """Forward a numpy array through a torch module in eval mode; numpy output(s)."""
    torch = require_torch()
    module.eval()
    with torch.no_grad():
        out = module(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
    if isinstance(out, (tuple, list)):
        return tuple(o.numpy() for o in out)
    return out.numpy()
