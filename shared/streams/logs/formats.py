"""Raw log files as LogLines: a loghub/logparser format string per file kind, presets, a plain fallback.

A format string names the fields of a line in angle brackets, `<Date> <Time> <Pid> <Level> <Component>:
<Content>`, in logparser's convention: the text between fields is a regular expression (so literal brackets
are escaped, `\\[<Time>\\]`, and optional parts are allowed, `(\\[<Pid>\\])?`), runs of spaces match any
whitespace, and `<Content>` is the message. A preset says which fields make the time (a `strptime` format or
`epoch` seconds) and which one names the host; `Level` and `Component` fill the LogLine's fields when the
format has them.

Nothing in a file makes parsing fail: a line the format does not match is counted and kept with the whole line
as its message; a line without a time it can parse takes the previous line's time (the first ones take the
first parsed time, a file without any takes the file's modification time); empty lines are skipped and
counted. `.gz` files are read as they are. Each line becomes a LogLine whose event id is the file's name and
the line number, and whose host is the host field, or else the file's name.

>>> parsed = parse_log_lines(
...     ["081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block blk_38 terminating",
...      "a stack trace line"], PRESETS["hdfs"], source="dn-1.log", mtime_s=0.0)
>>> [(line.event_id, line.component, line.message) for line in parsed.lines]  # doctest: +NORMALIZE_WHITESPACE
[('dn-1.log:1', 'dfs.DataNode$PacketResponder', 'PacketResponder 1 for block blk_38 terminating'),
 ('dn-1.log:2', None, 'a stack trace line')]
>>> parsed.unmatched, parsed.lines[1].timestamp.isoformat()
(1, '2008-11-09T20:36:15+00:00')
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shared.errors import FleetwatchError
from shared.streams.logs.contract import LogLine

CONTENT = "Content"
MAX_MESSAGE_CHARS = 16 * 1024  # the contract's limit; a longer line is cut, not refused
MAX_ID_CHARS = 128
_FIELD = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")
_FRACTION = r"[.,]\d{1,9}$"  # sub-second digits are dropped before strptime (Arrow's has no %f)
LOG_FILE_NAME = re.compile(r"(^[^.]+|\.(log|txt|out)|\.\d+)(\.\d+)?(\.gz)?$")
"""Which files a directory scan takes as logs: `.log`, `.txt`, `.out`, no suffix, rotated (`syslog.1`), `.gz`."""


class LogFormatError(FleetwatchError):
    """A format string or preset name that cannot parse lines."""


@dataclass(frozen=True)
class LogFormat:
    """A format string and how its fields become a LogLine's time, host, level and component."""

    pattern: str
    time_fields: tuple[str, ...] = ()  # joined by one space, then parsed with `time_format`
    time_format: str = ""  # strptime (Arrow's), or "epoch" for seconds since 1970
    yearless: bool = False  # syslog: the time has no year; the file's modification year is assumed
    host_field: str | None = None

    def __post_init__(self) -> None:
        names = self.fields
        if CONTENT not in names:
            raise LogFormatError(f"format {self.pattern!r} has no <Content> field")
        if len(set(names)) != len(names):
            raise LogFormatError(f"format {self.pattern!r} names a field twice")
        missing = [f for f in (*self.time_fields, *([self.host_field] if self.host_field else [])) if f not in names]
        if missing:
            raise LogFormatError(f"format {self.pattern!r} has no field(s) {missing}")
        try:
            self.regex  # noqa: B018 (compiled once here, so a bad format fails at once)
        except re.error as exc:
            raise LogFormatError(f"format {self.pattern!r} is not a valid pattern: {exc}") from exc

    @property
    def fields(self) -> list[str]:
        return _FIELD.findall(self.pattern)

    @cached_property
    def regex(self) -> re.Pattern[str]:
        """logparser's `generate_logformat_regex`: fields become lazy named groups, spaces become \\s+."""
        parts = _FIELD.split(self.pattern)  # literal, field, literal, field, ..., literal
        pattern = "".join(
            f"(?P<{part}>.*?)" if index % 2 else re.sub(" +", r"\\s+", part) for index, part in enumerate(parts)
        )
        return re.compile(f"^{pattern}$")


