"""Train a GPT, from scratch or from a checkpoint, on one device or many.

    python train.py config/train_shakespeare_char.py --device=cpu --max_iters=2000
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

Config files and --key=value overrides set the values in DEFAULTS below (see configurator.py).
The story, top to bottom: settings, devices, data, model, optimizer, then the loop, which
evaluates every eval_interval steps and always at the last one, saving ckpt.pt in out_dir.
"""
import math
import os
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

from checkpoint import MODEL_ARGS, Checkpoints, adopt_model_shape, checkpoint_files, load_model
from configurator import check, load_config
from dataloader import EpochOrder, open_splits, prepare_if_local, split_files
from errors import UserError, run_main
from eval import check_gpt2_vocab, estimate_loss, evaluate_hellaswag, load_hellaswag
from metrics import Metrics
from model import GPT, GPTConfig
from optim import build_optimizer, set_lr
from runtime import (agree, autocast, device_peak_flops, estimate_memory, place_model, resolve_device, resolve_dtype,
                     setup_distributed, teardown_distributed)
from safety import RunLock, StopSignals
from tokenizer import check_vocab, load_vocab

DEFAULTS = dict(
    # output, evaluation, checkpoints
    out_dir="out",                 # where ckpt.pt is written and read
    eval_interval=2000,            # evaluate (and maybe save) every this many steps, and at the last
    log_interval=1,                # print a training line every this many steps
    eval_iters=200,                # batches per split when estimating train/val loss
    eval_only=False,               # evaluate once and exit
    always_save_checkpoint=True,   # save at every evaluation, not only when val loss improves
    save_interval=0,               # also keep a snapshot ckpt_NNNNNNN.pt every this many steps (0: off)
    save_iters=[],                 # ...and at these steps, e.g. --save_iters=[1000,5000]
    keep_last=0,                   # keep only the newest this many periodic snapshots (0: all of them)
    keep_best=False,               # also write best.pt whenever the val loss improves
    init_from="scratch",           # 'scratch', 'resume' (from out_dir), 'gpt2'..'gpt2-xl', or a HF GPT-2 dir
    hellaswag_interval=0,          # also score HellaSwag every this many steps (a multiple of eval_interval); 0: never
    hellaswag_path="",             # a local HellaSwag jsonl; "" downloads the validation set into data_dir/hellaswag
    hellaswag_limit=0,             # score only the first N HellaSwag items (0: all 10,042)
    # weights & biases
    wandb_log=False,               # log to wandb (imported only when this is on)
    wandb_project="owt",
    wandb_run_name="gpt2",
    # data
    dataset="openwebtext",         # folder under data_dir holding train.bin, val.bin (and meta.json)
    data_dir="data",               # where dataset folders live
    gradient_accumulation_steps=5 * 8,  # micro-steps per optimizer step, across all processes
    batch_size=12,                 # sequences per micro-step per process
    block_size=1024,               # tokens per sequence
    # model
    n_layer=12,
    n_head=12,
    n_embd=768,
    dropout=0.0,                   # 0 for pretraining; try 0.1+ when finetuning
    bias=False,                    # biases in Linear and LayerNorm layers
    # optimizer: AdamW for everything, or Muon for the blocks' matrices and AdamW for the rest (optim.py)
    optimizer="adamw",             # 'adamw' or 'muon' (torch 2.9+)
    muon_lr=0.02,                  # Muon's peak learning rate (follows the same schedule)
    muon_momentum=0.95,            # Muon's momentum (Nesterov)
    learning_rate=6e-4,            # peak learning rate (AdamW)
    max_iters=600000,              # optimizer steps in the whole run
    weight_decay=1e-1,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,                 # clip the gradient norm to this; 0 turns clipping off
    # learning-rate schedule: linear warmup, then cosine decay to min_lr
    decay_lr=True,                 # False keeps learning_rate constant
    warmup_iters=2000,
    lr_decay_iters=600000,         # steps until min_lr; ~max_iters
    min_lr=6e-5,                   # ~learning_rate / 10
    # system
    backend="auto",                # distributed backend: 'nccl' on CUDA, 'gloo' on CPU when 'auto'
    fsdp=False,                    # shard weights, gradients and optimizer state (FSDP2) instead of DDP
    device="auto",                 # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype="auto",                  # 'auto' (bf16 on recent GPUs, fp16 on older, fp32 on CPU), or explicit
    compile=True,                  # torch.compile the model (skipped with a note where it can't work)
    seed=1337,                     # seeds the weights, dropout and the batch sampler
)


