"""Generation: a static KV cache, one-token decode steps (replayed as a CUDA graph on GPUs), and sampling.

    for next_ids in stream(model, idx, 200, temperature=0.8, top_k=200, generator=g): ...

The reference, use_cache=False, runs the whole context (its last block_size tokens) from position 0
for every new token. The cached path runs the prompt once (prefill), keeping every layer's keys and
values in buffers of block_size positions, then feeds one token per step (decode), whose queries
attend to all cached keys up to their own position through the same SDPA call that training uses.
In float32 the two agree to ~1e-6 in the logits (tests: the same greedy tokens, logits within 1e-5).
Past block_size every learned position shifts by one with each token, so every cached key is stale:
from there on both paths run the reference.

At batch 1 a decode step is a few hundred small kernels and a GPU waits on their launches, so on CUDA
the step is captured once as a CUDA graph and replayed per token. The graph works on fixed tensors:
the cache's buffers, the position `cache.pos` (advanced inside the graph) and one input id per row;
greedy decoding's argmax runs inside it too, while sampling draws outside it from its logits.
"""
import time

import torch
import torch.nn.functional as F

from errors import reason


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None, vocab_limit=None):
    """Next ids (B, 1) from logits (B, V). temperature 0 or top_k=1 is greedy (argmax). top_k keeps
    the k most likely ids; top_p keeps the smallest set of most likely ids whose probability reaches
    top_p (always at least one); vocab_limit bans ids >= it (a padded vocabulary). Draws only from
    generator, and only among the ids kept: with top_k that is k numbers per row, not the vocabulary."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logits = logits.float()[:, :vocab_limit]
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1, keepdim=True)
    ids = None  # the id of each column of logits, when it is not the column number
    nucleus = top_p is not None and top_p < 1
    k = min(top_k, logits.size(-1)) if top_k is not None and top_k > 0 else logits.size(-1)  # 0: all
    if k < logits.size(-1) or nucleus:
        logits, ids = torch.topk(logits, k)  # most likely first
    probs = F.softmax(logits / temperature, dim=-1)
    if nucleus:
        before = probs.cumsum(dim=-1) - probs  # probability of the ids ranked above each one
        probs = probs.masked_fill(before >= top_p, 0.0)  # the top id has 0 before it: always kept
    choice = torch.multinomial(probs, num_samples=1, generator=generator)  # weights need not sum to 1
    return choice if ids is None else ids.gather(-1, choice)


class LayerKV:
    """One layer's keys and values (B, n_head, block_size, head_size), allocated at the first store in
    the dtype the layer produces (autocast's, or the weights')."""

    def __init__(self, cache):
        self.cache, self.k, self.v = cache, None, None

    def store(self, k, v):
        """Write k, v (B, n_head, T, head_size) at positions cache.pos; return the whole buffers."""
        if self.k is None:
            shape = (k.size(0), k.size(1), self.cache.length, k.size(3))
            self.k, self.v = k.new_zeros(shape), v.new_zeros(shape)
        self.k.index_copy_(2, self.cache.pos, k)
        self.v.index_copy_(2, self.cache.pos, v)
        return self.k, self.v


class KVCache:
    """Every layer's keys and values, and `pos`: the positions (a device tensor) of the tokens in the pass."""

    def __init__(self, n_layer, block_size, pos):
        self.length, self.pos = block_size, pos
        self.layers = [LayerKV(self) for _ in range(n_layer)]

    def visible(self):
        """(T, block_size) attention mask: a query at position p sees the keys at positions 0..p."""
        return torch.arange(self.length, device=self.pos.device) <= self.pos[:, None]


def decode(model, ids, cache, vocab_limit=None):
    """One decode step: logits (B, V) and greedy ids (B, 1) for ids (B, 1) at cache.pos, which moves on."""
    logits = model(ids, cache=cache)[0][:, -1]
    cache.pos.add_(1)
    return logits, sample_next(logits, temperature=0, vocab_limit=vocab_limit)


class CUDAGraphDecode:
    """`step` (decode, or compile_decode()) captured as a CUDA graph for each new cache and replayed after
    that. The first step on a cache runs eagerly on a side stream (the warm-up capture needs), then the
    same step is recorded; a capture that fails leaves every step eager, with one note."""

    def __init__(self, step=decode, log=print):
        self.step, self.log, self.cache, self.graph, self.captures = step, log, None, None, 0

    def __call__(self, model, ids, cache, vocab_limit=None):
        if self.graph is False:
            return self.step(model, ids, cache, vocab_limit)
        if cache is self.cache:
            self.ids.copy_(ids)
            self.graph.replay()
            return self.out[0].clone(), self.out[1].clone()
        self.cache, self.ids, side = cache, ids.clone(), torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.step(model, self.ids, cache, vocab_limit)
        torch.cuda.current_stream().wait_stream(side)
        try:
            t0, self.graph = time.time(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):  # recorded, not run: the cache stays where the warm-up left it
                self.out = self.step(model, self.ids, cache, vocab_limit)
            if not self.captures:
                self.log(f"note: captured the decode step as a CUDA graph in {time.time() - t0:.2f} s")
            self.captures += 1
        except Exception as e:  # noqa: BLE001 (an op that cannot be captured: decode eagerly instead)
            self.log(f"note: decoding without a CUDA graph ({reason(e)})")
            self.graph = False
        return out


def compile_decode(log=print):
    """`decode` through torch.compile, which compiles at the first call: its time is noted, and a broken
    toolchain shows there, when the step falls back to eager for good, with a note."""
    compiled = [torch.compile(decode)]

    def step(*args):
        if compiled:
            try:
                t0, out = time.time(), compiled[0](*args)
                if len(compiled) == 1:
                    log(f"note: compiled the decode step in {time.time() - t0:.1f} s")
                    compiled.append(True)
                return out
            except Exception as e:  # noqa: BLE001 (an inductor/Triton failure; the eager step redoes it)
                compiled.clear()
                log(f"note: decoding without torch.compile ({reason(e)})")
        return decode(*args)
    return step


@torch.inference_mode()
def stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, vocab_limit=None,
           generator=None, use_cache=True, step=decode, logits_out=None):
    """Yield the next ids (B, 1) one step at a time. step runs the decode steps (decode, a CUDAGraphDecode
    or compile_decode()); logits_out, a list, receives each step's logits (B, V) for comparisons."""
    L, seq = model.config.block_size, idx
    greedy, cache = temperature == 0 or top_k == 1, None
    for _ in range(max_new_tokens):
        T, pick = seq.size(1), None
        if not use_cache or T > L:  # the reference: the last L tokens from position 0
            logits = model(seq[:, -L:])[0][:, -1]
        elif cache is None:  # prefill: the prompt at positions 0..T-1, then decode from position T
            cache = KVCache(model.config.n_layer, L, torch.arange(T, device=seq.device))
            logits = model(seq, cache=cache)[0][:, -1]
            cache.pos = torch.tensor([T], device=seq.device)
        else:  # decode: the newest token, at position T - 1
            logits, pick = step(model, seq[:, -1:], cache, vocab_limit)
        if logits_out is not None:
            logits_out.append(logits)
        if pick is None or not greedy:
            pick = sample_next(logits, temperature, top_k, top_p, generator, vocab_limit)
        seq = torch.cat((seq, pick), dim=1)
        yield pick


def generate(model, idx, max_new_tokens, **kwargs):
    """idx (B, T) followed by max_new_tokens new ids; keyword arguments as for `stream`."""
    return torch.cat([idx] + list(stream(model, idx, max_new_tokens, **kwargs)), dim=1)
