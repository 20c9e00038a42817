"""``console:`` — the web console (overview, live camera pages, events, rule editor, JSON API)."""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, SecretStr, field_validator

from common.config._types import Section

__all__ = ["ConsoleConfig"]

_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


class ConsoleConfig(Section):
    """The console runs only where the site file has this section; it refuses to start without a password."""

    host: str = Field("0.0.0.0", description="Address the console listens on.")
    port: int = Field(8080, ge=1, le=65535, description="The console's own HTTP port (pages and /api).")
    admin_password: SecretStr | None = Field(
        None, description="The password of the console's login. Use ${file:/run/secrets/...}; there is no default."
    )
    api_tokens: list[SecretStr] = Field(
        default_factory=list,
        description="Tokens API clients send as 'Authorization: Bearer <token>' (at least 16 characters each).",
    )
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="A browser login lasts this long.")
    retention_days: float = Field(30.0, gt=0, le=3650, description="Events (and snapshots) older than this are pruned.")
    max_mb: int = Field(1024, ge=1, le=1 << 20, description="The event history's size on disk, snapshots included.")
    webhook_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts ('host' or 'host:port') a webhook added in the rule editor may call; a webhook to any "
        "other destination, a command or a gpio action can only come from the site file itself.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks of reverse proxies (TLS in front of the console) whose "
        "X-Forwarded-For names the client: login limits then count per client, not per proxy.",
    )
    analytics_db: str | None = Field(
        None,
        description="The rules service's rules.sqlite, which the Analytics page reads (read-only); a relative "
        "path is under state_dir. Default state_dir/rules.sqlite: where rules and console share state_dir "
        "(edgesight run, compose). Under k3s, rules' folder mounted read-only in the console's pod.",
    )
    fleet: bool = Field(
        False,
        description="The Fleet page (/fleet, /api/fleet): every site's reported state, heard on the fleet's MQTT "
        "broker (fleet.mqtt, else uplink.mqtt; topics under fleet.topic_root, default $aws). Turn it on for "
        "the console operators watch the fleet from; it needs a broker: without one the console refuses to start.",
    )

    @field_validator("webhook_hosts")
    @classmethod
    def _plain_hosts(cls, hosts: list[str]) -> list[str]:
        bad = [host for host in hosts if not _HOST.fullmatch(host)]  # `$` alone allows a trailing "\n"
        if bad:
            raise ValueError(f"not a host or host:port: {bad[0][:60]!r}")
        return [host.lower() for host in hosts]

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, proxies: list[str]) -> list[str]:
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"not an IP address or network: {proxy[:60]!r}") from None
        return proxies

    @field_validator("api_tokens")
    @classmethod
    def _long_enough(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        short = [i for i, token in enumerate(tokens) if len(token.get_secret_value()) < 16]
        if short:
            raise ValueError(f"token(s) {short} shorter than 16 characters; use e.g. `openssl rand -hex 24`")
        return tokens
