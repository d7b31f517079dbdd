"""Library chatter off the terminal, and decoder complaints turned into errors.

Decoders print from C (cuCIM's libjpeg prints ``Corrupt JPEG data: premature end of data segment`` on
stdout, libtiff on stderr) and libraries log or warn from Python. While slides are read, ``CAPTURE``
points file descriptors 1 and 2 at a temporary file and sends library log records and warnings there too;
Python's own ``sys.stdout``/``sys.stderr`` (progress bars, our messages) keep writing to the terminal.

A read that made the file grow may have been complained about by its decoder, or by a read in another
thread at the same time: ``checked_read`` then reads it again alone (``exclusive``), so the text that
appears is surely that read's. Nothing is decoded twice unless a decoder spoke.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager
from typing import Callable, TypeVar

T = TypeVar("T")
# what decoders say about damaged data (libjpeg, OpenJPEG, libtiff); other chatter is only kept for the log
CORRUPT = re.compile(r"corrupt|premature|extraneous|bogus|unsupported marker|invalid|truncat|error", re.I)
PREAMBLE = re.compile(r"ERROR in line \d+ while .*:$")


class _Capture:
    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._file = None

    # -- on / off (nested and thread-safe: on while any slide is being read)
    def start(self) -> None:
        with self._lock:
            self._depth += 1
            if self._depth > 1:
                return
            _flush_c()
            for s in (sys.stdout, sys.stderr):
                try:
                    s.flush()
                except Exception:
                    pass
            self._file = tempfile.TemporaryFile()
            self._saved = {fd: os.dup(fd) for fd in (1, 2)}
            self._streams = {}
            for name, fd in (("stdout", 1), ("stderr", 2)):
                stream = getattr(sys, name)
                try:
                    on_fd = stream.fileno() == fd
                except Exception:  # a test runner's in-memory stream: leave it alone
                    on_fd = False
                if on_fd:  # keep Python's own writes on the terminal
                    mine = os.fdopen(os.dup(self._saved[fd]), "w", buffering=1,
                                     encoding=getattr(stream, "encoding", None) or "utf-8", errors="replace")
                    self._streams[name] = (stream, mine)
                    setattr(sys, name, mine)
            for fd in (1, 2):
                os.dup2(self._file.fileno(), fd)
            self._handler = _FileHandler(self._file)
            logging.getLogger().addHandler(self._handler)
            logging.captureWarnings(True)

    def stop(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth > 0:
                return
            _flush_c()
            logging.captureWarnings(False)
            logging.getLogger().removeHandler(self._handler)
            for fd, saved in self._saved.items():
                os.dup2(saved, fd)
                os.close(saved)
            for name, (orig, mine) in self._streams.items():
                if getattr(sys, name) is mine:
                    setattr(sys, name, orig)
                mine.flush()
                mine.close()
            self._file.close()
            self._file = None

    @contextmanager
    def on(self):
        self.start()
        try:
            yield self
        finally:
            self.stop()

    # -- where the file is, and what was written since
    def position(self) -> int:
        if self._file is None:
            return 0
        _flush_c()
        return os.fstat(self._file.fileno()).st_size

    def text(self, since: int) -> str:
        end = self.position()
        if self._file is None or end <= since:
            return ""
        return os.pread(self._file.fileno(), end - since, since).decode("utf-8", "replace")

    # -- reads in parallel, or one alone
    @contextmanager
    def shared(self):
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self):
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _FileHandler(logging.Handler):
    def __init__(self, f):
        super().__init__(logging.WARNING)
        self.f = f

    def emit(self, record):
        try:
            os.write(self.f.fileno(), f"{record.name}: {record.getMessage()}\n".encode("utf-8", "replace"))
        except Exception:
            pass


_LIBC: list = []


def _flush_c() -> None:
    """Flush C stdio buffers, so text a library printf'ed lands in the file now."""
    try:
        if not _LIBC:
            _LIBC.append(ctypes.CDLL(None))
        _LIBC[0].fflush(None)
    except Exception:
        pass


CAPTURE = _Capture()


def checked_read(read: Callable[[], T]) -> tuple[T, str]:
    """``read()`` and what its decoder said ('' when nothing). Capture is turned on for the read where it is off
    (the Python API: ``open_slide(p).thumbnail(32)``), so a decoder's complaint is never lost: +0.1 ms per read
    then, nothing where the CLI already has it on (a nested ``start`` only counts)."""
    with CAPTURE.on():
        with CAPTURE.shared():
            p0 = CAPTURE.position()
            out = read()
            moved = CAPTURE.position() != p0
        if not moved:
            return out, ""
        with CAPTURE.exclusive():  # someone spoke: read again alone, so the words are surely this read's
            p0 = CAPTURE.position()
            out = read()
            return out, CAPTURE.text(p0).strip()


def complaint(text: str) -> str:
    """The decoder's complaint about damaged data in ``text``, as one line ('' when there is none)."""
    said = [ln.strip() for ln in text.splitlines()]
    # cuCIM's own preamble ("ERROR in line 205 while decompressing JPEG image:") is followed by libjpeg's words,
    # which need not sound like damage ("Quantization table 0xe2 was not defined"): keep them together
    said = [f"{nxt} (cuCIM: {ln.rstrip(':')})" if PREAMBLE.match(ln) else ln for ln, nxt in zip(said, said[1:] + [""])]
    lines = [ln for ln in said if CORRUPT.search(ln)]
    lines = [ln for ln in lines if "(cuCIM: " not in ln] or lines  # the plain words first
    lines = list(dict.fromkeys(lines))
    if not lines:
        return ""
    return lines[0][:200] + (f" (and {len(lines) - 1} more)" if len(lines) > 1 else "")
