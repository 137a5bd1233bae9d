"""What keeps a user's work safe: files written whole or not at all, one training run per out_dir, and
stopping cleanly when asked to (Ctrl-C, SIGTERM, SLURM's SIGUSR1). No torch: the data scripts use it too."""
import atexit
import datetime
import errno
import os
import re
import secrets
import signal
import socket
import sys

from errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded against each other there
    fcntl = None


def fsync_folder(folder):
    """Make a rename inside folder survive a power cut (a no-op where folders can't be opened)."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def free_bytes(folder):
    try:
        st = os.statvfs(folder)
    except (AttributeError, OSError):  # no statvfs here, or no such folder
        return float("inf")
    return st.f_bavail * st.f_frsize


# atomic_write's temporary files: f"{path}.{pid}-{6 hex digits}.tmp", beside path (remove_leftovers reads the pid)
TEMPORARY = re.compile(r".+\.(\d+)-[0-9a-f]{6}\.tmp")


def atomic_write(path, write, size_hint=None):
    """write(f) into a new file beside path (a name of this writer's own), fsync, rename over path: readers see
    the old file or the new. On any failure it is removed and path left as it was; a full disk is a UserError."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"can't write {path}: the folder {os.path.dirname(path) or '.'} does not exist")
    tmp = f"{path}.{os.getpid()}-{secrets.token_hex(3)}.tmp"
    try:
        if size_hint and size_hint > free_bytes(folder):
            raise OSError(errno.ENOSPC, "not enough free space", path)
        binary = getattr(os, "O_BINARY", 0)  # Windows: without it, every 0x0A byte written would become 0x0D 0x0A
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | binary, 0o666)  # 0o666: the umask decides
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        # torch.save reports a full disk as a RuntimeError from its zip writer: look at the disk itself
        full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) or \
            isinstance(e, Exception) and free_bytes(folder) < 2 ** 20
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e.__context__, KeyboardInterrupt):  # torch.save reports a Ctrl-C as a RuntimeError too
            raise KeyboardInterrupt from None
        if full:
            need = f" (it needs about {size_hint / 2**20:,.1f} MiB)" if size_hint else ""
            kept = "the previous file was left as it was" if os.path.exists(path) else "nothing was written"
            raise UserError(f"no space left on the device to write {path}{need}; {kept}. Free some space "
                            "and run the same command again") from None
        raise
    fsync_folder(folder)


def remove_leftovers(folder):
    """Delete the temporary files of atomic_write calls in folder whose process is gone (killed mid-write)."""
    for name in os.listdir(folder):
        writer = TEMPORARY.fullmatch(name)
        if not writer:
            continue
        try:
            os.kill(int(writer.group(1)), 0)  # signal 0 only asks whether the process exists
        except ProcessLookupError:
            os.remove(os.path.join(folder, name))
        except (PermissionError, OverflowError):  # another user's live process, or not a pid at all
            pass


class RunLock:
    """One training run per out_dir: an fcntl.flock on out_dir/run.lock (whose text says who holds it). The OS
    drops it when the process ends, however it ends, so a dead run never blocks the next."""

    NAME = "run.lock"

    def __init__(self, folder):
        self.folder, self.path, self.fd, self.made_folder = folder, os.path.join(folder, self.NAME), None, False

    def acquire(self):
        """Take the lock (released at exit), creating out_dir if needed; None, or why the run can't start."""
        if fcntl is None:
            return None
        atexit.register(self.release)  # however the run ends, short of kill -9 (then the OS drops the lock)
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            return f"out_dir '{self.folder}' is a file, not a folder; choose another --out_dir"
        try:
            self.made_folder = not os.path.isdir(self.folder)
            os.makedirs(self.folder, exist_ok=True)
            while self.fd is None:  # retry if the holder before us removed the file between our open and lock
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if not os.path.samestat(os.fstat(fd), os.stat(self.path)):
                        raise FileNotFoundError(self.path)  # locked a file that is gone: try again
                    self.fd = fd
                except BlockingIOError:
                    holder = os.read(fd, 300).decode("utf-8", "replace").strip() or "a process"
                    os.close(fd)
                    return (f"out_dir '{self.folder}' is in use by another training run ({holder}); wait for it "
                            "to end or stop it, or choose another --out_dir")
                except FileNotFoundError:
                    os.close(fd)
            started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode())
            remove_leftovers(self.folder)
        except OSError as e:
            return f"out_dir '{self.folder}' can't be written ({e.strerror}); choose another --out_dir"
        return None

    def release(self):
        """Drop the lock and its file; out_dir too if this run created it and left nothing there."""
        if self.fd is None:
            return
        os.remove(self.path)  # while still locked: a waiting process then sees the inode change and retries
        os.close(self.fd)
        self.fd = None
        if self.made_folder and not os.listdir(self.folder):
            os.rmdir(self.folder)


class Unbreakable:
    """A text stream whose writes never fail: once its reader is gone (a closed pipe, `| head`, a dropped ssh
    session, a full disk), the rest goes nowhere, and the run goes on to save when it stops."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        try:
            return self.stream.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed
            self.gone()
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except (OSError, ValueError):
            self.gone()

    def gone(self):
        try:  # what is still buffered, and the flush at exit, go nowhere too
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        except (OSError, ValueError):
            pass
        self.stream = open(os.devnull, "w")

    def __getattr__(self, name):  # fileno, isatty, encoding, ...
        return getattr(self.stream, name)


class StopSignals:
    """SIGTERM (scancel, preemption), SIGUSR1 (SLURM's --signal), SIGHUP (a dropped ssh session) and a first
    Ctrl-C set `signum`, which the loop checks between steps to save and stop. A second Ctrl-C raises
    KeyboardInterrupt; further SIGTERMs wait. Output that can't be written no longer stops the run."""

    def __init__(self, announce=True):
        self.signum, self.announce = None, announce
        sys.stdout, sys.stderr = Unbreakable(sys.stdout), Unbreakable(sys.stderr)
        for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGHUP"):  # one the launcher ignores (nohup, `&`) stays so
            if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) != signal.SIG_IGN:
                signal.signal(getattr(signal, name), self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        if self.announce:  # os.write: print() may be mid-call in the interrupted code, and is not reentrant
            try:
                os.write(2, f"received {signal.Signals(signum).name}: saving a checkpoint, then stopping "
                            "(Ctrl-C again stops at once, without saving)\n".encode())
            except OSError:  # no one reads stderr any more
                pass
