"""The promise under attack, one class of misuse or failure at a time, run as users run the scripts:
two runs in one out_dir, signals, writers that must not destroy, bad data, bad settings, a failing
world (full disk, no network, missing packages), and messages that must say what is true."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import (EXACT, REPO, TINY, assert_same_state, char_checkpoint, load, one_error_line, popen, run_script,
                      start, train, tree, wait_for, write_char_data)



def test_a_second_run_on_a_live_out_dir_refuses_and_a_killed_one_blocks_nothing(tmp_path, char_data):
    out = tmp_path / "out"
    first = start(tmp_path, char_data, out, "--max_iters=100000", "--eval_interval=2")
    wait_for(first, "saving checkpoint")
    wait_for(first, "iter 2:")  # the step after the save: it has a checkpoint now
    for extra in ([], ["--init_from=resume"], ["--init_from=resume", "--max_iters=3"]):
        res = train(tmp_path, char_data, "--max_iters=4", *extra, check=False)
        one_error_line(res, f"out_dir '{out}' is in use by another training run (pid {first.pid} on ")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (out / "run.lock").exists()  # left by the killed run, and harmless: the OS dropped its lock
    res = train(tmp_path, char_data, "--max_iters=4", "--eval_interval=2", "--init_from=resume")
    assert "resuming from" in res.stdout and not (out / "run.lock").exists()


# --- 2. preemption and Ctrl-C ------------------------------------------------------------------------

SIGNAL_RUN = [*EXACT, "--max_iters=300", "--eval_interval=1000"]


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
    assert 3 < saved["iter_num"] < 300 and saved["evaluated"] is False
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


# --- 3. writers never destroy --------------------------------------------------------------------------

def test_prepare_refuses_to_replace_a_dataset_unless_forced(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("hello world, " * 100)
    out = tmp_path / "ds"
    run_script("data/prepare_text.py", f"--input={text}", f"--out_dir={out}")
    before = tree(out)
    text.write_text("something else entirely. " * 100)
    res = run_script("data/prepare_text.py", f"--input={text}", f"--out_dir={out}", check=False)
    one_error_line(res, f"{out} already holds a dataset (train.bin, val.bin, meta.json); pass --force=True")
    assert tree(out) == before
    run_script("data/prepare_text.py", f"--input={text}", f"--out_dir={out}", "--force=True")
    assert tree(out) != before and sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]
    res = run_script("data/prepare_text.py", f"--input={text}", f"--out_dir={out}", "--force=maybe", check=False)
    one_error_line(res, "expected True or False")


def test_export_refuses_a_folder_that_holds_files(tmp_path, char_data):
    char_checkpoint(str(tmp_path / "out"), char_data[2])
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"another": "model"}')
    res = run_script("eval.py", "--task=export_hf", f"--out_dir={tmp_path / 'out'}", f"--export_dir={theirs}",
                     check=False)
    one_error_line(res, f"export folder '{theirs}' is not empty (config.json); pass --force=True")
    assert (theirs / "config.json").read_text() == '{"another": "model"}'
    res = run_script("eval.py", "--task=export_hf", f"--out_dir={tmp_path / 'out'}", f"--export_dir={theirs}",
                     "--force=True")
    assert sorted(os.listdir(theirs)) == ["config.json", "model.safetensors"]
    assert "character vocabulary" in res.stdout and "not GPT2Tokenizer" in res.stdout


def test_keep_last_deletes_only_our_snapshots_by_iteration(tmp_path, char_data):
    out = tmp_path / "out"
    train(tmp_path, char_data, "--max_iters=12", "--save_interval=11", "--eval_interval=100")
    (out / "ckpt_1.pt").write_bytes(b"the user's own file")
    (out / "ckpt_0000000.pt.bak").write_bytes(b"also theirs")
    res = train(tmp_path, char_data, "--max_iters=24", "--save_interval=11", "--eval_interval=100", "--keep_last=1",
                "--init_from=resume")
    assert sorted(f for f in os.listdir(out) if f.startswith("ckpt_")) == \
        ["ckpt_0000000.pt.bak", "ckpt_0000022.pt", "ckpt_1.pt"]
    assert (out / "ckpt_1.pt").read_bytes() == b"the user's own file" and "ckpt_0000011.pt" in res.stdout


def test_log_jsonl_is_never_taken_over_or_rewritten_in_place(tmp_path, char_data):
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.jsonl").write_text('{"kind": "train", "iter": 0, "loss": 1.0}\n')
    before = tree(tmp_path)
    one_error_line(train(tmp_path, char_data, "--max_iters=2", check=False), "holds another run's log")
    assert tree(tmp_path) == before
    os.remove(out / "log.jsonl")
    train(tmp_path, char_data, "--max_iters=4", "--eval_interval=2", "--always_save_checkpoint=False")
    with open(out / "log.jsonl", "a") as f:
        f.write('{"kind": "train", "iter": 99, "loss": 1.0}\n{"kind": "tra')  # a crashed later run's lines
    inode = os.stat(out / "log.jsonl").st_ino
    train(tmp_path, char_data, "--max_iters=5", "--eval_interval=2", "--init_from=resume")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert os.stat(out / "log.jsonl").st_ino != inode  # the kept records went to a new file, renamed over
    assert max(r["iter"] for r in records) == 5 and 99 not in [r["iter"] for r in records]


# --- 4. bad data ----------------------------------------------------------------------------------------

def test_token_ids_past_the_vocabulary_are_named_before_the_device_sees_them(tmp_path, char_data):
    folder = os.path.join(char_data[0], char_data[1])
    ids = np.fromfile(os.path.join(folder, "train.bin"), dtype=np.uint16)
    ids[::50] = 300
    ids.tofile(os.path.join(folder, "train.bin"))
    res = train(tmp_path, char_data, "--max_iters=2", check=False)
    one_error_line(res, f"{folder}/train.bin holds token id 300, but the model's vocab_size is {len(char_data[2])}")
    assert not (tmp_path / "out").exists()  # a failed start leaves no trace


@pytest.mark.parametrize("meta, problem", [
    ("{not json", "not valid JSON"),
    ('{"vocab_size": "65", "itos": []}', "needs a 'vocab_size' between 1 and 65536"),
    ('{"vocab_size": 3, "itos": ["a", "b"]}', "'itos' must be a list of vocab_size strings"),
    ('{"vocab_size": 3}', "needs 'itos'"),
    ('[1, 2]', "needs a 'vocab_size'"),
    (b'{"vocab_size": 1, "itos": ["\xff"]}', "not UTF-8 text (invalid start byte at byte 28)"),
])
def test_a_broken_meta_json_is_one_line_naming_it(tmp_path, char_data, meta, problem):
    path = os.path.join(char_data[0], char_data[1], "meta.json")
    with open(path, "wb") as f:
        f.write(meta if isinstance(meta, bytes) else meta.encode())
    res = train(tmp_path, char_data, "--max_iters=2", check=False)
    one_error_line(res, path)
    assert problem in res.stderr and "data/prepare_text.py" in res.stderr


def test_files_that_are_not_utf8_name_the_byte(tmp_path, char_data, bpe_data):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("caf\u00e9 ".encode("utf-8") + b"\xe9t\xe9\n")
    char_checkpoint(str(tmp_path / "out"), char_data[2])
    cases = [
        (["train.py", str(bad)], "config file"),
        (["sample.py", f"--out_dir={tmp_path / 'out'}", f"--start=FILE:{bad}"], "prompt file"),
        (["eval.py", "--task=perplexity", f"--out_dir={tmp_path / 'out'}", f"--data_path={bad}"], "text file"),
        (["eval.py", "--task=hellaswag", "--init_from=" + str(tmp_path / "hf"), f"--data_path={bad}"], "HellaSwag"),
        (["data/prepare_text.py", f"--input={bad}", f"--out_dir={tmp_path / 'ds'}"], "input file"),
    ]
    from hf import export as export_hf
    from model import GPT, GPTConfig
    export_hf(GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=50257)), str(tmp_path / "hf"))
    before = tree(tmp_path)
    for args, what in cases:
        res = run_script(*args, "--device=cpu" if args[0] != "data/prepare_text.py" else "--val_fraction=0.1",
                         cwd=tmp_path, check=False)
        one_error_line(res, f"{what}")
        assert f"'{bad}' is not UTF-8 text (invalid continuation byte at byte 6)" in res.stderr, res.stderr
    assert tree(tmp_path) == before


# --- 5. settings --------------------------------------------------------------------------------------

def test_bad_settings_are_caught_before_anything_runs(tmp_path, char_data):
    """The promise end to end for train.py; every rule's message: test_settings.py, in-process."""
    before = tree(tmp_path)
    one_error_line(train(tmp_path, char_data, "--max_iters=2", "--beta2=-0.5", check=False), "beta2=-0.5 must be in [0, 1)")
    assert tree(tmp_path) == before


