# A small character-level model on tiny shakespeare. nanoGPT's README reports best val 1.4697
# after ~3 minutes on one A100 (not yet measured here: no GPU so far).
# Prepare the data first: python data/shakespeare_char/prepare.py

out_dir = 'out-shakespeare-char'
eval_interval = 250  # the model overfits quickly on 1 MB of text: watch val loss often
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # keep the checkpoint with the best val loss

wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # characters of context

# a baby GPT: 6 layers, 6 heads, 384 wide
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # small models tolerate a higher learning rate
max_iters = 5000
lr_decay_iters = 5000  # usually equal to max_iters
min_lr = 1e-4  # learning_rate / 10
beta2 = 0.99  # a little higher than usual: few tokens per step

warmup_iters = 100
