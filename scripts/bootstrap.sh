#!/usr/bin/env bash
# Sets up a fresh Debian machine (as root) or refreshes an existing checkout; safe to run again.
#   - the Debian packages in scripts/apt-packages.txt (only the missing ones; apt-get update once);
#     /dev/net/tun usable by every uid, as Debian has it (a Panorama app's own network)
#   - .venv with this project installed editable, with the test extra
#   - `edgesight` on the PATH (scripts/put_on_path.sh)
#   - the Node.js client's npm packages (tests/clients/node, from its package-lock.json: a test runs it)
# Re-installs Python packages only when pyproject.toml, setup.py or the C helper changed, npm packages only
# when package-lock.json changed.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
while read -r package; do
  [[ -z "$package" || "$package" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done < scripts/apt-packages.txt
# kubectl (its built-in kustomize renders k3s/) often comes from elsewhere; Debian's is the fallback
command -v kubectl >/dev/null || missing+=(kubernetes-client)
# Node.js runs the second-language client test (tests/clients/node); Debian's is the fallback
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# pasta gives a Panorama app its own network through /dev/net/tun, opened as the app's own uid:
# Debian's udev makes it 0666; a minimal VM or container may have left it 0600
if [[ -c /dev/net/tun && $(stat -c %a /dev/net/tun) != 666 && $(id -u) -eq 0 ]]; then
  echo "bootstrap: chmod 0666 /dev/net/tun (Debian's default; Panorama apps' own network)"
  chmod 0666 /dev/net/tun
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "bootstrap: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.edgesight-installed
digest=$(cat pyproject.toml setup.py common/shm/_fence.c | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$digest" ]] || ! .venv/bin/python -c "import common.shm._fence" 2>/dev/null; then
  echo "bootstrap: installing Python packages into .venv"
  log=.venv/pip-install.log
  if ! { .venv/bin/python -m pip install --upgrade pip setuptools wheel &&
         .venv/bin/python -m pip install -e ".[test]"; } > "$log" 2>&1; then
    tail -n 30 "$log"
    echo "bootstrap: pip install failed; the whole log is in $log" >&2
    exit 1
  fi
  .venv/bin/python -c "import common.shm._fence"  # the C helper must have been built
  echo "$digest" > "$stamp"
fi

# the lock pins every npm package; zeromq comes with prebuilt binaries (nothing compiles, nothing downloads at test time)
client=tests/clients/node
npm_stamp=$client/node_modules/.edgesight-installed
npm_digest=$(sha256sum "$client/package-lock.json" | cut -d' ' -f1)
if [[ ! -f $npm_stamp || $(cat "$npm_stamp") != "$npm_digest" ]] ||
   ! (cd "$client" && node -e "require('zeromq'); require('@msgpack/msgpack')" 2>/dev/null); then
  echo "bootstrap: installing npm packages into $client/node_modules"
  npm_log=.venv/npm-ci.log
  if ! (cd "$client" && npm ci --no-audit --no-fund --loglevel=error) > "$npm_log" 2>&1; then
    tail -n 30 "$npm_log"
    echo "bootstrap: npm ci failed in $client; the whole log is in $npm_log" >&2
    exit 1
  fi
  (cd "$client" && node -e "require('zeromq')")  # its prebuilt binary must load on this machine
  echo "$npm_digest" > "$npm_stamp"
fi
scripts/put_on_path.sh
