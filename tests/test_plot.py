"""Seeing a run: train.py's log.jsonl (with HellaSwag during training), the memory estimate, plot.py."""
import json
import math
import os
import re

import pytest
import torch

from conftest import one_error_line, run_script, train, tree, write_items
from model import GPT, GPTConfig
from runtime import estimate_memory


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def assert_png(path, min_bytes=10_000):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes


def test_log_jsonl_and_hellaswag_during_training(tmp_path, bpe_data):
    items = write_items(tmp_path / "hellaswag.jsonl")
    out = train(tmp_path, bpe_data, "--max_iters=4", "--eval_interval=2", "--hellaswag_interval=2",
                f"--hellaswag_path={items}", "--hellaswag_limit=5", "--grad_clip=0.0").stdout
    # the console keeps nanoGPT's lines; HellaSwag and the memory estimate get lines of their own
    assert re.search(r"^step 2: train loss \d+\.\d{4}, val loss \d+\.\d{4}$", out, re.M)
    assert re.search(r"^iter 3: loss \d+\.\d{4}, time \d+\.\d{2}ms, mfu n/a, tok/s [\d,]+, eta \d+s$", out, re.M)
    assert re.search(r"^step 4: hellaswag acc \d\.\d{4}, acc_norm \d\.\d{4} \(5 items\)$", out, re.M)
    assert re.search(r"^memory estimate per process: params [\d.,]+ MiB, grads [\d.,]+ MiB, optimizer [\d.,]+ MiB, "
                     r"activations [\d.,]+ MiB \(activations of one 4x16 micro-batch\)$", out, re.M)

    records = read_jsonl(tmp_path / "out" / "log.jsonl")
    train_recs = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    tokens_per_iter = 4 * 16  # batch_size x block_size, one micro-step
    assert [r["iter"] for r in train_recs] == [0, 1, 2, 3] and [r["iter"] for r in evals] == [0, 2, 4]
    printed = [float(v) for v in re.findall(r"^iter \d+: loss (\d+\.\d+)", out, re.M)]
    for r, shown in zip(train_recs, printed):
        assert set(r) == {"kind", "iter", "loss", "lr", "tokens", "time_ms", "tok_per_s", "mfu", "grad_norm", "peak_mem"}
        assert round(r["loss"], 4) == shown and r["tokens"] == (r["iter"] + 1) * tokens_per_iter
        assert r["grad_norm"] > 0 and math.isfinite(r["grad_norm"])  # measured even with clipping off
        assert r["tok_per_s"] > 0 and r["time_ms"] > 0 and r["mfu"] is None and r["peak_mem"] is None  # CPU
    assert [r["lr"] for r in train_recs[:2]] == pytest.approx([1e-2 / 3, 2e-2 / 3])  # warmup_iters=2
    vals = [float(v) for v in re.findall(r"val loss (\d+\.\d+)", out)]
    for r, shown in zip(evals, vals):
        assert round(r["val_loss"], 4) == shown and r["tokens"] == r["iter"] * tokens_per_iter
        assert 0 <= r["hellaswag_acc"] <= 1 and 0 <= r["hellaswag_acc_norm"] <= 1

    # the accuracy logged at the last step is what eval.py gets from the checkpoint saved there
    r = run_script("eval.py", f"--out_dir={tmp_path / 'out'}", f"--data_path={items}", "--limit=5",
                   "--device=cpu", cwd=tmp_path).stdout
    assert f"acc {evals[-1]['hellaswag_acc']:.4f}, acc_norm {evals[-1]['hellaswag_acc_norm']:.4f}" in r

    # and plot.py turns the log into a picture with a HellaSwag panel
    r = run_script("plot.py", f"--out_dir={tmp_path / 'out'}", cwd=tmp_path).stdout
    assert r.strip() == f"wrote {tmp_path / 'out' / 'loss.png'}"
    assert_png(tmp_path / "out" / "loss.png")


