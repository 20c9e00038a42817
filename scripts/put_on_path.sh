#!/usr/bin/env bash
# Puts .venv's `edgesight` on the PATH (bootstrap's last step; safe to run again): a symlink in
# $EDGESIGHT_BIN_DIR (default /usr/local/bin, on root's PATH) when that folder is writable and holds no
# other edgesight; otherwise it prints the `export PATH=...` line to use. Never replaces someone else's file.
set -euo pipefail
cd "$(dirname "$0")/.."
target="$PWD/.venv/bin/edgesight"
bin_dir="${EDGESIGHT_BIN_DIR:-/usr/local/bin}"
link="$bin_dir/edgesight"
export_line="export PATH=\"$PWD/.venv/bin:\$PATH\""

if [[ ! -x $target ]]; then
  echo "bootstrap: $target is missing (pip install -e . makes it)" >&2
  exit 1
fi
if [[ -L $link && $(readlink "$link") == "$target" ]]; then
  :  # linked by an earlier run
elif [[ -e $link || -L $link ]]; then
  echo "bootstrap: $link is another edgesight, left as it is; for this checkout's: $export_line"
  exit 0
elif [[ -d $bin_dir && -w $bin_dir ]]; then
  ln -s "$target" "$link"
  echo "bootstrap: $link -> $target"
else
  echo "bootstrap: cannot write to $bin_dir (not root?); to run edgesight: $export_line"
  exit 0
fi
# Another edgesight earlier on the PATH (pip install --user, another checkout) would still win.
found=$(command -v edgesight || true)
if [[ -z $found ]]; then
  echo "bootstrap: $bin_dir is not on this PATH; to run edgesight: $export_line"
elif [[ $(realpath "$found") != "$(realpath "$target")" ]]; then
  echo "bootstrap: \`edgesight\` finds $found first on this PATH; to run this checkout's: $export_line"
fi
