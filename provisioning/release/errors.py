"""The one error of a release that must not be used (below every other release module)."""

from __future__ import annotations

from ..errors import ProvisioningError

__all__ = ["ReleaseError"]


class ReleaseError(ProvisioningError, ValueError):
    """A release file that must not be used (unsigned, forged, edited, another namespace, malformed)."""

    exit_code = 2
