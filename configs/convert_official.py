"""A released VideoFlexTok checkpoint -> a vftok workdir (vftok/jobs/convert_official.py).

    python -m vftok.main --config=configs/convert_official.py --workdir=DIR \
        --config.path=/weights/videoflextok_d18_d18_k600/model.safetensors

DIR then works wherever a trained tokenizer workdir does:
`vftok.Tokenizer.from_checkpoint(DIR)`, configs/eval_tokenizer.py,
configs/tokenize_dataset.py, and `train.init_from` of a stage-2 run. The file
is read offline; nothing in it is executed (see
vftok/models/pretrained/official.py). The release carries no REPA head: the
workdir's is freshly initialised.
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.job = 'convert_official'
  c.path = ''                   # the release's model.safetensors
  # Latent clip shape (T, h, w) the tokenizer takes: 17 x 128^2 K600 clips
  # are 5 x 16 x 16 VidTok latents; 17 x 256^2 Panda clips 5 x 32 x 32.
  c.latent_shape = (5, 16, 16)
  c.seed = 0                    # init of the parts the release lacks (REPA)
  return c
