"""A newcomer's first hour: the README's two quickstart commands, run as written in a fresh copy of the
repo and a fresh virtual environment, offline (pip may only use what is installed already)."""
import os
import re
import subprocess
import sys

import torch

from conftest import REPO


def quickstart_commands():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    block = re.search(r"## Quickstart\n.*?```bash\n(.*?)```", readme, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


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
    assert ckpt["iter_num"] == 2000 and ckpt["best_val_loss"] < 2.1
    assert re.search(r"iter 1990: loss [\d.]+, time [\d.]+ms, mfu n/a, tok/s [\d,]+, eta \d+s", out)
    next_commands = re.findall(r"(python (?:sample|plot)\.py --out_dir=\S+)", out)
    assert len(next_commands) == 2
    samples = shell(next_commands[0])
    assert samples.count("---------------") == 10
    assert "wrote out-shakespeare-char-cpu/loss.png" in shell(next_commands[1])
    tests = shell(commands[1])  # the test command, narrowed to one module by PYTEST_ADDOPTS
    assert re.search(r"\d+ passed", tests) and "failed" not in tests
