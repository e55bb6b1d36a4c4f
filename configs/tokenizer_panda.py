"""VideoFlexTok d18-d28 on Panda-70M (30M subset), 17x256x256 (Table 5).

Latents are 5 x 32 x 32 x 16; [1, 2, 2] patchification keeps 256 patches per
latent frame. Batch 10240 as in the paper; scale it to your pod (the lr is
not rescaled automatically).
"""
from vftok import defaults


def get_config(arg=None):
  config = defaults.set_depths(defaults.tokenizer_config(), 18, 28)
  config.data.resolution = 256
  config.data.global_batch_size = 10240
  config.model.latent_size = (32, 32)
  config.model.patch_size = (1, 2, 2)
  config.model.repa_dim = 1024
  config.train.total_steps = defaults.steps_for_tokens(config, 400e9)
  config.optim.warmup_steps = defaults.steps_for_tokens(config, 4e9)
  if arg == 'runlocal':
    defaults.runlocal(config)
  return config
