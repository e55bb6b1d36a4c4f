"""Content-chosen token budgets against fixed ones (vftok/jobs/eval_budgets.py).

    python -m vftok.main --config=configs/eval_budgets.py \
        --config.checkpoint=/tmp/vftok_demo --workdir=/tmp/vftok_budgets

On the checkpoint's held-out clips: mean tokens per latent frame against mean
PSNR (sampled and one-step mean) for one fixed budget per clip and for
budgets picked per clip and per latent frame (api/budgets.py), and the
tokens saved at each fixed budget's PSNR. Writes budgets.md / .csv / .json /
.png.
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.job = 'eval_budgets'
  c.checkpoint = ''        # a train_tokenizer workdir or a tokenizer bundle
  c.step = -1              # -1: the latest checkpoint
  c.seed = 0               # decoder noise: clip i uses fold_in(seed, i)
  c.eval_pattern = ''      # another glob of latent records with `frames`
  c.data_root = ''         # demo data: where it is built, if not the default
  c.num_clips = -1         # -1: every held-out clip
  c.batch_size = 8
  c.sample_steps = 0       # 0: the model's sampler (config.sample)
  c.guidance_scale = 0.0   # 0: the model's
  c.modes = ('clip', 'frame')   # budgets per clip, per latent frame
  # What the choice searches with (api/budgets.py): its own noise draw
  # ('own': blind to the decode it is scored on) and the noise each clip is
  # then decoded from ('decode': as a codec with a fixed seed can).
  c.choose_noise = ('own', 'decode')
  # Targets of the content-chosen curves (api/budgets.py): fractions of the
  # full budget's estimated gain, and rate-distortion slopes in latent dB per
  # token (from spending on every clip to one token each).
  c.fractions = (0.3, 0.5, 0.7, 0.85, 0.95)
  c.db_per_token = (1.0, 0.5, 0.3, 0.2, 0.15, 0.12, 0.1, 0.07, 0.05, 0.03,
                    0.02, 0.01, 0.003)
  return c
