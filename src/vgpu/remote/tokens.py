"""Tenants and their tokens, kept in vgpud's state folder.

A token is shown once, when made (``vgpu token create``); the store keeps only its SHA-256,
with the tenant's name, the GPUs it may use and its memory quota.  vgpud reads the store at
each network handshake, so a new or revoked token counts at once.

>>> store = TokenStore(Path("/tmp/state"))
>>> token = store.create("team-a", gpus=[0], memory=20 << 30)
>>> store.verify(token).name
'team-a'
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_ENV = "VGPU_STATE_DIR"
TOKEN_PREFIX = "vgpu_"


def default_state_dir() -> Path:
    """$VGPU_STATE_DIR, else /var/lib/vgpu for root, else ~/.local/state/vgpu."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    if os.getuid() == 0:
        return Path("/var/lib/vgpu")
    return Path.home() / ".local" / "state" / "vgpu"


@dataclass(frozen=True)
class Tenant:
    """Who a network client is: a name, the GPUs it may use (None: all) and its memory quota
    per GPU in bytes (None: the whole GPU)."""

    name: str
    gpus: tuple[int, ...] | None = None
    memory: int | None = None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "tokens.json"

    def _read(self) -> list[dict]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except ValueError as error:
            raise ValueError(f"{self.path} is not valid JSON ({error}); fix or remove it") from None

    def _write(self, entries: list[dict]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(entries, handle, indent=2)
        temporary.replace(self.path)

    def create(self, tenant: str, gpus: list[int] | None = None, memory: int | None = None) -> str:
        """A new token for a tenant (a tenant may hold several); returns it, once."""
        if not tenant or not tenant.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"tenant name {tenant!r}: use letters, digits, - and _")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        entries = self._read()
        entries.append({"sha256": _digest(token), "created": time.time(),
                        **asdict(Tenant(tenant, tuple(gpus) if gpus is not None else None, memory))})
        self._write(entries)
        return token

    def verify(self, token: str) -> Tenant | None:
        digest = _digest(token)
        for entry in self._read():
            if secrets.compare_digest(entry["sha256"], digest):
                gpus = entry.get("gpus")
                return Tenant(entry["name"], tuple(gpus) if gpus is not None else None, entry.get("memory"))
        return None

    def tenants(self) -> list[dict]:
        """Each token's tenant, GPUs, quota and creation time (never the token)."""
        return [{k: v for k, v in entry.items() if k != "sha256"} for entry in self._read()]

    def revoke(self, tenant: str) -> int:
        """Drop every token of a tenant; how many there were."""
        entries = self._read()
        kept = [entry for entry in entries if entry["name"] != tenant]
        self._write(kept)
        return len(entries) - len(kept)
