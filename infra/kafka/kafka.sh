#!/usr/bin/env bash
# A real single-node Apache Kafka 4.x broker (KRaft, broker+controller in one JVM) without docker:
# jars from Maven Central (infra/kafka/pom.xml), state under $KAUDIT_VAR/kafka.
#
#   kafka.sh up       fetch + format + start + wait + topics
#   kafka.sh down     stop
#   kafka.sh fetch|format|start|wait|topics|stop|status|reset
#
# Several brokers can run side by side: give each its own KAUDIT_VAR and ports.
#
# A cluster on loopback: KAUDIT_KAFKA_NODES=3 kafka.sh up starts three KRaft nodes (each broker + controller,
# static quorum of the three), node i listening on KAUDIT_KAFKA_PORT+i-1 with its controller on
# KAUDIT_KAFKA_CONTROLLER_PORT+i-1 (default KAUDIT_KAFKA_PORT+100+i-1), state in $KAUDIT_VAR/kafka/node-i;
# default.replication.factor=3, min.insync.replicas=2 (internal topics too), and the project's topics created
# with KAUDIT_KAFKA_REPLICATION_FACTOR=3 / KAUDIT_KAFKA_MIN_INSYNC_REPLICAS=2. Every subcommand then acts on all
# nodes; `kafka.sh node I start|stop|kill|status` acts on one (fault tests).
# See infra/kafka/README.md.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

KAUDIT_VAR="${KAUDIT_VAR:-$REPO/var}"
HOST="${KAUDIT_KAFKA_HOST:-127.0.0.1}"
PORT="${KAUDIT_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAUDIT_KAFKA_CONTROLLER_PORT:-9093}"
WAIT_SECONDS="${KAUDIT_KAFKA_WAIT_SECONDS:-90}"
STOP_SECONDS="${KAUDIT_KAFKA_STOP_SECONDS:-30}"
HEAP_OPTS="${KAUDIT_KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
# C1-only JIT: this broker shares a small machine with the pipeline, and C2 kept compiling for minutes, taking
# ~40% of the broker's CPU in a 2-core end-to-end run (broker CPU per event 62 -> 38 us with C1 only).
JVM_OPTS="${KAUDIT_KAFKA_JVM_OPTS:--XX:TieredStopAtLevel=1 -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"

POM="$HERE/pom.xml"
TEMPLATE="$HERE/server.properties.in"
NODES="${KAUDIT_KAFKA_NODES:-1}"
NODE="${KAUDIT_KAFKA_NODE:-}"        # set by the cluster commands: this run is node NODE of a cluster
VOTERS="${KAUDIT_KAFKA_VOTERS:-}"    # cluster: the static controller quorum (id@host:port,...)
KDIR="$KAUDIT_VAR/kafka${NODE:+/node-$NODE}"
LIBS="${KAUDIT_KAFKA_LIBS:-$KAUDIT_VAR/kafka/libs}"
DATA="$KDIR/data"
LOGS="$KDIR/logs"
PROPS="$KDIR/server.properties"
LOG4J="$KDIR/log4j2.properties"
PIDFILE="$KDIR/kafka.pid"
STARTED="$KDIR/kafka.started"
SERVER_OUT="$LOGS/server.out"
SERVER_LOG="$LOGS/server.log"

export KAUDIT_KAFKA_BOOTSTRAP="$HOST:$PORT"

KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
LOG4J_VERSION="$(sed -n 's:.*<log4j.version>\(.*\)</log4j.version>.*:\1:p' "$POM")"
STAMP="$LIBS/.kaudit-fetched"
STAMP_TEXT="kafka_2.13 $KAFKA_VERSION log4j $LOG4J_VERSION"

say() { echo "kafka: $*"; }
die() { echo "kafka: $*" >&2; exit 1; }
now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

