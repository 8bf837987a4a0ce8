#!/usr/bin/env bash
# Create <repo>/.venv and install the Python test requirements (tests/e2e/requirements.txt).
# Idempotent: does nothing when the venv's stamp matches the requirements' hash.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQS=("$ROOT/tests/e2e/requirements.txt")
PYTHON="${PYTHON:-python3}"

hash_reqs() {
  { "$PYTHON" --version 2>&1; cat "${REQS[@]}"; } | sha256sum | cut -d' ' -f1
}

WANT="$(hash_reqs)"
STAMP="$VENV/.requirements.sha256"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup-python: creating $VENV" >&2
  if ! "$PYTHON" -m venv "$VENV"; then
    # Debian/Ubuntu system python needs python3-venv for ensurepip.
    if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
      rm -rf "$VENV"
      pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${pyver}-venv" || \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
      "$PYTHON" -m venv "$VENV"
    else
      echo "setup-python: '$PYTHON -m venv' failed (install python3-venv)" >&2
      exit 1
    fi
  fi
fi

echo "setup-python: installing requirements into $VENV" >&2
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip >/dev/null 2>&1 || true
for r in "${REQS[@]}"; do
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$r"
done
echo "$WANT" > "$STAMP"
