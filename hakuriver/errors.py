"""The exception tree. API errors carry their HTTP status and a stable code.

Handlers raise these; the error middleware turns them into
`{"error": {"code": ..., "message": ...}}` with `status`. The CLIs print
`message` on one line and exit non-zero.
"""

from __future__ import annotations


class HakuRiverError(Exception):
    """Base of every error HakuRiver raises on purpose."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class ValidationError(HakuRiverError):
    """Input that is malformed or out of range (400)."""

    status = 400
    code = "invalid"


class Unschedulable(HakuRiverError):
    """A well-formed request that no node could ever satisfy (400)."""

    status = 400
    code = "unschedulable"


class PolicyDenied(HakuRiverError):
    """A request the cluster's policy forbids: privileged tasks, mounts (403)."""

    status = 403
    code = "forbidden"


class Forbidden(HakuRiverError):
    """Authenticated, but this principal may not do this (403)."""

    status = 403
    code = "forbidden"


class Unauthorized(HakuRiverError):
    status = 401
    code = "unauthorized"


class NotFound(HakuRiverError):
    status = 404
    code = "not_found"


class Conflict(HakuRiverError):
    """The request is valid but the object's state does not allow it (409)."""

    status = 409
    code = "conflict"


class ConfigError(HakuRiverError):
    """A missing, unreadable or invalid configuration file or value."""

    code = "config"


class ExecutorError(HakuRiverError):
    """An execution backend could not start or control a task."""

    code = "executor"


class HostUnreachable(HakuRiverError):
    """A client could not reach the Host (CLI side)."""

    code = "unreachable"


class UploadTooLarge(HakuRiverError):
    """An environment upload above `docker.max_upload_size` (413)."""

    status = 413
    code = "upload_too_large"


class InsufficientStorage(HakuRiverError):
    """Not enough free space on the Host for an upload (507)."""

    status = 507
    code = "insufficient_storage"
