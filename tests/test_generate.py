"""The KV-cache engine: cached generation equals the full-recompute reference bit for bit; the
sampling helper's top-k/top-p/temperature rules; sample.py's streaming and interactive mode."""
import ctypes
import os
import re
import subprocess
import sys

import pytest
import torch

import engine
from conftest import REPO, run_script
from model import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def all_threads(one_thread):
    torch.set_num_threads(os.cpu_count() or 1)  # one_thread puts the count back afterwards


def tiny(vocab_size=65, block_size=24, n_embd=32, n_head=2, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=n_head, n_embd=n_embd, block_size=block_size,
                         vocab_size=vocab_size, bias=True)).eval()


def run(model, idx, n, use_cache, seed=1, **kw):
    """Generated ids and the logits every step sampled from."""
    seen = []
    real = engine.sample_next

    def spy(logits, *args):
        seen.append(logits.clone())
        return real(logits, *args)

    engine.sample_next = spy
    try:
        out = model.generate(idx, n, use_cache=use_cache, generator=torch.Generator().manual_seed(seed), **kw)
    finally:
        engine.sample_next = real
    return out, seen


CASES = {  # (B, prompt length, new tokens, vocab, sampling); block_size is 24
    "greedy": (1, 5, 15, 65, dict(temperature=0)),
    "top_k=1": (1, 3, 15, 65, dict(temperature=1.0, top_k=1)),
    "sampled": (1, 4, 16, 65, dict(temperature=1.0)),
    "top_k_top_p": (1, 20, 4, 65, dict(temperature=0.8, top_k=20, top_p=0.9)),
    "batched": (3, 6, 14, 65, dict(temperature=1.0, top_p=0.95)),
    "past_block_size": (2, 10, 40, 65, dict(temperature=1.0, top_k=30)),
    "long_prompt": (1, 30, 5, 65, dict(temperature=0)),
    "bpe_vocab": (2, 8, 20, 50304, dict(temperature=1.0, top_k=200, vocab_limit=50257)),
    "bpe_greedy": (1, 8, 20, 50304, dict(temperature=0, vocab_limit=50257)),  # the float16 screen
}


@pytest.mark.parametrize("case", list(CASES))
def test_cached_equals_reference_bit_for_bit(case):
    B, T, n, vocab, kw = CASES[case]
    model = tiny(vocab_size=vocab)
    idx = torch.randint(0, min(vocab, 50257), (B, T), generator=torch.Generator().manual_seed(2))
    fast, fast_logits = run(model, idx, n, use_cache=True, **kw)
    ref, ref_logits = run(model, idx, n, use_cache=False, **kw)
    assert fast.shape == (B, T + n) and torch.equal(fast[:, :T], idx)
    assert torch.equal(fast, ref)
    assert len(fast_logits) == len(ref_logits) == n
    screened = case == "bpe_greedy" and engine.SCREEN_OK  # -inf in the slabs that cannot hold the top
    for step, (a, b) in enumerate(zip(fast_logits, ref_logits)):
        kept = torch.isfinite(a) if screened else torch.ones_like(a, dtype=torch.bool)
        assert torch.equal(a[kept], b[kept]), f"step {step}: logits differ by {(a - b)[kept].abs().max().item()}"
        assert kept.float().mean() < (0.2 if screened else 2)  # the screen kept a few slabs, not the table
    if "vocab_limit" in kw:
        assert (fast < kw["vocab_limit"]).all()


def test_cached_equals_reference_with_wide_heads_on_all_threads(all_threads):
    """Head size 64 (as GPT-2's) and the machine's thread count, as bench.py and sample.py run;
    past block_size too. Logits bit for bit at every step."""
    torch.manual_seed(4)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=128, block_size=48, vocab_size=300)).eval()
    idx = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(6))
    fast, fast_logits = run(model, idx, 60, use_cache=True, temperature=1.0, top_k=50)
    ref, ref_logits = run(model, idx, 60, use_cache=False, temperature=1.0, top_k=50)
    assert torch.equal(fast, ref)
    for step, (a, b) in enumerate(zip(fast_logits, ref_logits)):
        assert torch.equal(a, b), f"step {step}: logits differ by {(a - b).abs().max().item()}"
    fast[0, 0] = 1  # an ordinary tensor, not an inference-mode one: it can be edited in place


def test_reference_agrees_with_the_plain_forward():
    """The reference is a real full recompute: its logits are model(context)'s, to rounding."""
    model = tiny()
    idx = torch.randint(0, 65, (2, 3), generator=torch.Generator().manual_seed(5))
    out, seen = run(model, idx, 30, use_cache=False, temperature=1.0)  # 33 > block_size 24: crops too
    with torch.no_grad():
        for step, logits in enumerate(seen):
            ctx = out[:, :3 + step][:, -model.config.block_size:]
            expected, _ = model(ctx)
            torch.testing.assert_close(logits, expected[:, -1], rtol=0, atol=1e-5)


