"""TensorFlow's start-up noise, silenced for the command line (``--verbose`` shows it).

TensorFlow's C++ side prints lines before its logging is set up (``WARNING: All log messages
before absl::InitializeLog()``, ``I0000 ... cudart_stub``, ``cpu_feature_guard``) and, on a
machine without a GPU, ``E0000 ... failed call to cuInit``. ``TF_CPP_MIN_LOG_LEVEL=3`` hides
what comes after set-up; the lines before it are written to file descriptor 2 during
``import tensorflow``, so that import runs with fd 2 captured and only lines that are not
known start-up noise are written back.
"""

import os
import re
import sys
import tempfile

NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)"
    r"|[IWE]\d{4} [\d:. ]+\s+\d+ (cudart_stub|cpu_feature_guard|cuda_platform|cuda_executor"
    r"|cuda_dnn|cuda_fft|cuda_blas|port)\.cc"
    r"|To enable the following instructions: .* rebuild TensorFlow"
    r"|.*oneDNN custom operations are on)"
)


def is_noise(line):
    """Whether ``line`` is one of TensorFlow's known start-up lines."""
    return bool(NOISE.match(line))


def quiet_start(verbose=False):
    """Set the log levels and import TensorFlow with its start-up lines filtered (if used)."""
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("KERAS_CLMR_TF_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow" or "tensorflow" in sys.modules:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (an embedded interpreter)
        return
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf  # noqa: F401

            tf.get_logger().setLevel("ERROR")
        except ImportError:
            pass
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode("utf-8", "replace")
    kept = [line for line in text.splitlines() if line.strip() and not is_noise(line)]
    if kept:
        sys.stderr.write("\n".join(kept) + "\n")
