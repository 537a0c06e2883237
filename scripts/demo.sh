#!/usr/bin/env bash
# Run the embedded demo: a throwaway PKI served from index.txt, no database.
# Usage: scripts/demo.sh [--dir DIR] [--port N]
OCSPD_EXTRAS=""
source "$(dirname "$0")/_venv.sh"
# From the caller's directory: a relative --dir is where they are, not the checkout.
exec "$venv/bin/ocspd" demo "$@"
