#!/usr/bin/env bash
# What EdgeSight does today, end to end, on this machine:
#   1. checks the commented example site file (and shows what a mistake looks like);
#   2. serves the shared clip over RTSP (gst-rtsp-server) and probes it like a new camera;
#   3. runs YOLOX-Nano on the clip with `edgesight detect` (JSON lines + an annotated video);
#   4. runs the services under `edgesight run` (broker, ingest, inference, rules; two cameras) for
#      20 s: reads camera states, FrameRefs and Detections from the bus, drops the RTSP server for
#      3 s (the camera reconnects), SIGKILLs its ingest (edgesight run restarts it), and shows the
#      events the rules decided (line crossings with masked snapshots, zone visits, crowding);
#      The uplink spools every event and publishes it to a local Mosquitto (a stand-in for AWS
#      IoT Core), where a subscriber counts them;
#   5. imports an AWS Panorama application (examples/panorama/people_counter) with
#      `edgesight panorama import` and runs it unchanged, in its own sandbox (its own uid, namespaces,
#      limits, network), on the lobby camera; saves its HDMI output from the bus;
#   6. trust: signs YOLOX-Nano into a package encrypted for this device, verifies it, shows a tampered
#      copy and another signer's package refused, installs it and checks a site that runs only signed models;
#   7. the benchmarks, --quick, as one table of ratios against their goals;
#   8. the web console with the pipeline: logs in with a headless Chromium and saves screenshots, then
#      prints its URL and password last and stays up until Ctrl-C (at a terminal) or for
#      $EDGESIGHT_DEMO_HOLD_S seconds (default 30 when stdin is not a terminal).
# Everything it starts has its own folder, ports and process group, made by scripts/demo_site.py, which
# runs this script inside them and stops and removes them when it ends, on Ctrl-C and SIGTERM too.
# Give EDGESIGHT_RUN_DIR to keep the folder (screenshots, videos, logs); EDGESIGHT_DEMO_CONSOLE_HOST=0.0.0.0
# opens the console to the LAN.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${EDGESIGHT_DEMO_SITE:-} ]]; then
  exec .venv/bin/python scripts/demo_site.py run -- bash scripts/demo.sh "$@"
fi
site=$EDGESIGHT_DEMO_SITE  # examples/demo.yaml with this run's ports and folders
run_dir=$EDGESIGHT_RUN_DIR
rtsp_port=$EDGESIGHT_DEMO_RTSP_PORT
mqtt_port=$EDGESIGHT_DEMO_MQTT_PORT
edgesight=.venv/bin/edgesight
clip=$(.venv/bin/python -c "from common.assets import find_asset; print(find_asset('people.mp4'))")
rtsp_pid=""
start_rtsp() {
  /usr/bin/python3 tests/servers/rtsp_server.py --port "$rtsp_port" "/lobby=$clip" > "$run_dir/rtsp.log" &
  rtsp_pid=$!
  for _ in $(seq 50); do grep -q ready "$run_dir/rtsp.log" && return; sleep 0.1; done
  echo "the RTSP server did not start: $(cat "$run_dir/rtsp.log")" >&2; exit 1
}
# no trap: demo_site.py stops this script's whole process group (and only it) when it ends

echo "== 1. the site file"
$edgesight config check examples/site.yaml
broken=$run_dir/broken.yaml
sed 's/    fps: 5 /    fps: -5 /' examples/site.yaml > "$broken"
$edgesight config check "$broken" || echo "(exit $? — the error names the file, line and key)"

echo; echo "== 2. a camera: the shared clip over RTSP on port $rtsp_port"
start_rtsp
$edgesight cameras probe "rtsp://127.0.0.1:$rtsp_port/lobby" --frames 25

echo; echo "== 3. a model checked before deploying it: YOLOX-Nano on 100 frames of the clip"
$edgesight detect --model yolox_nano.onnx --source "$clip" --frames 100 \
  --out "$run_dir/detections.jsonl" --annotate "$run_dir/annotated.mp4"
echo "-- frame 60: $(sed -n 61p "$run_dir/detections.jsonl" | grep -o '"label": "person"' | wc -l) persons;" \
  "video with boxes: $run_dir/annotated.mp4"

