# Finetune GPT-2 XL on tiny shakespeare (BPE). Prepare: python data/shakespeare/prepare.py
# gpt2-xl needs a large GPU; init_from='gpt2' (124M) fits on small GPUs and even a CPU.
import time

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(time.time())

dataset = 'shakespeare'
init_from = 'gpt2-xl'  # the largest GPT-2

always_save_checkpoint = False  # keep only the best checkpoint

# 1 sequence x 32 micro-steps x 1024 tokens = 32,768 tokens per step; the data is ~300K tokens,
# so one step is ~0.1 epoch
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# a constant, small learning rate
learning_rate = 3e-5
decay_lr = False
