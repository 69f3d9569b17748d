#!/usr/bin/env bash
# Real servers on 127.0.0.1 for tests and the demo: Redis (standalone and a 3-master cluster),
# RabbitMQ, Apache Kafka (KRaft), FerretDB (MongoDB wire protocol, SQLite) and Jaeger v2.
#
#   scripts/infra.sh up [service...]      install what is missing, start, wait until healthy
#   scripts/infra.sh down [service...]    stop what this script started (by recorded PID)
#   scripts/infra.sh status               health, port and version of each server
#   scripts/infra.sh logs <service>       tail a server's log
#
# Everything lives under $EXACTLY_ONCE_INFRA_HOME (default ~/.cache/exactly-once-infra): built
# binaries, Maven jars, data, logs and PID files. Nothing is written into the repository. The
# first `up` on a fresh machine builds FerretDB and Jaeger from the Go module proxy and fetches
# Kafka from Maven Central (minutes); later runs reuse them (seconds).
set -euo pipefail

HOME_DIR="${EXACTLY_ONCE_INFRA_HOME:-$HOME/.cache/exactly-once-infra}"
KAFKA_VERSION="${EO_KAFKA_VERSION:-4.1.1}"
FERRETDB_VERSION="${EO_FERRETDB_VERSION:-v1.24.2}"
JAEGER_MODULE_VERSION="${EO_JAEGER_VERSION:-v1.76.0}"
LOG4J_VERSION=2.24.3
SLF4J_VERSION=2.0.17
RABBIT_NODE="exactlyonce@localhost"
CLUSTER_PORTS=(7001 7002 7003)
ALL_SERVICES=(redis redis-cluster rabbitmq kafka ferretdb jaeger)
HEALTH_TIMEOUT="${EO_HEALTH_TIMEOUT:-180}"

BIN="$HOME_DIR/bin" DATA="$HOME_DIR/data" RUN="$HOME_DIR/run" LOGS="$HOME_DIR/logs" BUILD="$HOME_DIR/build"
mkdir -p "$BIN" "$DATA" "$RUN" "$LOGS" "$BUILD"

