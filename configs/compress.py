"""A video file to a progressive token bitstream and back (vftok/jobs/compress.py).

    python -m vftok.main --config=configs/compress.py \
        --config.video=PATH --workdir=DIR

Writes clip<i>.vftb (api/bitstream.py: tokens level-major, range-coded; any
prefix at a level boundary decodes to fewer tokens per frame), then reads
each back whole and cut at every level count in `levels`, decodes each to
clip<i>_n<n>.mp4, and reports bytes per video frame, bits per token and
PSNR beside the VidTok latents and the 3D-grid token count
(compress.md / .json). By default the shipped small64 tokenizer; any
train_tokenizer workdir or exported bundle: --config.tokenizer=DIR.
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.job = 'compress'
  c.video = ''            # the video file (anything FFmpeg reads)
  c.tokenizer = ''        # '' -> the shipped small64 bundle
  c.num_clips = 1         # clips spread evenly over the video
  c.num_frames = 0        # 0: the tokenizer's clip (17); 4n + 1 > 17: a long
  #                         clip per 17-frame chunk (frame-conditioned decoder)
  c.levels = ()           # prefixes decoded (tokens per frame); (): 1, 2, 4, ..., K
  c.sample_steps = 0      # 0: the model's (config.sample)
  c.guidance_scale = 0.0  # 0: the model's
  c.seed = 0
  c.fps = 8.0             # of the decoded MP4s
  return c
