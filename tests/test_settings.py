"""The one settings check (configurator.check, plus train.py's check_settings for what depends on other
settings or the machine), in-process against every script's defaults: each bad value is one UserError
naming the key, its value and the rule. One subprocess per script proves the promise end to end (exit 2,
one `error:` line, no file changed): test_errors.py."""
import pytest

import bench
import eval as evaluate
import sample
import train
from configurator import check, load_config
from errors import UserError

CASES = [  # (script's DEFAULTS, argv, the message)
    (train, ["--learning_rate=-1e-3"], "learning_rate=-0.001 must be a finite number >= 0"),
    (train, ["--min_lr=-1.0"], "min_lr=-1.0 must be a finite number >= 0"),
    (train, ["--grad_clip=-1"], "grad_clip=-1.0 must be a finite number >= 0"),
    (train, ["--weight_decay=-0.1"], "weight_decay=-0.1 must be a finite number >= 0"),
    (train, ["--learning_rate=1e999"], "learning_rate=inf must be a finite number >= 0"),
    (train, ["--beta1=1.0"], "beta1=1.0 must be in [0, 1)"),
    (train, ["--beta2=-0.5"], "beta2=-0.5 must be in [0, 1)"),
    (train, ["--seed=-1"], "seed=-1 must be in [0, 2**62)"),
    (train, ["--seed=99999999999999999999"], "seed=99999999999999999999 must be in [0, 2**62)"),
    (train, ["--lr_decay_iters=-5"], "lr_decay_iters=-5 must not be negative"),
    (train, ["--batch_size=0"], "batch_size=0 must be at least 1"),
    (train, ["--eval_interval=0"], "eval_interval=0 must be at least 1"),
    (train, ["--n_embd=33", "--n_head=2"], "n_embd=33 must be divisible by n_head=2"),
    (train, ["--dropout=1.0"], "dropout=1.0 must be in [0, 1)"),
    (train, ["--optimizer=sgd"], "unknown optimizer 'sgd': use adamw or muon"),
    (train, ["--muon_lr=-1"], "muon_lr=-1.0 must be a finite number >= 0"),
    (train, ["--muon_momentum=1.5"], "muon_momentum=1.5 must be in [0, 1)"),
    (train, ["--out_dir="], "out_dir is empty: name the folder for checkpoints, e.g. --out_dir=out"),
    (train, ["--save_iters=[0]"], "save_iters=[0] must be a list of positive steps, like [1000,5000]"),
    (train, ["--hellaswag_interval=3", "--eval_interval=2"], "hellaswag_interval=3 must be a multiple of eval_interval=2"),
    (train, ["--fsdp=True", "--optimizer=muon"], "fsdp=True does not support optimizer=muon"),
    (sample, ["--top_k=-1"], "top_k=-1 must not be negative"),
    (sample, ["--temperature=1e999"], "temperature=inf must be a finite number >= 0"),
    (sample, ["--top_p=0"], "top_p=0.0 must be in (0, 1]"),
    (sample, ["--max_new_tokens=-5"], "max_new_tokens=-5 must not be negative"),
    (sample, ["--num_samples=0"], "num_samples=0 must be at least 1"),
    (bench, ["--batch_size=0"], "batch_size=0 must be at least 1"),
    (bench, ["--n_embd=100", "--n_head=3"], "n_embd=100 must be divisible by n_head=3"),
    (bench, ["--block_size=-4"], "block_size=-4 must be at least 1"),
    (bench, ["--mode=infer"], "unknown mode 'infer': use train or generate"),
    (bench, ["--steps=0"], "steps=0 must be at least 1"),
    (bench, ["--new_tokens=0"], "new_tokens=0 must be at least 1"),
    (evaluate, ["--task=mmlu"], "unknown task 'mmlu': use hellaswag, perplexity or export_hf"),
    (evaluate, ["--stride=-1"], "stride=-1 must not be negative"),
    (evaluate, ["--batch_size=0"], "batch_size=0 must be at least 1"),
]


def checked(script, argv):
    cfg = load_config(script.DEFAULTS, argv, optional=("top_k",))
    if script is evaluate:
        check(cfg, block_size="count")
    else:
        check(cfg)
    if script is train:
        train.check_settings(cfg, 1, "float32")


@pytest.mark.parametrize("script, argv, message", CASES, ids=[" ".join(c[1]) + f" ({c[0].__name__})" for c in CASES])
def test_each_bad_setting_is_one_line_naming_it(script, argv, message):
    with pytest.raises(UserError) as e:
        checked(script, argv)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("script", [train, sample, bench, evaluate])
def test_every_default_passes(script):
    checked(script, [])


def test_scripts_own_rules_override_the_shared_ones():
    cfg = load_config(evaluate.DEFAULTS, ["--block_size=0"])
    check(cfg, block_size="count")  # eval.py: 0 means the model's block_size
    with pytest.raises(UserError, match="block_size=0 must be at least 1"):
        check(load_config(bench.DEFAULTS, ["--block_size=0"]))
    assert load_config(sample.DEFAULTS, ["--top_k=None"], optional=("top_k",))["top_k"] is None
    check(load_config(sample.DEFAULTS, ["--top_k=None"], optional=("top_k",)))  # None: no limit


def test_world_size_and_dtype_rules():
    cfg = load_config(train.DEFAULTS, ["--gradient_accumulation_steps=3"])
    with pytest.raises(UserError, match=r"gradient_accumulation_steps=3 must be a positive multiple of the number "
                                        r"of processes \(2\)"):
        train.check_settings(cfg, 2, "float32")
    with pytest.raises(UserError, match="fsdp=True does not support dtype float16"):
        train.check_settings(load_config(train.DEFAULTS, ["--fsdp=True"]), 1, "float16")
