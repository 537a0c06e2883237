"""The one exception hierarchy of ocspd.

The HTTP layer maps these to OCSP response statuses in one place
(``ocspd.http``); nothing else decides what a client sees.
"""

from __future__ import annotations


class OcspdError(Exception):
    """Base class of every error ocspd raises on purpose."""


class ConfigError(OcspdError):
    """Bad configuration: one line naming the file and the key.

    ``str(err)`` is the complete message the CLI prints, e.g.
    ``/etc/ocspd/ocspd.toml: responses.validity: bad duration 'x' (use 90s, 24h, 7d)``.
    """

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None) -> None:
        self.message = message
        self.key = key
        self.file = file
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [p for p in (self.file, self.key) if p]
        parts.append(self.message)
        return ": ".join(parts)


class RequestError(OcspdError):
    """A request that is answered with an unsuccessful OCSP response status."""


class MalformedRequest(RequestError):
    """The request does not parse, or breaks the protocol (OCSP malformedRequest)."""


class Unauthorized(RequestError):
    """This responder does not answer for that issuer/serial (OCSP unauthorized)."""


class TryLater(RequestError):
    """The status cannot be known right now (OCSP tryLater): store down, overloaded."""


class SourceUnavailable(TryLater):
    """The status source (database, index file) cannot be read at the moment."""


class Overloaded(TryLater):
    """Too many live signatures in flight."""


class StoreError(OcspdError):
    """The database refused an operation (constraint, bad data): not an outage."""
