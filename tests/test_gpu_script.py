""".ci/gpu, the one-shot GPU check: its --dry-run rehearses every part on CPU, so the script cannot rot
between the GPU machines we get."""
import glob
import json
import os
import subprocess

import pytest
import torch

from conftest import REPO

SCRIPT = os.path.join(REPO, ".ci", "gpu")


def gpu_script(*args, env=None, timeout=300):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_refuses_in_one_line():
    result = gpu_script()
    assert result.returncode == 2
    assert result.stderr == "error: torch sees no CUDA GPU here; use .ci/gpu --dry-run to rehearse on a CPU\n"


def test_bad_arguments_are_one_line(tmp_path):
    for args, message in ((["--dry", "x"], "error: unknown option --dry"),
                          ([str(tmp_path / "nowhere")], "is not a folder"),
                          ([str(tmp_path)], "has no model.py: not a nanoGPT checkout")):
        result = gpu_script(*args)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.slow
def test_dry_run_rehearses_every_part(tmp_path):
    result = gpu_script("--dry-run", env={"GPU_RECORDS": str(tmp_path)}, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "nanoGPT side skipped: no NANOGPT_DIR given" in result.stdout
    records = {os.path.basename(p).split("-cpu-dryrun-")[1]: p for p in glob.glob(str(tmp_path / "*"))}
    assert set(records) == {f"{part}.{ext}" for part in ("tests", "bench", "train", "sample") for ext in ("json", "log")}
    read = lambda part: json.load(open(records[f"{part}.json"]))  # noqa: E731
    assert read("tests")["failed"] == 0 and read("tests")["skipped"] > 0  # the CUDA tests skip on CPU
    assert read("bench")["ours"]["ms_per_iter"] > 0 and read("bench")["nanogpt"] is None
    train = read("train")["ours"]
    assert train["exit_code"] == 0 and len(train["evals"]) == 4 and train["evals"][-1]["val"] < train["evals"][0]["val"]
    runs = {(r["impl"], r["batch"]) for r in read("sample")["runs"]}
    assert runs == {("ours", 1), ("ours-graph", 1), ("ours", 64), ("ours-graph", 64), ("ours-compiled", 1)}
    assert all(r["tokens"] == 20 and r["ms_per_token"] > 0 for r in read("sample")["runs"])
    assert "decoding without torch.compile" not in result.stdout  # the compiled step really compiled
    assert "torch" in open(records["bench.log"]).read().splitlines()[3]  # the log says what it ran on
