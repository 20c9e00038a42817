#!/usr/bin/env bash
# What EdgeSight does today, end to end, on this machine:
#   1. checks the commented example site file (and shows what a mistake looks like);
#   2. serves the shared clip over RTSP (gst-rtsp-server) and probes it like a new camera;
#   3. runs YOLOX-Nano on the clip with `edgesight detect` (JSON lines + an annotated video);
#   4. runs the services under `edgesight run` (broker, ingest, inference, rules; two cameras) for
#      20 s: reads camera states, FrameRefs and Detections from the bus, drops the RTSP server for
#      3 s (the camera reconnects), SIGKILLs ingest (edgesight run restarts it), and shows the
#      events the rules decided (line crossings with masked snapshots, zone visits, crowding);
#      The uplink spools every event and publishes it to a local Mosquitto (a stand-in for AWS
#      IoT Core), where a subscriber counts them;
#   5. the web console: runs the pipeline with it for $EDGESIGHT_DEMO_CONSOLE_S seconds (45), prints its
#      URL and password, logs in with a headless Chromium and saves screenshots of three pages;
#   6. imports an AWS Panorama application (examples/panorama/people_counter) with
#      `edgesight panorama import` and runs it unchanged on the lobby camera; saves its HDMI output;
#   7. trust: signs YOLOX-Nano into a package encrypted for this device, verifies it, shows a tampered
#      copy and another signer's package refused, installs it and checks a site that runs only signed models;
#   8. the benchmarks, --quick: the split pipeline vs one loop, frame hop, ingest decode, inference and uplink throughput, tracking, model loading from packages.
set -euo pipefail
cd "$(dirname "$0")/.."
export EDGESIGHT_RUN_DIR=${EDGESIGHT_RUN_DIR:-$(mktemp -d /tmp/edgesight-demo.XXXXXX)}
export EDGESIGHT_DEMO_RTSP_PORT=${EDGESIGHT_DEMO_RTSP_PORT:-8554}
export EDGESIGHT_DEMO_MQTT_PORT=${EDGESIGHT_DEMO_MQTT_PORT:-18830}
export EDGESIGHT_DEMO_CONSOLE_PORT=${EDGESIGHT_DEMO_CONSOLE_PORT:-8080}
# the console has no default password: one made up for this run (or yours)
export EDGESIGHT_CONSOLE_PASSWORD=${EDGESIGHT_CONSOLE_PASSWORD:-$(.venv/bin/python -c "import secrets; print(secrets.token_urlsafe(12))")}
edgesight=.venv/bin/edgesight
clip=$(.venv/bin/python -c "from common.assets import find_asset; print(find_asset('people.mp4'))")
rtsp_pid=""
start_rtsp() {
  /usr/bin/python3 tests/servers/rtsp_server.py --port "$EDGESIGHT_DEMO_RTSP_PORT" "/lobby=$clip" > "$EDGESIGHT_RUN_DIR/rtsp.log" &
  rtsp_pid=$!
  for _ in $(seq 50); do grep -q ready "$EDGESIGHT_RUN_DIR/rtsp.log" && return; sleep 0.1; done
  echo "the RTSP server did not start: $(cat "$EDGESIGHT_RUN_DIR/rtsp.log")" >&2; exit 1
}
mqtt_pids=()
run_pid=""
trap '[[ -n $rtsp_pid ]] && kill $rtsp_pid 2>/dev/null; kill ${mqtt_pids[*]:-} $run_pid 2>/dev/null || true' EXIT

echo "== 1. the site file"
$edgesight config check examples/site.yaml
broken=$EDGESIGHT_RUN_DIR/broken.yaml
sed 's/    fps: 5 /    fps: -5 /' examples/site.yaml > "$broken"
$edgesight config check "$broken" || echo "(exit $? — the error names the file, line and key)"

echo; echo "== 2. a camera: the shared clip over RTSP on port $EDGESIGHT_DEMO_RTSP_PORT"
start_rtsp
$edgesight cameras probe "rtsp://127.0.0.1:$EDGESIGHT_DEMO_RTSP_PORT/lobby" --frames 25

echo; echo "== 3. a model checked before deploying it: YOLOX-Nano on 100 frames of the clip"
$edgesight detect --model yolox_nano.onnx --source "$clip" --frames 100 \
  --out "$EDGESIGHT_RUN_DIR/detections.jsonl" --annotate "$EDGESIGHT_RUN_DIR/annotated.mp4"
echo "-- frame 60: $(sed -n 61p "$EDGESIGHT_RUN_DIR/detections.jsonl" | grep -o '"label": "person"' | wc -l) persons;" \
  "video with boxes: $EDGESIGHT_RUN_DIR/annotated.mp4"

