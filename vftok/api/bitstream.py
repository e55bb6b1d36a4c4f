"""A progressive bitstream of VideoFlexTok tokens: any prefix decodes.

Tokens [T, k] of one video are written level-major, the time-first order of
the AR model: token 1 of every latent frame, then token 2, and so on. Each
level is one independently framed block, so a prefix of the stream that ends
at a level boundary decodes to the first levels of every frame (a coarser
video: detokenize pads the rest with the mask token), and a prefix ending
mid-level decodes its complete levels.

Entropy coding: constriction's range coder (a maintained Rust library with
NumPy bindings). A token is its 6 FSQ digits (levels 8, 8, 8, 5, 5, 5 for
the 64000 ids); each digit position has an adaptive categorical model (counts
from 1, updated after every token, in stream order), so the decoder rebuilds
the same models from what it has decoded. No prior ships with a checkpoint,
so the first tokens cost about log2(64000) = 16 bits; FSQ's bounded codes
concentrate on their middle levels, which the counts learn.

A short video's level is a few tokens (5 for a 17-frame clip), and each
range-coded level pays a varint and the coder's last 32-bit word: on the
demo's clips that costs more than it saves (20.7 bits per token at 16 levels
against 16 for a plain code). So `encode` also writes the fixed-length code
(ceil(log2 vocab) bits per token, each level padded to a byte, no framing:
a level's size follows from the header) and keeps the shorter stream; the
header's coder id says which.

Layout (little-endian):
  b'VFTB1' | uint8 coder id | uint16 frames | uint16 levels | uint8 digit
  count | uint8 per FSQ digit: its levels | per level:
    coder 1 (range): varint word count | uint32 words
    coder 0 (fixed): ceil(frames x bits / 8) bytes, bits big-endian per id
"""
import struct
from typing import Sequence, Tuple

import numpy as np

MAGIC = b'VFTB1'
CODERS = {0: 'fixed-length', 1: 'constriction-range/adaptive-fsq-digits'}


class BitstreamError(ValueError):
  """A stream that is not a vftok bitstream, or is damaged before its first
  complete level."""


def _digits(tokens, fsq_levels) -> np.ndarray:
  """int ids [...] -> FSQ digits [..., D] (digit 0 least significant)."""
  out, rest = [], np.asarray(tokens, np.int64)
  for level in fsq_levels:
    out.append(rest % level)
    rest = rest // level
  return np.stack(out, axis=-1)


def _ids(digits, fsq_levels) -> np.ndarray:
  basis = np.cumprod([1] + list(fsq_levels[:-1]))
  return (np.asarray(digits, np.int64) * basis).sum(-1)


class _Models:
  """One adaptive categorical per FSQ digit position (Laplace counts)."""

  def __init__(self, fsq_levels):
    self.counts = [np.ones(level, np.float64) for level in fsq_levels]

  def probabilities(self, position: int) -> np.ndarray:
    c = self.counts[position]
    return c / c.sum()


def encode(tokens, fsq_levels: Sequence[int], coder: str = 'auto') -> bytes:
  """int tokens [T, k] (ids in [0, prod(fsq_levels))) -> the bitstream.
  coder: 'range', 'fixed' or 'auto' (the shorter of the two)."""
  if coder not in ('auto', 'range', 'fixed'):
    raise ValueError(f"coder={coder!r}: choose 'auto', 'range' or 'fixed'")
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or tokens.size == 0:
    raise ValueError(f'tokens must be [T, k] (one video), got {tokens.shape}')
  vocab = int(np.prod(fsq_levels))
  if tokens.min() < 0 or tokens.max() >= vocab:
    raise ValueError(f'token ids in [{tokens.min()}, {tokens.max()}] are '
                     f'outside [0, {vocab})')
  frames, levels = tokens.shape
  if max(frames, levels) >= 1 << 16 or max(fsq_levels) >= 256:
    raise ValueError(f'{frames} frames x {levels} levels of {fsq_levels}: '
                     'the header holds < 65536 frames and levels, < 256 per '
                     'FSQ digit')
  streams = [_header_bytes(c, frames, levels, fsq_levels)
             + coder_fn(tokens, fsq_levels)
             for c, name, coder_fn in ((0, 'fixed', _fixed_levels),
                                       (1, 'range', _range_levels))
             if coder in ('auto', name)]
  return min(streams, key=len)     # ties: the fixed code (cheaper to read)


def _header_bytes(coder_id, frames, levels, fsq_levels) -> bytes:
  return (MAGIC + struct.pack('<BHHB', coder_id, frames, levels,
                              len(fsq_levels))
          + bytes(int(v) for v in fsq_levels))


def _bits(fsq_levels) -> int:
  return int(np.ceil(np.log2(np.prod(fsq_levels))))


