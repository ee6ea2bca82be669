"""keras_clmr turns on TensorFlow's BFC CPU allocator unless the user chose otherwise."""

import os
import subprocess
import sys

import pytest

# Prints whether TensorFlow's CPU allocator keeps statistics: only the BFC allocator does.
PROBE = """
import keras_clmr, keras, tensorflow as tf
keras.ops.ones([256, 256]) + 1
try:
    print("stats", tf.config.experimental.get_memory_info("CPU:0")["peak"] > 0)
except ValueError as error:
    print("no-stats", "not available" in str(error))
"""


def _probe(allocator_setting):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CPU_ALLOCATOR_USE_BFC", None)
    if allocator_setting is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = allocator_setting
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()[-2:]


@pytest.mark.parametrize(
    "setting, expected",
    [(None, ["stats", "True"]), ("false", ["no-stats", "True"])],
    ids=["default-bfc", "user-opt-out"],
)
def test_import_selects_bfc_cpu_allocator_unless_opted_out(setting, expected):
    assert _probe(setting) == expected
