"""The original PyTorch stacks, re-written in this repository, run side by side with keras_clmr.

In-repo references (they run in the project's own environment: torch is a test dependency):

* ``python -m benchmarks.reference.clmr_torch train|infer``: CLMR's train step (SampleCNN with
  CLMR's module tree, SimCLR's projector, NT-Xent as in the ``simclr`` package, torch Adam
  3e-4, two encoder passes of B views) and torch-eager inference;
* ``python -m benchmarks.reference.pemr_torch train``: PEMR's train step (its FCN on log-mel,
  mask generator transformer, predicting module, Barlow-Twins-style criterion).

Each prints one JSON line with views/s, peak RSS and the other processes' CPU share; run each
measurement in its own process so the peak RSS is that run's alone (``run_module`` does).

One part needs an external environment: the augmentation reference runs the genuine sox
effects (torchaudio <= 2.8 ``sox_effects`` + libsox, WavAugment), which cannot be installed
next to this project's torch. Point ``KERAS_CLMR_REFERENCE_PYTHON`` (an interpreter with
torchaudio-augmentations and sox) and ``KERAS_CLMR_REFERENCE_SCRIPT`` (a script whose
``augment`` / ``infer`` commands print JSON) at it; without them ``benchmarks.augment`` and
``benchmarks.export`` report the reference part as skipped with this explanation.
"""

import json
import os
import subprocess
import sys

PYTHON_VARIABLE = "KERAS_CLMR_REFERENCE_PYTHON"
SCRIPT_VARIABLE = "KERAS_CLMR_REFERENCE_SCRIPT"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ReferenceUnavailable(RuntimeError):
    """The external (sox) reference is not configured or not found; the message says how."""


def harness():
    """(python, script) of the external sox reference; ReferenceUnavailable says what to set."""
    python = os.environ.get(PYTHON_VARIABLE)
    script = os.environ.get(SCRIPT_VARIABLE)
    if not python or not script:
        raise ReferenceUnavailable(
            f"the external augmentation reference is not configured: set {PYTHON_VARIABLE} (an "
            f"interpreter with torchaudio-augmentations and sox) and {SCRIPT_VARIABLE} (a script "
            "with augment/infer commands printing JSON); the train-step and inference references "
            "need neither (benchmarks.reference.clmr_torch, pemr_torch)"
        )
    for variable, path in ((PYTHON_VARIABLE, python), (SCRIPT_VARIABLE, script)):
        if not os.path.isfile(path):
            raise ReferenceUnavailable(f"{variable}={path} does not exist")
    return python, script


def skipped():
    """A JSON-ready note for a benchmark part that needs the external harness, or None."""
    try:
        harness()
    except ReferenceUnavailable as error:
        return {"skipped": str(error)}
    return None


def run_module(module, *arguments, timeout=3600):
    """Run ``python -m benchmarks.reference.<module> ...`` in a fresh process; its JSON (a dict
    with ``error`` when it failed, so one failed reference does not end the benchmark)."""
    command = [sys.executable, "-m", f"benchmarks.reference.{module}", *map(str, arguments)]
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"{' '.join(command[2:])} ran over {timeout} s"}
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = result.stderr.strip().splitlines()[-3:] if result.stderr.strip() else ["failed"]
        return {"error": f"exit {result.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])
