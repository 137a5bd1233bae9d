"""How every script ends: a user's mistake is one `error: ...` line and exit status 2, never a traceback.

    if __name__ == "__main__":
        run_main(lambda: main(sys.argv[1:]))
"""
import errno
import os
import sys


class UserError(Exception):
    """A mistake the user can fix. Scripts print it as one `error: ...` line and exit with status 2."""


# failures of the machine or of a path, not of our code: a full disk, a folder the user can't write, a
# read-only mount, a path through a file or to a folder that isn't there
WORLD_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR,
                errno.EISDIR)


def run_main(main):
    """main(), with a UserError (or a full disk, a denied write) as one `error: ...` line and exit status 2,
    Ctrl-C as one line and 130. Under torchrun every process stops alike: only rank 0 prints."""
    def say(line):
        if os.environ.get("RANK", "0") == "0":
            print(line, file=sys.stderr)
    try:
        return main()
    except UserError as e:
        say(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        say("interrupted (Ctrl-C); files are written whole or not at all, so nothing was left half-written")
        sys.exit(130)
    except BrokenPipeError:  # e.g. `python sample.py | head`: the reader went away, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as e:
        if e.errno not in WORLD_ERRNOS:
            raise
        say(f"error: {e.strerror}" + (f": {e.filename}" if e.filename else ""))
        sys.exit(2)


def reason(e, limit=160, last=False):
    """'TypeName: the first (or last) line of the message', cut to limit characters: an exception in a line."""
    lines = [line.strip() for line in str(e).strip().splitlines()] or [""]
    return f"{type(e).__name__}: {lines[-1 if last else 0][:limit]}"


def read_utf8(path, what="file"):
    """The text of a UTF-8 file (newlines as written); a missing or non-UTF-8 file is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"{what} '{path}' not found")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{what} '{path}' is not UTF-8 text ({e.reason} at byte {e.start})") from None
