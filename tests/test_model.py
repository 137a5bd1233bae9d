"""Behaviour of model.py on tiny CPU models: attention paths, init, loss, optimizer groups, MFU, sampling."""
import math
import sys

import pytest
import torch
import torch.nn as nn

import model as model_module
from model import GPT, GPTConfig
from runtime import device_peak_flops

VOCAB = 128


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**kw):
    args = dict(block_size=16, vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=64, dropout=0.0, bias=True)
    args.update(kw)
    return GPTConfig(**args)


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(tiny_config(**kw))


def random_batch(seed=1, B=4, T=16, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (B, T), generator=g)
    y = torch.randint(0, vocab, (B, T), generator=g)
    return x, y


def run_both(plain_attention, compute):
    """compute() through SDPA, then through the tests' plain attention (conftest.plain_sdpa)."""
    fused = compute()
    plain_attention()
    return fused, compute()


def test_sdpa_matches_reference_attention_logits_and_grads(plain_attention):
    model = tiny_model()
    model.train()  # dropout is 0, so train mode must still be deterministic
    x, y = random_batch()

    def compute():
        model.zero_grad(set_to_none=True)
        logits, loss = model(x, y)
        loss.backward()
        return logits.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    (l1, loss1, g1), (l0, loss0, g0) = run_both(plain_attention, compute)
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss1, loss0, atol=1e-6, rtol=1e-6)
    assert g1.keys() == g0.keys() and len(g1) > 0
    for name in g1:
        assert g1[name].abs().sum() > 0 or name.endswith("bias"), f"no gradient reached {name}"
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-4, msg=name)


def test_reference_attention_is_causal(plain_attention):
    """Changing a later token must not change earlier positions' logits (either path)."""
    model = tiny_model().eval()
    x, y = random_batch(B=1)
    x2 = x.clone()
    x2[0, 10] = (x2[0, 10] + 1) % VOCAB

    def compute():
        with torch.no_grad():
            return model(x, y)[0], model(x2, y)[0]
    for a, b in run_both(plain_attention, compute):
        torch.testing.assert_close(a[:, :10], b[:, :10], atol=1e-6, rtol=0)
        assert not torch.allclose(a[:, 10:], b[:, 10:], atol=1e-4)


def test_loss_at_init_is_about_log_vocab():
    model = tiny_model().eval()
    x, y = random_batch(B=8)
    with torch.no_grad():
        _, loss = model(x, y)
    assert abs(loss.item() - math.log(VOCAB)) < 0.15, loss.item()


