"""Evaluate a GPT: HellaSwag accuracy or the perplexity of a text file; or export it to Hugging Face.

    python eval.py --task=hellaswag --init_from=gpt2               # downloads HellaSwag's validation file
    python eval.py --task=hellaswag --out_dir=out --limit=1000     # our checkpoint, first 1000 items
    torchrun --standalone --nproc_per_node=8 eval.py --task=hellaswag --init_from=gpt2-xl
    python eval.py --task=perplexity --data_path=book.txt --stride=512
    python eval.py --task=export_hf --out_dir=out                  # writes out/hf for transformers

train.py imports its val-loss estimate and HellaSwag from here.
"""
import json
import math
import os
import sys
import urllib.request
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import hf
from checkpoint import load_model_and_tokenizer
from configurator import check, load_config
from errors import UserError, read_utf8, run_main
from runtime import autocast, maybe_compile, resolve_device, resolve_dtype, setup_distributed, teardown_distributed
from tokenizer import gpt2_encoding

DEFAULTS = dict(
    task="hellaswag",      # 'hellaswag', 'perplexity' or 'export_hf'
    init_from="resume",    # 'resume' (ckpt.pt in out_dir), 'gpt2'..'gpt2-xl', or a HF GPT-2 directory
    out_dir="out",         # where ckpt.pt is, for init_from='resume'
    data_dir="data",       # HellaSwag is cached in data_dir/hellaswag; a checkpoint's vocabulary may live here
    data_path="",          # hellaswag: a local jsonl instead of the download; perplexity: the text file
    limit=0,               # hellaswag: score only the first N items (0: all)
    batch_size=8,          # items per forward pass (hellaswag, 4 sequences each) or windows (perplexity)
    block_size=0,          # perplexity: window length in tokens (0: the model's block_size)
    stride=0,              # perplexity: tokens the window advances (0: block_size); smaller = more context, slower
    export_dir="",         # export_hf: the folder to write (default: out_dir/hf)
    force=False,           # export_hf: write into a folder that already holds files (replacing ours there)
    backend="auto",        # distributed backend under torchrun: 'nccl' on CUDA, 'gloo' on CPU when 'auto'
    device="auto",         # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype="auto",          # 'auto' (bf16 on recent GPUs, fp16 on older, fp32 on CPU), or explicit
    compile=False,         # torch.compile the model (pays off only on long evaluations)
)

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"


# ----------------------------------------------------------------------------- HellaSwag

