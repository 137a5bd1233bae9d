"""The training run end to end on small data (sampled and timed after it): nanoGPT's checkpoints, configs and
command lines, DDP, the data it reads and refuses, one run per out_dir, and every bad input to train.py as
one line that leaves the files as they were."""
import math
import os
import pickle
import re
import signal

import numpy as np
import pytest
import torch

from conftest import (REPO, TINY, char_checkpoint, load, one_error_line, run_script, setup_corrupt, setup_truncated,
                      start, train, tree, wait_for)


def test_sample_char_checkpoint(tmp_path, char_data):
    train(tmp_path, char_data, "--max_iters=4", "--eval_interval=2")
    out = run_script("sample.py", f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--start=Sp",
                     "--num_samples=2", "--max_new_tokens=30", "--seed=1", cwd=tmp_path).stdout
    samples = out.split("---------------\n")
    assert len(samples) == 3 and samples[2] == ""
    for s in samples[:2]:
        assert s.startswith("Sp") and len(s.rstrip("\n")) >= 2
        assert set(s) <= set(char_data[2]) | {"\n"}
    again = run_script("sample.py", f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--start=Sp",
                       "--num_samples=2", "--max_new_tokens=30", "--seed=1", cwd=tmp_path).stdout
    assert again == out  # same seed, same text


def test_nanogpt_checkpoint_samples_and_resumes(tmp_path, char_data):
    """A checkpoint as nanoGPT writes it: compiled-model key prefixes, a tensor best_val_loss,
    no vocabulary inside (it lives in the dataset's meta.pkl)."""
    from model import GPT, GPTConfig
    data_dir, dataset, itos = char_data
    os.remove(os.path.join(data_dir, dataset, "meta.json"))
    with open(os.path.join(data_dir, dataset, "meta.pkl"), "wb") as f:
        pickle.dump({"vocab_size": len(itos), "itos": dict(enumerate(itos)),
                     "stoi": {c: i for i, c in enumerate(itos)}}, f)
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=False, vocab_size=len(itos), dropout=0.0)
    model = GPT(GPTConfig(**args))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    config = {"dataset": dataset, "out_dir": "out", "init_from": "scratch"}
    os.makedirs(tmp_path / "out")
    torch.save({"model": {"_orig_mod." + k: v for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "model_args": args, "iter_num": 2,
                "best_val_loss": torch.tensor(9.0), "config": config}, tmp_path / "out" / "ckpt.pt")
    out = run_script("sample.py", f"--out_dir={tmp_path / 'out'}", f"--data_dir={data_dir}", "--device=cpu",
                     "--start=All", "--num_samples=1", "--max_new_tokens=20", cwd=tmp_path).stdout
    sample = out.split("---------------")[0]
    assert sample.startswith("All") and set(sample) <= set(itos)
    res = train(tmp_path, char_data, "--init_from=resume", "--max_iters=4", "--eval_interval=2")
    assert re.findall(r"^iter (\d+):", res.stdout, re.M) == ["2", "3"]
    assert load(tmp_path / "out" / "ckpt.pt")["iter_num"] == 4


def test_bpe_train_and_sample_never_emit_padding_ids(tmp_path, bpe_data):
    train(tmp_path, bpe_data, "--max_iters=2", "--eval_interval=2")
    ckpt = load(tmp_path / "out" / "ckpt.pt")
    assert ckpt["model_args"]["vocab_size"] == 50304  # GPT-2's vocabulary padded to a multiple of 64
    # make the 47 padding ids the most likely tokens: sampling must still avoid them
    ckpt["model"]["transformer.wte.weight"][50257:] = 0.0
    ckpt["model"]["transformer.wte.weight"][50257:, :] += ckpt["model"]["transformer.ln_f.weight"] * 100
    torch.save(ckpt, tmp_path / "out" / "ckpt.pt")
    out = run_script("sample.py", f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--start=Speak",
                     "--num_samples=1", "--max_new_tokens=8", "--temperature=1.0", "--top_k=0", cwd=tmp_path)
    assert out.stdout.startswith("Speak")


def test_finetune_from_local_hf_checkpoint(tmp_path, bpe_data):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32))
    hf.save_pretrained(tmp_path / "hf")
    out = train(tmp_path, bpe_data, f"--init_from={tmp_path / 'hf'}", "--max_iters=2", "--eval_interval=2")
    assert "initializing from GPT-2 weights" in out.stdout
    ckpt = load(tmp_path / "out" / "ckpt.pt")
    assert ckpt["model_args"]["block_size"] == 16  # cropped from 32 to the configured block_size
    assert ckpt["model_args"]["vocab_size"] == 50257 and ckpt["model_args"]["bias"] is True
    sample = run_script("sample.py", f"--init_from={tmp_path / 'hf'}", "--device=cpu", "--start=Hello",
                        "--num_samples=1", "--max_new_tokens=5", cwd=tmp_path)
    assert sample.stdout.startswith("Hello")


