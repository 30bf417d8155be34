"""The counter-based hash behind every backend's dropout masks.

Element ``i`` of a mask depends only on ``(seed, i, p)``, so the mask is the
same on every backend, for any thread count and for any tiling of the array.
The hash is SplitMix64's finaliser (Steele, Lea and Flood, 2014) applied to a
per-seed key plus ``i`` times the golden-ratio increment; the top 32 bits are
compared against ``threshold = round(p * 2**32)``: element i is kept iff
``bits >= threshold`` (so p = 0 keeps all, p = 1 keeps none).

Each backend implements ``keep_bits`` in its own language with these
constants; ``tests/test_dropout.py`` checks them bit for bit against the plain
Python version here.
"""

GOLDEN_GAMMA = 0x9E3779B97F4A7C15
MIX_MULT_1 = 0xBF58476D1CE4E5B9
MIX_MULT_2 = 0x94D049BB133111EB
MASK64 = (1 << 64) - 1
THRESHOLD_ONE = 1 << 32


def mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * MIX_MULT_1) & MASK64
    z = ((z ^ (z >> 27)) * MIX_MULT_2) & MASK64
    return z ^ (z >> 31)


def seed_key(seed: int) -> int:
    """Per-seed key: decorrelates nearby seeds (0, 1, 2, ...)."""
    return mix64((seed + GOLDEN_GAMMA) & MASK64)


def keep_bits(key: int, index: int) -> int:
    """32 uniform bits for element ``index`` under ``key``."""
    return mix64((key + index * GOLDEN_GAMMA) & MASK64) >> 32


def threshold(p: float) -> int:
    """Integer threshold in [0, 2**32] for drop probability ``p``."""
    return min(THRESHOLD_ONE, max(0, round(p * THRESHOLD_ONE)))
