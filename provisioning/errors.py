"""One root error for the whole package.

Every subclass also inherits the builtin a caller would naturally catch (``ValueError``
for bad input, ``RuntimeError`` for a failed build, ``OSError``-like cache problems as
``RuntimeError``), and carries the process exit code the command line uses for it.
"""

from __future__ import annotations


class ProvisioningError(Exception):
    """Root of every error this package raises on purpose; the message is one line."""

    exit_code = 1


class ConfigError(ProvisioningError, ValueError):
    """The corpus configuration (YAML or an ONNX file it names) is invalid."""

    exit_code = 2


class HostProbeError(ProvisioningError, RuntimeError):
    """The host could not be identified (needed to name its engines)."""

    exit_code = 3


class NoGpuError(ProvisioningError, RuntimeError):
    """The TensorRT backend was asked for, but no usable GPU is visible."""

    exit_code = 69  # EX_UNAVAILABLE: distinct, so scripts can tell "no GPU" apart


class BackendUnavailableError(ProvisioningError, RuntimeError):
    """The chosen backend's library is not installed."""

    exit_code = 4


class BackendError(ProvisioningError, RuntimeError):
    """A backend ran but could not produce a valid engine."""

    exit_code = 1


class CacheError(ProvisioningError, RuntimeError):
    """The cache folder cannot be used as asked (unwritable, unsafe path, symlink)."""

    exit_code = 5


class UnsafePathError(CacheError):
    """A cache path is a symlink or otherwise points outside the cache; never followed."""


class EngineNotReadyError(ProvisioningError, LookupError):
    """This host's engine of a backbone is missing, stale or corrupt (and was not to be built)."""

    exit_code = 1  # as engines-status: something needs a build


class ValidationFailed(BackendError):
    """An engine ran but did not meet its ``validate:`` criteria (parity or latency); not published."""
