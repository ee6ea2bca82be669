"""glibc malloc settings that let PyTorch inference reuse freed CPU memory (Linux, glibc).

PyTorch's CPU tensors come from malloc. glibc hands every block above its mmap threshold (at
most 32 MB) back to the OS when it is freed, and trims the free top of its heap, so each
forward pass page-faults its large activations again and the kernel zeroes them: about half
of a SampleCNN inference's CPU time on Keras' PyTorch backend (a [32, 128, 19683] float32
activation is 322 MB). Inside ``reusing_freed_memory()`` glibc serves large blocks from its
heap (M_MMAP_MAX 0), and from the first use on it keeps up to 2 GB of free heap top
(M_TRIM_THRESHOLD), so the next forward reuses the same pages, as TensorFlow's BFC allocator
does on TensorFlow. Peak memory is unchanged; what one forward freed (its activations) stays
with the process instead of going back to the OS.

Only no-grad inference enters it (SampleCNN on PyTorch): with mmap off, a training step's
mix of long- and short-lived tensors fragments the heap (a 16-pair CLMR step peaked 0.9 GB
higher), so outside the block large blocks are mmapped again as glibc does by default.
Nothing changes when the process already chose malloc settings (MALLOC_MMAP_MAX_,
MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_, glibc.malloc.* in
GLIBC_TUNABLES, or another allocator in LD_PRELOAD), off glibc, or with
KERAS_CLMR_REUSE_FREED_MEMORY=0 (the opt-out).
"""

import contextlib
import ctypes
import os
import threading

OPT_OUT_VARIABLE = "KERAS_CLMR_REUSE_FREED_MEMORY"
# mallopt parameters and glibc's default for M_MMAP_MAX (malloc.h, malloc.c)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
DEFAULT_MMAP_MAX = 65536
TRIM_THRESHOLD_BYTES = 2**31 - 1  # the largest value mallopt takes (an int)

_USER_MALLOC_VARIABLES = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")

_lock = threading.Lock()
_state = {"libc": None, "decided": False, "depth": 0}


def user_chose_malloc_settings(environ=None):
    """True when the environment already configures malloc (then it is left as it is)."""
    environ = os.environ if environ is None else environ
    if any(name in environ for name in _USER_MALLOC_VARIABLES):
        return True
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return True
    preload = environ.get("LD_PRELOAD", "")
    return any(name in preload for name in _OTHER_ALLOCATORS)


def opted_out(environ=None):
    """True when KERAS_CLMR_REUSE_FREED_MEMORY is 0 / false / no / off."""
    environ = os.environ if environ is None else environ
    return environ.get(OPT_OUT_VARIABLE, "").strip().lower() in ("0", "false", "no", "off")


def _glibc():
    """This process's C library when it is glibc, else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def _libc():
    """glibc when the settings apply to this process (decided once), else None."""
    if not _state["decided"]:
        if not opted_out() and not user_chose_malloc_settings():
            libc = _glibc()
            if libc is not None and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1:
                _state["libc"] = libc
        _state["decided"] = True
    return _state["libc"]


@contextlib.contextmanager
def reusing_freed_memory():
    """Inside: large blocks come from glibc's heap and stay there when freed (see the module
    docstring). Re-entrant and thread-safe; a no-op where the settings do not apply."""
    with _lock:
        libc = _libc()
        if libc is not None:
            if _state["depth"] == 0:
                libc.mallopt(M_MMAP_MAX, 0)
            _state["depth"] += 1
    try:
        yield
    finally:
        if libc is not None:
            with _lock:
                _state["depth"] -= 1
                if _state["depth"] == 0:
                    libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)


def applies():
    """Whether ``reusing_freed_memory`` changes malloc's settings in this process."""
    with _lock:
        return _libc() is not None
