#!/usr/bin/env bash
# Start a token-authenticated Ray head and an MLflow server on loopback, in the background.
# Process ids and logs go to $VWM_CLUSTER_DIR (default outputs/cluster); stop them with cluster/local/stop.sh.
#   RAY_PORT (6390)  DASHBOARD_PORT (8266)  MLFLOW_PORT (5055)  NUM_CPUS (all)  PYTHON (.venv/bin/python)
#   AGENT_PORT (52375), AGENT_GRPC_PORT, METRICS_PORT, RUNTIME_ENV_AGENT_PORT (free ports if unset): away
#   from Ray's defaults, so this head's job agent starts even beside another Ray on the same host
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${VWM_CLUSTER_DIR:-outputs/cluster}
RAY_PORT=${RAY_PORT:-6390}
DASHBOARD_PORT=${DASHBOARD_PORT:-8266}
MLFLOW_PORT=${MLFLOW_PORT:-5055}
PYTHON=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PYTHON")
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
free_port() { "$PYTHON" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
AGENT_PORT=${AGENT_PORT:-52375}
AGENT_GRPC_PORT=${AGENT_GRPC_PORT:-$(free_port)}
METRICS_PORT=${METRICS_PORT:-$(free_port)}
RUNTIME_ENV_AGENT_PORT=${RUNTIME_ENV_AGENT_PORT:-$(free_port)}

# token auth stays on: the job server then refuses requests without ~/.ray/auth_token
RAY_AUTH_MODE=token setsid "$BIN/ray" start --head --block --node-ip-address 127.0.0.1 --port "$RAY_PORT" \
  --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" ${NUM_CPUS:+--num-cpus "$NUM_CPUS"} \
  --dashboard-agent-listen-port "$AGENT_PORT" --dashboard-agent-grpc-port "$AGENT_GRPC_PORT" \
  --metrics-export-port "$METRICS_PORT" --runtime-env-agent-port "$RUNTIME_ENV_AGENT_PORT" \
  --disable-usage-stats > "$DIR/ray.log" 2>&1 &
echo $! > "$DIR/ray.pid"

# MLflow's job runner serves GenAI features we do not use; off, the server starts in half the CPU time
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$PYTHON" -m mlflow server --backend-store-uri "sqlite:///$DIR/mlflow.db" \
  --artifacts-destination "$DIR/mlartifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
  > "$DIR/mlflow.log" 2>&1 &
echo $! > "$DIR/mlflow.pid"

wait_for() {  # url, seconds
  for _ in $(seq 1 "$2"); do
    if "$PYTHON" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null; then
      return 0; fi
    sleep 1
  done
  echo "no answer from $1; see $DIR/*.log" >&2
  return 1
}
wait_for "http://127.0.0.1:$MLFLOW_PORT/health" 90
for _ in $(seq 1 90); do grep -q "Ray runtime started" "$DIR/ray.log" && break; sleep 1; done
grep -q "Ray runtime started" "$DIR/ray.log" || { echo "Ray head did not start; see $DIR/ray.log" >&2; exit 1; }
# the job agent comes up after the runtime: until it has, submissions fail with "No available agent"
ready=""
for i in $(seq 1 60); do
  if RAY_AUTH_MODE=token "$BIN/ray" job submit --address "http://127.0.0.1:$DASHBOARD_PORT" \
       --submission-id "vwm-agent-probe-$$-$i" --no-wait -- true > "$DIR/probe.log" 2>&1; then ready=1; break; fi
  sleep 2
done
[ -n "$ready" ] || { echo "the Ray job server accepted no job; see $DIR/probe.log" >&2; exit 1; }

# the token file is the cluster's only key: readable by its owner alone
[ -f "$HOME/.ray/auth_token" ] && chmod 600 "$HOME/.ray/auth_token"

# Ray's job CLI and `vwm submit` take the dashboard's http address (RAY_API_SERVER_ADDRESS, read first);
# a driver on this host (`vwm pretrain`) attaches through the GCS address (RAY_ADDRESS)
cat > "$DIR/env.sh" <<ENV
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
export RAY_ADDRESS=127.0.0.1:$RAY_PORT
export RAY_AUTH_MODE=token
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
ENV
echo "Ray head (token auth) and MLflow are up. Then:"
echo "  source $DIR/env.sh"
echo "  vwm submit pretrain --config configs/pretrain/debug_cpu.yaml --set train.output_dir=\$PWD/outputs \\"
echo "    --set dist.storage_path=\$PWD/outputs/ray --set tracking.backend=mlflow --follow"
