#!/usr/bin/env bash
# The README's first command. Starts the local servers and, once the three-service demo
# (examples/three-services) is present, runs it end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/infra.sh up
if [[ -f examples/three-services/package.json ]]; then
  npm run --workspace @exactly-once-examples/three-services demo -- "$@"
else
  bash scripts/infra.sh status
  echo
  echo "The servers are up. The three-service demo (A -> B -> C) is not part of this version yet;"
  echo "run 'npm run verify' to see the SDK's guarantees tested against these servers."
fi
