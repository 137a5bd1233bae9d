"""Measure training speed (forward, backward and optimizer step on a fixed model and batch), or
generation speed with --mode=generate (KV cache against the full-recompute reference).

    python bench.py                                    # GPT-2 124M, 12 x 1024 tokens, OpenWebText
    python bench.py --real_data=False --device=cpu --n_layer=4 --n_embd=128 --block_size=64 --compile=False
    python bench.py --profile=True                     # also write a torch profiler trace
    python bench.py --mode=generate --device=cpu --n_layer=6 --n_head=6 --n_embd=384 --block_size=1024
    python bench.py --mode=generate --device=cpu --reference=False --transformers=True --new_tokens=200 --steps=5

Runs `burnin` untimed steps (compilation, allocator warm-up), then times `steps` steps with the
device synchronised before each clock read, and prints ms/iter, tokens/s and MFU. Generate mode
(random weights, greedy) alternates cached and reference runs `steps` times, so that other load on
the machine hits both alike, checks that they return identical tokens, and prints ms/token and the
speedup; --profile=True adds a profiler table of the cached run.
"""
import os
import sys
import time

import torch

from configurator import UserError, load_config, run_main
from dataloader import Batches, split_files
from model import GPT, GPTConfig, device_peak_flops
from runtime import autocast, maybe_compile, resolve_device, resolve_dtype

DEFAULTS = dict(
    mode="train",           # 'train': time training steps; 'generate': time generation, cached vs reference
    batch_size=12,          # sequences per step
    block_size=1024,        # tokens per sequence
    n_layer=12,             # model shape: GPT-2 124M by default
    n_head=12,
    n_embd=768,
    bias=False,
    dropout=0.0,
    real_data=True,         # batches from data_dir/dataset's train split; False: random tokens
    dataset="openwebtext",
    data_dir="data",
    burnin=10,              # untimed steps first
    steps=20,               # timed steps
    seed=1337,
    device="auto",          # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype="auto",           # 'auto' (bf16 on recent GPUs, fp16 on older, fp32 on CPU), or explicit
    compile=True,           # torch.compile the model
    profile=False,          # record a torch profiler trace of a few steps into ./bench_log
    prompt_tokens=16,       # generate mode: prompt length
    new_tokens=512,         # generate mode: tokens generated per run
    num_samples=1,          # generate mode: sequences generated together (batch)
    reference=True,         # generate mode: also time use_cache=False (the full recompute) and compare
    transformers=False,     # generate mode: also time Hugging Face transformers' generate on the same weights
    huge_pages=True,        # generate mode, CPU on Linux: weights on 2 MB pages (engine.huge_pages); False to compare
)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device.startswith("mps"):
        torch.mps.synchronize()


def transformers_twin(model, device):
    """Hugging Face transformers' GPT2LMHeadModel holding our model's weights, through our own export."""
    import tempfile
    import transformers
    from eval import export_hf
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as folder:
        export_hf(model, folder)
        return transformers.GPT2LMHeadModel.from_pretrained(folder).to(device).eval()