def test_ignore_index_minus_one_is_skipped():
    model = tiny_model().eval()
    x, y = random_batch(B=2)
    masked = y.clone()
    masked[:, 8:] = -1
    with torch.no_grad():
        logits, loss = model(x, masked)
    expected = nn.functional.cross_entropy(logits[:, :8].reshape(-1, VOCAB), y[:, :8].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_tiny_model_overfits_one_batch():
    model = tiny_model()
    model.train()
    x, y = random_batch(B=4, T=16)
    opt = model.configure_optimizers(weight_decay=0.0, learning_rate=3e-3, betas=(0.9, 0.95), device_type="cpu")
    first = None
    for step in range(300):
        _, loss = model(x, y)
        first = loss.item() if first is None else first
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if loss.item() < 0.05:
            break
    assert first > 4.0
    assert loss.item() < 0.1, f"loss still {loss.item():.3f} after {step + 1} steps"


def test_lm_head_and_wte_share_one_tensor_initialised_once(monkeypatch):
    seen = []
    real_normal = torch.nn.init.normal_

    def recording_normal(tensor, *args, **kwargs):
        # only GPT's own init counts, not nn.Embedding/nn.Linear constructors' default init
        if sys._getframe(1).f_code.co_filename == model_module.__file__:
            seen.append(tensor.data_ptr())
        return real_normal(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "normal_", recording_normal)
    model = tiny_model()
    wte = model.transformer.wte.weight
    assert model.lm_head.weight is wte
    assert wte.data_ptr() == model.lm_head.weight.data_ptr()
    assert seen.count(wte.data_ptr()) == 1, "the tied embedding was initialised more than once"
    # every Linear/Embedding weight initialised exactly once
    weights = {m.weight.data_ptr() for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    assert sorted(seen) == sorted(weights)
    # the shared tensor is counted once in the parameters
    assert sum(1 for p in model.parameters() if p is wte) == 1
    assert abs(wte.std().item() - 0.02) < 0.002
    assert abs(model.transformer.wpe.weight.std().item() - 0.02) < 0.004
    # a gradient step through the head moves the embedding (it's one tensor)
    x, y = random_batch(B=1)
    _, loss = model(x, y)
    loss.backward()
    assert wte.grad is not None and model.lm_head.weight.grad is wte.grad


def test_residual_projections_get_scaled_init():
    model = tiny_model(n_layer=2)
    target = 0.02 / math.sqrt(2 * model.config.n_layer)
    residual, plain = [], []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m is not model.lm_head:
            (residual if getattr(m, "residual_init", False) else plain).append((name, m))
            assert torch.all(m.bias == 0), name
    expected = [f"transformer.h.{i}.{part}.c_proj" for i in range(2) for part in ("attn", "mlp")]
    assert sorted(n for n, _ in residual) == expected
    for name, m in residual:
        assert abs(m.weight.std().item() - target) < 0.1 * target, (name, m.weight.std().item())
    assert plain, "expected c_attn and c_fc"
    for name, m in plain:
        assert abs(m.weight.std().item() - 0.02) < 0.002, (name, m.weight.std().item())


def test_inference_forward_returns_last_position_only():
    model = tiny_model().eval()
    x, y = random_batch(B=3, T=11)
    with torch.no_grad():
        full, loss = model(x, y)
        last, none = model(x)
    assert none is None and loss is not None
    assert full.shape == (3, 11, VOCAB)
    assert last.shape == (3, 1, VOCAB)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-6, rtol=0)


def test_forward_longer_than_block_size_raises():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_crop_block_size():
    model = tiny_model().eval()
    x, _ = random_batch(B=2, T=8)
    with torch.no_grad():
        before, _ = model(x, x)
    model.crop_block_size(8)
    assert model.config.block_size == 8
    assert model.transformer.wpe.weight.shape == (8, 64)
    assert any(p is model.transformer.wpe.weight for p in model.parameters())
    with torch.no_grad():
        after, _ = model(x, x)
    torch.testing.assert_close(before, after, atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="grow"):
        model.crop_block_size(16)
    assert model.config.block_size == 8


def test_bias_false_has_no_biases():
    model = tiny_model(bias=False)
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if "bias" in n]
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.LayerNorm)):
            assert m.bias is None
    with_bias = tiny_model(bias=True)
    assert with_bias.get_num_params() > model.get_num_params()
    x, y = random_batch(B=1)
    _, loss = model(x, y)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("bias", [True, False])
