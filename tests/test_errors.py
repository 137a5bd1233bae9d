"""How every script fails (errors.py): one `error: ...` line on stderr, exit status 2, no file changed. Here in
real processes, once per script and under torchrun; and the failures of the world: a full disk, no network,
a missing package, text that is not UTF-8, paths that lead nowhere. Each message's wording is checked
in-process where its subject is tested (test_settings.py for every setting)."""
import os
import shutil
import subprocess

import pytest
import torch

from conftest import REPO, TINY, char_checkpoint, load, one_error_line, run_script, train, tree


def test_bad_settings_are_caught_before_anything_runs(tmp_path, char_data):
    """The promise end to end for train.py; every rule's message: test_settings.py, in-process."""
    before = tree(tmp_path)
    res = train(tmp_path, char_data, "--max_iters=2", "--beta2=-0.5", check=False, process=True)
    one_error_line(res, "beta2=-0.5 must be in [0, 1)")
    assert tree(tmp_path) == before


def test_sample_and_bench_settings(tmp_path, char_data):
    char_checkpoint(str(tmp_path / "out"), char_data[2])
    res = run_script("sample.py", f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--top_k=None",
                     "--num_samples=1", "--max_new_tokens=3", cwd=tmp_path)
    assert res.stdout.count("---------------") == 1
    for script, args, message in [  # one rule each end to end; all of them: test_settings.py
        ("sample.py", ["--temperature=1e999"], "temperature=inf must be a finite number >= 0"),
        ("bench.py", ["--n_embd=100", "--n_head=3"], "n_embd=100 must be divisible by n_head=3"),
    ]:
        where = [f"--out_dir={tmp_path / 'out'}"] if script == "sample.py" else []
        res = run_script(script, *where, "--device=cpu", *args, cwd=tmp_path, check=False, process=True)
        one_error_line(res, message)
    one_error_line(run_script("bench.py", "--device=cpu", "--dataset=nowhere", cwd=tmp_path, check=False),
                   "or time random tokens with --real_data=False")


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


def test_under_torchrun_a_mistake_is_printed_once(tmp_path, char_data):
    res = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                     os.path.join(REPO, "train.py"), *TINY, f"--data_dir={char_data[0]}", f"--dataset={char_data[1]}",
                     "--beta2=2.0", f"--out_dir={tmp_path / 'out'}", cwd=tmp_path, check=False)
    assert res.returncode != 0 and res.stderr.count("error: beta2=2.0 must be in [0, 1)") == 1, res.stderr
    assert not (tmp_path / "out").exists()


def test_paths_that_lead_nowhere_and_malformed_checkpoint_values_are_one_line(tmp_path, char_data):
    char_checkpoint(str(tmp_path / "out"), char_data[2])
    (tmp_path / "afile").write_text("mine")
    res = run_script("eval.py", "--task=export_hf", f"--out_dir={tmp_path / 'out'}",
                     f"--export_dir={tmp_path / 'afile' / 'hf'}", cwd=tmp_path, check=False, process=True)
    one_error_line(res, "Not a directory")
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    log.write_text('{"kind": "train", "iter": 1, "loss": 2.0, "lr": 0.001}\n')
    res = run_script("plot.py", f"--out_dir={log.parent}", f"--output={tmp_path / 'nowhere' / 'x.png'}",
                     cwd=tmp_path, check=False, process=True)
    one_error_line(res, f"the folder {tmp_path / 'nowhere'} does not exist")
    ckpt = load(tmp_path / "out" / "ckpt.pt")
    ckpt["iter_num"] = "2"
    torch.save(ckpt, tmp_path / "out" / "ckpt.pt")
    one_error_line(train(tmp_path, char_data, "--init_from=resume", check=False), "has a malformed iter_num")
    assert not (tmp_path / "nowhere").exists() and os.listdir(tmp_path / "out") == ["ckpt.pt"]
    assert (tmp_path / "afile").read_text() == "mine"
