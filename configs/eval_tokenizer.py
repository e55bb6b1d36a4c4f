"""Tokenizer evaluation sweep: token budget x guidance x Euler steps.

    python -m vftok.main --config=configs/eval_tokenizer.py \
        --config.checkpoint=/tmp/vftok_demo --workdir=/tmp/vftok_eval

`checkpoint` is the --workdir of a train_tokenizer run. By default every
held-out clip of that run's data is evaluated at budgets 1, 2, 4, ..., K.
Writes sweep.csv, sweep.md, sweep.png, recon_g<guidance>_s<steps>.png and
TensorBoard scalars to the workdir (see vftok/jobs/eval_tokenizer.py).

Tuples are overridden as strings: --config.budgets='(1,2,4,8,16)'
--config.guidance_scales='(1.0,3.0)' --config.sample_steps='(25,)'.
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.job = 'eval_tokenizer'
  c.checkpoint = ''        # the training workdir (config.json, checkpoints/)
  c.step = -1              # checkpoint step; -1: the latest
  c.seed = 0               # decoder noise: clip i uses fold_in(seed, i)

  # ---- evaluation set -----------------------------------------------------
  # Default: the held-out records (with RGB frames) of the checkpoint's data.
  c.eval_pattern = ''      # another glob of latent records with `frames`
  c.data_root = ''         # demo data: where it is built, if not the default
  c.num_clips = -1         # -1: every clip of the evaluation set
  c.batch_size = 8         # global; must be divisible by the device count

  # ---- sweep --------------------------------------------------------------
  c.budgets = ()           # tokens per latent frame; (): 1, 2, 4, ..., K
  c.guidance_scales = (1.0,)
  c.sample_steps = (25,)
  # How a scale != 1 guides against the learned null condition (flow.py):
  # 'cfg' classifier-free guidance, or 'apg' adaptive projected guidance
  # with the parameters below (the release notebook's, as config.sample).
  c.guidance = 'cfg'
  # A distilled student (configs/demo.py:distill) is swept against its
  # teacher instead: the student at student_steps (() : every step count it
  # was trained for), the teacher's sampler (the one distilled: its guidance
  # and time grid) at teacher_steps (() : its own steps and the student's).
  # guidance_scales / sample_steps / guidance / apg do not apply there.
  c.student_steps = ()
  c.teacher_steps = ()
  c.apg = ml_collections.ConfigDict()
  c.apg.momentum = 0.0
  c.apg.eta = 0.0
  c.apg.norm_threshold = 0.6

  # ---- FVD features (the standard protocol; see vftok/models/pretrained/i3d.py) --------
  c.fvd = ml_collections.ConfigDict()
  c.fvd.layer = 'logits'   # 400-d Kinetics logits; 'pool': 1024-d Mixed_5c
  c.fvd.resolution = 224   # frames resized to this square (bilinear)
  c.fvd.num_frames = 16    # the first 16 frames of each clip

  # ---- class alignment of reconstructions (off unless a path is given) -----
  c.classifier = ml_collections.ConfigDict()
  c.classifier.factory = 'vftok.evals.class_score:load_classifier'
  c.classifier.path = ''   # e.g. the classifier.npz of train_classifier

  # ---- LPIPS (Table 8; off unless a path is given) ---------------------------
  # A local file with the lpips package's LPIPS state_dict (backbone + linear
  # layers; vftok/evals/lpips.py says how to write it). No download.
  c.lpips_weights = ''

  # ---- rFID (Table 8; off unless a path is given): per-frame features -------
  # factory(path) -> features(frames [N, H, W, 3] uint8) -> [N, D]; '' : the
  # built-in DINOv2 CLS features from a local HF DINOv2 dir (FD-DINOv2). For
  # the Inception-v3 FID plug your factory (vftok/evals/frame_scores.py).
  c.rfid = ml_collections.ConfigDict()
  c.rfid.factory = ''
  c.rfid.path = ''

  c.grid_clips = 2         # clips shown in each reconstruction grid
  return c