def _fixed_levels(tokens, fsq_levels) -> bytes:
  bits = _bits(fsq_levels)
  shifts = np.arange(bits - 1, -1, -1)
  return b''.join(
      np.packbits(((tokens[:, level, None] >> shifts) & 1).astype(np.uint8)
                  ).tobytes() for level in range(tokens.shape[1]))


def _range_levels(tokens, fsq_levels) -> bytes:
  import constriction  # pylint: disable=g-import-not-at-top
  frames, levels = tokens.shape
  out = []
  models = _Models(fsq_levels)
  family = constriction.stream.model.Categorical(perfect=False)
  for level in range(levels):       # level-major: token `level` of each frame
    digits = _digits(tokens[:, level], fsq_levels)          # [T, D]
    encoder = constriction.stream.queue.RangeEncoder()
    for position in range(len(fsq_levels)):
      # The probabilities each digit is coded with: the counts as they
      # stand before its token (the decoder's view), token by token.
      probs = []
      for t in range(frames):
        probs.append(models.probabilities(position))
        models.counts[position][digits[t, position]] += 1
      encoder.encode(digits[:, position].astype(np.int32), family,
                     np.stack(probs).astype(np.float64))
    words = encoder.get_compressed().astype('<u4')
    out += [_varint(len(words)), words.tobytes()]
  return b''.join(out)


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _read_varint(data: bytes, at: int):
  """-> (value, next offset), or None when the data ends inside it."""
  value, shift = 0, 0
  while at < len(data):
    byte = data[at]
    value |= (byte & 0x7F) << shift
    at += 1
    if not byte & 0x80:
      return value, at
    shift += 7
  return None


def _header(data: bytes):
  """-> (header dict, offset of the first level block)."""
  if data[:len(MAGIC)] != MAGIC:
    raise BitstreamError('not a vftok bitstream (no VFTB1 magic)')
  at = len(MAGIC)
  if len(data) < at + 6:
    raise BitstreamError('bitstream cut inside its header')
  coder, frames, levels, digits = struct.unpack_from('<BHHB', data, at)
  at += 6
  if coder not in CODERS:
    raise BitstreamError(f'bitstream coder id {coder}; this reader decodes '
                         f'{CODERS}')
  if len(data) < at + digits:
    raise BitstreamError('bitstream cut inside its header')
  fsq_levels = list(data[at:at + digits])
  return dict(frames=frames, levels=levels, fsq_levels=fsq_levels,
              coder=CODERS[coder]), at + digits


def _blocks(data: bytes, header, at: int):
  """Yields (start, end) of each complete level block after offset `at`."""
  fixed = header['coder'] == CODERS[0]
  size = -(-header['frames'] * _bits(header['fsq_levels']) // 8)
  for _ in range(header['levels']):
    if fixed:
      start, end = at, at + size
    else:
      got = _read_varint(data, at)
      if got is None:
        return
      start = got[1]
      end = start + 4 * got[0]
    if len(data) < end:
      return                             # a level cut short: not decoded
    yield start, end
    at = end


def decode(data: bytes) -> Tuple[np.ndarray, dict]:
  """A bitstream or any prefix of it -> (int32 tokens [T, n], header): the n
  complete levels it holds (n >= 1, else BitstreamError)."""
  data = bytes(data)
  header, at = _header(data)
  fsq_levels, frames = header['fsq_levels'], header['frames']
  if header['coder'] == CODERS[0]:
    bits = _bits(fsq_levels)
    levels = [np.unpackbits(np.frombuffer(data[start:end], np.uint8))[
        :frames * bits].reshape(frames, bits).astype(np.int64)
              @ (1 << np.arange(bits - 1, -1, -1))
              for start, end in _blocks(data, header, at)]
  else:
    levels = _range_decode(data, header, at)
  if not levels:
    raise BitstreamError('bitstream holds no complete level')
  return np.stack(levels, axis=1).astype(np.int32), header


def _range_decode(data: bytes, header, at: int) -> list:
  import constriction  # pylint: disable=g-import-not-at-top
  fsq_levels, frames = header['fsq_levels'], header['frames']
  models = _Models(fsq_levels)
  family = constriction.stream.model.Categorical(perfect=False)
  levels = []
  for start, end in _blocks(data, header, at):
    words = np.frombuffer(data, '<u4', (end - start) // 4, start).astype(
        np.uint32)
    decoder = constriction.stream.queue.RangeDecoder(words)
    digits = np.zeros((frames, len(fsq_levels)), np.int64)
    for position in range(len(fsq_levels)):
      for t in range(frames):
        probs = models.probabilities(position)[None].astype(np.float64)
        digits[t, position] = decoder.decode(family, probs)[0]
        models.counts[position][digits[t, position]] += 1
    levels.append(_ids(digits, fsq_levels))
  return levels


def level_offsets(data: bytes) -> list:
  """Byte lengths of the prefixes that end at each level boundary (what a
  streaming reader needs to have received for 1, 2, ... levels)."""
  data = bytes(data)
  header, at = _header(data)
  return [end for _, end in _blocks(data, header, at)]
