"""Sample text from a trained model or from OpenAI's GPT-2.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --init_from=gpt2-xl --start="What is the answer?" --num_samples=3
    python sample.py --start=FILE:prompt.txt
    python sample.py --init_from=gpt2 --interactive=True    # type prompts, Ctrl-D ends

Char-level checkpoints decode with their dataset's vocabulary (stored in the checkpoint, or the
dataset's meta.json / nanoGPT's meta.pkl); everything else with GPT-2's BPE. Text is printed as
it is generated, using the KV cache of engine.py (exactly the tokens of --use_cache=False).
"""
import os
import sys

import torch

from checkpoint import load_checkpoint, load_vocab, model_from_checkpoint
from configurator import UserError, gpt2_encoding, load_config, read_utf8, run_main
from model import GPT, HF_NAMES
from engine import compile_step, stream
from runtime import autocast, resolve_device, resolve_dtype

DEFAULTS = dict(
    init_from="resume",     # 'resume' (ckpt.pt in out_dir), 'gpt2'..'gpt2-xl', or a HF GPT-2 directory
    out_dir="out",          # where ckpt.pt is, for init_from='resume'
    data_dir="data",        # where to look for a dataset's meta.json/meta.pkl if the checkpoint has no vocab
    start="\n",             # the prompt; "FILE:prompt.txt" reads it from a file
    num_samples=10,         # samples to draw
    max_new_tokens=500,     # tokens generated per sample
    temperature=0.8,        # 1.0 samples the model as is, lower is more conservative, 0 is greedy
    top_k=200,              # sample only among the top_k most likely tokens (0 or None: all)
    top_p=1.0,              # nucleus sampling: only the most likely tokens covering top_p of the probability (1.0: all)
    seed=1337,
    device="auto",          # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype="auto",           # 'auto' (bf16 on recent GPUs, fp16 on older, fp32 on CPU), or explicit
    compile=False,          # torch.compile the decode step on CUDA (slow to start); ignored on CPU and mps
    use_cache=True,         # KV cache; False re-runs the whole context per token (the slow reference, same text)
    stream=True,            # print each sample as its tokens are generated; False prints it when done
    interactive=False,      # read prompts from stdin and complete each (1 sample, 200 tokens unless set); Ctrl-D ends
)


class Tokenizer:
    """encode/decode for a char vocabulary (a list of characters) or GPT-2's BPE."""

    def __init__(self, itos=None):
        if itos is not None:
            self.itos, self.stoi = list(itos), {ch: i for i, ch in enumerate(itos)}
            self.n_vocab = len(self.itos)
        else:
            self.bpe = gpt2_encoding()
            self.n_vocab = self.bpe.n_vocab
            self.itos = None

    def encode(self, text):
        if self.itos is None:
            return self.bpe.encode(text, allowed_special={"<|endoftext|>"})
        unknown = sorted(set(text) - set(self.stoi))
        if unknown:
            raise UserError(f"the prompt has characters outside the model's vocabulary: {''.join(unknown)!r}")
        return [self.stoi[ch] for ch in text]

    def decode(self, ids):
        if self.itos is None:
            return self.bpe.decode(ids)
        return "".join(self.itos[i] for i in ids)


def load_model_and_tokenizer(cfg):
    """(model, tokenizer) for init_from: a checkpoint in out_dir, or GPT-2 weights."""
    if cfg["init_from"] == "resume":
        path = os.path.join(cfg["out_dir"], "ckpt.pt")
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt, path=path)
        vocab = ckpt.get("vocab")
        if vocab is None and "dataset" in ckpt.get("config", {}):  # a nanoGPT checkpoint: look beside the data
            data_dir = ckpt["config"].get("data_dir", cfg["data_dir"])
            vocab = load_vocab(os.path.join(data_dir, ckpt["config"]["dataset"]))
        return model, Tokenizer(vocab.get("itos") if vocab else None)
    if cfg["init_from"] in HF_NAMES or os.path.isdir(cfg["init_from"]):
        try:
            return GPT.from_pretrained(cfg["init_from"]), Tokenizer()
        except ValueError as e:
            raise UserError(str(e)) from None
    raise UserError(f"unknown init_from '{cfg['init_from']}': use resume, {', '.join(HF_NAMES)}, "
                    "or a directory holding a Hugging Face GPT-2 checkpoint")