def test_ddp_two_processes_match_one_process(tmp_path, char_data):
    """torchrun with 2 gloo processes x 1 micro-batch == 1 process x 2 micro-batches, same data."""
    common = [*TINY, f"--data_dir={char_data[0]}", f"--dataset={char_data[1]}", "--max_iters=3",
              "--eval_interval=3", "--gradient_accumulation_steps=2"]
    run_script("train.py", *common, f"--out_dir={tmp_path / 'single'}", cwd=tmp_path)
    ddp = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                     os.path.join(REPO, "train.py"), *common, f"--out_dir={tmp_path / 'ddp'}", cwd=tmp_path)
    assert "world size 2" in ddp.stdout
    single = load(tmp_path / "single" / "ckpt.pt")["model"]
    multi = load(tmp_path / "ddp" / "ckpt.pt")["model"]
    initial = __import__("model").GPT(__import__("model").GPTConfig(
        n_layer=2, n_head=2, n_embd=32, block_size=16, bias=False, vocab_size=len(char_data[2])))
    for key, value in single.items():
        torch.testing.assert_close(multi[key], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(single["transformer.h.0.mlp.c_fc.weight"],
                           initial.state_dict()["transformer.h.0.mlp.c_fc.weight"])


def test_cuda_device_on_cpu_machine_is_a_clear_error(tmp_path, char_data):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = train(tmp_path, char_data, "--device=cuda", check=False)
    assert result.returncode == 2 and "use --device=cpu" in result.stderr


def test_learning_rate_schedule():
    from train import DEFAULTS, get_lr
    cfg = dict(DEFAULTS, learning_rate=1.0, min_lr=0.1, warmup_iters=10, lr_decay_iters=100)
    lrs = [get_lr(it, cfg) for it in range(120)]
    assert lrs[0] > 0  # nanoGPT starts at exactly zero: a wasted step
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.55)
    assert all(a >= b for a, b in zip(lrs[10:100], lrs[11:101]))
    assert lrs[100:] == [0.1] * 20
    assert get_lr(50, dict(cfg, decay_lr=False)) == 1.0


def test_batches_are_shifted_windows(tmp_path):
    from dataloader import Batches
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "t.bin")
    batches = Batches(str(tmp_path / "t.bin"), 8, 32, "cpu")
    x, y = batches.get(batches.random_starts(torch.Generator().manual_seed(0)))
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 31, dtype=torch.long))
    assert int(y.max()) < 1000


def test_nanogpt_cpu_command_line_is_accepted():
    """nanoGPT's README CPU command, verbatim, parses against our defaults and config file."""
    from configurator import load_config
    from train import DEFAULTS
    argv = ("config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 "
            "--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 "
            "--lr_decay_iters=2000 --dropout=0.0").split()
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        cfg = load_config(DEFAULTS, argv)
    finally:
        os.chdir(cwd)
    assert cfg["dataset"] == "shakespeare_char" and cfg["n_layer"] == 4 and cfg["dropout"] == 0.0
    assert cfg["compile"] is False and cfg["max_iters"] == 2000 and cfg["beta2"] == 0.99


def test_all_config_files_load():
    from configurator import load_config
    from train import DEFAULTS
    files = sorted(f for f in os.listdir(os.path.join(REPO, "config")) if f.endswith(".py"))
    assert {"train_shakespeare_char.py", "train_gpt2.py", "finetune_shakespeare.py", "eval_gpt2.py"} <= set(files)
    for name in files:
        cfg = load_config(DEFAULTS, [os.path.join(REPO, "config", name)])
        assert cfg["max_iters"] >= 0