echo; echo "== 4. the services, supervised (20 s), with a local Mosquitto on port $mqtt_port"
printf 'user %s\nlistener %s 127.0.0.1\nallow_anonymous true\n' "$(whoami)" "$mqtt_port" > "$run_dir/mosquitto.conf"
mosquitto -c "$run_dir/mosquitto.conf" 2>/dev/null &
sleep 0.5
mosquitto_sub -p "$mqtt_port" -t 'edgesight/demo/#' -v > "$run_dir/mqtt.log" &
$edgesight run "$site" --for 20 --status-interval 4 &
run_pid=$!
sleep 5
echo "-- camera states, two frame references and two detections from the bus"
$edgesight bus tail "$site" --stream cameras --count 2
$edgesight bus tail "$site" --stream frames --count 2
$edgesight bus tail "$site" --stream detections --count 2 | cut -c1-400
echo "-- the RTSP server goes away for 3 s: the lobby camera backs off, then streams again"
kill "$rtsp_pid"; wait "$rtsp_pid" 2>/dev/null || true
sleep 3
start_rtsp
sleep 3
# this run's own ingest: the one its `edgesight run` started for $site, not any ingest on the machine
if ingest_pid=$(.venv/bin/python scripts/demo_site.py kill-ingest --under "$run_pid" --site "$site" --wait 5); then
  echo "-- ingest (pid $ingest_pid) killed with SIGKILL: edgesight run restarts it, its rings are reclaimed"
fi
wait "$run_pid"
events=$run_dir/state/events.jsonl
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

echo "-- over MQTT: $(grep -c '^edgesight/demo/events ' "$run_dir/mqtt.log" || true) events," \
  "$(grep -c '/count ' "$run_dir/mqtt.log" || true) count updates; the last count:"
grep '/count ' "$run_dir/mqtt.log" | tail -n1 || true

echo; echo "== 5. an AWS Panorama application, unchanged: examples/panorama/people_counter on the lobby camera"
panorama_site=$run_dir/panorama.yaml
$edgesight panorama import examples/panorama/people_counter \
  --camera "camera_node=rtsp://127.0.0.1:$rtsp_port/lobby" --model model_node=yolox_nano.onnx \
  --param detection_threshold=0.3 --base "$site" --out "$panorama_site"
$edgesight run "$panorama_site" --services broker,ingest,apps --for 15 --status-interval 5 &
run_pid=$!
# the app's HDMI output and state travel on the bus (apps/<app>/), for the console to serve behind its login
.venv/bin/python - "$panorama_site" "$run_dir/panorama_output.jpg" <<'PY'
import asyncio, sys, time
from common.bus import Subscriber
from common.config import load_config
from contracts import AppStatus, AppVideo, topic
from services.apps.sandbox import processes_of

config = load_config(sys.argv[1])
seen = {}

async def watch() -> None:
    async with Subscriber(config.bus.subscribe, "demo", [topic("apps", "people_counter")]) as apps:
        end = time.monotonic() + 13
        while time.monotonic() < end:
            try:
                message = (await asyncio.wait_for(apps.receive(), 1.0)).message
            except asyncio.TimeoutError:
                continue
            seen[type(message).__name__] = message
            if isinstance(message, AppStatus) and message.frames and "uid" not in seen:
                seen["uid"] = sorted(processes_of(config.apps["people_counter"].user_id("people_counter")))

asyncio.run(watch())
status, video = seen.get("AppStatus"), seen.get("AppVideo")
if video is not None:
    open(sys.argv[2], "wb").write(video.jpeg)
    print("-- the app's HDMI output (boxes and count drawn):", sys.argv[2], "(live in the console: /apps)")
else:
    print("-- no output frame yet")
if status is not None:
    print(f"-- app: {status.state}, {status.frames} frames, {status.restarts} restarts, {status.memory_mb} MB;",
          f"sandbox: {status.sandbox} (bubblewrap; processes of its uid on this host: {seen.get('uid', [])})")
PY
wait "$run_pid"
echo "-- what the app logged to /opt/aws/panorama/logs/app.log:"
tail -n 3 "$run_dir/state/apps/people_counter/logs/app.log" || true

echo; echo "== 6. trust: a signed model package, encrypted for this device; what is refused; the audit trail"
keys=$run_dir/keys
$edgesight models keygen --out "$keys"
$edgesight models keygen --out "$keys" --device > /dev/null
model=$(.venv/bin/python -c "from common.assets import find_asset; print(find_asset('yolox_nano.onnx'))")
$edgesight models package "$model" --key "$keys/signing.key" -o "$run_dir/people-2.espkg" \
  --name people --version 2 --encrypt-for "$keys/device.pub"
