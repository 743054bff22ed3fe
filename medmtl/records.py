"""Checks shared by the typed records that are read from JSON (model card, model spec).

Each record's ``from_dict`` calls these so that a bad value is one clear error naming the
key, the bad value and what is allowed — raised before any scan is read. They depend on
nothing but :mod:`medmtl.errors`, so every layer may use them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from medmtl.errors import MedmtlError, did_you_mean


def check_keys(
    data: Any, allowed: Iterable[str], where: str, *, required: Iterable[str] = (), error: type[MedmtlError]
) -> Mapping[str, Any]:
    """``data`` as a mapping whose keys are all in ``allowed`` and include ``required``.

    Args:
        data: the parsed JSON value.
        allowed: the record's keys.
        where: dotted name of the record for the message (e.g. ``"model card 'decode'"``).
        required: keys that must be present.
        error: the exception type raised.

    Raises:
        error: not a mapping, an unknown key (with a did-you-mean) or a missing one.
    """
    names = list(allowed)
    if not isinstance(data, Mapping):
        raise error(f"{where} must be a JSON object with keys {', '.join(names)}; got {type(data).__name__}")
    for key in data:
        if key not in names:
            raise error(f"{where} has an unknown key {key!r}; allowed: {', '.join(names)}."
                        f"{did_you_mean(str(key), names)}")
    for key in required:
        if key not in data:
            raise error(f"{where} is missing key {key!r} (required: {', '.join(required)})")
    return data


def expect_type(value: Any, types: type | tuple[type, ...], where: str, *, error: type[MedmtlError]) -> Any:
    """``value`` if it is an instance of ``types`` (``bool`` is never accepted as a number).

    Raises:
        error: ``value`` has another type.
    """
    wanted = types if isinstance(types, tuple) else (types,)
    is_bool = isinstance(value, bool)
    numeric = any(t in (int, float) for t in wanted)
    if (is_bool and numeric and bool not in wanted) or not isinstance(value, wanted):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in wanted)
        raise error(f"{where} = {value!r} has the wrong type ({type(value).__name__}); expected {names}")
    return value


def number_in(
    value: Any,
    where: str,
    *,
    error: type[MedmtlError],
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> float:
    """``value`` as a finite number inside the given interval.

    Args:
        value: the parsed value.
        where: its name for the message.
        error: the exception type raised.
        low, high: bounds (``None``: unbounded).
        low_open, high_open: exclude the bound itself.
        integer: the value must be an integer.

    Raises:
        error: wrong type, not finite, or out of range (the message gives the interval).
    """
    expect_type(value, int if integer else (int, float), where, error=error)
    v = float(value)
    lo_ok = low is None or (v > low if low_open else v >= low)
    hi_ok = high is None or (v < high if high_open else v <= high)
    if not math.isfinite(v) or not (lo_ok and hi_ok):
        left = "-inf" if low is None else f"{low:g}"
        right = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{left}, {right}{')' if high_open or high is None else ']'}"
        raise error(f"{where} = {value!r} is out of range; allowed: {interval}")
    return v


def number_list(values: Any, where: str, n: int, *, error: type[MedmtlError], hint: str = "",
                low: float = -1e9, high: float = 1e9) -> tuple[float, ...]:
    """``values`` as a tuple of ``n`` finite numbers in ``[low, high]``.

    Args:
        values: the parsed list.
        where: its name for the message.
        n: the required length.
        error: the exception type raised.
        hint: appended to the length message (e.g. ``" (one per feature)"``).
        low, high: bounds of every value.

    Raises:
        error: not a list, wrong length, or a value of the wrong type or out of range.
    """
    expect_type(values, (list, tuple), where, error=error)
    if len(values) != n:
        raise error(f"{where} has {len(values)} values; expected {n}{hint}")
    return tuple(number_in(v, f"{where}[{i}]", low=low, high=high, error=error) for i, v in enumerate(values))


def one_of(value: Any, allowed: Iterable[str], where: str, *, error: type[MedmtlError]) -> str:
    """``value`` if it is one of the ``allowed`` strings (did-you-mean otherwise)."""
    names = list(allowed)
    if not isinstance(value, str) or value not in names:
        raise error(f"{where} = {value!r} is not allowed; allowed: {', '.join(names)}.{did_you_mean(str(value), names)}")
    return value


__all__ = ["check_keys", "expect_type", "number_in", "number_list", "one_of"]
