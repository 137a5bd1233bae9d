"""What a training run reports: its log lines, out_dir/log.jsonl (which plot.py reads), and wandb.
log.jsonl has one object per line: {"kind": "train", "iter", "loss", "lr", "tokens", "time_ms", "tok_per_s", "mfu",
"grad_norm", "peak_mem"} per log line, {"kind": "eval", "iter", "train_loss", "val_loss", "lr", "tokens",
"peak_mem", hellaswag_*} per evaluation."""
import json
import math
import os

import torch

from errors import UserError
from safety import atomic_write


def duration(seconds):
    """'1h02m', '3m12s' or '45s'."""
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def append_jsonl(path, record):
    """Add one JSON object as a line of path; inf/NaN become null so every line stays valid JSON."""
    record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path):
    """The JSON records of a log file, in order, skipping a last line cut short by a crash."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("iter"), int):
                records.append(record)
    return records


def start_jsonl(path, resume_iter=None):
    """Before a run appends to log.jsonl: a new run never takes over another's log; a resumed one keeps only what
    its checkpoint had seen (evals up to resume_iter, steps before it), rewritten whole."""
    if not os.path.exists(path):
        return
    if resume_iter is None:
        raise UserError(f"{path} holds another run's log (a run that stopped before its first checkpoint?); "
                        "move it away or choose another --out_dir")
    records = read_jsonl(path)
    keep = [r for r in records if r["iter"] < resume_iter or (r["iter"] == resume_iter and r.get("kind") == "eval")]
    if keep != records or os.path.getsize(path) != sum(len(json.dumps(r)) + 1 for r in records):
        atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in keep).encode()))


WANDB_NAMES = {"train_loss": "train/loss", "val_loss": "val/loss", "loss": "train/loss_step"}  # nanoGPT's names


class Metrics:
    """Rank 0 prints the lines, appends log.jsonl (not for eval_only) and logs to wandb; other ranks do nothing."""

    def __init__(self, cfg, model, device, tokens_per_iter, peak_flops, master, resume_iter=None):
        self.cfg, self.model, self.device, self.peak_flops = cfg, model, device, peak_flops
        self.tokens_per_iter, self.logs_done, self.wandb = tokens_per_iter, 0, None
        self.log = print if master else (lambda *a, **k: None)
        self.path = os.path.join(cfg["out_dir"], "log.jsonl") if master and not cfg["eval_only"] else None
        if self.path:
            start_jsonl(self.path, resume_iter)
        if cfg["wandb_log"] and master:
            import wandb
            self.wandb = wandb
            wandb.init(project=cfg["wandb_project"], name=cfg["wandb_run_name"], config=cfg)

    def record(self, kind, **record):
        """Append a record to log.jsonl and to wandb, with the peak CUDA memory since the last evaluation."""
        cuda = self.device.startswith("cuda")
        record = {"kind": kind, **record, "peak_mem": torch.cuda.max_memory_allocated(self.device) if cuda else None}
        if self.path:
            append_jsonl(self.path, record)
        if self.wandb:
            self.wandb.log({WANDB_NAMES.get(k, k): v for k, v in record.items() if k != "kind" and v is not None})
        return record["peak_mem"]

    def evaluation(self, iter_num, losses, lr, hellaswag=None):
        self.log(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        scores = {}
        if hellaswag:
            scores = dict(hellaswag_acc=hellaswag["acc"], hellaswag_acc_norm=hellaswag["acc_norm"])
            self.log(f"step {iter_num}: hellaswag acc {hellaswag['acc']:.4f}, acc_norm {hellaswag['acc_norm']:.4f} "
                     f"({hellaswag['n']} items)")
        peak = self.record("eval", iter=iter_num, train_loss=losses["train"], val_loss=losses["val"], lr=lr,
                           tokens=iter_num * self.tokens_per_iter, **scores)
        if peak is not None:  # CUDA: the peak of this evaluation interval
            self.log(f"step {iter_num}: peak memory {peak / 2**20:,.0f} MiB")
            torch.cuda.reset_peak_memory_stats(self.device)

    def step(self, iter_num, loss, lr, dt, grad_norm, micro_batches):
        """A step's line (the first one's dt includes compiling and warm-up: no MFU for it)."""
        self.logs_done += 1
        mfu = self.model.estimate_mfu(micro_batches, dt, self.peak_flops, self.cfg["block_size"]) \
            if self.logs_done > 1 else None
        mfu_text = "n/a" if mfu is None else f"{mfu * 100:.2f}%"
        tok_s, eta = self.tokens_per_iter / dt, (self.cfg["max_iters"] - iter_num - 1) * dt
        self.log(f"iter {iter_num}: loss {loss:.4f}, time {dt * 1000:.2f}ms, mfu {mfu_text}, tok/s {tok_s:,.0f}, "
                 f"eta {duration(eta)}")
        if self.logs_done == 3 and self.device == "cpu" and eta > 3600:  # e.g. a GPU config run on a laptop
            self.log(f"note: at {dt:.2f} s a step, this run needs about {duration(eta)} more on this CPU; "
                     "config/train_shakespeare_char_cpu.py is sized for a CPU (a few minutes)")
        self.record("train", iter=iter_num, loss=loss, lr=lr, tokens=(iter_num + 1) * self.tokens_per_iter,
                    time_ms=dt * 1000, tok_per_s=tok_s, mfu=mfu, grad_norm=grad_norm)
