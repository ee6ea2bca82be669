"""Where the reference harness lives: the original PyTorch CLMR code, run side by side.

The harness is not part of this repository. Point the benchmarks at it with two environment
variables: ``KERAS_CLMR_REFERENCE_PYTHON`` (an interpreter with the original code's
dependencies: torch, torchaudio-augmentations, sox) and ``KERAS_CLMR_REFERENCE_SCRIPT`` (its
``reference_clmr.py``, with ``train`` / ``infer`` / ``augment`` commands that print JSON).
Without them the reference parts report ``skipped`` with this explanation.
"""

import os

PYTHON_VARIABLE = "KERAS_CLMR_REFERENCE_PYTHON"
SCRIPT_VARIABLE = "KERAS_CLMR_REFERENCE_SCRIPT"


class ReferenceUnavailable(RuntimeError):
    """The reference harness is not configured or not found; the message says how to set it."""


def harness():
    """(python, script) of the reference harness; ReferenceUnavailable says what to set."""
    python = os.environ.get(PYTHON_VARIABLE)
    script = os.environ.get(SCRIPT_VARIABLE)
    if not python or not script:
        raise ReferenceUnavailable(
            f"the reference harness is not configured: set {PYTHON_VARIABLE} (an interpreter with "
            f"the original CLMR code's dependencies) and {SCRIPT_VARIABLE} (its reference_clmr.py)"
        )
    for variable, path in ((PYTHON_VARIABLE, python), (SCRIPT_VARIABLE, script)):
        if not os.path.isfile(path):
            raise ReferenceUnavailable(f"{variable}={path} does not exist")
    return python, script


def skipped():
    """A JSON-ready note for a benchmark part that needs the harness, or None when it is set."""
    try:
        harness()
    except ReferenceUnavailable as error:
        return {"skipped": str(error)}
    return None
