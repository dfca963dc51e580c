"""What `authz audit verify` says about the files of a sidecar that is still running: plainly that
the newest records are not sealed yet (never "no records" under an UNSEALED heading), exit 2."""

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from authz.audit.config import AuditConfig
from authz.audit.log import AuditLog
from authz.audit.verify import verify


async def write(tmp: Path, n: int, key) -> AuditLog:
    """n decisions from a sidecar still running: checkpoints every 5 records, none by time."""
    log = AuditLog(AuditConfig(enabled=True, directory=str(tmp), checkpoint_every_records=5,
                               checkpoint_every_seconds=3600), instance="i1", key=key)
    await log.start()
    for i in range(n):
        assert log.offer({"type": "decision", "request_id": f"r{i}", "decision": "allow", "status": 200})
    await log.drained()
    return log


async def test_a_running_sidecars_newest_records_are_not_sealed_yet(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    log = await write(tmp_path, 7, key)  # the segment record and 4 sealed, 3 not yet
    try:
        report = verify([tmp_path], key.public_key())
        text = report.render()
        assert report.status == 2 and not report.problems, text
        assert "the newest 3 record(s)" in text and "are not sealed yet" in text, text
        assert "still running, run verify again after its next checkpoint" in text
        assert "no records" not in text
    finally:
        await log.close()
    closed = verify([tmp_path], key.public_key())
    assert closed.status == 0, closed.render()


async def test_an_open_segment_with_everything_sealed_says_so(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    log = await write(tmp_path, 4, key)  # the segment record and 4: all sealed
    try:
        report = verify([tmp_path], key.public_key())
        text = report.render()
        assert report.status == 2 and not report.unsealed and report.still_open, text
        assert "OPEN (every record sealed" in text and "UNSEALED" not in text, text
    finally:
        await log.close()
