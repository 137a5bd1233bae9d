"""Configuration from plain-Python config files and --key=value overrides.

    cfg = load_config(DEFAULTS, sys.argv[1:])

Each script keeps its defaults in one dict. Positional arguments are config files (plain Python
assignments) and `--key=value` arguments set single keys; all are applied in the order given. Every key must already
exist in the defaults and keep its type (an int may stand where a float is expected), so a typo
is an error naming the key and its closest valid spellings, never a silently ignored setting.
"""
import ast
import difflib
import errno
import os
import sys
import types


class UserError(Exception):
    """A mistake the user can fix. Scripts print it as one `error: ...` line and exit non-zero."""


# failures of the machine or of a path, not of our code: a full disk, a folder the user can't write, a
# read-only mount, a path through a file or to a folder that isn't there
WORLD_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR,
                errno.EISDIR)


def run_main(main):
    """Return main(), turning a UserError (or a full disk, a denied write) into one `error: ...` line and
    exit status 2, and Ctrl-C into one line and status 130. Under torchrun every process stops alike, so
    only rank 0 prints."""
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


def gpt2_encoding():
    """tiktoken's GPT-2 BPE. Its two files are downloaded once and cached; offline, that is one line."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # requests' ConnectionError and the like: tiktoken tries the download once
        raise UserError(f"could not load GPT-2's BPE files ({type(e).__name__}): tiktoken downloads vocab.bpe and "
                        "encoder.json once, then reads them from TIKTOKEN_CACHE_DIR; connect once, or copy them "
                        "there from a machine that has them") from None


def hub_problem():
    """Why the Hugging Face hub can't be reached from here, or None. One quick check: offline, the hub's
    clients would retry for ~25 s before failing."""
    import socket
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy may reach what this machine can't: let the client try
    host = constants.ENDPOINT.split("://")[-1].split("/")[0].split(":")[0]
    try:
        socket.create_connection((host, 443), timeout=10).close()
    except OSError as e:
        return f"{host} can't be reached: {e}"
    return None


def read_utf8(path, what="file"):
    """The text of a UTF-8 file (newlines as written); a missing or non-UTF-8 file is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"{what} '{path}' not found")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{what} '{path}' is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _unknown_key(key, defaults, where):
    close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; valid keys: {', '.join(sorted(defaults))}"
    return UserError(f"unknown config key '{key}' {where}{hint}")


def _coerce(key, value, default, where, optional=()):
    """Check that value fits the type of the default; int -> float is allowed, None for optional keys."""
    if default is None or type(value) is type(default) or (value is None and key in optional):
        return value
    if isinstance(default, float) and type(value) is int:
        return float(value)
    if isinstance(default, list) and isinstance(value, (tuple, int)):  # --save_iters=100,200 or =100
        return list(value) if isinstance(value, tuple) else [value]
    raise UserError(f"config key '{key}' {where} expects {type(default).__name__} "
                    f"(like {default!r}), got {type(value).__name__} {value!r}")


def parse_value(text):
    """'3e-4' -> 0.0003, 'true' -> True, 'gpt2' -> 'gpt2': a Python literal, else the raw string."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError):  # TypeError: e.g. an unhashable dict key
        return text


def read_config_file(path):
    """Run a config file in its own namespace and return the settings it assigns."""
    if not os.path.isfile(path):
        raise UserError(f"config file '{path}' not found (config files go before --key=value overrides)")
    source = read_utf8(path, "config file")
    namespace = {}
    try:
        exec(compile(source, path, "exec"), namespace)
    except Exception as e:  # a typo in the file: say where, not a traceback into our code
        line = getattr(e, "lineno", None) or (e.__traceback__.tb_next.tb_lineno if e.__traceback__.tb_next else "?")
        raise UserError(f"config file '{path}' failed at line {line}: {type(e).__name__}: {e}") from None
    ignored = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)  # imports, helpers
    return {k: v for k, v in namespace.items() if not k.startswith("_") and not isinstance(v, ignored)}


def load_config(defaults, argv, optional=(), given=None):
    """Return a new dict: the defaults updated by each config file and --key=value, left to right.
    Keys in `optional` may also be None; the keys the user set are added to the set `given`, if any."""
    cfg = dict(defaults)
    given = set() if given is None else given
    for arg in argv:
        if not arg.startswith("--"):
            for key, value in read_config_file(arg).items():
                where = f"in {arg}"
                if key not in defaults:
                    raise _unknown_key(key, defaults, where)
                cfg[key] = _coerce(key, value, defaults[key], where, optional)
                given.add(key)
            continue
        key, eq, text = arg[2:].partition("=")
        if not eq:
            raise UserError(f"argument '{arg}' needs a value: write --{key}=VALUE")
        if key not in defaults:
            raise _unknown_key(key, defaults, "on the command line")
        value = parse_value(text)
        if isinstance(defaults[key], str) and not isinstance(value, str):
            value = text  # a string key keeps exactly what was typed, e.g. --wandb_run_name=123
        cfg[key] = _coerce(key, value, defaults[key], "on the command line", optional)
        given.add(key)
    return cfg