def test_kv_cache_chunks_match_full_forward():
    """Feeding a sequence through the cache in pieces (prefill, 1-token and 3-token steps) gives the
    full forward's hidden states: the decode mask is aligned bottom-right and positions continue."""
    for use_sdpa in (True, False):
        model = tiny()
        for block in model.transformer.h:
            block.attn.use_sdpa = use_sdpa
        idx = torch.randint(0, 65, (2, 20), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            full = model.hidden_states(idx)
            cache = engine.KVCache(model.config, batch_size=2)
            pieces = []
            for start, end in [(0, 7), (7, 8), (8, 11), (11, 12), (12, 20)]:
                cache.pos = start
                pieces.append(model.hidden_states(idx[:, start:end], cache))
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="longer than block_size"):
            cache.pos = 20
            model.hidden_states(idx[:, :5], cache)


def test_generate_uses_current_weights():
    """The reordered weights are rebuilt per call: changing the weights changes the output."""
    model = tiny()
    idx = torch.zeros(1, 1, dtype=torch.long)
    before = model.generate(idx, 5, temperature=0)
    with torch.no_grad():
        model.transformer.wte.weight[7] += 50.0 * model.transformer.ln_f.bias.sign() + 5.0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)  # every hidden state is all-ones: token 7 wins
    after = model.generate(idx, 5, temperature=0)
    assert not torch.equal(before, after) and (after[0, 1:] == 7).all()
    assert torch.equal(after, model.generate(idx, 5, temperature=0, use_cache=False))


def test_pack_reorders_the_blocks_in_float32_on_cpu_only():
    model = tiny()

    def packed():
        cache = engine.KVCache(model.config, 1)
        cache.pack(model)
        return set(cache.packed)

    linears = {m for m in model.transformer.h.modules() if isinstance(m, torch.nn.Linear)}
    assert packed() == (linears if engine.ONEDNN else set())  # not the head: see KVCache.logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert packed() == set()
    model.to(torch.bfloat16)
    assert packed() == set()


def anon_huge_kb(ptr):
    """AnonHugePages of the mapping holding address ptr, from /proc/self/smaps."""
    inside = False
    for line in open("/proc/self/smaps"):
        first = line.split(maxsplit=1)[0]
        if not first.endswith(":"):  # a mapping's header, "start-end perms ...", not a "Field:" line
            lo, hi = (int(a, 16) for a in first.split("-"))
            inside = lo <= ptr < hi
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def test_huge_pages_changes_no_numbers():
    """madvise(MADV_COLLAPSE) only moves memory onto 2 MB pages; any range, aligned or not, is fine."""
    t = torch.randn(3 << 20)  # 12 MB: several whole huge pages
    before = t.clone()
    for start, count in ((0, t.numel()), (1, 5), (12345, 1 << 20)):
        engine.huge_pages(t.data_ptr() + 4 * start, 4 * count)
    assert torch.equal(t, before)


