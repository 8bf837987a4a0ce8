#!/usr/bin/env bash
# Install the npm packages the tests need, each tree with `npm ci` from its lock file:
#   - <repo> (the npm workspace js/*: @napi-rs/cli, typescript, the openai SDK for js/native's tests);
#   - tests/aigne-client (the real `@aigne/aigne-hub` client, pinned).
# Idempotent: does nothing for a tree whose installed state matches its lock file.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup-node: node and npm are required (Node 20.17 or newer)" >&2
  exit 1
fi

for DIR in "$ROOT" "$ROOT/tests/aigne-client"; do
  STAMP="$DIR/node_modules/.lock.sha256"
  WANT="$({ node --version; cat "$DIR/package.json" "$DIR/package-lock.json"; } | sha256sum | cut -d' ' -f1)"
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    continue
  fi
  echo "setup-node: npm ci in $DIR" >&2
  (cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$WANT" > "$STAMP"
done
