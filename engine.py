"""Fast generation with a KV cache that returns exactly the tokens of the full-recompute reference.

    out = generate(model, idx, 200, temperature=0.8, top_k=200, generator=g)                  # cached
    ref = generate(model, idx, 200, temperature=0.8, top_k=200, generator=g2, use_cache=False)  # same tokens

The reference re-runs the whole (cropped) context from position 0 for every new token. The cached
path runs the prompt once (prefill) and then only the newest positions (decode), reading the keys
and values of earlier positions from preallocated per-layer buffers. Both turn the last position
into logits with the same product and sample with the same helper, so same logits -> same tokens.

Why the logits are *bitwise* the same, not just close:
- A float32 matrix product gives a row the same bits whatever rows come with it only for some row
  counts. oneDNN's linear (the kernel used here on CPU) does for 2 rows or more, but not for 1;
  MKL's matmul, used for attention, does for 4, 8 and 12 or more, not for 1-3, 5-7 or 9-11 (measured
  on our 2-core CPU; without oneDNN the linears run through MKL, and 4 rows still match). So a
  decode step re-runs the last DECODE_ROWS = 4 positions, not just the newest; the rows it
  recomputes are already cached and come out identical.
- A row's attention output must not depend on how many (masked) keys follow it either. Extra
  masked keys add exact zeros, which change no sum once there is a full vector of keys; with
  fewer than 16 keys the sums take another path. So contexts up to FULL_UP_TO = 16 positions run
  the same full forward in both paths, and every cached key was computed with at least 16 keys.
- Attention with a cache runs as plain matmuls with an explicit bottom-right mask in both paths
  (model.py, _attend_cached): SDPA's fused CPU kernel tiles the queries by sequence length, so
  the last query's numbers would depend on the prompt length.
- Past block_size, learned positions shift by one every token, so every cached key is stale: both
  paths run the full forward over the last block_size tokens (correct first; it cannot be cheaper
  without changing what is computed).
- Both paths turn the last position into logits with the same call on the same rows. Greedy
  decoding of one sequence needs only the largest: there the cached path screens the vocabulary
  with a float16 copy of the table and recomputes exactly the slabs that can hold it
  (KVCache.greedy_logits). Those logits have the reference's bits, the others are -inf.

Where the decode step's time goes (6 layers, 384 wide, 50304 vocab, 512 tokens from a 16-token
prompt, 2-core CPU, 6-7 ms per token as the host's load varies): it must read every weight once,
~42 MB in the blocks and ~77 MB in the head. The blocks' 24 products, on weights reordered once per
call into oneDNN's blocked layout (same numbers as the plain layout), took ~2.1 ms with cold caches
(MKL: ~4.7 ms for one-row products). The head, one batched product over slabs of the vocabulary,
took ~2.1-2.3 ms, about a plain read of the table (one product over the whole table: ~2.6 ms in
oneDNN, ~3.2 ms in MKL on a transposed copy, ~7.7 ms on the table as stored); screened in float16
for greedy decoding, ~1.6 ms, recomputing 2 slabs of 508 rows at most steps and 8 at the most.
The blocks and the table read from 2 MB pages (huge_pages): alternating runs in one process gave
6.30 ms per token with them, 6.71 without (before the screen). A screened call leaves the table's
pages alone (it reads the float16 copy): moving them took ~190 ms in a fresh process.
The other ~2-2.5 ms: attention over the cached keys (~0.8-0.95 ms at this run's average of 272 keys,
growing with the context) and ~200 small eager ops on 4-row tensors; they take about half as long
when no weights stream between them (likely cache misses: each op starts cold after a product).
Greedy decoding (top_k=1 too) is an argmax, and a top-k draw samples among k ids: a draw over the
whole vocabulary took ~1 ms.
tests/test_generate.py checks the logits of every step bit for bit (those a screened step keeps),
greedy and sampled, batched, across block_size, char and BPE vocabularies, on one thread and on all.
"""

import ctypes
import math
import platform
import sys

import torch
import torch.nn.functional as F

