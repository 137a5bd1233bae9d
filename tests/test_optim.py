"""--optimizer=muon: which tensors Muon gets, exact resume, DDP equal to one process, checkpoints of the
other optimizer, and one-line errors for what it cannot do."""
import os

import pytest
import torch

from conftest import REPO, TINY, load, run_script, train
from model import GPT, GPTConfig
from optim import MuonWithAdamW, build_optimizer, muon_split

MUON = ["--optimizer=muon", "--muon_lr=0.02"]
CFG = dict(optimizer="muon", muon_lr=0.02, muon_momentum=0.95, learning_rate=1e-3, weight_decay=0.1, beta1=0.9,
           beta2=0.95)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=40, bias=True))
    names = {id(p): n for n, p in model.named_parameters()}
    muon, adamw = muon_split(model)
    assert sorted(names[id(p)] for p in muon) == sorted(
        f"transformer.h.{i}.{m}.weight" for i in range(2) for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    rest = sorted(names[id(p)] for p in adamw)
    assert "transformer.wte.weight" in rest and "transformer.wpe.weight" in rest  # wte is the tied head too
    assert all(n.endswith("bias") or ".ln_" in n or "wte" in n or "wpe" in n for n in rest)
    assert len(muon) + len(adamw) == len(list(model.parameters()))
    opt = build_optimizer(model, CFG, "cpu")
    assert isinstance(opt, MuonWithAdamW) and isinstance(opt.muon, torch.optim.Muon)
    from optim import set_lr
    set_lr(opt, 5e-4)  # half the peak: Muon's groups at half of muon_lr
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.01) and opt.adamw.param_groups[0]["lr"] == 5e-4


def test_muon_stop_and_resume_is_bit_exact(tmp_path, char_data):
    exact = [*MUON, "--dropout=0.1", "--eval_interval=4"]
    train(tmp_path, char_data, *exact, "--max_iters=8", f"--out_dir={tmp_path / 'full'}")
    train(tmp_path, char_data, *exact, "--max_iters=3", f"--out_dir={tmp_path / 'part'}")
    train(tmp_path, char_data, *exact, "--max_iters=8", "--init_from=resume", f"--out_dir={tmp_path / 'part'}")
    a, b = load(tmp_path / "part" / "ckpt.pt"), load(tmp_path / "full" / "ckpt.pt")
    assert a["iter_num"] == b["iter_num"] == 8
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for part in ("muon", "adamw"):  # Muon's momentum buffers and AdamW's moments
        assert a["optimizer"][part]["state"], part
        for i, state in a["optimizer"][part]["state"].items():
            for name, value in state.items():
                assert torch.equal(value, b["optimizer"][part]["state"][i][name]), (part, i, name)


def test_muon_ddp_two_processes_match_one_process(tmp_path, char_data):
    """torch's Muon orthogonalises in bfloat16: the last-bit difference between one process's gradient sum
    and all-reduce's flips some bf16 roundings, so the runs agree to that precision, not bit for bit.
    What they learned must be the same: the runs differ far less than either moved from the start."""
    common = [*TINY, *MUON, f"--data_dir={char_data[0]}", f"--dataset={char_data[1]}", "--max_iters=4",
              "--eval_interval=4", "--gradient_accumulation_steps=2"]
    one = run_script("train.py", *common, f"--out_dir={tmp_path / 'single'}", cwd=tmp_path)
    two = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                     os.path.join(REPO, "train.py"), *common, f"--out_dir={tmp_path / 'ddp'}", cwd=tmp_path)
    single, multi = load(tmp_path / "single" / "ckpt.pt")["model"], load(tmp_path / "ddp" / "ckpt.pt")["model"]
    torch.manual_seed(1337)  # train.py's seed: the initial weights
    start = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=False,
                          vocab_size=len(char_data[2]))).state_dict()
    for key, value in single.items():
        if key.endswith("weight") and value.dim() == 2:
            assert (multi[key] - value).norm() < 0.05 * (value - start[key]).norm(), key
    val = lambda out: float(out.split("step 4: train loss")[1].split("val loss")[1].split()[0])  # noqa: E731
    assert abs(val(two.stdout) - val(one.stdout)) < 0.01 * val(one.stdout)


def test_switching_optimizers_on_resume_starts_the_state_afresh(tmp_path, char_data):
    """An AdamW checkpoint (ours or nanoGPT's) continued with Muon, and back: a note, fresh state."""
    train(tmp_path, char_data, "--max_iters=2")
    res = train(tmp_path, char_data, *MUON, "--max_iters=4", "--init_from=resume")
    assert "holds adamw state and this run uses muon: the optimizer state starts afresh" in res.stdout
    assert set(load(tmp_path / "out" / "ckpt.pt")["optimizer"]) == {"muon", "adamw"}
    res = train(tmp_path, char_data, "--max_iters=6", "--init_from=resume")
    assert "holds muon state and this run uses adamw" in res.stdout


def test_bad_muon_settings_are_one_line(tmp_path, char_data):
    """End to end once; every optimizer rule's message: test_settings.py."""
    res = train(tmp_path, char_data, "--optimizer=sgd", check=False)
    assert res.returncode == 2 and res.stderr == "error: unknown optimizer 'sgd': use adamw or muon\n"


def test_a_torch_without_muon_names_the_version_needed(monkeypatch):
    from errors import UserError
    monkeypatch.delattr(torch.optim, "Muon")
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=4, vocab_size=10))
    with pytest.raises(UserError, match=r"optimizer=muon needs torch 2\.9 or newer"):
        build_optimizer(model, CFG, "cpu")
