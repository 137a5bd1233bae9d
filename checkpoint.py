"""Checkpoints: written whole, read (ours and nanoGPT's), the model a script starts from, and a training run's
saves. A checkpoint is a dict with nanoGPT's keys (model, optimizer, model_args, iter_num, best_val_loss, config)
and ours (scaler, vocab, rng, evaluated), loaded with weights_only=True: tensors and plain values, never code."""
import glob
import os
import random
import re
import signal

import numpy as np
import torch
import torch.distributed as dist

from errors import UserError, reason
from hf import GPT2_VOCAB, NAMES as GPT2_NAMES
from model import GPT, GPTConfig
from runtime import agree, gather_full, shard_optimizer_state
from safety import atomic_write
from tokenizer import Tokenizer, load_vocab

MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


def save_checkpoint(ckpt, path):
    """Write ckpt whole or not at all: a crash or a full disk mid-write leaves the previous file as it was."""
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


def prune_snapshots(out_dir, keep, protected, log, upto):
    """Delete all but the `keep` snapshots of the highest iterations up to `upto`, sparing those in `protected`
    (a file numbered past this run's iteration is not this run's to rank: it stays, and counts for nothing)."""
    periodic = [path for it, path in snapshots(out_dir).items() if it not in protected and it <= upto]
    for path in periodic[:max(0, len(periodic) - keep)]:
        log(f"removing {path} (keep_last={keep})")
        os.remove(path)


def find_resume_checkpoint(out_dir, log):
    """The checkpoint in out_dir of the highest iteration that reads back whole (the others are left alone)."""
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
    # nanoGPT's checkpoints may carry torch.compile's '_orig_mod.' and DDP's 'module.' in their keys
    ckpt["model"] = {re.sub(r"^(_orig_mod\.|module\.)+", "", k): v for k, v in ckpt["model"].items()}
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
        raise UserError(f"{path} does not hold the GPT its model_args describe ({reason(e, last=True)}); "
                        "the file was left as it is") from None
    return model


def restore_optimizer(optimizer, ckpt, path, log, shard=None):
    """Load a checkpoint's optimizer state (cut to this process's shards by shard() under FSDP), if it has one."""
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


# ----------------------------------------------------------------------------- train.py's model

def adopt_model_shape(cfg, given, config, source):
    """A loaded model keeps its shape: a different one the user set is an error, the rest is copied into cfg."""
    for key in ("n_layer", "n_head", "n_embd", "bias", "block_size"):
        ours = getattr(config, key)
        if key in given and cfg[key] != ours and not (key == "block_size" and cfg[key] < ours):
            raise UserError(f"--{key}={cfg[key]} conflicts with {source}, whose {key} is {ours}; "
                            f"drop the setting (or start a new run with --init_from=scratch)")
        if key not in given:
            cfg[key] = ours


def load_model(init_from, out_dir, log=print, training=False, dropout=None):
    """(model, checkpoint or None) for init_from: 'resume' (out_dir's ckpt.pt; when training, its newest whole
    checkpoint), 'gpt2'..'gpt2-xl', or a Hugging Face GPT-2 folder."""
    if init_from == "resume":
        path = find_resume_checkpoint(out_dir, log) if training else os.path.join(out_dir, "ckpt.pt")
        ckpt = load_checkpoint(path)
        if training:
            log(f"resuming from {path} at iteration {ckpt.get('iter_num', 0)}")
        ckpt["path"] = path
        return model_from_checkpoint(ckpt, dropout=dropout, path=path), ckpt
    if init_from in GPT2_NAMES or os.path.isdir(init_from):
        if training:
            log(f"initializing from GPT-2 weights: {init_from}")
        try:
            return GPT.from_pretrained(init_from, dict(dropout=dropout or 0.0)), None
        except ValueError as e:
            raise UserError(str(e)) from None
    raise UserError(f"unknown init_from '{init_from}': use {'scratch, ' if training else ''}resume, "
                    f"{', '.join(GPT2_NAMES)}, or a directory holding a Hugging Face GPT-2 checkpoint")


def load_model_and_tokenizer(cfg):
    """(model, Tokenizer): a checkpoint's own vocabulary (nanoGPT's: its dataset's meta.pkl), else GPT-2's BPE."""
    model, ckpt = load_model(cfg["init_from"], cfg["out_dir"])
    if ckpt is None and model.config.vocab_size < GPT2_VOCAB:  # e.g. eval.py's export of a character model
        raise UserError(f"{cfg['init_from']} has {model.config.vocab_size} token ids, too few for GPT-2's BPE, and "
                        "no vocabulary of its own: use the checkpoint it was exported from (--init_from=resume)")
    vocab = ckpt.get("vocab") if ckpt else None
    if ckpt and vocab is None and "dataset" in ckpt.get("config", {}):  # a nanoGPT checkpoint: look by the data
        vocab = load_vocab(os.path.join(ckpt["config"].get("data_dir", cfg["data_dir"]), ckpt["config"]["dataset"]))
    return model, Tokenizer(vocab.get("itos") if vocab else None)


