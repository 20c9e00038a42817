"""scripts/: bootstrap's step that puts `edgesight` on the PATH, run as bootstrap runs it (again and again)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEP = REPO / "scripts" / "put_on_path.sh"
TARGET = REPO / ".venv" / "bin" / "edgesight"


def put_on_path(bin_dir: Path) -> subprocess.CompletedProcess[str]:
    assert TARGET.exists(), "no .venv/bin/edgesight: run scripts/bootstrap.sh (make test does)"
    environment = {**os.environ, "EDGESIGHT_BIN_DIR": str(bin_dir), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    return subprocess.run(["bash", str(STEP)], env=environment, capture_output=True, text=True, check=False)


def test_bootstrap_runs_the_step() -> None:
    assert "scripts/put_on_path.sh" in (REPO / "scripts" / "bootstrap.sh").read_text()


def test_edgesight_is_linked_onto_the_path_once(tmp_path: Path) -> None:
    """The README's commands say `edgesight ...`; after bootstrap it was only in .venv/bin."""
    first = put_on_path(tmp_path)
    assert first.returncode == 0, first.stderr
    link = tmp_path / "edgesight"
    assert link.is_symlink() and os.readlink(link) == str(TARGET), first.stdout
    second = put_on_path(tmp_path)
    assert (second.returncode, second.stdout, second.stderr) == (0, "", ""), "a second run has nothing to do"
    assert os.readlink(link) == str(TARGET) and [p.name for p in tmp_path.iterdir()] == ["edgesight"]
    assert shutil.which("edgesight", path=str(tmp_path)) == str(link)
    version = subprocess.run([str(link), "version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("edgesight ")


def test_another_edgesight_is_left_alone_and_the_export_line_printed(tmp_path: Path) -> None:
    other = tmp_path / "edgesight"
    other.write_text("#!/bin/sh\necho another\n")
    for _ in range(2):
        result = put_on_path(tmp_path)
        assert result.returncode == 0, result.stderr
        assert f'export PATH="{REPO}/.venv/bin:$PATH"' in result.stdout
    assert not other.is_symlink() and other.read_text() == "#!/bin/sh\necho another\n"
