"""Saving, resuming and stopping a training run: bit-exact resume (one process or two) from any checkpoint,
signals and SIGKILL at any moment, the checkpoint policy (ckpt.pt, best.pt, snapshots, keep_last), and the
checkpoints it refuses or repairs around without touching them."""
import re
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import (EXACT, REPO, TINY, assert_same_state, char_checkpoint, load, one_error_line, popen, run_script,
                      start, train, tree, wait_for, write_char_data)


SIGNAL_RUN = [*EXACT, "--max_iters=100", "--eval_interval=1000"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final checkpoint of SIGNAL_RUN, never stopped (made once for the three signals)."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    train(tmp_path, write_char_data(tmp_path), *SIGNAL_RUN)
    return load(tmp_path / "out" / "ckpt.pt")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_a_signal_saves_the_step_and_resuming_ends_identical(tmp_path, char_data, uninterrupted, sig):
    settings = SIGNAL_RUN
    out = tmp_path / "out"
    proc = start(tmp_path, char_data, out, *settings)
    wait_for(proc, "iter 3:")
    proc.send_signal(sig)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines() == [
        f"received {signal.Signals(sig).name}: saving a checkpoint, then stopping (Ctrl-C again stops at once, "
        "without saving)"]
    stopped = [line for line in stdout.splitlines() if line.startswith("stopped by")]
    saved = load(out / "ckpt.pt")
    assert stopped == [f"stopped by {signal.Signals(sig).name}: saved {out / 'ckpt.pt'} at iteration "
                       f"{saved['iter_num']}; to continue, run the same command with --init_from=resume"]
    assert 3 < saved["iter_num"] < 100 and saved["evaluated"] is False
    train(tmp_path, char_data, *settings, "--init_from=resume")
    assert_same_state(load(out / "ckpt.pt"), uninterrupted)


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tmp_path, char_data):
    out = tmp_path / "out"
    proc = start(tmp_path, char_data, out, "--max_iters=100000", "--eval_interval=2",
                 "--gradient_accumulation_steps=300")  # long steps: the second Ctrl-C lands inside one
    wait_for(proc, "step 4:")
    wait_for(proc, "saving checkpoint")  # a step of ~1 s follows (or, rarely, the second Ctrl-C hits the save)
    proc.send_signal(signal.SIGINT)
    assert proc.stderr.readline().startswith("received SIGINT")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines() == [
        "interrupted (Ctrl-C); files are written whole or not at all, so nothing was left half-written"]
    assert "stopped by" not in stdout and load(out / "ckpt.pt")["iter_num"] in (2, 4) and not list(out.glob("*.tmp"))


def test_ctrl_c_in_sample_and_prepare_is_one_line(tmp_path, char_data):
    char_checkpoint(str(tmp_path / "out"), char_data[2])
    sample = popen([sys.executable, os.path.join(REPO, "sample.py"), f"--out_dir={tmp_path / 'out'}",
                    "--device=cpu", "--max_new_tokens=100000", "--start=S"], tmp_path)
    sample.stdout.read(50)  # it is generating
    sample.send_signal(signal.SIGINT)
    _, stderr = sample.communicate(timeout=120)
    assert sample.returncode == 130 and stderr.strip().splitlines() == [
        "interrupted (Ctrl-C); files are written whole or not at all, so nothing was left half-written"]
    big = tmp_path / "big.txt"
    big.write_text("To be, or not to be, that is the question:\n" * 400_000)  # ~17 MB: BPE takes seconds
    prep = popen([sys.executable, os.path.join(REPO, "data/prepare_text.py"), f"--input={big}",
                  f"--out_dir={tmp_path / 'ds'}", "--tokenizer=gpt2"], tmp_path)
    seen = ""
    while "tokenizing" not in seen and prep.poll() is None:
        seen += prep.stderr.read(1)  # ends when the process does (the watchdog kills a hung one)
    prep.send_signal(signal.SIGINT)
    _, stderr = prep.communicate(timeout=120)
    assert prep.returncode == 130 and "Traceback" not in stderr
    assert not (tmp_path / "ds").exists() or not os.listdir(tmp_path / "ds")


