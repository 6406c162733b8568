"""Key backends for oubli: one interface (:class:`kms.base.KeyManager`), several backends."""

from kms.base import (
    DataKey,
    KeyDestroyed,
    KeyManager,
    KmsAccessDenied,
    KmsError,
    KmsUnavailable,
)

__all__ = ["DataKey", "KeyDestroyed", "KeyManager", "KmsAccessDenied", "KmsError", "KmsUnavailable"]
