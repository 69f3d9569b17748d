#!/usr/bin/env bash
# Runs one scenario example (examples/scenarios/<name>) against the local servers, starting them
# first: `npm run scenario -- s1-payment-api`. Without a name, lists the scenarios.
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:-}"
if [[ -z $name || ! -f examples/scenarios/$name/main.ts ]]; then
  echo "usage: npm run scenario -- <name>   (one of:"
  for dir in examples/scenarios/*/; do [[ -f $dir/main.ts ]] && echo "  $(basename "$dir")"; done
  echo ")"
  [[ -z $name ]] && exit 0 || exit 2
fi
shift
bash scripts/infra.sh up
exec node --import tsx --conditions=@exactly-once/source "examples/scenarios/$name/main.ts" "$@"