class Checkpoints:
    """A training run's saves in out_dir: ckpt.pt at evaluations, best.pt, snapshots, and a stop's. Every process
    calls save() and stop() at the same steps: gathering random states (and FSDP's shards) is collective."""

    def __init__(self, cfg, model, optimizer, scaler, vocab, ckpt, rank, world_size, log):
        self.cfg, self.model, self.optimizer, self.scaler, self.vocab = cfg, model, optimizer, scaler, vocab
        self.world_size, self.log, self.resumed = world_size, log, ckpt is not None
        self.fsdp = cfg["fsdp"] and world_size > 1
        if ckpt:  # the optimizer, the gradient scaler and the random states continue where they stopped
            restore_optimizer(optimizer, ckpt, ckpt["path"], log, shard_optimizer_state if self.fsdp else None)
            if ckpt.get("scaler"):  # a disabled scaler (not float16) saved {}
                scaler.load_state_dict(ckpt["scaler"])
            if len(ckpt.get("rng", [])) == world_size:  # dropout continues exactly where it stopped
                set_rng_state(ckpt["rng"][rank])
            elif "rng" in ckpt:
                log(f"note: the checkpoint's random states are for {len(ckpt['rng'])} processes, not {world_size}; "
                    "dropout noise restarts from the seed")
        self.path = os.path.join(cfg["out_dir"], "ckpt.pt")
        self.start_iter = ckpt.get("iter_num", 0) if ckpt else 0
        self.best_val_loss = ckpt.get("best_val_loss", float("inf")) if ckpt else float("inf")
        # False when a signal stopped the run between evaluations: a resumed run then evaluates at once
        self.evaluated = ckpt.get("evaluated", True) if ckpt else True
        self.have_ckpt = agree(os.path.exists(self.path), world_size)  # the same decisions everywhere: rank 0's disk

    def due(self, iter_num, last_step, val_loss=None):
        """The paths to save at this step: ckpt.pt and best.pt after an evaluation, a snapshot when one is due."""
        cfg, paths = self.cfg, []
        if val_loss is not None:
            improved = val_loss < self.best_val_loss
            self.best_val_loss = min(self.best_val_loss, val_loss)
            if improved or cfg["always_save_checkpoint"] or (last_step and not self.have_ckpt):
                paths.append(self.path)
            if improved and cfg["keep_best"]:
                paths.append(os.path.join(cfg["out_dir"], "best.pt"))
        if self.snapshot_due(iter_num) and (iter_num > self.start_iter or not self.resumed):
            paths.append(snapshot_path(cfg["out_dir"], iter_num))
        return paths if (iter_num > 0 or last_step) and not cfg["eval_only"] else []

    def save(self, paths, iter_num, evaluated=True):
        """Write the run's whole state, every process's random states included, to each path (rank 0 writes)."""
        states = [rng_state() for _ in range(self.world_size)]
        if self.world_size > 1:
            dist.all_gather_object(states, rng_state())
        master = not dist.is_initialized() or dist.get_rank() == 0
        model_state, optim_state = self.model.state_dict(), self.optimizer.state_dict()
        if self.fsdp:  # gather the shards: the checkpoint loads anywhere
            model_state, optim_state = gather_full(model_state, master), gather_full(optim_state, master)
        if not master:
            return
        model_args = {k: getattr(self.model.config, k) for k in MODEL_ARGS}
        os.makedirs(self.cfg["out_dir"], exist_ok=True)
        for path in paths:
            self.log(f"saving checkpoint to {path}")
            save_checkpoint({"model": model_state, "optimizer": optim_state, "scaler": self.scaler.state_dict(),
                             "model_args": model_args, "iter_num": iter_num, "best_val_loss": self.best_val_loss,
                             "config": self.cfg, "vocab": self.vocab, "rng": states, "evaluated": evaluated}, path)
        self.have_ckpt = self.have_ckpt or self.path in paths
        if self.cfg["keep_last"] and any(os.path.basename(p).startswith("ckpt_") for p in paths):
            prune_snapshots(self.cfg["out_dir"], self.cfg["keep_last"], set(self.cfg["save_iters"]), self.log, iter_num)

    def snapshot_due(self, iter_num):
        cfg = self.cfg
        return cfg["save_interval"] and iter_num % cfg["save_interval"] == 0 or iter_num in cfg["save_iters"]

    def stop(self, iter_num, signum):
        """Save where the loop stands (ckpt.pt, or a snapshot without always_save_checkpoint); 128 + signum."""
        name = signal.Signals(signum).name
        path = self.path if self.cfg["always_save_checkpoint"] else snapshot_path(self.cfg["out_dir"], iter_num)
        if iter_num == self.start_iter:
            self.log(f"stopped by {name} before the first step: there is nothing new to save")
        else:
            paths, snapshot = [path], snapshot_path(self.cfg["out_dir"], iter_num)
            if self.snapshot_due(iter_num) and snapshot != path:  # due here: the resumed run starts past it
                paths.append(snapshot)
            self.save(paths, iter_num, evaluated=False)
            self.log(f"stopped by {name}: saved {path} at iteration {iter_num}; to continue, run the "
                     "same command with --init_from=resume")
        return 128 + signum
