"""Every YAML a user copies from the README or the examples parses (issue #23: the README's
``api_tokens: [${file:...}]`` was not YAML at all)."""

from __future__ import annotations

import re

import yaml

from tests.conftest import REPO


def test_every_yaml_block_of_the_readme_parses() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    assert blocks
    for block in blocks:
        yaml.safe_load(block)


def test_the_example_sites_commented_console_parses_once_uncommented() -> None:
    text = (REPO / "examples" / "site.yaml").read_text()
    section = re.search(r"^# console:\n((?:#   .*\n)+)", text, re.MULTILINE)
    assert section, "examples/site.yaml shows a commented console: section"
    uncommented = "console:\n" + "".join(line[1:] + "\n" for line in section.group(1).splitlines())
    console = yaml.safe_load(uncommented)["console"]
    assert console["api_tokens"] == ["${file:/run/secrets/edgesight_api_token}"]


def test_the_walkthrough_site_checks_as_shipped_once_the_password_is_exported() -> None:
    """README, "Your own site in 10 minutes": examples/my-site.yaml, unedited, with only the
    password exported (and no camera: the shared clip), is valid; without it, the message says what to do."""
    import pytest

    from common.config import load_config
    from common.errors import ConfigError

    site = REPO / "examples" / "my-site.yaml"
    config = load_config(site, environ={"EDGESIGHT_CONSOLE_PASSWORD": "a-long-enough-password"})
    assert config.console is not None and config.cameras["entrance"].url == "people.mp4"
    assert set(config.cameras["entrance"].rules) == {"doorway", "waiting-area", "queue-too-long"}
    with pytest.raises(ConfigError, match="export EDGESIGHT_CONSOLE_PASSWORD=") as refused:
        load_config(site, environ={})
    assert "my-site.yaml:" in str(refused.value) and "console.admin_password" in str(refused.value)
    readme = (REPO / "README.md").read_text()
    assert "## Your own site in 10 minutes" in readme and "examples/my-site.yaml" in readme


def test_the_readmes_example_error_is_what_config_check_says() -> None:
    """The README shows `config check` on examples/site.yaml with dock-1's fps broken (as the demo does)."""
    import pytest

    from common.config import parse_config
    from common.errors import ConfigError

    broken = (REPO / "examples" / "site.yaml").read_text().replace("    fps: 5 ", "    fps: -5 ", 1)
    with pytest.raises(ConfigError) as refused:
        parse_config(broken, "site.yaml", environ={})
    said = str(refused.value).splitlines()[0].strip()
    assert said.startswith("site.yaml:") and "cameras.dock-1.fps" in said
    assert said in (REPO / "README.md").read_text()
