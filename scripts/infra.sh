#!/usr/bin/env bash
# Real servers on 127.0.0.1 for tests and the demo: Redis (standalone and a 3-master cluster),
# RabbitMQ, Apache Kafka (KRaft), FerretDB (MongoDB wire protocol, SQLite), mongo-java-server
# (MongoDB wire protocol, H2), Jaeger v2 and Zipkin (trace UI).
#
#   scripts/infra.sh up [service...]       install what is missing, start, wait until healthy
#   scripts/infra.sh down [service...]     stop what this script started (by recorded PID)
#   scripts/infra.sh status                health, ports and version of each server
#   scripts/infra.sh logs <service>        tail a server's log
#   scripts/infra.sh install [service...]  only install/build what is missing (nothing started)
#   scripts/infra.sh install chromium      headless Chromium (apt) for the trace UI test; never by default
#   scripts/infra.sh prune                 start Kafka's data afresh once it holds more than
#                                          EO_KAFKA_MAX_PARTITIONS (default 3000) partitions
#
# Services: redis redis-cluster rabbitmq kafka ferretdb mongo-java jaeger zipkin (default: all).
#
# Everything lives under $EXACTLY_ONCE_INFRA_HOME (default ~/.cache/exactly-once-infra):
#   bin/ built binaries, build/ Go build modules, kafka-<version>/ Maven-fetched jars,
#   mongo-java-server-<version>/ Maven-fetched jars and the compiled launcher (scripts/mongo-java),
#   zipkin-<version>/ the Maven-fetched Zipkin server jar,
#   data/<service>/ server data and generated configs, run/<name>.pid, logs/<service>.log.
# Nothing is written into the repository. The first `up` on a fresh machine installs Redis,
# RabbitMQ and the Spin model checker with apt, fetches Kafka, mongo-java-server and Zipkin from Maven Central and builds FerretDB and
# Jaeger from the Go module proxy (minutes); later runs reuse all of it, and `up` is a no-op when all are healthy.
#
# Versions can be overridden: EO_KAFKA_VERSION (4.x or 3.x), EO_FERRETDB_VERSION,
# EO_MONGO_JAVA_VERSION, EO_JAEGER_VERSION, EO_ZIPKIN_VERSION; EO_HEALTH_TIMEOUT (seconds a server may take to become healthy).
set -euo pipefail

KAFKA_VERSION="${EO_KAFKA_VERSION:-4.1.1}"
FERRETDB_VERSION="${EO_FERRETDB_VERSION:-v1.24.2}"
JAEGER_VERSION="${EO_JAEGER_VERSION:-v1.76.0}" # Go module version of Jaeger v2 (cmd/jaeger)
MONGO_JAVA_VERSION="${EO_MONGO_JAVA_VERSION:-1.47.0}" # de.bwaldvogel:mongo-java-server
ZIPKIN_VERSION="${EO_ZIPKIN_VERSION:-3.5.1}" # io.zipkin:zipkin-server, the exec jar (server + Lens UI)
HEALTH_TIMEOUT="${EO_HEALTH_TIMEOUT:-120}"

LOG4J_VERSION=2.24.3  # Kafka 4.x logs through log4j2 ...
SLF4J_VERSION=2.0.17  # ... and needs the slf4j 2 API for log4j-slf4j2-impl
RELOAD4J_VERSION=1.2.25 SLF4J1_VERSION=1.7.36 # Kafka 3.x: log4j 1 API via reload4j
RABBIT_NODE="exactlyonce@localhost"
CLUSTER_PORTS=(7001 7002 7003)
ALL_SERVICES=(redis redis-cluster rabbitmq kafka ferretdb mongo-java jaeger zipkin)
# Not servers: only `install` takes them, and only when named (a test that needs one asks for it).
TOOLS=(chromium)
MONGO_JAVA_PORT=27018
ZIPKIN_PORT=9411
MAVEN_DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

ROOT="${EXACTLY_ONCE_INFRA_HOME:-$HOME/.cache/exactly-once-infra}"
BIN="$ROOT/bin" BUILD="$ROOT/build" DATA="$ROOT/data" RUN="$ROOT/run" LOGS="$ROOT/logs"
KAFKA_HOME="$ROOT/kafka-$KAFKA_VERSION"
MONGO_JAVA_HOME="$ROOT/mongo-java-server-$MONGO_JAVA_VERSION"
ZIPKIN_JAR="$ROOT/zipkin-$ZIPKIN_VERSION/zipkin-server-$ZIPKIN_VERSION-exec.jar"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$BIN" "$BUILD" "$DATA" "$RUN" "$LOGS"