def test_huge_pages_backs_a_tensor_alone_in_its_mapping():
    """A large tensor gets a mapping of its own, so the whole pages around it are partly unmapped:
    the pages inside it must still be collapsed (the first version of huge_pages silently was not)."""
    t = torch.randn(4 << 20)  # 16 MB
    before = t.clone()
    page = -(-t.data_ptr() // engine.HUGE_PAGE) * engine.HUGE_PAGE  # the first whole 2 MB page inside t
    kernel_can = engine.LIBC is not None and engine.LIBC.madvise(
        ctypes.c_void_p(page), ctypes.c_size_t(engine.HUGE_PAGE), engine.MADV_COLLAPSE) == 0  # Linux 6.1+
    assert engine.huge_pages(t.data_ptr(), t.nbytes) == kernel_can
    if kernel_can:
        assert anon_huge_kb(t.data_ptr()) >= 12 << 10  # at least 6 of its 7 whole 2 MB pages, not just the probed one
    assert torch.equal(t, before)


def screened_head(vocab_size=8229, n_embd=32):
    """A model with a big vocabulary (17 slabs of 484 rows and a remainder of 1, on up to 17
    threads) and a KV cache whose head screens greedy steps, with its weights set by `edit`."""
    model = tiny(vocab_size=vocab_size, n_embd=n_embd)
    cache = engine.KVCache(model.config, 1)

    def edit(change=None):
        with torch.no_grad():
            if change:
                change(model.lm_head.weight)
        cache.screen = None
        cache.pack(model, greedy=True)
        return model.lm_head, cache
    return edit


def greedy_both(lm_head, cache, x, vocab_limit=None):
    """(screened logits, full logits, their greedy ids) for one row x."""
    with torch.inference_mode():
        fast, full = cache.greedy_logits(lm_head, x, vocab_limit), cache.logits(lm_head, x)
    pick = [engine.sample_next(t, temperature=0, vocab_limit=vocab_limit).item() for t in (fast, full)]
    return fast, full, pick


def test_float16_products_add_in_float32_where_the_screen_runs():
    """The premise of the screen's error bound (see KVCache.greedy_logits)."""
    lm_head, cache = screened_head()()
    assert (cache.screen is not None) == engine.SCREEN_OK
    if cache.screen is None:
        return
    w = torch.ones(2, 384, dtype=torch.float16)
    w[:, 0] = 2048  # 2048 + 383 ones: 2431 in float32, rounded to 2432; adding in float16 loses ones
    assert torch.mm(torch.ones(1, 384, dtype=torch.float16), w.t()).tolist() == [[2432, 2432]]
    half, top_norm, _ = cache.screen
    assert top_norm == lm_head.weight.norm(dim=1).max().item()
    for scale in (1e-6, 1.0, 300.0):
        x = torch.randn(1, 32, generator=torch.Generator().manual_seed(1)) * scale
        approx = torch.mm(x.half(), half.t()).float()  # as greedy_logits computes it
        bound = 3 * 2**-11 * x.norm() * lm_head.weight.norm(dim=1) + 2**-20  # far under the slack
        assert ((approx - x @ lm_head.weight.t()).abs() <= bound).all()


def test_greedy_screen_recomputes_every_slab_bit_for_bit():
    """Whichever slab holds the top logit (and the one-row remainder), greedy_logits returns it with
    the full product's bits, -inf in most of the table, and the same greedy id."""
    edit = screened_head()
    lm_head, cache = edit()
    if cache.screen is None:
        return
    n, rows = engine.KVCache.slabs(lm_head.weight.size(0))
    assert n * rows < lm_head.weight.size(0)
    for top in [j * rows + 7 for j in range(n)] + [n * rows]:
        lm_head, cache = edit(lambda w: w[top].mul_(4))  # the longest row: x along it makes it the top
        fast, full, pick = greedy_both(lm_head, cache, lm_head.weight[top:top + 1].detach())
        kept = torch.isfinite(fast)
        assert pick == [top, top] and torch.equal(fast[kept], full[kept]) and kept.sum() <= 2 * rows
    assert cache.screen is not None


def test_greedy_screen_settles_near_ties_exactly():
    """Rows equal in float16 and tied (or 2**-20 apart) in float32, in distant slabs: the screen keeps
    both slabs and the exact logits decide, lowest id first on a tie, as argmax does on the table."""
    edit = screened_head()
    last = edit()[0].weight.size(0) - 1
    for a, b, nudge in ((5, last, 1.0), (last, 5, 1.0), (5, 4000, 1 + 2**-20), (4000, 5, 1 + 2**-20)):
        def change(w):
            w[b] = w[a] * nudge
        lm_head, cache = edit(change)
        if cache.screen is None:
            return
        x = lm_head.weight[a:a + 1].detach() * 50
        fast, full, pick = greedy_both(lm_head, cache, x)
        want = min(a, b) if nudge == 1.0 else b
        assert pick == [want, want] and torch.isfinite(fast[0, [a, b]]).all()
    g = torch.Generator().manual_seed(3)
    for trial in range(30):  # b within float16's rounding of a: their approximations often rank wrongly
        noise = (torch.rand(32, generator=g) * 2 - 1) * 2**-10

        def change(w):
            w[last] = w[5] * (1 + noise)
        lm_head, cache = edit(change)
        x = lm_head.weight[5:6].detach() * 50 + torch.randn(1, 32, generator=g)
        fast, full, pick = greedy_both(lm_head, cache, x)
        assert pick[0] == pick[1] and torch.equal(fast[0, [5, last]], full[0, [5, last]])


def test_greedy_screen_falls_back_to_the_whole_table():
    edit = screened_head()
    lm_head, cache = edit(lambda w: w[3, 0].fill_(1e5))  # beyond float16's range: no screen at all
    assert cache.screen is None
    lm_head, cache = edit(lambda w: w[3, 0].fill_(0.0))
    x = torch.randn(1, 32, generator=torch.Generator().manual_seed(2))
    x[0, 4] = 1e5  # x beyond float16's range: this step reads the whole table
    fast, full, pick = greedy_both(lm_head, cache, x)
    assert torch.equal(fast, full) and cache.screen is not None
    fast, full, pick = greedy_both(lm_head, cache, lm_head.weight[8000:8001].detach() * 100, vocab_limit=7000)
    assert pick[0] == pick[1] < 7000  # the banned top id neither wins nor sets the cut
    lm_head, cache = edit(lambda w: w[::97].copy_(w[0]))  # a tie spread over every slab
    fast, full, pick = greedy_both(lm_head, cache, lm_head.weight[:1].detach() * 100)
    assert torch.equal(fast, full) and pick == [0, 0]
    assert cache.screen is None  # and no more screening for the rest of this call


def test_bench_generate_mode_times_both_paths_and_checks_tokens(tmp_path):
    args = ["--mode=generate", "--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32",
            "--block_size=48", "--new_tokens=40", "--steps=2"]  # 16 + 40 > 48: slides the context too
    for extra in ([], ["--huge_pages=False", "--reference=False"]):
        out = run_script("bench.py", *args, *extra, cwd=tmp_path).stdout
        assert re.search(r"cached: [\d.]+ s, [\d.]+ ms/token", out)
        assert bool(re.search(r"speedup [\d.]+x .*identical tokens: True", out)) == (extra == [])


# ---- sample_next on hand-made logits ------------------------------------------------------------

PROBS = torch.tensor([[0.05, 0.5, 0.15, 0.3]])  # ranked: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)


def draws(n=400, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    logits = PROBS.log().repeat(n, 1)
    return set(engine.sample_next(logits, generator=g, **kw).flatten().tolist())


def test_sample_next_greedy_and_top_k():
    assert engine.sample_next(PROBS.log(), temperature=0).item() == 1
    assert draws(temperature=1.0) == {0, 1, 2, 3}
    assert draws(top_k=1) == {1}
    assert draws(top_k=2) == {1, 3}
    assert draws(top_k=3, temperature=5.0) == {1, 2, 3}
    assert draws(top_k=0) == {0, 1, 2, 3}  # 0 means no top-k, as in sample.py


def test_sample_next_top_k_draws_among_exactly_k_in_proportion():
    ties = torch.tensor([[5.0, 5.0, 5.0, 1.0]]).repeat(3000, 1)
    g = torch.Generator().manual_seed(1)
    ids = engine.sample_next(ties, top_k=2, generator=g).flatten()
    assert len(set(ids.tolist())) == 2 and 3 not in ids.tolist()  # 2 of the 3 tied ids, never more
    ids = engine.sample_next(PROBS.log().repeat(20000, 1), top_k=2, generator=g).flatten()
    assert abs((ids == 1).float().mean().item() - 0.5 / 0.8) < 0.02  # renormalised over the kept two
    state = g.get_state()  # greedy draws nothing; a top_k beyond the vocabulary keeps it all
    assert engine.sample_next(PROBS.log().repeat(5, 1), top_k=1, generator=g).flatten().tolist() == [1] * 5
    assert torch.equal(state, g.get_state())
    assert draws(top_k=99, top_p=0.96) == {0, 1, 2, 3} and draws(top_k=99) == {0, 1, 2, 3}


@pytest.mark.parametrize("top_p, kept", [(0.3, {1}), (0.5, {1}), (0.51, {1, 3}), (0.8, {1, 3}),
                                         (0.81, {1, 2, 3}), (0.96, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3})])
def test_sample_next_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    assert draws(top_p=top_p) == kept


def test_sample_next_top_p_renormalises_what_is_kept():
    g = torch.Generator().manual_seed(0)
    ids = engine.sample_next(PROBS.log().repeat(20000, 1), top_p=0.8, generator=g).flatten()
    share = (ids == 1).float().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.02  # 0.625 of the kept mass


def test_sample_next_vocab_limit_generator_and_errors():
    logits = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    assert engine.sample_next(logits, temperature=0, vocab_limit=2).item() in (0, 1)
    assert draws(vocab_limit=2) == {0, 1}
    before = torch.get_rng_state()
    a = engine.sample_next(PROBS.log().repeat(50, 1), generator=torch.Generator().manual_seed(4))
    b = engine.sample_next(PROBS.log().repeat(50, 1), generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and torch.equal(before, torch.get_rng_state())
    # top_p=1 and top_k=None are "off": the same draws as plain sampling
    c = engine.sample_next(PROBS.log().repeat(50, 1), top_p=1.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, c)
    for bad in (dict(top_p=0.0), dict(top_p=1.5), dict(temperature=-1.0)):
        with pytest.raises(ValueError):
            engine.sample_next(PROBS.log(), **bad)


def test_compile_step_stays_off_on_cpu():
    assert engine.compile_step(tiny(), "cpu", log=lambda msg: pytest.fail(msg)) is None


# ---- sample.py --------------------------------------------------------------------------------

class Chunks:
    def __init__(self):
        self.parts = []

    def write(self, text):
        self.parts.append(text)

    def flush(self):
        pass


def test_text_stream_holds_back_split_characters():
    import tiktoken
    from sample import TextStream, Tokenizer
    tok = Tokenizer()
    ids = tiktoken.get_encoding("gpt2").encode("日本語 ok 🙂🙂 end")
    assert sum("\ufffd" in tok.decode([i]) for i in ids) >= 6  # characters split across tokens
    out = Chunks()
    stream = TextStream(tok, ids[:1], out)
    stream.add([])
    for i in ids[1:]:
        stream.add([i])
    stream.add([], final=True)
    assert "".join(out.parts) == "日本語 ok 🙂🙂 end"
    assert len(out.parts) > 3 and not any("\ufffd" in p for p in out.parts)


@pytest.fixture
def char_ckpt(tmp_path):
    """A tiny char-level checkpoint in out/ckpt.pt, as train.py writes it."""
    from checkpoint import save_checkpoint
    itos = sorted(set("First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\n"))
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=24, bias=True, vocab_size=len(itos), dropout=0.0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**args))
    os.makedirs(tmp_path / "out")
    save_checkpoint({"model": model.state_dict(), "model_args": args, "iter_num": 0, "best_val_loss": 9.0,
                     "config": {}, "vocab": {"vocab_size": len(itos), "itos": itos}}, tmp_path / "out" / "ckpt.pt")
    return str(tmp_path / "out"), itos


