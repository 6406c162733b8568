#!/usr/bin/env bash
# CI for the Node client (clients/node): install exactly the lockfile, check that the
# generated code matches proto/, typecheck and build, then run the tests against a real
# `oubli serve`. Needs node >= 20, npm, openssl (the TLS tests issue a throwaway CA) and
# the repository's .venv/bin/oubli (or OUBLI_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> clients/node: %s\n' "$*"; }

export OUBLI_BIN="${OUBLI_BIN:-$(cd ../.. && pwd)/.venv/bin/oubli}"
if [ ! -x "$OUBLI_BIN" ]; then
  echo "no oubli binary at $OUBLI_BIN: create the repository's .venv first (or set OUBLI_BIN)" >&2
  exit 1
fi

step "npm ci (node $(node --version), npm $(npm --version))"
npm ci --no-audit --no-fund

step "generated code against proto/"
npm run --silent check-generated

step "typecheck (src and test) and build"
npm run --silent typecheck
npm run --silent build

step "tests (node --test, against $OUBLI_BIN)"
npm test