def read_prompt(start):
    if not start.startswith("FILE:"):
        return start
    return read_utf8(start[len("FILE:"):], "prompt file (from --start=FILE:...)")


class TextStream:
    """Print the text of a growing id sequence piece by piece. A BPE token can end inside a multi-byte
    character, which decodes to U+FFFD until the next token completes it: such a tail waits."""

    def __init__(self, tok, ids, out):
        self.tok, self.ids, self.out, self.printed = tok, list(ids), out, ""

    def add(self, new_ids, final=False):
        self.ids.extend(new_ids)
        text = self.tok.decode(self.ids)
        ready = text if final else text.rstrip("\ufffd")
        if len(ready) > len(self.printed):
            self.out.write(ready[len(self.printed):])
            self.out.flush()
            self.printed = ready


def complete(model, tok, text, cfg, generator, step_fn, device, out=sys.stdout):
    """Print num_samples continuations of the prompt text, each followed by a separator line."""
    ids = tok.encode(text)
    if not ids:
        raise UserError("the prompt is empty: give at least one character/token with --start")
    ids = ids[-model.config.block_size:]  # a prompt longer than the context keeps its end
    x = torch.tensor(ids, dtype=torch.long, device=device)[None, ...]
    for _ in range(cfg["num_samples"]):
        shown = TextStream(tok, ids, out)
        if cfg["stream"]:
            shown.add([])
        # the model's vocab may be padded (50304) past what the tokenizer can decode (50257)
        steps = stream(model, x, cfg["max_new_tokens"], temperature=cfg["temperature"], top_k=cfg["top_k"] or None,
                       top_p=cfg["top_p"], vocab_limit=tok.n_vocab, generator=generator,
                       use_cache=cfg["use_cache"], step_fn=step_fn)
        new = []
        for next_id in steps:
            new.append(next_id.item())
            if cfg["stream"]:
                shown.add(new[-1:])
        shown.add([] if cfg["stream"] else new, final=True)
        out.write("\n---------------\n")
        out.flush()


def main(argv):
    given = set()
    cfg = load_config(DEFAULTS, argv, optional=("top_k",), given=given)
    if cfg["interactive"]:  # a conversation: one answer per prompt, of a readable length, unless asked otherwise
        cfg["num_samples"] = cfg["num_samples"] if "num_samples" in given else 1
        cfg["max_new_tokens"] = cfg["max_new_tokens"] if "max_new_tokens" in given else 200
    if cfg["top_k"] is not None and cfg["top_k"] < 0:
        raise UserError(f"top_k must be >= 0, or 0/None for no limit, got {cfg['top_k']}")
    if not 0 <= cfg["seed"] < 2 ** 62:
        raise UserError(f"seed={cfg['seed']} must be in [0, 2**62)")
    if cfg["max_new_tokens"] < 0 or cfg["num_samples"] < 1:
        raise UserError("max_new_tokens must be >= 0 and num_samples >= 1")
    if not 0 <= cfg["temperature"] < float("inf"):
        raise UserError(f"temperature must be >= 0 (0 is greedy), got {cfg['temperature']}")
    if not 0 < cfg["top_p"] <= 1:
        raise UserError(f"top_p must be in (0, 1] (1.0 turns nucleus sampling off), got {cfg['top_p']}")
    device = resolve_device(cfg["device"])
    dtype = resolve_dtype(cfg["dtype"], device)
    torch.manual_seed(cfg["seed"])
    model, tok = load_model_and_tokenizer(cfg)
    model.eval().to(device)
    step_fn = None
    if cfg["compile"]:
        step_fn = compile_step(model, device)
        if step_fn is None and device.split(":")[0] != "cuda":
            print(f"note: compile only applies to CUDA decode steps; decoding eagerly on {device}")
    generator = torch.Generator(device=device).manual_seed(cfg["seed"])
    with torch.no_grad(), autocast(device, dtype):
        if not cfg["interactive"]:
            return complete(model, tok, read_prompt(cfg["start"]), cfg, generator, step_fn, device)
        while True:
            try:
                prompt = input("> ")
            except EOFError:
                break
            if not prompt:
                break
            try:
                complete(model, tok, prompt, cfg, generator, step_fn, device)
            except UserError as e:  # e.g. a character outside a char-level vocabulary: ask again
                print(f"error: {e}")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
