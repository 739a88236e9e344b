"""Synthetic HDFS-like block sessions with labelled anomalies, for the demo and tests.

Each block's life is the HDFS write path: allocation, three replicas received (receiving, packet responder,
received, addStoredBlock), sometimes a later verification and deletion. Hosts and blocks interleave in
time as on a real cluster. Anomalous sessions carry one kind of fault: an exception while writing, a
message no template knows, a replication storm (far more replicas than three), a failed deletion, or a
write that stops partway (every line normal, the session too short). The producer knows when a block's
session is over and sends its end-of-session record.
Labels are per row: a row is anomalous from the first faulty line of its session on, because that is
the first line at which anyone could know; a session cut short is known only at its end record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import numpy as np

from shared.streams.logs.contract import LogLine

EPOCH_S = datetime(2026, 10, 1, tzinfo=UTC).timestamp()
ANOMALY_KINDS = ("write_exception", "unknown_message", "replication_storm", "delete_failure", "cut_short")


@dataclass(frozen=True)
class GeneratedLines:
    lines: list[LogLine]
    is_anomaly: np.ndarray
    anomaly_kind: np.ndarray


def _ip(rng: np.random.Generator) -> str:
    return f"10.250.{rng.integers(0, 20)}.{rng.integers(1, 255)}"


def _normal_session(block: str, rng: np.random.Generator) -> list[str]:
    size = int(rng.integers(1_000, 67_108_864))
    replicas = [_ip(rng) for _ in range(3)]
    lines = [f"BLOCK* NameSystem.allocateBlock: /user/root/rand/_temporary/part-{rng.integers(0, 999):05d}. {block}"]
    for ip in replicas:
        lines.append(f"Receiving block {block} src: /{ip}:{rng.integers(30000, 60000)} dest: /{ip}:50010")
    for responder in range(3):
        lines.append(f"PacketResponder {responder} for block {block} terminating")
    for ip in replicas:
        lines.append(f"Received block {block} of size {size} from /{ip}")
    for ip in replicas:
        lines.append(f"BLOCK* NameSystem.addStoredBlock: blockMap updated: {ip}:50010 is added to {block} size {size}")
    if rng.random() < 0.3:
        lines.append(f"Verification succeeded for {block}")
    if rng.random() < 0.4:
        lines.append(f"BLOCK* NameSystem.delete: {block} is added to invalidSet of {replicas[0]}:50010")
        lines.append(f"Deleting block {block} file /mnt/hadoop/dfs/data/current/subdir{rng.integers(0, 64)}/{block}")
    return lines


def _faulty_session(block: str, kind: str, rng: np.random.Generator) -> tuple[list[str], int]:
    """A session with one fault, and the index of its first faulty line (its length when only its end shows it)."""
    lines = _normal_session(block, rng)
    at = int(rng.integers(2, 7))
    if kind == "cut_short":
        return lines[:at], at
    if kind == "write_exception":
        ip = _ip(rng)
        fault = [
            f"writeBlock {block} received exception java.io.IOException: Connection reset by peer",
            f"PacketResponder {block} 1 Exception java.io.EOFException",
            f"Exception in receiveBlock for block {block} java.io.IOException: Broken pipe from /{ip}",
        ]
        return lines[:at] + fault + lines[at:], at
    if kind == "unknown_message":
        word = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 8))
        return [*lines[:at], f"Unexpected {word} state while handling {block} in volume map", *lines[at:]], at
    if kind == "replication_storm":
        ip = _ip(rng)
        storm = [f"Receiving block {block} src: /{ip}:{rng.integers(30000, 60000)} dest: /{ip}:50010"] * int(
            rng.integers(12, 25)
        )
        return lines[:at] + storm + lines[at:], at
    failure = f"Unexpected error trying to delete block {block}. BlockInfo not found in volumeMap."
    return [*lines, failure], len(lines)


def generate_log_lines(sessions: int, hosts: int, anomaly_rate: float, seed: int) -> GeneratedLines:
    """`sessions` block sessions spread over `hosts` hosts and interleaved in time, in time order, each followed by
    its end-of-session record (`message` None below)."""
    rng = np.random.default_rng(seed)
    host_names = [f"dn-{index:03d}" for index in range(max(1, hosts))]
    messages: list[str | None] = []
    blocks: list[str] = []
    host: list[str] = []
    times: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    kinds: list[str] = []
    start = 0.0
    for index in range(sessions):
        block = f"blk_{'-' if rng.random() < 0.5 else ''}{rng.integers(10**17, 10**18)}"
        if rng.random() < anomaly_rate:
            kind = str(rng.choice(ANOMALY_KINDS))
            session, onset = _faulty_session(block, kind, rng)
        else:
            kind, (session, onset) = "", (_normal_session(block, rng), -1)
        start += float(rng.exponential(2.0))
        offsets = np.cumsum(rng.exponential(0.5, len(session) + 1))  # the end record comes last
        messages += [*session, None]
        blocks += [block] * (len(session) + 1)
        host += [host_names[index % len(host_names)]] * (len(session) + 1)
        times.append(start + offsets)
        label = np.zeros(len(session) + 1, dtype=bool)
        if onset >= 0:
            label[onset:] = True
        labels.append(label)
        kinds += [kind if flagged else "" for flagged in label.tolist()]
    seconds = np.concatenate(times) if times else np.zeros(0)
    order = np.argsort(seconds, kind="stable")
    is_anomaly = np.concatenate(labels)[order] if labels else np.zeros(0, dtype=bool)
    lines = [
        LogLine(
            event_id=f"log-{seed}-{rank}",
            source_host=host[row],
            timestamp=datetime.fromtimestamp(EPOCH_S + seconds[row], tz=UTC),
            message=messages[row] or "",
            level=None if messages[row] is None else "INFO",
            component="dfs.DataNode",
            session_id=blocks[row] if messages[row] is None else None,
            ends_session=messages[row] is None,
        )
        for rank, row in enumerate(order.tolist())
    ]
    return GeneratedLines(lines, is_anomaly, np.array([kinds[row] for row in order.tolist()], dtype=object))


def payloads(lines: list[LogLine]) -> list[bytes]:
    encoder = msgspec.json.Encoder()
    return [encoder.encode(line) for line in lines]
