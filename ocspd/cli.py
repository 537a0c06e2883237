"""The ``ocspd`` command line (SPEC §4).

Every failure a user can cause is one line on stderr naming what is wrong,
and a non-zero exit status (2 for configuration and usage errors).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ocspd import __version__, commands, crlcommands, daemon, importer, logs
from ocspd.commands import UsageError
from ocspd.config import IssuerConfig, credential_outside_the_service, dump_config, format_duration, load_config
from ocspd.exceptions import ConfigError, OcspdError, StoreError
from ocspd.pkcs11uri import Pkcs11Uri
from ocspd.store.values import database_roles

log = logging.getLogger("ocspd")

EXIT_CONFIG = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, not argparse's usage block: scripts and humans read the same.
        self.exit(EXIT_CONFIG, f"ocspd: {message} (see 'ocspd --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(prog="ocspd", description="OCSP responder daemon (RFC 6960 / RFC 9919)")
    parser.add_argument("--version", action="version", version=f"ocspd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    config_help = "configuration file (default $OCSPD_CONFIG, else /etc/ocspd/ocspd.toml)"

    serve = sub.add_parser("serve", help="run the responder")
    serve.add_argument("--config", type=Path, help=config_help)
    # Internal: a worker process started by the supervisor (server.workers > 1).
    serve.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)

    demo = sub.add_parser("demo", help="make a throwaway PKI and serve it (no database needed)")
    demo.add_argument(
        "--dir", type=Path, default=Path("ocspd-demo"), help="where the demo PKI lives (default ./ocspd-demo)"
    )
    demo.add_argument("--port", type=int, default=8080, help="OCSP port on 127.0.0.1 (default 8080)")

    check = sub.add_parser("check-config", help="validate and print the effective configuration")
    check.add_argument("--config", type=Path, help=config_help)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    migrate = db_sub.add_parser("migrate", help="apply sql/ migrations (idempotent, safe with many replicas)")
    migrate.add_argument("--config", type=Path, help=config_help)

    cert = sub.add_parser("cert", help="record issued certificates")
    cert_sub = cert.add_subparsers(dest="cert_command", required=True, parser_class=_Parser)
    add = cert_sub.add_parser("add", help="record one issued certificate")
    add.add_argument("--config", type=Path, help=config_help)
    add.add_argument("--issuer", required=True)
    add.add_argument("--serial", required=True, help="hex, any case, optional 0x or colons")
    add.add_argument("--not-after", help="RFC 3339 time")
    imp = cert_sub.add_parser("import", help="import PEM/DER certificates or an OpenSSL index.txt")
    imp.add_argument("--config", type=Path, help=config_help)
    imp.add_argument("--issuer", required=True)
    imp.add_argument("files", nargs="+", type=Path, metavar="FILE")

    rev = sub.add_parser("revoke", help="revoke a certificate (every replica answers revoked at once)")
    rev.add_argument("--config", type=Path, help=config_help)
    rev.add_argument("--issuer", required=True)
    rev.add_argument("--serial", required=True, help="hex, any case, optional 0x or colons")
    rev.add_argument("--reason", help="RFC 5280 reason name, e.g. keyCompromise")
    rev.add_argument("--at", help="revocation time, RFC 3339 (default: now)")
    rev.add_argument(
        "--amend",
        action="store_true",
        help="change the reason or time of a revocation already recorded (never into certificateHold)",
    )

    unh = sub.add_parser("unhold", help="release a certificateHold: the only way from revoked back to good")
    unh.add_argument("--config", type=Path, help=config_help)
    unh.add_argument("--issuer", required=True)
    unh.add_argument("--serial", required=True, help="hex, any case, optional 0x or colons")

    st = sub.add_parser("status", help="what the issuer's status source says about a certificate")
    st.add_argument("--config", type=Path, help=config_help)
    st.add_argument("--issuer", required=True)
    st.add_argument("--serial", required=True)
    st.add_argument("--json", action="store_true", help="one JSON object")

    crl = sub.add_parser("crl", help="the CRLs of issuers whose status comes from them")
    crl_sub = crl.add_subparsers(dest="crl_command", required=True, parser_class=_Parser)
    show = crl_sub.add_parser("show", help="what is in force: CRL numbers, thisUpdate/nextUpdate, entries, source")
    sync = crl_sub.add_parser("sync", help="fetch, check and apply the CRLs now (one round; systemd timer friendly)")
    for crl_command in (show, sync):
        crl_command.add_argument("--config", type=Path, help=config_help)
        crl_command.add_argument("--issuer", action="append", default=[], help="only this issuer (repeatable)")

    pre = sub.add_parser("presign", help="fill the Postgres response tier ahead of traffic")
    pre.add_argument("--config", type=Path, help=config_help)
    pre.add_argument("--issuer", action="append", help="only this issuer (repeatable; default: all)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ocspd`` console script."""
    args = build_parser().parse_args(argv)
    _setup_logging()
    try:
        if args.command == "serve":
            return daemon.serve(args.config, load_config(args.config), worker_fd=args.worker_fd)
        if args.command == "demo":
            return _demo(args.dir, args.port)
        if args.command == "check-config":
            return _check_config(args.config)
        return _database_command(args)
    except (ConfigError, UsageError) as exc:
        print(f"ocspd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OcspdError as exc:
        print(f"ocspd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`ocspd status ... | head -1`): no traceback, and
        # nothing more written, not even at exit's flush of stdout.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _database_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.command == "db":
        return commands.db_migrate(config)
    if args.command == "cert" and args.cert_command == "add":
        return commands.cert_add(config, args.issuer, args.serial, args.not_after)
    if args.command == "cert":
        return importer.cert_import(config, args.issuer, args.files)
    if args.command == "revoke":
        return commands.revoke(config, args.issuer, args.serial, args.reason, args.at, args.amend)
    if args.command == "unhold":
        return commands.unhold(config, args.issuer, args.serial)
    if args.command == "status":
        return commands.status(config, args.issuer, args.serial, args.json)
    if args.command == "crl":
        crl_command = crlcommands.crl_show if args.crl_command == "show" else crlcommands.crl_sync
        return crl_command(config, args.issuer)
    if args.command == "presign":
        # By default every issuer whose status lives in the database (index.txt ones have no stored tier).
        return commands.presign(config, args.issuer or [i.id for i in config.issuers if i.index is None])
    raise AssertionError(f"unhandled command {args.command}")


def _setup_logging() -> None:
    logs.setup(level=os.environ.get("OCSPD_LOG_LEVEL"))


def _check_config(path: Path | None) -> int:
    config = load_config(path)
    from ocspd.keys import load_signer
    from ocspd.signer import Signer
    from ocspd.tokens import Tokens

    # Keys and certificates are part of the config. An issuer whose passphrase is a systemd
    # credential only the running service can read is checked as far as that allows. A key
    # in a PKCS#11 token signs a test message, in a session closed again.
    signers: dict[str, Signer | None] = {}
    tokens = Tokens(1)
    try:
        for index, issuer in enumerate(config.issuers):
            passphrase = issuer.key_passphrase_file
            if passphrase is not None and credential_outside_the_service(passphrase):
                _check_without_passphrase(issuer, index, config.source)
                signers[issuer.id] = None
            elif _service_only_pin(issuer) is not None:
                signers[issuer.id] = None  # the token cannot be logged in to here
            else:
                where = f"issuers[{index}]"
                signers[issuer.id] = load_signer(issuer, where, config.source, tokens, config.pkcs11.module)
    finally:
        tokens.close()
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(dump_config(config), end="")
    if config.database is not None:
        database = config.database
        try:
            roles = database_roles(
                database.dsn, database.listen_dsn, database.read_dsn, format_duration(database.read_max_lag)
            )
        except StoreError as exc:  # a DSN libpq cannot read: the config's fault
            raise ConfigError(str(exc), file=config.source) from None
        for line in roles:
            print(f"# database {line}", file=sys.stderr)
    for issuer in config.issuers:
        signer = signers[issuer.id]
        pin = _service_only_pin(issuer)
        if signer is None and pin is not None:
            print(
                f"# issuer {issuer.id}: token key not checked: its PIN is a systemd credential only the "
                f"running service can read ({pin}); it is checked at `systemctl start ocspd`",
                file=sys.stderr,
            )
            continue
        if signer is None:
            print(
                f"# issuer {issuer.id}: key not checked: its passphrase is a systemd credential only the "
                f"running service can read ({issuer.key_passphrase_file}); the key is encrypted and the "
                "certificates read, the rest is checked at `systemctl start ocspd`",
                file=sys.stderr,
            )
            continue
        delegated = "delegated responder" if signer.responder_cert is not None else "CA key"
        print(f"# issuer {issuer.id}: {signer.key_type}, signed by the {delegated}", file=sys.stderr)
    return 0


def _service_only_pin(issuer: IssuerConfig) -> str | None:
    """The PIN file of a token key, when it is a systemd credential this process cannot read."""
    if not isinstance(issuer.responder_key, Pkcs11Uri):
        return None
    pin = issuer.pkcs11_pin_file or issuer.responder_key.pin_source
    return str(pin) if pin is not None and credential_outside_the_service(Path(pin)) else None


def _check_without_passphrase(issuer: IssuerConfig, index: int, source: str) -> None:
    """What check-config can check of an issuer whose key passphrase it cannot read.

    The certificates load, and the key is encrypted: an unencrypted key with a
    key_passphrase_file would fail the service's start.
    """
    from ocspd.keys import load_signer

    where = f"issuers[{index}]"
    try:
        load_signer(dataclasses.replace(issuer, key_passphrase_file=None), where, source)
    except ConfigError as exc:
        # load_signer reads the certificates first, then says an encrypted key needs a passphrase;
        # any other refusal is a mistake of its own. (tests/test_systemd_unit.py holds this wording.)
        if exc.key == f"{where}.responder_key" and exc.message.endswith("(set key_passphrase_file)"):
            return
        raise
    message = f"{issuer.responder_key} is not encrypted: remove key_passphrase_file (and systemd/passphrase.conf)"
    raise ConfigError(message, key=f"{where}.key_passphrase_file", file=source)


def _demo(directory: Path, port: int) -> int:
    from ocspd.pki import make_demo, openssl_commands

    if not 1 <= port <= 65535:
        raise ConfigError(f"port {port} out of range 1..65535", key="--port")
    admin_port = port + 1 if port < 65535 else port - 1
    demo = make_demo(directory.resolve(), port=port, admin_port=admin_port)
    url = f"http://127.0.0.1:{port}/"
    print(f"ocspd demo PKI in {demo.directory} (config {demo.config})")
    print("Try these from another terminal; each prints 'Response verify OK' and the line after '#':\n")
    for demo_command in openssl_commands(demo, url):
        note = f" ({demo_command.note})" if demo_command.note else ""
        print(f"  # {demo_command.answer}{note}\n  {demo_command.command}\n")
    print(f"Metrics: http://127.0.0.1:{admin_port}/metrics  (readiness: /readyz)")
    print("Revoke a certificate: edit index.txt (change V to R and add a revocation time);")
    print("the next answer says 'revoked' within about a second. Ctrl-C stops.\n", flush=True)
    return daemon.serve(demo.config, load_config(demo.config, environ={}))


def console() -> None:
    """setuptools console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    console()
