"""Matplotlib (headless Agg) and atomic PNG writes shared by the interpret pictures and the
evaluation plots."""

import io


def pyplot(purpose="interpretation pictures"):
    """``matplotlib.pyplot`` on the Agg backend (no display needed); ``purpose`` names what
    needs it in the error raised when matplotlib is missing."""
    from keras_clmr._optional import require

    matplotlib = require("matplotlib", purpose=purpose)

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path, dpi=110):
    """Render ``figure`` to PNG in memory, write it to ``path`` atomically and close it."""
    from keras_clmr.io import atomic_write_bytes

    plt = pyplot()
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())
