"""Settings, from ``YRDHUB_*`` environment variables (and optionally a ``.env``-style file).

Names and defaults are the published interface (world/hub-interface.md, "Starting and
configuring it"); the rest are the hub's own knobs, each with a safe default.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mappers.region import PROVINCES



class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YRDHUB_", env_file=None, extra="ignore")

    database_url: str = "sqlite:///yrdhub.db"
    insurer_sh_url: str | None = None
    insurer_js_url: str | None = None
    insurer_zj_url: str | None = None
    insurer_ah_url: str | None = None
    mllp_port: int = 2575
    # Where MLLP listens; unset: every interface when YRDHUB_MLLP_SENDERS names networks,
    # loopback otherwise (then only local senders are accepted anyway).
    mllp_host: str | None = None
    # "H31010100001@10.1.2.0/24,H31011800012@127.0.0.1"; unset: any hospital, loopback only.
    mllp_senders: str | None = None
    max_body_bytes: int = 20 * 1024 * 1024
    # Processes that map uploads (CPU-bound); None: one per core; 0: map in a thread instead.
    map_workers: int | None = None
    # Apply migrations when the app starts (the CLI's `db upgrade` does the same on demand).
    migrate_on_start: bool = True
    log_level: str = "INFO"
    log_json: bool = True
    # Hours a patient portal session lives.
    session_hours: int = Field(default=8, ge=1)
    # The settlement service's knobs (settlement/service.py, ``Options``, which holds the
    # defaults and their meaning); unset: that default. YRDHUB_SETTLEMENT_WAIT and so on.
    settlement_wait: float | None = None
    settlement_give_up: float | None = None
    settlement_runner_lease: float | None = None
    settlement_person_lease: float | None = None
    settlement_sweep: float | None = None
    settlement_retry_min: float | None = None
    settlement_retry_max: float | None = None
    settlement_max_conflicts: int | None = None
    # The working-day calendar for transfer deadlines; unset: settlement/data/calendar.json.
    transfer_calendar: str | None = None
    # Notification endpoints per hospital (hub-interface.md, "Hospitals: notifications"):
    # "H31010100001=https://his.example/hook,..."; unset: no hospital may subscribe.
    hook_endpoints: str | None = None
    # Delivery of notifications (hub.notify): seconds a call may take in all, parallel calls per
    # endpoint, the retry pauses (growing from ``initial`` to ``max``, with jitter), how long a
    # notification is retried before its Subscription is ``error``, how often the outbox is
    # polled (an upload in this process wakes it at once) and lapsed subscriptions swept.
    hook_timeout: float = Field(default=10.0, gt=0)
    hook_concurrency: int = Field(default=4, ge=1)
    hook_retry_initial: float = Field(default=2.0, gt=0)
    hook_retry_max: float = Field(default=900.0, gt=0)
    hook_give_up: float = Field(default=24 * 3600.0, gt=0)
    hook_poll: float = Field(default=1.0, gt=0)
    hook_sweep: float = Field(default=300.0, gt=0)

    def insurer_urls(self) -> dict[str, str]:
        """Base URL per province, only for the provinces that are configured."""
        urls = {p: getattr(self, f"insurer_{p.lower()}_url") for p in PROVINCES}
        return {p: u.rstrip("/") for p, u in urls.items() if u}

    def hook_endpoint_map(self) -> dict[str, str]:
        """Parsed ``YRDHUB_HOOK_ENDPOINTS``: URL -> the one hospital it is registered for;
        raises ValueError naming the bad entry (no ``=``, or a URL named twice)."""
        owners: dict[str, str] = {}
        for item in (self.hook_endpoints or "").split(","):
            item = item.strip()
            if not item:
                continue
            hospital, _, url = (part.strip() for part in item.partition("="))
            if not hospital or not url:
                raise ValueError(f"YRDHUB_HOOK_ENDPOINTS entry {item!r} is not HOSPITAL=URL")
            if owners.setdefault(url, hospital) != hospital:
                raise ValueError(f"YRDHUB_HOOK_ENDPOINTS names {url} for two hospitals")
        return owners

    def mllp_sender_rules(self) -> list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]]:
        """Parsed ``YRDHUB_MLLP_SENDERS``; raises ValueError naming the bad entry."""
        rules = []
        for item in (self.mllp_senders or "").split(","):
            item = item.strip()
            if not item:
                continue
            hospital, _, net = item.partition("@")
            if not hospital or not net:
                raise ValueError(f"YRDHUB_MLLP_SENDERS entry {item!r} is not HOSPITAL@NETWORK")
            rules.append((hospital, ipaddress.ip_network(net, strict=False)))
        return rules


@lru_cache
def get_settings() -> Settings:
    return Settings()