need_java() {
  local v
  if ! command -v java >/dev/null 2>&1; then
    echo "kaudit: Java 17+ is required (apt-get install openjdk-17-jre-headless)" >&2
    exit 2
  fi
  # `java -version` prints e.g. 'openjdk version "17.0.15" 2025-04-15' (1.8.0_x for Java 8).
  v="$(java -version 2>&1 | sed -n 's/.*version "\([0-9][0-9]*\)[."].*/\1/p' | head -n1)"
  if [ -n "$v" ] && [ "$v" -lt 17 ]; then
    echo "kaudit: Java 17+ is required, found Java $v (apt-get install openjdk-17-jre-headless)" >&2
    exit 2
  fi
}

need_mvn() {
  if ! command -v mvn >/dev/null 2>&1; then
    echo "kaudit: Maven is required (apt-get install maven)" >&2
    exit 2
  fi
}

# --- process helpers -------------------------------------------------------------------------------

# Pid of our broker (the pid file's process, if it is still this KAUDIT_VAR's kafka.Kafka), else empty.
broker_pid() {
  local pid args
  [ -f "$PIDFILE" ] || return 0
  pid="$(cat "$PIDFILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  if [ -r "/proc/$pid/cmdline" ]; then
    args="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
  else
    args="$(ps -ww -o args= -p "$pid" 2>/dev/null || true)"
  fi
  case "$args" in
    *kafka.Kafka*"$PROPS"*) echo "$pid" ;;
  esac
}

# Does host:port accept TCP connections?
port_open() {
  # shellcheck disable=SC2016  # $1/$2 expand in the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# Serialise the commands that change state, per KAUDIT_VAR (two `up`s at once, e.g. parallel test
# processes, must not both format or both start). No-op where flock(1) is missing.
lock() {
  command -v flock >/dev/null 2>&1 || return 0
  mkdir -p "$KDIR"
  exec 9>"$KDIR/.lock"
  if ! flock -n 9; then
    say "waiting for another kafka.sh on $KDIR"
    flock -w 300 9 || die "another kafka.sh still holds $KDIR/.lock after 300 s"
  fi
}

show_log() {
  local f
  for f in "$SERVER_LOG" "$SERVER_OUT"; do
    if [ -s "$f" ]; then
      echo "----- last 30 lines of $f -----" >&2
      tail -n 30 "$f" >&2
    fi
  done
}

# --- subcommands -----------------------------------------------------------------------------------

cmd_fetch() {
  local t0 tmp n
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ]; then
    return 0
  fi
  need_java
  need_mvn
  mkdir -p "$(dirname "$LIBS")"
  if command -v flock >/dev/null 2>&1; then
    # KAUDIT_KAFKA_LIBS may be shared by several state folders: one fetch at a time per libs folder.
    exec 8>"$LIBS.lock"
    flock -w 600 8 || die "another fetch into $LIBS is still running"
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ]; then
      exec 8>&-
      return 0
    fi
  fi
  t0="$(now)"
  say "fetching Kafka $KAFKA_VERSION jars with Maven (~/.m2, else Maven Central) into $LIBS"
  tmp="$(mktemp -d "$LIBS.tmp.XXXXXX")"
  chmod 755 "$tmp"
  if ! mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -f "$POM" -DoutputDirectory="$tmp" -DincludeScope=runtime >"$tmp.log" 2>&1; then
    tail -n 30 "$tmp.log" >&2
    rm -rf "$tmp" "$tmp.log"
    die "mvn could not fetch the broker jars (network? proxy? try again, or see ~/.m2/settings.xml)"
  fi
  rm -f "$tmp.log"
  echo "$STAMP_TEXT" >"$tmp/.kaudit-fetched"
  # Swap in atomically-ish: never leave a half-copied or mixed-version libs folder behind.
  rm -rf "$LIBS.old"
  [ -e "$LIBS" ] && mv "$LIBS" "$LIBS.old"
  mv "$tmp" "$LIBS"
  rm -rf "$LIBS.old"
  exec 8>&-
  n="$(find "$LIBS" -name '*.jar' | wc -l)"
  say "fetched $n jars ($(du -sh "$LIBS" | cut -f1)) in $(since "$t0") s"
}

