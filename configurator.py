"""Configuration from plain-Python config files and --key=value overrides.

    cfg = load_config(DEFAULTS, sys.argv[1:])

Each script keeps its defaults in one dict. Positional arguments are config files (plain Python
assignments) and `--key=value` arguments set single keys; all are applied in the order given. Every key must already
exist in the defaults and keep its type (an int may stand where a float is expected), so a typo
is an error naming the key and its closest valid spellings, never a silently ignored setting.
"""
import ast
import difflib
import os
import sys
import types


class UserError(Exception):
    """A mistake the user can fix. Scripts print it as one `error: ...` line and exit non-zero."""


def run_main(main):
    """Call main(), turning a UserError into a one-line message and exit status 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _unknown_key(key, defaults, where):
    close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; valid keys: {', '.join(sorted(defaults))}"
    return UserError(f"unknown config key '{key}' {where}{hint}")


def _coerce(key, value, default, where):
    """Check that value fits the type of the default; int -> float is allowed."""
    if default is None or type(value) is type(default):
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
    with open(path) as f:
        source = f.read()
    namespace = {}
    try:
        exec(compile(source, path, "exec"), namespace)
    except Exception as e:  # a typo in the file: say where, not a traceback into our code
        line = getattr(e, "lineno", None) or (e.__traceback__.tb_next.tb_lineno if e.__traceback__.tb_next else "?")
        raise UserError(f"config file '{path}' failed at line {line}: {type(e).__name__}: {e}") from None
    ignored = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)  # imports, helpers
    return {k: v for k, v in namespace.items() if not k.startswith("_") and not isinstance(v, ignored)}


def load_config(defaults, argv):
    """Return a new dict: the defaults updated by each config file and --key=value, left to right."""
    cfg = dict(defaults)
    for arg in argv:
        if not arg.startswith("--"):
            for key, value in read_config_file(arg).items():
                where = f"in {arg}"
                if key not in defaults:
                    raise _unknown_key(key, defaults, where)
                cfg[key] = _coerce(key, value, defaults[key], where)
            continue
        key, eq, text = arg[2:].partition("=")
        if not eq:
            raise UserError(f"argument '{arg}' needs a value: write --{key}=VALUE")
        if key not in defaults:
            raise _unknown_key(key, defaults, "on the command line")
        value = parse_value(text)
        if isinstance(defaults[key], str) and not isinstance(value, str):
            value = text  # a string key keeps exactly what was typed, e.g. --wandb_run_name=123
        cfg[key] = _coerce(key, value, defaults[key], "on the command line")
    return cfg
