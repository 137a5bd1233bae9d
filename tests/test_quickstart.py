"""A newcomer's first hour: the README's two quickstart commands, run as written in a fresh copy of the
repo and a fresh virtual environment, offline (pip may only use what is installed already)."""
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_script


def quickstart_commands():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    block = re.search(r"## Quickstart\n.*?```bash\n(.*?)```", readme, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_quickstart_from_a_fresh_clone(tmp_path):
    commands = quickstart_commands()
    assert len(commands) == 2 and commands[1].endswith("python -m pytest -q tests")
    clone = tmp_path / "clone"  # what `git clone` would give: the tracked files, nothing built or prepared
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    for name in filter(None, files.stdout.split("\0")):
        if os.path.isfile(os.path.join(REPO, name)):
            os.makedirs(clone / os.path.dirname(name), exist_ok=True)
            with open(os.path.join(REPO, name), "rb") as src, open(clone / name, "wb") as dst:
                dst.write(src.read())
    assert not (clone / "data" / "shakespeare_char" / "train.bin").exists()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    # Python 3.11's venv brings an old setuptools of its own that can't build editable wheels; offline,
    # the build must use the installed one
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "uninstall", "-q", "-y", "setuptools"],
                   capture_output=True)
    env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", VIRTUAL_ENV=str(venv),
               PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0",  # offline: pip uses the installed packages
               PYTHONUNBUFFERED="1", PYTEST_ADDOPTS="-p no:cacheprovider -k test_configurator")

    def shell(command):
        result = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    out = shell(commands[0])
    assert "preparing data/shakespeare_char first" in out
    ckpt = torch.load(clone / "out-shakespeare-char-cpu" / "ckpt.pt", map_location="cpu", weights_only=True)
    assert ckpt["iter_num"] == 300 and ckpt["best_val_loss"] < 2.0
    assert re.search(r"iter 290: loss [\d.]+, time [\d.]+ms, mfu n/a, tok/s [\d,]+, eta \d+s", out)
    next_commands = re.findall(r"(python (?:sample|plot)\.py --out_dir=\S+)", out)
    assert len(next_commands) == 2
    samples = shell(next_commands[0])
    assert samples.count("---------------") == 10
    assert "wrote out-shakespeare-char-cpu/loss.png" in shell(next_commands[1])
    tests = shell(commands[1])  # the test command, narrowed to one module by PYTEST_ADDOPTS
    assert re.search(r"\d+ passed", tests) and "failed" not in tests


def test_time_left_and_a_warning_for_a_run_too_long_for_a_cpu(tmp_path, char_data, monkeypatch):
    import builtins
    from conftest import train
    show = builtins.print

    def print_then_stop(*args, **kwargs):  # the user reads the note, then presses Ctrl-C
        show(*args, **kwargs)
        if str(args[0]).startswith("note: at "):  # after the third log line: hours of steps left on this CPU
            raise KeyboardInterrupt
    monkeypatch.setattr(builtins, "print", print_then_stop)
    res = train(tmp_path, char_data, "--max_iters=10000000", "--eval_interval=100000000", check=False)
    lines = [line for line in res.stdout.splitlines() if line.startswith("iter ")]
    assert all(re.search(r", eta (\d+h\d\dm|\d+m\d\ds|\d+s)$", line) for line in lines) and len(lines) == 3
    assert res.stdout.splitlines()[-1].startswith("note: at ") and "config/train_shakespeare_char_cpu.py" in res.stdout
    assert res.returncode == 130


def test_interactive_sampling_answers_once_per_prompt(tmp_path, char_data):
    from conftest import char_checkpoint
    char_checkpoint(str(tmp_path / "out"), char_data[2])
    result = run_script("sample.py", f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--interactive=True",
                        stdin="Speak\nAll:\n")
    answers = result.stdout.split("---------------")
    assert result.returncode == 0 and len(answers) == 3  # two prompts, one sample each, then the last prompt
    assert all(len(a.replace("> ", "").strip()) >= 200 for a in answers[:2])


def test_plot_names_the_runs_and_says_when_the_axis_is_cut(tmp_path):
    from plot import plot_runs
    train = [{"kind": "train", "iter": i, "loss": 9.0 if i == 0 else 3.0 - i / 100, "lr": 1e-3} for i in range(100)]
    title, label = plot_runs({"run_a": (train, [])}, str(tmp_path / "a.png"))
    assert title == "run: run_a" and label.startswith("loss (axis cut at") and label.endswith("peak 9.00)")
    title, label = plot_runs({"a": (train[1:], []), "b": (train[1:], [])}, str(tmp_path / "b.png"))
    assert title == "runs: a, b" and label == "loss"