def bench_generate(cfg, device):
    """Time generate() with the KV cache and, alternately, without; check both give the same ids."""
    import engine
    engine.USE_HUGE_PAGES = cfg["huge_pages"]
    if cfg["prompt_tokens"] < 1 or cfg["new_tokens"] < 1 or cfg["num_samples"] < 1:
        raise UserError("prompt_tokens, new_tokens and num_samples must be >= 1 in generate mode")
    torch.manual_seed(cfg["seed"])
    model = GPT(GPTConfig(block_size=cfg["block_size"], n_layer=cfg["n_layer"], n_head=cfg["n_head"],
                          n_embd=cfg["n_embd"], bias=cfg["bias"], vocab_size=50304)).to(device).eval()
    idx = torch.randint(50257, (cfg["num_samples"], cfg["prompt_tokens"]), device=device)
    step_fn = engine.compile_step(model, device) if cfg["compile"] else None
    n = cfg["new_tokens"]
    print(f"{model.get_num_params() / 1e6:.1f}M parameters, {device}, {torch.get_num_threads()} threads, "
          f"prompt {cfg['prompt_tokens']}, {n} new tokens, batch {cfg['num_samples']}, greedy")

    hf = transformers_twin(model, device) if cfg["transformers"] else None

    # On CPU the cached path's eager kernels give the reference's bits (engine.py), so any other token
    # is a bug. Compiled or GPU kernels may round a row differently by how many rows run together:
    # there the runs are compared by their logits, step by step up to the first other token.
    exact = device == "cpu" and step_fn is None

    def timed(use_cache, logits=None):
        sync(device)
        t0 = time.time()
        if use_cache == "transformers":  # its own greedy decoding with its KV cache
            out = hf.generate(idx, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                              attention_mask=torch.ones_like(idx), pad_token_id=0)
        else:
            out = torch.cat([idx] + list(engine.stream(model, idx, n, temperature=0, use_cache=use_cache,
                                                       step_fn=step_fn if use_cache else None,
                                                       logits_out=logits)), dim=1)
        sync(device)
        return out, time.time() - t0

    timed(True)  # warm-up: allocator, kernels (and compilation)
    if hf is not None:
        timed("transformers")
    fast_times, ref_times, hf_times, hf_same, same, gaps = [], [], [], [], [], []
    for _ in range(cfg["steps"]):
        fast_logits, ref_logits = ([], []) if not exact else (None, None)
        fast, dt = timed(True, fast_logits)
        fast_times.append(dt)
        print(f"cached run: {dt:.2f} s", flush=True)
        if cfg["reference"]:
            ref, dt = timed(False, ref_logits)
            ref_times.append(dt)
            same.append(torch.equal(fast, ref))
            print(f"reference run: {dt:.2f} s, same tokens: {same[-1]}", flush=True)
            if exact and not same[-1]:
                raise SystemExit("cached and reference generation returned different tokens")
            if not exact:  # the largest logit difference while both paths had the same context
                differ = (fast != ref).any(0).nonzero()
                steps = (int(differ[0]) - idx.size(1) + 1) if len(differ) else n
                gaps.append(max((a.float() - b.float()).abs().max().item()
                                for a, b in zip(fast_logits[:steps], ref_logits[:steps])))
        if hf is not None:
            theirs, dt = timed("transformers")
            hf_times.append(dt)
            hf_same.append(torch.equal(fast, theirs))
            print(f"transformers run: {dt:.2f} s, same tokens: {hf_same[-1]}", flush=True)
    tokens = n * cfg["num_samples"]
    if hf_times:
        ratios = [t / f for f, t in zip(fast_times, hf_times)]
        print(f"transformers' generate / ours: {sum(hf_times) / sum(fast_times):.2f}x the time (per pair: "
              f"{', '.join(f'{r:.2f}' for r in ratios)}); identical tokens in {sum(hf_same)} of {len(hf_same)} runs")
    for name, times in (("cached", fast_times), ("reference", ref_times), ("transformers", hf_times)):
        if times:
            dt = sum(times) / len(times)
            print(f"{name}: {dt:.2f} s, {dt / n * 1000:.2f} ms/token, {tokens / dt:,.1f} tokens/s "
                  f"(runs: {', '.join(f'{t:.2f}' for t in times)} s)")
    if ref_times:
        ratios = [r / f for f, r in zip(fast_times, ref_times)]
        agreement = "True" if exact else f"{sum(same)} of {len(same)} runs (largest logit difference " \
            f"before the first other token: {max(gaps):.3g}; compiled or GPU kernels round differently)"
        print(f"speedup {sum(ref_times) / sum(fast_times):.1f}x (per pair: {', '.join(f'{r:.1f}' for r in ratios)}); "
              f"identical tokens: {agreement}")
    if cfg["profile"]:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            timed(True)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv):
    cfg = load_config(DEFAULTS, argv)
    if cfg["mode"] not in ("train", "generate"):
        raise UserError(f"unknown mode '{cfg['mode']}': use train or generate")
    if cfg["steps"] < 1 or cfg["burnin"] < 0:
        raise UserError("steps must be >= 1 and burnin >= 0")
    for key in ("batch_size", "block_size", "n_layer", "n_head", "n_embd"):
        if cfg[key] < 1:
            raise UserError(f"{key}={cfg[key]} must be at least 1")
    if cfg["n_embd"] % cfg["n_head"]:
        raise UserError(f"n_embd={cfg['n_embd']} must be divisible by n_head={cfg['n_head']}")
    if not 0 <= cfg["dropout"] < 1:
        raise UserError(f"dropout={cfg['dropout']} must be in [0, 1)")
    if not 0 <= cfg["seed"] < 2 ** 62:
        raise UserError(f"seed={cfg['seed']} must be in [0, 2**62)")
    device = resolve_device(cfg["device"])
    dtype = resolve_dtype(cfg["dtype"], device)
    if cfg["mode"] == "generate":
        with autocast(device, dtype):
            return bench_generate(cfg, device)
    torch.manual_seed(cfg["seed"])
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    B, T = cfg["batch_size"], cfg["block_size"]
    if device == "cpu" and cfg["n_layer"] * cfg["n_embd"] ** 2 * T * B > 1e11:  # GPT-2 124M's defaults: ~5e12
        print("note: this model and batch take seconds a step on a CPU (and compiling them a minute or more); "
              "for a quick look: --n_layer=4 --n_head=4 --n_embd=128 --block_size=64 --compile=False")
    if cfg["real_data"]:  # train.bin, or the train shards of a sharded dataset (fineweb_edu)
        try:
            paths = split_files(os.path.join(cfg["data_dir"], cfg["dataset"]), cfg["dataset"])["train"]
        except UserError as e:
            raise UserError(f"{e}; or time random tokens with --real_data=False") from None
        batches, generator = Batches(paths, B, T, device), torch.Generator().manual_seed(cfg["seed"])
        get_batch = lambda: batches.get(batches.random_starts(generator))  # noqa: E731
    else:
        x = torch.randint(50257, (B, T), device=device)
        get_batch = lambda: (x, x)  # noqa: E731
    model = GPT(GPTConfig(block_size=T, n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                          bias=cfg["bias"], dropout=cfg["dropout"], vocab_size=50304)).to(device)
    optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), device.split(":")[0])
    maybe_compile(model, cfg["compile"], device)
    ctx = autocast(device, dtype)
    print(f"{model.get_num_params() / 1e6:.1f}M parameters, batch {B} x {T} tokens, {device}, {dtype}, "
          f"compile={cfg['compile']}")

    def step():
        x, y = get_batch()
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(cfg["burnin"]):
        step()
    if cfg["profile"]:
        from torch.profiler import ProfilerActivity, profile, tensorboard_trace_handler
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with profile(activities=activities, on_trace_ready=tensorboard_trace_handler("./bench_log"),
                     record_shapes=True) as prof:
            for _ in range(min(5, cfg["steps"])):
                step()
                prof.step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        print("trace written to ./bench_log")
    sync(device)
    t0 = time.time()
    for _ in range(cfg["steps"]):
        loss = step()
    lossf = loss.item()
    sync(device)
    dt = (time.time() - t0) / cfg["steps"]
    mfu = model.estimate_mfu(B, dt, device_peak_flops(device))
    mfu_text = "n/a (unknown device peak)" if mfu is None else f"{mfu * 100:.2f}%"
    print(f"loss {lossf:.4f}; {dt * 1000:.2f} ms/iter, {B * T / dt:,.0f} tokens/s, mfu {mfu_text}")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
