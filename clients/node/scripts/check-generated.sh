#!/usr/bin/env bash
# Fails when src/gen/ is not what `npm run generate` makes from proto/ (and the google.rpc
# protos) today: regenerates into a temporary directory and compares.
set -euo pipefail
cd "$(dirname "$0")/.."

fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
./node_modules/.bin/buf generate --output "$fresh"
if ! diff -r src/gen "$fresh/src/gen"; then
  echo "src/gen/ is stale: run 'npm run generate' in clients/node and commit the result" >&2
  exit 1
fi
echo "src/gen/ matches proto/"
