"""Exception types of medmtl.

Every error a user can cause is raised as a subclass of :class:`MedmtlError` with a one-line
message that says what was wrong, which parameter/file, the bad value, what is allowed and
how to fix it. The CLI prints ``Error: <message>`` and exits non-zero, never a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MedmtlError(Exception):
    """Base class of every user-facing medmtl error (one-line message)."""


class ScanReadError(MedmtlError):
    """A scan file or DICOM series cannot be read or is not a valid 3D volume."""


class GeometryError(ScanReadError):
    """A scan's geometry is unsupported as is (non-uniform slice spacing, gantry tilt)."""


class AnnotationError(MedmtlError):
    """An annotation table (CSV / datalist JSON / mask) is invalid."""


class ConfigError(MedmtlError):
    """A configuration value or key is invalid."""


class WeightsError(MedmtlError):
    """Pretrained weights are missing, corrupt or do not match the model."""


class RegistryError(MedmtlError):
    """An unknown name was asked of a registry (encoders, adapters, weightings, methods)."""


class CheckpointError(MedmtlError):
    """A checkpoint folder is missing files, or its model card is invalid."""


class ShiftError(MedmtlError):
    """Domain-shift diagnostics or adaptation cannot run on the given cohorts."""


class PathEscapeError(MedmtlError):
    """A path in a manifest resolves outside its root folder."""


class ExportError(MedmtlError):
    """Predictions cannot be exported in the asked format (no source DICOM, a missing value, a missing extra)."""


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """Return a ``" Did you mean 'x'?"`` suffix (or ``""``) for an unknown name.

    Args:
        value: the name the user gave.
        allowed: the valid names.

    Returns:
        A sentence fragment starting with a space, or an empty string if nothing is close.
    """
    close = difflib.get_close_matches(value, list(allowed), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_name(kind: str, value: str, allowed: Iterable[str]) -> RegistryError:
    """Build the standard error for an unknown registry name.

    Args:
        kind: what was looked up, e.g. ``"encoder"``.
        value: the unknown name.
        allowed: the registered names.

    Returns:
        A :class:`RegistryError` naming the value, the allowed names and a suggestion.
    """
    names = sorted(allowed)
    return RegistryError(
        f"unknown {kind} '{value}'; allowed: {', '.join(names)}.{did_you_mean(value, names)}"
    )
