"""Sample text from a trained model or from OpenAI's GPT-2.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --init_from=gpt2-xl --start="What is the answer?" --num_samples=3
    python sample.py --start=FILE:prompt.txt
    python sample.py --init_from=gpt2 --interactive=True    # type prompts, Ctrl-D ends

Text is printed as it is generated, with engine.py's KV cache (on CUDA its decode step replayed as a CUDA graph).
"""
import sys

import torch

from checkpoint import load_model_and_tokenizer
from configurator import check, load_config
from engine import CUDAGraphDecode, compile_decode, decode, stream
from errors import UserError, read_utf8, run_main
from runtime import DTYPES, resolve_device, resolve_dtype

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
    compile=False,          # torch.compile the decode step (slow to start; pays on GPUs for long samples)
    cuda_graph=True,        # CUDA: capture the decode step once as a CUDA graph and replay it per token
    use_cache=True,         # KV cache; False re-runs the whole context per token (the slow reference, same text)
    stream=True,            # print each sample as its tokens are generated; False prints it when done
    interactive=False,      # read prompts from stdin and complete each (1 sample, 200 tokens unless set); Ctrl-D ends
)


class TextStream:
    """Print a growing id sequence's text piece by piece; a tail that ends inside a character (U+FFFD) waits."""

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


def complete(model, tok, text, cfg, generator, step, device, out=None):
    """Print num_samples continuations of the prompt text, each followed by a separator line."""
    out, ids = out or sys.stdout, tok.encode(text)
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
                       use_cache=cfg["use_cache"], step=step)
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
    check(cfg)
    device = resolve_device(cfg["device"])
    dtype = resolve_dtype(cfg["dtype"], device)
    torch.manual_seed(cfg["seed"])
    model, tok = load_model_and_tokenizer(cfg)
    model.eval().to(device, DTYPES[dtype])  # weights in the run's dtype: a decode step never re-casts them
    note = lambda line: print(line, file=sys.stderr)  # noqa: E731  (stdout holds the samples)
    step = compile_decode(note) if cfg["compile"] else decode
    if cfg["cuda_graph"] and device.startswith("cuda"):
        step = CUDAGraphDecode(step, note)
    generator = torch.Generator(device=device).manual_seed(cfg["seed"])
    if not cfg["interactive"]:
        prompt = cfg["start"]
        if prompt.startswith("FILE:"):
            prompt = read_utf8(prompt[len("FILE:"):], "prompt file (from --start=FILE:...)")
        return complete(model, tok, prompt, cfg, generator, step, device)
    while True:
        try:
            prompt = input("> ")
        except EOFError:
            break
        if not prompt:
            break
        try:
            complete(model, tok, prompt, cfg, generator, step, device)
        except UserError as e:  # e.g. a character outside a char-level vocabulary: ask again
            print(f"error: {e}")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
