"""Keys the config leaves to be generated, shared by the workers of one supervisor.

The supervisor sets ``SHARED_KEYS_ENV`` to its private (0700) directory: the first worker that
needs a generated key writes it there, the others read it, so a token one worker signs every
worker verifies, and a worker started again signs with the key it had. The directory lives as
long as the supervisor: a pod restart generates new keys, as a single process would.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

SHARED_KEYS_ENV = "AUTHZ_SHARED_KEYS_DIR"


def shared_pem(name: str, generate: Callable[[], bytes]) -> bytes | None:
    """The PEM shared under ``name``, made with ``generate`` by whoever comes first; None when
    this process is not a worker (generate your own)."""
    directory = os.environ.get(SHARED_KEYS_ENV)
    if not directory:
        return None
    path = Path(directory) / name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    pem = generate()
    tmp = path.with_name(f".{name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    try:
        os.link(tmp, path)  # atomic: the first worker's key wins
    except FileExistsError:
        pem = path.read_bytes()
    finally:
        tmp.unlink()
    return pem
