"""A GPT-2 style language model in one file. Parameter names follow nanoGPT's, so its checkpoints load here
unchanged; OpenAI's GPT-2 weights load through `GPT.from_pretrained` (hf.py)."""
import math
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

    def forward(self, x, kv=None, mask=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if kv is not None:  # generation: this pass's keys and values join the cached ones (engine.py), and
            k, v = kv.store(k, v)  # `mask` lets each query see the cached positions up to its own
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU, so its weights give its exact logits
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.residual_init = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv=None, mask=None):
        x = x + self.attn(self.ln_1(x), kv, mask)
        return x + self.mlp(self.ln_2(x))


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

    def forward(self, idx, targets=None, cache=None):
        """Logits for every position with targets (and the mean cross-entropy), else for the last only.
        With a KV cache (engine.py) idx holds the tokens at positions cache.pos, after the cached ones."""
        B, T = idx.shape
        if cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of length {T} is longer than block_size {self.config.block_size}")
            pos, mask, layers = torch.arange(T, device=idx.device), None, [None] * self.config.n_layer
        else:
            pos, mask, layers = cache.pos, cache.visible(), cache.layers
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block, kv in zip(self.transformer.h, layers):
            x = block(x, kv, mask)
        x = self.transformer.ln_f(x)
        if targets is None:  # inference needs only the next token's logits (a cache holds the head transposed)
            x = x[:, -1:]  # a slice, not x[:, [-1]]: no index tensor to copy to the GPU inside a CUDA graph
            return (self.lm_head(x) if cache is None else x @ cache.head), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context length, e.g. to finetune GPT-2 (1024) with shorter sequences."""
        if block_size > self.config.block_size:
            raise ValueError(f"cannot grow block_size from {self.config.block_size} to {block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, name_or_path, override_args=None):
        """GPT-2's weights ('gpt2'..'gpt2-xl' or a Hugging Face GPT-2 folder); override_args: dropout, block_size."""
        from hf import load_gpt2
        override_args = dict(override_args or {})
        unknown = set(override_args) - {"dropout", "block_size"}
        if unknown:
            raise ValueError(f"from_pretrained can only override dropout and block_size, not {sorted(unknown)}")
        model = load_gpt2(name_or_path, override_args.get("dropout", 0.0))
        if "block_size" in override_args:
            model.crop_block_size(override_args["block_size"])
        return model

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on matrices and embeddings (>= 2-D), none on biases and norms."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        # the fused kernel is fastest on CUDA and, since torch 2.4, also on CPU
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops, seq_len=None):
        """Achieved FLOP/s over peak_flops of a dt-second step of fwdbwd_per_iter sequences (None: no peak)."""
        if not peak_flops or dt <= 0:
            return None
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, seq_len or cfg.block_size
        flops_per_token = 6 * self.get_num_params() + 12 * L * H * Q * T  # PaLM paper, appendix B
        return flops_per_token * T * fwdbwd_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, **options):
        """idx (B, T) followed by max_new_tokens sampled ids. temperature 0 is greedy; top_k keeps the k most
        likely. engine.stream's options: top_p, vocab_limit, generator, use_cache (False: full recompute)."""
        from engine import stream
        new = list(stream(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, **options))
        return torch.cat([idx] + new, dim=1)
