"""Nothing is lost: exact resume, SIGKILL at any moment, checkpoint policy, and one-line errors for
bad input that leave every file on disk as it was."""
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import EXACT, REPO, TINY, assert_same_state, char_checkpoint, load, popen, run_script, train, tree

def test_stop_and_resume_from_any_checkpoint_is_bit_exact(tmp_path, char_data):
    full = tmp_path / "full"
    train(tmp_path, char_data, *EXACT, "--max_iters=8", "--save_interval=2", f"--out_dir={full}")
    reference = load(full / "ckpt.pt")
    assert reference["iter_num"] == 8 and len(reference["rng"]) == 1
    # stopped at 3 (a step with no scheduled save: the last step always saves), then resumed
    train(tmp_path, char_data, *EXACT, "--max_iters=3", f"--out_dir={tmp_path / 'stopped'}")
    train(tmp_path, char_data, *EXACT, "--max_iters=8", "--init_from=resume", f"--out_dir={tmp_path / 'stopped'}")
    assert_same_state(load(tmp_path / "stopped" / "ckpt.pt"), reference)
    # resumed from the snapshots the full run left behind
    for it in (2, 6):
        out = tmp_path / f"from{it}"
        out.mkdir()
        shutil.copy(full / f"ckpt_{it:07d}.pt", out)
        res = train(tmp_path, char_data, *EXACT, "--max_iters=8", "--init_from=resume", f"--out_dir={out}")
        assert f"resuming from {out / f'ckpt_{it:07d}.pt'} at iteration {it}" in res.stdout
        assert_same_state(load(out / "ckpt.pt"), reference)


def test_torchrun_resume_is_bit_exact(tmp_path, char_data):
    """Two processes draw different dropout masks; each gets its own random state back."""
    common = [*TINY, *EXACT, f"--data_dir={char_data[0]}", f"--dataset={char_data[1]}",
              "--gradient_accumulation_steps=2"]
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", os.path.join(REPO, "train.py")]
    run_script(*torchrun, *common, "--max_iters=4", f"--out_dir={tmp_path / 'full'}", cwd=tmp_path)
    run_script(*torchrun, *common, "--max_iters=2", f"--out_dir={tmp_path / 'part'}", cwd=tmp_path)
    assert len(load(tmp_path / "part" / "ckpt.pt")["rng"]) == 2
    run_script(*torchrun, *common, "--max_iters=4", "--init_from=resume", f"--out_dir={tmp_path / 'part'}",
               cwd=tmp_path)
    assert_same_state(load(tmp_path / "part" / "ckpt.pt"), load(tmp_path / "full" / "ckpt.pt"))


def launch(tmp_path, char_data, out, *extra):
    data_dir, dataset, _ = char_data
    init = "resume" if any(f.endswith(".pt") for f in os.listdir(out)) else "scratch"
    argv = [sys.executable, os.path.join(REPO, "train.py"), *TINY, f"--data_dir={data_dir}", f"--dataset={dataset}",
            f"--out_dir={out}", f"--init_from={init}", *extra]
    return popen(argv, tmp_path, stderr=subprocess.STDOUT)


def test_sigkill_at_random_moments_then_resume_ends_identical(tmp_path, char_data):
    settings = [*EXACT, "--max_iters=16", "--save_interval=1", "--keep_last=2"]
    train(tmp_path, char_data, *settings, f"--out_dir={tmp_path / 'full'}")
    out = tmp_path / "killed"
    out.mkdir()
    rng = random.Random(0)
    kill_at = sorted(rng.sample(range(1, 15), 3))  # kill after these lines, some of them right inside a save
    triggers = [f"iter {k}:" if rng.random() < 0.5 else f"ckpt_{k:07d}.pt" for k in kill_at]
    for trigger in triggers:
        proc = launch(tmp_path, char_data, out, *settings)
        for line in proc.stdout:
            if trigger in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"never saw {trigger!r}"
    proc = launch(tmp_path, char_data, out, *settings)
    log = proc.communicate()[0]
    assert proc.returncode == 0, log
    assert_same_state(load(out / "ckpt.pt"), load(tmp_path / "full" / "ckpt.pt"))
    assert sorted(f for f in os.listdir(out) if f.startswith("ckpt_") and f.endswith(".pt")) == \
        ["ckpt_0000015.pt", "ckpt_0000016.pt"]  # keep_last=2


