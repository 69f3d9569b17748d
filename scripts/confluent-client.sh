#!/usr/bin/env bash
# Builds clients/confluent: @confluentinc/kafka-javascript (librdkafka) for the Kafka adapter's
# tests and the bench's confluent variants. It is not a workspace: a plain `npm ci` never needs it.
#
#   bash scripts/confluent-client.sh          # build, or restore the cached build (seconds)
#   bash scripts/confluent-client.sh --check  # exit 0 when built and loadable, 1 otherwise
#
# The package is built from source (node-gyp compiles the librdkafka it vendors, about 2-3
# minutes on 2 CPUs), linked dynamically against the system's OpenSSL, zstd, SASL and curl
# (CKJS_LINKING=dynamic): its prebuilt binary download is not used. Needs python3, make, g++; the
# -dev packages of zstd, SASL and curl enable those features (installed with apt-get when
# missing and possible). The built node_modules is kept under
# ${EXACTLY_ONCE_CONFLUENT_CACHE:-~/.cache/exactly-once-confluent}/<key>, the key hashing the
# lockfile, the Node ABI and platform, and the optional libraries present: a second run copies it
# back.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=clients/confluent
module='@confluentinc/kafka-javascript'

loads() {
  (cd "$dir" && node -e "require('$module').KafkaJS.Kafka" 2>/dev/null)
}

if [[ "${1:-}" == "--check" ]]; then
  if [[ -d "$dir/node_modules/$module" ]] && loads; then exit 0; fi
  echo "clients/confluent is not built: run 'bash scripts/confluent-client.sh'" >&2
  exit 1
fi

optional_libs=(libzstd-dev libsasl2-dev libcurl4-openssl-dev)
missing=()
if command -v dpkg-query >/dev/null; then
  for p in "${optional_libs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
fi

key_input() {
  cat "$dir/package-lock.json"
  node -p 'process.versions.modules + " " + process.platform + " " + process.arch'
  if command -v dpkg-query >/dev/null; then
    for p in "${optional_libs[@]}"; do dpkg-query -W -f='${Package} ${Version} ${Status}\n' "$p" 2>/dev/null || true; done
  fi
}

started=$(date +%s)
cache_root=${EXACTLY_ONCE_CONFLUENT_CACHE:-$HOME/.cache/exactly-once-confluent}
key=$(key_input | sha256sum | cut -c1-16)
cache="$cache_root/$key"
stamp="$dir/node_modules/.eo-build-key"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$key" ]] && loads; then
  echo "confluent client: up to date ($key)"
  exit 0
fi

if [[ -f "$cache/complete" ]]; then
  rm -rf "$dir/node_modules"
  cp -a "$cache/node_modules" "$dir/node_modules"
  if loads; then
    echo "confluent client: restored from $cache in $(($(date +%s) - started)) s"
    exit 0
  fi
  echo "confluent client: the cached build does not load; building again" >&2
  rm -rf "$cache" "$dir/node_modules"
fi

for tool in python3 make g++; do
  command -v "$tool" >/dev/null || {
    echo "confluent client: '$tool' is needed to build $module from source" >&2
    exit 1
  }
done
if ((${#missing[@]} > 0)); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "confluent client: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
      echo "confluent client: apt-get failed; building without ${missing[*]}" >&2
    key=$(key_input | sha256sum | cut -c1-16)
    cache="$cache_root/$key"
  else
    echo "confluent client: building without ${missing[*]} (not installed)" >&2
  fi
fi

# The package's librdkafka step runs `make -j` with no limit; on a shared machine, a make that
# gives that -j a limit (the last -j wins) keeps the build to the CPUs there are. Other make
# calls stay as they are: node-gyp's own is serial, and its rules need it to be.
shim=$(mktemp -d)
trap 'rm -rf "$shim"' EXIT
real_make=$(command -v make)
cat >"$shim/make" <<SHIM
#!/bin/sh
for arg in "\$@"; do
  [ "\$arg" = -j ] && exec $real_make "\$@" -j$(nproc)
done
exec $real_make "\$@"
SHIM
chmod +x "$shim/make"

echo "confluent client: building $module from source (a few minutes)"
rm -rf "$dir/node_modules"
mkdir -p "$cache_root"
log="$cache_root/build.log"
(
  cd "$dir"
  PATH="$shim:$PATH" CKJS_LINKING=dynamic npm_config_build_from_source=true \
    nice -n 5 npm ci --no-audit --no-fund --foreground-scripts >"$log" 2>&1
) || {
  tail -40 "$log" >&2
  echo "confluent client: build failed (full log: $log)" >&2
  exit 1
}
loads || {
  echo "confluent client: built, but $module does not load" >&2
  exit 1
}
echo "$key" >"$stamp"
rm -rf "$cache.tmp"
mkdir -p "$cache.tmp"
cp -a "$dir/node_modules" "$cache.tmp/node_modules"
touch "$cache.tmp/complete"
rm -rf "$cache"
mv "$cache.tmp" "$cache"
echo "confluent client: built in $(($(date +%s) - started)) s, cached in $cache"