DECODE_ROWS = 4  # positions per decode step: a row count whose results match the full forward's rows
FULL_UP_TO = 16  # contexts up to this length run the full forward in the cached path too
HEAD_SLABS = 16  # at least this many slabs of the vocabulary in the head's product (more with more threads)
SLAB_ROWS = 512  # and at most this many rows in a slab: greedy steps recompute only the slabs they need
SCREEN_FROM = 4096  # vocabularies at least this big screen greedy steps with a float16 copy of the table
SCREEN_OK = platform.machine().lower() in ("x86_64", "amd64")  # float16 CPU products add in float32 there
PACK_HINT = 16  # rows oneDNN lays the weights out for: 16 beat 1 and 4 on the blocks (32-256: no better)
ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
    and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
HUGE_PAGE, MADV_COLLAPSE = 2 << 20, 25  # x86-64/arm64 Linux: bytes in a transparent huge page; madvise code
LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
USE_HUGE_PAGES = True  # False leaves the pages alone (bench.py --huge_pages=False, to compare)


def huge_pages(ptr, nbytes):
    """Best effort: ask Linux (6.1+) to back the memory holding bytes ptr..ptr+nbytes with 2 MB
    pages (madvise MADV_COLLAPSE); contents and addresses stay as they are. A decode step streams
    every weight from memory, and fewer TLB misses made it faster on our 2-core CPU (a VM). First the
    whole pages around the range, shared with whatever lies beside it (a 1.8 MB weight is smaller than
    a page); where part of that is not mapped the call fails, so then the whole pages inside the range
    alone. Where the call is unknown or refused, nothing changes. Returns whether a call succeeded."""
    if LIBC is None or not USE_HUGE_PAGES:
        return False
    outer = (ptr // HUGE_PAGE * HUGE_PAGE, -(-(ptr + nbytes) // HUGE_PAGE) * HUGE_PAGE)
    inner = (-(-ptr // HUGE_PAGE) * HUGE_PAGE, (ptr + nbytes) // HUGE_PAGE * HUGE_PAGE)
    return any(hi > lo and LIBC.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MADV_COLLAPSE) == 0
               for lo, hi in (outer, inner))  # any() stops at the first that succeeds


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


class KVCache:
    """Keys and values of every layer for positions 0..pos-1, in buffers allocated once at the
    model's full context: (n_layer, B, n_head, block_size, head_size) each. It also runs the model's
    linear layers during generation (see `linear`)."""

    def __init__(self, config, batch_size):
        # one position more than any view of them: a compiled step never meets the full length as a special case
        self.shape = (config.n_layer, batch_size, config.n_head, config.block_size + 1, config.n_embd // config.n_head)
        self.k = self.v = None  # allocated at the first store, in the dtype the layers produce (autocast)
        self.pos = 0  # position of the first token of the forward pass in progress; set by the caller
        self.mask = None  # (T, pos + T): -inf at the keys each query must not see, else 0; set at layer 0
        self.packed = {}  # layer -> its weight in oneDNN's layout (see pack)
        self.screen = None  # (the head's table in float16, its longest row's norm, a buffer): greedy_logits

    def store(self, layer, k, v):
        """Write this pass's keys/values (B, n_head, T, hs) at pos..pos+T-1 and return views of all
        positions 0..pos+T-1."""
        if self.k is None:  # one buffer each, seen as a view per layer
            self.k = torch.zeros(self.shape, device=k.device, dtype=k.dtype).unbind(0)
            self.v = torch.zeros(self.shape, device=v.device, dtype=v.dtype).unbind(0)
        T, end = k.size(2), self.pos + k.size(2)
        if layer == 0:
            self.mask = torch.full((T, end), float("-inf"), device=k.device, dtype=k.dtype).triu_(self.pos + 1)
        self.k[layer].narrow(2, self.pos, T).copy_(k)
        self.v[layer].narrow(2, self.pos, T).copy_(v)
        return self.k[layer].narrow(2, 0, end), self.v[layer].narrow(2, 0, end)

    def pack(self, model, greedy=False):
        """On CPU in float32, reorder the weights of every block's linear layers into oneDNN's layout
        once per call (same numbers as the plain layout, read faster), then give them huge pages.
        greedy: greedy decoding of one row; also make the float16 copy of the head's table that
        greedy_logits screens with (with more rows the float16 product is slower than the table)."""
        w = model.lm_head.weight
        plain = w.is_cpu and w.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
        if plain and greedy and SCREEN_OK and w.size(0) >= SCREEN_FROM and w.size(1) <= 20480 \
                and model.lm_head.bias is None:
            top_norm = w.detach().norm(dim=1).max().item()  # bounds every weight too; nan if one is
            if top_norm < 65504:  # else a weight may be beyond float16's range: no screen
                n, rows = self.slabs(w.size(0))  # the approximations' buffer: n + 1 whole slabs
                approx = torch.full((1, (n + 1) * rows), float("-inf"), dtype=torch.half)
                self.screen = w.detach().half(), top_norm, approx
        if ONEDNN and plain:
            for layer in model.transformer.h.modules():
                if isinstance(layer, torch.nn.Linear):
                    self.packed[layer] = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), PACK_HINT)
            if hasattr(torch.ops.mkldnn, "data_ptr"):  # once all are placed: only then are their pages whole
                for packed in self.packed.values():
                    huge_pages(torch.ops.mkldnn.data_ptr(packed), torch.ops.mkldnn._nbytes(packed))
        if w.is_cpu and self.screen is None:  # the head's table streams every token too (screened: its copy)
            huge_pages(w.data_ptr(), w.nbytes)

    def linear(self, layer, x):
        """layer(x), through oneDNN when pack() reordered its weight (row-count-proof from 2 rows)."""
        w = self.packed.get(layer)
        return layer(x) if w is None else torch.ops.mkldnn._linear_pointwise(x, w, layer.bias, "none", [], "")

    @staticmethod
    def logits(lm_head, x):
        """lm_head(x) for the last positions x (B, n_embd). On CPU the vocabulary is cut into slabs
        of rows and run as one batched product: the slabs spread over all cores and the table streams
        at about the speed of a plain read, where one product over the whole table reaches ~60-70% of
        it. Both paths call this with the same rows, so it needs no row-count property."""
        if not x.is_cpu or lm_head.bias is not None:
            return lm_head(x)
        w, (n, rows) = lm_head.weight, KVCache.slabs(lm_head.weight.size(0))
        split = n * rows  # a remainder of fewer than n rows runs on its own
        y = torch.bmm(w[:split].view(n, rows, -1), x.t().expand(n, -1, -1)).view(split, -1).t()
        return y if split == w.size(0) else torch.cat((y, F.linear(x, w[split:])), dim=1)

    @staticmethod
    def slabs(vocab_size):
        """(number of slabs, rows in each) for the head's batched product."""
        n = max(HEAD_SLABS, torch.get_num_threads(), -(-vocab_size // SLAB_ROWS))
        return n, vocab_size // n

    def greedy_logits(self, lm_head, x, vocab_limit=None):
        """Logits of one row for an argmax: the same bits as `logits` in every slab of the vocabulary
        that can hold the largest, -inf in the others; greedy picks the same id while most of the
        table is read in float16. Rounding x and the weights to float16 (u = 2**-11), adding in
        float32 and rounding the sum to float16 puts each approximate logit within
        (3u + 2C * 2**-24) |x| |w_r| + 2**-25 (|x|_1 + |w_r|_1 + 1) of the exact one, C being the
        width; `slack` is more than that for every r while C <= 20480. A slab whose largest
        approximation is more than twice that below the top one can hold neither the largest logit
        nor a tie. The others run exactly, each as a batch of two copies of itself: the same bits as in
        the full product (tests check it). Where too many are left to gain (a near tie across
        the vocabulary), the screen is switched off for the rest of the call."""
        if self.screen is None:
            return self.logits(lm_head, x)
        half, top_norm, approx = self.screen
        w, V, (n, rows) = lm_head.weight, lm_head.weight.size(0), self.slabs(lm_head.weight.size(0))
        x_norm = x.norm().item()
        torch.mm(x.half(), half.t(), out=approx[:, :V])  # past V: -inf, so the remainder is slab n
        if vocab_limit is not None and vocab_limit < V:
            approx[:, vocab_limit:V] = float("-inf")
        tops = approx.view(n + 1, rows).amax(dim=1).tolist()
        slack = 2**-8 * x_norm * top_norm + 2**-24 * (x.size(1)**0.5 * (x_norm + top_norm) + 1)
        cut = max(tops) - 2 * slack
        if not math.isfinite(cut) or any(top != top or top == math.inf for top in tops):
            return self.logits(lm_head, x)  # x, or a logit, beyond float16's range
        need = [j for j, top in enumerate(tops) if top >= cut]
        if 8 * len(need) > n:  # the screen and the slabs would cost about as much as the table
            self.screen = None
            return self.logits(lm_head, x)
        out = x.new_full((1, V), float("-inf"))
        for j in need:
            if j == n:
                out[:, n * rows:] = F.linear(x, w[n * rows:])
            else:  # twice in one batch: a batch of one runs another kernel, with other bits
                slab = w[j * rows:(j + 1) * rows].expand(2, rows, -1)
                out[:, j * rows:(j + 1) * rows] = torch.bmm(slab, x.t().expand(2, -1, -1))[0].t()
        return out


def compile_step(model, device, log=print, on_cpu=False):
    """A torch.compile'd model.hidden_states for the decode steps on CUDA (on CPU only with on_cpu:
    the eager step is already memory-bound there, so compiling only costs start-up time), else None.
    Compiled kernels fuse and round differently: exact equality with the (eager) reference holds only
    without it. Inductor compiles at the first call, so that is where a broken toolchain shows: the
    step returned falls back to eager for good then, with a note, rather than end the generation."""
    from runtime import compile_problem
    if torch.device(device).type != "cuda" and not on_cpu:
        return None
    problem = compile_problem(str(device))
    if problem:
        log(f"note: decoding without torch.compile: {problem}")
        return None
    # dynamic: one graph for every cache length (the cache's buffers are longer than any view of
    # them, so no length is a special case that would recompile mid-generation)
    compiled = [torch.compile(model.hidden_states, dynamic=True)]

    def step(idx, cache):
        if compiled:
            try:
                return compiled[0](idx, cache)
            except Exception as e:  # noqa: BLE001 (an inductor/Triton failure; the eager step redoes it)
                compiled.clear()
                first_line = (str(e).strip().splitlines() or [""])[0][:160]
                log(f"note: decoding without torch.compile ({type(e).__name__}: {first_line})")
        return model.hidden_states(idx, cache)
    return step


@torch.inference_mode()  # a little less bookkeeping per op than no_grad; generate returns a normal tensor
def stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, vocab_limit=None,
           generator=None, use_cache=True, step_fn=None, logits_out=None):
    """Yield the next ids (B, 1) one step at a time; `generate` collects them. step_fn replaces
    model.hidden_states for decode steps (see compile_step); logits_out, a list, receives each
    step's logits (B, V) (bench.py compares the paths by them where kernels differ)."""
    if max_new_tokens <= 0:
        return
    config = model.config
    B = idx.size(0)
    cache = KVCache(config, B)  # fresh each call, with its reordered weights: follows any change to them
    rows, cached = DECODE_ROWS, 0  # cached: positions whose keys/values in the cache are valid for ctx
    ctx = idx[:, -config.block_size:]
    greedy = use_cache and B == 1 and (temperature == 0 or top_k == 1)
    if step_fn is None:  # a compiled step chooses its own kernels (inductor cannot lower oneDNN's packed ones)
        cache.pack(model, greedy)
    for _ in range(max_new_tokens):
        T = ctx.size(1)
        if use_cache and FULL_UP_TO < T <= config.block_size and cached >= T - rows:
            cache.pos = T - rows  # decode: re-run the last `rows` positions over the cached ones
            h = (step_fn or model.hidden_states)(ctx[:, -rows:], cache)
        else:  # the reference every step; the cached path's prefill, short contexts and past block_size
            cache.pos = 0
            h = model.hidden_states(ctx[:, -config.block_size:], cache)
        cached = min(T, config.block_size)
        x = h[:, -1, :].clone()  # clone: same alignment in both paths
        logits = cache.greedy_logits(model.lm_head, x, vocab_limit) if greedy else cache.logits(model.lm_head, x)
        if logits_out is not None:
            logits_out.append(logits)
        next_id = sample_next(logits, temperature, top_k, top_p, generator, vocab_limit)
        ctx = torch.cat((ctx, next_id), dim=1)[:, -(config.block_size + 1):]
        yield next_id


def generate(model, idx, max_new_tokens, **kwargs):
    """idx (B, T) followed by max_new_tokens new ids; keyword arguments as for `stream`."""
    new = list(stream(model, idx, max_new_tokens, **kwargs))
    return torch.cat([idx] + new, dim=1)
