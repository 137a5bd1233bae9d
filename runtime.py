"""Where the scripts run: device, precision, torch.compile, torchrun's process group, what the GPU can do."""
import gc
import os
import re
from contextlib import nullcontext

import torch

from errors import UserError, reason

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name):
    """'auto' -> the best device here (cuda > mps > cpu); an unavailable device is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    kind = name.split(":")[0]  # torch.device() would raise on a misspelt name
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' is not available: this machine has no usable CUDA GPU; "
                        "use --device=cpu (or --device=auto)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device '{name}' is not available on this machine; use --device=cpu (or --device=auto)")
    if kind not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps")
    return name


def resolve_dtype(name, device):
    """'auto' -> bfloat16 on CUDA GPUs that support it, float16 on older ones, float32 elsewhere."""
    kind = torch.device(device).type
    if name == "auto":
        if kind != "cuda":
            return "float32"
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}': use auto, float32, bfloat16 or float16")
    if name == "float16" and kind != "cuda":
        raise UserError(f"dtype float16 needs a CUDA GPU (its gradient scaler is CUDA-only); "
                        f"on {kind} use --dtype=bfloat16 or --dtype=float32")
    if name == "bfloat16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU does not support bfloat16; use --dtype=float16 or --dtype=float32")
    return name


def autocast(device, dtype):
    """Mixed-precision context for the forward pass (a no-op in float32)."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[dtype])


def maybe_compile(model, enabled, device, log=print, blocks=False):
    """Compile the model in place (its state_dict keeps plain names) when enabled; if a test function fails
    to compile here (no C compiler, no Triton, MPS), leave it eager with one line. blocks: each block alone."""
    if not enabled:
        return False
    try:  # a broken toolchain shows up here, as a reason, not mid-training
        if torch.device(device).type == "mps":
            raise RuntimeError("torch.compile is not supported for mps")
        torch.compile(lambda t: torch.sin(t) * 2 + 1)(torch.ones(8, device=device))
    except Exception as e:
        log(f"warning: running without torch.compile: it failed on a test function ({reason(e)}); "
            "pass --compile=False to silence this")
        return False
    log("compiling the model with torch.compile: the first forward pass waits for it (a minute or more)")
    for module in model.transformer.h if blocks else [model]:
        module.compile()
    return True


def place_model(model, cfg, device, dtype, world_size, log):
    """(the model to train, the plain module) on device, compiled when cfg['compile'], wrapped for several
    processes: FSDP2 when cfg['fsdp'] (each block compiled before sharding: FSDP's hooks break graphs), else DDP."""
    model.to(device)
    if cfg["fsdp"] and world_size > 1:
        maybe_compile(model, cfg["compile"], device, log, blocks=True)
        shard_model(model, dtype)
        return model, model
    maybe_compile(model, cfg["compile"], device, log)
    if world_size == 1:
        return model, model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None), model


# Peak dense bf16 tensor-core FLOP/s by GPU name (datasheet figures, no sparsity), the first match counting:
# the PCIe and NVL boards run at lower clocks.
PEAK_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H200 NVL": 835e12, "H200": 989e12, "H100": 989e12,
              "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12,
              "V100": 125e12, "T4": 65e12}


def device_peak_flops(device):
    """Peak FLOP/s of a CUDA device, or None (CPU, MPS, a GPU not in the table): no MFU is better than a wrong one."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if all(w in name for w in key.split())), None)


def estimate_memory(model, batch_size, block_size, dtype="float32"):
    """Rough training bytes per process: fp32 weights, gradients, AdamW's moments, and one micro-batch's saved
    activations: ~16 n_embd-wide values per block and token (Korthikanti et al. 2022, less what fused attention
    never stores), fp32 log-probabilities, autocast's 16-bit weight copies."""
    n = sum(p.numel() for p in model.parameters())
    half = dtype in ("bfloat16", "float16")
    c, tokens = model.config, batch_size * block_size
    activations = tokens * (c.n_layer * 16 * c.n_embd * (2.5 if half else 4) + c.vocab_size * 4) + half * 2 * n
    return {"params": 4 * n, "grads": 4 * n, "optimizer": 8 * n, "activations": int(activations)}


def first_slurm_host(nodelist):
    """'gpu[07-08,11],cpu1' -> 'gpu07': the first host of a SLURM node list."""
    head = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?", nodelist)
    prefix, ranges = head.group(1), head.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def distributed_env():
    """(rank, local_rank, world_size) from torchrun's variables or srun's (one task per process); None: alone."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"])
    tasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1")))
    if "SLURM_PROCID" not in env or tasks < 2:
        return None
    rank, local_rank = int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0))
    # init_process_group reads these; under srun we set them: the first node of the job hosts rank 0
    nodes = env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "127.0.0.1"))
    env.setdefault("MASTER_ADDR", first_slurm_host(nodes))
    env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    env.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(tasks))
    return rank, local_rank, tasks


def setup_distributed(backend, device):
    """(rank, local_rank, world_size, device), in the process group under torchrun or srun (cuda:LOCAL_RANK)."""
    found = distributed_env()
    if found is None:
        if device.startswith("cuda:"):  # --device=cuda:1: the current device, so kernels and RNG states use it
            torch.cuda.set_device(device)
        return 0, 0, 1, device
    rank, local_rank, world_size = found
    kind = torch.device(device).type
    if kind == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if kind == "cuda" else "gloo"
    if backend == "nccl" and kind != "cuda":
        raise UserError(f"backend nccl needs CUDA GPUs; on {kind} use --backend=gloo (or --backend=auto)")
    # device_id binds NCCL's communicator to this process's GPU at once (no guessing, no extra context)
    torch.distributed.init_process_group(backend=backend, device_id=torch.device(device) if backend == "nccl" else None)
    return rank, local_rank, world_size, device


def agree(value, world_size, device="cpu", any_rank=False):
    """The same value on every process: rank 0's (a decision made from its disk), or with any_rank the
    largest of all ranks' ints, 0 standing for None (e.g. a signal that reached some processes only)."""
    if world_size == 1:
        return value
    if any_rank:
        t = torch.tensor(value or 0, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())
    box = [value]
    torch.distributed.broadcast_object_list(box)
    return box[0]


def teardown_distributed():
    """Leave the process group after main() returned: collecting DDP's and FSDP's references to it now lets
    gloo's threads end while Python is alive, not race the peers' exit (an intermittent SIGABRT)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        gc.collect()


def shard_model(model, dtype):
    """FSDP2: shard each block, then the rest; parameters gathered in `dtype`, gradients reduced in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=DTYPES[dtype], reduce_dtype=torch.float32) if dtype != "float32" \
        else MixedPrecisionPolicy()
    for block in model.transformer.h:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)


def gather_full(obj, keep=True):
    """A (nested) state dict with its DTensors gathered whole on the CPU (collective; only `keep` holds them)."""
    from torch.distributed.tensor import DTensor
    if isinstance(obj, DTensor):
        full = obj.full_tensor()
        return full.cpu() if keep else None
    if isinstance(obj, dict):
        return {k: gather_full(v, keep) for k, v in obj.items()}
    return obj


def shard_optimizer_state(state, optimizer):
    """An ordinary optimizer state dict cut to this process's shards of the optimizer's DTensor params."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    params = [p for group in optimizer.param_groups for p in group["params"]]
    out = {"param_groups": state["param_groups"], "state": {}}
    for i, values in state["state"].items():
        p = params[int(i)]
        out["state"][i] = {k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements, src_data_rank=None)
                           if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape else v
                           for k, v in values.items()}
    return out