def test_out_dir_that_is_a_file_or_unwritable_is_found_before_the_first_step(tmp_path, char_data):
    (tmp_path / "afile").write_text("mine")
    before = tree(tmp_path)
    res = train(tmp_path, char_data, f"--out_dir={tmp_path / 'afile'}", check=False)
    one_error_line(res, "is a file, not a folder")
    res = train(tmp_path, char_data, f"--out_dir={tmp_path / 'afile' / 'sub'}", check=False)
    one_error_line(res, "can't be written (Not a directory)")
    assert tree(tmp_path) == before and "iter 0" not in res.stdout


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


def test_sample_and_bench_settings(tmp_path, char_data):
    char_checkpoint(str(tmp_path / "out"), char_data[2])
    res = run_script("sample.py", f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--top_k=None",
                     "--num_samples=1", "--max_new_tokens=3", cwd=tmp_path)
    assert res.stdout.count("---------------") == 1
    for script, args, message in [  # one rule each end to end; all of them: test_settings.py
        ("sample.py", ["--temperature=1e999"], "temperature=inf must be a finite number >= 0"),
        ("bench.py", ["--n_embd=100", "--n_head=3"], "n_embd=100 must be divisible by n_head=3"),
        ("bench.py", ["--dataset=nowhere"], "or time random tokens with --real_data=False"),
    ]:
        res = run_script(script, f"--out_dir={tmp_path / 'out'}", "--device=cpu", *args, cwd=tmp_path, check=False) \
            if script == "sample.py" else run_script(script, "--device=cpu", *args, cwd=tmp_path, check=False)
        one_error_line(res, message)


