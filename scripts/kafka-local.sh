#!/usr/bin/env bash
# Local single-node Apache Kafka 4.x broker (KRaft, broker+controller) on 127.0.0.1, from Maven Central.
#
#   scripts/kafka-local.sh start|stop|status|restart|logs [-f]|clean
#
# start    resolve the jars (once), format the storage (once), start the broker in the background
#          and wait until it answers an admin request; a no-op when it already runs
# stop     SIGTERM, up to KAFKA_STOP_TIMEOUT s (30), then SIGKILL; a no-op when it does not run
# status   exit 0 and print "running pid ... port ..." when up, exit 1 otherwise
# restart  stop, then start
# logs     last KAFKA_LOG_LINES (100) lines of the broker log; -f follows it
# clean    stop, then remove the data dir (the jar cache stays)
#
# Environment (paths relative to the repo root, whatever the caller's cwd):
#   KAFKA_PORT               client (PLAINTEXT) port, default 9092
#   KAFKA_CONTROLLER_PORT    KRaft controller port, default KAFKA_PORT+1000
#   KAFKA_DATA_DIR           log.dirs, default var/kafka/data
#   KAFKA_RUN_DIR            pid file, logs, rendered config, default var/kafka
#   KAFKA_LIB_DIR            jar cache, default var/kafka/lib
#   KAFKA_EXTRA_PROPERTIES   file whose lines are appended to server.properties (e.g. TLS listeners)
#   KAFKA_AUTO_CREATE_TOPICS auto.create.topics.enable, default false
#   KAFKA_HEAP_OPTS          default "-Xmx512m -Xms256m"
#   KAFKA_START_TIMEOUT      seconds to wait for the broker to answer, default 90
#   JAVA_HOME                java to use (else the one on PATH); needs Java 17+
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$ROOT/$1" ;; esac; }

PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1000))}"
RUN_DIR="$(abspath "${KAFKA_RUN_DIR:-var/kafka}")"
DATA_DIR="$(abspath "${KAFKA_DATA_DIR:-$RUN_DIR/data}")"
LIB_DIR="$(abspath "${KAFKA_LIB_DIR:-var/kafka/lib}")"
POM="$ROOT/deploy/kafka/pom.xml"
TEMPLATE="$ROOT/deploy/kafka/server.properties.template"
CONF="$RUN_DIR/server.properties"
LOG4J_SERVER="$RUN_DIR/log4j2-server.properties"
LOG4J_TOOLS="$RUN_DIR/log4j2-tools.properties"
PID_FILE="$RUN_DIR/kafka.pid"
SERVER_LOG="$RUN_DIR/server.log"   # log4j, rotated
OUT_LOG="$RUN_DIR/kafka.out"       # stdout/stderr of the JVM (crashes, JVM errors)
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
AUTO_CREATE="${KAFKA_AUTO_CREATE_TOPICS:-false}"

log() { printf 'kafka-local: %s\n' "$*"; }
die() { printf 'kafka-local: error: %s\n' "$*" >&2; exit 1; }

java_bin() {
  local j
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then j="$JAVA_HOME/bin/java"
  else j="$(command -v java || true)"; fi
  [[ -n "$j" ]] || die "java not found (Java 17+ needed; apt-get install openjdk-17-jre-headless)"
  printf '%s\n' "$j"
}

check_java() {
  local v
  v="$("$(java_bin)" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
  [[ "${v%%.*}" =~ ^[0-9]+$ && "${v%%.*}" -ge 17 ]] || die "Java 17+ needed, found '${v:-unknown}'"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pid of our broker if it is alive (pid file + process is a kafka.Kafka JVM), else nothing
broker_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
  printf '%s\n' "$pid"
}

pom_sum() { sha256sum "$POM" | cut -d' ' -f1; }

