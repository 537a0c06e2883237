"""The embedded status source: an OpenSSL CA database file (``index.txt``).

``openssl ca`` and easy-rsa keep one line per certificate, six TAB-separated
fields::

    flag  expiry  revocation  serial  file  subject
    V     270101000000Z              1000    unknown  /CN=leaf1
    R     270101000000Z  260102030405Z,keyCompromise  1001  unknown  /CN=leaf2

How lines map to statuses:

- ``V`` (valid) and ``E`` (expired) are :attr:`Status.GOOD`: the certificate
  was issued and is not revoked. Status does not depend on the expiry time,
  which is only checked for its shape (``YYMMDDHHMMSSZ`` or
  ``YYYYMMDDHHMMSSZ``) and never converted.
- ``R`` is :attr:`Status.REVOKED` with ``revoked_at`` (aware UTC) and the
  reason. OpenSSL's reason names are matched without regard to case, as
  ``openssl ca`` does. ``holdInstruction`` (followed by ``,OID``) means
  certificateHold, ``keyTime`` (followed by ``,time``) means keyCompromise and
  ``CAkeyTime`` (followed by ``,time``) means cACompromise; the OID and the
  compromise time are checked but not kept. A missing reason and
  ``unspecified`` both give ``reason=None``: RFC 5280 §5.3.1 says the reason
  code SHOULD be absent rather than unspecified, and the CA/Browser Forum
  rules say it MUST. ``removeFromCRL`` is refused, as ``openssl ca`` does.
- A serial listed more than once: the last line wins.
- A malformed line is logged (path and line number) and skipped, never
  fatal. If its serial can still be read, earlier lines for that serial are
  dropped too, so a broken revocation line cannot leave an older "good" in
  force: the serial becomes unlisted (unknown), never good.
- Lines need all six fields like ``openssl ca`` writes them. This also means
  a line cut short by a non-atomic writer cannot give a truncated serial.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography import x509

from ocspd.exceptions import SourceUnavailable
from ocspd.logs import event
from ocspd.status import HOLD, REASONS, CertStatus, Status, served_reason

__all__ = ["IndexFile"]

_UTC = dt.UTC
_GOOD = CertStatus(Status.GOOD)
_MAX_LINE_WARNINGS = 20  # per load; after that, only a count

# OpenSSL's crl_reasons (apps/ca.c), in lower case -> (reason, needs an argument):
# the OpenSSL names of the one reason table (removeFromCRL is no revocation
# reason, so a line with it is malformed), and its three forms with an argument.
_REASONS: dict[str, tuple[x509.ReasonFlags | None, bool]] = {
    r.openssl.lower(): (served_reason(r.flag), False) for r in REASONS if r.openssl and r.revocation
}
_REASONS.update({r.openssl_with_argument.lower(): (r.flag, True) for r in REASONS if r.openssl_with_argument})

_StatKey = tuple[int, int, int]


class _BadLine(ValueError):
    """One line of the file cannot be used."""


def _is_time(s: str) -> bool:
    """Cheap shape check of an ASN.1 UTCTime/GeneralizedTime string."""
    n = len(s)
    return (n == 13 or n == 15) and s[-1] == "Z" and s.isascii() and s[:-1].isdigit()


def _parse_time(s: str) -> dt.datetime:
    """Parse ``YYMMDDHHMMSSZ`` (RFC 5280 two-digit year) or ``YYYYMMDDHHMMSSZ``."""
    if not _is_time(s):
        raise _BadLine(f"bad time {s!r}")
    if len(s) == 13:
        yy = int(s[:2])
        year = 1900 + yy if yy >= 50 else 2000 + yy
        rest = s[2:12]
    else:
        year = int(s[:4])
        rest = s[4:14]
    try:
        return dt.datetime(
            year,
            int(rest[0:2]),
            int(rest[2:4]),
            int(rest[4:6]),
            int(rest[6:8]),
            int(rest[8:10]),
            tzinfo=_UTC,
        )
    except ValueError:
        raise _BadLine(f"bad time {s!r}") from None


@functools.lru_cache(maxsize=4096)
def _expiry(text: str) -> dt.datetime:
    """An expiry field's time (many certificates of a batch share one)."""
    return _parse_time(text)


