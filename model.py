"""A GPT-2 style language model in one file.

Parameter names follow nanoGPT's (transformer.wte, transformer.h.0.attn.c_attn, ...), so its
checkpoints load here unchanged. OpenAI's GPT-2 weights load through `GPT.from_pretrained`.
"""
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024   # longest sequence the model attends over (size of the position table)
    vocab_size: int = 50304  # GPT-2's 50257 tokens padded up to a multiple of 64 for speed
    n_layer: int = 12        # transformer blocks
    n_head: int = 12         # attention heads per block
    n_embd: int = 768        # width of the residual stream
    dropout: float = 0.0     # dropout probability; 0 for pretraining, ~0.1-0.2 for small-data finetunes
    bias: bool = True        # biases in Linear and LayerNorm layers, as GPT-2 has; False is a bit faster


def linear(layer, x, kv_cache=None):
    """layer(x). During generation the KV cache may run it with another kernel that gives the same
    numbers to a row however many rows come with it (engine.py)."""
    return layer(x) if kv_cache is None else kv_cache.linear(layer, x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.n_embd % config.n_head != 0:
            raise ValueError(f"n_embd={config.n_embd} must be divisible by n_head={config.n_head}")
        self.n_head, self.dropout = config.n_head, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_init = True  # writes into the residual stream: scaled-down init
        self.resid_dropout = nn.Dropout(config.dropout)
        self.use_sdpa = True  # False selects the plain masked-softmax path, kept as a test oracle

    def forward(self, x, kv_cache=None):
        B, T, C = x.shape
        q, k, v = linear(self.c_attn, x, kv_cache).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.dropout if self.training else 0.0
        if kv_cache is not None:  # generation: x continues the cached positions (see engine.py)
            y = self._attend_cached(q, *kv_cache.store(self.layer_idx, k, v), kv_cache.mask)
        elif self.use_sdpa:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            att = F.softmax(att.masked_fill(future, float("-inf")), dim=-1)
            y = F.dropout(att, p) @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(linear(self.c_proj, y, kv_cache))

    @staticmethod
    def _attend_cached(q, k, v, mask):
        """T queries at the last T of the S cached positions. is_causal=True would align the mask
        top-left (query 0 sees key 0 only), so `mask` (T, S) is bottom-right: 0 where query i may
        see key j (j <= S-T+i), -inf where not, added to the scaled scores in the same product.
        Plain batched matmuls, not SDPA's fused kernel, whose tiling makes a query's numbers depend
        on how many queries run together: here they do not (engine.py)."""
        B, H, T, hs = q.shape
        k, v = k.reshape(B * H, -1, hs), v.reshape(B * H, -1, hs)
        att = torch.baddbmm(mask, q.reshape(B * H, T, hs), k.transpose(1, 2), alpha=1 / math.sqrt(hs))
        return torch.bmm(att.softmax(dim=-1), v).view(B, H, T, hs)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU, so its weights give its exact logits
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_init = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, kv_cache=None):
        return self.dropout(linear(self.c_proj, self.gelu(linear(self.c_fc, x, kv_cache)), kv_cache))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None):
        x = x + self.attn(self.ln_1(x), kv_cache)
        return x + self.mlp(self.ln_2(x), kv_cache)


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied input and output embeddings
        self.apply(self._init_weights)
        for i, block in enumerate(self.transformer.h):
            block.attn.layer_idx = i  # which of a KV cache's per-layer buffers it reads and writes

    def _init_weights(self, module):
        if module is self.lm_head:
            return  # its weight is wte's, initialised once through the embedding
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02
            if getattr(module, "residual_init", False):
                std /= math.sqrt(2 * self.config.n_layer)  # GPT-2: keep the residual sum's variance flat
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def get_num_params(self, non_embedding=True):
        """Parameter count; by default without the position table (the token table is shared with lm_head)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None):
        """Logits for every position with targets (and the mean cross-entropy), else for the last only."""
        x = self.hidden_states(idx)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None  # inference needs only the next token's logits
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def hidden_states(self, idx, kv_cache=None):
        """The final layer norm's output (B, T, n_embd). With a KV cache (engine.py), idx holds the
        tokens at positions kv_cache.pos.. and attends to everything cached before them."""
        B, T = idx.shape
        start = 0 if kv_cache is None else kv_cache.pos
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x, kv_cache)
        return self.transformer.ln_f(x)

    def crop_block_size(self, block_size):
        """Shrink the context length, e.g. to finetune GPT-2 (1024) with shorter sequences."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, name_or_path, override_args=None):
        """Load GPT-2 weights: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl' from the Hugging Face hub,
        or a local directory with a Hugging Face GPT-2 checkpoint (config.json + model.safetensors or
        pytorch_model.bin). override_args may set dropout (and block_size, which crops the model)."""
        override_args = dict(override_args or {})
        unknown = set(override_args) - {"dropout", "block_size"}
        if unknown:
            raise ValueError(f"from_pretrained can only override dropout and block_size, not {sorted(unknown)}")
        hf_config, state = load_hf_gpt2(name_or_path)
        if hf_config.get("n_inner") not in (None, 4 * hf_config["n_embd"]):
            raise ValueError(f"{name_or_path}: n_inner={hf_config['n_inner']} is not 4*n_embd; unsupported")
        if hf_config.get("activation_function", "gelu_new") != "gelu_new":
            raise ValueError(f"{name_or_path}: activation {hf_config['activation_function']} is unsupported (gelu_new only)")
        config = GPTConfig(block_size=hf_config["n_positions"], vocab_size=hf_config["vocab_size"],
                           n_layer=hf_config["n_layer"], n_head=hf_config["n_head"],
                           n_embd=hf_config["n_embd"], bias=True,
                           dropout=override_args.get("dropout", 0.0))
        model = cls(config)
        ours = model.state_dict()
        # Hugging Face's Conv1D layers store (in, out) matrices; our nn.Linear wants (out, in).
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        with torch.no_grad():
            for key, target in ours.items():
                if key == "lm_head.weight":
                    continue  # tied to wte
                if key not in state:
                    raise ValueError(f"{name_or_path}: checkpoint has no weight for '{key}'")
                w = state[key].t() if key.endswith(transposed) else state[key]
                if w.shape != target.shape:
                    raise ValueError(f"{name_or_path}: '{key}' has shape {tuple(w.shape)}, expected {tuple(target.shape)}")
                target.copy_(w)
        if "block_size" in override_args:
            model.crop_block_size(override_args["block_size"])  # raises if it would grow
        return model

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on matrices and embeddings (>= 2-D), none on biases and norms."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        # the fused kernel is fastest on CUDA and, since torch 2.4, also on CPU
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops, seq_len=None):
        """Model FLOPs utilisation of fwdbwd_per_iter sequences of seq_len tokens (default: block_size)
        a step taking dt seconds: achieved FLOP/s over peak_flops (None when the peak is unknown)."""
        if not peak_flops or dt <= 0:
            return None
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, seq_len or cfg.block_size
        flops_per_token = 6 * self.get_num_params() + 12 * L * H * Q * T  # PaLM paper, appendix B
        return flops_per_token * T * fwdbwd_per_iter / dt / peak_flops

    def estimate_memory(self, batch_size, block_size, dtype="float32"):
        """Rough bytes of training memory per process: fp32 weights and gradients, AdamW's two fp32
        moments, and the activations kept for backward over one micro-batch. Per block and token that
        is ~16 values of width n_embd (Korthikanti et al. 2022, less the dropout masks and the attention
        matrix, which fused attention never stores); under 16-bit autocast some of them stay fp32. The
        fp32 log-probabilities come on top, one per token and vocabulary entry, and autocast's 16-bit
        copies of the weights."""
        n = sum(p.numel() for p in self.parameters())
        half = dtype in ("bfloat16", "float16")
        c, tokens = self.config, batch_size * block_size
        activations = tokens * (c.n_layer * 16 * c.n_embd * (2.5 if half else 4) + c.vocab_size * 4) + half * 2 * n
        return {"params": 4 * n, "grads": 4 * n, "optimizer": 8 * n, "activations": int(activations)}

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, vocab_limit=None,
                 generator=None, use_cache=True):
        """Append max_new_tokens sampled tokens to idx (B, T). temperature 0 (or top_k=1) is greedy;
        top_k/top_p trim the distribution; vocab_limit keeps ids below the tokenizer's size.
        use_cache=False re-runs the whole context every step: the reference the KV cache matches
        token for token."""
        from engine import generate
        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        vocab_limit=vocab_limit, generator=generator, use_cache=use_cache)