def _write_big_checkpoint(path, template):
    from checkpoint import save_checkpoint
    ckpt = torch.load(template, weights_only=True)
    ckpt["padding"] = torch.zeros(200_000_000, dtype=torch.uint8)  # long enough to be caught mid-write
    save_checkpoint(ckpt, path)


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, char_data):
    settings = [*EXACT, "--max_iters=6"]
    train(tmp_path, char_data, *settings, f"--out_dir={tmp_path / 'full'}")
    out = tmp_path / "out"
    train(tmp_path, char_data, *EXACT, "--max_iters=3", f"--out_dir={out}")
    before = (out / "ckpt.pt").read_bytes()
    writer = multiprocessing.get_context("spawn").Process(
        target=_write_big_checkpoint, args=(str(out / "ckpt.pt"), str(out / "ckpt.pt")))
    writer.start()
    def partial():
        return [p for p in out.glob("ckpt.pt.*.tmp") if p.stat().st_size > 1_000_000]
    deadline = time.time() + 120
    while not partial() and time.time() < deadline:
        time.sleep(0.005)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    assert partial() and (out / "ckpt.pt").read_bytes() == before  # killed mid-write; old file whole
    train(tmp_path, char_data, *settings, "--init_from=resume", f"--out_dir={out}")
    assert_same_state(load(out / "ckpt.pt"), load(tmp_path / "full" / "ckpt.pt"))


def test_checkpoint_policy_snapshots_best_and_keep_last(tmp_path, char_data):
    train(tmp_path, char_data, "--max_iters=10", "--eval_interval=5", "--save_interval=2", "--keep_last=2",
          "--save_iters=[3]", "--keep_best=True")
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["best.pt", "ckpt.pt", "ckpt_0000003.pt", "ckpt_0000008.pt",
                                       "ckpt_0000010.pt", "log.jsonl"]
    assert load(out / "ckpt_0000003.pt")["iter_num"] == 3 and load(out / "ckpt.pt")["iter_num"] == 10
    best = load(out / "best.pt")
    assert best["iter_num"] in (5, 10) and best["best_val_loss"] == load(out / "ckpt.pt")["best_val_loss"]


def test_resume_picks_the_newest_readable_checkpoint(tmp_path, char_data):
    out = tmp_path / "out"
    train(tmp_path, char_data, "--max_iters=6", "--eval_interval=4", "--save_interval=5",
          "--always_save_checkpoint=False")
    assert load(out / "ckpt.pt")["iter_num"] in (4, 6) and (out / "ckpt_0000005.pt").exists()
    (out / "ckpt_0000009.pt").write_bytes(b"not a checkpoint")  # newest by name, but unreadable
    ckpt_iter = load(out / "ckpt.pt")["iter_num"]
    res = train(tmp_path, char_data, "--max_iters=7", "--eval_interval=4", "--init_from=resume")
    newest = "ckpt.pt" if ckpt_iter == 6 else "ckpt_0000005.pt"
    assert f"resuming from {out / newest}" in res.stdout
    assert "skipping" in res.stdout and (out / "ckpt_0000009.pt").read_bytes() == b"not a checkpoint"