echo; echo "== 4. the services, supervised (20 s), with a local Mosquitto on port $EDGESIGHT_DEMO_MQTT_PORT"
printf 'user %s\nlistener %s 127.0.0.1\nallow_anonymous true\n' "$(whoami)" "$EDGESIGHT_DEMO_MQTT_PORT" > "$EDGESIGHT_RUN_DIR/mosquitto.conf"
mosquitto -c "$EDGESIGHT_RUN_DIR/mosquitto.conf" 2>/dev/null & mqtt_pids+=($!)
sleep 0.5
mosquitto_sub -p "$EDGESIGHT_DEMO_MQTT_PORT" -t 'edgesight/demo/#' -v > "$EDGESIGHT_RUN_DIR/mqtt.log" & mqtt_pids+=($!)
$edgesight run examples/demo.yaml --for 20 --status-interval 4 &
run_pid=$!
sleep 5
echo "-- camera states, two frame references and two detections from the bus"
$edgesight bus tail examples/demo.yaml --stream cameras --count 2
$edgesight bus tail examples/demo.yaml --stream frames --count 2
$edgesight bus tail examples/demo.yaml --stream detections --count 2 | cut -c1-400
echo "-- the RTSP server goes away for 3 s: the lobby camera backs off, then streams again"
kill "$rtsp_pid"; wait "$rtsp_pid" 2>/dev/null || true
sleep 3
start_rtsp
sleep 3
ingest_pid=$(pgrep -f "services.ingest --config" | head -n1 || true)
if [[ -n $ingest_pid ]]; then
  echo "-- killing ingest (pid $ingest_pid) with SIGKILL: edgesight run restarts it, its rings are reclaimed"
  kill -9 "$ingest_pid"
fi
wait "$run_pid"
events=$EDGESIGHT_RUN_DIR/state/events.jsonl
echo "-- events: $(wc -l < "$events" 2>/dev/null || echo 0) in $events; by type:"
.venv/bin/python - "$events" <<'PY'
import collections, json, sys
events = [json.loads(line) for line in open(sys.argv[1])]
print("  ", dict(collections.Counter(e["event_type"] for e in events)))
crossings = [e for e in events if e["event_type"] == "line_cross"]
if crossings:
    last = crossings[-1]
    print("   last crossing:", last["attributes"]["direction"], "track", last["object"]["track_id"], "counts", last["counts"],
          "snapshot", last.get("snapshot"))
PY

echo "-- over MQTT: $(grep -c '^edgesight/demo/events ' "$EDGESIGHT_RUN_DIR/mqtt.log" || true) events," \
  "$(grep -c '/count ' "$EDGESIGHT_RUN_DIR/mqtt.log" || true) count updates; the last count:"
grep '/count ' "$EDGESIGHT_RUN_DIR/mqtt.log" | tail -n1 || true

echo; echo "== 5. the web console, with the pipeline, for ${EDGESIGHT_DEMO_CONSOLE_S:-45} s"
console_url="http://${EDGESIGHT_DEMO_CONSOLE_HOST:-127.0.0.1}:$EDGESIGHT_DEMO_CONSOLE_PORT"
echo "-- open $console_url/ and log in with the password: $EDGESIGHT_CONSOLE_PASSWORD"
echo "   (EDGESIGHT_DEMO_CONSOLE_S=600 keeps it up for 10 minutes; EDGESIGHT_DEMO_CONSOLE_HOST=0.0.0.0 opens it to the LAN)"
$edgesight run examples/demo.yaml --services broker,ingest,inference,rules,uplink,console \
  --for "${EDGESIGHT_DEMO_CONSOLE_S:-45}" --status-interval 15 &
run_pid=$!
.venv/bin/python scripts/console_tour.py --url "$console_url" --password "$EDGESIGHT_CONSOLE_PASSWORD" \
  --out "$EDGESIGHT_RUN_DIR" --camera hall || true
echo "-- the same over the JSON API (GET /api/counts, with the login's cookie):"
.venv/bin/python - "$console_url" <<'PY' || true
import http.cookiejar, json, os, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
login = urllib.request.Request(f"{sys.argv[1]}/api/login", json.dumps({"password": os.environ["EDGESIGHT_CONSOLE_PASSWORD"]}).encode(),
                               {"Content-Type": "application/json"})
opener.open(login, timeout=5)
print("  ", json.load(opener.open(f"{sys.argv[1]}/api/counts", timeout=5))["hall"])
PY
wait "$run_pid"

