# Sourced by the scripts in this folder: create .venv if needed and (re)install cereal with
# its embedded-PostgreSQL and test extras whenever pyproject.toml changed.
ensure_venv() {
    local python="${PYTHON:-python3}" stamp=.venv/.cereal-install-stamp want
    if [[ ! -x .venv/bin/python ]]; then
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || { echo "!! $python is older than Python 3.11" >&2; exit 1; }
        echo "== creating .venv with $python" >&2
        "$python" -m venv .venv
    fi
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
        echo "== installing cereal[embedded,test] into .venv" >&2
        # (the sed drops pip's notes about this machine's unused local package indexes)
        .venv/bin/pip install -q -e '.[embedded,test]' 2>&1 \
            | sed '/^WARNING: Location .* is ignored/d' >&2 \
            || { echo "!! pip install failed" >&2; exit 1; }
        echo "$want" > "$stamp"
    fi
}
