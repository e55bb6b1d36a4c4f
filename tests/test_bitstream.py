"""The progressive token bitstream (vftok/api/bitstream.py): exact round
trip, every prefix at a level boundary decodes to the first levels, a prefix
ending mid-level decodes its complete levels, damaged streams are one error,
and the adaptive range coder spends fewer bits where the digits are skewed."""
import numpy as np
import pytest

from vftok.api import bitstream

LEVELS = (8, 8, 8, 5, 5, 5)
VOCAB = int(np.prod(LEVELS))


def skewed_tokens(t=21, k=16, seed=0):
  """FSQ-like ids: each digit mostly at its middle values."""
  rng = np.random.default_rng(seed)
  digits = [np.clip(np.round(rng.normal(level / 2 - 0.5, level / 6, (t, k))),
                    0, level - 1).astype(np.int64) for level in LEVELS]
  basis = np.cumprod([1] + list(LEVELS[:-1]))
  return sum(d * b for d, b in zip(digits, basis))


@pytest.mark.parametrize('coder', ['range', 'fixed'])
def test_round_trip_and_every_level_prefix_decodes(coder):
  tokens = skewed_tokens()
  data = bitstream.encode(tokens, LEVELS, coder=coder)
  got, header = bitstream.decode(data)
  assert header['coder'].startswith('constriction' if coder == 'range'
                                    else 'fixed')
  np.testing.assert_array_equal(got, tokens)
  assert header['frames'] == 21 and header['levels'] == 16
  ends = bitstream.level_offsets(data)
  assert len(ends) == 16 and ends[-1] == len(data)
  for n, end in enumerate(ends, start=1):
    np.testing.assert_array_equal(bitstream.decode(data[:end])[0],
                                  tokens[:, :n])
    # Cut inside the next level: the complete levels only.
    if n < 16:
      np.testing.assert_array_equal(
          bitstream.decode(data[:(end + ends[n]) // 2])[0], tokens[:, :n])


def test_adaptive_coding_spends_fewer_bits_on_skewed_digits():
  uniform = np.random.default_rng(1).integers(0, VOCAB, (21, 16))
  skewed = skewed_tokens()
  bits = lambda x: 8 * len(bitstream.encode(x, LEVELS, coder='range')) / x.size
  # Uniform ids cost their entropy (log2 64000 = 15.97 bits) plus at most
  # 12 %: each level's range coder flushes its last word (21 ids = 42 bytes
  # of entropy per level here) and the counts learn a flat distribution.
  assert 15.9 < bits(uniform) < 15.97 * 1.12
  assert bits(skewed) < bits(uniform) - 2   # ~12.6 bits of entropy here


def test_auto_keeps_the_shorter_code():
  """A long skewed stream: the range coder; a demo-length clip (5 latent
  frames, so 5 tokens per level): the fixed 16 bits, as the per-level
  framing would cost more."""
  for tokens, winner in ((skewed_tokens(), 'range'),
                         (skewed_tokens(5, 16), 'fixed')):
    sizes = {c: len(bitstream.encode(tokens, LEVELS, coder=c))
             for c in ('range', 'fixed')}
    auto = bitstream.encode(tokens, LEVELS)
    assert len(auto) == min(sizes.values())
    assert sizes[winner] < sizes[{'range': 'fixed', 'fixed': 'range'}[winner]]
    np.testing.assert_array_equal(bitstream.decode(auto)[0], tokens)
  # The fixed code: 16 bits per id, a 17-byte header, no framing.
  assert len(bitstream.encode(skewed_tokens(5, 16), LEVELS, coder='fixed')
             ) == 17 + 16 * 10
  with pytest.raises(ValueError, match="coder='zip'"):
    bitstream.encode(skewed_tokens(5, 4), LEVELS, coder='zip')


@pytest.mark.parametrize('coder', ['range', 'fixed'])
def test_damaged_streams_are_one_error(coder):
  data = bitstream.encode(skewed_tokens(5, 4), LEVELS, coder=coder)
  ends = bitstream.level_offsets(data)
  for bad, match in ((b'nope' + data[4:], 'no VFTB1 magic'),
                     (data[:7], 'cut inside its header'),
                     (data[:5] + b'\x07' + data[6:], 'coder id 7'),
                     (data[:ends[0] - 1], 'no complete level')):
    with pytest.raises(bitstream.BitstreamError, match=match):
      bitstream.decode(bad)
  with pytest.raises(ValueError, match='outside'):
    bitstream.encode(np.full((2, 2), VOCAB), LEVELS)
  with pytest.raises(ValueError, match=r'\[T, k\]'):
    bitstream.encode(np.zeros((2, 2, 2), int), LEVELS)
