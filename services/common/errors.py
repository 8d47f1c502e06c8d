"""The domain errors every service's core raises: a stable `code` word and a message, no HTTP.

Each kind below means one thing a caller can act on; a service subclasses them for its own
errors (`UnknownRecord(NotFound)`). Which HTTP status a kind becomes is decided once, at each
service's edge (services/common/http_errors.py), never here.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


NOT_READY_RETRY_SECONDS = 2  # a model or an index loads in seconds; asking every 2 s costs nothing


class DomainError(Exception):
    """A failure with a known meaning. `code` is the stable word clients see; `message` says what happened.

    `retry_after`: seconds after which the same call may succeed (rate limits, budgets), else None.
    """

    code = "internal"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details
        self.retry_after = retry_after


class InvalidInput(DomainError):
    """The request is malformed or incomplete: a missing or empty part, too many items."""

    code = "bad_request"


class UnsupportedMediaType(DomainError):
    """The request's content is of a type this call does not take."""

    code = "unsupported_media_type"


class TooLarge(DomainError):
    """The request is larger than this service takes."""

    code = "too_large"


class InvalidValue(DomainError):
    """The request is well-formed but a value in it cannot be used (a vector, a clade)."""

    code = "unprocessable"


class DimensionMismatch(InvalidValue):
    """A vector's length is not the dimension of the model or index it is meant for."""

    code = "dimension_mismatch"


class InvalidVector(InvalidValue):
    """A vector with NaN, infinity or only zeros: it has no direction."""

    code = "invalid_vector"


class Forbidden(DomainError):
    """The request asks for something this service will not do (a blocked address)."""

    code = "forbidden"


class NotFound(DomainError):
    """The thing asked for does not exist here."""

    code = "not_found"


class Expired(DomainError):
    """The thing asked for existed but is no longer held."""

    code = "expired"


class RateLimited(DomainError):
    """Too many calls; `retry_after` says when the next one may go."""

    code = "rate_limited"


class NotSupported(DomainError):
    """This service cannot do that with what it holds (e.g. give back a vector its index does not keep)."""

    code = "not_supported"


class Unavailable(DomainError):
    """The service cannot do this now or as configured."""

    code = "unavailable"


class NotReady(Unavailable):
    """Start-up has not finished: the heavy resources are still loading. Says when to ask again (`retry_after`,
    default NOT_READY_RETRY_SECONDS), so a client backs off instead of retrying at once."""

    code = "not_ready"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("retry_after", NOT_READY_RETRY_SECONDS)
        super().__init__(message, **kwargs)


class DependencyFailed(DomainError):
    """A service this one depends on failed; `service` names it and the message says how."""

    code = "upstream_error"

    def __init__(self, service: str, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.service = service


class DependencyUnavailable(DependencyFailed):
    """A service this one depends on refused the connection or said it is unavailable."""

    code = "upstream_unavailable"


class DependencyTimeout(DependencyFailed):
    """A service this one depends on did not answer in time."""

    code = "upstream_timeout"