def test_keep_last_deletes_only_our_snapshots_by_iteration(tmp_path, char_data):
    out = tmp_path / "out"
    train(tmp_path, char_data, "--max_iters=12", "--save_interval=11", "--eval_interval=100")
    (out / "ckpt_1.pt").write_bytes(b"the user's own file")
    (out / "ckpt_0000000.pt.bak").write_bytes(b"also theirs")
    (out / "ckpt_9999999.pt").write_bytes(b"numbered past the run: not its to rank")
    res = train(tmp_path, char_data, "--max_iters=24", "--save_interval=11", "--eval_interval=100", "--keep_last=1",
                "--init_from=resume")
    assert sorted(f for f in os.listdir(out) if f.startswith("ckpt_")) == \
        ["ckpt_0000000.pt.bak", "ckpt_0000022.pt", "ckpt_1.pt", "ckpt_9999999.pt"]
    assert (out / "ckpt_1.pt").read_bytes() == b"the user's own file" and "ckpt_0000011.pt" in res.stdout


def test_a_stop_at_a_snapshot_step_writes_the_snapshot(tmp_path, char_data, monkeypatch):
    import builtins
    show = builtins.print

    def print_then_signal(*args, **kwargs):  # SIGTERM as step 4's line is printed: the run stops at step 5
        show(*args, **kwargs)
        if str(args[0]).startswith("iter 4:"):
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(builtins, "print", print_then_signal)
    res = train(tmp_path, char_data, "--max_iters=8", "--save_interval=5", "--eval_interval=100", check=False)
    out = tmp_path / "out"
    assert res.returncode == 128 + signal.SIGTERM and f"saved {out / 'ckpt.pt'} at iteration 5" in res.stdout
    assert load(out / "ckpt.pt")["iter_num"] == load(out / "ckpt_0000005.pt")["iter_num"] == 5


def test_resuming_with_a_conflicting_model_shape_names_both_values(tmp_path, char_data):
    train(tmp_path, char_data, "--max_iters=2")
    out = tmp_path / "out"
    before = tree(tmp_path)
    res = train(tmp_path, char_data, "--max_iters=4", "--init_from=resume", "--n_layer=3", check=False)
    one_error_line(res, f"--n_layer=3 conflicts with {out / 'ckpt.pt'}, whose n_layer is 2")
    assert tree(tmp_path) == before
    # keys left alone take the checkpoint's values, so the saved config tells the truth
    run_script("train.py", "--device=cpu", "--compile=False", f"--data_dir={char_data[0]}",
               f"--dataset={char_data[1]}", f"--out_dir={out}", "--init_from=resume", "--max_iters=3",
               "--eval_iters=1", "--batch_size=2", "--gradient_accumulation_steps=1", cwd=tmp_path)
    config = load(out / "ckpt.pt")["config"]
    assert (config["n_layer"], config["n_embd"], config["block_size"]) == (2, 32, 16)


class Payload:  # what a malicious or foreign pickle could carry
    pass


def test_messages_say_what_is_true(tmp_path, char_data):
    out = tmp_path / "out"
    out.mkdir()

    torch.save({"model": {}, "model_args": {}, "x": Payload()}, out / "ckpt.pt")
    res = train(tmp_path, char_data, "--init_from=resume", check=False)
    one_error_line(res, "holds a Python object (")
    assert "truncated" not in res.stderr and "could run code" in res.stderr
    shutil.rmtree(out)
    os.remove(os.path.join(char_data[0], char_data[1], "val.bin"))
    one_error_line(train(tmp_path, char_data, check=False), "val.bin is missing")


def test_max_iters_zero_saves_the_model_it_evaluated(tmp_path, char_data):
    res = train(tmp_path, char_data, "--max_iters=0")
    assert "step 0: train loss" in res.stdout and load(tmp_path / "out" / "ckpt.pt")["iter_num"] == 0


def test_a_checkpoint_without_optimizer_state_resumes_with_a_note(tmp_path, char_data):
    train(tmp_path, char_data, "--max_iters=2")
    path = tmp_path / "out" / "ckpt.pt"
    ckpt = load(path)
    del ckpt["optimizer"], ckpt["scaler"]  # weights shared alone
    torch.save(ckpt, path)
    res = train(tmp_path, char_data, "--max_iters=3", "--init_from=resume")
    assert f"note: {path} holds no optimizer state; the optimizer's moments start afresh" in res.stdout
    ckpt["model_args"]["n_layer"] = "two"
    torch.save(ckpt, path)
    one_error_line(train(tmp_path, char_data, "--max_iters=4", "--init_from=resume", check=False),
                   f"{path} does not hold the GPT its model_args describe (TypeError")


