"""An output file (`record -o`, `trace -o`, `bench --json`): checked before any work, written whole
or not at all.

The path is checked when the OutputFile is made, before the command does anything: an empty
path, a directory, a missing or unwritable directory are refused in one line. The output goes to
a temporary file beside the target and is renamed into place only when complete, so a failed run
leaves no partial file that looks complete (and none at all). A path that is not a plain regular
file (/dev/null, a symbolic link such as /dev/stdout, a pipe) is never renamed over: it is opened
for writing at once, untouched, and the finished output is written into it at the end. A write
that fails (a full disk, /dev/full) is one line.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

from emulator import FtlabError


def _refused(path: str, err: OSError) -> FtlabError:
    return FtlabError(f"{path}: {err.strerror or err}")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class OutputFile:
    """`with OutputFile(path, binary) as out:` writes out.fh; leaving the block normally puts the
    output in place (commit), leaving it with an exception discards it (abort)."""

    def __init__(self, path: str, binary: bool = False):
        if not path:
            raise FtlabError("an empty output path: name a file")
        self.path, self.done = path, False
        self.device: int | None = None  # the fd of a path written in place
        self.tmp: str | None = None  # the temporary file renamed to path
        mode = "w+b" if binary else "w+"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError as err:  # a path through a file, a name too long
            raise _refused(path, err) from None
        if os.path.isdir(path):
            raise FtlabError(f"{path}: Is a directory")
        if st is not None and not stat.S_ISREG(st.st_mode):
            try:  # a device, a link or a pipe: opened now, untouched, so a refusal comes before any work
                self.device = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            except OSError as err:
                raise _refused(path, err) from None
            self.fh = tempfile.TemporaryFile(mode)
            return
        if st is not None and not os.access(path, os.W_OK):
            raise FtlabError(f"{path}: Permission denied")
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder):
            raise FtlabError(f"{path}: No such file or directory")
        try:
            fd, self.tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".part")
        except OSError as err:
            raise FtlabError(f"{path}: cannot create a file in {folder}: {err.strerror}") from None
        os.fchmod(fd, stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask())  # as open() would
        self.fh = os.fdopen(fd, mode)

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        if kind is None:
            self.commit()
        else:
            self.abort()

    def commit(self) -> None:
        """The output is complete: put it in place, or write it into the device (a no-op once done)."""
        if self.done:
            return
        try:
            self.fh.flush()
            if self.tmp is not None:
                os.fsync(self.fh.fileno())
                self.fh.close()
                os.replace(self.tmp, self.path)
                self.tmp = None
            elif self.device is not None:
                if stat.S_ISREG(os.fstat(self.device).st_mode):  # through a link: the file's old text goes
                    os.ftruncate(self.device, 0)
                self.fh.seek(0)
                with open(self.device, "wb", closefd=False) as dev:
                    shutil.copyfileobj(getattr(self.fh, "buffer", self.fh), dev)
        except BrokenPipeError:  # a pipe's reader went away (`-o /dev/stdout | head`): quiet, as on stdout
            raise
        except OSError as err:
            raise _refused(self.path, err) from None
        finally:
            self.abort()

    def abort(self) -> None:
        """Discard the output: nothing new is left at the path (a no-op once done)."""
        if self.done:
            return
        self.done = True
        try:
            self.fh.close()
        except OSError:
            pass
        if self.device is not None:
            os.close(self.device)
        if self.tmp is not None and os.path.exists(self.tmp):
            os.unlink(self.tmp)
