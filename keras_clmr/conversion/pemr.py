"""PEMR PyTorch Lightning checkpoints -> Keras (spectrogram BN + FCN encoder + projector)."""

from keras_clmr.conversion.common import ConversionError


def detect_pemr_format(state):
    """'pemr' when the keys are PEMR's (``*encoder.spec_bn.*`` / ``*encoder.layerN.conv.*``), else None."""
    if any(".spec_bn." in k or k.startswith("spec_bn.") for k in state):
        return "pemr"
    return None


def convert_pemr_with_reference(state, parity=True, source="checkpoint"):
    raise ConversionError("PEMR conversion is not available yet.")