# --- 6. failures of the world --------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs: a full disk on demand (needs root, as CI has)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def fill(folder, leave):
    """Fill the disk up to `leave` bytes of free space."""
    st = os.statvfs(folder)
    with open(os.path.join(folder, "filler"), "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def test_a_full_disk_keeps_the_previous_checkpoint_and_dataset(tmp_path, char_data, small_disk):
    out = small_disk / "out"
    train(tmp_path, char_data, "--max_iters=2", f"--out_dir={out}")
    before = (out / "ckpt.pt").read_bytes()
    fill(small_disk, 100_000)
    res = train(tmp_path, char_data, "--max_iters=4", "--init_from=resume", f"--out_dir={out}", check=False)
    one_error_line(res, f"no space left on the device to write {out / 'ckpt.pt'} (it needs about 0.")
    assert "the previous file was left as it was" in res.stderr
    assert (out / "ckpt.pt").read_bytes() == before and not list(out.glob("*.tmp"))
    os.remove(small_disk / "filler")
    shutil.rmtree(out)
    text = tmp_path / "a.txt"
    text.write_text("hello world, " * 1000)
    run_script("data/prepare_text.py", f"--input={text}", f"--out_dir={small_disk / 'ds'}")
    old = tree(small_disk / "ds")
    text.write_text("hello world, " * 2_000_000)  # 26 MB of text: its train.bin can't fit
    res = run_script("data/prepare_text.py", f"--input={text}", f"--out_dir={small_disk / 'ds'}", "--force=True",
                     check=False)
    one_error_line(res, f"no space left on the device to write {small_disk / 'ds' / 'train.bin'} (it needs about 44.6 MiB)")
    assert tree(small_disk / "ds") == old


def test_offline_and_missing_packages_are_one_line(tmp_path, char_data, bpe_data):
    res = run_script("sample.py", "--init_from=gpt2", "--device=cpu", cwd=tmp_path, check=False)  # HF_HUB_OFFLINE=1
    one_error_line(res, "could not download gpt2 from the Hugging Face hub (OSError: HF_HUB_OFFLINE is set)")
    text = tmp_path / "a.txt"
    text.write_text("hello world")
    res = run_script("data/prepare_text.py", f"--input={text}", f"--out_dir={tmp_path / 'ds'}", "--tokenizer=gpt2",
                     cwd=tmp_path, check=False, env={"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty"),
                                                     "HTTPS_PROXY": "http://127.0.0.1:9"})  # nothing listens there
    one_error_line(res, "could not load GPT-2's BPE files")
    no_wandb = ("import os, runpy, sys; sys.modules['wandb'] = None; sys.argv = sys.argv[1:]; "
                "sys.path.insert(0, os.path.dirname(sys.argv[0])); runpy.run_path(sys.argv[0], run_name='__main__')")
    res = run_script("-c", no_wandb, os.path.join(REPO, "train.py"), *TINY, f"--data_dir={char_data[0]}",
                     f"--dataset={char_data[1]}", f"--out_dir={tmp_path / 'out'}", "--wandb_log=True", cwd=tmp_path,
                     check=False)
    one_error_line(res, "wandb_log=True needs the wandb package: pip install wandb")
    assert not (tmp_path / "out").exists()


