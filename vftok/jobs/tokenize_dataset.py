"""Tokenizes latent records into token records (the AR model's input).

    python -m vftok.main --config=configs/tokenize_dataset.py --workdir=OUT \
      --config.input='/data/k600/train-*.array_record' \
      --config.tokenizer_workdir=/ckpt/tokenizer_k600

The job loads the tokenizer (and the caption encoder, with
config.text_encoder) and hands them to data/tokens.py, which plans, writes
and finalizes the shards (resumable, split over workers).
"""
from vftok.api import tokenizer as tokenizer_api
from vftok.data import tokens
from vftok.models.pretrained import text_encoders


def run(config, workdir: str):
  if config.finalize:
    return tokens.finalize(workdir)
  # Inputs first (the records, the tokenizer, the caption encoder's
  # weights): nothing is written before all of them are found.
  tokens.input_files(config)
  tok = tokenizer_api.Tokenizer.from_checkpoint(
      config.tokenizer_workdir, config.tokenizer_step,
      field='tokenizer_workdir')
  text_encoder = None
  if config.get('text_encoder'):
    text_encoder = text_encoders.get(config.text_encoder,
                                     config.text_path or None,
                                     max_length=config.text_max_length,
                                     field='text_path')
  return tokens.tokenize_records(config, workdir, tok, tokenizer_step=tok.step,
                                 text_encoder=text_encoder)
