"""VideoFlexTok d18-d28 on Panda-70M (30M subset), 17x256x256 (Table 5).

Latents are 5 x 32 x 32 x 16; [1, 2, 2] patchification keeps 256 patches per
latent frame. Batch 10240 as in the paper; scale it to your pod (the lr is
not rescaled automatically). `:runlocal` shrinks it to a CPU smoke test.
"""
from vftok import defaults


def get_config(arg=None):
  return defaults.paper_tokenizer(18, 28, resolution=256, patch_size=(1, 2, 2),
                                  batch=10240, arg=arg)
