"""Settings: a script's DEFAULTS dict, updated in order by config files (plain Python assignments) and
--key=value arguments: `cfg = load_config(DEFAULTS, sys.argv[1:])`. A key must exist and keep its type (an int
may stand for a float): a typo is an error naming the closest keys. check(cfg) holds values to RULES."""
import ast
import difflib
import math
import os
import re
import sys
import types

from errors import UserError, read_utf8


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
    """The defaults updated by each config file and --key=value, left to right; keys in `optional` may be None.
    The keys the user set are added to `given`."""
    cfg = dict(defaults)
    given = set() if given is None else given
    if "-h" in argv or "--help" in argv:
        print_help(defaults)
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


def print_help(defaults):
    """--help: the script's docstring, then every setting with its default and the comment DEFAULTS gives it."""
    script = sys.modules["__main__"]
    source = read_utf8(script.__file__) if getattr(script, "__file__", None) else ""
    comments = dict(re.findall(r"^\s*(\w+)=.*?#\s*(.*)$", source, re.M))
    print((script.__doc__ or "").strip() + "\n\nSettings (config files, then --key=value; defaults shown):")
    for key, value in defaults.items():
        shown = f"--{key}={value if isinstance(value, str) and value.isprintable() else repr(value)}"
        print(f"  {shown:<34}" + (f"# {comments[key]}" if key in comments else "").rstrip())
    sys.exit(0)


# What a setting must be, by its name, in every script that has it: (test, what the message says).
KINDS = {
    "positive": (lambda v: v >= 1, "must be at least 1"),
    "count": (lambda v: v is None or v >= 0, "must not be negative"),
    "finite": (lambda v: 0 <= v < math.inf, "must be a finite number >= 0"),
    "fraction": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "probability": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "seed": (lambda v: 0 <= v < 2 ** 62, "must be in [0, 2**62)"),
}
RULES = {
    **dict.fromkeys(("batch_size", "block_size", "n_layer", "n_head", "n_embd", "eval_interval", "log_interval",
                     "eval_iters", "num_samples", "steps", "prompt_tokens", "new_tokens"), "positive"),
    **dict.fromkeys(("max_iters", "save_interval", "keep_last", "warmup_iters", "lr_decay_iters", "hellaswag_limit",
                     "hellaswag_interval", "max_new_tokens", "top_k", "burnin", "limit", "stride"), "count"),
    **dict.fromkeys(("learning_rate", "min_lr", "weight_decay", "grad_clip", "muon_lr", "temperature"), "finite"),
    **dict.fromkeys(("beta1", "beta2", "muon_momentum", "dropout"), "fraction"),
    "top_p": "probability", "seed": "seed",
    "optimizer": ("adamw", "muon"), "mode": ("train", "generate"), "task": ("hellaswag", "perplexity", "export_hf"),
}


def check(cfg, **overrides):
    """A UserError for the first setting that breaks its rule in RULES (or a script's own rule in overrides)."""
    rules = {**RULES, **overrides}
    for key, value in cfg.items():
        rule = rules.get(key)
        if isinstance(rule, tuple) and value not in rule:
            raise UserError(f"unknown {key} '{value}': use {', '.join(rule[:-1])} or {rule[-1]}")
        if isinstance(rule, str) and not KINDS[rule][0](value):
            raise UserError(f"{key}={value} {KINDS[rule][1]}")
    if cfg.get("n_head") and cfg.get("n_embd", 0) % cfg["n_head"]:
        raise UserError(f"n_embd={cfg['n_embd']} must be divisible by n_head={cfg['n_head']}")
