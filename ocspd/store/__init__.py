"""PostgreSQL: status source, shared response tier, migrations, LISTEN/NOTIFY.

The only package that imports the database driver (psycopg 3).
"""

from ocspd.store.certificates import Certificates, CertRecord, CertRow, Merge, RevokeResult, fold_duplicates, merge
from ocspd.store.db import DueRow, Store
from ocspd.store.listener import CHANNEL, Listener
from ocspd.store.values import serial_hex

__all__ = [
    "CHANNEL",
    "CertRecord",
    "CertRow",
    "Certificates",
    "DueRow",
    "Listener",
    "Merge",
    "RevokeResult",
    "Store",
    "fold_duplicates",
    "merge",
    "serial_hex",
]
