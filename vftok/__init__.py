"""vftok: VideoFlexTok (flexible-length coarse-to-fine video tokenization) in JAX."""

__version__ = '0.1.0'


def __getattr__(name):
  # Lazy, so that config files importing vftok.defaults do not pull in JAX.
  if name == 'Tokenizer':
    from vftok.api import Tokenizer
    return Tokenizer
  if name == 'VidTok':
    from vftok.models.pretrained.vidtok import VidTok
    return VidTok
  raise AttributeError(f'module vftok has no attribute {name!r}')
