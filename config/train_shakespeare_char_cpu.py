# The character-level shakespeare model sized for a laptop CPU: about 45 s on our 2-core CPU, val loss ~1.85.
#   python train.py config/train_shakespeare_char_cpu.py   # prepares data/shakespeare_char first if needed
#   python sample.py --out_dir=out-shakespeare-char-cpu
# The model of nanoGPT's README CPU command (4 layers x 128, 64 characters of context), trained with Muon
# on the blocks' matrices (optim.py): 300 steps of 32 sequences reach that command's val loss (1.8857
# after 2000 AdamW steps of 12) in under half its time. nanoGPT's own settings: --optimizer=adamw
# --batch_size=12 --learning_rate=1e-3 --max_iters=2000 --lr_decay_iters=2000 --warmup_iters=100.

out_dir = 'out-shakespeare-char-cpu'
eval_interval = 50
eval_iters = 20
log_interval = 10
always_save_checkpoint = False

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 32
block_size = 64  # characters of context

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0

optimizer = 'muon'  # needs torch 2.9+; with an older torch, use nanoGPT's settings above
muon_lr = 0.04
learning_rate = 3e-3  # AdamW's, for the embeddings, biases and norms
max_iters = 300
lr_decay_iters = 300
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 30

device = 'cpu'
compile = False  # compiling takes longer than this whole run saves
