#!/usr/bin/env bash
# Stop what cluster/local/start.sh started, by process id (never `ray stop`, which ends every Ray on the host).
set -uo pipefail
cd "$(dirname "$0")/../.."
DIR=${VWM_CLUSTER_DIR:-outputs/cluster}
for name in mlflow ray; do
  pidfile="$DIR/$name.pid"
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null
  rm -f "$pidfile"
  echo "stopped $name ($pid)"
done
