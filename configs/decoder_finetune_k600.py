"""Stage 2 of VideoFlexTok d18-d18 (Kinetics-600): decoder fine-tuning.

    python -m vftok.main --config=configs/decoder_finetune_k600.py \
        --config.train.init_from=STAGE1_WORKDIR --workdir=DIR \
        --config.data.train_pattern='/data/k600-latents/train-*.array_record' \
        --config.model.repa_teacher_path=/weights/dinov2-large

Starts from the stage-1 params in `train.init_from` (fresh optimizer, step 0;
a restart resumes from DIR's own checkpoints), freezes the encoder (no
gradients, no optimizer state: its parameters stay bit-identical), switches the
decoder to full attention and gives it the clean first latent frame with
probability 0.5, so that `tok.detokenize(..., first_frame=...)` and long-video
decoding work. Length: the paper fine-tunes its d18-d28 decoder for 400B
tokens (Table 5) and notes that a short fine-tuning already gives frame
conditioning; we use 100B tokens here (a quarter of stage 1).
`:runlocal` shrinks it to a CPU smoke test.
"""
from vftok import defaults


def get_config(arg=None):
  config = defaults.paper_tokenizer(18, 18, resolution=128,
                                    train_tokens=100e9, arg=arg)
  return defaults.decoder_finetune(config)
