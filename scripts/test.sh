#!/usr/bin/env bash
# Run the test suite (and the linters) in ./.venv. Extra arguments go to pytest.
OCSPD_EXTRAS="test,dev"
if ! command -v openssl >/dev/null 2>&1; then
    echo "ocspd: the tests need the openssl CLI (apt-get install openssl)" >&2
    exit 1
fi
# The suite runs against a real PostgreSQL (tests/pg.py): a throwaway cluster of the
# installed server binaries, else $OCSPD_TEST_DSN, else a local server. Without any,
# one line now instead of an error per database test later.
if [ -z "${OCSPD_TEST_DSN:-}" ] && ! command -v initdb >/dev/null 2>&1 &&
    ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && [ ! -S /var/run/postgresql/.s.PGSQL.5432 ]; then
    echo "ocspd: the tests need PostgreSQL: apt-get install postgresql (server binaries), or set OCSPD_TEST_DSN" >&2
    exit 1
fi
source "$(dirname "$0")/_venv.sh"
cd "$root"
"$venv/bin/ruff" check ocspd tests bench
"$venv/bin/ruff" format --check ocspd tests bench
"$venv/bin/mypy" ocspd tests bench
exec "$venv/bin/pytest" "$@"