$edgesight models verify "$run_dir/people-2.espkg" --trusted "$keys/signing.pub" --device-key "$keys/device.key"
.venv/bin/python - "$run_dir/people-2.espkg" "$run_dir/tampered.espkg" <<'PY'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
data[len(data) // 2] ^= 1  # one bit in the middle of the model
open(sys.argv[2], "wb").write(data)
PY
echo "-- one flipped bit:"
$edgesight models verify "$run_dir/tampered.espkg" --trusted "$keys/signing.pub" || true
$edgesight models keygen --out "$keys/someone-else" > /dev/null
$edgesight models package "$model" --key "$keys/someone-else/signing.key" -o "$run_dir/other.espkg" > /dev/null
echo "-- signed by a key this site does not trust:"
$edgesight models verify "$run_dir/other.espkg" --trusted "$keys/signing.pub" || true
trust_site=$run_dir/trust.yaml
.venv/bin/python - "$site" "$trust_site" "$keys" <<'PY'
import sys, yaml
site = yaml.safe_load(open(sys.argv[1]))
site["site"] |= {"trusted_keys": [f"{sys.argv[3]}/signing.pub"], "device_key": f"{sys.argv[3]}/device.key"}
site["models"]["people"]["path"] = "people.espkg"
yaml.safe_dump(site, open(sys.argv[2], "w"), sort_keys=False)
PY
$edgesight models install "$run_dir/people-2.espkg" --config "$trust_site"
$edgesight models list --config "$trust_site"
echo "-- a site with site.trusted_keys runs only signed packages:"
$edgesight config check "$trust_site"
echo "-- the audit trail (sent upstream by the uplink as audit events):"
tail -n 2 "$run_dir/state/audit.jsonl"

echo; echo "== 7. benchmarks, --quick (a smoke test of each; \`make bench\` measures): ours / a baseline in the same run"
# their tables and the services' logs go to a file: here, one line each and the summary
.venv/bin/python -m benchmarks --quick --json "$run_dir/benchmarks.json" --log "$run_dir/benchmarks.log" \
  || { echo "-- the end of its log:"; tail -n 15 "$run_dir/benchmarks.log"; }

echo; echo "== 8. the web console, with the pipeline running"
console_url="http://${EDGESIGHT_DEMO_CONSOLE_HOST:-127.0.0.1}:$EDGESIGHT_DEMO_CONSOLE_PORT"
# its status tables and logs go to a file: the URL and password stay the last lines on screen
$edgesight run "$site" --services broker,ingest,inference,rules,uplink,console > "$run_dir/console-run.log" 2>&1 &
run_pid=$!
.venv/bin/python scripts/console_tour.py --url "$console_url" --password "$EDGESIGHT_CONSOLE_PASSWORD" \
  --out "$run_dir" --camera hall || true
echo "-- the same over the JSON API (GET /api/counts, with the login's cookie):"
.venv/bin/python - "$console_url" <<'PY' || true
import http.cookiejar, json, os, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
login = urllib.request.Request(f"{sys.argv[1]}/api/login", json.dumps({"password": os.environ["EDGESIGHT_CONSOLE_PASSWORD"]}).encode(),
                               {"Content-Type": "application/json"})
opener.open(login, timeout=5)
print("  ", json.load(opener.open(f"{sys.argv[1]}/api/counts", timeout=5))["hall"])
PY
hold_s=$EDGESIGHT_DEMO_HOLD_S  # empty: until Ctrl-C (stdin is a terminal)
if [[ -n $hold_s ]]; then held="for $hold_s s (EDGESIGHT_DEMO_HOLD_S)"; else held="until Ctrl-C"; fi
echo
echo "The console is up $held; log in at"
echo "  $console_url/"
echo "  password: $EDGESIGHT_CONSOLE_PASSWORD"
touch "$run_dir/.holding"  # tells demo_site.py that a Ctrl-C from now on is the end, not an interruption
if [[ -n $hold_s ]]; then
  sleep "$hold_s"
  kill -TERM "$run_pid"
  wait "$run_pid" || true
else
  wait "$run_pid" || true  # Ctrl-C: demo_site.py stops everything
  echo "-- the console stopped by itself; the end of its log:"; tail -n 15 "$run_dir/console-run.log"; exit 1
fi
