"""Parameter counts in the papers' style: 23.51M, 419.43K, 4.86K (two decimals, decimal K/M/B)."""
from __future__ import annotations


def paper_count(n: int) -> str:
    """`n` parameters as results tables print them: 23,510,081 -> "23.51M", 4,864 -> "4.86K", 512 -> "512"."""
    if n < 0:
        raise ValueError(f"a parameter count cannot be negative ({n})")
    for unit, size in (("B", 10 ** 9), ("M", 10 ** 6), ("K", 10 ** 3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))
