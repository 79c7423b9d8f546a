# Sourced by the scripts in this folder: create the virtualenv if needed and (re)install cereal
# with its embedded-PostgreSQL and test extras whenever pyproject.toml or constraints.txt changed.
#
# PYTHON picks the interpreter (default python3, into .venv); any other gets a virtualenv of
# its own, .venv-<major.minor> (e.g. PYTHON=python3.13 -> .venv-3.13). Installs are pinned by
# constraints.txt; with CEREAL_LATEST=1 (scripts/test --latest) the newest releases are
# installed instead, into .venv-latest (or .venv-<major.minor>-latest).
# After ensure_venv, $VENV names the virtualenv in use.
ensure_venv() {
    local python="${PYTHON:-python3}" version stamp want mode=pinned
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
        || { echo "!! $python is missing or older than Python 3.11" >&2; exit 1; }
    VENV=.venv
    if [[ -n "${PYTHON:-}" ]]; then
        version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        VENV=".venv-$version"
    fi
    if [[ "${CEREAL_LATEST:-}" == 1 ]]; then
        mode=latest
        VENV="$VENV-latest"
    fi
    export VENV
    if [[ ! -x "$VENV/bin/python" ]]; then
        echo "== creating $VENV with $python ($("$python" --version 2>&1))" >&2
        "$python" -m venv "$VENV"
    fi
    stamp="$VENV/.cereal-install-stamp"
    want="$mode $(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
    if [[ "$mode" == latest || "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
        local -a pins=(-c constraints.txt)
        if [[ "$mode" == latest ]]; then
            echo "== installing the newest releases of cereal[embedded,test]'s dependencies into $VENV" >&2
            pins=(--upgrade --upgrade-strategy eager)
        else
            echo "== installing cereal[embedded,test] into $VENV (pinned by constraints.txt)" >&2
        fi
        # (the sed drops pip's notes about this machine's unused local package indexes)
        "$VENV/bin/pip" install -q "${pins[@]}" -e '.[embedded,test]' 2>&1 \
            | sed '/^WARNING: Location .* is ignored/d' >&2 \
            || { echo "!! pip install failed" >&2; exit 1; }
        echo "$want" > "$stamp"
    fi
}