@functools.lru_cache(maxsize=4096)
def _revoked(field: str) -> CertStatus:
    """The status (version 0) of an ``R`` line's revocation field ``time[,reason[,arg]]``."""
    parts = field.split(",")
    if len(parts) > 3:
        raise _BadLine(f"bad revocation field {field!r}")
    revoked_at = _parse_time(parts[0])
    reason: x509.ReasonFlags | None = None
    if len(parts) >= 2 and parts[1]:
        try:
            reason, needs_arg = _REASONS[parts[1].lower()]
        except KeyError:
            raise _BadLine(f"unknown revocation reason {parts[1]!r}") from None
        if needs_arg != (len(parts) == 3) or (needs_arg and not parts[2]):
            raise _BadLine(f"bad argument for revocation reason {parts[1]!r}")
        if needs_arg and reason is not HOLD.flag:  # holdInstruction's argument is an OID
            _parse_time(parts[2])
    elif len(parts) == 3:
        raise _BadLine(f"bad revocation field {field!r}")
    return CertStatus(Status.REVOKED, revoked_at=revoked_at, reason=reason)


def _parse_serial(s: str) -> int:
    if not s or not s.isascii() or s[0] in "+-":
        raise _BadLine(f"bad serial {s!r}")
    try:
        return int(s, 16)
    except ValueError:
        raise _BadLine(f"bad serial {s!r}") from None


