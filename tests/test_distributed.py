"""Scale-out on CPU with gloo over loopback: torchrun on one or two "nodes", srun-style launch without
torchrun, FSDP2 against DDP, and evaluation shared among the processes."""
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY, load, run_script, train
from runtime import first_slurm_host

# eval_iters=3 does not divide among 2 processes: the shared evaluation must still match one process's
SETTINGS = [*TINY, "--eval_iters=3", "--gradient_accumulation_steps=2", "--max_iters=6", "--eval_interval=3"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def evals(stdout):
    return re.findall(r"^step \d+: train loss \d+\.\d+, val loss \d+\.\d+$", stdout, re.M)


def data_args(char_data):
    return [f"--data_dir={char_data[0]}", f"--dataset={char_data[1]}"]


def run_all(procs):
    """Wait for processes started together; all must succeed. Returns their stdouts."""
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"stdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
    return [out for out, _ in outs]


@pytest.mark.slow
def test_fsdp_matches_ddp_and_its_checkpoint_loads_anywhere(tmp_path, char_data):
    single = train(tmp_path, char_data, *SETTINGS[len(TINY):], f"--out_dir={tmp_path / 'single'}")
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", os.path.join(REPO, "train.py"),
              *SETTINGS, *data_args(char_data)]
    ddp = run_script(*launch, f"--out_dir={tmp_path / 'ddp'}", cwd=tmp_path)
    fsdp = run_script(*launch, "--fsdp=True", f"--out_dir={tmp_path / 'fsdp'}", cwd=tmp_path)
    assert evals(ddp.stdout) == evals(single.stdout)  # the shared evaluation is the single process's
    val = lambda out: float(evals(out)[-1].split()[-1])  # noqa: E731
    assert abs(val(fsdp.stdout) - val(ddp.stdout)) <= 0.02 * val(ddp.stdout)
    saved = load(tmp_path / "fsdp" / "ckpt.pt")
    for key, value in load(tmp_path / "ddp" / "ckpt.pt")["model"].items():  # gathered whole, plain names
        torch.testing.assert_close(saved["model"][key], value, rtol=1e-4, atol=1e-5)
    sample = run_script("sample.py", f"--out_dir={tmp_path / 'fsdp'}", "--device=cpu", "--start=All",
                        "--num_samples=1", "--max_new_tokens=10", cwd=tmp_path)
    assert sample.stdout.startswith("All")
    # an FSDP checkpoint resumes sharded, and without FSDP on one process
    run_script(*launch, "--fsdp=True", "--init_from=resume", "--max_iters=7", f"--out_dir={tmp_path / 'fsdp'}",
               cwd=tmp_path)
    res = train(tmp_path, char_data, *SETTINGS[len(TINY):], "--init_from=resume", "--max_iters=8",
                f"--out_dir={tmp_path / 'fsdp'}")
    assert "resuming from" in res.stdout and load(tmp_path / "fsdp" / "ckpt.pt")["iter_num"] == 8


def test_two_nodes_one_process_each(tmp_path, char_data):
    port = free_port()
    procs = [subprocess.Popen(
        [*TORCHRUN, "--nnodes=2", f"--node_rank={r}", "--nproc_per_node=1", "--master_addr=127.0.0.1",
         f"--master_port={port}", os.path.join(REPO, "train.py"), *SETTINGS, *data_args(char_data),
         f"--out_dir={tmp_path / 'out'}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in (0, 1)]
    outs = run_all(procs)
    assert outs[0].count("world size 2") == 1 and outs[1] == ""  # rank 0 logs, once
    assert load(tmp_path / "out" / "ckpt.pt")["iter_num"] == 6


def test_srun_style_launch_without_torchrun(tmp_path, char_data):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    procs = [subprocess.Popen(
        [sys.executable, os.path.join(REPO, "train.py"), *SETTINGS, *data_args(char_data),
         f"--out_dir={tmp_path / 'srun'}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(env, SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r), MASTER_ADDR="127.0.0.1",
                 MASTER_PORT=str(port))) for r in (0, 1)]
    outs = run_all(procs)
    assert "world size 2" in outs[0]
    single = train(tmp_path, char_data, *SETTINGS[len(TINY):], f"--out_dir={tmp_path / 'single'}")
    assert evals(outs[0]) == evals(single.stdout)
    one, two = load(tmp_path / "single" / "ckpt.pt")["model"], load(tmp_path / "srun" / "ckpt.pt")["model"]
    for key, value in one.items():
        torch.testing.assert_close(two[key], value, rtol=1e-5, atol=1e-6)


def test_first_slurm_host():
    assert first_slurm_host("gpu[07-08,11],cpu1") == "gpu07"
    assert first_slurm_host("node1,node2") == "node1"
    assert first_slurm_host("a-b[3-4]") == "a-b3"
    assert first_slurm_host("solo") == "solo"


@pytest.mark.slow
def test_fsdp_hellaswag_with_unequal_items_per_process(tmp_path, bpe_data):
    """3 items on 2 processes, one item a batch: rank 0 has two batches, rank 1 one. Every process must
    still run as many forward passes (each gathers FSDP's weights with all the others), or it hangs."""
    from conftest import ITEMS, write_items
    path = write_items(tmp_path / "hs.jsonl", ITEMS[:3])
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", os.path.join(REPO, "train.py")]
    run = run_script(*launch, *TINY, "--batch_size=1", "--gradient_accumulation_steps=2", "--max_iters=2",
                     "--eval_interval=2", "--hellaswag_interval=2", f"--hellaswag_path={path}", "--fsdp=True",
                     f"--data_dir={bpe_data[0]}", f"--dataset={bpe_data[1]}", f"--out_dir={tmp_path / 'out'}",
                     cwd=tmp_path, timeout=300)
    assert "(3 items)" in run.stdout
