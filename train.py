"""Train a GPT, from scratch or from a checkpoint, on one device or many.

    python train.py config/train_shakespeare_char.py --device=cpu --max_iters=2000
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

Config files and --key=value overrides set the values in DEFAULTS below (see configurator.py).
The story, top to bottom: settings, devices, data, model, optimizer, then the loop, which
evaluates every eval_interval steps and always at the last one, saving ckpt.pt in out_dir.
"""
import atexit
import math
import os
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoint import (MODEL_ARGS, adopt_model_shape, append_jsonl, check_vocab, checkpoint_files, init_model,
                        load_vocab, prune_snapshots, restore_optimizer, rng_state, save_checkpoint, set_rng_state,
                        snapshot_path, start_metrics_log)
from configurator import UserError, load_config, run_main
from dataloader import EpochOrder, open_splits, prepare_if_local, split_files
from eval import check_gpt2_vocab, estimate_loss, evaluate_hellaswag, load_hellaswag
from lifetime import RunLock, StopSignals
from model import device_peak_flops
from optim import build_optimizer, check_optimizer_settings, set_lr
from runtime import (agree, autocast, gather_full, maybe_compile, resolve_device, resolve_dtype, setup_distributed,
                     shard_model, shard_optimizer_state, teardown_distributed)

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


def check_settings(cfg):
    """Catch impossible values before anything runs, naming the key."""
    for key in ("batch_size", "block_size", "n_layer", "n_head", "n_embd", "eval_interval", "log_interval",
                "eval_iters"):
        if cfg[key] < 1:
            raise UserError(f"{key}={cfg[key]} must be at least 1")
    for key in ("max_iters", "save_interval", "keep_last", "warmup_iters", "lr_decay_iters", "hellaswag_limit"):
        if cfg[key] < 0:
            raise UserError(f"{key}={cfg[key]} must not be negative")
    for key in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
        if not 0 <= cfg[key] < math.inf:  # a negative grad_clip would silently climb the loss
            raise UserError(f"{key}={cfg[key]} must be a finite number >= 0")
    check_optimizer_settings(cfg)
    for key in ("beta1", "beta2"):
        if not 0 <= cfg[key] < 1:
            raise UserError(f"{key}={cfg[key]} must be in [0, 1)")
    if not 0 <= cfg["seed"] < 2 ** 62:
        raise UserError(f"seed={cfg['seed']} must be in [0, 2**62)")
    if not cfg["out_dir"]:
        raise UserError("out_dir is empty: name the folder for checkpoints, e.g. --out_dir=out")
    if cfg["wandb_log"]:
        try:
            import wandb  # noqa: F401  (imported here, before any work, only to say if it is missing)
        except ImportError:
            raise UserError("wandb_log=True needs the wandb package: pip install wandb (or pass --wandb_log=False)") from None
    if cfg["n_embd"] % cfg["n_head"]:
        raise UserError(f"n_embd={cfg['n_embd']} must be divisible by n_head={cfg['n_head']}")
    if not 0 <= cfg["dropout"] < 1:
        raise UserError(f"dropout={cfg['dropout']} must be in [0, 1)")
    if not all(isinstance(i, int) and i > 0 for i in cfg["save_iters"]):
        raise UserError(f"save_iters={cfg['save_iters']} must be a list of positive steps, like [1000,5000]")


def duration(seconds):
    """'1h02m', '3m12s' or '45s'."""
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def peak_memory(device):
    """Bytes of the largest CUDA allocation total since the last reset; None on other devices."""
    return torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else None


