"""The KV-cache engine: cached generation against the full-recompute reference (same tokens, logits
within 1e-5 in float32); the sampling helper's top-k/top-p/temperature rules; sample.py's streaming
and interactive mode."""
import os
import re

import pytest
import torch

import engine
from conftest import TEXT, char_checkpoint, run_script, setup_truncated, tree
from model import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(vocab_size=65, block_size=24, n_embd=32, n_head=2, n_layer=2, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                         vocab_size=vocab_size, bias=True)).eval()


def both(model, idx, n, seed=1, **kw):
    """(cached ids, reference ids), each path's logits at every step compared within 1e-5."""
    runs = []
    for use_cache in (True, False):
        logits = []
        out = model.generate(idx, n, use_cache=use_cache, generator=torch.Generator().manual_seed(seed),
                             logits_out=logits, **kw)
        runs.append((out, logits))
    (fast, fast_logits), (ref, ref_logits) = runs
    assert fast.shape == (idx.size(0), idx.size(1) + n) and torch.equal(fast[:, :idx.size(1)], idx)
    assert len(fast_logits) == len(ref_logits) == n
    for step, (a, b) in enumerate(zip(fast_logits, ref_logits)):
        if not torch.equal(fast[:, :idx.size(1) + step], ref[:, :idx.size(1) + step]):
            break  # the contexts differ from here on (a near tie went the other way)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"step {step}")
    return fast, ref


