"""configurator.py: config files, --key=value overrides, literal parsing, and its user-facing errors."""
import importlib
import re
import sys
import textwrap

import pytest

from conftest import REPO, run_script, train
from configurator import load_config, parse_value
from errors import UserError

DEFAULTS = {
    "out_dir": "out",
    "batch_size": 12,
    "block_size": 1024,
    "learning_rate": 6e-4,
    "dropout": 0.0,
    "compile": True,
    "decay_lr": True,
    "dataset": "openwebtext",
    "wandb_run_name": "gpt2",
    "init_from": "scratch",
    "max_iters": 600000,
    "resume_from": None,
}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_no_arguments_gives_a_copy_of_the_defaults():
    cfg = load_config(DEFAULTS, [])
    assert cfg == DEFAULTS and cfg is not DEFAULTS


def test_config_file_then_overrides_later_wins(tmp_path):
    first = write(tmp_path, "first.py", """
        batch_size = 32
        dataset = 'shakespeare_char'
        dropout = 0.2
    """)
    second = write(tmp_path, "second.py", "dropout = 0.1\nmax_iters = 5000\n")
    snapshot = dict(DEFAULTS)
    cfg = load_config(DEFAULTS, [first, second, "--batch_size=64", "--max_iters=10", "--max_iters=20"])
    assert cfg["dataset"] == "shakespeare_char"  # from the first file only
    assert cfg["dropout"] == 0.1                  # second file beats the first
    assert cfg["batch_size"] == 64                # command line beats the file
    assert cfg["max_iters"] == 20                 # the last override wins
    assert cfg["learning_rate"] == 6e-4           # untouched default
    assert DEFAULTS == snapshot, "load_config must not mutate the defaults"


@pytest.mark.parametrize("arg, key, expected", [
    ("--batch_size=8", "batch_size", 8),
    ("--learning_rate=3e-4", "learning_rate", 3e-4),
    ("--learning_rate=0.001", "learning_rate", 0.001),
    ("--dataset=shakespeare_char", "dataset", "shakespeare_char"),   # unquoted string
    ("--dataset='shakespeare'", "dataset", "shakespeare"),           # quoted string
    ('--out_dir="out dir"', "out_dir", "out dir"),
    ("--init_from=gpt2-xl", "init_from", "gpt2-xl"),                 # not a literal: raw text
    ("--out_dir=out/run-1", "out_dir", "out/run-1"),
    ("--dropout=0", "dropout", 0.0),                                 # int for a float key
    ("--compile=False", "compile", False),
    ("--compile=True", "compile", True),
    ("--decay_lr=false", "decay_lr", False),
    ("--decay_lr=true", "decay_lr", True),
    ("--wandb_run_name=123", "wandb_run_name", "123"),               # str key keeps the typed text
    ("--wandb_run_name=3e-4", "wandb_run_name", "3e-4"),
    ("--wandb_run_name=True", "wandb_run_name", "True"),
    ("--resume_from=out/ckpt.pt", "resume_from", "out/ckpt.pt"),    # None default takes anything
])
def test_override_parsing(arg, key, expected):
    value = load_config(DEFAULTS, [arg])[key]
    assert value == expected and type(value) is type(expected), (value, type(value))


def test_parse_value():
    assert parse_value("3e-4") == 3e-4 and isinstance(parse_value("3e-4"), float)
    assert parse_value("12") == 12 and isinstance(parse_value("12"), int)
    assert parse_value("true") is True and parse_value("False") is False
    assert parse_value("None") is None
    assert parse_value("gpt2") == "gpt2"
    assert parse_value("(1, 2)") == (1, 2)


def test_int_in_config_file_for_float_key(tmp_path):
    path = write(tmp_path, "c.py", "learning_rate = 1\ndropout = 0\n")
    cfg = load_config(DEFAULTS, [path])
    assert cfg["learning_rate"] == 1.0 and type(cfg["learning_rate"]) is float
    assert type(cfg["dropout"]) is float


def test_unknown_command_line_key_suggests_closest():
    with pytest.raises(UserError) as err:
        load_config(DEFAULTS, ["--batchsize=3"])
    msg = str(err.value)
    assert "batchsize" in msg and "batch_size" in msg and "command line" in msg
    assert "learning_rate" not in msg, "should suggest the close keys, not list them all"


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(UserError) as err:
        load_config(DEFAULTS, ["--zzzzzz=1"])
    assert "zzzzzz" in str(err.value) and "learning_rate" in str(err.value)


def test_misspelled_key_in_config_file(tmp_path):
    path = write(tmp_path, "typo.py", "batch_size = 4\nlearning_rat = 1e-3\n")
    with pytest.raises(UserError) as err:
        load_config(DEFAULTS, [path])
    msg = str(err.value)
    assert "learning_rat" in msg and path in msg and "learning_rate" in msg