write_config() {
  local tpl
  mkdir -p "$DATA" "$LOGS"
  tpl="$(cat "$TEMPLATE")"
  tpl="${tpl//@HOST@/"$HOST"}"
  tpl="${tpl//@CONTROLLER_PORT@/"$CONTROLLER_PORT"}"
  tpl="${tpl//@PORT@/"$PORT"}"
  tpl="${tpl//@DATA_DIR@/"$DATA"}"
  printf '%s\n' "$tpl" >"$PROPS.tmp"
  if [ -n "$VOTERS" ]; then
    # one node of a cluster: its id, the static quorum, and replication for internal topics
    local rf="${KAUDIT_KAFKA_CLUSTER_SIZE:-3}" isr
    isr=$(( rf > 1 ? 2 : 1 ))
    sed -i -E '/^(node\.id|controller\.quorum\.bootstrap\.servers|default\.replication\.factor|offsets\.topic\.replication\.factor|transaction\.state\.log\.(replication\.factor|min\.isr)|share\.coordinator\.state\.topic\.(replication\.factor|min\.isr)|auto\.leader\.rebalance\.enable)=/d' "$PROPS.tmp"
    cat >>"$PROPS.tmp" <<EOF

# --- cluster node $NODE of $rf (written by kafka.sh for KAUDIT_KAFKA_NODES=$rf) ---------------------------
node.id=$NODE
controller.quorum.voters=$VOTERS
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
# a killed node's partitions move within seconds; leadership returns to the preferred replica after a restart
broker.session.timeout.ms=6000
auto.leader.rebalance.enable=true
leader.imbalance.check.interval.seconds=10
EOF
  fi
  mv "$PROPS.tmp" "$PROPS"

  # Everything at INFO into logs/server.log (rolled at 50 MB); only WARN+ also on the console,
  # i.e. into logs/server.out next to JVM messages (crashes, GC warnings).
  cat >"$LOG4J" <<'EOF'
# written by infra/kafka/kafka.sh format
name = kaudit-kafka
property.dir = ${sys:kafka.logs.dir}
property.pattern = [%d] %p %m (%c)%n

appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = ${pattern}
appender.out.filter.threshold.type = ThresholdFilter
appender.out.filter.threshold.level = WARN

appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${dir}/server.log
appender.file.filePattern = ${dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = ${pattern}
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3

rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
rootLogger.appenderRef.file.ref = FILE

# the chattiest loggers of a broker that creates many short-lived test topics
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
EOF
}

cmd_format() {
  local t0 cid
  write_config
  if [ -f "$DATA/meta.properties" ]; then
    return 0  # formatted by an earlier run: keep topics and offsets
  fi
  need_java
  [ -f "$STAMP" ] || die "no broker jars in $LIBS; run: $0 fetch"
  t0="$(now)"
  # A cluster id is a base64url-encoded 16-byte UUID (what `StorageTool random-uuid` prints). It may start
  # with "-", hence --cluster-id=VALUE rather than -t VALUE.
  cid="${KAUDIT_KAFKA_CLUSTER_ID:-$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')}"
  # No log4j config here: log4j's default (ERROR to the console) keeps the tool's INFO lines out of
  # server.log; its own messages go to logs/format.out. A cluster node uses the static quorum (no --standalone).
  local mode=(--standalone)
  [ -z "$VOTERS" ] || mode=()
  java -cp "$LIBS/*" kafka.tools.StorageTool format "${mode[@]}" --cluster-id="$cid" -c "$PROPS" -g >"$LOGS/format.out" 2>&1 \
    || { cat "$LOGS/format.out" >&2; die "formatting $DATA failed"; }
  say "formatted $DATA (cluster id $cid) in $(since "$t0") s"
}

ALREADY_RUNNING=""

cmd_start() {
  local pid p
  pid="$(broker_pid)"
  if [ -n "$pid" ]; then
    ALREADY_RUNNING=1
    if port_open "$HOST" "$PORT"; then
      say "already running (pid $pid) on $HOST:$PORT"
    else
      say "already starting (pid $pid) on $HOST:$PORT"
    fi
    return 0
  fi
  rm -f "$PIDFILE"
  need_java
  [ -f "$STAMP" ] || die "no broker jars in $LIBS; run: $0 fetch"
  [ -f "$DATA/meta.properties" ] || die "storage not formatted; run: $0 format"
  for p in "$PORT" "$CONTROLLER_PORT"; do
    if port_open "$HOST" "$p"; then
      die "$HOST:$p is already in use by another process (another broker? set KAUDIT_KAFKA_PORT / KAUDIT_KAFKA_CONTROLLER_PORT)"
    fi
  done
  mkdir -p "$LOGS"
  now >"$STARTED"
  echo "===== kafka.sh start $(date '+%Y-%m-%d %H:%M:%S') =====" >>"$SERVER_OUT"
  # The subshell points its own stdin/stdout/stderr away first, so nothing that outlives this script
  # holds the caller's pipes (a caller reading our output, e.g. subprocess.run(capture_output=True)
  # or `kafka.sh up | tail`, would otherwise wait for the broker to exit).
  # setsid: own session, so Ctrl-C in the calling terminal or the end of a CI step's process group
  # does not take the broker down; `stop` ends it. The inner bash writes its pid, then execs java.
  # log4j2.shutdownHookEnabled=false: log4j's own shutdown hook would stop logging while Kafka's
  # shutdown hook is still running, losing the shutdown messages.
  (
    cd "$KDIR"
    exec </dev/null >>"$SERVER_OUT" 2>&1 9>&-  # 9: the lock, which the broker must not keep
    # shellcheck disable=SC2016,SC2086  # $$ is the inner bash's pid; HEAP_OPTS/JVM_OPTS are lists of JVM flags
    nohup setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PIDFILE" \
      java $HEAP_OPTS $JVM_OPTS -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$LOG4J" -Dlog4j2.shutdownHookEnabled=false -Dkafka.logs.dir="$LOGS" \
      -cp "$LIBS/*" kafka.Kafka "$PROPS" &
  )
  for _ in $(seq 50); do
    [ -s "$PIDFILE" ] && break
    sleep 0.1
  done
  [ -s "$PIDFILE" ] || die "broker did not start (see $SERVER_OUT)"
  say "started (pid $(cat "$PIDFILE")), logs in $LOGS"
}

cmd_wait() {
  local t0 pid rc deadline
  # Time since `start` launched the JVM (so `up` reports the real startup time), unless this run
  # found it already running.
  if [ -n "$ALREADY_RUNNING" ]; then t0="$(now)"; else t0="$(cat "$STARTED" 2>/dev/null || now)"; fi
  pid="$(broker_pid)"
  if [ -z "$pid" ]; then
    if [ -f "$PIDFILE" ]; then
      show_log
      rm -f "$PIDFILE"
      die "broker exited while starting (see $LOGS)"
    fi
    die "not running (start it: $0 start)"
  fi
  rc=0
  if [ -x "$PYTHON" ] || command -v "$PYTHON" >/dev/null 2>&1; then
    # exit 0 = ready, 1 = timeout/died, 3 = this python has no confluent_kafka
    "$PYTHON" - "$KAUDIT_KAFKA_BOOTSTRAP" "$WAIT_SECONDS" "$pid" <<'EOF' || rc=$?
import os, socket, sys, time
try:
    from confluent_kafka.admin import AdminClient
except ImportError:
    sys.exit(3)
bootstrap, timeout, pid = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
host, port = bootstrap.rsplit(":", 1)
deadline = time.monotonic() + timeout
def alive():
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
# 1. the listener accepts connections (cheap), 2. the broker answers a metadata request with itself.
while time.monotonic() < deadline and alive():
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        break
    except OSError:
        time.sleep(0.1)
admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
while time.monotonic() < deadline and alive():
    try:
        md = admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
        if md.brokers:
            sys.exit(0)
    except Exception:  # noqa: BLE001 - KafkaException(_TRANSPORT / _TIMED_OUT) while starting
        pass
    time.sleep(0.1)
sys.exit(1)
EOF
  else
    rc=3
  fi
  if [ "$rc" = 3 ]; then
    # No (usable) python with confluent_kafka: settle for the listener accepting connections.
    deadline=$((SECONDS + WAIT_SECONDS))
    rc=1
    while [ "$SECONDS" -lt "$deadline" ] && kill -0 "$pid" 2>/dev/null; do
      if port_open "$HOST" "$PORT"; then rc=0; break; fi
      sleep 0.2
    done
  fi
  if [ "$rc" != 0 ]; then
    show_log
    if kill -0 "$pid" 2>/dev/null; then
      die "not ready on $KAUDIT_KAFKA_BOOTSTRAP after ${WAIT_SECONDS} s (KAUDIT_KAFKA_WAIT_SECONDS); still starting as pid $pid, '$0 stop' ends it"
    fi
    rm -f "$PIDFILE"
    die "broker exited while starting (see $LOGS)"
  fi
  say "ready on $KAUDIT_KAFKA_BOOTSTRAP in $(since "$t0") s"
}

topics_module_present() {
  [ -f "$REPO/pipeline/kafka/topics.py" ] || [ -d "$REPO/pipeline/kafka/topics" ]
}

cmd_topics() {
  (cd "$REPO" && "$PYTHON" -m pipeline.kafka.topics)
}

cmd_stop() {
  local pid t0 deadline
  pid="$(broker_pid)"
  if [ -z "$pid" ]; then
    rm -f "$PIDFILE"
    say "not running ($KDIR)"
    return 0
  fi
  t0="$(now)"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_SECONDS))
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "no clean exit after ${STOP_SECONDS} s, sending SIGKILL to $pid"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$PIDFILE" "$STARTED"
  say "stopped (pid $pid) in $(since "$t0") s"
}