say() { printf '[infra %5ss] %s\n' "$SECONDS" "$*"; }
die() { printf '[infra] ERROR: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pid_alive() { [[ -f "$RUN/$1.pid" ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

# Waits until `$2...` succeeds; on timeout prints the service log tail and fails.
wait_for() {
  local name=$1; shift
  local deadline=$((SECONDS + HEALTH_TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      tail -n 40 "$LOGS/$name.log" >&2 2>/dev/null || true
      die "$name did not become healthy within ${HEALTH_TIMEOUT}s (log: $LOGS/$name.log)"
    fi
    sleep 0.5
  done
}

# Starts a long-running command in its own session, recording its PID.
spawn() {
  local name=$1; shift
  setsid nohup "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

stop_pid_file() {
  local file=$1 pid
  [[ -f "$file" ]] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

# ---------------------------------------------------------------- prerequisites
apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  ((${#missing[@]} == 0)) && return 0
  say "apt-get install ${missing[*]}"
  # Debian's postinst would start the system services; we run our own instances instead.
  local guard=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1
  fi
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
    >>"$LOGS/apt.log" 2>&1 || { [[ -n $guard ]] && rm -f /usr/sbin/policy-rc.d; die "apt-get failed (see $LOGS/apt.log)"; }
  [[ -n $guard ]] && rm -f /usr/sbin/policy-rc.d
  return 0
}

need_cmd() { command -v "$1" >/dev/null 2>&1 || die "$1 is required ($2)"; }

# ---------------------------------------------------------------- redis
redis_healthy() { [[ "$(redis-cli -p 6379 ping 2>/dev/null)" == PONG ]]; }
up_redis() {
  apt_install redis-server
  if redis_healthy; then return 0; fi
  port_open 6379 && die "port 6379 is taken by a process this script did not start"
  mkdir -p "$DATA/redis"
  # appendfsync everysec: a crash may lose about one second of writes (see store-redis README).
  redis-server --bind 127.0.0.1 --port 6379 --dir "$DATA/redis" --daemonize yes \
    --pidfile "$RUN/redis.pid" --logfile "$LOGS/redis.log" --save "" \
    --appendonly yes --appendfsync everysec --maxmemory-policy noeviction >/dev/null
  wait_for redis redis_healthy
}
version_redis() { redis-cli -p 6379 info server 2>/dev/null | sed -n 's/^redis_version:\(.*\)\r$/\1/p'; }

cluster_healthy() { redis-cli -p "${CLUSTER_PORTS[0]}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; }
up_redis_cluster() {
  apt_install redis-server
  if cluster_healthy; then return 0; fi
  for port in "${CLUSTER_PORTS[@]}"; do
    [[ "$(redis-cli -p "$port" ping 2>/dev/null)" == PONG ]] && continue
    mkdir -p "$DATA/redis-cluster/$port"
    redis-server --bind 127.0.0.1 --port "$port" --cluster-enabled yes \
      --cluster-config-file "$DATA/redis-cluster/$port/nodes.conf" --dir "$DATA/redis-cluster/$port" \
      --daemonize yes --pidfile "$RUN/redis-cluster-$port.pid" --logfile "$LOGS/redis-cluster.log" \
      --save "" --appendonly no --maxmemory-policy noeviction >/dev/null
  done
  for port in "${CLUSTER_PORTS[@]}"; do wait_for redis-cluster redis-cli -p "$port" ping; done
  if ! redis-cli -p "${CLUSTER_PORTS[0]}" cluster info | grep -q 'cluster_slots_assigned:16384'; then
    local nodes=()
    for port in "${CLUSTER_PORTS[@]}"; do nodes+=("127.0.0.1:$port"); done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >>"$LOGS/redis-cluster.log" 2>&1
  fi
  wait_for redis-cluster cluster_healthy
}

# ---------------------------------------------------------------- rabbitmq
rabbit_env() {
  export RABBITMQ_NODENAME="$RABBIT_NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=5672
  export RABBITMQ_DIST_PORT=25672 ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_MNESIA_BASE="$DATA/rabbitmq/mnesia" RABBITMQ_LOG_BASE="$LOGS/rabbitmq-server"
  export RABBITMQ_CONFIG_FILE="$DATA/rabbitmq/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$DATA/rabbitmq/enabled_plugins"
  export RABBITMQ_PID_FILE="$RUN/rabbitmq-beam.pid" RABBITMQ_ADVANCED_CONFIG_FILE="$DATA/rabbitmq/advanced.config"
}
rabbitmqctl_() { rabbit_env; /usr/lib/rabbitmq/bin/rabbitmqctl -n "$RABBIT_NODE" "$@"; }
rabbit_healthy() { port_open 5672 && rabbitmqctl_ await_startup --timeout 5 >/dev/null 2>&1 && port_open 15672; }
start_rabbitmq() {
  apt_install rabbitmq-server
  if pid_alive rabbitmq && rabbit_healthy; then return 0; fi
  port_open 5672 && die "port 5672 is taken by a process this script did not start"
  mkdir -p "$DATA/rabbitmq" "$LOGS/rabbitmq-server"
  cat >"$DATA/rabbitmq/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:5672
management.tcp.ip = 127.0.0.1
management.tcp.port = 15672
loopback_users.guest = true
vm_memory_high_watermark.relative = 0.2
disk_free_limit.absolute = 200MB
CONF
  echo '[rabbitmq_management].' >"$DATA/rabbitmq/enabled_plugins"
  echo '[].' >"$DATA/rabbitmq/advanced.config"
  local epmd_before=""
  epmd_before=$(pgrep -x epmd || true)
  rabbit_env
  spawn rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server
  # Erlang starts epmd on demand; if it was not running before, it is ours to stop later.
  [[ -z $epmd_before ]] && touch "$RUN/epmd.ours"
  return 0
}
wait_rabbitmq() {
  wait_for rabbitmq rabbit_healthy
  if [[ -f "$RUN/epmd.ours" ]]; then
    pgrep -x epmd | tail -n1 >"$RUN/epmd.pid"
    rm -f "$RUN/epmd.ours"
  fi
}
version_rabbitmq() { rabbitmqctl_ version 2>/dev/null | tail -n1; }

# ---------------------------------------------------------------- kafka
KAFKA_HOME="$HOME_DIR/kafka-$KAFKA_VERSION"
fetch_kafka() {
  [[ -f "$KAFKA_HOME/libs/.complete" ]] && return 0
  need_cmd mvn "Maven fetches the Kafka jars from Maven Central"
  need_cmd java "Kafka needs a Java 17+ runtime"
  say "fetching Kafka $KAFKA_VERSION jars from Maven Central"
  mkdir -p "$KAFKA_HOME"
  cat >"$KAFKA_HOME/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local</groupId><artifactId>kafka-broker</artifactId><version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  rm -rf "$KAFKA_HOME/libs"
  (cd "$KAFKA_HOME" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=libs -DincludeScope=runtime) \
    >>"$LOGS/kafka-build.log" 2>&1 || die "Maven could not fetch Kafka (see $LOGS/kafka-build.log)"
  touch "$KAFKA_HOME/libs/.complete"
}
kafka_healthy() { port_open 9092 && grep -q 'Kafka Server started' "$LOGS/kafka.log"; }
start_kafka() {
  fetch_kafka
  if pid_alive kafka && kafka_healthy; then return 0; fi
  port_open 9092 && die "port 9092 is taken by a process this script did not start"
  local dir="$DATA/kafka"
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
  local cp="$KAFKA_HOME/libs/*"
  if [[ ! -f "$dir/logs/meta.properties" ]]; then
    local cluster_id
    cluster_id=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)
    java -cp "$cp" -Dlog4j2.configurationFile="$dir/log4j2.properties" kafka.tools.StorageTool format \
      -t "$cluster_id" -c "$dir/server.properties" >>"$LOGS/kafka.log" 2>&1 || die "Kafka storage format failed"
  fi
  : >"$LOGS/kafka.log"
  spawn kafka java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$cp" kafka.Kafka "$dir/server.properties"
}
wait_kafka() { wait_for kafka kafka_healthy; }
version_kafka() { echo "$KAFKA_VERSION (KRaft)"; }

# ---------------------------------------------------------------- go tools
need_go() {
  need_cmd go "FerretDB and Jaeger are built from the Go module proxy"
}
build_ferretdb() {
  [[ -x "$BIN/ferretdb-$FERRETDB_VERSION" ]] && return 0
  need_go
  say "building FerretDB $FERRETDB_VERSION (first run only)"
  local src="$BUILD/ferretdb-$FERRETDB_VERSION"
  local dir
  dir=$(cd "$BUILD" && GOFLAGS=-mod=mod go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" \
    | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
  [[ -d "$dir" ]] || die "could not download FerretDB $FERRETDB_VERSION from the Go module proxy"
  rm -rf "$src" && cp -r "$dir" "$src" && chmod -R u+w "$src"
  # A module-proxy copy has no git metadata; FerretDB reads its version from this file.
  echo "$FERRETDB_VERSION" >"$src/build/version/version.txt"
  (cd "$src" && go build -o "$BIN/ferretdb-$FERRETDB_VERSION" ./cmd/ferretdb) >>"$LOGS/ferretdb-build.log" 2>&1 \
    || die "FerretDB build failed (see $LOGS/ferretdb-build.log)"
}
ferretdb_healthy() { port_open 27017 && [[ -n "$(ferret_hello)" ]]; }
# A real wire-protocol round trip when the repo's mongodb driver is installed; else the port.
ferret_hello() {
  local here
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [[ -d "$here/node_modules/mongodb" ]]; then
    (cd "$here" && node -e "
      const { MongoClient } = require('mongodb');
      const c = new MongoClient('mongodb://127.0.0.1:27017', { serverSelectionTimeoutMS: 2000 });
      c.db('admin').command({ buildInfo: 1 }).then((r) => { console.log(r.version); return c.close(); })
        .catch(() => process.exit(1));" 2>/dev/null)
  else
    echo unknown
  fi
}
start_ferretdb() {
  build_ferretdb
  if pid_alive ferretdb && ferretdb_healthy; then return 0; fi
  port_open 27017 && die "port 27017 is taken by a process this script did not start"
  mkdir -p "$DATA/ferretdb/sqlite" "$DATA/ferretdb/state"
  spawn ferretdb "$BIN/ferretdb-$FERRETDB_VERSION" --listen-addr=127.0.0.1:27017 --handler=sqlite \
    --sqlite-url="file:$DATA/ferretdb/sqlite/" --state-dir="$DATA/ferretdb/state" \
    --debug-addr=127.0.0.1:8088 --telemetry=disable --log-level=warn
}
wait_ferretdb() { wait_for ferretdb ferretdb_healthy; }
version_ferretdb() { echo "$FERRETDB_VERSION (MongoDB wire $(ferret_hello))"; }

build_jaeger() {
  [[ -x "$BIN/jaeger-$JAEGER_MODULE_VERSION" ]] && return 0
  need_go
  say "building Jaeger v2 (module $JAEGER_MODULE_VERSION; first run only, several minutes)"
  local mod="$BUILD/jaeger-tool"
  mkdir -p "$mod"
  # `go install …@version` refuses the module's replace directives; a tool dependency of a
  # small wrapper module resolves them.
  [[ -f "$mod/go.mod" ]] || printf 'module local/jaeger-tool\n\ngo 1.24\n' >"$mod/go.mod"
  (cd "$mod" && go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_MODULE_VERSION" \
    && go build -o "$BIN/jaeger-$JAEGER_MODULE_VERSION" github.com/jaegertracing/jaeger/cmd/jaeger) \
    >>"$LOGS/jaeger-build.log" 2>&1 || die "Jaeger build failed (see $LOGS/jaeger-build.log)"
}
jaeger_healthy() { port_open 16686 && port_open 4318 && curl -fsS http://127.0.0.1:16686/api/services >/dev/null; }
start_jaeger() {
  build_jaeger
  if pid_alive jaeger && jaeger_healthy; then return 0; fi
  port_open 16686 && die "port 16686 is taken by a process this script did not start"
  mkdir -p "$DATA/jaeger"
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
  spawn jaeger "$BIN/jaeger-$JAEGER_MODULE_VERSION" --config "$DATA/jaeger/config.yaml"
}
wait_jaeger() { wait_for jaeger jaeger_healthy; }
version_jaeger() { echo "v2 (module $JAEGER_MODULE_VERSION)"; }

# ---------------------------------------------------------------- commands
services_from_args() { if (($# == 0)); then echo "${ALL_SERVICES[@]}"; else echo "$@"; fi; }

cmd_up() {
  local services
  read -r -a services <<<"$(services_from_args "$@")"
  need_cmd curl "health checks use curl"
  # Start the slow ones first and let them boot while the rest come up.
  for s in "${services[@]}"; do
    case $s in rabbitmq) start_rabbitmq ;; kafka) start_kafka ;; esac
  done
  for s in "${services[@]}"; do
    case $s in
      redis) up_redis ;;
      redis-cluster) up_redis_cluster ;;
      ferretdb) start_ferretdb; wait_ferretdb ;;
      jaeger) start_jaeger; wait_jaeger ;;
      rabbitmq | kafka) ;;
      *) die "unknown service '$s' (known: ${ALL_SERVICES[*]})" ;;
    esac
  done
  for s in "${services[@]}"; do
    case $s in rabbitmq) wait_rabbitmq ;; kafka) wait_kafka ;; esac
  done
  say "up: ${services[*]}"
}

cmd_down() {
  local services
  read -r -a services <<<"$(services_from_args "$@")"
  for s in "${services[@]}"; do
    case $s in
      redis) stop_pid_file "$RUN/redis.pid" ;;
      redis-cluster) for p in "${CLUSTER_PORTS[@]}"; do stop_pid_file "$RUN/redis-cluster-$p.pid"; done ;;
      rabbitmq)
        if pid_alive rabbitmq; then rabbitmqctl_ stop >/dev/null 2>&1 || true; fi
        stop_pid_file "$RUN/rabbitmq.pid"
        rm -f "$RUN/rabbitmq-beam.pid"
        ;;
      kafka | ferretdb | jaeger) stop_pid_file "$RUN/$s.pid" ;;
      *) die "unknown service '$s'" ;;
    esac
    say "stopped $s"
  done
  # epmd outlives RabbitMQ; stop it once nothing of ours needs it, and only if we started it.
  if [[ -f "$RUN/epmd.pid" ]] && ! pid_alive rabbitmq; then stop_pid_file "$RUN/epmd.pid"; fi
}

