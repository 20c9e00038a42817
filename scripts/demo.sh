#!/usr/bin/env bash
# What EdgeSight's backbone does today, end to end, on this machine:
#   1. checks the commented example site file (and shows what a mistake looks like);
#   2. runs the installed services under `edgesight run` for 12 s, kills one mid-way to show the
#      restart, and reads their Health from the bus with `edgesight bus tail`;
#   3. measures a frame's hop through shared memory against plain ZeroMQ (`frame_hop --quick`).
set -euo pipefail
cd "$(dirname "$0")/.."
export EDGESIGHT_RUN_DIR=${EDGESIGHT_RUN_DIR:-$(mktemp -d /tmp/edgesight-demo.XXXXXX)}
edgesight=.venv/bin/edgesight

echo "== 1. the site file"
$edgesight config check examples/site.yaml
broken=$EDGESIGHT_RUN_DIR/broken.yaml
sed 's/    fps: 5 /    fps: -5 /' examples/site.yaml > "$broken"
$edgesight config check "$broken" || echo "(exit $? — the error names the file, line and key)"

echo; echo "== 2. the services, supervised (12 s)"
$edgesight run examples/demo.yaml --for 12 --status-interval 3 &
run_pid=$!
sleep 4
$edgesight bus tail examples/demo.yaml --stream health --count 2
broker_pid=$(pgrep -f "services.broker --config" | head -n1 || true)
if [[ -n $broker_pid ]]; then
  echo "-- killing the broker (pid $broker_pid) with SIGKILL: edgesight run restarts it"
  kill -9 "$broker_pid"
fi
wait "$run_pid"

echo; echo "== 3. frame_hop: 1080p frames between processes"
.venv/bin/python -m benchmarks frame_hop --quick --json "$EDGESIGHT_RUN_DIR/frame_hop.json"
