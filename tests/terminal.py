"""A command on a pseudo-terminal, as a person runs it: what it draws is read back as text."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A command on a pseudo-terminal, as a person runs it."""

    def __init__(self, command: list[str], frame_starts: str = "") -> None:
        """``frame_starts``: the text each redrawn frame begins with (``shows`` reads the last)."""
        self.frame_starts = frame_starts or "\x00"
        self._master, slave = pty.openpty()
        env = {**os.environ, "COLUMNS": "180", "LINES": "80", "TERM": "xterm-256color"}
        self.process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.screen = ""

    def read(self) -> str:
        while select.select([self._master], [], [], 0.05)[0]:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # the command has exited and closed its side
                break
            if not chunk:
                break
            self.screen += _ANSI.sub("", chunk.decode(errors="replace"))
        return self.screen

    def shows(self, pattern: str) -> bool:
        """Whether the last frame drawn matches ``pattern``."""
        return re.search(pattern, self.read().rsplit(self.frame_starts, 1)[-1]) is not None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self._master)