@pytest.mark.slow
def test_bench_runs_synthetic_and_real(tmp_path, char_data):
    small = ["--device=cpu", "--compile=False", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16",
             "--batch_size=2", "--burnin=1", "--steps=2"]
    shards = tmp_path / "data" / "sharded"  # the layout data/fineweb_edu/prepare.py writes
    shards.mkdir(parents=True)
    tokens = np.fromfile(os.path.join(char_data[0], char_data[1], "train.bin"), dtype=np.uint16)
    for i, part in enumerate(np.array_split(tokens, 2)):
        part.tofile(shards / f"sharded_train_{i + 1:06d}.bin")
    tokens[:100].tofile(shards / "sharded_val_000000.bin")
    for extra in (["--real_data=False"], [f"--data_dir={char_data[0]}", f"--dataset={char_data[1]}"],
                  [f"--data_dir={tmp_path / 'data'}", "--dataset=sharded"]):
        out = run_script("bench.py", *small, *extra, cwd=tmp_path).stdout
        match = re.search(r"loss (\d+\.\d+); (\d+\.\d+) ms/iter, ([\d,]+) tokens/s, mfu n/a", out)
        assert match and math.isfinite(float(match.group(1))) and float(match.group(2)) > 0
    missing = run_script("bench.py", *small, f"--data_dir={tmp_path}", "--dataset=nothing", cwd=tmp_path, check=False)
    assert missing.returncode == 2 and "--real_data=False" in missing.stderr


def test_wandb_logging_offline(tmp_path, char_data):
    pytest.importorskip("wandb")
    train(tmp_path, char_data, "--max_iters=2", "--eval_interval=2", "--wandb_log=True",
          "--wandb_project=test", "--wandb_run_name=tiny")
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


@pytest.mark.parametrize("n_tokens, block_size", [(1000, 32), (1024, 32), (50, 32), (33, 32)])
def test_epoch_order_visits_every_window_once_per_epoch(n_tokens, block_size):
    from dataloader import EpochOrder
    order = EpochOrder(n_tokens, block_size, seed=3)
    n = order.n
    for epoch in range(3):
        starts = order.starts(epoch * n, n)
        assert len(set(starts)) == n  # no window twice
        assert len({s % block_size for s in starts}) == 1  # one offset per epoch: windows tile the data
        assert starts.min() >= 0 and starts.max() + block_size + 1 <= n_tokens  # x and y both fit
    if n > 1:  # a fresh object, or reading in other pieces, gives the same windows: order is a pure function
        again = EpochOrder(n_tokens, block_size, seed=3)
        assert np.array_equal(np.concatenate([again.starts(w, 1) for w in range(2 * n)]),
                              np.concatenate([order.starts(0, n), order.starts(n, n)]))
        assert not np.array_equal(order.starts(0, n), order.starts(n, n))  # epochs are reshuffled


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


def test_out_dir_that_is_a_file_or_unwritable_is_found_before_the_first_step(tmp_path, char_data):
    (tmp_path / "afile").write_text("mine")
    before = tree(tmp_path)
    res = train(tmp_path, char_data, f"--out_dir={tmp_path / 'afile'}", check=False)
    one_error_line(res, "is a file, not a folder")
    res = train(tmp_path, char_data, f"--out_dir={tmp_path / 'afile' / 'sub'}", check=False)
    one_error_line(res, "can't be written (Not a directory)")
    assert tree(tmp_path) == before and "iter 0" not in res.stdout


def test_compile_failure_falls_back_to_eager_with_one_warning(tmp_path, char_data, monkeypatch):
    def broken(fn, **options):  # what a missing C++ compiler or Triton does at the first call
        def first_call(*args):
            raise RuntimeError("InductorError: CppCompileError: C++ compile error")
        return first_call
    monkeypatch.setattr(torch, "compile", broken)
    res = train(tmp_path, char_data, "--compile=True", "--max_iters=2")
    warnings = [line for line in res.stdout.splitlines() if "torch.compile" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: running without torch.compile")
    assert load(tmp_path / "out" / "ckpt.pt")["iter_num"] == 2


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
    (["--init_from=gpt2"], None, "could not download gpt2"),  # the tests run with HF_HUB_OFFLINE=1
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
