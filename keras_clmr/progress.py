"""Progress bars for long work (downloads, inference, evaluation): tqdm on stderr, quiet when
piped.

``progress``: ``None`` (default) shows a bar only when stderr is a terminal, ``True`` forces
one (logs, notebooks), ``False`` never shows one.
"""

import sys


class _NoBar:
    """What a disabled bar is: every call does nothing."""

    n = 0

    def update(self, n=1):
        pass

    def set_postfix_str(self, text, refresh=True):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def progress_bar(total=None, *, progress=None, desc=None, unit="it", **kwargs):
    """A tqdm bar on stderr per ``progress`` (None: only on a terminal; True; False); other
    keywords go to tqdm (the bar is removed when done unless ``leave=True``)."""
    if progress is False:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; a stripped install still runs, without bars
        return _NoBar()
    disable = None if progress is None else False
    if disable is None and not sys.stderr.isatty():
        return _NoBar()
    kwargs.setdefault("leave", False)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, **kwargs)


def iterate(items, *, progress=None, desc=None, unit="it", total=None):
    """``items`` with a progress bar (see ``progress_bar``)."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    bar = progress_bar(
        total if total is not None else len(items), progress=progress, desc=desc, unit=unit
    )
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()