echo; echo "== 6. an AWS Panorama application, unchanged: examples/panorama/people_counter on the lobby camera"
panorama_site=$EDGESIGHT_RUN_DIR/panorama.yaml
$edgesight panorama import examples/panorama/people_counter \
  --camera "camera_node=rtsp://127.0.0.1:$EDGESIGHT_DEMO_RTSP_PORT/lobby" --model model_node=yolox_nano.onnx \
  --param detection_threshold=0.3 --base examples/demo.yaml --out "$panorama_site"
$edgesight run "$panorama_site" --services broker,ingest,apps --for 15 --status-interval 5 &
run_pid=$!
sleep 12
.venv/bin/python - "$panorama_site" "$EDGESIGHT_RUN_DIR/panorama_output.jpg" <<'PY'
import json, sys, urllib.request
from common.config import load_config
base = f"http://127.0.0.1:{load_config(sys.argv[1]).metrics.port('apps')}/apps"
try:
    with urllib.request.urlopen(f"{base}/people_counter/video/camera_node.jpg", timeout=5) as answer:
        open(sys.argv[2], "wb").write(answer.read())
    print("-- the app's HDMI output (boxes and count drawn):", sys.argv[2], f"(live: {base}/people_counter/video/camera_node.mjpg)")
except OSError as exc:
    print("-- no output frame yet:", exc)
with urllib.request.urlopen(base, timeout=5) as answer:
    app = json.load(answer)["people_counter"]
print("-- app:", app["state"], app["frames"], "frames,", app["restarts"], "restarts; its log:", app["log"])
PY
wait "$run_pid"
echo "-- what the app logged to /opt/aws/panorama/logs/app.log:"
tail -n 3 "$EDGESIGHT_RUN_DIR/state/apps/people_counter/logs/app.log" || true

echo; echo "== 7. trust: a signed model package, encrypted for this device; what is refused; the audit trail"
keys=$EDGESIGHT_RUN_DIR/keys
$edgesight models keygen --out "$keys"
$edgesight models keygen --out "$keys" --device > /dev/null
model=$(.venv/bin/python -c "from common.assets import find_asset; print(find_asset('yolox_nano.onnx'))")
$edgesight models package "$model" --key "$keys/signing.key" -o "$EDGESIGHT_RUN_DIR/people-2.espkg" \
  --name people --version 2 --encrypt-for "$keys/device.pub"
$edgesight models verify "$EDGESIGHT_RUN_DIR/people-2.espkg" --trusted "$keys/signing.pub" --device-key "$keys/device.key"
.venv/bin/python - "$EDGESIGHT_RUN_DIR/people-2.espkg" "$EDGESIGHT_RUN_DIR/tampered.espkg" <<'PY'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
data[len(data) // 2] ^= 1  # one bit in the middle of the model
open(sys.argv[2], "wb").write(data)
PY
echo "-- one flipped bit:"
$edgesight models verify "$EDGESIGHT_RUN_DIR/tampered.espkg" --trusted "$keys/signing.pub" || true
$edgesight models keygen --out "$keys/someone-else" > /dev/null
$edgesight models package "$model" --key "$keys/someone-else/signing.key" -o "$EDGESIGHT_RUN_DIR/other.espkg" > /dev/null
echo "-- signed by a key this site does not trust:"
$edgesight models verify "$EDGESIGHT_RUN_DIR/other.espkg" --trusted "$keys/signing.pub" || true
trust_site=$EDGESIGHT_RUN_DIR/trust.yaml
.venv/bin/python - examples/demo.yaml "$trust_site" "$keys" <<'PY'
import sys, yaml
site = yaml.safe_load(open(sys.argv[1]))
site["site"] |= {"trusted_keys": [f"{sys.argv[3]}/signing.pub"], "device_key": f"{sys.argv[3]}/device.key"}
site["models"]["people"]["path"] = "people.espkg"
yaml.safe_dump(site, open(sys.argv[2], "w"), sort_keys=False)
PY
$edgesight models install "$EDGESIGHT_RUN_DIR/people-2.espkg" --config "$trust_site"
$edgesight models list --config "$trust_site"
echo "-- a site with site.trusted_keys runs only signed packages:"
$edgesight config check "$trust_site"
echo "-- the audit trail (sent upstream by the uplink as audit events):"
tail -n 2 "$EDGESIGHT_RUN_DIR/state/audit.jsonl"

echo; echo "== 8. benchmarks (quick): pipeline, frame_hop, ingest_decode, inference_throughput, uplink_throughput, tracking, model_package"
.venv/bin/python -m benchmarks --quick --json "$EDGESIGHT_RUN_DIR/benchmarks.json"
