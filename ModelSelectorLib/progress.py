"""Progress reporting and cancellation for long work.

On a terminal, progress is a tqdm bar on stderr. When ``MODELSELECTOR_PROGRESS=lines`` is set (the Slicer
module sets it when it runs the library as a separate process) progress is printed instead as one line per
update, ``PROGRESS <fraction 0-1> <description>``, which the module turns into its progress bar.

Cancellation: library functions that run long accept ``cancel``: a :class:`threading.Event` (or anything
with ``is_set()``) or a function of no arguments that returns True to cancel (``cancel=lambda: stop``);
:func:`check_cancel` raises :class:`~ModelSelectorLib.errors.Cancelled` when it is set.
From the command line, Ctrl-C (SIGINT) and SIGTERM cancel.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Optional, TypeVar

from .errors import Cancelled, InputError

T = TypeVar("T")


def line_mode() -> bool:
    """True when progress goes out as ``PROGRESS`` lines rather than a tqdm bar."""
    return os.environ.get("MODELSELECTOR_PROGRESS", "").lower() == "lines"


def check_cancel(cancel: Optional[Any]) -> None:
    """Raise :class:`Cancelled` if ``cancel`` is set: an Event-like object (``is_set()`` true), a function
    of no arguments (its result true) or None (never set).

    Raises:
        Cancelled: ``cancel`` is set.
        InputError: ``cancel`` is something else.
    """
    if cancel is None:
        return
    is_set = getattr(cancel, "is_set", None)
    if callable(is_set):
        stop = is_set()
    elif callable(cancel):
        stop = cancel()
    else:
        raise InputError(
            f"cancel must be a threading.Event (or anything with is_set()) or a function returning True to "
            f"cancel, not a {type(cancel).__name__}; pass e.g. cancel=threading.Event() and set it to stop."
        )
    if stop:
        raise Cancelled("cancelled by the user; nothing was written")


def report(fraction: float, desc: str = "") -> None:
    """Report progress of the current job in line mode (a no-op otherwise)."""
    if line_mode():
        print(f"PROGRESS {min(max(fraction, 0.0), 1.0):.4f} {desc}", file=sys.stderr, flush=True)


class _LineBar:
    """A minimal tqdm-like object that prints PROGRESS lines at most every 0.2 s, and whenever a step is named."""

    def __init__(self, iterable: Optional[Iterable[Any]], total: Optional[int], desc: str) -> None:
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc = desc
        self.n = 0
        self._last = 0.0
        self._said = ""  # the description of the last line
        self.postfix = ""

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more done; say so at most every 0.2 s, at the end, and whenever a new step is named."""
        self.n += n
        now = time.monotonic()
        if now - self._last > 0.2 or (self.total and self.n >= self.total) or self.desc != self._said:
            self._say(now)

    def _say(self, now: float) -> None:
        self._last, self._said = now, self.desc
        report(self.n / self.total if self.total else 0.0, f"{self.desc} {self.postfix}".strip())

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        """Name the step under way; with ``refresh`` (as in tqdm) say so at once, else with the next update."""
        self.desc = desc
        if refresh:
            self._say(time.monotonic())

    def close(self) -> None:
        pass

    def __enter__(self) -> _LineBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(
    iterable: Optional[Iterable[T]] = None,
    total: Optional[int] = None,
    desc: str = "",
    disable: bool = False,
    **kwargs: Any,
) -> Any:
    """A tqdm bar on stderr, or a PROGRESS-line reporter in line mode. Use like ``tqdm``; ``disable`` silences
    both."""
    if line_mode() and not disable:
        return _LineBar(iterable, total, desc)
    from tqdm.auto import tqdm

    return tqdm(
        iterable, total=total, desc=desc, disable=disable, file=sys.stderr, dynamic_ncols=True, **kwargs
    )


def start_step(bar: Any, desc: str) -> None:
    """Name the step that ``bar``'s work begins now: at once as a PROGRESS line in line mode, on a tqdm bar once
    its ``delay`` has passed (made with ``mininterval=0``, it is not held back by the last update's time)."""
    bar.set_description(desc, refresh=False)
    bar.update(0)
