"""Follow a log file by name, as `tail -F` does, and hand out complete lines.

What happens to a log file while it is read, and what the follower does:

* not there yet: it is looked for again at every poll, and read from its start once it appears;
* truncated in place (`copytruncate`, `: > file`): the size drops below the read offset, so reading
  starts over at offset 0;
* rotated by rename and reopen (logrotate's default, or `mv` plus `nginx -s reopen`): the name now
  leads to another file, or to none. The old file stays open and is read to its end for `grace_s` more
  seconds after it last grew, because nginx workers keep writing to it until each has reopened; the new
  file is read from its start at the same time;
* a line being written while it is read: the bytes after the last newline wait for the rest.

A file that exists when the follower starts is read from its end (`from_start=False`), so a restarted
reader does not count the same lines twice. Lines longer than `max_line_bytes` are dropped whole.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleet.exporters.lines import LineSplitter

READ_CHUNK = 1 << 16


@dataclass
class _OpenFile:
    fd: int
    identity: tuple[int, int]  # (st_dev, st_ino)
    lines: LineSplitter
    offset: int = 0
    last_growth: float = 0.0


@dataclass
class FollowStats:
    """What the follower met so far (exported by the gateway log exporter)."""

    opened: int = 0
    rotations: int = 0
    truncations: int = 0
    dropped_lines: int = 0  # over-long lines, and unfinished lines left in a rotated file


class LogFollower:
    """Complete lines appended to `path`, read by `poll()`. See the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        from_start: bool = False,
        grace_s: float = 5.0,
        max_line_bytes: int = 1 << 20,
        max_read_bytes: int = 8 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = os.fspath(path)
        self.grace_s = grace_s
        self.max_line_bytes = max_line_bytes
        self.max_read_bytes = max_read_bytes  # per poll, so one poll never holds a huge backlog in memory
        self.clock = clock
        self.stats = FollowStats()
        # Only a file that is there now holds lines from before this reader; one that appears later is all new.
        self._seek_end_once = not from_start and os.path.exists(self.path)
        self._current: _OpenFile | None = None
        self._retiring: list[_OpenFile] = []

    # ---- public -------------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._current is not None

    def poll(self) -> list[bytes]:
        """Complete lines (without their newline) written since the last call, in file order per file."""
        lines: list[bytes] = []
        budget = [self.max_read_bytes]
        now = self.clock()
        for old in list(self._retiring):
            if self._read(old, lines, budget, now):
                old.last_growth = now
            elif now - old.last_growth >= self.grace_s:
                self._close(old, unfinished=True)
                self._retiring.remove(old)
        if self._current is None:
            self._current = self._open(now)
        if self._current is not None:
            self._read(self._current, lines, budget, now)
            if self._replaced(self._current):
                # Rotated: finish the old file in the background, take the new one (if any) from its start.
                self.stats.rotations += 1
                self._current.last_growth = now
                self._retiring.append(self._current)
                self._current = self._open(now)
                if self._current is not None:
                    self._read(self._current, lines, budget, now)
        return lines

    def close(self) -> None:
        for open_file in [*self._retiring, *([self._current] if self._current else [])]:
            self._close(open_file, unfinished=False)
        self._retiring.clear()
        self._current = None

    def __enter__(self) -> LogFollower:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals ----------------------------------------------------------------------------------

    def _open(self, now: float) -> _OpenFile | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            self._seek_end_once = False  # gone before it was opened: the next file is all new
            return None
        status = os.fstat(fd)
        opened = _OpenFile(fd=fd, identity=(status.st_dev, status.st_ino), lines=LineSplitter(self.max_line_bytes), last_growth=now)
        if self._seek_end_once:
            opened.offset = status.st_size
            self._seek_end_once = False
        self.stats.opened += 1
        return opened

    def _replaced(self, open_file: _OpenFile) -> bool:
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (status.st_dev, status.st_ino) != open_file.identity

    def _read(self, open_file: _OpenFile, lines: list[bytes], budget: list[int], now: float) -> bool:
        """Read what was appended; True when the file grew."""
        size = os.fstat(open_file.fd).st_size
        if size < open_file.offset:
            # Truncated in place: what follows is new; an unfinished line before it is lost.
            self.stats.truncations += 1
            open_file.offset = 0
            if open_file.lines.unfinished():
                self.stats.dropped_lines += 1
            open_file.lines.rest()
        grew = False
        while budget[0] > 0:
            chunk = os.pread(open_file.fd, min(READ_CHUNK, budget[0]), open_file.offset)
            if not chunk:
                break
            grew = True
            open_file.offset += len(chunk)
            budget[0] -= len(chunk)
            self._split(open_file, chunk, lines)
        return grew

    def _split(self, open_file: _OpenFile, chunk: bytes, lines: list[bytes]) -> None:
        complete, overflowed = open_file.lines.feed(chunk)
        for line in complete:
            if len(line) > self.max_line_bytes:
                self.stats.dropped_lines += 1
            else:
                lines.append(line)
        if overflowed:
            self.stats.dropped_lines += 1

    def _close(self, open_file: _OpenFile, unfinished: bool) -> None:
        if unfinished and open_file.lines.partial:
            self.stats.dropped_lines += 1
        os.close(open_file.fd)
