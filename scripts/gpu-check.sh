#!/usr/bin/env bash
# The first thing to run on a machine with an NVIDIA GPU (an x86 server or a Jetson): does EdgeSight's
# TensorRT backend work here? One line a step (PASS / FAIL / SKIP with figures), the whole report as JSON,
# exit status 1 if any step failed. The steps are benchmarks/gpu_check.py's (see its docstring).
#
#   scripts/gpu-check.sh [--python PATH] [--standin] [--json FILE] [--frames N] [--seconds S] [--budget S] [--verbose]
#
# The interpreter: --python PATH as given; else the checkout's .venv; else a new .venv with the package and its
# `tensorrt` extra (on a Jetson: made with --system-site-packages for JetPack's TensorRT, with the `jetson`
# extra), which needs PyPI. The JSON goes to --json FILE, else $OUT/gpu-check.json when $OUT is set, else
# benchmark-results/gpu-check.json. --standin runs every step on tests/standin (no GPU: ONNX Runtime on the
# CPU underneath), which proves the check, not the GPU. Under 8 minutes on a Jetson Orin (--budget, default 450 s).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

python="" standin=0 json="" budget=450 passed=()
while (($#)); do
  case "$1" in
    --python) python=${2:?--python needs a path}; shift 2 ;;
    --json) json=${2:?--json needs a file}; shift 2 ;;
    --standin) standin=1; shift ;;
    --budget) budget=${2:?--budget needs seconds}; shift 2 ;;
    -h|--help) sed -n '2,12s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) passed+=("$1"); shift ;;
  esac
done
json=${json:-${OUT:+$OUT/gpu-check.json}}
json=${json:-$repo/benchmark-results/gpu-check.json}

# A failure before Python can report it: the same line and JSON shape as the Python side's.
fail_early() {
  echo "FAIL environment    0.0 s  $1"
  echo "gpu-check: FAIL (environment); report: $json"
  mkdir -p "$(dirname "$json")"
  # as benchmarks/gpu_report.py writes it: a new file beside it renamed over it, following no planted link
  python3 -I -c 'import json, os, sys, tempfile
step = {"status": "FAIL", "summary": sys.argv[2], "seconds": 0.0, "details": {}}
report = {"standin": sys.argv[3] == "1", "passed": False, "failed": ["environment"], "steps": {"environment": step}}
folder, name = os.path.split(os.path.abspath(sys.argv[1]))
descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=folder)
try:
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(file.fileno(), 0o644)
        file.write(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, sys.argv[1])
finally:
    if os.path.lexists(temporary):
        os.unlink(temporary)' "$json" "$1" "$standin" 2>/dev/null
  exit 1
}

environment_seconds=0
if [[ -n $python ]]; then
  [[ -x $python ]] || fail_early "--python $python is not an executable"
  environment="$python, as given"
elif [[ -e $repo/.venv ]]; then  # never made again nor removed here: it may be someone's working venv
  python=$repo/.venv/bin/python
  "$python" -c '' 2>/dev/null || fail_early "$repo/.venv has no python this user can run; give one with --python PATH"
  environment="the checkout's .venv ($python)"
else
  extra="[tensorrt]" venv_options=()
  if [[ -f /etc/nv_tegra_release ]]; then  # JetPack: TensorRT is a Debian package (python3-libnvinfer)
    extra="[jetson]" venv_options=(--system-site-packages)
  fi
  ((standin)) && extra=""
  command -v python3 >/dev/null || fail_early "no .venv in $repo and no python3 to make one"
  echo "making .venv with $(python3 --version) and pip install -e '.$extra' (a few minutes; needs PyPI) ..."
  started=$SECONDS
  log=${json%.json}-pip.log  # beside the report (in $OUT: it comes back with it)
  mkdir -p "$(dirname "$log")"
  # written as root into a folder others may write to: into a new file (mktemp: a name no one can guess, created,
  # not opened), renamed over $log at the end; so a link planted at $log is replaced, not followed
  writing=$(mktemp "$log.XXXXXXXXXX") || fail_early "cannot create a file beside $log"
  chmod 644 "$writing"
  keep_log() { mv -fT "$writing" "$log" 2>/dev/null || log=$writing; }
  if ! python3 -m venv "${venv_options[@]}" "$repo/.venv" > "$writing" 2>&1; then
    rm -rf "$repo/.venv"
    keep_log
    fail_early "python3 -m venv failed: $(tail -n 1 "$log") (Debian/Ubuntu: apt-get install python3-venv)"
  fi
  if ! "$repo/.venv/bin/python" -m pip install -e "$repo$extra" >> "$writing" 2>&1; then
    rm -rf "$repo/.venv"  # half made: the next run makes it again rather than using it
    keep_log
    fail_early "pip install -e '.$extra' failed after $((SECONDS - started)) s: $(tail -n 1 "$log") (whole log: $log)"
  fi
  keep_log
  python=$repo/.venv/bin/python
  environment_seconds=$((SECONDS - started))
  environment="made .venv and installed '.$extra' in ${environment_seconds} s"
fi

pythonpath=$repo${PYTHONPATH:+:$PYTHONPATH}
((standin)) && pythonpath=$repo/tests/standin:$pythonpath
if ! problem=$(cd "$repo" && PYTHONPATH=$pythonpath "$python" -c 'import benchmarks.gpu_check' 2>&1); then
  fail_early "$python cannot import EdgeSight: $(tail -n 1 <<< "$problem"); pip install -e '.[tensorrt]' into it"
fi

arguments=(--json "$json" --budget "$budget" --environment "$environment" --environment-seconds "$environment_seconds")
((standin)) && arguments+=(--standin)
# Each step has its own limit, past which the Python side writes the report and ends; this outer limit is for
# a step that holds Python's lock (a binding that keeps the GIL through a build): the JSON then has the steps
# finished before it, "finished": false.
limit=$(( ${budget%.*} + 60 ))
cd "$repo" && PYTHONPATH=$pythonpath PYTHONUNBUFFERED=1 timeout --kill-after=15 "$limit" \
  "$python" -m benchmarks.gpu_check "${arguments[@]}" "${passed[@]}"
status=$?
if ((status == 124 || status == 137)); then
  echo "gpu-check: FAIL: killed after ${limit} s, in the step after the last one above (report so far: $json)"
  status=1
fi
exit "$status"
