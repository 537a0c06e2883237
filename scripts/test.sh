#!/usr/bin/env bash
# Run the test suite (and the linters) in ./.venv. Extra arguments go to pytest.
OCSPD_EXTRAS="test,dev"
source "$(dirname "$0")/_venv.sh"
cd "$root"
if ! command -v openssl >/dev/null 2>&1; then
    echo "ocspd: the tests need the openssl CLI (apt-get install openssl)" >&2
    exit 1
fi
"$venv/bin/ruff" check ocspd tests bench
"$venv/bin/ruff" format --check ocspd tests bench
"$venv/bin/mypy" ocspd tests bench
exec "$venv/bin/pytest" "$@"
