"""The one exception hierarchy of ocspd.

The HTTP layer maps these to OCSP response statuses in one place
(``ocspd.web.handlers``); nothing else decides what a client sees.
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


class SchemaOutdated(SourceUnavailable):
    """The database lacks the schema this ocspd needs: ``ocspd db migrate`` was not run (since an upgrade).

    ``have`` is the highest migration applied (0: none, or no ocspd tables at
    all), ``need`` the highest this code ships. A request meanwhile gets
    tryLater, as for an outage; readiness and start-up say how to fix it.
    """

    def __init__(self, have: int = 0, need: int = 0) -> None:
        self.have, self.need = have, need
        if have == 0:
            super().__init__("database schema missing: run `ocspd db migrate`")
        else:
            super().__init__(f"database schema is at version {have}, this ocspd needs {need}: run `ocspd db migrate`")


class DatabaseBusy(SourceUnavailable):
    """The database did not answer in time (a lock not granted within lock_timeout, the
    operation timeout): asking again at once would only wait as long again."""


class Overloaded(TryLater):
    """Too many live signatures in flight."""


class StoreError(OcspdError):
    """The database refused an operation (constraint, bad data): not an outage."""


class RuleViolation(StoreError):
    """A write the revocation rules refuse (SQLSTATE 23R01, ocspd/sql/migrations/0003): the message says which."""


class KeyUnavailable(TryLater):
    """The responder key cannot sign at the moment (its HSM token is unavailable): answer from the tiers or tryLater."""