resolve_jars() {
  local marker="$LIB_DIR/.resolved" sum
  sum="$(pom_sum)"
  if [[ -f "$marker" && "$(cat "$marker")" == "$sum" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
  log "resolving Kafka jars from Maven Central into $LIB_DIR (first time: a minute or two)"
  local tmp="$LIB_DIR.tmp.$$" mvn_log="$RUN_DIR/mvn.log"
  rm -rf "$tmp"
  mkdir -p "$tmp" "$RUN_DIR"
  if ! mvn -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$mvn_log" 2>&1; then
    rm -rf "$tmp"
    tail -n 40 "$mvn_log" >&2
    die "maven could not resolve $POM (full output: $mvn_log)"
  fi
  ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || { rm -rf "$tmp"; die "no kafka_2.13 jar after resolution"; }
  rm -rf "$LIB_DIR"
  mv "$tmp" "$LIB_DIR"
  printf '%s\n' "$sum" >"$marker"
  log "$(ls "$LIB_DIR"/*.jar | wc -l) jars in $LIB_DIR ($(basename "$(ls "$LIB_DIR"/kafka_2.13-*.jar)"))"
}

write_configs() {
  mkdir -p "$RUN_DIR" "$DATA_DIR"
  [[ -f "$TEMPLATE" ]] || die "missing $TEMPLATE"
  local sed_data="${DATA_DIR//|/\\|}"
  sed -e "s|@PORT@|$PORT|g" -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
      -e "s|@DATA_DIR@|$sed_data|g" -e "s|@AUTO_CREATE@|$AUTO_CREATE|g" \
      "$TEMPLATE" >"$CONF.tmp"
  if [[ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]]; then
    local extra
    extra="$(abspath "$KAFKA_EXTRA_PROPERTIES")"
    [[ -f "$extra" ]] || die "KAFKA_EXTRA_PROPERTIES=$KAFKA_EXTRA_PROPERTIES: no such file"
    { printf '\n# ---- appended from %s ----\n' "$extra"; cat "$extra"; printf '\n'; } >>"$CONF.tmp"
    log "appended $extra to server.properties"
  fi
  mv "$CONF.tmp" "$CONF"

  cat >"$LOG4J_SERVER" <<'EOF'
# generated by scripts/kafka-local.sh
status = warn
name = kafka-local
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
  cat >"$LOG4J_TOOLS" <<'EOF'
# generated by scripts/kafka-local.sh: the storage and admin tools log warnings to stderr
status = warn
name = kafka-local-tools
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
}

# run a Kafka tool class with the cached jars (optionally under `timeout N` when TOOL_TIMEOUT is set)
kafka_tool() {
  local prefix=()
  [[ -n "${TOOL_TIMEOUT:-}" ]] && prefix=(timeout "$TOOL_TIMEOUT")
  "${prefix[@]}" "$(java_bin)" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$LOG4J_TOOLS" -cp "$LIB_DIR/*" "$@"
}

format_storage() {
  if [[ -f "$DATA_DIR/meta.properties" ]]; then
    return 0
  fi
  local cid
  cid="$(kafka_tool kafka.tools.StorageTool random-uuid | tail -n 1)"
  [[ -n "$cid" ]] || die "StorageTool random-uuid printed nothing"
  log "formatting $DATA_DIR (cluster id $cid, standalone KRaft controller)"
  kafka_tool kafka.tools.StorageTool format -t "$cid" -c "$CONF" --standalone >/dev/null \
    || die "StorageTool format failed"
}

tail_logs() {
  local f
  for f in "$OUT_LOG" "$SERVER_LOG"; do
    [[ -s "$f" ]] || continue
    printf -- '----- last lines of %s -----\n' "$f" >&2
    tail -n 30 "$f" >&2
  done
}

# wait until the broker answers a metadata request (TopicCommand --list) or the deadline passes
wait_ready() {
  local pid="$1" deadline=$((SECONDS + START_TIMEOUT)) left
  while ! port_open "$PORT"; do
    kill -0 "$pid" 2>/dev/null || { tail_logs; die "broker process $pid exited during startup"; }
    ((SECONDS < deadline)) || { tail_logs; die "port $PORT not open after ${START_TIMEOUT}s (broker pid $pid still running)"; }
    sleep 0.5
  done
  while :; do
    left=$((deadline - SECONDS))
    ((left > 0)) || { tail_logs; die "broker on 127.0.0.1:$PORT did not answer within ${START_TIMEOUT}s"; }
    if TOOL_TIMEOUT="$left" kafka_tool org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "127.0.0.1:$PORT" --list >/dev/null 2>"$RUN_DIR/ready-check.err"; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { tail_logs; die "broker process $pid exited during startup"; }
    sleep 1
  done
}

cmd_status() {
  local pid
  if pid="$(broker_pid)" && port_open "$PORT"; then
    echo "running pid $pid port $PORT (controller $CONTROLLER_PORT, data $DATA_DIR)"
    return 0
  fi
  if [[ -n "${pid:-}" ]]; then
    echo "starting pid $pid port $PORT (not answering yet)"
  else
    echo "not running (port $PORT)"
  fi
  return 1
}

cmd_start() {
  local pid t0=$SECONDS
  if pid="$(broker_pid)"; then
    if port_open "$PORT"; then
      log "already running: pid $pid port $PORT"
      return 0
    fi
    log "pid $pid is starting; waiting for port $PORT"
    wait_ready "$pid"
    log "running pid $pid port $PORT"
    return 0
  fi
  rm -f "$PID_FILE"
  port_open "$PORT" && die "port $PORT is in use by another process (not our broker; set KAFKA_PORT)"
  port_open "$CONTROLLER_PORT" && die "controller port $CONTROLLER_PORT is in use (set KAFKA_CONTROLLER_PORT)"
  check_java
  resolve_jars
  write_configs
  format_storage

  log "starting broker on 127.0.0.1:$PORT (controller $CONTROLLER_PORT, data $DATA_DIR)"
  : >"$OUT_LOG"
  # shellcheck disable=SC2086  # HEAP_OPTS is a list of JVM flags
  nohup "$(java_bin)" $HEAP_OPTS \
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dkafka.logs.dir="$RUN_DIR" -Dlog4j2.configurationFile="$LOG4J_SERVER" \
    -cp "$LIB_DIR/*" kafka.Kafka "$CONF" \
    >>"$OUT_LOG" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"
  wait_ready "$pid"
  log "running pid $pid port $PORT (ready in $((SECONDS - t0))s; log $SERVER_LOG)"
}

cmd_stop() {
  local pid
  if ! pid="$(broker_pid)"; then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  log "stopping pid $pid (SIGTERM)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    log "still alive after ${STOP_TIMEOUT}s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_logs() {
  [[ -f "$SERVER_LOG" ]] || die "no log yet at $SERVER_LOG"
  if [[ "${1:-}" == "-f" ]]; then exec tail -n "${KAFKA_LOG_LINES:-100}" -F "$SERVER_LOG"; fi
  tail -n "${KAFKA_LOG_LINES:-100}" "$SERVER_LOG"
}

cmd_clean() {
  cmd_stop
  case "$DATA_DIR" in
    / | "$ROOT" | "$RUN_DIR" | "$HOME") die "refusing to remove $DATA_DIR" ;;
  esac
  log "removing $DATA_DIR"
  rm -rf "$DATA_DIR"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  restart) cmd_stop; cmd_start ;;
  logs) shift; cmd_logs "$@" ;;
  clean) cmd_clean ;;
  *) echo "usage: $0 start|stop|status|restart|logs [-f]|clean" >&2; exit 2 ;;
esac
