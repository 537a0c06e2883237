# Sourced by the scripts in this folder: make ./.venv (once) with a Python
# >= 3.11 and install ocspd into it, with the extras named in $OCSPD_EXTRAS.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"

find_python() {
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "ocspd: needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

if [ ! -x "$venv/bin/python" ]; then
    python="$(find_python)"
    if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        echo "ocspd: '$python -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2
        exit 1
    fi
fi

# Reinstall only when the package metadata changed since the last install.
stamp="$venv/.ocspd-installed"
want="$(cat "$root/setup.cfg" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1) ${OCSPD_EXTRAS:-}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "ocspd: installing into $venv ..." >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root${OCSPD_EXTRAS:+[$OCSPD_EXTRAS]}" >&2
    echo "$want" >"$stamp"
fi
