"""VideoFlexTok d12-d12 on Kinetics-600, 17x128x128 (Table 5; the ablation
size), trained for 100B tokens. `:runlocal` shrinks it to a CPU smoke test."""
from vftok import defaults


def get_config(arg=None):
  return defaults.paper_tokenizer(12, 12, resolution=128, train_tokens=100e9,
                                  arg=arg)
