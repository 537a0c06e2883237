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

# Install only when the package metadata (or the tools' pinned versions) changed since
# the last install, or when an extra is wanted that is not installed yet: the demo's
# extras are a subset of the tests', so switching between the two reinstalls nothing,
# and nothing is fetched from the network when nothing changed.
stamp="$venv/.ocspd-installed"
digest="$(cat "$root/setup.cfg" "$root/pyproject.toml" "$root/scripts/constraints.txt" | sha256sum | cut -d' ' -f1)"
installed_digest="" installed_extras=""
if [ -f "$stamp" ]; then read -r installed_digest installed_extras <"$stamp" || true; fi
extras="$installed_extras"
if [ "$installed_digest" != "$digest" ]; then extras=""; fi
missing=no
extras_wanted="${OCSPD_EXTRAS:-}"
for extra in ${extras_wanted//,/ }; do
    case ",$extras," in *",$extra,"*) ;; *) missing=yes; extras="${extras:+$extras,}$extra" ;; esac
done
if [ "$installed_digest" != "$digest" ] || [ "$missing" = yes ]; then
    echo "ocspd: installing into $venv ..." >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$root/scripts/constraints.txt" -e "$root${extras:+[$extras]}" >&2
    echo "$digest $extras" >"$stamp"
fi