@pytest.mark.slow
def test_a_signal_during_a_long_evaluation_is_answered_at_once(tmp_path, char_data):
    out = tmp_path / "out"
    proc = start(tmp_path, char_data, out, "--max_iters=10", "--eval_iters=1000000")  # evaluates for hours
    wait_for(proc, "memory estimate")
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate()
    assert proc.returncode == 143 and "stopped by SIGTERM before the first step: there is nothing new to save" \
        in stdout and not out.exists()
    train(tmp_path, char_data, "--max_iters=4", "--eval_interval=4")
    proc = start(tmp_path, char_data, out, "--max_iters=10", "--eval_interval=6", "--eval_iters=1000000",
                 "--init_from=resume")
    wait_for(proc, "iter 5:")  # the evaluation at 6 has begun, or is about to
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate()
    assert proc.returncode == 143 and f"saved {out / 'ckpt.pt'} at iteration 6" in stdout
    assert load(out / "ckpt.pt")["evaluated"] is False
    res = train(tmp_path, char_data, "--max_iters=7", "--eval_interval=6", "--init_from=resume")
    assert "step 6: train loss" in res.stdout  # the evaluation that was cut short is done on resume


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
    run_script(*torchrun, *common, "--max_iters=4", "--save_iters=[2]", f"--out_dir={tmp_path / 'full'}", cwd=tmp_path)
    (tmp_path / "part").mkdir()
    shutil.copy(tmp_path / "full" / "ckpt_0000002.pt", tmp_path / "part")
    assert len(load(tmp_path / "part" / "ckpt_0000002.pt")["rng"]) == 2
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
    kill_at = sorted(rng.sample(range(1, 15), 2))  # kill after these lines, some of them right inside a save
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
    (out / "ckpt.pt.1-abcdef.tmp").write_bytes(b"pid 1 is alive: a writer's file, left alone")
    train(tmp_path, char_data, *settings, "--init_from=resume", f"--out_dir={out}")
    assert_same_state(load(out / "ckpt.pt"), load(tmp_path / "full" / "ckpt.pt"))
    assert [p.name for p in out.glob("*.tmp")] == ["ckpt.pt.1-abcdef.tmp"]  # the dead writer's is gone


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


def test_non_finite_checkpoint_stops_resume_and_keeps_the_file(tmp_path, char_data):
    train(tmp_path, char_data, "--max_iters=2", "--eval_interval=2")
    path = tmp_path / "out" / "ckpt.pt"
    ckpt = load(path)
    ckpt["model"]["transformer.ln_f.weight"][0] = float("nan")
    torch.save(ckpt, path)
    before = path.read_bytes()
    res = train(tmp_path, char_data, "--max_iters=4", "--eval_interval=1", "--init_from=resume", check=False)
    assert res.returncode == 2 and "training diverged" in res.stderr and path.read_bytes() == before


