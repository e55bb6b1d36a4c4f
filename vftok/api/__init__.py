"""The front-end notebooks, jobs and evaluation use: `Tokenizer` (tokenize /
detokenize at any token count, streams, long videos, pixels through VidTok)
and, for the AR model, `generator` (conditions -> tokens -> pixels)."""
from vftok.api.tokenizer import official_config as official_config
from vftok.api.tokenizer import Tokenizer as Tokenizer