def test_configure_optimizers_decays_only_matrices(bias):
    model = tiny_model(bias=bias)
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type="cpu")
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    # count independently from parameter names
    named = dict(model.named_parameters())  # the tied head shows up once, as transformer.wte.weight
    n_layer = model.config.n_layer
    n_matrices = 2 + 4 * n_layer  # wte, wpe, and c_attn/attn.c_proj/c_fc/mlp.c_proj per block
    # LayerNorm weights (and biases), plus the four Linear biases per block
    n_vectors = (2 * n_layer + 1) * (2 if bias else 1) + (4 * n_layer if bias else 0)
    assert len(decay["params"]) == n_matrices
    assert len(no_decay["params"]) == n_vectors
    assert sum(p.numel() for p in decay["params"]) == sum(p.numel() for n, p in named.items()
                                                          if n.endswith("weight") and "ln_" not in n)
    total = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert total == model.get_num_params(non_embedding=False)
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_estimate_mfu():
    model = tiny_model()
    assert model.estimate_mfu(fwdbwd_per_iter=8, dt=0.5, peak_flops=None) is None
    assert device_peak_flops("cpu") is None
    assert device_peak_flops(torch.device("cpu")) is None
    cfg = model.config
    N = model.get_num_params()
    flops_per_iter = (6 * N + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size) * cfg.block_size * 8
    peak = 1e12
    mfu = model.estimate_mfu(fwdbwd_per_iter=8, dt=0.5, peak_flops=peak)
    assert mfu == pytest.approx(flops_per_iter / 0.5 / peak, rel=1e-9)
    assert 0 < mfu < 1
    assert model.estimate_mfu(8, 1.0, peak) == pytest.approx(mfu / 2)
    assert model.estimate_mfu(16, 0.5, peak) == pytest.approx(mfu * 2)


def test_generate_temperature_zero_is_greedy():
    model = tiny_model().eval()
    idx, _ = random_batch(B=2, T=5)
    torch.manual_seed(123)
    out = model.generate(idx, 12, temperature=0)
    torch.manual_seed(456)
    again = model.generate(idx, 12, temperature=0)
    assert torch.equal(out, again)
    assert torch.equal(out[:, :5], idx) and out.shape == (2, 17)
    ctx = idx
    with torch.no_grad():
        for _ in range(12):
            logits, _ = model(ctx, ctx)  # full logits; take the last position by hand
            ctx = torch.cat([ctx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ctx)
    # top_k=1 sampling is greedy too
    assert torch.equal(model.generate(idx, 12, temperature=1.0, top_k=1), out)


def test_generate_with_generator_is_reproducible():
    model = tiny_model().eval()
    idx, _ = random_batch(B=2, T=4)
    a = model.generate(idx, 20, temperature=1.0, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(999)  # the global RNG must not matter
    b = model.generate(idx, 20, temperature=1.0, generator=torch.Generator().manual_seed(7))
    c = model.generate(idx, 20, temperature=1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    state = torch.get_rng_state()
    model.generate(idx, 5, temperature=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(state, torch.get_rng_state()), "generate with a generator consumed the global RNG"


def test_vocab_limit_keeps_ids_below_limit():
    model = tiny_model().eval()
    limit = 100
    with torch.no_grad():  # every final hidden state becomes all-ones, so a token's logit is its row sum
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight[limit:] = 20.0 / model.config.n_embd  # the padded ids dominate (logit 20)
    idx, _ = random_batch(B=4, T=3)
    g = torch.Generator().manual_seed(0)
    unlimited = model.generate(idx, 10, temperature=1.0, generator=g)
    assert (unlimited[:, 3:] >= limit).all(), "the hook should make padded ids win without a limit"
    for kwargs in (dict(temperature=1.0), dict(temperature=2.0, top_k=50), dict(temperature=0)):
        out = model.generate(idx, 30, vocab_limit=limit, generator=torch.Generator().manual_seed(1), **kwargs)
        assert (out[:, 3:] < limit).all(), kwargs


def test_generate_continues_past_block_size():
    model = tiny_model().eval()
    bs = model.config.block_size
    idx, _ = random_batch(B=2, T=4)
    out = model.generate(idx, 2 * bs, temperature=0)
    assert out.shape == (2, 4 + 2 * bs)
    # the last token is the greedy choice given only the last block_size tokens
    with torch.no_grad():
        logits, _ = model(out[:, -bs - 1:-1])
    assert torch.equal(logits[:, -1].argmax(-1), out[:, -1])
    sampled = model.generate(idx, bs + 5, temperature=0.8, top_k=10, generator=torch.Generator().manual_seed(3))
    assert sampled.shape == (2, 4 + bs + 5)
    assert ((sampled >= 0) & (sampled < VOCAB)).all()
