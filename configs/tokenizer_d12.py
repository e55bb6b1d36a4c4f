"""VideoFlexTok d12-d12 on Kinetics-600, 17x128x128 (Table 5; ablation size).

Same as tokenizer_k600.py at depth 12 / width 768, trained for 100B tokens.
"""
from vftok import defaults


def get_config(arg=None):
  config = defaults.set_depths(defaults.tokenizer_config(), 12, 12)
  config.data.resolution = 128
  config.data.global_batch_size = 512
  config.model.latent_size = (16, 16)
  config.model.repa_dim = 1024
  config.train.total_steps = defaults.steps_for_tokens(config, 100e9)
  config.optim.warmup_steps = defaults.steps_for_tokens(config, 4e9)
  if arg == 'runlocal':
    defaults.runlocal(config)
  return config