CASES = {  # (B, prompt length, new tokens, vocab, sampling); block_size is 24
    "greedy, prompt 1": (1, 1, 30, 65, dict(temperature=0)),
    "greedy, batch 3, prompt 16": (3, 16, 12, 65, dict(temperature=0)),
    "prompt of block_size": (3, 24, 6, 65, dict(temperature=0)),
    "top_k=1": (1, 3, 15, 65, dict(temperature=1.0, top_k=1)),
    "sampled": (1, 4, 16, 65, dict(temperature=1.0)),
    "top_k_top_p": (1, 20, 4, 65, dict(temperature=0.8, top_k=20, top_p=0.9)),
    "batched": (3, 6, 14, 65, dict(temperature=1.0, top_p=0.95)),
    "past_block_size": (2, 10, 40, 65, dict(temperature=1.0, top_k=30)),
    "long_prompt": (1, 30, 5, 65, dict(temperature=0)),
    "bpe_vocab": (2, 8, 20, 50304, dict(temperature=1.0, top_k=200, vocab_limit=50257)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cached_equals_reference(case):
    B, T, n, vocab, kw = CASES[case]
    model = tiny(vocab_size=vocab)
    idx = torch.randint(0, min(vocab, 50257), (B, T), generator=torch.Generator().manual_seed(2))
    fast, ref = both(model, idx, n, **kw)
    assert torch.equal(fast, ref)
    if "vocab_limit" in kw:
        assert (fast < kw["vocab_limit"]).all()
    fast[0, 0] = 1  # an ordinary tensor, not an inference-mode one: it can be edited in place


def test_trained_model_greedy_500_tokens_past_block_size():
    """A model that has learnt something has peaked logits, as users' models do: 500 greedy tokens,
    most of them past block_size, are the same, with logits within 1e-5 at every step."""
    itos = sorted(set(TEXT))
    data = torch.tensor([itos.index(c) for c in TEXT])
    model = tiny(vocab_size=len(itos), block_size=32, n_embd=48).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        starts = torch.randint(len(data) - 33, (8,), generator=g)
        batch = torch.stack([data[s:s + 33] for s in starts])
        loss = model(batch[:, :-1], batch[:, 1:])[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 2.0
    fast, ref = both(model.eval(), data[None, :5], 500, temperature=0)
    assert torch.equal(fast, ref)


def test_gpt2_shapes_greedy_past_block_size():
    """GPT-2 124M's widths (768, 12 heads of 64, the 50304-entry head), two layers and a short context."""
    model = tiny(vocab_size=50304, block_size=24, n_embd=768, n_head=12, seed=3)
    idx = torch.randint(0, 50257, (1, 8), generator=torch.Generator().manual_seed(4))
    fast, ref = both(model, idx, 30, temperature=0, vocab_limit=50257)
    assert torch.equal(fast, ref)


@pytest.mark.parametrize("prompt", [1, 16, 24])
@pytest.mark.parametrize("B", [1, 3])
def test_cache_positions_mask_and_writes(prompt, B):
    """Prefill then one-token steps give the full forward's logits at every position; the mask lets a
    query see exactly the positions up to its own; each pass writes only its own positions."""
    model = tiny()
    idx = torch.randint(0, 65, (B, 24), generator=torch.Generator().manual_seed(prompt))
    with torch.no_grad():
        cache = engine.KVCache(model, torch.arange(prompt))
        assert torch.equal(cache.visible(), torch.ones(24, 24, dtype=torch.bool).tril()[:prompt])
        logits = [model(idx[:, :prompt], cache=cache)[0][:, -1]]
        for layer in cache.layers:
            assert layer.k.abs().sum(dim=(0, 1, 3))[prompt:].eq(0).all()  # nothing past the prompt yet
            assert layer.k.abs().sum(dim=(0, 1, 3))[:prompt].gt(0).all()
        cache.pos = torch.tensor([prompt])
        for t in range(prompt, 24):
            assert torch.equal(cache.visible(), torch.arange(24)[None] <= t)
            logits.append(engine.decode(model, idx[:, t:t + 1], cache)[0])
            assert cache.pos.item() == t + 1
        for t, step_logits in enumerate(logits, start=prompt):
            torch.testing.assert_close(step_logits, model(idx[:, :t])[0][:, -1], rtol=0, atol=1e-5)


def test_seeded_sampling_repeats():
    model = tiny()
    idx = torch.zeros(2, 1, dtype=torch.long)
    runs = [model.generate(idx, 30, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(*runs)
    other = model.generate(idx, 30, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)


def test_generate_uses_current_weights():
    """Nothing is kept between calls: changing the weights changes the output."""
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


def test_bench_generate_mode_times_each_variant_and_compares(tmp_path):
    args = ["--mode=generate", "--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32",
            "--block_size=48", "--new_tokens=40", "--steps=2"]  # 16 + 40 > 48: slides the context too
    out = run_script("bench.py", *args, "--num_samples=3", cwd=tmp_path).stdout
    assert re.search(r"reference: [\d.]+ ms/token, [\d,.]+ tokens/s, first call [\d.]+ s", out)
    assert re.search(r"cached: [\d.]+ ms/token, .*x reference's speed; identical tokens in 2 of 2 runs, "
                     r"largest logit gap [\d.e-]+", out)
    out = run_script("bench.py", *args, "--reference=False", cwd=tmp_path).stdout
    assert "reference" not in out and "cached: " in out


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
    from sample import TextStream
    from tokenizer import Tokenizer
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
    assert bad.returncode == 2 and bad.stderr.startswith("error: top_p=0.0 must be in (0, 1]")


def test_sample_interactive_prompt_loop(tmp_path, char_ckpt):
    out_dir, itos = char_ckpt
    def session(stdin):
        return run_script("sample.py", f"--out_dir={out_dir}", "--device=cpu", "--interactive=True",
                          "--num_samples=1", "--max_new_tokens=12", "--temperature=0", cwd=tmp_path, stdin=stdin).stdout

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


@pytest.mark.parametrize("args, setup, message", [
    ([], None, "no checkpoint at"),
    (["--start=FILE:missing_prompt.txt"], char_checkpoint, "missing_prompt.txt"),
    (["--init_from=resume"], setup_truncated, "could not be read"),
])
def test_bad_sampling_input_is_one_line_and_changes_nothing(tmp_path, char_data, args, setup, message):
    if setup:
        setup(str(tmp_path / "out"), char_data[2])
    before = tree(tmp_path)
    res = run_script("sample.py", f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--num_samples=1",
                     "--max_new_tokens=3", *args, cwd=tmp_path, check=False)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert tree(tmp_path) == before


def test_long_prompt_is_cropped_not_an_error(tmp_path, char_data):
    char_checkpoint(str(tmp_path / "out"), char_data[2])
    res = run_script("sample.py", f"--out_dir={tmp_path / 'out'}", "--device=cpu", "--num_samples=1",
                     "--max_new_tokens=3", "--start=" + "Speak, speak. " * 10, cwd=tmp_path)
    assert ("Speak, speak. " * 10)[-16:] in res.stdout  # the prompt's last block_size characters lead
