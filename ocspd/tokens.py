"""The PKCS#11 tokens a process has open (ocspd/hsm.py has one token and its keys):
one login per token, shared by the issuers whose keys it holds; reopened with
backoff after a failure, and probed while idle (``watch``); dropped after a
reload when no key uses them any more (``retain``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ocspd.exceptions import KeyUnavailable
from ocspd.hsm import HsmError, KeyRef, Token, TokenId, TokenKey
from ocspd.logs import bug, event
from ocspd.pkcs11uri import Pkcs11Uri

log = logging.getLogger("ocspd.hsm")

# Reopening a failed token: the first attempt at once, then doubling up to this.
REOPEN_FIRST = 0.5
REOPEN_MAX = 30.0


class Tokens:
    """The tokens this process has open, by TokenId: one login per token, shared by its keys."""

    def __init__(self, sessions: int = 2, timeout: float = 5.0) -> None:
        self.sessions = sessions
        self.timeout = timeout
        self._tokens: dict[TokenId, Token] = {}

    def __iter__(self) -> Iterator[Token]:
        return iter(list(self._tokens.values()))

    def token(self, ident: TokenId) -> Token:
        """The open token (opened now if new; blocking); HsmError if it cannot be used."""
        token = self._tokens.get(ident)
        if token is None or not token.up:
            if token is None:
                token = Token(ident, self.sessions, self.timeout)
            try:
                token.open(timeout=self.timeout)
            except BaseException:
                if ident not in self._tokens:
                    token.close()
                raise
            self._tokens[ident] = token
        return token

    def key(self, ident: TokenId, uri: Pkcs11Uri, public_key: Any) -> TokenKey:
        """The key ``uri`` names, to sign for ``public_key``'s certificate (found now; blocking)."""
        token = self.token(ident)
        token.check_key_type(uri, public_key)
        return TokenKey(token, uri, public_key)

    def certificate(self, ident: TokenId, uri: Pkcs11Uri) -> bytes:
        """The DER of the certificate object ``uri`` names."""
        return self.token(ident).certificate_der(uri)

    def retain(self, keys: Iterable[TokenKey]) -> list[Token]:
        """Keep only what these keys (the signers in use, after a reload) need: the probes of
        other keys are dropped, and the tokens of none are returned, for the caller to close
        once their signatures in flight are done (``Token.close``)."""
        live: dict[Token, set[KeyRef]] = {}
        for key in keys:
            live.setdefault(key.token, set()).add(key.ref)
        for token in self._tokens.values():
            refs = live.get(token, set())
            token.probes = {ref: probe for ref, probe in token.probes.items() if ref in refs}
        unused = [ident for ident, token in self._tokens.items() if token not in live]
        return [self._tokens.pop(ident) for ident in unused]

    def close(self) -> None:
        for token in self._tokens.values():
            token.close()
        self._tokens.clear()

    async def watch(self, on_reopen: Callable[[Token, bool], None], probe: float) -> None:
        """Reopen the tokens that failed, with backoff, and probe the others every ``probe`` seconds
        (one signature per key: a token that fails it is marked down). ``on_reopen(token, ok)`` is
        told every attempt to reopen."""
        loop = asyncio.get_running_loop()
        delays: dict[TokenId, float] = {}
        next_try: dict[TokenId, float] = {}
        next_probe = time.monotonic() + probe
        while True:
            now = time.monotonic()
            probing = now >= next_probe
            if probing:
                next_probe = now + probe
            for token in self:
                ident = token.ident
                if token.up:
                    delays.pop(ident, None)
                    next_try.pop(ident, None)
                    if probing:
                        try:
                            await asyncio.wait_for(
                                loop.run_in_executor(token.executor, self._probe, token), token.timeout
                            )
                        except TimeoutError:
                            token.stalled()
                        except Exception:  # a bug: said, and the watch goes on
                            bug(log, "token_probe_crashed", token=token.name)
                    continue
                if now < next_try.get(ident, 0.0):
                    continue
                # The module is started afresh when none of its tokens is up (see Token.open).
                again = delays.get(ident) is not None and not any(t.up for t in self if t.ident.module == ident.module)
                try:
                    await loop.run_in_executor(None, token.open, again)
                except Exception as exc:  # HsmError; anything else is a bug, said, and retried the same way
                    if not isinstance(exc, HsmError):
                        bug(log, "token_reopen_crashed", token=token.name)
                    delay = delays[ident] = min(REOPEN_MAX, delays.get(ident, REOPEN_FIRST / 2) * 2)
                    next_try[ident] = time.monotonic() + delay
                    token.failure = str(exc)
                    on_reopen(token, False)
                    event(log, "token_reopen_failed", logging.WARNING, token=token.name, cause=str(exc), retry=delay)
                else:
                    on_reopen(token, True)
                    event(log, "token_reopened", token=token.name)
            await asyncio.sleep(0.1 if any(not t.up for t in self) else min(probe, 1.0))

    @staticmethod
    def _probe(token: Token) -> None:
        """One signature by each key in use: a failure marks the token down."""
        for probe in list(token.probes.values()):
            if not token.up:
                return
            with contextlib.suppress(KeyUnavailable):
                probe()
