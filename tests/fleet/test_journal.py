"""The journals fleet state lives in: one fdatasync per batch of concurrent writes, a torn tail cut off, a damaged
line named and skipped, compaction that keeps every live key, and a failed write that leaves memory as the disk."""

import asyncio

import pytest

from services.aggregator.enrollment import NodeRegistry
from services.aggregator.journal import Journal
from services.protocol.errors import ProtocolError


def test_concurrent_writes_share_fsyncs_and_survive_a_reopen(tmp_path):
    async def run():
        journal = Journal(tmp_path / "members.log")
        writes = [journal.put(f"n{i:04d}", {"sample_count": i}) for i in range(500)]
        await asyncio.gather(*writes)
        return journal

    journal = asyncio.run(run())
    assert journal.records == 500 and journal.batches < 50, "group commit: far fewer fsyncs than writes"
    again = Journal(tmp_path / "members.log")
    assert len(again) == 500 and again.get("n0499") == {"sample_count": 499}


def test_without_an_event_loop_each_write_is_durable_before_it_returns(tmp_path):
    journal = Journal(tmp_path / "j.log")
    assert journal.put("a", {"x": 1}) is None
    assert Journal(tmp_path / "j.log").get("a") == {"x": 1}


def test_a_torn_tail_is_cut_off_and_a_damaged_line_is_named_and_skipped(tmp_path, caplog):
    path = tmp_path / "nodes.log"
    journal = Journal(path)
    for i in range(3):
        journal.put(f"k{i}", {"v": i})
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"v":1', b'"v":7')  # a bit flipped on disk: its checksum no longer matches
    path.write_bytes(b"\n".join(lines) + b'00000000 {"k": "half')  # and a batch cut short by kill -9
    reopened = Journal(path)
    assert reopened.entries == {"k0": {"v": 0}, "k2": {"v": 2}}
    assert reopened.damaged_lines == 1
    assert f"{path}:2: damaged line skipped" in caplog.text and "were cut off" in caplog.text
    assert (tmp_path / "nodes.log.damaged").exists(), "the damaged log is kept for inspection before compaction"
    assert Journal(path).entries == reopened.entries and Journal(path).damaged_lines == 0


def test_compaction_keeps_the_latest_value_of_every_live_key(tmp_path):
    path = tmp_path / "reports.log"
    journal = Journal(path)
    for round_no in range(50):
        for k in ("a", "b", "c"):
            journal.put(k, {"round": round_no})
    journal.put("b", None)
    grown = path.stat().st_size
    journal.compact()
    assert path.stat().st_size < grown / 40
    assert Journal(path).entries == {"a": {"round": 49}, "c": {"round": 49}}


def test_a_failed_write_puts_the_entry_back(tmp_path):
    journal = Journal(tmp_path / "j.log")
    journal.put("a", {"v": 1})
    (tmp_path / "j.log").unlink()
    (tmp_path / "j.log").mkdir()  # every append now fails, even as root
    with pytest.raises(OSError):
        journal.put("a", {"v": 2})
    with pytest.raises(OSError):
        journal.put("b", {"v": 3})
    assert journal.entries == {"a": {"v": 1}}

    async def failing_batch():
        writes = [journal.put("c", {"v": 4}), journal.put("a", {"v": 5})]
        results = await asyncio.gather(*writes, return_exceptions=True)
        return results

    results = asyncio.run(failing_batch())
    assert all(isinstance(r, OSError) for r in results)
    assert journal.entries == {"a": {"v": 1}}, "a failed batch leaves memory as the disk has it"


def test_enrollment_rules(tmp_path):
    registry = NodeRegistry(tmp_path)
    digest = "ab" * 32
    enrolled, _ = registry.enroll(digest, None, None)
    assert enrolled.node_id == "node-" + digest[:12] and enrolled.new
    again, _ = registry.enroll(digest, None, None)
    assert again.node_id == enrolled.node_id and not again.new, "a lost answer is asked for again"
    with pytest.raises(ProtocolError) as taken:
        registry.enroll("cd" * 32, enrolled.node_id, None)
    assert taken.value.code == "already_enrolled"
    replaced, _ = registry.enroll("cd" * 32, enrolled.node_id, enrolled.node_id)
    assert replaced.via == "certificate", "the node's certificate may replace its token"
    assert registry.identify(bytes.fromhex("cd" * 32)) == enrolled.node_id
    assert registry.identify(bytes.fromhex(digest)) is None, "the replaced token is nobody's"
    with pytest.raises(ProtocolError) as mismatch:
        registry.enroll("ef" * 32, "other-name", "pump-1")
    assert mismatch.value.code == "certificate_mismatch"
    registry.revoke(enrolled.node_id)
    with pytest.raises(ProtocolError) as revoked:
        registry.identify(bytes.fromhex("cd" * 32))
    assert revoked.value.code == "revoked"
    with pytest.raises(ProtocolError) as again_revoked:
        registry.enroll("cd" * 32, enrolled.node_id, enrolled.node_id)
    assert again_revoked.value.code == "revoked"
    reopened = NodeRegistry(tmp_path)
    assert reopened.revoked == 1 and len(reopened) == 1
    with pytest.raises(ProtocolError):
        reopened.identify(bytes.fromhex("cd" * 32))