def main(argv):
    given = set()
    cfg = load_config(DEFAULTS, argv, given=given)
    check_settings(cfg)
    device = resolve_device(cfg["device"])
    rank, local_rank, world_size, device = setup_distributed(cfg["backend"], device)
    master = rank == 0
    log = print if master else (lambda *a, **k: None)
    stop = StopSignals(announce=master)  # Ctrl-C, SIGTERM, SIGUSR1: save at the end of the step, then exit
    dtype = resolve_dtype(cfg["dtype"], device)
    device_type = device.split(":")[0]

    # Each optimizer step sums gradient_accumulation_steps micro-batches, split among the processes.
    if cfg["gradient_accumulation_steps"] < 1 or cfg["gradient_accumulation_steps"] % world_size:
        raise UserError(f"gradient_accumulation_steps={cfg['gradient_accumulation_steps']} must be a positive "
                        f"multiple of the number of processes ({world_size})")
    accum = cfg["gradient_accumulation_steps"] // world_size
    if cfg["fsdp"] and dtype == "float16":
        raise UserError("fsdp=True does not support dtype float16 (its gradient scaler); use --dtype=bfloat16")
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
    if lock:
        atexit.register(lock.release)
    if problem:
        raise UserError(problem)
    ckpt_path = os.path.join(cfg["out_dir"], "ckpt.pt")
    existing = checkpoint_files(cfg["out_dir"])
    if cfg["init_from"] != "resume" and not cfg["eval_only"] and existing:
        raise UserError(f"{existing[0]} already exists and a new run would overwrite it: continue it with "
                        "--init_from=resume, or choose another --out_dir (or move the file away)")
    model, ckpt = init_model(cfg, vocab, log)
    resumed = ckpt is not None
    if cfg["init_from"] != "scratch":
        adopt_model_shape(cfg, given, model.config, ckpt_path if resumed else cfg["init_from"])

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
    model_vocab = ckpt.get("vocab") if resumed else (vocab if cfg["init_from"] == "scratch" else {"tokenizer": "gpt2"})
    check_vocab(model_vocab, vocab, model.config.vocab_size, cfg["dataset"])
    if cfg["block_size"] > model.config.block_size:
        raise UserError(f"block_size={cfg['block_size']} is larger than the model's {model.config.block_size}")
    model.to(device)
    fsdp = cfg["fsdp"] and world_size > 1
    if fsdp:  # blocks compile before sharding (runtime.maybe_compile)
        maybe_compile(model, cfg["compile"], device, log, blocks=True)
        shard_model(model, dtype)
    torch.manual_seed(cfg["seed"] + rank)  # dropout differs between processes
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16")
    optimizer = build_optimizer(model, cfg, device_type)
    iter_num, best_val_loss, evaluated = 0, float("inf"), True
    if resumed:
        restore_optimizer(optimizer, ckpt, ckpt_path, log, shard_optimizer_state if fsdp else None)
        if ckpt.get("scaler"):  # a disabled scaler (not float16) saved {}
            scaler.load_state_dict(ckpt["scaler"])
        iter_num, best_val_loss = ckpt.get("iter_num", 0), ckpt.get("best_val_loss", float("inf"))
        evaluated = ckpt.get("evaluated", True)  # False when a signal stopped the run between evaluations
        if len(ckpt.get("rng", [])) == world_size:  # dropout continues exactly where it stopped
            set_rng_state(ckpt["rng"][rank])
        elif "rng" in ckpt:
            log(f"note: the checkpoint's random states are for {len(ckpt['rng'])} processes, not {world_size}; "
                "dropout noise restarts from the seed")
        del ckpt  # free the loaded tensors
    if not model_vocab:
        model_vocab = vocab if vocab and "itos" in vocab else {"tokenizer": "gpt2"}
    model_args = {k: getattr(model.config, k) for k in MODEL_ARGS}
    if not fsdp:
        maybe_compile(model, cfg["compile"], device, log)
    raw_model = model
    if world_size > 1 and not fsdp:
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
    peak_flops = device_peak_flops(device)
    memory = raw_model.estimate_memory(cfg["batch_size"], cfg["block_size"], dtype)
    log("memory estimate per process: " + ", ".join(f"{k} {v / 2**20:,.1f} MiB" for k, v in memory.items())
        + f" (activations of one {cfg['batch_size']}x{cfg['block_size']} micro-batch)")
    hellaswag = None
    if cfg["hellaswag_interval"]:
        if cfg["hellaswag_interval"] < 0 or cfg["hellaswag_interval"] % cfg["eval_interval"]:
            raise UserError(f"hellaswag_interval={cfg['hellaswag_interval']} must be a multiple of "
                            f"eval_interval={cfg['eval_interval']} (HellaSwag runs at evaluations), or 0 for never")
        check_gpt2_vocab(raw_model)
        hellaswag = load_hellaswag(cfg["hellaswag_path"], cfg["data_dir"], cfg["hellaswag_limit"], rank)
    metrics_path = os.path.join(cfg["out_dir"], "log.jsonl") if master and not cfg["eval_only"] else None
    if metrics_path:  # one JSON object per log line and per evaluation, for plot.py
        start_metrics_log(metrics_path, iter_num if resumed else None)

    if cfg["wandb_log"] and master:
        import wandb
        wandb.init(project=cfg["wandb_project"], name=cfg["wandb_run_name"], config=cfg)

    def save(paths, evaluated=True):
        """Write the run's whole state to each path. Every process takes part: rank 0 gathers their
        random states, so a resumed run redraws exactly the dropout noise it would have drawn."""
        states = [rng_state() for _ in range(world_size)]
        if world_size > 1:
            dist.all_gather_object(states, rng_state())
        model_state, optim_state = raw_model.state_dict(), optimizer.state_dict()
        if fsdp:  # gather the shards: the checkpoint loads anywhere, sharded or not
            model_state, optim_state = gather_full(model_state, master), gather_full(optim_state, master)
        if not master:
            return
        os.makedirs(cfg["out_dir"], exist_ok=True)
        for path in paths:
            log(f"saving checkpoint to {path}")
            save_checkpoint({"model": model_state, "optimizer": optim_state,
                             "scaler": scaler.state_dict(), "model_args": model_args, "iter_num": iter_num,
                             "best_val_loss": best_val_loss, "config": cfg, "vocab": model_vocab,
                             "rng": states, "evaluated": evaluated}, path)
        if cfg["keep_last"] and any(os.path.basename(p).startswith("ckpt_") for p in paths):
            prune_snapshots(cfg["out_dir"], cfg["keep_last"], set(cfg["save_iters"]), log)

    def stop_signal():
        """The signal that asked this run to stop, agreed by every process (0: none)."""
        return stop.signum or 0 if world_size == 1 else agree(stop.signum, world_size, device, any_rank=True)

    def stopped():
        """Save where the loop stands (every process takes part, as in any save); 128 + the signal."""
        signum = stop_signal()
        path = ckpt_path if cfg["always_save_checkpoint"] else snapshot_path(cfg["out_dir"], iter_num)
        if iter_num == start_iter:
            log(f"stopped by {stop.name(signum)} before the first step: there is nothing new to save")
        else:
            save([path], evaluated=False)
            log(f"stopped by {stop.name(signum)}: saved {path} at iteration {iter_num}; to continue, run the "
                "same command with --init_from=resume")
        return 128 + signum

    start_iter = iter_num
    have_ckpt = agree(os.path.exists(ckpt_path), world_size)  # the same save decisions everywhere: rank 0's disk
    if start_iter > cfg["max_iters"]:
        log(f"note: the checkpoint is at iteration {start_iter}, past max_iters={cfg['max_iters']}: nothing to do")
    x, y = train_batch(start_iter, 0)
    t_log, iters_since_log, logs_done = time.time(), 0, 0
    for iter_num in range(start_iter, cfg["max_iters"] + 1):
        last_step = iter_num == cfg["max_iters"]
        lr = get_lr(iter_num, cfg)
        set_lr(optimizer, lr)
        if stop_signal() and iter_num > start_iter and not last_step:
            return stopped()

        # A resumed run skips the evaluation its checkpoint was saved right after.
        paths, t_pause = [], time.time()  # evaluations and saves stay out of the step times logged
        if (iter_num % cfg["eval_interval"] == 0 or last_step) and (iter_num > start_iter or not resumed
                                                                   or last_step or cfg["eval_only"] or not evaluated):
            if iter_num == start_iter and cfg["eval_iters"] * cfg["batch_size"] * cfg["block_size"] > 1e6:
                log(f"evaluating the loss on {cfg['eval_iters']} batches per split (a while on a CPU)")
            losses = estimate_loss(raw_model, splits, cfg["eval_iters"], cfg["seed"], ctx, rank, world_size, stop_signal)
            if losses is None:
                return stopped()
            log(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            check_finite(losses, iter_num, ckpt_path)
            record = {"kind": "eval", "iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"],
                      "lr": lr, "tokens": iter_num * tokens_per_iter, "peak_mem": peak_memory(device)}
            if hellaswag and (iter_num % cfg["hellaswag_interval"] == 0 or last_step):
                hs = evaluate_hellaswag(raw_model, hellaswag, device, cfg["batch_size"], ctx, rank, world_size)
                record.update(hellaswag_acc=hs["acc"], hellaswag_acc_norm=hs["acc_norm"])
                log(f"step {iter_num}: hellaswag acc {hs['acc']:.4f}, acc_norm {hs['acc_norm']:.4f} ({hs['n']} items)")
            if record["peak_mem"] is not None:  # CUDA: the peak of this evaluation interval
                log(f"step {iter_num}: peak memory {record['peak_mem'] / 2**20:,.0f} MiB")
                torch.cuda.reset_peak_memory_stats(device)
            if metrics_path:
                append_jsonl(metrics_path, record)
            if cfg["wandb_log"] and master:
                wandb.log({"iter": iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr,
                           **{k: v for k, v in record.items() if k.startswith(("hellaswag", "peak")) and v is not None}})
            improved = losses["val"] < best_val_loss
            best_val_loss = min(best_val_loss, losses["val"])
            if improved or cfg["always_save_checkpoint"] or (last_step and not have_ckpt):
                paths.append(ckpt_path)
            if improved and cfg["keep_best"]:
                paths.append(os.path.join(cfg["out_dir"], "best.pt"))
        if ((cfg["save_interval"] and iter_num % cfg["save_interval"] == 0) or iter_num in cfg["save_iters"]) \
                and (iter_num > start_iter or not resumed):
            paths.append(snapshot_path(cfg["out_dir"], iter_num))
        if paths and (iter_num > 0 or last_step) and not cfg["eval_only"]:
            save(paths)
            have_ckpt = have_ckpt or ckpt_path in paths
        t_log += time.time() - t_pause
        if cfg["eval_only"] or last_step:
            if last_step and not cfg["eval_only"]:
                log(f"done. Sample from it: python sample.py --out_dir={cfg['out_dir']}\n"
                    f"      plot its losses: python plot.py --out_dir={cfg['out_dir']}")
            break

        # One optimizer step over `accum` micro-batches; gradients are all-reduced only on the last.
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

        if iter_num % cfg["log_interval"] == 0:
            if world_size > 1:
                dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
            lossf = loss_sum.item()  # the one host sync per log line
            check_finite({"train": lossf}, iter_num, ckpt_path)
            now = time.time()
            dt = (now - t_log) / iters_since_log
            t_log, iters_since_log = now, 0
            logs_done += 1
            # the first line's time includes compiling (and warm-up): no utilisation figure for it
            mfu = raw_model.estimate_mfu(cfg["batch_size"] * accum, dt, peak_flops, cfg["block_size"]) \
                if logs_done > 1 else None
            mfu_text = "n/a" if mfu is None else f"{mfu * 100:.2f}%"
            tok_s, eta = tokens_per_iter / dt, (cfg["max_iters"] - iter_num - 1) * dt
            log(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, mfu {mfu_text}, tok/s {tok_s:,.0f}, "
                f"eta {duration(eta)}")
            if logs_done == 3 and device_type == "cpu" and eta > 3600:  # e.g. a GPU config run on a laptop
                log(f"note: at {dt:.2f} s a step, this run needs about {duration(eta)} more on this CPU; "
                    "config/train_shakespeare_char_cpu.py is sized for a CPU (a few minutes)")
            if metrics_path:
                append_jsonl(metrics_path, {"kind": "train", "iter": iter_num, "loss": lossf, "lr": lr,
                                            "tokens": (iter_num + 1) * tokens_per_iter, "time_ms": dt * 1000,
                                            "tok_per_s": tok_s, "mfu": mfu, "grad_norm": grad_norm.item(),
                                            "peak_mem": peak_memory(device)})
            if cfg["wandb_log"] and master and logs_done > 1:
                wandb.log({"iter": iter_num, "train/loss_step": lossf, "lr": lr, "tok_per_s": tok_s,
                           "grad_norm": grad_norm.item()})


if __name__ == "__main__":
    status = run_main(lambda: main(sys.argv[1:]))
    teardown_distributed()  # after main's models are gone (runtime.py)
    sys.exit(status)  # 128 + the signal's number when a signal stopped the run after saving
