"""VideoFlexTok d18-d18 on Kinetics-600, 17x128x128 (paper Table 5).

    python -m vftok.main --config=configs/tokenizer_k600.py --workdir=DIR \
        --config.data.train_pattern='/data/k600-latents/train-*.array_record'

Records hold VidTok kl_causal_488_16chn latents (5 x 16 x 16 x 16 per clip).
Batch 512, AdamW lr 1.124e-3 with muP base width 256, warmup 4B tokens then
cosine over 400B tokens, clip 1.0, bf16 compute, REPA on decoder layer 1 with
DINOv2-L features (1024-d). `--config=configs/tokenizer_k600.py:runlocal`
shrinks it to a CPU smoke test on the demo data.
"""
from vftok import defaults


def get_config(arg=None):
  return defaults.paper_tokenizer(18, 18, resolution=128, arg=arg)
