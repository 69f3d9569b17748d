#!/usr/bin/env bash
# Runs the RabbitMQ adapter's and the CLI's RabbitMQ suites with amqplib 2.x, the line
# `npm install amqplib` picks today (the workspace itself is pinned to 0.10, which OpenTelemetry's
# amqplib instrumentation needs). amqplib 2.x and amqp-connection-manager are installed once under
# ~/.cache/exactly-once-amqplib/<versions> (EXACTLY_ONCE_AMQPLIB_HOME) and linked into
# packages/rabbitmq/node_modules and packages/cli/node_modules for the run, so the adapter (through
# the connection manager it loads) and the CLI resolve amqplib 2.x while the tests' own raw clients
# keep the workspace's 0.10. The links are removed afterwards. Needs RabbitMQ and Redis up
# (scripts/infra.sh).
#
#   bash scripts/amqplib-2.sh               # the files below
#   bash scripts/amqplib-2.sh -- FILE...    # other test files (vitest filters)
set -euo pipefail
cd "$(dirname "$0")/.."

AMQPLIB=2.3.1
# The connection manager the adapter depends on (packages/rabbitmq/package.json).
MANAGER=$(node -p "require('./packages/rabbitmq/package.json').dependencies['amqp-connection-manager']")
HOME_DIR="${EXACTLY_ONCE_AMQPLIB_HOME:-$HOME/.cache/exactly-once-amqplib}/$AMQPLIB-$MANAGER"
# The adapter's unit suites and the integration files that exercise what amqplib does: consuming,
# acks, publishing with confirms and returns, copies it cannot encode, headers, lost connections
# and channels. (The crash matrix passes too, `-- test/rabbitmq/crash-matrix.test.ts`; it tests
# the ordering rule, not the client, and takes 3 minutes.)
FILES=(
  packages/rabbitmq/ test/rabbitmq/consumer.test.ts test/rabbitmq/publisher.test.ts
  test/rabbitmq/dead-letter-copies.test.ts test/rabbitmq/identity-headers.test.ts
  test/rabbitmq/recovery.test.ts test/rabbitmq/resilience.test.ts test/cli/dlq-rabbitmq.test.ts
)
if [[ ${1:-} == -- ]]; then
  shift
  FILES=("$@")
fi

if [[ ! -f $HOME_DIR/.complete ]]; then
  rm -rf "$HOME_DIR"
  mkdir -p "$HOME_DIR"
  echo '{"private":true}' >"$HOME_DIR/package.json"
  npm install --prefix "$HOME_DIR" --no-audit --no-fund --loglevel=error \
    "amqplib@$AMQPLIB" "amqp-connection-manager@$MANAGER" >/dev/null
  touch "$HOME_DIR/.complete"
fi

# package dir -> the packages linked into its node_modules for the run.
declare -A LINKED=([packages/rabbitmq]="amqplib amqp-connection-manager" [packages/cli]="amqplib")
made=()
cleanup() {
  for dir in "${!LINKED[@]}"; do
    for name in ${LINKED[$dir]}; do [[ -L $dir/node_modules/$name ]] && rm -f "$dir/node_modules/$name"; done
  done
  for dir in "${made[@]}"; do rmdir "$dir" 2>/dev/null || true; done
}
trap cleanup EXIT
for dir in "${!LINKED[@]}"; do
  if [[ ! -d $dir/node_modules ]]; then
    mkdir "$dir/node_modules"
    made+=("$dir/node_modules")
  fi
  for name in ${LINKED[$dir]}; do
    if [[ -e $dir/node_modules/$name && ! -L $dir/node_modules/$name ]]; then
      echo "amqplib-2: $dir/node_modules/$name exists and is not this script's link; not touching it" >&2
      exit 1
    fi
    ln -sfn "$HOME_DIR/node_modules/$name" "$dir/node_modules/$name"
  done
done

# What each will load: the adapter amqplib through its connection manager, the CLI amqplib itself.
# (amqplib 2.x exports no package.json: its version is read from the file.)
resolved=$(node -e '
  const { createRequire } = require("node:module");
  const { existsSync, readFileSync } = require("node:fs");
  const { dirname, join } = require("node:path");
  const from = (file) => createRequire(join(process.cwd(), file));
  const versionAt = (entry) => {
    let dir = dirname(entry);
    while (!existsSync(join(dir, "package.json"))) dir = dirname(dir);
    return JSON.parse(readFileSync(join(dir, "package.json"), "utf8")).version;
  };
  const manager = from("packages/rabbitmq/package.json").resolve("amqp-connection-manager");
  const adapter = versionAt(createRequire(manager).resolve("amqplib"));
  const cli = versionAt(from("packages/cli/package.json").resolve("amqplib"));
  console.log(adapter === cli ? adapter : `${adapter} (adapter) and ${cli} (cli)`);
')
if [[ $resolved != "$AMQPLIB" ]]; then
  echo "amqplib-2: the adapter and CLI would load amqplib $resolved, not $AMQPLIB" >&2
  exit 1
fi
echo "amqplib-2: the adapter and CLI load amqplib $resolved (amqp-connection-manager $MANAGER)"
npx vitest run "${FILES[@]}"
