"""Checkpoint and vocabulary I/O: writing ckpt.pt safely, reading ours and nanoGPT's; the run's log.jsonl.

A checkpoint is a dict with nanoGPT's keys -- model, optimizer, model_args, iter_num,
best_val_loss, config -- plus our own (scaler, vocab). Everything is loaded with
torch.load(weights_only=True): a checkpoint can hold tensors and plain values, never code.
"""
import glob
import json
import math
import os
import pickle
import random
import re

import numpy as np
import torch

from configurator import UserError
from model import GPT, GPTConfig

MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


def save_checkpoint(ckpt, path):
    """Write to a temporary file beside path, flush it to disk, then rename it over path:
    a crash mid-write leaves the previous checkpoint whole (and only a stray .tmp file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself survive a power cut
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def snapshot_path(out_dir, iter_num):
    return os.path.join(out_dir, f"ckpt_{iter_num:07d}.pt")


def checkpoint_files(out_dir):
    """The checkpoints in out_dir: ckpt.pt, best.pt and the ckpt_NNNNNNN.pt snapshots."""
    names = [os.path.join(out_dir, n) for n in ("ckpt.pt", "best.pt")]
    snapshots = [p for p in glob.glob(os.path.join(out_dir, "ckpt_*.pt"))
                 if re.fullmatch(r"ckpt_\d+\.pt", os.path.basename(p))]
    return [p for p in names if os.path.isfile(p)] + sorted(snapshots)


def prune_snapshots(out_dir, keep, protected, log):
    """Delete all but the newest `keep` snapshots, sparing the iterations in `protected`."""
    snapshots = [p for p in checkpoint_files(out_dir) if os.path.basename(p).startswith("ckpt_")]
    periodic = [p for p in snapshots if int(os.path.basename(p)[5:-3]) not in protected]
    for path in periodic[:max(0, len(periodic) - keep)]:
        log(f"removing {path} (keep_last={keep})")
        os.remove(path)


def find_resume_checkpoint(out_dir, log):
    """The path of the checkpoint in out_dir with the highest iteration that reads back whole.
    Unreadable files are reported and skipped, never touched; if none is readable, that is an error."""
    paths = checkpoint_files(out_dir)
    if not paths:
        load_checkpoint(os.path.join(out_dir, "ckpt.pt"))  # raises the "no checkpoint" error
    best, best_iter, broken = None, -1, []
    for path in paths:
        try:  # mmap reads only the small values, not every tensor
            iter_num = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("iter_num", 0)
        except Exception:
            broken.append(path)
            continue
        if iter_num > best_iter:
            best, best_iter = path, iter_num
    if best is None:
        load_checkpoint(broken[0])  # raises the "truncated or corrupted" error for it
    for path in broken:
        log(f"note: skipping {path}: it could not be read (truncated or corrupted); it was left as it is")
    return best


def strip_wrapper_prefixes(state_dict):
    """Drop the '_orig_mod.' (torch.compile) and 'module.' (DDP) prefixes older checkpoints carry."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_checkpoint(path):
    """Load a checkpoint written by us or by nanoGPT, normalised to plain keys and float values."""
    if not os.path.isfile(path):
        raise UserError(f"no checkpoint at {path}: train one first, or set --out_dir to the folder holding ckpt.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        missing = [k for k in ("model", "model_args") if k not in ckpt]
    except Exception as e:
        raise UserError(f"checkpoint {path} could not be read ({type(e).__name__}); "
                        "it may be truncated or corrupted. The file was left as it is.") from None
    if missing:
        raise UserError(f"checkpoint {path} lacks {', '.join(missing)}: not a GPT checkpoint")
    ckpt["model"] = strip_wrapper_prefixes(ckpt["model"])
    if torch.is_tensor(ckpt.get("best_val_loss")):
        ckpt["best_val_loss"] = ckpt["best_val_loss"].item()  # nanoGPT stored a tensor
    return ckpt


def model_from_checkpoint(ckpt, dropout=None):
    """Rebuild the GPT a checkpoint describes and load its weights."""
    args = {k: ckpt["model_args"][k] for k in MODEL_ARGS if k in ckpt["model_args"]}
    if dropout is not None:
        args["dropout"] = dropout
    model = GPT(GPTConfig(**args))
    model.load_state_dict(ckpt["model"])
    return model


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: meta.pkl may only hold plain data")


def load_vocab(folder):
    """The dataset's vocabulary as {'vocab_size', 'itos' (list of chars) or 'tokenizer'}, or None.
    Reads our meta.json, else nanoGPT's meta.pkl (plain dicts only: nothing in it is executed)."""
    json_path, pkl_path = os.path.join(folder, "meta.json"), os.path.join(folder, "meta.pkl")
    if os.path.isfile(json_path):
        with open(json_path) as f:
            return json.load(f)
    if os.path.isfile(pkl_path):
        try:
            with open(pkl_path, "rb") as f:
                meta = _PlainUnpickler(f).load()
            itos = meta["itos"]
            return {"vocab_size": meta["vocab_size"], "itos": [itos[i] for i in range(len(itos))]}
        except Exception as e:
            raise UserError(f"{pkl_path} is not a nanoGPT vocabulary file ({e})") from None
    return None


def rng_state():
    """Every random number generator a training step can draw from, to resume bit for bit."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def append_jsonl(path, record):
    """Add one JSON object as a line of path; inf/NaN become null so every line stays valid JSON."""
    record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path):
    """The JSON records of a log file, in order, skipping a last line cut short by a crash."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def start_metrics_log(path, resume_iter=None):
    """Empty log.jsonl for a new run. A resumed run keeps the records its checkpoint had seen: evals up
    to resume_iter, steps before it (a crashed run's later records would be repeated)."""
    keep = []
    if resume_iter is not None and os.path.exists(path):
        keep = [r for r in read_jsonl(path)
                if r["iter"] < resume_iter or (r["iter"] == resume_iter and r["kind"] == "eval")]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in keep)


def check_vocab(model_vocab, data_vocab, vocab_size, dataset):
    """A model can only go on training on data written with its own vocabulary."""
    if not data_vocab:
        return  # no meta.json/meta.pkl: nothing to compare
    describe = lambda v: f"a {len(v['itos'])}-character vocabulary" if v.get("itos") else "GPT-2's BPE"  # noqa: E731
    if data_vocab["vocab_size"] > vocab_size or (model_vocab and model_vocab.get("itos") != data_vocab.get("itos")):
        raise UserError(f"vocabulary mismatch: dataset '{dataset}' was prepared with {describe(data_vocab)}, "
                        f"the model uses {describe(model_vocab or {})} ({vocab_size} ids); prepare the data with "
                        "the model's tokenizer, or train a new model with --init_from=scratch")
