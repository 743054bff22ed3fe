"""Progress feedback shared by every long-running step: one tqdm bar (with ETA) on stderr.

Library functions take ``progress: bool`` and build their bars here, never with their own
tqdm settings, so every command looks the same: the bar goes to **stderr** (stdout carries
``--json``), shows the rate and the time left, and a disabled bar costs nothing. Who decides
whether to show it is the caller: the CLI shows bars on a terminal unless ``--quiet``
(:func:`show_progress`), notebooks pass ``progress=True``.

Example:
    >>> from medmtl.progress import bar
    >>> for item in bar(range(3), desc="demo", unit="scan", enabled=False):
    ...     pass
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    from tqdm import tqdm

T = TypeVar("T")

#: One format for every bar: what, how far, elapsed < left, rate, then the step's numbers.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}"
#: Stages differ in length: no rate, the mean stage time gives the time left.
STAGE_FORMAT = "{desc} ({n_fmt}/{total_fmt} stages) [{elapsed}<{remaining}]"


def show_progress(quiet: bool, stream: Any = None) -> bool:
    """Whether a command shows progress: not ``quiet`` and ``stream`` (default stderr) is a terminal.

    A redirected or piped stderr (a log file, CI, ``2>``) gets no bars: they would fill it with
    carriage-return lines.
    """
    if quiet:
        return False
    s = sys.stderr if stream is None else stream
    try:
        return bool(s.isatty())
    except (AttributeError, ValueError):  # closed or a stream without isatty()
        return False


def bar(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None, unit: str = "it",
        enabled: bool = True, leave: bool = True, initial: int = 0, fmt: str = BAR_FORMAT) -> tqdm:
    """A progress bar with ETA on stderr (a no-op bar when not ``enabled``).

    Args:
        iterable: what to iterate over (``None``: call ``update()`` yourself).
        desc: what is being done (``"predict"``, ``"epoch 3/10"``).
        total: number of steps (default: ``len(iterable)`` where it has one).
        unit: the step's unit (``"scan"``, ``"step"``, ``"replicate"``).
        enabled: show it; a disabled bar writes nothing.
        leave: keep the finished bar on screen.
        initial: steps already done (a resumed run).
        fmt: the tqdm ``bar_format`` (:data:`BAR_FORMAT`; :data:`STAGE_FORMAT` for stages).

    Returns:
        A ``tqdm`` object: iterate over it, or ``update(n)`` / ``set_postfix(...)`` / ``close()``.
    """
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled, leave=leave, initial=initial,
                file=sys.stderr, dynamic_ncols=True, bar_format=fmt, mininterval=0.5)


def note(message: str, *, enabled: bool = True) -> None:
    """One line on stderr that does not break an open bar (e.g. an epoch's summary)."""
    if enabled:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"3.5 min"``, ``"2.1 h"``: a time left as people read it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Stages:
    """Progress over the named stages of one job (``diagnose``: reading, fingerprints, features, ...).

    The bar counts finished stages and names the running one; its ETA is the mean stage time
    so far, a rough guide when stages differ in length. A job that skips stages (a shorter path
    through it) names a later one and the bar jumps there.

    Example:
        >>> with Stages(["read", "test", "write"], desc="diagnose", enabled=False) as stage:
        ...     stage("read")
        ...     stage("write")  # "test" skipped
    """

    def __init__(self, names: Sequence[str], *, desc: str, enabled: bool = True) -> None:
        self.names = list(names)
        self.desc = desc
        self._bar = bar(total=len(self.names), desc=desc, unit="stage", enabled=enabled, fmt=STAGE_FORMAT)

    def __call__(self, name: str) -> None:
        """Start stage ``name``: the stages before it count as done.

        Raises:
            ValueError: ``name`` is not one of the stages.
        """
        if name not in self.names:
            raise ValueError(f"unknown stage {name!r}; the stages are {self.names}")
        self._bar.set_description_str(f"{self.desc}: {name}", refresh=False)
        self._bar.update(max(0, self.names.index(name) - self._bar.n))
        self._bar.refresh()

    def close(self, *, finished: bool = True) -> None:
        """Close the bar; ``finished``: count every stage as done first."""
        if finished:
            self._bar.update(len(self.names) - self._bar.n)
            self._bar.set_description_str(self.desc, refresh=False)
        self._bar.close()

    def __enter__(self) -> Stages:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(finished=exc_type is None)


__all__ = ["BAR_FORMAT", "STAGE_FORMAT", "Stages", "bar", "format_duration", "note", "show_progress"]
