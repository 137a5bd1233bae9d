"""OpenAI's GPT-2 in Hugging Face's format: download it, read it into our names, and export ours to it.
Its four projections are Conv1D, (in, out) matrices where our nn.Linear holds (out, in): CONV1D lists them.
torch is imported where it is used: the data scripts import hub_problem from here."""
import json
import os

from errors import UserError, reason
from safety import atomic_write

NAMES = {"gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
         "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl"}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT2_VOCAB = 50257  # GPT-2's BPE ids; its checkpoints pad nothing
SHAPE = {"block_size": "n_positions", "vocab_size": "vocab_size", "n_layer": "n_layer", "n_head": "n_head",
         "n_embd": "n_embd"}  # our GPTConfig field: its config.json key


def hub_problem():
    """Why the Hugging Face hub can't be reached, or None: one quick check, where its clients retry for ~25 s."""
    import socket
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the proxy may reach what this machine can't: let the client try
    host = constants.ENDPOINT.split("://")[-1].split("/")[0].split(":")[0]
    try:
        socket.create_connection((host, 443), timeout=10).close()
    except OSError as e:
        return f"{host} can't be reached: {e}"
    return None


def download(name):
    """(folder, weights path) of GPT-2 from the hub: the local cache if it has it, else one download attempt."""
    from huggingface_hub import hf_hub_download
    files = ("config.json", "model.safetensors")
    try:
        paths = [hf_hub_download(NAMES[name], f, local_files_only=True) for f in files]
    except Exception:  # not cached yet
        try:
            problem = hub_problem()
            if problem:
                raise OSError(problem)
            paths = [hf_hub_download(NAMES[name], f) for f in files]
        except Exception as e:  # offline, hub down, no disk space: say which and what to do instead
            raise ValueError(f"could not download {name} from the Hugging Face hub ({reason(e, 120)}); connect "
                             "once (it is cached after), or pass a local directory holding a Hugging Face GPT-2 "
                             "checkpoint") from None
    return os.path.dirname(paths[0]), paths[1]


def load_gpt2(name_or_path, dropout=0.0):
    """Our GPT holding the weights of a name in NAMES or of a Hugging Face GPT-2 folder; ValueError if unusable."""
    import torch
    if os.path.isdir(name_or_path):
        folder = name_or_path
        found = [f for f in ("model.safetensors", "pytorch_model.bin") if os.path.exists(os.path.join(folder, f))]
        if not os.path.exists(os.path.join(folder, "config.json")) or not found:
            raise ValueError(f"{folder} is not a Hugging Face GPT-2 checkpoint: it needs config.json "
                             "and model.safetensors or pytorch_model.bin")
        weights = os.path.join(folder, found[0])
    elif name_or_path in NAMES:
        folder, weights = download(name_or_path)
    else:
        raise ValueError(f"unknown model '{name_or_path}': use one of {', '.join(NAMES)} "
                         "or a directory holding a Hugging Face GPT-2 checkpoint")
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        if not all(isinstance(config.get(k), int) for k in SHAPE.values()):
            raise ValueError("it lacks an integer n_positions, vocab_size, n_layer, n_head or n_embd")
        path = weights
        if weights.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(weights)
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # bad JSON, not UTF-8, a truncated or foreign weights file
        raise ValueError(f"{path} could not be read as part of a GPT-2 checkpoint ({reason(e, 200)})") from None
    if config.get("n_inner") not in (None, 4 * config["n_embd"]):
        raise ValueError(f"{name_or_path}: n_inner={config['n_inner']} is not 4*n_embd; unsupported")
    if config.get("activation_function", "gelu_new") != "gelu_new":
        raise ValueError(f"{name_or_path}: activation {config['activation_function']} is unsupported (gelu_new only)")
    from model import GPT, GPTConfig
    model = GPT(GPTConfig(**{ours: config[theirs] for ours, theirs in SHAPE.items()}, bias=True, dropout=dropout))
    state = {"transformer." + k.removeprefix("transformer."): v for k, v in state.items()}
    try:  # the keys and shapes our GPT has, GPT-2's Conv1D matrices transposed; lm_head is wte
        model.load_state_dict({k: state[k].t() if k.endswith(CONV1D) else state[k] for k in model.state_dict()
                               if k != "lm_head.weight"}, strict=False)
    except KeyError as e:
        raise ValueError(f"{name_or_path}: checkpoint has no weight for {e}") from None
    except RuntimeError as e:
        raise ValueError(f"{name_or_path}: {reason(e, 200, last=True)}") from None
    return model


def export(model, folder, force=False):
    """Write model into folder as a Hugging Face GPT-2 checkpoint, each file whole (a non-empty folder: only with
    force). bias=False gets zero biases, which GPT-2 always has; lm_head is wte."""
    import torch
    from safetensors.torch import save
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"export folder '{folder}' is a file; choose another --export_dir")
    if os.path.isdir(folder) and os.listdir(folder) and not force:
        raise UserError(f"export folder '{folder}' is not empty ({', '.join(sorted(os.listdir(folder))[:3])}); "
                        "pass --force=True to write into it, or choose another --export_dir")
    state = {k: (v.t() if k.endswith(CONV1D) else v).detach().cpu().contiguous().clone()
             for k, v in model.state_dict().items() if k != "lm_head.weight"}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and module is not model.lm_head \
                and module.bias is None:
            state[f"{name}.bias"] = torch.zeros(module.weight.shape[0], dtype=module.weight.dtype)
    c = model.config
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_inner": None,
              **{theirs: getattr(c, ours) for ours, theirs in SHAPE.items()},
              "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
              "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
              "initializer_range": 0.02, "scale_attn_weights": True, "tie_word_embeddings": True, "use_cache": True}
    if c.vocab_size >= GPT2_VOCAB:  # GPT-2's <|endoftext|>; a char-level vocabulary has none
        config.update(bos_token_id=GPT2_VOCAB - 1, eos_token_id=GPT2_VOCAB - 1)
    os.makedirs(folder, exist_ok=True)
    weights = save(state, metadata={"format": "pt"})
    atomic_write(os.path.join(folder, "model.safetensors"), lambda f: f.write(weights), size_hint=len(weights))
    text = json.dumps(config, indent=2).encode()
    atomic_write(os.path.join(folder, "config.json"), lambda f: f.write(text))  # last: marks the folder whole
