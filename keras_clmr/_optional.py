"""Optional dependencies: import a heavy module or say which extra installs it.

The core package needs Keras, TensorFlow, the audio readers and huggingface-hub (every preset's
card is rendered through it); ONNX export and plots live behind extras (``export``, ``plots``
in pyproject.toml) so a plain install stays small. Call ``require`` at the point of use, never
at module import time.
"""

import importlib

# Which extra of pyproject.toml installs each optional top-level module.
EXTRAS = {
    "onnx": "export",
    "onnxruntime": "export",
    "tf2onnx": "export",
    "matplotlib": "plots",
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the pip command that fixes it."""


def require(module, extra=None, purpose=None):
    """Import and return ``module``, or raise MissingExtraError naming the pip command.

    ``extra`` defaults to the extra listed for the module's top-level package in ``EXTRAS``;
    ``purpose`` (e.g. "ONNX export") makes the message say what needed it.
    """
    extra = extra or EXTRAS.get(module.split(".")[0])
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = getattr(error, "name", None) or module
        needed = f" for {purpose}" if purpose else ""
        fix = f"pip install 'keras-clmr[{extra}]'" if extra else f"pip install {missing}"
        raise MissingExtraError(
            f"{module} is needed{needed} but is not installed ({error}). Install it with: {fix}",
            name=missing,
        ) from error
