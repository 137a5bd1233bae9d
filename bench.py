"""Time training steps (forward, backward, optimizer) on a fixed model and batch: ms/iter, tokens/s, MFU.
With --mode=generate, time generation instead: each decoding variant runs once untimed (its first call:
compiling, capturing), then `steps` times in turn, and is compared with the first by tokens and logits.

    python bench.py                                    # GPT-2 124M, 12 x 1024 tokens, OpenWebText
    python bench.py --real_data=False --device=cpu --n_layer=4 --n_embd=128 --block_size=64 --compile=False
    python bench.py --mode=generate --device=cpu --n_layer=6 --n_head=6 --n_embd=384 --block_size=1024
    python bench.py --mode=generate --device=cuda --num_samples=64          # eager vs CUDA-graph decoding
"""
import os
import sys
import time

import torch

import engine
from configurator import check, load_config
from dataloader import Batches, split_files
from errors import UserError, run_main
from model import GPT, GPTConfig
from runtime import DTYPES, autocast, device_peak_flops, maybe_compile, resolve_device, resolve_dtype

DEFAULTS = dict(
    mode="train",           # 'train': time training steps; 'generate': time generation (see above)
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
    compile=True,           # torch.compile the model (generate mode: also time a compiled decode step)
    profile=False,          # record a torch profiler trace of a few steps into ./bench_log
    prompt_tokens=16,       # generate mode: prompt length
    new_tokens=512,         # generate mode: tokens generated per run
    num_samples=1,          # generate mode: sequences generated together (batch)
    reference=True,         # generate mode: also time use_cache=False (the full recompute) and compare
    transformers=False,     # generate mode: also time Hugging Face transformers' generate on the same weights
    cuda_graph=True,        # generate mode, CUDA: also time decode steps replayed from a CUDA graph
)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    elif device.startswith("mps"):
        torch.mps.synchronize()


def profile(step, n, device):
    """Run step n times under the torch profiler: print the busiest ops, write a trace into ./bench_log."""
    from torch.profiler import ProfilerActivity, profile, tensorboard_trace_handler
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities, on_trace_ready=tensorboard_trace_handler("./bench_log")) as prof:
        for _ in range(n):
            step()
            prof.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    print("trace written to ./bench_log")


def transformers_generate(model, idx, n):
    """Hugging Face transformers' greedy generate (its own KV cache) on our model's weights, via our export."""
    import tempfile
    import transformers
    import hf
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as folder:
        hf.export(model, folder)
        twin = transformers.GPT2LMHeadModel.from_pretrained(folder).to(idx.device).eval()
    return lambda logits: twin.generate(idx, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                        attention_mask=torch.ones_like(idx), pad_token_id=0)


def bench_generate(cfg, device, dtype):
    """Time greedy generation by each variant in turn; compare each with the first by tokens and logits."""
    model = new_model(cfg).to(device, DTYPES[dtype]).eval()
    idx = torch.randint(50257, (cfg["num_samples"], cfg["prompt_tokens"]), device=device)
    n, options = cfg["new_tokens"], {"reference": dict(use_cache=False), "cached": dict(step=engine.decode)}
    if not cfg["reference"]:
        del options["reference"]
    if cfg["cuda_graph"] and device.startswith("cuda"):
        options["cuda graph"] = dict(step=engine.CUDAGraphDecode())
    if cfg["compile"]:
        options["compiled"] = dict(step=engine.compile_decode())
    variants = {name: lambda logits, o=o: model.generate(idx, n, temperature=0, logits_out=logits, **o)
                for name, o in options.items()}
    if cfg["transformers"]:
        variants["transformers"] = transformers_generate(model, idx, n)
    print(f"{model.get_num_params() / 1e6:.1f}M parameters, {device}, {dtype}, {torch.get_num_threads()} threads, "
          f"prompt {cfg['prompt_tokens']}, {n} new tokens, batch {cfg['num_samples']}, greedy")

    def run(variant):
        logits = []
        sync(device)
        t0 = time.time()
        out = variant(logits)
        sync(device)
        return out, logits, time.time() - t0

    first = {name: run(variant)[2] for name, variant in variants.items()}  # compiling, capturing, warm-up
    base, results = next(iter(variants)), {name: [] for name in variants}  # (seconds, same tokens, logit gaps)
    for i in range(cfg["steps"]):
        runs = {name: run(variant) for name, variant in variants.items()}
        ref_out, ref_logits, _ = runs[base]
        for name, (out, logits, dt) in runs.items():
            differ = (out != ref_out).any(0).nonzero()  # from the first differing token on, contexts differ
            steps = int(differ[0]) - idx.size(1) + 1 if len(differ) else n
            gaps = [(a.float() - b.float()).abs().max().item() for a, b in zip(logits[:steps], ref_logits)]
            results[name].append((dt, torch.equal(out, ref_out), gaps))
        print(f"run {i + 1}: " + ", ".join(f"{name} {r[2]:.2f} s" for name, r in runs.items()), flush=True)
    base_time = sum(r[0] for r in results[base])
    for name, rows in results.items():
        total, gaps = sum(r[0] for r in rows), [g for r in rows for g in r[2]]
        gap = f", largest logit gap {max(gaps):.3g}" if gaps and name != base else ""
        print(f"{name}: {total / len(rows) / n * 1000:.2f} ms/token, {n * cfg['num_samples'] * len(rows) / total:,.1f} "
              f"tokens/s, first call {first[name]:.2f} s, {base_time / total:.2f}x {base}'s speed; identical tokens "
              f"in {sum(r[1] for r in rows)} of {len(rows)} runs{gap}")
    if cfg["profile"]:
        profile(lambda: run(variants["cached"]), 1, device)


def new_model(cfg):
    """A GPT of the shape cfg sets, GPT-2's padded vocabulary, weights from cfg's seed."""
    torch.manual_seed(cfg["seed"])
    return GPT(GPTConfig(block_size=cfg["block_size"], n_layer=cfg["n_layer"], n_head=cfg["n_head"],
                         n_embd=cfg["n_embd"], bias=cfg["bias"], dropout=cfg["dropout"], vocab_size=50304))


def bench_train(cfg, device, dtype):
    """Time training steps: forward, backward and the optimizer on one batch size."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    B, T = cfg["batch_size"], cfg["block_size"]
    if device == "cpu" and cfg["n_layer"] * cfg["n_embd"] ** 2 * T * B > 1e11:  # GPT-2 124M's defaults: ~5e12
        print("note: this model and batch take seconds a step on a CPU (and compiling them a minute or more); "
              "for a quick look: --n_layer=4 --n_head=4 --n_embd=128 --block_size=64 --compile=False")
    model = new_model(cfg).to(device)
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
    optimizer = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), torch.device(device).type)
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
        profile(step, min(5, cfg["steps"]), device)
    sync(device)
    t0 = time.time()
    for _ in range(cfg["steps"]):
        loss = step()
    lossf = loss.item()  # waits for the device
    dt = (time.time() - t0) / cfg["steps"]
    mfu = model.estimate_mfu(B, dt, device_peak_flops(device))
    mfu_text = "n/a (unknown device peak)" if mfu is None else f"{mfu * 100:.2f}%"
    print(f"loss {lossf:.4f}; {dt * 1000:.2f} ms/iter, {B * T / dt:,.0f} tokens/s, mfu {mfu_text}")


def main(argv):
    cfg = load_config(DEFAULTS, argv)
    check(cfg)
    device = resolve_device(cfg["device"])
    dtype = resolve_dtype(cfg["dtype"], device)
    return (bench_generate if cfg["mode"] == "generate" else bench_train)(cfg, device, dtype)


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
