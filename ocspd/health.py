"""Readiness: can this process answer OCSP requests correctly right now?

Keys are loaded before anything listens, so what remains to check is the
status sources: every index file loaded, the database reachable. A replica
whose LISTEN connection is down still answers correctly (from PostgreSQL,
without its memory tier), so it is ready but *degraded*; so is one whose
read_dsn is out of the read set (its reads go to the primary), and so is
one whose PKCS#11 token is down (stored answers are served, misses are
tryLater, until the token is reopened).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ocspd.crlsource import CrlState, describe
from ocspd.exceptions import OcspdError

if TYPE_CHECKING:  # the web layer imports Readiness without the store's driver
    from ocspd.hsm import Token
    from ocspd.index import IndexFile
    from ocspd.store import Listener, Store


@dataclass(frozen=True, slots=True)
class Readiness:
    """The verdict and one line per check, for /readyz and the supervisor."""

    ready: bool
    degraded: bool
    checks: list[str] = field(default_factory=list)

    def text(self) -> str:
        head = "not ready" if not self.ready else "degraded" if self.degraded else "ready"
        return "\n".join([head, *self.checks]) + "\n"


async def readiness(
    index_files: dict[str, IndexFile],
    store: Store | None,
    listener: Listener | None,
    crls: Mapping[str, CrlState] | None = None,
    tokens: Sequence[Token] = (),
) -> Readiness:
    """Check the status sources and PKCS#11 tokens of one OCSP app."""
    ready, degraded, checks = True, False, ["keys: loaded"]
    for token in tokens:
        # Stored answers are still served while a token is down; misses are tryLater.
        if token.up:
            checks.append(f"token {token.name}: up ({token.size} sessions)")
        else:
            degraded = True
            checks.append(f"token {token.name}: down ({token.failure}); misses are tryLater until it is reopened")
    now = time.time()
    for state in (crls or {}).values():
        # Without a CRL in force nothing can be answered; one past its nextUpdate or
        # failing to renew still answers (or gives tryLater), but needs an operator.
        ready = ready and state.base is not None
        degraded = degraded or bool(state.last_error) or state.stale(now)
        checks.append(describe(state, now))
    for issuer_id, index in index_files.items():
        if index.loaded:
            checks.append(f"index {issuer_id}: loaded ({len(index)} certificates)")
        else:
            ready = False
            checks.append(f"index {issuer_id}: not loaded ({index.path})")
    if store is not None:
        try:
            await store.ping()
            checks.append("database: reachable")
        except OcspdError as exc:
            ready = False
            checks.append(f"database: {exc}")
    if store is not None and store.read_target is not None:
        # Reads go to the primary meanwhile: correct, but not the topology asked for.
        degraded = degraded or not store.read_target.in_use
        checks.append(store.read_target.describe())
    if listener is not None:
        if listener.connected:
            checks.append("listener: connected")
        else:
            degraded = True
            checks.append("listener: down (answers come from PostgreSQL; memory tier off)")
    return Readiness(ready, degraded, checks)