def test_compile_failure_falls_back_to_eager_with_one_warning(tmp_path, char_data):
    res = run_script("train.py", *TINY, f"--data_dir={char_data[0]}", f"--dataset={char_data[1]}",
                     f"--out_dir={tmp_path / 'out'}", "--compile=True", "--max_iters=2", cwd=tmp_path,
                     env={"CXX": "/bin/false"})  # inductor's C++ compiler is broken
    warnings = [line for line in res.stdout.splitlines() if "torch.compile" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: running without torch.compile")
    assert load(tmp_path / "out" / "ckpt.pt")["iter_num"] == 2


def test_non_finite_checkpoint_stops_resume_and_keeps_the_file(tmp_path, char_data):
    train(tmp_path, char_data, "--max_iters=2", "--eval_interval=2")
    path = tmp_path / "out" / "ckpt.pt"
    ckpt = load(path)
    ckpt["model"]["transformer.ln_f.weight"][0] = float("nan")
    torch.save(ckpt, path)
    before = path.read_bytes()
    res = train(tmp_path, char_data, "--max_iters=4", "--eval_interval=1", "--init_from=resume", check=False)
    assert res.returncode == 2 and "training diverged" in res.stderr and path.read_bytes() == before


# --- bad input: one line, exit 2, no traceback, and not one file changed ---------------------------

def setup_corrupt(out, itos):
    os.makedirs(out)
    with open(os.path.join(out, "ckpt.pt"), "wb") as f:
        f.write(b"\x00garbage" * 100)


def setup_truncated(out, itos):
    char_checkpoint(out, itos)
    path = os.path.join(out, "ckpt.pt")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


TRAIN_ERRORS = [
    (["--batchsize=4"], None, "unknown config key 'batchsize'"),
    (["--batch_size=abc"], None, "config key 'batch_size'"),
    (["no_such_config.py"], None, "config file 'no_such_config.py' not found"),
    (["--dataset=nope"], None, "dataset 'nope' not found"),
    (["--block_size=5000"], None, "too few for block_size=5000"),
    (["--init_from=resume"], None, "no checkpoint at"),
    (["--init_from=resume"], setup_corrupt, "could not be read"),
    (["--init_from=resume"], setup_truncated, "could not be read"),
    (["--init_from=gpt5"], None, "unknown init_from 'gpt5': use scratch, resume, gpt2"),
    (["--dtype=float8"], None, "unknown dtype 'float8'"),
    (["--gradient_accumulation_steps=0"], None, "gradient_accumulation_steps=0"),
    (["--max_iters=-1"], None, "max_iters=-1 must not be negative"),
    (["--n_embd=33"], None, "n_embd=33 must be divisible by n_head=2"),
    (["--init_from=resume", "--dataset=bpe"], char_checkpoint, "vocabulary mismatch"),
    ([], char_checkpoint, "already exists and a new run would overwrite it"),
]


@pytest.mark.parametrize("args, setup, message", TRAIN_ERRORS)
def test_bad_training_input_is_one_line_and_changes_nothing(tmp_path, char_data, bpe_data, args, setup, message):
    if setup:
        setup(str(tmp_path / "out"), char_data[2])
    before = tree(tmp_path)
    res = train(tmp_path, char_data, "--max_iters=2", *args, check=False)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert tree(tmp_path) == before


def test_gradient_accumulation_not_divisible_by_world_size(tmp_path, char_data):
    res = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                     os.path.join(REPO, "train.py"), *TINY, f"--data_dir={char_data[0]}", f"--dataset={char_data[1]}",
                     "--gradient_accumulation_steps=3", f"--out_dir={tmp_path / 'out'}", cwd=tmp_path, check=False)
    assert res.returncode != 0
    assert "error: gradient_accumulation_steps=3 must be a positive multiple of the number of processes (2)" \
        in res.stderr
    assert not (tmp_path / "out").exists()


def test_config_file_with_a_typo_is_one_line(tmp_path, char_data):
    (tmp_path / "my_config.py").write_text("batch_size = 4\nlearning_rate = 1e-3 +\n")
    res = train(tmp_path, char_data, str(tmp_path / "my_config.py"), check=False)
    assert res.returncode == 2 and re.search(r"my_config.py' failed at line 2: SyntaxError", res.stderr)


@pytest.mark.parametrize("args, setup, message", [
    ([], None, "no checkpoint at"),
    (["--start=FILE:missing_prompt.txt"], char_checkpoint, "missing_prompt.txt"),
    (["--init_from=resume"], setup_truncated, "could not be read"),
])
def test_bad_sampling_input_is_one_line_and_changes_nothing(tmp_path, char_data, args, setup, message):
    if setup:
        setup(str(tmp_path / "out"), char_data[2])
    before = tree(tmp_path)
    res = run_script("sample.py", f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--num_samples=1",
                     "--max_new_tokens=3", *args, cwd=tmp_path, check=False)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert tree(tmp_path) == before


def test_long_prompt_is_cropped_not_an_error(tmp_path, char_data):
    char_checkpoint(str(tmp_path / "out"), char_data[2])
    res = run_script("sample.py", f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--num_samples=1",
                     "--max_new_tokens=3", "--start=" + "Speak, speak. " * 10, cwd=tmp_path)
    assert ("Speak, speak. " * 10)[-16:] in res.stdout  # the prompt's last block_size characters lead
