"""Videos -> latent records (vftok/jobs/encode_videos.py).

    python -m vftok.main --config=configs/encode_videos.py --workdir=/k600 \
      --config.input=/videos/k600/train --config.label_from_dir=True

Several hosts (or processes) share the work by shard index; each writes
disjoint shards and the last one to finish writes manifest.json:

    ... --config.worker_index=$i --config.worker_count=$n      # i = 0..n-1

(or leave worker_count=-1 with --distributed: one worker per JAX process).
Rerunning the same command resumes: finished shards are skipped.
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.job = 'encode_videos'

  # ---- inputs (vftok/data/video_io.py) ---------------------------------------
  c.input = ''                  # folder | glob | .csv/.jsonl | tfds:N[:SPLIT]
  c.tfds_data_dir = ''          # tfds: where the prepared data lives
  c.tfds_fps = 25.0             # tfds: frame rate of its videos
  c.label_from_dir = False      # label = index of the parent folder's name

  # ---- clips -----------------------------------------------------------------
  c.num_frames = 17             # 4n+1 (17; 81 for long video)
  c.fps = 0.0                   # resample to this rate (0: keep the source's)
  c.clip_stride = 0             # frames between clip starts (0: num_frames)
  c.max_clips_per_video = 0     # 0: every clip
  c.resolution = 128            # short side resized to this, square crop
  c.crop = 'center'             # 'center' | 'random'
  c.seed = 0                    # random crops and the codec's fitting sample

  # ---- codec (vftok/data/codecs.py) ------------------------------------------
  c.codec = 'pca_offline'       # 'pca_offline' | 'vidtok'
  c.codec_path = ''             # pca_offline: a codec.npz ('' : fit one here);
                                # vidtok: the weights (VideoFlexTok
                                # model.safetensors or VidTok .ckpt)
  c.codec_fit_clips = 512       # pca_offline fit: clips in the sample
  c.codec_fit_clips_per_video = 4
  c.codec_max_patches = 65536
  c.codec_wait_s = 3600.0       # workers > 0 wait this long for worker 0's fit
  c.vidtok_clips_per_device = 2  # vidtok: clips per device per step (memory)
  c.vidtok_dtype = 'float32'    # vidtok activations: 'float32' | 'bfloat16'

  # ---- output ----------------------------------------------------------------
  c.split = 'train'             # files: <split>-SSSSS-of-NNNNN.array_record
  c.store_frames = False        # also store the RGB clip (eval, REPA teachers)
  c.latent_dtype = 'float16'
  c.videos_per_shard = 64
  c.batch_size = 32             # clips encoded at once

  # ---- workers ---------------------------------------------------------------
  c.worker_index = 0
  c.worker_count = -1           # -1: one worker per JAX process
  c.finalize = False            # only merge the shard stats into manifest.json
  c.log_every_s = 30.0
  return c
