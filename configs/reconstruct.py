"""Reconstruct any video file at every token budget (pretrained tokenizer).

    python -m vftok.main --config=configs/reconstruct.py \
        --config.video=PATH --workdir=DIR

By default the small pretrained tokenizer shipped in the package
(vftok/assets/small64: 64 x 64 clips of 17 frames, 16 tokens per latent
frame, trained by configs/demo.py:footage on packaged footage). Any
train_tokenizer workdir or exported bundle works too:
--config.tokenizer=/tmp/vftok_demo. Writes reconstruct.md / .png / .json to
the workdir (vftok/jobs/reconstruct.py).
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.job = 'reconstruct'
  c.video = ''            # the video file (anything FFmpeg reads)
  c.tokenizer = ''        # '' -> the shipped small64 bundle
  c.num_clips = 4         # clips spread evenly over the video
  c.budgets = ()          # tokens per latent frame; (): 1, 2, 4, ..., K
  c.sample_steps = 0      # Euler steps of the sampled rows; 0: the model's
  c.guidance_scale = 0.0  # 0: the model's (config.sample)
  c.seed = 0              # decoder noise: clip i uses fold_in(seed, i)
  return c
