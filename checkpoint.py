"""Checkpoint and vocabulary I/O: writing ckpt.pt safely, reading ours and nanoGPT's; the run's log.jsonl;
and the model train.py starts from (new, resumed, or GPT-2's), checked against the settings.

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
from lifetime import atomic_write
from model import GPT, GPTConfig, HF_NAMES

MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


def save_checkpoint(ckpt, path):
    """Write ckpt whole or not at all (lifetime.atomic_write): a crash or a full disk mid-write leaves the
    previous checkpoint as it was."""
    size = sum(t.nbytes for t in _tensors(ckpt))
    atomic_write(path, lambda f: torch.save(ckpt, f), size_hint=size)


def _tensors(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


SNAPSHOT = re.compile(r"ckpt_(\d{7,})\.pt")  # exactly the names snapshot_path writes


def snapshot_path(out_dir, iter_num):
    return os.path.join(out_dir, f"ckpt_{iter_num:07d}.pt")


def snapshots(out_dir):
    """{iteration: path} of the ckpt_NNNNNNN.pt snapshots in out_dir (a user's ckpt_1.pt is not one)."""
    found = {}
    for path in glob.glob(os.path.join(glob.escape(out_dir), "ckpt_*.pt")):
        match = SNAPSHOT.fullmatch(os.path.basename(path))
        if match and os.path.isfile(path):
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def checkpoint_files(out_dir):
    """The checkpoints in out_dir: ckpt.pt, best.pt and the snapshots, oldest snapshot first."""
    names = [os.path.join(out_dir, n) for n in ("ckpt.pt", "best.pt")]
    return [p for p in names if os.path.isfile(p)] + list(snapshots(out_dir).values())


def prune_snapshots(out_dir, keep, protected, log):
    """Delete all but the `keep` snapshots of the highest iterations, sparing the iterations in `protected`."""
    periodic = [path for it, path in snapshots(out_dir).items() if it not in protected]
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
            iter_num = None
        if type(iter_num) is not int:  # unreadable, or not a checkpoint of ours
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
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:  # a pickled object that would run code on load: torch.load(weights_only=True) refused it
            raise UserError(f"checkpoint {path} holds a Python object ({found.group(1)}), not only tensors and "
                            "plain values; loading it could run code, so it was refused. The file was left "
                            "as it is.") from None
        raise UserError(f"checkpoint {path} could not be read ({type(e).__name__}); "
                        "it may be truncated or corrupted. The file was left as it is.") from None
    if not isinstance(ckpt, dict):
        raise UserError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a GPT checkpoint")
    if missing:
        raise UserError(f"checkpoint {path} lacks {', '.join(missing)}: not a GPT checkpoint")
    best, it = ckpt.get("best_val_loss", 0.0), ckpt.get("iter_num", 0)
    malformed = [k for k, ok in (("model", isinstance(ckpt["model"], dict)),
                                 ("model_args", isinstance(ckpt["model_args"], dict)),
                                 ("iter_num", type(it) is int and it >= 0),
                                 ("best_val_loss", isinstance(best, (int, float)) or torch.is_tensor(best))) if not ok]
    if malformed:
        raise UserError(f"checkpoint {path} has a malformed {', '.join(malformed)}; the file was left as it is")
    ckpt["model"] = strip_wrapper_prefixes(ckpt["model"])
    if torch.is_tensor(ckpt.get("best_val_loss")):
        ckpt["best_val_loss"] = ckpt["best_val_loss"].item()  # nanoGPT stored a tensor
    return ckpt


def model_from_checkpoint(ckpt, dropout=None, path="the checkpoint"):
    """Rebuild the GPT a checkpoint describes and load its weights."""
    try:
        args = {k: ckpt["model_args"][k] for k in MODEL_ARGS if k in ckpt["model_args"]}
        if dropout is not None:
            args["dropout"] = dropout
        model = GPT(GPTConfig(**args))
        model.load_state_dict(ckpt["model"])
    except Exception as e:  # missing or misshapen weights, model_args of the wrong types
        reason = (str(e).strip().splitlines() or [""])[-1].strip()[:160]
        raise UserError(f"{path} does not hold the GPT its model_args describe ({type(e).__name__}: {reason}); "
                        "the file was left as it is") from None
    return model


def restore_optimizer(optimizer, ckpt, path, log, shard=None):
    """Load the optimizer state a checkpoint holds (cut to this process's shards by shard(state, optimizer)
    under FSDP). One without any (weights shared alone) starts the moments afresh, with a note."""
    if not ckpt.get("optimizer"):
        log(f"note: {path} holds no optimizer state; the optimizer's moments start afresh")
        return
    from optim import state_kind
    saved, wanted = state_kind(ckpt["optimizer"]), state_kind(optimizer.state_dict())
    if saved != wanted:  # e.g. a nanoGPT (AdamW) checkpoint continued with --optimizer=muon
        log(f"note: {path} holds {saved} state and this run uses {wanted}: the optimizer state starts afresh")
        return
    try:
        optimizer.load_state_dict(shard(ckpt["optimizer"], optimizer) if shard else ckpt["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"the optimizer state in {path} does not fit this model ({type(e).__name__}: "
                        f"{str(e)[:160]}); the file was left as it is") from None


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: meta.pkl may only hold plain data")


def load_vocab(folder):
    """The dataset's vocabulary as {'vocab_size', 'itos' (list of chars) or 'tokenizer'}, or None.
    Reads our meta.json, else nanoGPT's meta.pkl (plain dicts only: nothing in it is executed)."""
    json_path, pkl_path = os.path.join(folder, "meta.json"), os.path.join(folder, "meta.pkl")
    if os.path.isfile(json_path):
        return read_meta_json(json_path, folder)
    if os.path.isfile(pkl_path):
        try:
            with open(pkl_path, "rb") as f:
                meta = _PlainUnpickler(f).load()
            itos = meta["itos"]
            return {"vocab_size": meta["vocab_size"], "itos": [itos[i] for i in range(len(itos))]}
        except Exception as e:
            raise UserError(f"{pkl_path} is not a nanoGPT vocabulary file ({e})") from None
    return None


def read_meta_json(path, folder):
    """meta.json checked for what train.py and sample.py use; anything else is one line naming the fix."""
    script = os.path.join(folder, "prepare.py")
    fix = f"python {script}" if os.path.isfile(script) else "data/prepare_text.py (--force=True replaces it)"
    problem = None
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text ({e.reason} at byte {e.start})"
    except ValueError as e:
        problem = f"not valid JSON: {e}"
    if problem is None:
        fields = meta if isinstance(meta, dict) else {}
        size, itos = fields.get("vocab_size"), fields.get("itos")
        if type(size) is not int or not 0 < size <= 2 ** 16:
            problem = "it needs a 'vocab_size' between 1 and 65536"
        elif "itos" in meta and not (isinstance(itos, list) and len(itos) == size
                                     and all(isinstance(c, str) for c in itos)):
            problem = "its 'itos' must be a list of vocab_size strings"
        elif "itos" not in meta and meta.get("tokenizer") != "gpt2":
            problem = "it needs 'itos' (a character vocabulary) or \"tokenizer\": \"gpt2\""
    if problem:
        raise UserError(f"{path} is not a usable vocabulary file ({problem}); rewrite it with {fix}")
    return meta


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
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("iter"), int):
                records.append(record)
    return records


def start_metrics_log(path, resume_iter=None):
    """Check log.jsonl before a run appends to it. A new run never takes over another run's log. A resumed
    run keeps the records its checkpoint had seen, evals up to resume_iter and steps before it (a crashed
    run's later records would be repeated): the kept ones are written to a new file renamed over the old."""
    if not os.path.exists(path):
        return
    if resume_iter is None:
        raise UserError(f"{path} holds another run's log (a run that stopped before its first checkpoint?); "
                        "move it away or choose another --out_dir")
    records = read_jsonl(path)
    keep = [r for r in records if r["iter"] < resume_iter or (r["iter"] == resume_iter and r.get("kind") == "eval")]
    if keep != records or os.path.getsize(path) != sum(len(json.dumps(r)) + 1 for r in records):
        atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in keep).encode()))