def read_hellaswag(path, limit=0):
    """Items {'ctx', 'endings', 'label'} from HellaSwag's jsonl format (ctx, or ctx_a + ctx_b)."""
    items = []
    for line_no, line in enumerate(read_utf8(path, "HellaSwag file").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ctx = row["ctx"] if "ctx" in row else row["ctx_a"] + " " + row["ctx_b"]
            endings, label = row["endings"], row["label"]
            ok = (isinstance(ctx, str) and isinstance(endings, list) and len(endings) >= 2
                  and all(isinstance(e, str) for e in endings) and isinstance(label, int)
                  and 0 <= label < len(endings))
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise UserError(f"{path} line {line_no} is not a labelled HellaSwag item: it needs 'ctx' (text), "
                            "'endings' (a list of texts) and 'label' (the index of the right ending)")
        items.append({"ctx": ctx, "endings": endings, "label": label})
        if limit and len(items) == limit:
            break
    if not items:
        raise UserError(f"{path} holds no HellaSwag items")
    return items


def load_hellaswag(data_path="", data_dir="data", limit=0, rank=0):
    """The items to score: data_path's, or the validation file cached in data_dir/hellaswag, which rank 0
    downloads once while the other processes wait."""
    path = data_path or os.path.join(data_dir, "hellaswag", os.path.basename(HELLASWAG_URL))
    if data_path and not os.path.isfile(data_path):
        raise UserError(f"HellaSwag file '{data_path}' (from --data_path) not found")
    if rank == 0 and not os.path.exists(path):
        print(f"downloading {HELLASWAG_URL} -> {path}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            urllib.request.urlretrieve(HELLASWAG_URL, path + ".tmp")
        except OSError as e:  # includes URLError: offline, blocked, server down
            raise UserError(f"could not download HellaSwag from {HELLASWAG_URL} ({e}); "
                            "pass --data_path=FILE with a local copy of hellaswag_val.jsonl") from None
        os.replace(path + ".tmp", path)  # never leave a half-written file where the cache is looked up
    if dist.is_initialized():
        dist.barrier()
    return read_hellaswag(path, limit)


def check_gpt2_vocab(model):
    if model.config.vocab_size < hf.GPT2_VOCAB:
        raise UserError(f"HellaSwag needs a model with GPT-2's BPE vocabulary; this one has vocab_size "
                        f"{model.config.vocab_size} (a character-level model?)")


def item_sequences(enc, item, block_size):
    """(tokens, n_scored) per ending: the context's tokens (cut from the front to fit) then the ending's n_scored."""
    ctx = enc.encode_ordinary(item["ctx"])
    out = []
    for ending in item["endings"]:
        end = enc.encode_ordinary(" " + ending)  # the ending continues the context after a space
        tokens = (ctx + end)[-(block_size + 1):]  # the model reads all but the last token
        out.append((tokens, min(len(end), len(tokens) - 1)))
    return out


@torch.no_grad()
def summed_losses(model, sequences, device, ctx=nullcontext()):
    """For each (tokens, n_scored): the summed cross-entropy of its last n_scored tokens, in one right-padded
    batch (the causal mask keeps padding from any scored position)."""
    T = max(len(tokens) for tokens, _ in sequences) - 1
    x = torch.zeros(len(sequences), T, dtype=torch.long)
    y = torch.full((len(sequences), T), -1, dtype=torch.long)
    for i, (tokens, n) in enumerate(sequences):
        t = torch.tensor(tokens)
        x[i, :len(t) - 1] = t[:-1]
        y[i, len(t) - 1 - n:len(t) - 1] = t[len(t) - n:]
    x, y = x.to(device), y.to(device)
    with ctx:
        logits, _ = model(x, y)
    losses = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-1,
                             reduction="none")  # 0 at ignored positions
    return losses.view(len(sequences), T).sum(1).cpu()


def evaluate_hellaswag(model, items, device, batch_size=8, ctx=nullcontext(), rank=0, world_size=1,
                       progress=False):
    """Completion-style HellaSwag: acc counts items whose labelled ending has the lowest summed loss, acc_norm
    the lowest loss per token. Rank r scores items r, r + world_size, ...; n, acc and acc_norm are over all
    ranks, 'losses' maps this rank's items to their endings' summed losses and token counts."""
    enc = gpt2_encoding()
    check_gpt2_vocab(model)
    was_training = model.training
    model.eval()
    mine = list(range(rank, len(items), world_size))
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # items, right by sum, right by mean
    losses = {}
    # Every process runs as many forward passes (FSDP gathers weights in each, all processes together):
    # a process with fewer items scores item 0 again for the missing batch and drops the result.
    n_batches = -(-len(range(0, len(items), world_size)) // batch_size)
    for start in tqdm(range(0, n_batches * batch_size, batch_size), desc="hellaswag", disable=not progress):
        batch = mine[start:start + batch_size]
        sequences = [s for i in batch or [0] for s in item_sequences(enc, items[i], model.config.block_size)]
        sums = summed_losses(model, sequences, device, ctx)
        k = 0
        for i in batch:
            m = len(items[i]["endings"])
            s, n = sums[k:k + m], torch.tensor([n for _, n in sequences[k:k + m]], dtype=torch.float32)
            k += m
            losses[i] = (s.tolist(), n.int().tolist())
            counts[0] += 1
            counts[1] += int(s.argmin()) == items[i]["label"]
            counts[2] += int((s / n).argmin()) == items[i]["label"]
    if world_size > 1:
        dist.all_reduce(counts)
    model.train(was_training)
    n, right, right_norm = counts.tolist()
    return {"n": int(n), "acc": right / n, "acc_norm": right_norm / n, "losses": losses}


# ----------------------------------------------------------------------------- train.py's val loss

@torch.no_grad()
def estimate_loss(model, splits, eval_iters, seed, ctx, rank=0, world_size=1, stop=None):
    """Mean loss over the same eval_iters batches per split at every evaluation, shared among the processes;
    None if stop() (asked before each batch, by every process alike) says so."""
    model.eval()
    out = {}
    for i, (name, batches) in enumerate(splits.items()):
        generator = torch.Generator().manual_seed(seed + 1_000_003 * (i + 1))
        starts = [batches.random_starts(generator) for _ in range(eval_iters)]
        total = torch.zeros((), dtype=torch.float64, device=batches.device)
        for j in range(math.ceil(eval_iters / world_size)):  # batch k goes to process k % world_size
            k = j * world_size + rank
            if stop and stop():  # a signal: the run saves and stops rather than finish a long evaluation
                model.train()
                return None
            x, y = batches.get(starts[min(k, eval_iters - 1)])
            with ctx:
                loss = model(x, y)[1].double()
            total += loss if k < eval_iters else 0.0  # every process runs as many forwards (FSDP needs it)
        if world_size > 1:
            dist.all_reduce(total)
        out[name] = total.item() / eval_iters
    model.train()
    return out


# ----------------------------------------------------------------------------- perplexity

def sliding_windows(n_tokens, window, stride):
    """(begin, end, n_new) per window: tokens[begin:end] predict tokens[begin+1:end+1], of which the last n_new
    count. Every token but the first is predicted once, after the first window with window - stride of context."""
    if not 1 <= stride <= window:
        raise UserError(f"stride must be between 1 and the window length {window}, got {stride}")
    out, done, begin = [], 0, 0  # done: tokens[1..done] are predicted already
    while done < n_tokens - 1:
        end = min(begin + window, n_tokens - 1)
        out.append((begin, end, end - done))
        done, begin = end, begin + stride
    return out


@torch.no_grad()
def evaluate_perplexity(model, ids, n_bytes, device, window, stride, batch_size=8, ctx=nullcontext(),
                        rank=0, world_size=1, progress=False):
    """Loss (nats/token), perplexity and bits per byte of ids, whose tokens but the first are n_bytes of text."""
    if len(ids) < 2:
        raise UserError("the text is too short: it needs at least two tokens")
    was_training = model.training
    model.eval()
    windows = sliding_windows(len(ids), window, stride)[rank::world_size]
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # summed nats, tokens
    for start in tqdm(range(0, len(windows), batch_size), desc="perplexity", disable=not progress):
        sequences = [(ids[b:e + 1], n) for b, e, n in windows[start:start + batch_size]]
        totals[0] += summed_losses(model, sequences, device, ctx).double().sum().item()
        totals[1] += sum(n for _, n in sequences)
    if world_size > 1:
        dist.all_reduce(totals)
    model.train(was_training)
    nats, tokens = totals.tolist()
    loss = nats / tokens
    return {"tokens": int(tokens), "bytes": n_bytes, "loss": loss, "perplexity": math.exp(loss),
            "bits_per_byte": nats / math.log(2) / n_bytes}


# ----------------------------------------------------------------------------- main

def main(argv):
    cfg = load_config(DEFAULTS, argv)
    check(cfg, block_size="count")  # 0: the model's
    if cfg["task"] == "perplexity" and not cfg["data_path"]:
        raise UserError("task perplexity needs the text to score: pass --data_path=FILE")
    model, tok = load_model_and_tokenizer(cfg)
    if cfg["task"] == "export_hf":
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 writes the folder, once
            return
        folder = cfg["export_dir"] or os.path.join(cfg["out_dir"], "hf")
        hf.export(model, folder, cfg["force"])
        print(f"wrote {folder}: load it with transformers.GPT2LMHeadModel.from_pretrained('{folder}')")
        if tok.itos is not None:
            print(f"note: this model reads characters, not GPT-2's BPE: encode text with the model's own "
                  f"{len(tok.itos)}-character vocabulary (the checkpoint's 'vocab'), not GPT2Tokenizer")
        return

    device = resolve_device(cfg["device"])
    rank, _, world_size, device = setup_distributed(cfg["backend"], device)
    ctx = autocast(device, resolve_dtype(cfg["dtype"], device))
    model.to(device)
    maybe_compile(model, cfg["compile"], device)
    log = print if rank == 0 else (lambda *a, **k: None)
    if cfg["task"] == "hellaswag":
        check_gpt2_vocab(model)
        items = load_hellaswag(cfg["data_path"], cfg["data_dir"], cfg["limit"], rank)
        r = evaluate_hellaswag(model, items, device, cfg["batch_size"], ctx, rank, world_size, progress=rank == 0)
        log(f"hellaswag: {r['n']} items, acc {r['acc']:.4f}, acc_norm {r['acc_norm']:.4f}")
    else:
        text = read_utf8(cfg["data_path"], "text file (--data_path)")  # the bytes as written
        ids = tok.encode(text)
        window = cfg["block_size"] or model.config.block_size
        if window > model.config.block_size:
            raise UserError(f"block_size={window} is longer than the model's {model.config.block_size}")
        n_bytes = len(text.encode("utf-8")) - (tok.token_bytes(ids[0]) if ids else 0)
        r = evaluate_perplexity(model, ids, n_bytes, device, window, cfg["stride"] or window, cfg["batch_size"],
                                ctx, rank, world_size, progress=rank == 0)
        log(f"perplexity: {r['tokens']} tokens ({r['bytes']} bytes), loss {r['loss']:.4f}, "
            f"perplexity {r['perplexity']:.4f}, bits per byte {r['bits_per_byte']:.4f}")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
    teardown_distributed()  # after main's models are gone (runtime.py)
