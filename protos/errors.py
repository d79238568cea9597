"""Exceptions for the mistakes a user can make, shared by every core.

Cores raise these; `protos.status` maps each to one gRPC status code in one place. No core
imports grpc.
"""

from __future__ import annotations


class MeshError(Exception):
    """Base class: the message is a sentence meant for the user."""


class InvalidRequest(MeshError):
    """Bad parameters, bad media, a modality rule broken (INVALID_ARGUMENT)."""


class LimitExceeded(InvalidRequest):
    """An item limit or a media size limit broken (INVALID_ARGUMENT)."""


class UnknownMedia(MeshError):
    """A media handle that is not (or no longer) known (NOT_FOUND)."""


class Overloaded(MeshError):
    """Queue full, or a prompt the KV cache can never hold (RESOURCE_EXHAUSTED)."""


class Unsupported(MeshError):
    """A task or feature the model does not have (UNIMPLEMENTED)."""


class Unavailable(MeshError):
    """Draining, not loaded yet, or a backend is down (UNAVAILABLE)."""


class Unauthenticated(MeshError):
    """No API key, or a wrong one, on a port that requires one (UNAUTHENTICATED)."""