def test_a_damaged_hugging_face_folder_names_the_file(tmp_path):
    from hf import export as export_hf
    from model import GPT, GPTConfig
    hf = tmp_path / "hf"
    export_hf(GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=50257)), str(hf))
    weights = (hf / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    res = run_script("sample.py", f"--init_from={hf}", "--device=cpu", cwd=tmp_path, check=False)
    one_error_line(res, f"{hf / 'model.safetensors'} could not be read as part of a GPT-2 checkpoint")
    (hf / "model.safetensors").write_bytes(weights)
    (hf / "config.json").write_text('{"n_layer": 1,')
    res = run_script("sample.py", f"--init_from={hf}", "--device=cpu", cwd=tmp_path, check=False)
    one_error_line(res, f"{hf / 'config.json'} could not be read as part of a GPT-2 checkpoint (JSONDecodeError")


def test_under_torchrun_a_mistake_is_printed_once(tmp_path, char_data):
    res = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                     os.path.join(REPO, "train.py"), *TINY, f"--data_dir={char_data[0]}", f"--dataset={char_data[1]}",
                     "--beta2=2.0", f"--out_dir={tmp_path / 'out'}", cwd=tmp_path, check=False)
    assert res.returncode != 0 and res.stderr.count("error: beta2=2.0 must be in [0, 1)") == 1, res.stderr
    assert not (tmp_path / "out").exists()


# --- 7. messages that say what is true --------------------------------------------------------------------

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


def test_paths_that_lead_nowhere_and_malformed_checkpoint_values_are_one_line(tmp_path, char_data):
    char_checkpoint(str(tmp_path / "out"), char_data[2])
    (tmp_path / "afile").write_text("mine")
    res = run_script("eval.py", "--task=export_hf", f"--out_dir={tmp_path / 'out'}",
                     f"--export_dir={tmp_path / 'afile' / 'hf'}", cwd=tmp_path, check=False)
    one_error_line(res, "Not a directory")
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    log.write_text('{"kind": "train", "iter": 1, "loss": 2.0, "lr": 0.001}\n')
    res = run_script("plot.py", f"--out_dir={log.parent}", f"--output={tmp_path / 'nowhere' / 'x.png'}",
                     cwd=tmp_path, check=False)
    one_error_line(res, f"the folder {tmp_path / 'nowhere'} does not exist")
    ckpt = load(tmp_path / "out" / "ckpt.pt")
    ckpt["iter_num"] = "2"
    torch.save(ckpt, tmp_path / "out" / "ckpt.pt")
    one_error_line(train(tmp_path, char_data, "--init_from=resume", check=False), "has a malformed iter_num")
    assert not (tmp_path / "nowhere").exists() and os.listdir(tmp_path / "out") == ["ckpt.pt"]
    assert (tmp_path / "afile").read_text() == "mine"