cmd_status() {
  local pid
  pid="$(broker_pid)"
  if [ -z "$pid" ]; then
    say "not running (KAUDIT_VAR=$KAUDIT_VAR, $KAUDIT_KAFKA_BOOTSTRAP)"
    return 3
  fi
  if port_open "$HOST" "$PORT"; then
    say "running (pid $pid) on $KAUDIT_KAFKA_BOOTSTRAP, Kafka $KAFKA_VERSION, data $DATA, logs $LOGS"
  else
    say "starting (pid $pid), $KAUDIT_KAFKA_BOOTSTRAP not answering yet, logs $LOGS"
  fi
}

cmd_reset() {
  cmd_stop
  rm -rf "$DATA"
  say "deleted $DATA (topics and offsets); the next 'up' formats fresh storage"
}

cmd_up() {
  cmd_fetch
  cmd_format
  cmd_start
  cmd_wait
  if ! topics_module_present; then
    echo "kafka: warning: pipeline/kafka/topics.py not found, skipping topic creation" >&2
  elif ! [ -x "$PYTHON" ] && ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "kafka: warning: $PYTHON not found (make install), skipping topic creation" >&2
  else
    cmd_topics
  fi
}

# --- a cluster of KAUDIT_KAFKA_NODES nodes on loopback ---------------------------------------------

