"""PostgreSQL: status source, shared response tier, migrations, LISTEN/NOTIFY.

The only package that imports aiopg/psycopg2.
"""

from ocspd.store.db import REASON_NAMES, REASON_OF_FLAG, CertRecord, DueRow, Store, serial_hex
from ocspd.store.listener import CHANNEL, Listener

__all__ = ["CHANNEL", "REASON_NAMES", "REASON_OF_FLAG", "CertRecord", "DueRow", "Listener", "Store", "serial_hex"]
