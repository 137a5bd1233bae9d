"""torch.compile for real, on CPU (inductor's C++ backend): what breaks on a GPU under compile (graph
breaks, recompiles, compile with DDP or FSDP2, state-dict names) breaks the same way here. Graph
breaks and recompiles are read from torch's own logs (TORCH_LOGS=graph_breaks,recompiles)."""
import os
import re
import shutil

import pytest
import torch

from conftest import REPO, TINY, load, run_script, train
from engine import compile_decode, stream
from model import GPT, GPTConfig
pytestmark = pytest.mark.skipif(not any(map(shutil.which, ("cc", "gcc", "clang"))), reason="inductor needs a C compiler")

COMPILED = [a for a in TINY if a != "--compile=False"] + ["--compile=True", "--log_interval=1"]
WATCH = {"TORCH_LOGS": "graph_breaks,recompiles"}


def losses(stdout):
    return [float(x) for x in re.findall(r"^iter \d+: loss ([\d.]+)", stdout, re.M)]


def val_losses(stdout):
    return [float(x) for x in re.findall(r"^step \d+: train loss [\d.]+, val loss ([\d.]+)", stdout, re.M)]


def breaks_and_recompiles(stderr):
    return stderr.count("Graph break"), stderr.count("Recompiling function")


@pytest.mark.slow
def test_compiled_training_matches_eager_with_no_graph_break(tmp_path, char_data):
    data = [f"--data_dir={char_data[0]}", f"--dataset={char_data[1]}"]
    steps = ["--max_iters=20", "--eval_interval=10"]
    eager = run_script("train.py", *TINY, *data, *steps, f"--out_dir={tmp_path / 'eager'}", cwd=tmp_path)
    compiled = run_script("train.py", *COMPILED, *data, *steps, f"--out_dir={tmp_path / 'out'}", cwd=tmp_path,
                          env=WATCH)
    a, b = losses(compiled.stdout), losses(eager.stdout)
    assert len(a) == len(b) == 20
    # inductor fuses and reorders float32 sums: ~1e-6 per step, grown over 20 steps at lr 1e-2
    assert max(abs(x - y) / y for x, y in zip(a, b)) < 2e-2, (a, b)
    # the training forward is one graph; evaluation under no_grad compiles it once more
    assert breaks_and_recompiles(compiled.stderr) == (0, 1), compiled.stderr[-3000:]

    saved = load(tmp_path / "out" / "ckpt.pt")  # plain names: loads in an eager model, and in nanoGPT
    assert not [k for k in saved["model"] if "_orig_mod" in k or k.startswith("module.")]
    resumed = run_script("train.py", *COMPILED, *data, "--max_iters=30", "--eval_interval=10", "--init_from=resume",
                         f"--out_dir={tmp_path / 'out'}", cwd=tmp_path, env=WATCH)
    assert "iter 29:" in resumed.stdout and breaks_and_recompiles(resumed.stderr) == (0, 1)
    sample = run_script("sample.py", f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--compile=False",
                        "--num_samples=1", "--max_new_tokens=20", f"--data_dir={char_data[0]}", cwd=tmp_path)
    assert sample.stdout.strip()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_compiled_two_processes_ddp_and_fsdp_without_graph_breaks(tmp_path, char_data, mode):
    settings = ["--gradient_accumulation_steps=2", "--max_iters=10", "--eval_interval=5", "--eval_iters=4",
                f"--data_dir={char_data[0]}", f"--dataset={char_data[1]}"]
    single = train(tmp_path, char_data, *settings[:-2], f"--out_dir={tmp_path / 'single'}")
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", os.path.join(REPO, "train.py")]
    run = run_script(*launch, *COMPILED, *settings, f"--fsdp={mode == 'fsdp'}", f"--out_dir={tmp_path / mode}",
                     cwd=tmp_path, env=WATCH)
    # FSDP2 compiles block by block, before sharding: its hooks run between the compiled blocks
    assert breaks_and_recompiles(run.stderr) == (0, 2), run.stderr[-3000:]  # 1 recompile (no_grad) per rank
    ours, ref = val_losses(run.stdout)[-1], val_losses(single.stdout)[-1]
    assert abs(ours - ref) < 0.03 * ref
    saved = load(tmp_path / mode / "ckpt.pt")
    assert set(saved["model"]) == set(load(tmp_path / "single" / "ckpt.pt")["model"])


def test_bfloat16_autocast_training_on_cpu(tmp_path, char_data):
    fp32 = train(tmp_path, char_data, "--max_iters=20", "--eval_interval=10", f"--out_dir={tmp_path / 'fp32'}")
    bf16 = train(tmp_path, char_data, "--max_iters=20", "--eval_interval=10", "--dtype=bfloat16",
                 f"--out_dir={tmp_path / 'bf16'}")
    assert "dtype bfloat16" in bf16.stdout
    a, b = val_losses(bf16.stdout)[-1], val_losses(fp32.stdout)[-1]
    assert a == a and abs(a - b) < 0.05 * b


def test_compiled_decode_step_on_cpu_gives_the_eager_tokens_in_one_graph(one_thread):
    """A compiled step rounds differently from the eager reference (fused kernels), so its logits are
    close, not bit-equal; with logits far from a tie (sharpened head) the greedy tokens are the same.
    One graph serves every cache length, across block_size too (past it, the eager full forward runs)."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=48, vocab_size=97, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    idx = torch.randint(97, (1, 5))
    notes = []
    step = compile_decode(log=notes.append)
    fast_logits, ref_logits = [], []
    fast = torch.cat(list(stream(model, idx, 70, temperature=0, step=step, logits_out=fast_logits)), 1)
    ref = torch.cat(list(stream(model, idx, 70, temperature=0, use_cache=False, logits_out=ref_logits)), 1)
    assert len(notes) == 1 and notes[0].startswith("note: compiled the decode step in")  # no fallback
    assert torch.equal(fast, ref)
    assert max((a - b).abs().max().item() for a, b in zip(fast_logits, ref_logits)) < 1e-4
    assert counters["stats"]["unique_graphs"] == 1


def test_compiled_decode_step_falls_back_to_eager_when_compiling_fails(monkeypatch, one_thread):
    """Inductor compiles at the first call, so a broken toolchain shows there: one note, eager tokens."""
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no working C++ compiler\nmore detail")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=50, n_layer=1, n_head=2, n_embd=16)).eval()
    idx = torch.randint(50, (1, 20))
    notes = []
    step = compile_decode(log=notes.append)
    out = torch.cat(list(stream(model, idx, 8, temperature=0, step=step)), 1)
    ref = torch.cat(list(stream(model, idx, 8, temperature=0)), 1)
    assert torch.equal(out, ref)
    assert notes == ["note: decoding without torch.compile (RuntimeError: no working C++ compiler)"]
