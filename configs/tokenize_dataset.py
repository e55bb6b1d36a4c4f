"""Latent records -> token records (vftok/jobs/tokenize_dataset.py).

    python -m vftok.main --config=configs/tokenize_dataset.py \
      --workdir=/data/k600_tokens \
      --config.input='/data/k600/train-*.array_record' \
      --config.tokenizer_workdir=/ckpt/tokenizer_k600

One output shard per input file; workers split them by index
(--config.worker_index=i --config.worker_count=n, or one per JAX process)
and a rerun resumes, as in configs/encode_videos.py. Records of clips longer
than 17 frames (encode_videos with num_frames=81: latents stored per
17-frame chunk) become [21, K] tokens through Tokenizer.tokenize_long.
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.job = 'tokenize_dataset'
  c.input = ''                  # glob of latent record files
  c.tokenizer_workdir = ''      # a train_tokenizer workdir (config.json and
                                # checkpoints/)
  c.tokenizer_step = -1         # -1: the latest checkpoint
  c.stats_from = ''             # dir whose manifest.json has latent_mean / std
                                # ('' : the input files' dir)
  c.normalize = ''              # '' : the tokenizer config's data.normalize
  c.split = 'train'             # output file prefix
  c.tokens_per_frame = 0        # keep the first n tokens of every latent
                                # frame (0: all K); e.g. 32 for the paper's
                                # 81-frame model
  c.batch_size = 32
  c.worker_index = 0
  c.worker_count = -1           # -1: one worker per JAX process
  c.finalize = False
  c.log_every_s = 30.0
  # Optional: also store each caption's text-encoder outputs (text_emb [L, D]
  # float16, text_mask [L]) for AR training with config.text.source='records'.
  c.text_encoder = ''           # '' | 't5' | 'minilm' | a registered name
  c.text_path = ''              # local HF checkpoint dir ('' : bundled)
  c.text_max_length = 64
  return c