# ---------------------------------------------------------------- helpers
T0=$EPOCHREALTIME
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1fs", b - a }'; }
say() { printf '[infra %6s] %s\n' "$(elapsed "$T0")" "$*"; }
die() { printf '[infra] ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
need() { have "$1" || die "$1 is required: $2"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pid_of() { [[ -f "$RUN/$1.pid" ]] && cat "$RUN/$1.pid"; }
pid_alive() { local pid; pid=$(pid_of "$1") && [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; }

# http_get <url> [user:password]: prints the body of a 2xx answer, fails otherwise. curl when
# present, else Node's fetch.
http_get() {
  if have curl; then
    curl -fsS -m 5 ${2:+-u "$2"} "$1"
  else
    # shellcheck disable=SC2016 # JavaScript, not shell
    node -e '
      const [url, auth] = process.argv.slice(1);
      const headers = auth ? { authorization: `Basic ${Buffer.from(auth).toString("base64")}` } : {};
      fetch(url, { headers, signal: AbortSignal.timeout(5000) })
        .then(async (r) => { if (!r.ok) process.exit(1); process.stdout.write(await r.text()); })
        .catch(() => process.exit(1));' "$1" "${2:-}"
  fi
}
http_ok() { http_get "$@" >/dev/null; }

# Starts a long-running command in its own session with output appended to its log and
# records its PID. fd 9 (the lock) is not passed on, so a server never holds the lock. Servers run
# in $ROOT, never in the caller's directory: a server whose working directory is deleted (a test
# checkout removed after it restarted one) breaks in odd ways (RabbitMQ's management API: 500).
spawn() {
  local name=$1 log=$2
  shift 2
  (cd "$ROOT" && exec setsid nohup "$@" >>"$log" 2>&1 </dev/null 9>&-) &
  echo $! >"$RUN/$name.pid"
}

stop_pid() {
  local name=$1 pid
  pid=$(pid_of "$name") || return 0
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$RUN/$name.pid"
}

# Per-service bookkeeping for `up`: when its start began and whether it was already running.
declare -A STARTED_AT=() WAS_RUNNING=()

# wait_until <service> <log> <check...>: polls the check; on timeout prints the log tail and fails.
wait_until() {
  local name=$1 log=$2
  shift 2
  local deadline=$((SECONDS + HEALTH_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "---- last lines of $log" >&2
      tail -n 40 "$log" >&2 2>/dev/null || true
      die "$name is not healthy after ${HEALTH_TIMEOUT}s (full log: $log)"
    fi
    sleep 0.25
  done
}
# wait_healthy: the same, then one progress line for the service.
wait_healthy() {
  wait_until "$@"
  if [[ -n ${WAS_RUNNING[$1]:-} ]]; then
    say "$(printf '%-13s healthy (already running)' "$1")"
  else
    say "$(printf '%-13s healthy, started in %s' "$1" "$(elapsed "${STARTED_AT[$1]:-$T0}")")"
  fi
}

# Decides what `up` does for a service: 0 = start it, 1 = leave it (healthy, or its recorded
# process is still booting and only needs waiting for). Fails if a foreign process has the port.
should_start() {
  local name=$1 check=$2 port=$3
  STARTED_AT[$name]=$EPOCHREALTIME
  if $check >/dev/null 2>&1; then
    WAS_RUNNING[$name]=1
    return 1
  fi
  if pid_alive "$name"; then
    say "$name: process $(pid_of "$name") is running but not healthy yet; waiting for it"
    return 1
  fi
  if port_open "$port"; then
    die "port $port is taken by a process this script did not start (see: ss -ltnp)"
  fi
  say "$name: starting"
  return 0
}

# ---------------------------------------------------------------- installs
# apt packages for the requested services, in one `apt-get update` + `install`.
install_apt() {
  local pkgs=() missing=() s
  for s in "$@"; do
    case $s in
      redis | redis-cluster) pkgs+=(redis-server redis-tools) ;;
      rabbitmq) pkgs+=(rabbitmq-server) ;;
      kafka)
        have java || pkgs+=(openjdk-17-jre-headless)
        have mvn || pkgs+=(maven)
        ;;
      mongo-java)
        have java || pkgs+=(openjdk-17-jre-headless)
        have javac || pkgs+=(openjdk-17-jdk-headless) # compiles the launcher, scripts/mongo-java
        have mvn || pkgs+=(maven)
        ;;
      zipkin)
        have java || pkgs+=(openjdk-17-jre-headless)
        have mvn || pkgs+=(maven)
        ;;
      # Headless Chromium renders Zipkin's trace page in test/demo/trace-ui.test.ts (about 300 MB
      # installed, so only on `install chromium`, which that test runs when it is missing).
      chromium) have chromium || pkgs+=(chromium) ;;
    esac
  done
  # The model checker of model/ (test/model/spin.test.ts), and a C compiler for its verifiers.
  pkgs+=(spin)
  have cc || pkgs+=(gcc)
  # (`dpkg -s` also succeeds for a package that was removed but not purged.)
  # shellcheck disable=SC2016 # dpkg-query's format, not shell
  for s in "${pkgs[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$s" 2>/dev/null) == 'install ok installed' ]] || missing+=("$s")
  done
  ((${#missing[@]} == 0)) && return 0
  ((EUID == 0)) || die "apt packages missing (${missing[*]}); run as root or install them"
  say "apt-get install ${missing[*]}"
  # Debian's postinst would start the system-wide services; we run our own instances instead.
  local guard=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    guard=1
  fi
  local rc=0
  {
    apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  } >>"$LOGS/apt.log" 2>&1 9>&- || rc=$?
  [[ -n $guard ]] && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || { tail -n 20 "$LOGS/apt.log" >&2; die "apt-get failed (log: $LOGS/apt.log)"; }
}

install_kafka() {
  [[ -f "$KAFKA_HOME/libs/.complete" ]] && return 0
  need java "Kafka runs on Java 17+"
  need mvn "Maven fetches the Kafka jars from Maven Central"
  say "kafka: fetching Kafka $KAFKA_VERSION jars from Maven Central (first run only)"
  mkdir -p "$KAFKA_HOME"
  local logging
  if [[ $KAFKA_VERSION == 3.* ]]; then
    logging="
    <dependency><groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId><version>$RELOAD4J_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>$SLF4J1_VERSION</version></dependency>"
  else
    # Kafka pulls slf4j-api 1.7; log4j's slf4j2 binding needs the 2.x API, or nothing is logged.
    logging="
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>"
  fi
  cat >"$KAFKA_HOME/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local</groupId><artifactId>kafka-broker</artifactId><version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>$logging
  </dependencies>
</project>
POM
  rm -rf "$KAFKA_HOME/libs"
  (cd "$KAFKA_HOME" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=libs -DincludeScope=runtime) \
    >>"$LOGS/kafka-build.log" 2>&1 9>&- || die "Maven could not fetch Kafka (log: $LOGS/kafka-build.log)"
  touch "$KAFKA_HOME/libs/.complete"
}

# mongo-java-server has no main class: the jars come from Maven Central (H2 backend, slf4j-simple
# for its log), and scripts/mongo-java/Main.java is compiled next to them, again when it changes.
install_mongo_java() {
  local log="$LOGS/mongo-java-build.log" src="$REPO/scripts/mongo-java/Main.java"
  if [[ ! -f "$MONGO_JAVA_HOME/libs/.complete" ]]; then
    need java "mongo-java-server runs on Java 17+"
    need mvn "Maven fetches the mongo-java-server jars from Maven Central"
    say "mongo-java: fetching mongo-java-server $MONGO_JAVA_VERSION jars from Maven Central (first run only)"
    mkdir -p "$MONGO_JAVA_HOME"
    cat >"$MONGO_JAVA_HOME/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local</groupId><artifactId>mongo-java-server</artifactId><version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>de.bwaldvogel</groupId><artifactId>mongo-java-server-h2-backend</artifactId><version>$MONGO_JAVA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId><version>$SLF4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
    rm -rf "$MONGO_JAVA_HOME/libs"
    (cd "$MONGO_JAVA_HOME" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=libs -DincludeScope=runtime) \
      >>"$log" 2>&1 9>&- || die "Maven could not fetch mongo-java-server (log: $log)"
    touch "$MONGO_JAVA_HOME/libs/.complete"
  fi
  cmp -s "$src" "$MONGO_JAVA_HOME/classes/Main.java" && return 0
  need javac "the mongo-java-server launcher is compiled with the JDK (openjdk-17-jdk-headless)"
  say "mongo-java: compiling the launcher (scripts/mongo-java/Main.java)"
  rm -rf "$MONGO_JAVA_HOME/classes"
  javac -d "$MONGO_JAVA_HOME/classes" -cp "$MONGO_JAVA_HOME/libs/*" "$src" >>"$log" 2>&1 9>&- ||
    die "javac failed on $src (log: $log)"
  cp "$src" "$MONGO_JAVA_HOME/classes/Main.java"
}

# One self-contained jar (Spring Boot: the server, its in-memory storage and the Lens UI).
install_zipkin() {
  [[ -f $ZIPKIN_JAR ]] && return 0
  need java "Zipkin runs on Java 17+"
  need mvn "Maven fetches the Zipkin server jar from Maven Central"
  say "zipkin: fetching zipkin-server $ZIPKIN_VERSION from Maven Central (first run only)"
  local log="$LOGS/zipkin-build.log" dir
  dir=$(dirname "$ZIPKIN_JAR")
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  (cd "$dir.tmp" && mvn -q -B "$MAVEN_DEPENDENCY_PLUGIN:copy" \
    -Dartifact="io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec" -DoutputDirectory=.) \
    >>"$log" 2>&1 9>&- || die "Maven could not fetch zipkin-server (log: $log)"
  [[ -f "$dir.tmp/$(basename "$ZIPKIN_JAR")" ]] || die "zipkin-server jar missing after the download (log: $log)"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

install_ferretdb() {
  [[ -x "$BIN/ferretdb-$FERRETDB_VERSION" ]] && return 0
  need go "FerretDB is built from the Go module proxy"
  say "ferretdb: building FerretDB $FERRETDB_VERSION (first run only, a few minutes)"
  local log="$LOGS/ferretdb-build.log" src="$BUILD/ferretdb-$FERRETDB_VERSION" dir
  # FerretDB embeds build/version/version.txt, which its module zip lacks (a binary built with
  # `go install`/`go get -tool` panics at start), so build a copy of the module with that file.
  dir=$(cd "$BUILD" && go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" 2>>"$log" |
    sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [[ -n $dir && -d $dir ]] || die "could not download FerretDB $FERRETDB_VERSION (log: $log)"
  rm -rf "$src" && cp -r "$dir" "$src" && chmod -R u+w "$src"
  echo "$FERRETDB_VERSION" >"$src/build/version/version.txt"
  (cd "$src" && go build -o "$BIN/ferretdb-$FERRETDB_VERSION.tmp" ./cmd/ferretdb) >>"$log" 2>&1 9>&- ||
    die "FerretDB build failed (log: $log)"
  mv "$BIN/ferretdb-$FERRETDB_VERSION.tmp" "$BIN/ferretdb-$FERRETDB_VERSION"
}

install_jaeger() {
  [[ -x "$BIN/jaeger-$JAEGER_VERSION" ]] && return 0
  need go "Jaeger is built from the Go module proxy"
  say "jaeger: building Jaeger v2 (module $JAEGER_VERSION; first run only, several minutes)"
  local log="$LOGS/jaeger-build.log" mod="$BUILD/jaeger-tool"
  # `go install module@version` refuses modules with replace directives; a tool dependency of a
  # small wrapper module builds it with the versions Jaeger pins.
  mkdir -p "$mod"
  [[ -f "$mod/go.mod" ]] || printf 'module local/jaeger-tool\n\ngo 1.24\n' >"$mod/go.mod"
  (cd "$mod" && go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" &&
    go build -o "$BIN/jaeger-$JAEGER_VERSION.tmp" github.com/jaegertracing/jaeger/cmd/jaeger) \
    >>"$log" 2>&1 9>&- || die "Jaeger build failed (log: $log)"
  mv "$BIN/jaeger-$JAEGER_VERSION.tmp" "$BIN/jaeger-$JAEGER_VERSION"
}

install_service() {
  case $1 in
    kafka) install_kafka ;;
    ferretdb) install_ferretdb ;;
    mongo-java) install_mongo_java ;;
    jaeger) install_jaeger ;;
    zipkin) install_zipkin ;;
  esac
}