def get_lr(it, cfg):
    """Linear warmup (nonzero from the first step), cosine decay, then a floor of min_lr."""
    if not cfg["decay_lr"]:
        return cfg["learning_rate"]
    if it < cfg["warmup_iters"]:
        return cfg["learning_rate"] * (it + 1) / (cfg["warmup_iters"] + 1)
    if it >= cfg["lr_decay_iters"]:
        return cfg["min_lr"]
    progress = (it - cfg["warmup_iters"]) / max(1, cfg["lr_decay_iters"] - cfg["warmup_iters"])
    return cfg["min_lr"] + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg["learning_rate"] - cfg["min_lr"])


def check_finite(losses, iter_num, ckpt_path):
    """Stop a diverged run before it can save: the checkpoint on disk stays the last finite model."""
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        raise UserError(f"training diverged: {', '.join(f'{k} loss {v}' for k, v in bad.items())} at iteration "
                        f"{iter_num}; {ckpt_path} was not overwritten. Try a lower --learning_rate, "
                        "--grad_clip=1.0, or --dtype=bfloat16 instead of float16")


def check_settings(cfg, world_size, dtype):
    """What configurator.check can't see: the settings that depend on each other or on this machine."""
    if not cfg["out_dir"]:
        raise UserError("out_dir is empty: name the folder for checkpoints, e.g. --out_dir=out")
    if not all(isinstance(i, int) and i > 0 for i in cfg["save_iters"]):
        raise UserError(f"save_iters={cfg['save_iters']} must be a list of positive steps, like [1000,5000]")
    if cfg["hellaswag_interval"] % cfg["eval_interval"]:
        raise UserError(f"hellaswag_interval={cfg['hellaswag_interval']} must be a multiple of "
                        f"eval_interval={cfg['eval_interval']} (HellaSwag runs at evaluations), or 0 for never")
    if cfg["fsdp"] and cfg["optimizer"] == "muon":  # Newton-Schulz needs whole matrices, FSDP holds shards
        raise UserError("fsdp=True does not support optimizer=muon; use DDP (--fsdp=False) or --optimizer=adamw")
    if cfg["wandb_log"]:
        try:
            import wandb  # noqa: F401  (imported here, before any work, only to say if it is missing)
        except ImportError:
            raise UserError("wandb_log=True needs the wandb package: pip install wandb "
                            "(or pass --wandb_log=False)") from None
    # Each optimizer step sums gradient_accumulation_steps micro-batches, split among the processes.
    if cfg["gradient_accumulation_steps"] < 1 or cfg["gradient_accumulation_steps"] % world_size:
        raise UserError(f"gradient_accumulation_steps={cfg['gradient_accumulation_steps']} must be a positive "
                        f"multiple of the number of processes ({world_size})")
    if cfg["fsdp"] and dtype == "float16":
        raise UserError("fsdp=True does not support dtype float16 (its gradient scaler); use --dtype=bfloat16")


def init_model(cfg, given, vocab, log):
    """(model, checkpoint or None, the model's vocabulary) for cfg['init_from'], its shape adopted into cfg."""
    if cfg["init_from"] == "scratch":
        vocab_size = vocab["vocab_size"] if vocab and "itos" in vocab else 50304
        log(f"initializing a new model from scratch (vocab_size {vocab_size})")
        args = {k: cfg[k] for k in MODEL_ARGS if k != "vocab_size"}
        return GPT(GPTConfig(vocab_size=vocab_size, **args)), None, vocab
    model, ckpt = load_model(cfg["init_from"], cfg["out_dir"], log, training=True, dropout=cfg["dropout"])
    if ckpt is None and cfg["block_size"] < model.config.block_size:
        model.crop_block_size(cfg["block_size"])
    adopt_model_shape(cfg, given, model.config, ckpt["path"] if ckpt else cfg["init_from"])
    return model, ckpt, ckpt.get("vocab") if ckpt else {"tokenizer": "gpt2"}


