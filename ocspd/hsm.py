"""Responder keys in a PKCS#11 token (an HSM; SoftHSM2 in the tests), issue 16.

Part of the signer's room: ocspd/signer.py signs with a ``TokenKey``, and
nothing else touches the keys (ocspd/tokens.py keeps the open tokens). One
``Token`` per token this process uses, shared by the issuers whose keys it
holds: PKCS#11 logs an application in once per token, so the token's first
session logs in with the PIN and the others share that login. Each session
is used by one thread at a time, in a pool of as many threads as sessions
(``[pkcs11] sessions``), so that signatures never block the event loop; the
module itself is called by one thread at a time (``_module_lock``).

A token that fails (removed, HSM restarted, its files gone, a call that
does not return within ``[pkcs11] timeout``) is marked down: signatures
raise KeyUnavailable (tryLater) at once, and ``Tokens.watch`` reopens it
with backoff. python-pkcs11 is imported only when a key is in a token: the
default install needs no PKCS#11 stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ocspd import der
from ocspd.exceptions import KeyUnavailable, OcspdError
from ocspd.logs import event
from ocspd.pkcs11uri import Pkcs11Uri

log = logging.getLogger("ocspd.hsm")


class HsmError(OcspdError):
    """A token, PIN or object that cannot be used: one line, never the PIN."""


@dataclass(frozen=True, slots=True)
class TokenId:
    """Which token of which module, and where its PIN is."""

    module: str
    token: str | None
    serial: str | None
    manufacturer: str | None
    model: str | None
    pin_file: str | None

    def describe(self) -> str:
        names = ("token", "serial", "manufacturer", "model")
        picked = [f"{k}={v}" for k, v in zip(names, self._selector(), strict=True) if v]
        return ";".join(picked) or "the module's only token"

    def _selector(self) -> tuple[str | None, ...]:
        return (self.token, self.serial, self.manufacturer, self.model)


@dataclass(frozen=True, slots=True)
class KeyRef:
    """One loaded token key: a new one at each (re)load, so that a reload finds its object again
    (an object replaced under the same label has a new handle)."""

    serial: int
    label: str | None
    id: bytes | None


_key_serials = itertools.count(1)


@dataclass(slots=True)
class _Session:
    handle: Any
    generation: int  # the open() it came from: a session of an earlier one is not given out again
    keys: dict[KeyRef, Any] = field(default_factory=dict)  # the key objects found in this session


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise HsmError("PKCS#11 keys need python-pkcs11: pip install 'ocspd[pkcs11]'") from None
    return pkcs11


def _cause(exc: BaseException) -> str:
    """A PKCS#11 error in words: python-pkcs11's exceptions often carry no message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_pin(path: str | None, describe: str) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes().rstrip(b"\r\n").decode()
    except OSError as exc:
        raise HsmError(f"cannot read the PIN of {describe} from {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise HsmError(f"the PIN file {path} is not UTF-8 text") from None


# python-pkcs11 initialises a module without CKF_OS_LOCKING_OK (C_Initialize(NULL)): the
# module may then assume that no two threads call it at once, yet the binding releases
# the GIL in its calls (SoftHSM2 crashed, two threads signing at once). So each module
# is called by one thread at a time in this process, whatever token or session: its
# signing threads wait for each other here, never the event loop. Process-wide, as the
# module's own state is (python-pkcs11 also loads a module once per process).
_MODULE_LOCKS: dict[str, threading.RLock] = {}
_MODULE_LOCKS_GUARD = threading.Lock()


def _module_lock(module: str) -> threading.RLock:
    with _MODULE_LOCKS_GUARD:
        return _MODULE_LOCKS.setdefault(module, threading.RLock())


class Token:
    """One open token: its sessions (one logged in), its signing threads, and whether it is up."""

    def __init__(self, ident: TokenId, sessions: int, timeout: float = 5.0) -> None:
        self.ident = ident
        self.name = ident.describe()
        self.size = sessions
        self.timeout = timeout  # a signature (or probe) taking longer marks the token down
        self.up = False
        self.failure = ""  # why it is down
        self.executor = ThreadPoolExecutor(sessions, thread_name_prefix="ocspd-hsm")
        self._lock = threading.Lock()
        self._calls = _module_lock(ident.module)
        self._generation = 0
        self._sessions: list[_Session] = []
        self._idle: queue.SimpleQueue[_Session] = queue.SimpleQueue()
        # One signature per key in use, to probe the token while it is idle (Tokens.retain prunes it).
        self.probes: dict[KeyRef, Callable[[], object]] = {}

    def open(self, reinitialize: bool = False, timeout: float | None = None) -> None:
        """Open (or reopen) the sessions and log in; HsmError says why not (blocking).

        ``reinitialize``: finalize and initialize the module first (C_Finalize, C_Initialize),
        as a module whose token went away may need before it sees it again (SoftHSM2 does):
        every session of the module in this process ends, so only when none is in use.
        """
        pkcs11 = _pkcs11()
        # The module's lock for the calls; self._lock only for the state (``stalled`` takes it
        # on the event loop, which must not wait for the module).
        with self._module(timeout):  # timeout: see _session
            self._close_sessions()
            try:
                lib = pkcs11.lib(self.ident.module)
                if reinitialize:
                    lib.reinitialize()
            except pkcs11.PKCS11Error as exc:
                raise HsmError(f"cannot load PKCS#11 module {self.ident.module}: {_cause(exc)}") from None
            picked = (("token_label", self.ident.token), ("token_serial", self.ident.serial))
            selector = {name: value for name, value in picked if value is not None}
            try:
                if self.ident.manufacturer is None and self.ident.model is None:
                    token = lib.get_token(**selector)
                else:
                    token = self._match(lib, selector)
            except pkcs11.NoSuchToken:
                raise HsmError(f"no token matching {self.name} in {self.ident.module}") from None
            except pkcs11.MultipleTokensReturned:
                raise HsmError(f"several tokens match {self.name}: add token= or serial= to the URI") from None
            except pkcs11.PKCS11Error as exc:
                raise HsmError(f"cannot list the tokens of {self.ident.module}: {_cause(exc)}") from None
            pin = read_pin(self.ident.pin_file, self.name)
            opened: list[_Session] = []
            generation = self._generation + 1
            try:
                opened.append(_Session(self._login(pkcs11, token, pin), generation))
                opened.extend(_Session(token.open(), generation) for _ in range(self.size - 1))
            except pkcs11.PinIncorrect:
                raise HsmError(f"wrong PIN for token {self.name} (from {self.ident.pin_file})") from None
            except pkcs11.PinLocked:
                raise HsmError(f"the PIN of token {self.name} is locked") from None
            except pkcs11.PKCS11Error as exc:
                raise HsmError(f"cannot open a session on token {self.name}: {_cause(exc)}") from None
            finally:
                if len(opened) < self.size:
                    self._close(opened)
            self._sessions = opened
            # The same queue: threads waiting for a session of the old ones get a new one.
            with contextlib.suppress(queue.Empty):
                while True:
                    self._idle.get_nowait()
            with self._lock:
                self._generation = generation
                self.up, self.failure = True, ""
            for session in opened:
                self._idle.put(session)

    @staticmethod
    def _login(pkcs11: Any, token: Any, pin: str | None) -> Any:
        if pin is None:
            return token.open()  # a token without login (or a protected authentication path)
        try:
            return token.open(user_pin=pin)
        except pkcs11.UserAlreadyLoggedIn:
            # PKCS#11 logs in per application: sessions left over from before the
            # failure still hold the login, and the new ones share it.
            return token.open()

    def _match(self, lib: Any, selector: dict[str, str]) -> Any:
        found = [
            t
            for t in lib.get_tokens(**selector)
            if self.ident.manufacturer in (None, t.manufacturer_id) and self.ident.model in (None, t.model)
        ]
        if not found:
            raise _pkcs11().NoSuchToken(self.name)
        if len(found) > 1:
            raise _pkcs11().MultipleTokensReturned(self.name)
        return found[0]

    def _close_sessions(self) -> None:
        self._close(self._sessions)
        self._sessions = []

    @staticmethod
    def _close(sessions: list[_Session]) -> None:
        # The logged-in one last: closing it logs every session out.
        for session in reversed(sessions):
            with contextlib.suppress(Exception):
                session.handle.close()

    def close(self, cancel: bool = True) -> None:
        """Close the sessions (blocking); ``cancel=False`` lets the signatures queued finish first."""
        self.executor.shutdown(wait=True, cancel_futures=cancel)
        with self._calls:
            with self._lock:
                self.up = False
            self._close_sessions()

    def object_value(self, uri: Pkcs11Uri, object_class: str, attribute: Any = None) -> Any:
        """Find an object (blocking: at start-up, on reload), in a free session: the object,
        or the value of one of its attributes."""
        with self._session(self.timeout) as session:
            found = self._find(session, uri.object, uri.id, object_class, uri)
            return found if attribute is None else found[attribute]

    def check_key_type(self, uri: Pkcs11Uri, public_key: Any) -> None:
        """HsmError unless the private key ``uri`` names is there and of the type of ``public_key``
        (its certificate's): checked by CKA_KEY_TYPE before any signature, as a token may answer
        a key of another type with CKR_GENERAL_ERROR, which would mark it down."""
        pkcs11 = _pkcs11()
        value = self.object_value(uri, "PRIVATE_KEY", pkcs11.Attribute.KEY_TYPE)
        types = ((rsa.RSAPublicKey, "RSA", "RSA"), (ec.EllipticCurvePublicKey, "EC", "EC"),
                 (ed25519.Ed25519PublicKey, "EC_EDWARDS", "Ed25519"))  # fmt: skip
        found = next((name for _, ckk, name in types if getattr(pkcs11.KeyType, ckk) == value), f"CKK {int(value):#x}")
        wanted = next((name for kind, _, name in types if isinstance(public_key, kind)), type(public_key).__name__)
        if found != wanted:
            raise HsmError(f"the token key is {found}, the certificate's key {wanted}: not a pair")

    def certificate_der(self, uri: Pkcs11Uri) -> bytes:
        """The DER of the certificate object ``uri`` names (blocking)."""
        return bytes(self.object_value(uri, "CERTIFICATE", _pkcs11().Attribute.VALUE))

    @contextlib.contextmanager
    def _module(self, timeout: float | None = None) -> Iterator[None]:
        """The module to this thread (``_module_lock``); HsmError past ``timeout`` (None: wait)."""
        if not self._calls.acquire(timeout=-1 if timeout is None else timeout):
            raise HsmError(f"token {self.name}: its module has not answered for {timeout:g}s")
        try:
            yield
        finally:
            self._calls.release()

    @contextlib.contextmanager
    def _session(self, timeout: float | None = None) -> Iterator[_Session]:
        """A free session, for one thread at a time, and the module to itself while it is used.

        ``timeout``: for the callers on the event loop (loading keys at start-up and on SIGHUP),
        which must not wait for a hung module: HsmError past it. Signatures wait (in their
        threads; ``TokenKey.sign_async`` times out the wait).
        """
        try:
            session = self._idle.get(timeout=timeout)
        except queue.Empty:
            raise HsmError(f"token {self.name}: no free session within {timeout:g}s") from None
        try:
            with self._module(timeout):
                yield session
        finally:
            if session.generation == self._generation:
                self._idle.put(session)

    def _find(
        self, session: _Session, label: str | None, ident: bytes | None, object_class: str, uri: Pkcs11Uri | None
    ) -> Any:
        pkcs11 = _pkcs11()
        attrs: dict[Any, Any] = {pkcs11.Attribute.CLASS: getattr(pkcs11.ObjectClass, object_class)}
        if label is not None:
            attrs[pkcs11.Attribute.LABEL] = label
        if ident is not None:
            attrs[pkcs11.Attribute.ID] = ident
        found = list(session.handle.get_objects(attrs))
        where = uri.describe_object() if uri is not None else f"object={label}"
        what = "private key" if object_class == "PRIVATE_KEY" else "certificate"
        if not found:
            raise HsmError(f"no {what} {where} on token {self.name}")
        if len(found) > 1:
            raise HsmError(f"{len(found)} {what}s match {where} on token {self.name}: add id= or a unique object=")
        return found[0]

    def sign(self, ref: KeyRef, mechanism: Any, data: bytes) -> bytes:
        """Sign in one free session (blocking: runs in ``executor``); KeyUnavailable while down."""
        if not self.up:
            raise self.unavailable()
        pkcs11 = _pkcs11()
        with self._session() as session:
            if not self.up:  # went down while this call waited for a session
                raise self.unavailable()
            try:
                key = session.keys.get(ref)
                if key is None:
                    if len(session.keys) > len(self.probes):  # keys of before a reload
                        session.keys = {r: k for r, k in session.keys.items() if r in self.probes}
                    key = session.keys[ref] = self._find(session, ref.label, ref.id, "PRIVATE_KEY", None)
                return bytes(key.sign(data, mechanism=mechanism))
            except (pkcs11.PKCS11Error, HsmError) as exc:
                self._failed(session.generation, _cause(exc))
                raise KeyUnavailable(f"token {self.name} failed: {_cause(exc)}") from None

    def unavailable(self) -> KeyUnavailable:
        """What a signature raises while the token is down."""
        return KeyUnavailable(f"token {self.name} unavailable: {self.failure}")

    def stalled(self) -> None:
        """A call into the token has not returned within ``timeout``: down (it cannot be cancelled;
        signatures are tryLater at once instead of queueing behind it, and ``watch`` reopens the
        token once the module answers again)."""
        self._failed(self._generation, f"no answer within {self.timeout:g}s")

    def _failed(self, generation: int, cause: str) -> None:
        with self._lock:
            if generation != self._generation or not self.up:
                return  # already reopened (or marked down) since this session was taken
            self.up, self.failure = False, cause
        event(log, "token_down", logging.ERROR, token=self.name, cause=cause)


class TokenKey:
    """A private key in a token, as the signer sees it: ``sign(data)`` blocks, ``sign_async`` does not."""

    def __init__(self, token: Token, uri: Pkcs11Uri, public_key: Any) -> None:
        pkcs11 = _pkcs11()
        self.token = token
        self.uri = uri
        self._public_key = public_key
        self._ref = KeyRef(next(_key_serials), uri.object, uri.id)
        self._prepare: Callable[[bytes], bytes] = lambda data: data
        self._finish: Callable[[bytes], bytes] = lambda signature: signature
        if isinstance(public_key, rsa.RSAPublicKey):
            self._mechanism = pkcs11.Mechanism.SHA256_RSA_PKCS
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            # Hashed here: CKM_ECDSA over the digest is what every token has
            # (SoftHSM2 2.6 has no CKM_ECDSA_SHA256). PKCS#11 gives r || s; X.509 wants DER.
            algorithm = ecdsa_hash(public_key.curve)
            self._mechanism = pkcs11.Mechanism.ECDSA
            self._prepare = lambda data: _digest(algorithm, data)
            self._finish = _ecdsa_der
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            self._mechanism = pkcs11.Mechanism.EDDSA
        else:
            raise HsmError(f"unsupported key type {type(public_key).__name__} (use RSA, P-256, P-384, Ed25519)")
        token.probes[self._ref] = lambda: self.sign(b"ocspd probe")

    @property
    def ref(self) -> KeyRef:
        return self._ref

    def public_key(self) -> Any:
        """The certificate's public key (the token's key is checked against it at start-up)."""
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        return self._finish(self.token.sign(self._ref, self._mechanism, self._prepare(data)))

    async def sign_async(self, data: bytes) -> bytes:
        """``sign`` in one of the token's threads; KeyUnavailable while the token is down, or when
        the signature takes longer than the token's timeout (the token is then down)."""
        token = self.token
        if not token.up:
            raise token.unavailable()
        signing = asyncio.get_running_loop().run_in_executor(token.executor, self.sign, data)
        try:
            return await asyncio.wait_for(signing, token.timeout)
        except TimeoutError:
            token.stalled()
            raise KeyUnavailable(f"token {token.name}: no signature within {token.timeout:g}s") from None


def ecdsa_hash(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    """The hash ocspd signs with on an ECDSA curve: SHA-384 on P-384, SHA-256 on P-256."""
    return hashes.SHA384() if curve.key_size > 256 else hashes.SHA256()


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    digest = hashes.Hash(algorithm)
    digest.update(data)
    return digest.finalize()


def _ecdsa_der(raw: bytes) -> bytes:
    half = len(raw) // 2
    return der.sequence(der.integer(int.from_bytes(raw[:half])), der.integer(int.from_bytes(raw[half:])))
