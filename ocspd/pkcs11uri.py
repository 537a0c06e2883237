"""PKCS#11 URIs (RFC 7512): which token, which object, where the PIN is.

Parsing only, without a PKCS#11 stack: the configuration validates a
``responder_key = "pkcs11:..."`` once at load time; ocspd/hsm.py opens it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes

# RFC 7512 §2.3: the path attributes ocspd understands; the library-* and slot-*
# ones select a module or slot and are accepted for the same token.
_PATH_ATTRIBUTES = frozenset(
    {
        "token", "manufacturer", "serial", "model", "object", "id", "type",
        "library-manufacturer", "library-description", "library-version", "slot-description",
        "slot-manufacturer", "slot-id",
    }
)  # fmt: skip
_QUERY_ATTRIBUTES = frozenset({"pin-source", "pin-value", "module-path", "module-name"})
_TYPES = ("private", "cert")


class Pkcs11UriError(ValueError):
    """What is wrong with a PKCS#11 URI, in one line (without any PIN)."""


@dataclass(frozen=True, slots=True)
class Pkcs11Uri:
    """A parsed ``pkcs11:`` URI naming one object on one token."""

    text: str  # as written (never carries a PIN: pin-value is refused)
    token: str | None = None
    serial: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    object: str | None = None  # CKA_LABEL
    id: bytes | None = None  # CKA_ID
    type: str | None = None  # "private" or "cert"
    pin_source: str | None = None
    module_path: str | None = None

    def __str__(self) -> str:
        return self.text

    @property
    def token_selector(self) -> tuple[str | None, str | None, str | None, str | None]:
        """What picks the token: (label, serial, manufacturer, model)."""
        return (self.token, self.serial, self.manufacturer, self.model)

    def describe_object(self) -> str:
        """The object, for messages: ``object=responder;id=%01``."""
        parts = []
        if self.object is not None:
            parts.append(f"object={self.object}")
        if self.id is not None:
            parts.append("id=" + "".join(f"%{b:02x}" for b in self.id))
        return ";".join(parts) or "(any object)"


def is_pkcs11_uri(value: str) -> bool:
    return value.lstrip()[:7].lower() == "pkcs11:"


def _value(raw: str, what: str) -> bytes:
    if re.search(r"%(?![0-9A-Fa-f]{2})", raw):
        raise Pkcs11UriError(f"bad percent-encoding in {what}")
    return unquote_to_bytes(raw)


def parse(text: str) -> Pkcs11Uri:
    """Parse a PKCS#11 URI; Pkcs11UriError names what is wrong (never the PIN)."""
    if not is_pkcs11_uri(text):
        raise Pkcs11UriError("not a pkcs11: URI")
    text = text.strip()
    path, _, query = text[7:].partition("?")
    fields: dict[str, str | bytes] = {}
    for part, known, kind in ((path, _PATH_ATTRIBUTES, "path"), (query, _QUERY_ATTRIBUTES, "query")):
        separator = ";" if kind == "path" else "&"
        for item in part.split(separator) if part else ():
            name, equals, raw = item.partition("=")
            name = name.lower()
            if not equals:  # a query item is not echoed: it could be a PIN typed there
                raise Pkcs11UriError(
                    f"attribute {name!r} without a value" if kind == "path" else "a query item without ="
                )
            if name not in known:
                if name.startswith("x-"):
                    continue  # RFC 7512 §2.3: vendor attributes; ignored
                raise Pkcs11UriError(f"unknown {kind} attribute {name!r}")
            if name in fields:
                raise Pkcs11UriError(f"attribute {name!r} given twice")
            if name == "pin-value":
                raise Pkcs11UriError(
                    "pin-value puts the PIN in the configuration: use pin-source=file:/path "
                    "(or pkcs11_pin_file), a file only the service reads"
                )
            value = _value(raw, name)
            if name == "id":
                fields[name] = value
            else:
                try:
                    fields[name] = value.decode()
                except UnicodeDecodeError:
                    raise Pkcs11UriError(f"attribute {name!r} is not UTF-8") from None
    object_type = fields.get("type")
    if object_type is not None and object_type not in _TYPES:
        raise Pkcs11UriError(f"type={object_type!s}: ocspd reads type=private (a key) or type=cert")
    if "object" not in fields and "id" not in fields:
        raise Pkcs11UriError("names no object: add object=<label> or id=<hex>")
    pin_source = fields.get("pin-source")
    if isinstance(pin_source, str) and pin_source.startswith("file:"):
        pin_source = pin_source[5:]  # percent-decoded with the rest already
        if pin_source.startswith("//"):  # file://host/path: only this host
            host, slash, rest = pin_source[2:].partition("/")
            if host not in ("", "localhost"):
                raise Pkcs11UriError(f"pin-source=file://{host}/...: only a local file (file:/path)")
            pin_source = slash + rest
    if isinstance(pin_source, str) and pin_source.startswith("|"):
        raise Pkcs11UriError("pin-source=|command is not supported: use a file")

    def text_field(name: str) -> str | None:
        value = fields.get(name)
        assert value is None or isinstance(value, str)
        return value

    ident = fields.get("id")
    assert ident is None or isinstance(ident, bytes)
    return Pkcs11Uri(
        text,
        token=text_field("token"),
        serial=text_field("serial"),
        manufacturer=text_field("manufacturer"),
        model=text_field("model"),
        object=text_field("object"),
        id=ident,
        type=text_field("type"),
        pin_source=pin_source if isinstance(pin_source, str) else None,
        module_path=text_field("module-path"),
    )


def resolve_pin_source(uri: Pkcs11Uri, base: Path) -> Pkcs11Uri:
    """The URI with a relative pin-source made absolute against the config's directory."""
    if uri.pin_source is None or Path(uri.pin_source).is_absolute():
        return uri
    return dataclasses.replace(uri, pin_source=str(base / uri.pin_source))