# ---------------------------------------------------------------- redis
redis_healthy() { [[ "$(redis-cli -p 6379 ping 2>/dev/null)" == PONG ]]; }
redis_version() { redis-cli -p "${1:-6379}" info server 2>/dev/null | sed -n 's/^redis_version:\(.*\)\r$/\1/p'; }
start_redis() {
  should_start redis redis_healthy 6379 || return 0
  mkdir -p "$DATA/redis"
  # appendfsync everysec: a crash of the server may lose about one second of writes.
  spawn redis "$LOGS/redis.log" redis-server --bind 127.0.0.1 --port 6379 --dir "$DATA/redis" \
    --daemonize no --logfile "$LOGS/redis.log" --save "" --appendonly yes --appendfsync everysec \
    --maxmemory-policy noeviction
}

cluster_healthy() { redis-cli -p "${CLUSTER_PORTS[0]}" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; }
cluster_nodes_up() {
  local port
  for port in "${CLUSTER_PORTS[@]}"; do [[ "$(redis-cli -p "$port" ping 2>/dev/null)" == PONG ]] || return 1; done
}
start_redis_cluster() {
  STARTED_AT[redis-cluster]=$EPOCHREALTIME
  if cluster_healthy; then
    WAS_RUNNING[redis-cluster]=1
    return 0
  fi
  local port
  for port in "${CLUSTER_PORTS[@]}"; do
    [[ "$(redis-cli -p "$port" ping 2>/dev/null)" == PONG ]] && continue
    pid_alive "redis-cluster-$port" && continue
    port_open "$port" && die "port $port is taken by a process this script did not start"
    mkdir -p "$DATA/redis-cluster/$port"
    spawn "redis-cluster-$port" "$LOGS/redis-cluster.log" redis-server --bind 127.0.0.1 --port "$port" \
      --cluster-enabled yes --cluster-config-file "$DATA/redis-cluster/$port/nodes.conf" \
      --dir "$DATA/redis-cluster/$port" --daemonize no --logfile "$LOGS/redis-cluster.log" --save "" \
      --appendonly yes --appendfsync everysec --maxmemory-policy noeviction
  done
  say "redis-cluster: starting"
}
# The cluster is created once; afterwards each node's nodes.conf restores it on restart.
finish_redis_cluster() {
  wait_until redis-cluster "$LOGS/redis-cluster.log" cluster_nodes_up
  if ! redis-cli -p "${CLUSTER_PORTS[0]}" cluster info 2>/dev/null | grep -q '^cluster_slots_assigned:16384'; then
    local nodes=() port
    for port in "${CLUSTER_PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
    say "redis-cluster: creating the cluster (${nodes[*]})"
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >>"$LOGS/redis-cluster.log" 2>&1 ||
      die "redis-cli --cluster create failed (log: $LOGS/redis-cluster.log; to start over: down redis-cluster, remove $DATA/redis-cluster)"
  fi
  wait_healthy redis-cluster "$LOGS/redis-cluster.log" cluster_healthy
}