def main(argv):
    given = set()
    cfg = load_config(DEFAULTS, argv, given=given)
    check(cfg)  # before the process group: every process refuses alike
    rank, local_rank, world_size, device = setup_distributed(cfg["backend"], resolve_device(cfg["device"]))
    master = rank == 0
    log = print if master else (lambda *a, **k: None)
    stop = StopSignals(announce=master)  # Ctrl-C, SIGTERM, SIGUSR1: save at the end of the step, then exit
    dtype = resolve_dtype(cfg["dtype"], device)
    check_settings(cfg, world_size, dtype)
    accum, fsdp = cfg["gradient_accumulation_steps"] // world_size, cfg["fsdp"] and world_size > 1
    tokens_per_iter = cfg["gradient_accumulation_steps"] * cfg["batch_size"] * cfg["block_size"]
    log(f"world size {world_size}, device {device}, dtype {dtype}; tokens per iteration {tokens_per_iter:,}")
    torch.manual_seed(cfg["seed"])  # the same initial weights on every process
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_flush_denormal(True)  # CPU: values under ~1e-38 become 0; left in, they slowed Muon's steps 2x over a run
    ctx = autocast(device, dtype)

    data_folder = os.path.join(cfg["data_dir"], cfg["dataset"])
    if master:
        prepare_if_local(data_folder, log)
    if world_size > 1:
        dist.barrier()
    split_files(data_folder, cfg["dataset"])  # a missing dataset is reported before anything else happens
    vocab = load_vocab(data_folder)

    # One run per out_dir (a second job there refuses to start), and a new run never replaces an old one's
    # files. If this run ends before writing anything, out_dir is left as it found it.
    lock = RunLock(cfg["out_dir"]) if master and not cfg["eval_only"] else None
    problem = agree(lock.acquire() if lock else None, world_size)
    if problem:
        raise UserError(problem)
    existing = checkpoint_files(cfg["out_dir"])
    if cfg["init_from"] != "resume" and not cfg["eval_only"] and existing:
        raise UserError(f"{existing[0]} already exists and a new run would overwrite it: continue it with "
                        "--init_from=resume, or choose another --out_dir (or move the file away)")
    model, ckpt, model_vocab = init_model(cfg, given, vocab, log)
    check_vocab(model_vocab, vocab, model.config.vocab_size, cfg["dataset"])
    model_vocab = model_vocab or (vocab if vocab and "itos" in vocab else {"tokenizer": "gpt2"})
    if cfg["block_size"] > model.config.block_size:
        raise UserError(f"block_size={cfg['block_size']} is larger than the model's {model.config.block_size}")

    # Data. Micro-batch m of step s on this process holds training windows numbered from
    # ((s * world_size + rank) * accum + m) * batch_size: a step sees the same data however its
    # micro-batches are spread over processes, and a resumed run continues the same sequence.
    splits = open_splits(data_folder, cfg["dataset"], cfg["batch_size"], cfg["block_size"], device)
    order = EpochOrder(splits["train"].n_tokens, cfg["block_size"], cfg["seed"])
    for batches in splits.values():  # ids past the embedding table are caught on the host, with the file named
        batches.vocab_size = model.config.vocab_size

    def train_batch(step, m):
        first = ((step * world_size + rank) * accum + m) * cfg["batch_size"]
        return splits["train"].get(order.starts(first, cfg["batch_size"]))

    model, raw_model = place_model(model, cfg, device, dtype, world_size, log)
    torch.manual_seed(cfg["seed"] + rank)  # dropout differs between processes
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=dtype == "float16")
    optimizer = build_optimizer(raw_model, cfg, torch.device(device).type)
    run = Checkpoints(cfg, raw_model, optimizer, scaler, model_vocab, ckpt, rank, world_size, log)  # restores them
    memory = estimate_memory(raw_model, cfg["batch_size"], cfg["block_size"], dtype)
    log("memory estimate per process: " + ", ".join(f"{k} {v / 2**20:,.1f} MiB" for k, v in memory.items())
        + f" (activations of one {cfg['batch_size']}x{cfg['block_size']} micro-batch)")
    hellaswag = None
    if cfg["hellaswag_interval"]:
        check_gpt2_vocab(raw_model)
        hellaswag = load_hellaswag(cfg["hellaswag_path"], cfg["data_dir"], cfg["hellaswag_limit"], rank)
    metrics = Metrics(cfg, raw_model, device, tokens_per_iter, device_peak_flops(device), master,
                      run.start_iter if ckpt else None)
    del ckpt  # free the loaded tensors

    def stop_signal():
        """The signal that asked this run to stop, agreed by every process (0: none)."""
        return stop.signum or 0 if world_size == 1 else agree(stop.signum, world_size, device, any_rank=True)

    if run.start_iter > cfg["max_iters"]:
        log(f"note: the checkpoint is at iteration {run.start_iter}, past max_iters={cfg['max_iters']}: nothing to do")
    x, y = train_batch(run.start_iter, 0)
    t_log, iters_since_log = time.time(), 0
    for iter_num in range(run.start_iter, cfg["max_iters"] + 1):
        last_step = iter_num == cfg["max_iters"]
        lr = get_lr(iter_num, cfg)
        set_lr(optimizer, lr)
        t_pause = time.time()  # evaluations and saves stay out of the step times logged

        # stop, when asked to, after a whole step: save where the run stands
        signum = stop_signal() if iter_num > run.start_iter and not last_step else 0
        if signum:
            return run.stop(iter_num, signum)

        # evaluate every eval_interval steps and at the last (a resumed run has just evaluated, unless a stop saved it)
        losses = None
        just_resumed = iter_num == run.start_iter and run.resumed and run.evaluated and not cfg["eval_only"]
        if (iter_num % cfg["eval_interval"] == 0 and not just_resumed) or last_step:
            if iter_num == run.start_iter and cfg["eval_iters"] * cfg["batch_size"] * cfg["block_size"] > 1e6:
                log(f"evaluating the loss on {cfg['eval_iters']} batches per split (a while on a CPU)")
            losses = estimate_loss(raw_model, splits, cfg["eval_iters"], cfg["seed"], ctx, rank, world_size,
                                   stop_signal)
            if losses is None:  # a signal came during the evaluation
                return run.stop(iter_num, stop_signal())
            check_finite(losses, iter_num, run.path)
            hs = None
            if hellaswag and (iter_num % cfg["hellaswag_interval"] == 0 or last_step):
                hs = evaluate_hellaswag(raw_model, hellaswag, device, cfg["batch_size"], ctx, rank, world_size)
            metrics.evaluation(iter_num, losses, lr, hs)

        # save: ckpt.pt after an evaluation, snapshots when due
        paths = run.due(iter_num, last_step, losses and losses["val"])
        if paths:
            run.save(paths, iter_num)
        t_log += time.time() - t_pause
        if cfg["eval_only"] or last_step:
            if last_step and not cfg["eval_only"]:
                log(f"done. Sample from it: python sample.py --out_dir={cfg['out_dir']}\n"
                    f"      plot its losses: python plot.py --out_dir={cfg['out_dir']}")
            break

        # step: one optimizer step over `accum` micro-batches; gradients are all-reduced only on the last
        loss_sum = torch.zeros((), device=device)
        for m in range(accum):
            sync = m == accum - 1
            if fsdp:
                model.set_requires_gradient_sync(sync)
            with model.no_sync() if world_size > 1 and not fsdp and not sync else nullcontext():
                with ctx:
                    loss = model(x, y)[1] / accum  # the logits are freed now, not after the optimizer step
                x, y = train_batch(iter_num + (m + 1) // accum, (m + 1) % accum)  # fetch ahead while the GPU works
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
        scaler.unscale_(optimizer)  # the true gradients, for the norm (a no-op without fp16's scaler)
        # the norm is logged; with grad_clip 0, "clipping" to inf only measures it
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg["grad_clip"] or math.inf)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        iters_since_log += 1

        # log every log_interval steps: the one host sync a line costs
        if iter_num % cfg["log_interval"] == 0:
            if world_size > 1:
                dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
            lossf = loss_sum.item()
            check_finite({"train": lossf}, iter_num, run.path)
            now = time.time()
            dt, t_log, iters_since_log = (now - t_log) / iters_since_log, now, 0
            metrics.step(iter_num, lossf, lr, dt, grad_norm.item(), cfg["batch_size"] * accum)


if __name__ == "__main__":
    status = run_main(lambda: main(sys.argv[1:]))
    teardown_distributed()  # after main's models are gone (runtime.py)
    sys.exit(status)  # 128 + the signal's number when a signal stopped the run after saving
