"""One progress bar for long work (encoding, reranking): tqdm, silent when not shown."""

from __future__ import annotations


def progress(total: int, desc: str, unit: str = "item", *, show: bool = True):
    """A tqdm bar to use as a context manager; with ``show=False`` every call on it does nothing."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not show)