def check_vocab(model_vocab, data_vocab, vocab_size, dataset):
    """A model can only go on training on data written with its own vocabulary."""
    if not data_vocab:
        return  # no meta.json/meta.pkl: nothing to compare
    describe = lambda v: f"a {len(v['itos'])}-character vocabulary" if v.get("itos") else "GPT-2's BPE"  # noqa: E731
    if data_vocab["vocab_size"] > vocab_size or (model_vocab and model_vocab.get("itos") != data_vocab.get("itos")):
        raise UserError(f"vocabulary mismatch: dataset '{dataset}' was prepared with {describe(data_vocab)}, "
                        f"the model uses {describe(model_vocab or {})} ({vocab_size} ids); prepare the data with "
                        "the model's tokenizer, or train a new model with --init_from=scratch")


# ----------------------------------------------------------------------------- train.py's model

def adopt_model_shape(cfg, given, config, source):
    """A loaded model (resumed, or GPT-2's) keeps its shape: a shape the user set that differs is an error;
    the keys the user left alone take the model's values, so the config saved with it tells the truth."""
    for key in ("n_layer", "n_head", "n_embd", "bias", "block_size"):
        ours = getattr(config, key)
        if key in given and cfg[key] != ours and not (key == "block_size" and cfg[key] < ours):
            raise UserError(f"--{key}={cfg[key]} conflicts with {source}, whose {key} is {ours}; "
                            f"drop the setting (or start a new run with --init_from=scratch)")
        if key not in given:
            cfg[key] = ours


def init_model(cfg, vocab, log):
    """(model, checkpoint or None) for cfg['init_from']."""
    init_from = cfg["init_from"]
    if init_from == "scratch":
        vocab_size = vocab["vocab_size"] if vocab and "itos" in vocab else 50304
        log(f"initializing a new model from scratch (vocab_size {vocab_size})")
        return GPT(GPTConfig(vocab_size=vocab_size, **{k: cfg[k] for k in MODEL_ARGS if k != "vocab_size"})), None
    if init_from == "resume":
        path = find_resume_checkpoint(cfg["out_dir"], log)
        ckpt = load_checkpoint(path)
        log(f"resuming from {path} at iteration {ckpt.get('iter_num', 0)}")
        return model_from_checkpoint(ckpt, dropout=cfg["dropout"], path=path), ckpt
    if init_from in HF_NAMES or os.path.isdir(init_from):
        log(f"initializing from GPT-2 weights: {init_from}")
        try:
            model = GPT.from_pretrained(init_from, dict(dropout=cfg["dropout"]))
        except ValueError as e:
            raise UserError(str(e)) from None
        if cfg["block_size"] < model.config.block_size:
            model.crop_block_size(cfg["block_size"])
        return model, None
    raise UserError(f"unknown init_from '{init_from}': use scratch, resume, "
                    f"{', '.join(HF_NAMES)}, or a directory holding a Hugging Face GPT-2 checkpoint")
