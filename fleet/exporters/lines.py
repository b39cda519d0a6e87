"""Lines out of a byte stream that arrives in chunks (a response body, a growing log file)."""

from __future__ import annotations


class LineSplitter:
    """Splits chunks into complete lines (without their newline), holding the bytes of an unfinished line until
    its newline comes. An unfinished line that outgrows `max_line` bytes is dropped whole: its bytes up to the
    next newline are skipped, so a splitter never holds more than about `max_line` bytes."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.partial = bytearray()
        self.skipping = False  # inside an over-long line: drop bytes until its newline

    def feed(self, chunk: bytes) -> tuple[list[bytes], bool]:
        """The lines the chunk completes, and whether an unfinished line was dropped for its length."""
        lines: list[bytes] = []
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            if self.skipping:
                self.skipping = False
            elif self.partial:
                self.partial += chunk[start:end]
                lines.append(bytes(self.partial))
            else:
                lines.append(chunk[start:end])
            self.partial.clear()
            start = end + 1
        overflowed = False
        if start < len(chunk) and not self.skipping:
            self.partial += chunk[start:]
            if len(self.partial) > self.max_line:
                self.partial.clear()
                self.skipping = True
                overflowed = True
        return lines, overflowed

    def unfinished(self) -> bool:
        """A line has begun and not ended (held, or being skipped)."""
        return bool(self.partial) or self.skipping

    def rest(self) -> bytes:
        """The bytes of the unfinished line held so far (none while one is skipped), and forget them."""
        held = bytes(self.partial)
        self.partial.clear()
        self.skipping = False
        return held
