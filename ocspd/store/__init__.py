"""PostgreSQL: status source, shared response tier, migrations, LISTEN/NOTIFY.

The only package that imports the database driver (psycopg 3). ``Store``
is what the rest of ocspd holds; its roles live in a module each:
``connector`` (pool, deadlines, the one translation of driver errors),
``source`` (the request path's batched reads), ``writes`` (the write-behind
queue), ``responses`` and ``certificates`` (refresh, presign and the CLI's
operations, returning the records below), ``migrations`` (the migrator);
``listener`` keeps the LISTEN connection, and raises ``fence`` (the WAL
position reads on ``read_dsn``, a hot standby, must have replayed).
"""

from ocspd.store.certificates import (
    Certificates,
    CertRecord,
    CertRow,
    ImportCounts,
    Merge,
    RevokeResult,
    fold_duplicates,
    merge,
)
from ocspd.store.db import Store
from ocspd.store.listener import CHANNEL, Listener
from ocspd.store.responses import DueRow, PresignRow, SignedResponse
from ocspd.store.values import serial_hex

__all__ = [
    "CHANNEL",
    "CertRecord",
    "CertRow",
    "Certificates",
    "DueRow",
    "ImportCounts",
    "Listener",
    "Merge",
    "PresignRow",
    "RevokeResult",
    "SignedResponse",
    "Store",
    "fold_duplicates",
    "merge",
    "serial_hex",
]