# ---------------------------------------------------------------- rabbitmq
# Our own node (not the system service), its files under data/rabbitmq, every port on loopback.
rabbit_env() {
  local loopback='-kernel inet_dist_use_interface {127,0,0,1}'
  export RABBITMQ_NODENAME="$RABBIT_NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=5672
  export RABBITMQ_DIST_PORT=25672 ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$loopback" RABBITMQ_CTL_ERL_ARGS="$loopback"
  export RABBITMQ_MNESIA_BASE="$DATA/rabbitmq/mnesia" RABBITMQ_LOG_BASE="$LOGS/rabbitmq-server"
  export RABBITMQ_CONFIG_FILE="$DATA/rabbitmq/rabbitmq.conf"
  export RABBITMQ_ADVANCED_CONFIG_FILE="$DATA/rabbitmq/advanced.config"
  export RABBITMQ_ENABLED_PLUGINS_FILE="$DATA/rabbitmq/enabled_plugins"
  export RABBITMQ_PID_FILE="$RUN/rabbitmq-beam.pid"
}
rabbitmqctl_() (
  rabbit_env
  exec 9>&-
  /usr/lib/rabbitmq/bin/rabbitmqctl -n "$RABBIT_NODE" "$@"
)
# A real AMQP 0-9-1 handshake: the server answers the protocol header with a method frame
# (type 1, Connection.Start); plus the management API.
amqp_handshake() (
  exec 3<>/dev/tcp/127.0.0.1/5672 || exit 1
  printf 'AMQP\x00\x00\x09\x01' >&3
  [[ "$(timeout 3 head -c 1 <&3 | od -An -tx1 | tr -d ' \n')" == 01 ]]
)
rabbit_healthy() { amqp_handshake 2>/dev/null && http_ok http://127.0.0.1:15672/api/overview guest:guest; }
rabbit_version() {
  http_get http://127.0.0.1:15672/api/overview guest:guest 2>/dev/null |
    sed -n 's/.*"rabbitmq_version":"\([^"]*\)".*/\1/p'
}
start_rabbitmq() {
  should_start rabbitmq rabbit_healthy 5672 || return 0
  mkdir -p "$DATA/rabbitmq" "$LOGS/rabbitmq-server"
  cat >"$DATA/rabbitmq/rabbitmq.conf" <<'CONF'
listeners.tcp.default = 127.0.0.1:5672
management.tcp.ip = 127.0.0.1
management.tcp.port = 15672
loopback_users.guest = true
vm_memory_high_watermark.relative = 0.2
disk_free_limit.absolute = 200MB
CONF
  echo '[rabbitmq_management].' >"$DATA/rabbitmq/enabled_plugins"
  echo '[].' >"$DATA/rabbitmq/advanced.config"
  # Erlang starts epmd on demand and it outlives the node: if none runs now, the one that
  # appears is ours to stop on `down` (its PID is recorded once the node is up).
  if pgrep -x epmd >/dev/null; then rm -f "$RUN/epmd.ours"; else touch "$RUN/epmd.ours"; fi
  (
    rabbit_env
    spawn rabbitmq "$LOGS/rabbitmq.log" /usr/lib/rabbitmq/bin/rabbitmq-server
  )
}
finish_rabbitmq() {
  wait_healthy rabbitmq "$LOGS/rabbitmq.log" rabbit_healthy
  if [[ -f "$RUN/epmd.ours" ]]; then
    pgrep -x -n epmd >"$RUN/epmd.pid" || rm -f "$RUN/epmd.pid"
    rm -f "$RUN/epmd.ours"
  fi
}

# ---------------------------------------------------------------- kafka
# A real Kafka protocol round trip: ApiVersions v0 (correlation id 1) must answer error code 0.
kafka_api_versions() (
  exec 3<>/dev/tcp/127.0.0.1/9092 || exit 1
  printf '\x00\x00\x00\x0c\x00\x12\x00\x00\x00\x00\x00\x01\x00\x02eo' >&3
  [[ "$(timeout 3 head -c 10 <&3 | od -An -tx1 | tr -d ' \n' | cut -c9-)" == 000000010000 ]]
)
kafka_healthy() { grep -q 'Kafka Server started' "$LOGS/kafka.log" 2>/dev/null && kafka_api_versions 2>/dev/null; }
# The version of the running broker, from its classpath (kafka-<version>/libs).
kafka_version() {
  local pid
  pid=$(pid_of kafka) || return 0
  ps -o args= -p "$pid" 2>/dev/null | sed -n 's|.*/kafka-\([^/ ]*\)/libs.*|\1 (KRaft)|p'
}
start_kafka() {
  should_start kafka kafka_healthy 9092 || return 0
  local dir="$DATA/kafka" cp="$KAFKA_HOME/libs/*" logging
  mkdir -p "$dir"
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:9093
listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093
advertised.listeners=PLAINTEXT://127.0.0.1:9092
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/logs
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.flush.interval.messages=1
PROPS
  # Warnings and up, plus the "Kafka Server started" line the health check looks for.
  if [[ $KAFKA_VERSION == 3.* ]]; then
    cat >"$dir/log4j.properties" <<'L4J'
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
L4J
    logging="-Dlog4j.configuration=file:$dir/log4j.properties"
  else
    cat >"$dir/log4j2.properties" <<'L4J'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
L4J
    logging="-Dlog4j2.configurationFile=$dir/log4j2.properties"
  fi
  [[ -f "$LOGS/kafka.log" ]] && mv "$LOGS/kafka.log" "$LOGS/kafka.log.1"
  if [[ ! -f "$dir/logs/meta.properties" ]]; then
    local cluster_id
    cluster_id=$(java -cp "$cp" "$logging" kafka.tools.StorageTool random-uuid 2>>"$LOGS/kafka.log" | tail -n1)
    java -cp "$cp" "$logging" kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
      >>"$LOGS/kafka.log" 2>&1 || die "Kafka storage format failed (log: $LOGS/kafka.log)"
  fi
  spawn kafka "$LOGS/kafka.log" java -Xms512m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true "$logging" \
    -cp "$cp" kafka.Kafka "$dir/server.properties"
}

# ---------------------------------------------------------------- ferretdb
ferretdb_bin() { echo "$BIN/ferretdb-$FERRETDB_VERSION"; }
ferretdb_healthy() { node "$REPO/scripts/health/mongo-ping.mjs" 127.0.0.1:27017 >/dev/null; }
ferretdb_version() {
  local wire
  wire=$(node "$REPO/scripts/health/mongo-ping.mjs" 127.0.0.1:27017 2>/dev/null) || return 0
  local pid bin
  pid=$(pid_of ferretdb) && bin=$(ps -o args= -p "$pid" 2>/dev/null | sed -n 's|^[^ ]*/ferretdb-\([^ ]*\) .*|\1|p')
  echo "${bin:-?} (MongoDB wire $wire, SQLite)"
}
start_ferretdb() {
  should_start ferretdb ferretdb_healthy 27017 || return 0
  mkdir -p "$DATA/ferretdb/sqlite" "$DATA/ferretdb/state"
  spawn ferretdb "$LOGS/ferretdb.log" "$(ferretdb_bin)" --listen-addr=127.0.0.1:27017 --handler=sqlite \
    --sqlite-url="file:$DATA/ferretdb/sqlite/" --state-dir="$DATA/ferretdb/state" \
    --debug-addr=127.0.0.1:8088 --telemetry=disable --log-level=warn
}

# ---------------------------------------------------------------- mongo-java
mongo_java_healthy() { node "$REPO/scripts/health/mongo-ping.mjs" "127.0.0.1:$MONGO_JAVA_PORT" >/dev/null; }
mongo_java_version() {
  local wire
  wire=$(node "$REPO/scripts/health/mongo-ping.mjs" "127.0.0.1:$MONGO_JAVA_PORT" 2>/dev/null) || return 0
  local pid home
  pid=$(pid_of mongo-java) &&
    home=$(ps -o args= -p "$pid" 2>/dev/null | sed -n 's|.*/mongo-java-server-\([^/ ]*\)/classes.*|\1|p')
  echo "${home:-?} (MongoDB wire $wire, H2)"
}
start_mongo_java() {
  should_start mongo-java mongo_java_healthy "$MONGO_JAVA_PORT" || return 0
  mkdir -p "$DATA/mongo-java"
  # Data in one H2 MVStore file, kept across restarts like FerretDB's SQLite files. Its log:
  # warnings and up (at info it logs every connection).
  spawn mongo-java "$LOGS/mongo-java.log" java -Xms64m -Xmx1g -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -Dorg.slf4j.simpleLogger.showDateTime=true \
    -cp "$MONGO_JAVA_HOME/classes:$MONGO_JAVA_HOME/libs/*" Main 127.0.0.1 "$MONGO_JAVA_PORT" \
    "$DATA/mongo-java/mongo.mv"
}

# ---------------------------------------------------------------- jaeger
jaeger_healthy() { http_ok http://127.0.0.1:16686/api/services && port_open 4318 && port_open 4317; }
jaeger_version() {
  local pid
  pid=$(pid_of jaeger) || return 0
  ps -o args= -p "$pid" 2>/dev/null | sed -n 's|^[^ ]*/jaeger-\([^ ]*\) .*|v2 (module \1)|p'
}
start_jaeger() {
  should_start jaeger jaeger_healthy 16686 || return 0
  mkdir -p "$DATA/jaeger"
  # In-memory storage; OTLP in on 4317 (gRPC) and 4318 (HTTP); query UI/API on 16686 (HTTP) and
  # 16685 (gRPC); health on 13133. Internal metrics and self-tracing are off: nothing else listens
  # and nothing is sent anywhere.
  cat >"$DATA/jaeger/config.yaml" <<'YAML'
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: warn
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:13133
  jaeger_query:
    # Jaeger would otherwise trace its own query API into itself (health checks included).
    enable_tracing: false
    storage:
      traces: memstore
    grpc:
      endpoint: 127.0.0.1:16685
    http:
      endpoint: 127.0.0.1:16686
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 200000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:4317
      http:
        endpoint: 127.0.0.1:4318
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
YAML
  spawn jaeger "$LOGS/jaeger.log" "$BIN/jaeger-$JAEGER_VERSION" --config "$DATA/jaeger/config.yaml"
}

# ---------------------------------------------------------------- zipkin
# Zipkin takes spans on POST /api/v2/spans (the demo's services export there besides Jaeger) and
# serves its UI on /zipkin/ (a trace: /zipkin/traces/<trace id>), both on port 9411.
zipkin_healthy() { [[ $(http_get "http://127.0.0.1:$ZIPKIN_PORT/health") == *'"UP"'* ]]; }
zipkin_version() {
  http_get "http://127.0.0.1:$ZIPKIN_PORT/info" 2>/dev/null |
    sed -n 's/.*"version" *: *"\([^"]*\)".*/\1 (in-memory)/p'
}
start_zipkin() {
  should_start zipkin zipkin_healthy "$ZIPKIN_PORT" || return 0
  # In-memory storage (the oldest traces go past MEM_MAX_SPANS), no self-tracing, and on loopback
  # only: a list entry given on the command line replaces the whole default entry, port included.
  # C1 only and the serial GC: it starts in seconds and stays small on a busy machine.
  # Its Brotli library unpacks a native copy of itself into a new directory of java.io.tmpdir at
  # each start: one of the state's, emptied first, rather than one more in /tmp every time.
  rm -rf "$DATA/zipkin-tmp" && mkdir -p "$DATA/zipkin-tmp"
  spawn zipkin "$LOGS/zipkin.log" env STORAGE_TYPE=mem MEM_MAX_SPANS=100000 SELF_TRACING_ENABLED=false \
    java -Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    "-Djava.io.tmpdir=$DATA/zipkin-tmp" \
    -jar "$ZIPKIN_JAR" '--armeria.ports[0].ip=127.0.0.1' "--armeria.ports[0].port=$ZIPKIN_PORT" \
    '--armeria.ports[0].protocols=http'
}

# ---------------------------------------------------------------- commands
SERVICES=()
parse_services() {
  local s known
  SERVICES=("$@")
  ((${#SERVICES[@]})) || SERVICES=("${ALL_SERVICES[@]}")
  for s in "${SERVICES[@]}"; do
    known=""
    for k in "${ALL_SERVICES[@]}"; do [[ $s == "$k" ]] && known=1; done
    [[ -n $known ]] || die "unknown service '$s' (services: ${ALL_SERVICES[*]})"
  done
}
wants() {
  local s
  for s in "${SERVICES[@]}"; do [[ $s == "$1" ]] && return 0; done
  return 1
}

# One `up`/`down`/`install` at a time (several test runs may call `up` at once); servers are
# started with this descriptor closed, so the lock ends with the command.
take_lock() {
  exec 9>"$RUN/.lock"
  if ! flock -n 9; then
    say "waiting for another infra.sh to finish"
    flock 9
  fi
}

cmd_install() {
  local args=() tools=() s t
  for s in "$@"; do
    for t in "${TOOLS[@]}"; do [[ $s == "$t" ]] && tools+=("$s") && continue 2; done
    args+=("$s")
  done
  # `install chromium` alone installs only that; no service name at all means every service.
  if ((${#tools[@]} > 0 && ${#args[@]} == 0)); then SERVICES=(); else parse_services "${args[@]}"; fi
  take_lock
  install_apt "${SERVICES[@]}" "${tools[@]}"
  for s in "${SERVICES[@]}"; do install_service "$s"; done
  say "installed: $(echo "${SERVICES[@]}" "${tools[@]}")"
}

cmd_up() {
  parse_services "$@"
  take_lock
  install_apt "${SERVICES[@]}"
  # The slow starters (RabbitMQ, Kafka) first, so they boot while the rest are built and started.
  if wants rabbitmq; then start_rabbitmq; fi
  if wants kafka; then
    install_kafka
    start_kafka
  fi
  if wants redis; then start_redis; fi
  if wants redis-cluster; then start_redis_cluster; fi
  if wants ferretdb; then
    install_ferretdb
    start_ferretdb
  fi
  if wants mongo-java; then
    install_mongo_java
    start_mongo_java
  fi
  if wants jaeger; then
    install_jaeger
    start_jaeger
  fi
  if wants zipkin; then
    install_zipkin
    start_zipkin
  fi
  # Then wait for each; they boot in parallel.
  if wants redis; then wait_healthy redis "$LOGS/redis.log" redis_healthy; fi
  if wants redis-cluster; then finish_redis_cluster; fi
  if wants ferretdb; then wait_healthy ferretdb "$LOGS/ferretdb.log" ferretdb_healthy; fi
  if wants mongo-java; then wait_healthy mongo-java "$LOGS/mongo-java.log" mongo_java_healthy; fi
  if wants jaeger; then wait_healthy jaeger "$LOGS/jaeger.log" jaeger_healthy; fi
  if wants zipkin; then wait_healthy zipkin "$LOGS/zipkin.log" zipkin_healthy; fi
  if wants rabbitmq; then finish_rabbitmq; fi
  if wants kafka; then wait_healthy kafka "$LOGS/kafka.log" kafka_healthy; fi
  say "all healthy: ${SERVICES[*]} (total $(elapsed "$T0"); PIDs in $RUN)"
}

stop_service() {
  local port
  case $1 in
    redis-cluster) for port in "${CLUSTER_PORTS[@]}"; do stop_pid "redis-cluster-$port"; done ;;
    rabbitmq)
      if pid_alive rabbitmq; then rabbitmqctl_ stop >/dev/null 2>&1 || true; fi
      stop_pid rabbitmq
      rm -f "$RUN/rabbitmq-beam.pid"
      ;;
    *) stop_pid "$1" ;;
  esac
  say "$1 stopped"
}

cmd_down() {
  parse_services "$@"
  take_lock
  local s
  # In parallel: each waits for its own processes to exit (graceful first, SIGKILL after 30 s).
  for s in "${SERVICES[@]}"; do stop_service "$s" & done
  wait
  # epmd outlives RabbitMQ; stop it once RabbitMQ is down, and only if this script started it.
  if [[ -f "$RUN/epmd.pid" ]] && ! pid_alive rabbitmq; then
    stop_pid epmd
    say "epmd stopped"
  fi
}

# Every test run creates topics under unique names and none deletes them; past a few thousand
# partitions a Kafka restart spends minutes loading them (and its group coordinator answers
# "loading" meanwhile). `npm test` prunes before `up`: Kafka is stopped if this script runs it,
# its data deleted (the next `up` formats it anew), never in the middle of a run.
cmd_prune() {
  take_lock
  local dir="$DATA/kafka/logs" max="${EO_KAFKA_MAX_PARTITIONS:-3000}" count
  [[ -d $dir ]] || return 0
  count=$(find "$dir" -mindepth 1 -maxdepth 1 -type d | wc -l)
  if ((count <= max)); then
    say "kafka: $count partitions, no prune needed (max $max)"
    return 0
  fi
  say "kafka: $count partitions (max $max): stopping it and deleting its data"
  if pid_alive kafka; then stop_service kafka; fi
  rm -rf "$dir"
}

cmd_status() {
  local bad=0
  printf '%-14s %-9s %-28s %s\n' SERVICE STATE PORTS VERSION
  row() {
    local name=$1 ports=$2 check=$3 version=$4 state=down v=""
    if $check >/dev/null 2>&1; then
      state=healthy
      v=$($version 2>/dev/null || true)
    else
      bad=1
    fi
    printf '%-14s %-9s %-28s %s\n' "$name" "$state" "$ports" "$v"
  }
  row redis 6379 redis_healthy redis_version
  row redis-cluster 7001,7002,7003 cluster_healthy redis_version
  row rabbitmq 5672,15672 rabbit_healthy rabbit_version
  row kafka 9092,9093 kafka_healthy kafka_version
  row ferretdb 27017 ferretdb_healthy ferretdb_version
  row mongo-java "$MONGO_JAVA_PORT" mongo_java_healthy mongo_java_version
  row jaeger 4317,4318,16685,16686,13133 jaeger_healthy jaeger_version
  row zipkin "$ZIPKIN_PORT" zipkin_healthy zipkin_version
  echo "home: $ROOT"
  return $bad
}

cmd_logs() {
  local s=${1:-}
  [[ -n $s ]] || die "usage: infra.sh logs <service> (services: ${ALL_SERVICES[*]})"
  parse_services "$s"
  local files=("$LOGS/$s.log")
  [[ $s == rabbitmq ]] && files+=("$LOGS"/rabbitmq-server/*.log)
  if [[ -t 1 ]]; then tail -n 100 -F "${files[@]}"; else tail -n 100 "${files[@]}"; fi
}

case "${1:-}" in
  up) shift && cmd_up "$@" ;;
  down) shift && cmd_down "$@" ;;
  status) cmd_status ;;
  logs) shift && cmd_logs "$@" ;;
  install) shift && cmd_install "$@" ;;
  prune) cmd_prune ;;
  *)
    echo "usage: $0 up|down|status|logs|install|prune [service...]  (services: ${ALL_SERVICES[*]}; install also: ${TOOLS[*]})" >&2
    exit 2
    ;;
esac