CLUSTER_DIR="$KAUDIT_VAR/kafka"
CONTROLLER_BASE="${KAUDIT_KAFKA_CONTROLLER_PORT:-$((PORT + 100))}"

cluster_bootstrap() {
  local i out=""
  for i in $(seq "$NODES"); do out="$out${out:+,}$HOST:$((PORT + i - 1))"; done
  echo "$out"
}

# Run this script for node I: its own ports, state folder, the quorum and the shared cluster id.
node_run() {
  local i="$1" voters="" j
  shift
  for j in $(seq "$NODES"); do voters="$voters${voters:+,}$j@$HOST:$((CONTROLLER_BASE + j - 1))"; done
  KAUDIT_KAFKA_NODES=1 KAUDIT_KAFKA_NODE="$i" KAUDIT_KAFKA_CLUSTER_SIZE="$NODES" KAUDIT_KAFKA_VOTERS="$voters" \
    KAUDIT_KAFKA_PORT="$((PORT + i - 1))" KAUDIT_KAFKA_CONTROLLER_PORT="$((CONTROLLER_BASE + i - 1))" \
    KAUDIT_KAFKA_CLUSTER_ID="$(cat "$CLUSTER_DIR/cluster.id")" KAUDIT_KAFKA_LIBS="$LIBS" \
    bash "$HERE/kafka.sh" "$@"
}

cluster_id() {
  mkdir -p "$CLUSTER_DIR"
  [ -s "$CLUSTER_DIR/cluster.id" ] || head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' >"$CLUSTER_DIR/cluster.id"
}