# Peak dense bf16 tensor-core FLOP/s by GPU name (datasheet figures, no sparsity).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12,
              "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12}


def device_peak_flops(device):
    """Peak FLOP/s of a CUDA device, or None (CPU, MPS, a GPU not in the table): no MFU is better than a wrong one."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if "H100" in name and "PCIe" in name:
        return 756e12
    if ("H100" in name or "H200" in name) and "NVL" in name:  # the PCIe boards' lower clocks
        return 835e12
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


HF_NAMES = {"gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
            "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl"}


def download_hf_gpt2(name):
    """(folder, weights path) of GPT-2 from the Hugging Face hub: the local cache if it has it, else one
    download attempt. Offline, that is one error at once (the hub client would retry for ~25 s)."""
    from huggingface_hub import hf_hub_download
    from configurator import hub_problem
    repo = HF_NAMES[name]
    try:
        return os.path.dirname(hf_hub_download(repo, "config.json", local_files_only=True)), \
            hf_hub_download(repo, "model.safetensors", local_files_only=True)
    except Exception:
        pass  # not cached yet
    try:
        problem = hub_problem()
        if problem:
            raise OSError(problem)
        return os.path.dirname(hf_hub_download(repo, "config.json")), hf_hub_download(repo, "model.safetensors")
    except Exception as e:  # offline, hub down, no disk space: say which and what to do instead
        raise ValueError(f"could not download {name} from the Hugging Face hub ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:120]}); connect once (it is cached after), or pass a "
                         "local directory holding a Hugging Face GPT-2 checkpoint") from None


def load_hf_gpt2(name_or_path):
    """(config dict, state dict without the 'transformer.' prefix) of a Hugging Face GPT-2 checkpoint."""
    if os.path.isdir(name_or_path):
        folder = name_or_path
        files = [f for f in ("model.safetensors", "pytorch_model.bin") if os.path.exists(os.path.join(folder, f))]
        if not os.path.exists(os.path.join(folder, "config.json")) or not files:
            raise ValueError(f"{folder} is not a Hugging Face GPT-2 checkpoint: it needs config.json "
                             "and model.safetensors or pytorch_model.bin")
        weights = os.path.join(folder, files[0])
    elif name_or_path in HF_NAMES:
        folder, weights = download_hf_gpt2(name_or_path)
    else:
        raise ValueError(f"unknown model '{name_or_path}': use one of {', '.join(HF_NAMES)} "
                         "or a directory holding a Hugging Face GPT-2 checkpoint")
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        if not all(isinstance(config.get(k), int) for k in ("n_positions", "vocab_size", "n_layer", "n_head", "n_embd")):
            raise ValueError("it lacks an integer n_positions, vocab_size, n_layer, n_head or n_embd")
        path = weights
        if weights.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(weights)
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # bad JSON, not UTF-8, a truncated or foreign weights file
        reason = (str(e).splitlines() or [""])[0][:200]
        raise ValueError(f"{path} could not be read as part of a GPT-2 checkpoint ({type(e).__name__}: {reason})") from None
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    return config, {"transformer." + k: v for k, v in state.items() if not k.startswith("lm_head")}
