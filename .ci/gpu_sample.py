"""Time greedy sampling from GPT-2 124M's shape (random weights): ours, with the KV cache (eager decode
steps, replayed from a CUDA graph, or compiled and replayed), or nanoGPT's generate (the whole context
again per token, under bf16 autocast; ours runs on bf16 weights).

    python .ci/gpu_sample.py --impl=ours-graph --device=cuda --tokens=500 --batch=64
    python .ci/gpu_sample.py --impl=nanogpt --nanogpt_dir=.gpu/nanoGPT --device=cuda

One untimed run first (compilation, kernels), then --runs timed ones; prints one JSON line.
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from engine import CUDAGraphDecode, compile_decode, decode  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def nanogpt_model(folder, state, shape):
    spec = importlib.util.spec_from_file_location("nanogpt_model", os.path.join(folder, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.GPT(module.GPTConfig(**shape))
    model.load_state_dict(state, strict=False)  # theirs may hold a causal-mask buffer where flash is missing
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=("ours", "ours-graph", "ours-compiled", "nanogpt"), required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--nanogpt_dir", default="")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tokens", type=int, default=500)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="a 2-layer model (the dry run)")
    a = p.parse_args()
    shape = dict(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=True)
    if a.tiny:
        shape.update(n_layer=2, n_head=2, n_embd=64, block_size=256)
    torch.manual_seed(0)
    ours = GPT(GPTConfig(**shape))
    model = nanogpt_model(a.nanogpt_dir, ours.state_dict(), shape) if a.impl == "nanogpt" else ours
    cuda = a.device.startswith("cuda")
    nano = a.impl == "nanogpt"
    model = model.to(a.device, torch.bfloat16 if cuda and not nano else torch.float32).eval()
    ctx = torch.autocast("cuda", dtype=torch.bfloat16, enabled=nano) if cuda else torch.autocast("cpu", enabled=False)
    step = compile_decode() if a.impl == "ours-compiled" else decode
    if a.impl in ("ours-graph", "ours-compiled") and cuda:
        step = CUDAGraphDecode(step)
    idx = torch.zeros((a.batch, 1), dtype=torch.long, device=a.device)

    def run():
        if cuda:
            torch.cuda.synchronize()
        t = time.time()
        with torch.no_grad(), ctx:
            if a.impl == "nanogpt":
                out = model.generate(idx, a.tokens, top_k=1)  # greedy: the one id left
            else:
                out = model.generate(idx, a.tokens, temperature=0, step=step)
        if cuda:
            torch.cuda.synchronize()
        return time.time() - t, out

    warm, _ = run()
    times = [run()[0] for _ in range(a.runs)]
    s = statistics.median(times)
    print(json.dumps({"impl": a.impl, "device": a.device, "tokens": a.tokens, "batch": a.batch, "first_run_s": round(warm, 3),
                      "median_s": round(s, 4), "ms_per_token": round(s / a.tokens * 1000, 3),
                      "runs_s": [round(t, 4) for t in times], "dtype": "bfloat16" if cuda else "float32"}))


if __name__ == "__main__":
    main()
