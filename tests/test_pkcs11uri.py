"""Tests of ocspd.pkcs11uri (RFC 7512 URIs) and of keys in a PKCS#11 token in the config (issue 16).

Parsing and validation only: no PKCS#11 module is loaded, so nothing here needs SoftHSM2
(tests/test_hsm.py signs with a real token).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from ocspd.config import Config, IssuerConfig, Pkcs11Config, dump_config, load_config
from ocspd.exceptions import ConfigError
from ocspd.pkcs11uri import Pkcs11Uri, Pkcs11UriError, is_pkcs11_uri, parse, resolve_pin_source

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
KEY_URI = "pkcs11:token=ocspd;object=responder;type=private"
CERT_URI = "pkcs11:token=ocspd;object=responder;type=cert"
PIN = "SECRET-pin-4711"  # distinctive, so that finding it in a message means it leaked


# --- parse: what a good URI names ---


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        pytest.param(
            "pkcs11:token=ocspd;object=responder;id=%01%a2%FF;type=private",
            {"token": "ocspd", "object": "responder", "id": b"\x01\xa2\xff", "type": "private"},
            id="label-id-and-type-private",
        ),
        pytest.param("pkcs11:id=%00", {"id": b"\x00"}, id="id-alone"),
        pytest.param("pkcs11:id=ab", {"id": b"ab"}, id="id-of-unencoded-bytes"),
        pytest.param("pkcs11:object=responder;type=cert", {"object": "responder", "type": "cert"}, id="type-cert"),
        pytest.param(
            "pkcs11:token=My%20Token;object=caf%C3%A9%3Bkey",
            {"token": "My Token", "object": "café;key"},
            id="percent-encoded-utf8-labels",
        ),
        pytest.param(
            "pkcs11:serial=0123abcd;manufacturer=SoftHSM%20project;model=SoftHSM%20v2;object=k",
            {"serial": "0123abcd", "manufacturer": "SoftHSM project", "model": "SoftHSM v2", "object": "k"},
            id="serial-manufacturer-model",
        ),
        pytest.param(
            "pkcs11:library-manufacturer=x;library-description=y;library-version=2.40;"
            "slot-description=s;slot-manufacturer=m;slot-id=0;object=k",
            {"object": "k"},
            id="library-and-slot-attributes-accepted",
        ),
        pytest.param(
            "pkcs11:object=k?module-path=/usr/lib/softhsm/libsofthsm2.so",
            {"object": "k", "module_path": "/usr/lib/softhsm/libsofthsm2.so"},
            id="module-path",
        ),
        pytest.param("pkcs11:object=k?module-name=softhsm2", {"object": "k"}, id="module-name-accepted"),
        pytest.param(
            "pkcs11:object=k?pin-source=file:/etc/ocspd/pin", {"object": "k", "pin_source": "/etc/ocspd/pin"},
            id="pin-source-file-absolute",
        ),
        pytest.param(
            "pkcs11:object=k?pin-source=file:///etc/ocspd/pin", {"object": "k", "pin_source": "/etc/ocspd/pin"},
            id="pin-source-file-empty-authority",
        ),
        pytest.param(
            "pkcs11:object=k?pin-source=/etc/ocspd/pin", {"object": "k", "pin_source": "/etc/ocspd/pin"},
            id="pin-source-plain-path",
        ),
        pytest.param(
            "pkcs11:object=k?pin-source=file:/etc/ocspd/my%20pin", {"object": "k", "pin_source": "/etc/ocspd/my pin"},
            id="pin-source-percent-encoded",
        ),
        pytest.param(
            "pkcs11:object=k?pin-source=file:/a%2520b", {"object": "k", "pin_source": "/a%20b"},  # decoded once
            id="pin-source-decoded-once",
        ),
        pytest.param(
            "pkcs11:object=k?pin-source=file:pin.txt", {"object": "k", "pin_source": "pin.txt"},
            id="pin-source-relative-kept-relative",
        ),
        pytest.param(
            "pkcs11:object=k?pin-source=file:/p&module-path=/m.so",
            {"object": "k", "pin_source": "/p", "module_path": "/m.so"},
            id="two-query-attributes",
        ),
        pytest.param(
            "pkcs11:x-vendor=1;object=k;X-Other=%ff?x-query=2&pin-source=file:/p",
            {"object": "k", "pin_source": "/p"},
            id="vendor-attributes-ignored",
        ),
        pytest.param(
            "PKCS11:OBJECT=k;Type=private;ID=%01?PIN-SOURCE=file:/p&Module-Path=/m.so",
            {"object": "k", "type": "private", "id": b"\x01", "pin_source": "/p", "module_path": "/m.so"},
            id="scheme-and-attribute-names-case-insensitive",
        ),
        pytest.param("pkcs11:object=k?", {"object": "k"}, id="empty-query"),
    ],
)  # fmt: skip
def test_parse_reads_every_field(text: str, fields: dict[str, Any]) -> None:
    uri = parse(text)
    assert uri == Pkcs11Uri(text, **fields)
    assert str(uri) == text


# --- parse: what is refused, and why ---


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("pkcs12:object=k", "not a pkcs11: URI", id="other-scheme"),
        pytest.param("/etc/ocspd/responder.key", "not a pkcs11: URI", id="file-path"),
        pytest.param("pkcs11", "not a pkcs11: URI", id="scheme-without-colon"),
        pytest.param(
            "pkcs11:object=k?pin-source=file://ca.example/p", "only a local file", id="pin-source-remote-host"
        ),
        pytest.param("pkcs11:object=k?1234", "a query item without =", id="bare-query-item"),
        pytest.param("pkcs11:object=k;label=x", "unknown path attribute 'label'", id="unknown-path-attribute"),
        pytest.param(
            "pkcs11:object=k;pin-source=file:/p", "unknown path attribute 'pin-source'", id="query-attribute-in-path"
        ),
        pytest.param("pkcs11:object=k?pin=1", "unknown query attribute 'pin'", id="unknown-query-attribute"),
        pytest.param("pkcs11:id=%01?object=k", "unknown query attribute 'object'", id="path-attribute-in-query"),
        pytest.param("pkcs11:object", "attribute 'object' without a value", id="path-attribute-without-value"),
        pytest.param(
            "pkcs11:object=k?module-path", "a query item without =", id="query-attribute-without-value"
        ),
        pytest.param("pkcs11:object=k;", "attribute '' without a value", id="trailing-semicolon"),
        pytest.param("pkcs11:object=a;object=b", "attribute 'object' given twice", id="duplicate-attribute"),
        pytest.param("pkcs11:object=a;OBJECT=b", "attribute 'object' given twice", id="duplicate-in-other-case"),
        pytest.param(
            "pkcs11:object=k?module-path=/a&module-path=/b", "attribute 'module-path' given twice",
            id="duplicate-query-attribute",
        ),
        pytest.param("pkcs11:object=k%2", "bad percent-encoding in object", id="truncated-percent-escape"),
        pytest.param("pkcs11:id=%zz", "bad percent-encoding in id", id="non-hex-percent-escape"),
        pytest.param("pkcs11:token=t%;object=k", "bad percent-encoding in token", id="bare-percent"),
        pytest.param("pkcs11:object=%ff", "attribute 'object' is not UTF-8", id="non-utf8-label"),
        pytest.param("pkcs11:token=%c3;object=k", "attribute 'token' is not UTF-8", id="truncated-utf8-token"),
        pytest.param(
            "pkcs11:object=k;type=secret-key", "type=secret-key: ocspd reads type=private (a key) or type=cert",
            id="type-secret-key",
        ),
        pytest.param("pkcs11:object=k;type=public", "type=public", id="type-public"),
        pytest.param("pkcs11:token=ocspd;type=private", "names no object", id="no-object-and-no-id"),
        pytest.param("pkcs11:", "names no object", id="empty-uri"),
        pytest.param(
            "pkcs11:object=k?pin-source=|/usr/bin/get-pin", "pin-source=|command is not supported",
            id="pin-source-command",
        ),
        pytest.param(
            "pkcs11:object=k?pin-source=%7C/usr/bin/get-pin", "pin-source=|command is not supported",
            id="pin-source-percent-encoded-command",
        ),
    ],
)  # fmt: skip
def test_parse_refuses_a_bad_uri_saying_why(text: str, message: str) -> None:
    with pytest.raises(Pkcs11UriError) as info:
        parse(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "raw_pin"),
    [
        pytest.param(f"pkcs11:object=k?pin-value={PIN}", PIN, id="pin-value"),
        pytest.param(f"pkcs11:object=k?PIN-VALUE={PIN}", PIN, id="pin-value-in-upper-case"),
        pytest.param(f"pkcs11:object=k?pin-source=file:/p&pin-value={PIN}", PIN, id="pin-value-after-pin-source"),
        pytest.param(f"pkcs11:token=t?pin-value={PIN}", PIN, id="pin-value-without-object"),
        pytest.param(f"pkcs11:object=k?pin-value={PIN}%zz", PIN, id="pin-value-with-bad-percent-encoding"),
        pytest.param(f"pkcs11:object=k?pin-value={PIN}%ff", PIN, id="pin-value-not-utf8"),
        pytest.param("pkcs11:object=k?pin-value=%53ECRET", "%53ECRET", id="pin-value-percent-encoded"),
    ],
)
def test_parse_refuses_pin_value_without_repeating_the_pin(text: str, raw_pin: str) -> None:
    with pytest.raises(Pkcs11UriError) as info:
        parse(text)
    message = str(info.value)
    assert "pin-value puts the PIN in the configuration" in message
    assert raw_pin not in message
    assert "SECRET" not in message


def test_parse_refuses_a_repeated_pin_value_as_a_pin_value() -> None:
    with pytest.raises(Pkcs11UriError) as info:
        parse(f"pkcs11:object=k?pin-value={PIN}&pin-value={PIN}")
    assert "pin-value puts the PIN" in str(info.value)
    assert PIN not in str(info.value)


def test_pkcs11_uri_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not a pkcs11: URI"):
        parse("file:/etc/ocspd/key.pem")


# --- is_pkcs11_uri, describe_object, token_selector ---


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("pkcs11:object=k", True),
        ("PKCS11:object=k", True),
        ("Pkcs11:", True),
        ("pkcs11", False),
        ("pkcs11-tool:object=k", False),
        (" pkcs11:object=k", True),  # as a TOML value may be written: parsed, never taken for a path
        ("/etc/ocspd/pkcs11:key", False),
        ("responder.key", False),
        ("", False),
    ],
)
def test_is_pkcs11_uri_looks_at_the_scheme_only(value: str, expected: bool) -> None:
    assert is_pkcs11_uri(value) is expected


@pytest.mark.parametrize(
    ("text", "described"),
    [
        ("pkcs11:token=t;object=responder;id=%01;type=private", "object=responder;id=%01"),
        ("pkcs11:id=%0A%ff%00", "id=%0a%ff%00"),
        ("pkcs11:id=AB", "id=%41%42"),
        ("pkcs11:object=my%20key", "object=my key"),
        ("pkcs11:token=t;id=%10;object=k", "object=k;id=%10"),
    ],
)
def test_describe_object_names_label_and_id(text: str, described: str) -> None:
    assert parse(text).describe_object() == described


def test_describe_object_of_a_uri_naming_no_object() -> None:
    assert Pkcs11Uri("pkcs11:token=t").describe_object() == "(any object)"


def test_token_selector_is_label_serial_manufacturer_model() -> None:
    uri = parse("pkcs11:model=M;manufacturer=Acme;serial=42;token=ocspd;object=k")
    assert uri.token_selector == ("ocspd", "42", "Acme", "M")
    assert parse("pkcs11:object=k").token_selector == (None, None, None, None)


# --- resolve_pin_source ---


@pytest.mark.parametrize(
    ("pin_source", "resolved"),
    [
        pytest.param("file:pin.txt", "/etc/ocspd/pin.txt", id="relative-file-uri"),
        pytest.param("pin.txt", "/etc/ocspd/pin.txt", id="relative-path"),
        pytest.param("file:secrets/token.pin", "/etc/ocspd/secrets/token.pin", id="relative-subdirectory"),
        pytest.param("file:/run/credentials/ocspd/pin", "/run/credentials/ocspd/pin", id="absolute-kept"),
        pytest.param("file:///var/lib/pin", "/var/lib/pin", id="absolute-empty-authority-kept"),
    ],
)
def test_resolve_pin_source_makes_a_relative_pin_source_absolute(pin_source: str, resolved: str) -> None:
    text = f"pkcs11:object=k?pin-source={pin_source}"
    uri = resolve_pin_source(parse(text), Path("/etc/ocspd"))
    assert uri == Pkcs11Uri(text, object="k", pin_source=resolved)
    assert str(uri) == text  # the URI as written, for messages and check-config


def test_resolve_pin_source_leaves_a_uri_without_pin_source_alone() -> None:
    uri = parse("pkcs11:object=k")
    assert resolve_pin_source(uri, Path("/etc/ocspd")) == uri


# --- the config: token keys in [[issuers]], [pkcs11] ---


def issuer(**keys: str | None) -> str:
    """One [[issuers]] table with a token key; keyword arguments replace the defaults, None drops a key."""
    fields = {
        "id": "hsm-ca",
        "ca_cert": "ca.pem",
        "responder_key": KEY_URI,
        "pkcs11_module": MODULE,
        "pkcs11_pin_file": "token.pin",
        "index": "index.txt",
    }
    return "\n[[issuers]]\n" + "".join(f'{k} = "{v}"\n' for k, v in (fields | keys).items() if v is not None)


def write_config(tmp_path: Path, text: str = "", issuers: str | None = None) -> Path:
    """The config and the files it names: the config module only stats and opens them."""
    for name in ("ca.pem", "responder.pem", "index.txt"):
        (tmp_path / name).write_bytes(b"not parsed here\n")
    for name in ("token.pin", "responder.key", "pass.txt"):
        (tmp_path / name).write_bytes(b"1234\n")
        (tmp_path / name).chmod(0o600)
    path = tmp_path / "ocspd.toml"
    path.write_text(text + "\n" + (issuer() if issuers is None else issuers))
    return path


def load(path: Path, env: dict[str, str] | None = None) -> Config:
    return load_config(path, environ=env or {})


def expect_error(path: Path, key: str, *fragments: str, env: dict[str, str] | None = None) -> ConfigError:
    """Loading fails with one ConfigError: one line, "file: key: message", naming both."""
    with pytest.raises(ConfigError) as info:
        load(path, env)
    err, msg = info.value, str(info.value)
    assert "\n" not in msg
    assert (err.file, err.key) == (str(path), key)
    assert msg.startswith(f"{path}: {key}: ")
    for fragment in fragments:
        assert fragment in msg, msg
    return err


def test_a_token_key_with_module_and_pin_file_loads(tmp_path: Path) -> None:
    config = load(write_config(tmp_path))
    assert config.issuers == (
        IssuerConfig(
            id="hsm-ca",
            ca_cert=tmp_path / "ca.pem",
            responder_key=parse(KEY_URI),
            pkcs11_module=MODULE,
            pkcs11_pin_file=tmp_path / "token.pin",
            index=tmp_path / "index.txt",
        ),
    )
    (only,) = config.issuers
    assert isinstance(only.responder_key, Pkcs11Uri)
    assert only.pkcs11_pin_file is not None and only.pkcs11_pin_file.is_absolute()
    assert config.pkcs11 == Pkcs11Config()


def test_the_pkcs11_section_defaults(tmp_path: Path) -> None:
    assert load(write_config(tmp_path)).pkcs11 == Pkcs11Config(module="", sessions=2, probe=dt.timedelta(seconds=10))


def test_the_pkcs11_section_is_read(tmp_path: Path) -> None:
    path = write_config(tmp_path, f'[pkcs11]\nmodule = "{MODULE}"\nsessions = 4\nprobe = "1m"')
    assert load(path).pkcs11 == Pkcs11Config(module=MODULE, sessions=4, probe=dt.timedelta(minutes=1))


def test_the_pkcs11_section_module_serves_an_issuer_without_one(tmp_path: Path) -> None:
    config = load(write_config(tmp_path, f'[pkcs11]\nmodule = "{MODULE}"', issuer(pkcs11_module=None)))
    (only,) = config.issuers
    assert only.pkcs11_module is None  # the signer takes [pkcs11] module
    assert config.pkcs11.module == MODULE


@pytest.mark.parametrize("empty", [None, ""], ids=["absent", "empty-string"])
def test_a_module_path_in_the_uri_is_enough(tmp_path: Path, empty: str | None) -> None:
    key = f"{KEY_URI}?module-path={MODULE}"
    (only,) = load(write_config(tmp_path, issuers=issuer(responder_key=key, pkcs11_module=empty))).issuers
    assert only.pkcs11_module is None
    assert isinstance(only.responder_key, Pkcs11Uri) and only.responder_key.module_path == MODULE


def test_a_relative_pin_source_resolves_against_the_config_directory(tmp_path: Path) -> None:
    key = f"{KEY_URI}?pin-source=file:token.pin"
    (only,) = load(write_config(tmp_path, issuers=issuer(responder_key=key, pkcs11_pin_file=None))).issuers
    assert only.responder_key == Pkcs11Uri(
        key, token="ocspd", object="responder", type="private", pin_source=str(tmp_path / "token.pin")
    )
    assert only.pkcs11_pin_file is None


def test_a_token_key_without_any_pin_loads(tmp_path: Path) -> None:
    (only,) = load(write_config(tmp_path, issuers=issuer(pkcs11_pin_file=None))).issuers
    assert (only.pkcs11_pin_file, only.key_passphrase_file) == (None, None)


@pytest.mark.parametrize("cert", ["responder.pem", CERT_URI], ids=["cert-file", "cert-in-token"])
def test_a_token_key_takes_its_certificate_from_a_file_or_the_token(tmp_path: Path, cert: str) -> None:
    (only,) = load(write_config(tmp_path, issuers=issuer(responder_cert=cert))).issuers
    assert only.responder_cert == (tmp_path / cert if cert == "responder.pem" else parse(cert))


def test_a_file_key_issuer_has_no_pkcs11_settings(tmp_path: Path) -> None:
    path = write_config(tmp_path, issuers=issuer(responder_key="responder.key", pkcs11_module="", pkcs11_pin_file=""))
    (only,) = load(path).issuers
    assert only.responder_key == tmp_path / "responder.key"
    assert (only.pkcs11_module, only.pkcs11_pin_file) == (None, None)


def test_dump_config_round_trips_a_token_key(tmp_path: Path) -> None:
    key = f"{KEY_URI}?pin-source=file:token.pin"
    config = load(
        write_config(tmp_path, issuers=issuer(responder_key=key, responder_cert=CERT_URI, pkcs11_pin_file=""))
    )
    dumped = tmp_path / "dumped.toml"
    dumped.write_text(dump_config(config))
    assert f'responder_key = "{key}"' in dumped.read_text()
    again = load(dumped)
    assert (again.issuers, again.pkcs11) == (config.issuers, config.pkcs11)


@pytest.mark.parametrize(
    ("issuers", "key", "message"),
    [
        pytest.param(
            issuer(pkcs11_module=None), "issuers[0].pkcs11_module", "no PKCS#11 module: set pkcs11_module",
            id="no-module-anywhere",
        ),
        pytest.param(
            issuer(pkcs11_module=None, responder_cert=f"{CERT_URI}?module-path={MODULE}"),
            "issuers[0].pkcs11_module", "no PKCS#11 module", id="module-path-on-the-cert-only",
        ),
        pytest.param(
            issuer(key_passphrase_file="pass.txt"), "issuers[0].key_passphrase_file",
            "a token key has a PIN, not a passphrase: use pkcs11_pin_file", id="passphrase-file-with-token-key",
        ),
        pytest.param(
            issuer(responder_key=f"{KEY_URI}?pin-source=file:token.pin"), "issuers[0].pkcs11_pin_file",
            "the URI has a pin-source already", id="pin-file-and-pin-source",
        ),
        pytest.param(
            issuer(responder_key="responder.key", pkcs11_pin_file=None), "issuers[0].pkcs11_module",
            'only for a key in a PKCS#11 token (responder_key = "pkcs11:...")', id="module-with-file-key",
        ),
        pytest.param(
            issuer(responder_key="responder.key", pkcs11_module=None), "issuers[0].pkcs11_pin_file",
            "only for a key in a PKCS#11 token", id="pin-file-with-file-key",
        ),
        pytest.param(
            issuer(responder_key="responder.key", responder_cert=CERT_URI, pkcs11_pin_file=None),
            "issuers[0].responder_cert", "a certificate in a token needs its key there too",
            id="token-cert-with-file-key",
        ),
        pytest.param(
            issuer(responder_key=CERT_URI), "issuers[0].responder_key", "type=cert: responder_key needs type=private",
            id="key-of-type-cert",
        ),
        pytest.param(
            issuer(responder_cert=KEY_URI), "issuers[0].responder_cert",
            "type=private: responder_cert needs type=cert", id="cert-of-type-private",
        ),
        pytest.param(
            issuer(responder_key=f"{KEY_URI}?pin-source=file:missing.pin", pkcs11_pin_file=None),
            "issuers[0].responder_key (pin-source)", "no such file: ", id="pin-source-file-missing",
        ),
        pytest.param(
            issuer(pkcs11_pin_file="missing.pin"), "issuers[0].pkcs11_pin_file", "no such file: ",
            id="pin-file-missing",
        ),
    ],
)  # fmt: skip
def test_a_bad_token_key_setup_is_refused_naming_the_key(tmp_path: Path, issuers: str, key: str, message: str) -> None:
    expect_error(write_config(tmp_path, issuers=issuers), key, message)


def test_the_missing_pin_file_is_named_absolute(tmp_path: Path) -> None:
    path = write_config(tmp_path, issuers=issuer(pkcs11_pin_file="missing.pin"))
    expect_error(path, "issuers[0].pkcs11_pin_file", f"no such file: {tmp_path / 'missing.pin'}")


def test_a_token_cert_with_a_file_key_is_refused_even_with_a_module(tmp_path: Path) -> None:
    issuers = issuer(responder_key="responder.key", responder_cert=CERT_URI, pkcs11_module=None, pkcs11_pin_file=None)
    path = write_config(tmp_path, f'[pkcs11]\nmodule = "{MODULE}"', issuers)
    expect_error(path, "issuers[0].responder_cert", "needs its key there too")


@pytest.mark.parametrize(
    ("key", "uri", "message"),
    [
        pytest.param("responder_key", "pkcs11:token=ocspd;type=private", "names no object", id="key-names-no-object"),
        pytest.param("responder_key", "pkcs11:object=k;slot=1", "unknown path attribute 'slot'", id="key-unknown"),
        pytest.param("responder_key", "PKCS11:object=%ff", "attribute 'object' is not UTF-8", id="key-not-utf8"),
        pytest.param("responder_key", "pkcs11:object=k?pin-source=|cat", "|command", id="key-pin-command"),
        pytest.param("responder_cert", "pkcs11:object=k;type=data", "type=data", id="cert-of-type-data"),
        pytest.param("responder_cert", "pkcs11:object=a;object=b", "given twice", id="cert-duplicate"),
    ],
)  # fmt: skip
def test_a_bad_uri_is_refused_as_a_bad_pkcs11_uri(tmp_path: Path, key: str, uri: str, message: str) -> None:
    err = expect_error(write_config(tmp_path, issuers=issuer(**{key: uri})), f"issuers[0].{key}", message)
    assert err.message.startswith("bad PKCS#11 URI: ")


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        pytest.param("[pkcs11]\nsessions = 0", "pkcs11.sessions", "must be at least 1, got 0", id="sessions-0"),
        pytest.param('[pkcs11]\nsessions = "2"', "pkcs11.sessions", "expected an integer", id="sessions-string"),
        pytest.param('[pkcs11]\nprobe = "0s"', "pkcs11.probe", "must be greater than 0", id="probe-0s"),
        pytest.param("[pkcs11]\nprobe = 0", "pkcs11.probe", "must be greater than 0", id="probe-0"),
        pytest.param('[pkcs11]\nprobe = "soon"', "pkcs11.probe", "bad duration", id="probe-not-a-duration"),
        pytest.param("[pkcs11]\nmodule = 1", "pkcs11.module", "expected a string", id="module-not-a-string"),
        pytest.param("[pkcs11]\nslots = 1", "pkcs11.slots", "unknown key 'slots' in [pkcs11]", id="unknown-key"),
    ],
)  # fmt: skip
def test_a_bad_pkcs11_section_is_refused_naming_the_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    expect_error(write_config(tmp_path, text), key, message)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644], ids=lambda m: f"{m:04o}")
def test_a_pin_file_open_to_group_or_other_is_refused(tmp_path: Path, mode: int) -> None:
    # The mode bits are checked, not whether open() fails: this holds when the tests run as root too.
    path = write_config(tmp_path)
    (tmp_path / "token.pin").chmod(mode)
    pin = tmp_path / "token.pin"
    expect_error(path, "issuers[0].pkcs11_pin_file", f"(mode {mode:04o})", f"chmod 600 {pin}")


@pytest.mark.parametrize("mode", [0o640, 0o604], ids=lambda m: f"{m:04o}")
def test_a_pin_source_file_open_to_group_or_other_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_config(
        tmp_path, issuers=issuer(responder_key=f"{KEY_URI}?pin-source=file:token.pin", pkcs11_pin_file=None)
    )
    (tmp_path / "token.pin").chmod(mode)
    expect_error(path, "issuers[0].responder_key (pin-source)", f"(mode {mode:04o})", "chmod 600")


# --- the environment: OCSPD_PKCS11_<KEY> ---


def test_env_sets_the_pkcs11_section(tmp_path: Path) -> None:
    env = {"OCSPD_PKCS11_MODULE": MODULE, "OCSPD_PKCS11_SESSIONS": "8", "OCSPD_PKCS11_PROBE": "500ms"}
    config = load(write_config(tmp_path, "[pkcs11]\nsessions = 3", issuer(pkcs11_module=None)), env)
    assert config.pkcs11 == Pkcs11Config(module=MODULE, sessions=8, probe=dt.timedelta(milliseconds=500))
    assert config.issuers[0].pkcs11_module is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"OCSPD_PKCS11_SESSIONS": "0"}, "must be at least 1, got 0", id="sessions-0"),
        pytest.param({"OCSPD_PKCS11_SESSIONS": "two"}, "expected an integer", id="sessions-not-a-number"),
        pytest.param({"OCSPD_PKCS11_PROBE": "0"}, "must be greater than 0", id="probe-0"),
    ],
)
def test_env_bad_pkcs11_value_names_the_variable(tmp_path: Path, env: dict[str, str], message: str) -> None:
    (var,) = env
    expect_error(write_config(tmp_path), var, message, env=env)


def test_env_unknown_pkcs11_setting_suggests_the_closest(tmp_path: Path) -> None:
    env = {"OCSPD_PKCS11_SESION": "2"}
    expect_error(write_config(tmp_path), "OCSPD_PKCS11_SESION", "did you mean OCSPD_PKCS11_SESSIONS?", env=env)


# --- a PIN in the URI never reaches a message ---


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param({"responder_key": f"{KEY_URI}?pin-value={PIN}"}, id="key"),
        pytest.param({"responder_key": f"{KEY_URI}?module-path={MODULE}&pin-value={PIN}"}, id="key-after-module"),
        pytest.param({"responder_key": f"{CERT_URI}?pin-value={PIN}"}, id="key-of-type-cert"),
        pytest.param({"responder_key": f"pkcs11:token=ocspd?pin-value={PIN}"}, id="key-naming-no-object"),
        pytest.param({"responder_key": f"{KEY_URI};bogus=1?pin-value={PIN}"}, id="key-with-unknown-attribute"),
        pytest.param({"responder_cert": f"{CERT_URI}?pin-value={PIN}"}, id="cert"),
        pytest.param(
            {"responder_key": "responder.key", "responder_cert": f"{CERT_URI}?pin-value={PIN}"}, id="cert-file-key"
        ),
        pytest.param({"responder_key": f"{KEY_URI}?pin-value={PIN}", "pkcs11_module": None}, id="key-without-module"),
        pytest.param(
            {"responder_key": f"{KEY_URI}?pin-value={PIN}", "key_passphrase_file": "pass.txt"},
            id="key-with-passphrase",
        ),
    ],
)  # fmt: skip
def test_no_config_error_repeats_a_pin_value(tmp_path: Path, keys: dict[str, str | None]) -> None:
    with pytest.raises(ConfigError) as info:
        load(write_config(tmp_path, issuers=issuer(**keys)))
    err = info.value
    assert err.key in ("issuers[0].responder_key", "issuers[0].responder_cert")
    assert PIN not in str(err) and PIN not in err.message
    assert "SECRET" not in str(err)