PRESETS: dict[str, LogFormat] = {
    "hdfs": LogFormat(
        "<Date> <Time> <Pid> <Level> <Component>: <Content>", ("Date", "Time"), "%y%m%d %H%M%S"
    ),
    "bgl": LogFormat(
        "<Label> <Timestamp> <Date> <Node> <Time> <NodeRepeat> <Type> <Component> <Level> <Content>",
        ("Timestamp",), "epoch", host_field="Node",
    ),
    "syslog": LogFormat(
        r"<Month> <Day> <Time> <Host> <Component>(\[<Pid>\])?: <Content>",
        ("Month", "Day", "Time"), "%b %d %H:%M:%S", yearless=True, host_field="Host",
    ),
    "openssh": LogFormat(
        r"<Month> <Day> <Time> <Host> <Component>\[<Pid>\]: <Content>",
        ("Month", "Day", "Time"), "%b %d %H:%M:%S", yearless=True, host_field="Host",
    ),
    "apache": LogFormat(r"\[<Time>\] \[<Level>\] <Content>", ("Time",), "%a %b %d %H:%M:%S %Y"),
    "plain": LogFormat("<Content>"),
}  # fmt: skip
PRESETS["linux"] = PRESETS["syslog"]
"""Format presets by name; `linux` is `syslog` (loghub's Linux logs are syslog)."""


AUTO = "auto"
DETECTION_ORDER = ("hdfs", "bgl", "openssh", "syslog", "apache")
"""Presets `auto` tries, most specific first; `plain` when none matches most lines."""


def detect_format(text_lines: Sequence[str], sample: int = 1000, share: float = 0.9) -> LogFormat:
    """The first preset of `DETECTION_ORDER` that matches, with a time it can parse, `share` of the first `sample`
    non-empty lines (a match alone is not enough: the lazy fields of a loose format match almost anything)."""
    lines = [line for line in text_lines[: sample * 2] if line.strip()][:sample]
    for name in DETECTION_ORDER:
        parsed = parse_log_lines(lines, PRESETS[name], "", 0.0)
        if lines and len(lines) - parsed.untimed >= share * len(lines):
            return PRESETS[name]
    return PRESETS["plain"]


def log_format(spec: str) -> LogFormat | None:
    """A preset by name (any case), a format string with at least `<Content>` (no time; host from the file), or
    None for `auto` (each file's format detected by `detect_format`)."""
    if spec.lower() == AUTO:
        return None
    if spec.lower() in PRESETS:
        return PRESETS[spec.lower()]
    if "<" not in spec:
        presets = ", ".join(["auto", *sorted(PRESETS)])
        example = "'<Date> <Time> <Level> <Component>: <Content>'"
        raise LogFormatError(
            f"unknown format preset {spec!r}; presets: {presets}, or a format string such as {example}"
        )
    return LogFormat(spec)


@dataclass(frozen=True)
class ParsedLog:
    """One file's lines as LogLines, and what parsing had to make do with."""

    source: str
    lines: list[LogLine]
    unmatched: int  # lines the format did not match, kept with the whole line as the message
    untimed: int  # lines whose time was taken from a neighbour (or the file)
    skipped: int  # empty lines
    line_numbers: list[int]  # each LogLine's line number in the file (1-based)
    pattern: str  # the format string the file was parsed with


def parse_log_lines(text_lines: Sequence[str], log_format: LogFormat, source: str, mtime_s: float) -> ParsedLog:
    """Parse the lines of one file; `source` names it in event ids and as the default host."""
    regex, fields = log_format.regex, log_format.fields
    numbers: list[int] = []
    values: list[dict[str, str] | None] = []
    skipped = 0
    # One regex match per line, in C; there is no batch form of a match with named groups.
    for number, raw in enumerate(text_lines, start=1):
        line = raw.strip()
        if not line:
            skipped += 1
            continue
        found = regex.match(line)
        numbers.append(number)
        values.append(found.groupdict() if found else None)
    messages = [
        _message(row[CONTENT] if row is not None and row[CONTENT] else text_lines[number - 1].strip())
        for number, row in zip(numbers, values, strict=True)
    ]
    seconds, untimed = _times(values, log_format, mtime_s)
    host_default = source[-MAX_ID_CHARS:]
    id_prefix = source[-(MAX_ID_CHARS - 12) :]

    level = "Level" if "Level" in fields else None
    component = "Component" if "Component" in fields else None
    lines = [
        LogLine(
            event_id=f"{id_prefix}:{number}",
            source_host=_field(row, log_format.host_field, MAX_ID_CHARS) or host_default,
            timestamp=datetime.fromtimestamp(second, UTC),
            message=message,
            level=_field(row, level, 32),
            component=_field(row, component, 256),
        )
        for number, row, message, second in zip(numbers, values, messages, seconds.tolist(), strict=True)
    ]
    unmatched = sum(row is None for row in values)
    return ParsedLog(source, lines, unmatched, untimed, skipped, numbers, log_format.pattern)


