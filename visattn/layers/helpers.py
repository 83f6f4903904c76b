"""Small shared pieces used by blocks and backbones."""

from __future__ import annotations

from visattn.errors import BadValueError


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``value`` to a multiple of ``divisor`` without going below ``round_limit`` of it (timm's rule)."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def require(ok: bool, owner: str, arg: str, allowed: str, value: object) -> None:
    """Raise ``BadValueError`` (a ``ValueError``) naming the owner, the argument, what is allowed and what was given."""
    if not ok:
        raise BadValueError(f"{owner}: invalid {arg}={value!r}; {arg} must be {allowed}")
