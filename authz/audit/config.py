"""The ``audit:`` section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from authz.schema import Model


class RedisStreamConfig(Model):
    """An additional sink: every record line XADDed to a Redis Stream for central collection.
    The file (or stdout) sink stays the source of truth; the stream is best effort."""

    url: str = ""                          # empty: off
    stream: str = "authz:audit"
    maxlen: int = Field(1_000_000, ge=1)   # XADD MAXLEN ~ maxlen (trimmed records show as a gap)
    buffer_records: int = Field(100_000, ge=1, le=10_000_000)  # unsent lines kept while Redis is down


class AuditConfig(Model):
    enabled: bool = False                  # the reference config turns it on; see README
    sink: Literal["file", "stdout"] = "file"
    directory: str = "audit"               # file sink: one sub-directory per instance
    rotate_bytes: int = Field(64 * 1024 * 1024, ge=4096)
    checkpoint_every_records: int = Field(1000, ge=1, le=1_000_000)
    checkpoint_every_seconds: float = Field(5.0, gt=0, le=3600)
    queue_size: int = Field(10_000, ge=1, le=10_000_000)
    # What a request does when the writer cannot keep up: wait up to block_ms, then refuse
    # (503 audit.unavailable); or refuse at once. Records are never dropped silently.
    on_full: Literal["block", "fail_closed"] = "block"
    block_ms: int = Field(50, ge=0, le=10_000)
    signing_key_file: str | None = None    # Ed25519 private key, PEM (authz audit keygen)
    # The key of the body digests (HMAC-SHA256): any file of at least 32 bytes, e.g. from
    # `authz audit keygen`. Unset: derived from the signing key (README: "Body digests").
    digest_key_file: str | None = None
    # When a decision record is safe, relative to Check's answer (README: "Durability"):
    #   queued   - in memory when Check answers; written within ~100 ms; kill -9 loses that much
    #   answered - handed to the OS (written, group commit) before Check answers; kill -9 loses
    #              none; a machine crash loses what the OS had not synced yet
    #   fsync    - as answered, and synced to disk first: survives a machine crash
    durability: Literal["queued", "answered", "fsync"] = "answered"
    redis_stream: RedisStreamConfig = RedisStreamConfig()