def _field(row: dict[str, str] | None, name: str | None, limit: int) -> str | None:
    value = row.get(name) if row is not None and name else None
    return value[:limit] if value else None


def _message(text: str) -> str:
    return text[:MAX_MESSAGE_CHARS]


def _times(values: list[dict[str, str] | None], log_format: LogFormat, mtime_s: float) -> tuple[np.ndarray, int]:
    """Each line's time in seconds, parsed as one Arrow column; gaps filled from the previous line."""
    if not values:
        return np.zeros(0), 0
    if not log_format.time_fields:
        return np.full(len(values), float(mtime_s)), len(values)
    texts = pa.array(
        [" ".join(row[name] for name in log_format.time_fields) if row is not None else None for row in values],
        pa.string(),
    )
    if log_format.time_format == "epoch":
        numeric = pc.if_else(
            pc.match_substring_regex(texts, r"^\d{9,10}(\.\d+)?$"), texts, pa.scalar(None, pa.string())
        )
        parsed = pc.cast(numeric, pa.float64())
    else:
        texts = pc.replace_substring_regex(texts, _FRACTION, "")
        time_format = log_format.time_format
        if log_format.yearless:
            texts = pc.binary_join_element_wise(str(datetime.fromtimestamp(mtime_s, UTC).year), texts, " ")
            time_format = f"%Y {time_format}"
        stamps = pc.strptime(texts, format=time_format, unit="s", error_is_null=True)
        parsed = pc.cast(pc.cast(stamps, pa.int64()), pa.float64())
    untimed = parsed.null_count
    filled = pc.fill_null_backward(pc.fill_null_forward(parsed))  # the first lines take the first parsed time
    seconds = pc.fill_null(filled, float(mtime_s)).to_numpy(zero_copy_only=False)
    return np.asarray(seconds, dtype=np.float64), untimed


def read_text_lines(path: Path) -> list[str]:
    """A file's lines, `.gz` decompressed on the fly; bytes that are not UTF-8 are replaced, never refused."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        return handle.read().splitlines()


def parse_log_file(path: Path, log_format: LogFormat | None, source: str | None = None) -> ParsedLog:
    """Parse one file (`.gz` or plain) in `log_format` (None: detected); `source` (default: the file's name) names
    it in event ids."""
    try:
        text_lines = read_text_lines(path)
        mtime_s = path.stat().st_mtime
    except (OSError, EOFError) as exc:
        raise FleetwatchError(f"{path}: cannot read ({exc})") from exc
    chosen = log_format or detect_format(text_lines)
    return parse_log_lines(text_lines, chosen, source or path.name, mtime_s)


@dataclass(frozen=True)
class LogFiles:
    """The log files a scan found (sorted), and how many more it left out past `max_files`."""

    root: Path
    files: list[Path]
    left_out: int

    def source_of(self, path: Path) -> str:
        """The file's name relative to the scanned folder (its name alone for a single file)."""
        return str(path.relative_to(self.root)) if self.root.is_dir() else path.name


def scan_log_files(root: Path, max_depth: int = 3, max_files: int = 50) -> LogFiles:
    """The log files under `root` (itself when a file), in at most `max_depth` levels of folders below it, the
    first `max_files` in path order; hidden files and folders are skipped, names follow `LOG_FILE_NAME`."""
    if not root.exists():
        raise FleetwatchError(f"{root}: no such file or folder")
    if root.is_file():
        return LogFiles(root, [root], 0)
    found = sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and len(path.relative_to(root).parts) - 1 <= max_depth
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
        and LOG_FILE_NAME.search(path.name)
    )
    return LogFiles(root, found[:max_files], max(0, len(found) - max_files))
