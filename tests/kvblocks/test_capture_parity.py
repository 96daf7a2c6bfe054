"""Block hashes and the wire format agree with what a real vLLM 0.32 published."""

from __future__ import annotations

import pytest

from llmlbd.kvblocks import hashing, wire
from tests.kvblocks.capture import batches, raw_frames


def stored_events() -> list[dict]:
    return [e for b in batches() for e in b["batch"]["events"] if e["type"] == "BlockStored"]


class TestHashes:
    def test_every_published_hash_is_recomputed_from_its_tokens(self) -> None:
        """Each BlockStored's hashes follow from its token ids and its parent's full digest."""
        digests: dict[int, bytes] = {}
        checked = 0
        for event in stored_events():
            parent = event["parent_block_hash"]
            chain = hashing.chain(
                event["token_ids"],
                event["block_size"],
                parent=None if parent is None else digests[parent],
                first_block=parent is None,
            )
            assert [hashing.published(d) for d in chain] == event["block_hashes"]
            digests.update(zip(event["block_hashes"], chain))
            checked += len(chain)
        assert checked >= 30

    def test_block_hashes_of_a_fresh_prompt_match_the_first_batch(self) -> None:
        """A prompt's own token ids give the published values directly (trailing partial block
        left out)."""
        event = stored_events()[0]
        tokens = event["token_ids"] + [5, 6, 7]  # a partial block is never hashed
        assert hashing.block_hashes(tokens, event["block_size"]) == event["block_hashes"]

    def test_extra_keys_change_the_chain(self) -> None:
        """LoRA name and cache_salt are part of the hash (salt on the first block only)."""
        tokens = list(range(64))
        plain = hashing.block_hashes(tokens, 16)
        lora = hashing.block_hashes(tokens, 16, lora_name="adapter-a")
        salted = hashing.block_hashes(tokens, 16, cache_salt="tenant-1")
        assert len({plain[0], lora[0], salted[0]}) == 3
        assert all(a != b for a, b in zip(plain, lora))
        # the salt enters block 0 only, but the chain carries it into every later block
        assert all(a != b for a, b in zip(plain, salted))
        assert hashing.extra_keys(False, None, "tenant-1") is None
        assert hashing.extra_keys(True, "a", "s") == ("a", "s")

    def test_seed_replaces_the_root(self) -> None:
        """PYTHONHASHSEED on the server changes NONE_HASH, hence every hash."""
        tokens = list(range(32))
        assert hashing.block_hashes(tokens, 16, seed="0") != hashing.block_hashes(tokens, 16)

    def test_block_size_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="block_size"):
            hashing.chain([1, 2], 0)


class TestWire:
    def test_raw_frames_decode_to_the_captured_batch(self) -> None:
        frames = raw_frames()
        assert frames, "the capture holds one raw batch"
        for seq, (topic, seq_frame, payload) in frames.items():
            assert topic == b"kv"
            assert wire.read_seq(seq_frame) == seq
            batch = wire.decode_batch(payload)
            captured = next(b for b in batches() if b["seq"] == seq)["batch"]
            assert batch.ts == captured["ts"]
            kinds = [type(e).__name__ for e in batch.events]
            assert kinds == ["Removed"] * 4 + ["Stored"]
            assert batch.events[0] == wire.Removed(
                [captured["events"][0]["block_hashes"][0]], "GPU"
            )

    def test_our_encoder_produces_the_captured_bytes(self) -> None:
        """The simulator's encoder rebuilds the real payload byte for byte."""
        for seq, (_, seq_frame, payload) in raw_frames().items():
            captured = next(b for b in batches() if b["seq"] == seq)["batch"]
            events = []
            for e in captured["events"]:
                if e["type"] == "BlockRemoved":
                    events.append(wire.block_removed(e["block_hashes"][0]))
                else:
                    events.append(
                        wire.block_stored(
                            e["block_hashes"],
                            e["parent_block_hash"],
                            e["token_ids"],
                            e["block_size"],
                        )
                    )
            assert wire.encode_batch(captured["ts"], events) == payload
            assert wire.seq_bytes(seq) == seq_frame

    def test_every_captured_batch_decodes(self) -> None:
        for row in batches():
            batch = wire.decode_batch(wire.encode_batch(row["batch"]["ts"], row["batch"]["events"]))
            assert len(batch.events) == len(row["batch"]["events"])
            cleared = [e for e in batch.events if isinstance(e, wire.Cleared)]
            assert len(cleared) == sum(
                e["type"] == "AllBlocksCleared" for e in row["batch"]["events"]
            )

    def test_old_tagged_arrays_and_unknown_types(self) -> None:
        payload = wire.msgpack.packb(
            [1.0, [["BlockStored", [1, 2], None, [0] * 32, 16, None, "cpu"], ["Future", 1]], 0]
        )
        batch = wire.decode_batch(payload)
        assert batch.events == [wire.Stored([1, 2], None, [0] * 32, 16, None, "CPU")]

    @pytest.mark.parametrize(
        "payload",
        [b"\xc1", wire.msgpack.packb({"a": 1}), wire.msgpack.packb([1.0, [{"type": 3}], 0])],
    )
    def test_garbage_is_a_wire_error(self, payload: bytes) -> None:
        with pytest.raises(wire.WireError):
            wire.decode_batch(payload)

    def test_replay_frames(self) -> None:
        assert wire.replay_request(7) == [b"", (7).to_bytes(8, "big")]
        assert wire.read_replay([b"", b"kv", wire.seq_bytes(3), b"x"]) == (3, b"x")
        assert wire.read_replay([b"", wire.seq_bytes(3), b"x"]) == (3, b"x")
        assert wire.read_replay([b"", b"", wire.END_SEQ, b""]) is None
