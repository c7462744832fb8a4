"""The bit-widths infoq_hf supports (a leaf module: everything may import it)."""

MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits: int, where: str = "") -> int:
    """Validate a bit-width and return it as an int."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        place = f" for {where}" if where else ""
        raise ValueError(
            f"bit-width {bits!r}{place} is not supported: infoq_hf packs integer widths "
            f"from {MIN_BITS} to {MAX_BITS}; leave the layer in float (drop it from the policy) instead"
        )
    return bits