cluster() {
  local cmd="$1" i rc=0
  case "$cmd" in
    up)
      cmd_fetch
      cluster_id
      for i in $(seq "$NODES"); do node_run "$i" format; done
      for i in $(seq "$NODES"); do node_run "$i" start; done
      # a node serves metadata only once a majority of the controllers runs: wait after starting them all
      for i in $(seq "$NODES"); do node_run "$i" wait; done
      cluster topics
      say "cluster of $NODES nodes ready: KAUDIT_KAFKA_BOOTSTRAP=$(cluster_bootstrap)"
      ;;
    topics)
      (cd "$REPO" && KAUDIT_KAFKA_BOOTSTRAP="$(cluster_bootstrap)" \
        KAUDIT_KAFKA_REPLICATION_FACTOR="${KAUDIT_KAFKA_REPLICATION_FACTOR:-$NODES}" \
        KAUDIT_KAFKA_MIN_INSYNC_REPLICAS="${KAUDIT_KAFKA_MIN_INSYNC_REPLICAS:-$(( NODES > 1 ? 2 : 1 ))}" \
        "$PYTHON" -m pipeline.kafka.topics)
      ;;
    stop | down)
      # all at once: the last node stopped alone has no quorum for its controlled shutdown and waits it out
      local pids=()
      for i in $(seq "$NODES"); do KAUDIT_KAFKA_STOP_SECONDS="${KAUDIT_KAFKA_STOP_SECONDS:-10}" node_run "$i" stop & pids+=("$!"); done
      for i in "${pids[@]}"; do wait "$i" || rc=$?; done
      return "$rc"
      ;;
    status) for i in $(seq "$NODES"); do node_run "$i" status || rc=$?; done; return "$rc" ;;
    reset)
      for i in $(seq "$NODES"); do node_run "$i" reset || rc=$?; done
      rm -f "$CLUSTER_DIR/cluster.id"
      return "$rc"
      ;;
    fetch) cmd_fetch ;;
    *) die "'$cmd' is not a cluster command (up, down, status, topics, reset; or node I start|stop|kill|status)" ;;
  esac
}

cluster_node() {  # node I start|stop|kill|status|wait
  local i="${1:-}" cmd="${2:-}" pid
  { [[ "$i" =~ ^[0-9]+$ ]] && [ "$i" -ge 1 ] && [ "$i" -le "$NODES" ]; } || die "node: a number 1..$NODES, got '$i'"
  [ -s "$CLUSTER_DIR/cluster.id" ] || die "no cluster under $CLUSTER_DIR; run: KAUDIT_KAFKA_NODES=$NODES $0 up"
  case "$cmd" in
    start) node_run "$i" start && node_run "$i" wait ;;
    stop | status | wait) node_run "$i" "$cmd" ;;
    kill)
      pid="$(cat "$CLUSTER_DIR/node-$i/kafka.pid" 2>/dev/null || true)"
      if [[ "$pid" =~ ^[0-9]+$ ]] && kill -KILL "$pid" 2>/dev/null; then say "node $i (pid $pid) killed"; else say "node $i not running"; fi
      ;;
    *) die "node I {start|stop|kill|status|wait}" ;;
  esac
}

usage() {
  cat <<EOF
usage: $0 {up|down|fetch|format|start|wait|topics|stop|status|reset}
  up      fetch + format + start + wait + topics      down   stop
  fetch   broker jars from Maven Central               format write config, format storage once
  start   start in the background                      wait   until it serves (${WAIT_SECONDS} s max)
  topics  create the project topics                    stop   SIGTERM (SIGKILL after ${STOP_SECONDS} s)
  status  running? (exit 3 if not)                     reset  stop and delete the data
state: KAUDIT_VAR=$KAUDIT_VAR  bootstrap: $KAUDIT_KAFKA_BOOTSTRAP  controller: $HOST:$CONTROLLER_PORT
cluster: KAUDIT_KAFKA_NODES=3 $0 up|down|status|topics|reset, and $0 node I start|stop|kill|status
EOF
}

if [ "$NODES" -gt 1 ] && [ -z "$NODE" ]; then
  case "${1:-}" in
    node) shift; cluster_node "$@" ;;
    -h | --help | help | "") usage ;;
    *) lock; cluster "$1" ;;
  esac
  exit $?
fi

case "${1:-}" in
  fetch) lock; cmd_fetch ;;
  format) lock; cmd_format ;;
  start) lock; cmd_start ;;
  wait) cmd_wait ;;
  topics) cmd_topics ;;
  stop | down) lock; cmd_stop ;;
  status) cmd_status ;;
  reset) lock; cmd_reset ;;
  up) lock; cmd_up ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 64 ;;
esac