cmd_status() {
  local ok=0
  printf '%-14s %-8s %-22s %s\n' SERVICE STATE PORTS VERSION
  row() {
    local name=$1 ports=$2 check=$3 ver=$4 state=down v=""
    if $check >/dev/null 2>&1; then state=healthy; v=$($ver 2>/dev/null || true); else ok=1; fi
    printf '%-14s %-8s %-22s %s\n' "$name" "$state" "$ports" "$v"
  }
  row redis 6379 redis_healthy version_redis
  row redis-cluster 7001-7003 cluster_healthy version_redis
  row rabbitmq 5672,15672 rabbit_healthy version_rabbitmq
  row kafka 9092 kafka_healthy version_kafka
  row ferretdb 27017 ferretdb_healthy version_ferretdb
  row jaeger 4317,4318,16686 jaeger_healthy version_jaeger
  return $ok
}

cmd_logs() {
  local s=${1:?usage: infra.sh logs <service>}
  [[ $s == rabbitmq ]] && { tail -n 100 -f "$LOGS/rabbitmq.log" "$LOGS"/rabbitmq-server/*.log; return; }
  tail -n 100 -f "$LOGS/$s.log"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status ;;
  logs) shift; cmd_logs "$@" ;;
  *) echo "usage: $0 up|down|status|logs [service...]  (services: ${ALL_SERVICES[*]})" >&2; exit 2 ;;
esac
