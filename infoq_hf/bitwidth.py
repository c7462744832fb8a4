"""The bit-widths infoq_hf supports (a leaf module: everything may import it)."""

import numbers

MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits: int, where: str = "") -> int:
    """Validate a bit-width and return it as an int. Only integers pass (numpy's too): 2.5, 4.7 or "4"
    are refused rather than rounded, so a typo never silently becomes another width."""
    place = f" for {where}" if where else ""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise ValueError(
            f"bit-width {bits!r}{place} must be an integer, got a {type(bits).__name__}; "
            f"pick one of {MIN_BITS}..{MAX_BITS}"
        )
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(
            f"bit-width {bits!r}{place} is not supported: infoq_hf packs integer widths "
            f"from {MIN_BITS} to {MAX_BITS}; leave the layer in float (drop it from the policy) instead"
        )
    return int(bits)
