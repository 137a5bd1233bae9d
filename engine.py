"""Generation: a static KV cache, one-token decode steps (replayed as a CUDA graph on GPUs), and sampling.

The reference (use_cache=False) reruns the last block_size tokens for every new token. The cached path runs
the prompt once (prefill) into per-layer buffers of block_size positions, then one token per step (decode)
through the same SDPA call: in float32 the logits agree to ~1e-5. Past block_size both run the reference.
A CUDA graph replays the decode step on fixed tensors (cache, `cache.pos`, one id per row)."""
import time

import torch
import torch.nn.functional as F

from errors import reason


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None, vocab_limit=None):
    """Next ids (B, 1) from logits (B, V); temperature 0 or top_k=1 is greedy. top_k keeps the k most likely ids,
    top_p the fewest whose probability reaches top_p; vocab_limit bans ids >= it (a padded vocabulary)."""
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
    """One layer's keys and values (B, n_head, block_size, head_size), in the dtype the layer produces."""

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
    """Every layer's keys and values, and `pos`: the positions (a device tensor) of the pass's tokens."""

    def __init__(self, model, pos):
        self.length, self.pos = model.config.block_size, pos
        self.layers = [LayerKV(self) for _ in range(model.config.n_layer)]
        self.head = model.lm_head.weight.t().contiguous()  # (n_embd, V): a one-row product reads it 2x faster

    def visible(self):
        """(T, block_size) attention mask: a query at position p sees the keys at positions 0..p."""
        return torch.arange(self.length, device=self.pos.device) <= self.pos[:, None]


def decode(model, ids, cache, vocab_limit=None):
    """One decode step: logits (B, V) and greedy ids (B, 1) for ids (B, 1) at cache.pos, which moves on."""
    logits = model(ids, cache=cache)[0][:, -1]
    cache.pos.add_(1)
    return logits, sample_next(logits, temperature=0, vocab_limit=vocab_limit)


class CUDAGraphDecode:
    """`step` captured as a CUDA graph for each new cache (after one eager warm-up step), then replayed."""

    def __init__(self, step=decode, log=print):
        self.step, self.log, self.cache, self.graph, self.captures = step, log, None, None, 0

    def __call__(self, model, ids, cache, vocab_limit=None):
        if self.graph is False:  # a capture failed: eager for good
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
    """`decode` through torch.compile; a failure at the first call (compiling) falls back to eager, noted."""
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
    """Yield the next ids (B, 1) one at a time; step runs the decode steps, logits_out gets their logits."""
    L, seq = model.config.block_size, idx
    greedy, cache, pick = temperature == 0 or top_k == 1, None, None
    for _ in range(max_new_tokens):
        T, greedy_pick = seq.size(1), None
        if not use_cache or T > L:  # the reference: the last L tokens from position 0
            logits = model(seq[:, -L:])[0][:, -1]
        elif cache is None:  # prefill: the prompt at positions 0..T-1, then decode from position T
            cache = KVCache(model, torch.arange(T, device=seq.device))
            logits = model(seq, cache=cache)[0][:, -1]
            cache.pos = torch.tensor([T], device=seq.device)
        else:  # decode: the newest token, at position T - 1
            logits, greedy_pick = step(model, pick, cache, vocab_limit)
        if logits_out is not None:
            logits_out.append(logits)
        pick = greedy_pick if greedy and greedy_pick is not None else \
            sample_next(logits, temperature, top_k, top_p, generator, vocab_limit)
        seq = torch.cat((seq, pick), dim=1)
        yield pick