def test_missing_config_file():
    with pytest.raises(UserError, match="no_such_config.py"):
        load_config(DEFAULTS, ["config/no_such_config.py"])


@pytest.mark.parametrize("arg", ["--batch_size=abc", "--batch_size=1.5", "--batch_size=True", "--compile=1"])
def test_wrong_type_names_the_key(arg):
    key = arg[2:].split("=")[0]
    with pytest.raises(UserError, match=key):
        load_config(DEFAULTS, [arg])


def test_wrong_type_in_config_file(tmp_path):
    path = write(tmp_path, "bad.py", "dataset = 5\n")
    with pytest.raises(UserError) as err:
        load_config(DEFAULTS, [path])
    assert "dataset" in str(err.value) and path in str(err.value)


def test_flag_without_value():
    with pytest.raises(UserError, match="compile"):
        load_config(DEFAULTS, ["--compile"])


def test_config_file_with_imports_and_computed_values(tmp_path):
    path = write(tmp_path, "computed.py", """
        import math
        import time
        batch_size = 4 * 8
        learning_rate = 1 / math.sqrt(4) * 1e-3
        wandb_run_name = 'run-' + str(int(time.time()))
        def _helper(x):
            return x
        def helper(x):
            return 2 * x
        max_iters = helper(_helper(50))
        _scratch = 'ignored'
    """)
    cfg = load_config(DEFAULTS, [path])
    assert cfg["batch_size"] == 32 and cfg["max_iters"] == 100
    assert cfg["learning_rate"] == pytest.approx(5e-4)
    assert cfg["wandb_run_name"].startswith("run-")
    assert set(cfg) == set(DEFAULTS)  # no 'math', 'time', 'helper' or '_scratch' ghost keys


def test_config_file_may_import_builtin_functions(tmp_path):
    path = write(tmp_path, "from_import.py", "from math import sqrt\nfrom os.path import join\n"
                                              "batch_size = int(sqrt(16))\nout_dir = join('out', 'a')\n")
    cfg = load_config(DEFAULTS, [path])
    assert cfg["batch_size"] == 4 and cfg["out_dir"].endswith("a")
    assert set(cfg) == set(DEFAULTS)


def test_non_literal_brace_text_is_a_type_error_not_a_crash():
    assert load_config(DEFAULTS, ["--dataset={[1]: 2}"])["dataset"] == "{[1]: 2}"
    with pytest.raises(UserError, match="batch_size"):
        load_config(DEFAULTS, ["--batch_size={[1]: 2}"])


RUN_MAIN_SCRIPT = (
    "import sys\n"
    "from configurator import load_config\nfrom errors import run_main\n"
    "def main():\n"
    "    cfg = load_config({'batch_size': 12, 'learning_rate': 6e-4}, sys.argv[1:])\n"
    "    print('batch_size', cfg['batch_size'])\n"
    "run_main(main)\n"
)


def test_run_main_turns_user_error_into_one_line():
    bad = run_script("-c", RUN_MAIN_SCRIPT, "--batchsize=3", cwd=REPO, check=False, timeout=60)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), bad.stderr
    assert "batchsize" in lines[0] and "batch_size" in lines[0]
    assert "Traceback" not in bad.stderr and bad.stdout == ""
    good = run_script("-c", RUN_MAIN_SCRIPT, "--batch_size=3", cwd=REPO, check=False, timeout=60)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == "batch_size 3" and good.stderr == ""


def test_run_main_lets_programmer_errors_through():
    script = "from errors import run_main\ndef main():\n    raise RuntimeError('boom')\nrun_main(main)\n"
    res = run_script("-c", script, cwd=REPO, check=False, timeout=60)
    assert res.returncode == 1 and "RuntimeError: boom" in res.stderr and "Traceback" in res.stderr


def test_config_file_with_a_typo_is_one_line(tmp_path, char_data):
    (tmp_path / "my_config.py").write_text("batch_size = 4\nlearning_rate = 1e-3 +\n")
    res = train(tmp_path, char_data, str(tmp_path / "my_config.py"), check=False)
    assert res.returncode == 2 and re.search(r"my_config.py' failed at line 2: SyntaxError", res.stderr)


@pytest.mark.parametrize("script", ["train", "sample", "bench", "eval", "plot"])
def test_help_lists_every_setting_with_its_default_and_comment(script, monkeypatch, capsys):
    module = importlib.import_module(script)
    monkeypatch.setitem(sys.modules, "__main__", module)  # as when the script runs
    with pytest.raises(SystemExit) as e:
        load_config(module.DEFAULTS, ["--batchsize=3", "-h"])  # help first, whatever else is on the line
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith(module.__doc__.strip().splitlines()[0])
    settings = [line.split()[0] for line in out.splitlines() if line.startswith("  --")]
    assert [s.split("=")[0] for s in settings] == [f"--{key}" for key in module.DEFAULTS]
    if script == "train":
        assert "  --out_dir=out" in out and "# where ckpt.pt is written and read" in out