class IndexFile:
    """Status of every serial in one index.txt, reloaded when the file changes.

    Lookups read one dict that a reload replaces in a single assignment, so
    they never see a half-loaded file and need no lock. ``load()`` may run in
    a worker thread (``watch()`` does this); concurrent loads are serialised.
    """

    def __init__(self, path: Path, *, log: logging.Logger | None = None, keep_expiry: bool = False) -> None:
        """Remember ``path``; nothing is read until :meth:`load`.

        ``keep_expiry`` keeps each line's expiry time for :meth:`not_after`
        (an import wants it; serving does not, and skips the work).
        """
        self.path = Path(path)
        self._log = log if log is not None else logging.getLogger(__name__)
        self._entries: dict[int, CertStatus] = {}
        self._expiries: dict[int, dt.datetime] | None = {} if keep_expiry else None
        self._version = 0
        self._stat: _StatKey | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        """Counter bumped by every load that changed at least one serial.

        Each entry's ``CertStatus.version`` is the value this counter took on
        the load where that serial last changed.
        """
        return self._version

    @property
    def loaded(self) -> bool:
        """Whether a load has succeeded at least once."""
        return self._stat is not None

    def __len__(self) -> int:
        """Number of serials the file lists."""
        return len(self._entries)

    def items(self) -> list[tuple[int, CertStatus]]:
        """Every (serial, status) of the last load (e.g. to import them elsewhere)."""
        return list(self._entries.items())

    def lookup(self, serial: int) -> CertStatus | None:
        """What the file says about ``serial``; ``None`` when it does not list it."""
        return self._entries.get(serial)

    def not_after(self, serial: int) -> dt.datetime | None:
        """The expiry time the file gives ``serial`` (None unless ``keep_expiry`` or not listed)."""
        return self._expiries.get(serial) if self._expiries is not None else None

    def changed_on_disk(self) -> bool:
        """Whether the file differs from the last load (mtime, size or inode).

        True before the first load, and while the file cannot be stat'ed.
        An atomic replacement (``index.txt.new`` renamed over ``index.txt``)
        always changes the inode.
        """
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_mtime_ns, st.st_size, st.st_ino) != self._stat

    def load(self) -> set[int]:
        """(Re)read the file; return the serials whose status changed.

        Changed means added, removed, or with a different status, revocation
        time or reason; the first load returns every serial. The new table
        replaces the old one only once it is complete.

        Raises:
            SourceUnavailable: the file cannot be opened or read; the data of
                the previous load is kept.
        """
        with self._lock:
            started = time.perf_counter()
            try:
                with open(self.path, encoding="latin-1", newline="") as f:
                    # stat before reading: a write during the read is seen next time
                    st = os.fstat(f.fileno())
                    parsed, expiries, bad = self._parse(f)
            except OSError as e:
                raise SourceUnavailable(f"cannot read index file {self.path}: {e.strerror or e}") from e
            changed = self._swap(parsed)
            if expiries is not None:
                self._expiries = expiries
            self._stat = (st.st_mtime_ns, st.st_size, st.st_ino)
            event(
                self._log,
                "index_loaded",
                path=self.path,
                serials=len(parsed),
                changed=len(changed),
                malformed=bad,
                version=self._version,
                seconds=round(time.perf_counter() - started, 3),
            )
            return changed

    def _parse(self, lines: Iterable[str]) -> tuple[dict[int, CertStatus], dict[int, dt.datetime] | None, int]:
        """Parse lines into serial -> status (version 0) and, if kept, serial -> expiry; count bad lines."""
        parsed: dict[int, CertStatus] = {}
        expiries: dict[int, dt.datetime] | None = {} if self._expiries is not None else None
        expiry_of = _expiry
        good = _GOOD
        revoked = _revoked
        is_time = _is_time
        bad = 0
        for lineno, raw in enumerate(lines, 1):
            line = raw.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("\t", 5)
            serial: int | None = None
            try:
                if len(fields) != 6:
                    raise _BadLine(f"{len(fields)} fields, expected 6")
                serial = _parse_serial(fields[3])
                flag = fields[0]
                if not is_time(fields[1]):
                    raise _BadLine(f"bad expiry time {fields[1]!r}")
                if flag == "V" or flag == "E":
                    if fields[2]:
                        raise _BadLine(f"revocation field on a {flag} line")
                    parsed[serial] = good
                elif flag == "R":
                    parsed[serial] = revoked(fields[2])
                else:
                    raise _BadLine(f"unknown status flag {flag!r}")
                if expiries is not None:
                    expiries[serial] = expiry_of(fields[1])
            except _BadLine as e:
                bad += 1
                if serial is not None:
                    parsed.pop(serial, None)  # never leave an older line in force
                    if expiries is not None:
                        expiries.pop(serial, None)
                if bad <= _MAX_LINE_WARNINGS:
                    event(self._log, "index_line_skipped", logging.WARNING, path=self.path, line=lineno, error=e)
        if bad > _MAX_LINE_WARNINGS:
            event(
                self._log, "index_lines_skipped", logging.WARNING, path=self.path, count=bad, logged=_MAX_LINE_WARNINGS
            )
        return parsed, expiries, bad

    def _swap(self, parsed: dict[int, CertStatus]) -> set[int]:
        """Give changed entries the next version, keep the rest, install ``parsed``."""
        old = self._entries
        version = self._version + 1
        good = CertStatus(Status.GOOD, version=version)
        changed: set[int] = set()
        kept = 0  # serials of the old table still listed
        # Only values are replaced, never keys: safe while iterating.
        for serial, new in parsed.items():
            prev = old.get(serial)
            if prev is not None:
                kept += 1
            if (
                prev is not None
                and prev.status is new.status
                and prev.revoked_at == new.revoked_at
                and prev.reason is new.reason
            ):
                parsed[serial] = prev
            else:
                changed.add(serial)
                parsed[serial] = (
                    good if new.status is Status.GOOD else CertStatus(new.status, new.revoked_at, new.reason, version)
                )
        if kept != len(old):  # some serials are no longer listed
            changed.update(old.keys() - parsed.keys())
        if changed:
            self._version = version
        self._entries = parsed  # one assignment: lookups see old or new, never a mix
        return changed

    async def watch(
        self,
        on_change: Callable[[set[int]], None],
        *,
        interval: float = 0.5,
        on_bug: Callable[[], None] | None = None,
    ) -> None:
        """Reload whenever the file changes, until cancelled.

        Every ``interval`` seconds, if :meth:`changed_on_disk`, the file is
        reloaded in the default executor (a large file does not block the
        loop) and ``on_change(changed_serials)`` is called on the loop when
        the set is not empty. A reload error (file briefly missing during a
        rename, unreadable) is logged once and retried on the next tick; the
        previous data stays in use. Any other exception (a bug, ours or
        ``on_change``'s) is logged, ``on_bug()`` called (a metric), and the watch goes on.
        Only :class:`asyncio.CancelledError` leaves this coroutine; a reload
        already running in its thread still completes and installs its data.
        """
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            changed: set[int] = set()
            try:
                if self.changed_on_disk():
                    changed = await loop.run_in_executor(None, self.load)
                    if failing:
                        failing = False
                        event(self._log, "index_reload_recovered", path=self.path)
            except SourceUnavailable as e:
                level = logging.DEBUG if failing else logging.WARNING
                event(self._log, "index_reload_failed", level, path=self.path, error=e)
                failing = True
            except Exception:  # a bug: keep the previous data, retry next tick
                self._log.exception("index reload error path=%s", self.path)
                if on_bug is not None:
                    on_bug()
            if changed:
                try:
                    on_change(changed)
                except Exception:  # the caller's bug must not stop the watch
                    self._log.exception("index on_change callback failed path=%s", self.path)
                    if on_bug is not None:
                        on_bug()
            await asyncio.sleep(interval)
