#!/usr/bin/env bash
# Install the npm packages of tests/aigne-client (the real `@aigne/aigne-hub` client, pinned with its
# lock file) with `npm ci`. Idempotent: does nothing when the installed tree matches the lock file.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/tests/aigne-client"
STAMP="$DIR/node_modules/.lock.sha256"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup-node: node and npm are required (Node 20 or newer)" >&2
  exit 1
fi

WANT="$({ node --version; cat "$DIR/package.json" "$DIR/package-lock.json"; } | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi

echo "setup-node: npm ci in $DIR" >&2
(cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error)
echo "$WANT" > "$STAMP"
