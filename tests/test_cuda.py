"""The CUDA paths: compiled against eager, bf16 and fp16 training, flash attention, the KV cache, peak
memory, and NCCL DDP. Skipped where torch sees no GPU (CI); `.ci/gpu` runs them on a GPU machine
(`python -m pytest -m cuda tests`)."""
import json
import os

import pytest
import torch

from conftest import REPO, TINY, load, run_script, write_char_data
from model import GPT, GPTConfig

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (.ci/gpu runs these)")]

CUDA = [a for a in TINY if not a.startswith(("--device", "--compile"))] + ["--device=cuda"]
SMALL = GPTConfig(block_size=128, vocab_size=512, n_layer=2, n_head=4, n_embd=128, bias=False)


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def batch(config, B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(config.vocab_size, (B, config.block_size + 1), generator=g)
    return x[:, :-1].cuda(), x[:, 1:].cuda()


def test_compiled_logits_match_eager_in_float32_and_bfloat16():
    torch.manual_seed(0)
    model = GPT(SMALL).cuda().eval()
    x, y = batch(SMALL)
    compiled = torch.compile(model)
    with torch.no_grad():
        eager32, compiled32 = model(x, y)[0], compiled(x, y)[0]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            eager16, compiled16 = model(x, y)[0], compiled(x, y)[0]
    assert rel_err(compiled32, eager32) < 1e-3  # tf32 may be on: ~3e-4
    assert rel_err(compiled16, eager16) < 2e-2  # bf16 operands: 1e-3 to 1e-2
    assert rel_err(eager16, eager32) < 2e-2


def train_losses(dtype, steps=30, scaler=False):
    torch.manual_seed(0)
    model = GPT(SMALL).cuda()
    opt = model.configure_optimizers(0.1, 3e-3, (0.9, 0.95), "cuda")
    scale = torch.amp.GradScaler("cuda", enabled=scaler)
    x, y = batch(SMALL)
    losses = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            loss = model(x, y)[1]
        scale.scale(loss).backward()
        scale.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scale.step(opt)
        scale.update()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_bfloat16_and_float16_with_scaler_train_like_float32():
    fp32, bf16, fp16 = train_losses(torch.float32), train_losses(torch.bfloat16), train_losses(torch.float16, scaler=True)
    for losses in (fp32, bf16, fp16):
        assert all(map(torch.isfinite, torch.tensor(losses)))
        assert losses[-1] < 0.8 * losses[0]  # memorising one batch
    assert abs(bf16[-1] - fp32[-1]) < 0.1 * fp32[-1]
    assert abs(fp16[-1] - fp32[-1]) < 0.1 * fp32[-1]


def test_flash_attention_is_the_kernel_for_training_shapes():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile
    torch.manual_seed(0)
    config = GPTConfig(block_size=1024, vocab_size=512, n_layer=1, n_head=12, n_embd=768, bias=False)
    model = GPT(config).cuda()
    x, y = batch(config, B=2)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if flash cannot run these shapes
            model(x, y)[1].backward()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:  # and the default choice is flash
            model(x, y)[1].backward()
            torch.cuda.synchronize()
    kernels = [e.key.lower() for e in prof.key_averages()]
    assert any("flash" in k for k in kernels), kernels


def test_kv_cache_on_cuda_follows_the_full_recompute():
    """On a GPU kernels round differently by shape, so the cached (eager, CUDA graph, compiled) and
    reference logits agree closely rather than bit for bit; greedy tokens agree until a near tie."""
    from engine import CUDAGraphDecode, compile_decode, decode, stream
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=4, n_embd=128)).cuda().eval()
    with torch.no_grad():  # sharper logits than the initialisation's, so ties are rare
        model.lm_head.weight.mul_(20)
    idx = torch.randint(512, (1, 8), device="cuda")
    for step in (decode, CUDAGraphDecode(log=pytest.fail), compile_decode(log=print)):
        fast_logits, ref_logits = [], []
        fast = torch.cat(list(stream(model, idx, 80, temperature=0, step=step, logits_out=fast_logits)), 1)
        ref = torch.cat(list(stream(model, idx, 80, temperature=0, use_cache=False, logits_out=ref_logits)), 1)
        same = int((fast == ref).long().cumprod(1).sum())  # tokens equal before the first difference
        for a, b in zip(fast_logits[:same + 1], ref_logits[:same + 1]):
            assert (a - b).abs().max().item() < 1e-3 * b.abs().max().item() + 1e-4
        if same < 80:  # the paths may part only where the top two logits of the reference nearly tie
            top2 = ref_logits[same].topk(2).values[0]
            assert (top2[0] - top2[1]).item() < 1e-2 * top2.abs().max().item()


def test_cuda_graph_decoding_equals_eager_for_64_steps():
    """Replays of the captured step give eager's greedy tokens, at batch 1 and 4, for a second sample too."""
    from engine import CUDAGraphDecode
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=128, vocab_size=512, n_layer=2, n_head=4, n_embd=128)).cuda().eval()
    graph = CUDAGraphDecode(log=lambda line: None)
    for B in (1, 4, 4):
        idx = torch.randint(512, (B, 8), device="cuda")
        assert torch.equal(model.generate(idx, 64, temperature=0, step=graph), model.generate(idx, 64, temperature=0))
    assert graph.graph not in (None, False) and graph.captures == 3


@pytest.fixture
def cuda_data(tmp_path):
    return write_char_data(tmp_path)


def train_cuda(tmp_path, data, *extra, out="out"):
    return run_script("train.py", *CUDA, f"--data_dir={data[0]}", f"--dataset={data[1]}",
                      f"--out_dir={tmp_path / out}", *extra, cwd=tmp_path)


def test_train_script_compiled_bf16_then_float16_resume_and_peak_memory(tmp_path, cuda_data):
    first = train_cuda(tmp_path, cuda_data, "--compile=True", "--dtype=bfloat16", "--max_iters=20",
                       "--eval_interval=10")
    saved = load(tmp_path / "out" / "ckpt.pt")
    assert not any("_orig_mod" in k for k in saved["model"])  # plain names after compile
    records = [json.loads(line) for line in open(tmp_path / "out" / "log.jsonl")]
    assert all(r["peak_mem"] > 0 for r in records)
    assert "peak memory" in first.stdout
    # float16 resume from a bf16 checkpoint: its scaler state is empty, and must not be loaded
    second = train_cuda(tmp_path, cuda_data, "--compile=False", "--dtype=float16", "--max_iters=30",
                        "--eval_interval=10", "--init_from=resume")
    assert "step 30:" in second.stdout
    eager = train_cuda(tmp_path, cuda_data, "--compile=False", "--dtype=bfloat16", "--max_iters=20",
                       "--eval_interval=10", out="eager")
    val = lambda out: float(out.split("step 20: train loss")[1].split("val loss")[1].split()[0])  # noqa: E731
    assert abs(val(first.stdout) - val(eager.stdout)) < 0.05 * val(eager.stdout)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_nccl_ddp_two_gpus(tmp_path, cuda_data):
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        os.path.join(REPO, "train.py"), *CUDA, "--gradient_accumulation_steps=2", "--max_iters=4",
                        f"--data_dir={cuda_data[0]}", f"--dataset={cuda_data[1]}", f"--out_dir={tmp_path / 'out'}",
                        "--compile=False", cwd=tmp_path)
    assert "world size 2" in result.stdout and (tmp_path / "out" / "ckpt.pt").exists()