def test_sample_stream_equals_batch_print_and_reference(tmp_path, char_ckpt):
    out_dir, itos = char_ckpt
    common = [f"--out_dir={out_dir}", "--device=cpu", "--start=All:", "--num_samples=2", "--max_new_tokens=40",
              "--top_k=10", "--top_p=0.9", "--seed=3"]
    streamed = run_script("sample.py", *common, cwd=tmp_path).stdout
    printed = run_script("sample.py", *common, "--stream=False", cwd=tmp_path).stdout
    reference = run_script("sample.py", *common, "--use_cache=False", "--stream=False", cwd=tmp_path).stdout
    assert streamed == printed == reference
    samples = streamed.split("---------------\n")
    assert len(samples) == 3 and samples[2] == ""
    assert all(s.startswith("All:") and len(s) == len("All:") + 40 + 1 for s in samples[:2])  # + "\n"
    bad = run_script("sample.py", *common, "--top_p=0", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: top_p must be in (0, 1]")


def test_sample_interactive_prompt_loop(tmp_path, char_ckpt):
    out_dir, itos = char_ckpt
    argv = [sys.executable, os.path.join(REPO, "sample.py"), f"--out_dir={out_dir}", "--device=cpu",
            "--interactive=True", "--num_samples=1", "--max_new_tokens=12", "--temperature=0"]

    def session(stdin):
        res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert res.returncode == 0, res.stderr
        return res.stdout

    out = session("All\nspeak\n\nnever read\n")  # the empty line ends the loop
    replies = out.split("---------------\n")
    assert len(replies) == 3 and replies[0].startswith("> All") and replies[1].startswith("> speak")
    assert replies[2] == "> " and "never" not in out
    assert len(replies[0]) == len("> All") + 12 + 1
    # Ctrl-D (end of input) also ends it; a character outside the vocabulary is reported, not fatal
    again = session("Zed\nAll")
    assert "> error: the prompt has characters outside the model's vocabulary: 'Z'\n" in again
    assert again.count("---------------") == 1
    # greedy, so the same prompt gets the same completion in a new session
    assert again.split("'Z'\n")[1] == replies[0] + "---------------\n> "


def test_sample_bpe_from_hf_directory_streams(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32))
    hf.save_pretrained(tmp_path / "hf")
    common = [f"--init_from={tmp_path / 'hf'}", "--device=cpu", "--start=Hello there", "--num_samples=2",
              "--max_new_tokens=40", "--top_k=0", "--temperature=1.0"]  # 40 + 2 > 32: slides the context
    streamed = run_script("sample.py", *common, cwd=tmp_path).stdout
    assert streamed == run_script("sample.py", *common, "--use_cache=False", "--stream=False", cwd=tmp_path).stdout
    assert streamed.startswith("Hello there") and streamed.count("---------------") == 2
