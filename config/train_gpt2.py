# GPT-2 (124M) on OpenWebText. nanoGPT's README reports val loss ~2.85 after ~4 days on 8 A100s.
# Launch on one node of 8 GPUs:   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
# Prepare the data first:         python data/openwebtext/prepare.py

wandb_log = True
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M'

# 12 sequences x 1024 tokens x 40 micro-steps = 491,520 tokens per step (~0.5M, as in GPT-2)
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

# 600k steps x ~0.5M tokens = ~300B tokens
max_iters = 600000
lr_decay_iters = 600000

eval_interval = 1000
eval_iters = 200
log_interval = 10

weight_decay = 1e-1
