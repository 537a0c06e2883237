"""``python -m ocspd``."""

from ocspd.cli import console

console()
