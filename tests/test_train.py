"""train.py, sample.py and bench.py end to end, run as subprocesses the way users run them."""
import math
import os
import pickle
import re

import numpy as np
import pytest
import torch

from conftest import REPO, TINY, load, run_script, train

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


@pytest.mark.parametrize("args, message", [
    (["--batchsize=4"], "unknown config key 'batchsize'"),
    (["--batch_size=abc"], "config key 'batch_size'"),
    (["--dataset=nope"], "dataset 'nope' not found"),
    (["--init_from=gpt5"], "unknown init_from 'gpt5'"),
    (["--gradient_accumulation_steps=0"], "gradient_accumulation_steps=0"),
    (["--block_size=5000"], "too few for block_size=5000"),
    (["--dtype=float8"], "unknown dtype 'float8'"),
    (["--init_from=resume"], "no checkpoint at"),
    (["--init_from=gpt2"], "could not download gpt2"),  # the tests run with HF_HUB_OFFLINE=1
])
def test_user_errors_are_one_line(tmp_path, char_data, args, message):
    result = train(tmp_path, char_data, "--max_iters=2", *args, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


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