def test_scratch_then_resume_continues_iteration_count(tmp_path, char_data):
    first = train(tmp_path, char_data, "--max_iters=6", "--eval_interval=3")
    assert re.search(r"^step 3: train loss \d+\.\d{4}, val loss \d+\.\d{4}$", first.stdout, re.M)
    assert re.search(r"^iter 5: loss \d+\.\d{4}, time \d+\.\d{2}ms, mfu n/a", first.stdout, re.M)
    ckpt = load(tmp_path / "out" / "ckpt.pt")
    assert {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config"} <= set(ckpt)
    assert ckpt["iter_num"] == 6 and isinstance(ckpt["best_val_loss"], float)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert ckpt["model_args"]["vocab_size"] == len(char_data[2])

    second = train(tmp_path, char_data, "--init_from=resume", "--max_iters=9", "--eval_interval=3")
    assert "resuming from" in second.stdout
    iters = [int(n) for n in re.findall(r"^iter (\d+):", second.stdout, re.M)]
    assert iters == [6, 7, 8]  # picks up where the first run stopped
    resumed = load(tmp_path / "out" / "ckpt.pt")
    assert resumed["iter_num"] == 9
    assert not torch.equal(resumed["model"]["transformer.wte.weight"], ckpt["model"]["transformer.wte.weight"])


def test_last_step_always_evaluates_and_saves(tmp_path, char_data):
    # eval_interval far beyond max_iters: nanoGPT would never write a checkpoint here
    out = train(tmp_path, char_data, "--max_iters=4", "--eval_interval=2000", "--always_save_checkpoint=False")
    assert "step 4: train loss" in out.stdout
    assert load(tmp_path / "out" / "ckpt.pt")["iter_num"] == 4


def test_best_checkpoint_is_not_replaced_by_a_worse_one(tmp_path, char_data):
    train(tmp_path, char_data, "--max_iters=4", "--eval_interval=2", "--always_save_checkpoint=False")
    best = load(tmp_path / "out" / "ckpt.pt")
    # a huge learning rate makes the resumed run worse; the best checkpoint must survive
    out = train(tmp_path, char_data, "--init_from=resume", "--max_iters=8", "--eval_interval=2",
                "--always_save_checkpoint=False", "--learning_rate=50.0", "--decay_lr=False", "--grad_clip=0.0")
    vals = [float(v) for v in re.findall(r"val loss (\d+\.\d+)", out.stdout)]
    assert min(vals) > best["best_val_loss"]
    after = load(tmp_path / "out" / "ckpt.pt")
    assert after["iter_num"] == best["iter_num"]
    assert torch.equal(after["model"]["transformer.wte.weight"], best["model"]["transformer.wte.weight"])


def test_scratch_run_never_overwrites_an_existing_checkpoint(tmp_path, char_data):
    train(tmp_path, char_data, "--max_iters=2", "--eval_interval=2")
    before = (tmp_path / "out" / "ckpt.pt").read_bytes()
    again = train(tmp_path, char_data, "--max_iters=2", "--eval_interval=2", check=False)
    assert again.returncode == 2 and "already exists" in again.stderr and "--init_from=resume" in again.stderr
    assert (tmp_path / "out" / "ckpt.pt").read_bytes() == before


def test_diverging_run_stops_without_saving_a_poisoned_checkpoint(tmp_path, char_data):
    result = train(tmp_path, char_data, "--max_iters=30", "--eval_interval=1", "--learning_rate=1e9",
                   "--decay_lr=False", "--grad_clip=0.0", check=False)
    assert result.returncode == 2 and "training diverged" in result.stderr
    assert "Traceback" not in result.stderr
    path = tmp_path / "out" / "ckpt.pt"
    if path.exists():  # whatever was saved before the divergence is finite
        assert all(torch.isfinite(t).all() for t in load(path)["model"].values())


def test_ctrl_c_inside_torch_save_is_an_interrupt_and_keeps_the_old_file(tmp_path):
    """torch.save turns a KeyboardInterrupt inside it into a RuntimeError; a second Ctrl-C during a save is
    still an interrupt (run_main: one line, status 130), and the previous file stays whole."""
    from safety import atomic_write

    class Interrupted:  # a file whose third write is where Ctrl-C lands
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise KeyboardInterrupt
            return self.f.write(data)

        def flush(self):
            self.f.flush()
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"the previous checkpoint")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), lambda f: torch.save({"x": torch.zeros(100_000)}, Interrupted(f)))
    assert path.read_bytes() == b"the previous checkpoint" and os.listdir(tmp_path) == ["ckpt.pt"]


def test_with_its_output_gone_a_run_goes_on_and_a_sighup_saves(tmp_path, char_data):
    """`train.py | head -1`, or `| tee` killed by the terminal's Ctrl-C, or an ssh session that drops (SIGHUP)."""
    out = tmp_path / "out"
    proc = start(tmp_path, char_data, out, "--max_iters=10", "--eval_interval=100")
    wait_for(proc, "iter 0:")
    proc.stdout.close()  # the reader is gone: every later line would raise BrokenPipeError
    assert proc.wait(timeout=120) == 0 and load(out / "ckpt.pt")["iter_num"] == 10
    proc = start(tmp_path, char_data, out, "--max_iters=100000", "--eval_interval=100000", "--init_from=resume")
    wait_for(proc, "iter 13:")
    proc.stdout.close()
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=120) == 128 + signal.SIGHUP, proc.stderr.read()
    assert load(out / "ckpt.pt")["iter_num"] > 13