def test_resumed_run_continues_the_log(tmp_path, char_data):
    train(tmp_path, char_data, "--max_iters=4", "--eval_interval=2")
    log = tmp_path / "out" / "log.jsonl"
    first = read_jsonl(log)
    with open(log, "a") as f:  # what a run that crashed after its checkpoint at step 4 leaves behind
        f.write(json.dumps({"kind": "train", "iter": 4, "loss": 9.0}) + "\n" + '{"kind": "tra')
    train(tmp_path, char_data, "--init_from=resume", "--max_iters=6", "--eval_interval=2")
    records = read_jsonl(log)
    assert records[:len(first)] == first
    assert [r["iter"] for r in records if r["kind"] == "train"] == [0, 1, 2, 3, 4, 5]
    assert [r["iter"] for r in records if r["kind"] == "eval"] == [0, 2, 4, 6]
    # eval_only leaves the log alone
    train(tmp_path, char_data, "--init_from=resume", "--eval_only=True")
    assert read_jsonl(log) == records


def test_hellaswag_interval_must_fit_evaluations(tmp_path, char_data, bpe_data):
    r = train(tmp_path, bpe_data, "--max_iters=4", "--eval_interval=2", "--hellaswag_interval=3", check=False)
    assert r.returncode == 2 and "hellaswag_interval=3 must be a multiple of eval_interval=2" in r.stderr
    r = train(tmp_path, char_data, "--max_iters=4", "--eval_interval=2", "--hellaswag_interval=2",
              f"--hellaswag_path={write_items(tmp_path / 'h.jsonl')}", check=False)
    assert r.returncode == 2 and "GPT-2's BPE vocabulary" in r.stderr


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(2, 64, 50304, 4, 32), (4, 128, 65, 8, 64)])
def test_activation_estimate_is_close_to_what_autograd_saves(shape, dtype):
    """The estimate against the bytes of every tensor autograd keeps for backward (weights excluded)."""
    L, C, V, B, T = shape
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=L, n_head=4, n_embd=C, vocab_size=V, block_size=T, bias=False))
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    x = torch.randint(0, V, (B, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            model(x, x)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    measured = sum(n for ptr, n in saved.items() if ptr not in weights)
    est = estimate_memory(model, B, T, dtype)
    assert 0.8 < est["activations"] / measured < 1.2
    n = sum(p.numel() for p in model.parameters())
    assert est["params"] == est["grads"] == 4 * n and est["optimizer"] == 8 * n  # fp32 weights, AdamW's 2 moments


def fake_log(folder, scale, hellaswag=False):
    folder.mkdir()
    with open(folder / "log.jsonl", "w") as f:
        for it in range(0, 200, 5):
            f.write(json.dumps({"kind": "train", "iter": it, "loss": scale * (1 + 3 * math.exp(-it / 30)),
                                "lr": 1e-3 * min(1, (it + 1) / 20), "tokens": (it + 1) * 768}) + "\n")
            if it % 50 == 0:
                record = {"kind": "eval", "iter": it, "val_loss": scale * (1.1 + 3 * math.exp(-it / 30)),
                          "train_loss": None, "lr": 1e-3, "tokens": it * 768}
                if hellaswag:
                    record.update(hellaswag_acc=0.25 + it / 2000, hellaswag_acc_norm=0.26 + it / 2000)
                f.write(json.dumps(record) + "\n")
    return str(folder)


def test_plot_overlays_runs(tmp_path):
    a, b = fake_log(tmp_path / "run_a", 1.0), fake_log(tmp_path / "run_b", 1.2, hellaswag=True)
    out = run_script("plot.py", f"--out_dir={a}", f"--out_dir={b}", f"--output={tmp_path / 'both.png'}",
                     "--title=two runs").stdout
    assert out.strip() == f"wrote {tmp_path / 'both.png'}"
    assert_png(tmp_path / "both.png")
    assert not os.path.exists(os.path.join(a, "loss.png"))
    run_script("plot.py", f"--out_dir={a}")
    assert_png(os.path.join(a, "loss.png"))


def test_plot_user_errors(tmp_path):
    r = run_script("plot.py", f"--out_dir={tmp_path}", check=False)
    assert r.returncode == 2 and f"no log.jsonl in '{tmp_path}'" in r.stderr and "Traceback" not in r.stderr
    a = fake_log(tmp_path / "run", 1.0)
    fake = tmp_path / "no_matplotlib" / "matplotlib"  # a matplotlib that fails to import, as if absent
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    r = run_script("plot.py", f"--out_dir={a}", check=False, env={"PYTHONPATH": str(fake.parent)})
    assert r.returncode == 2 and r.stderr.strip() == "error: plot.py needs matplotlib: pip install matplotlib"


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
