"""Non-uniform level sets on [0, 1]: sum-of-two-powers-of-two (SP2, Chang et al., HPCA 2021, arXiv:2012.04240)
and additive powers of two (APoT, Li et al., ICLR 2020, arXiv:1909.13144)."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor


def _powers(count: int, first: int, stride: int) -> list[float]:
    return [2.0 ** -(first + stride * i) for i in range(count)]


def apot_levels(b: int) -> Tensor:
    """APoT's magnitude levels for b bits (2..5): sums of one term from each additive base, scaled to max 1.

    Bases as the APoT code builds them: b = 2 uses {2^-1, 2^-2, 2^-3}; b = 4 splits odd and even powers over
    two bases; b = 3 and 5 move the finest term(s) into an extra base.
    """
    if b == 2:
        bases = [_powers(3, 1, 1)]
    elif b == 3:
        bases = [[0.5, 0.25, 2.0**-4], [2.0**-3]]
    elif b == 4:
        bases = [_powers(3, 1, 2), _powers(3, 2, 2)]
    elif b == 5:
        bases = [[0.5, 2.0**-3, 2.0**-6], [0.25, 2.0**-4, 2.0**-7], [2.0**-5]]
    else:
        raise ValueError(f"APoT levels exist for 2 to 5 bits, not {b}")
    sums = {sum(terms) for terms in itertools.product(*([0.0, *base] for base in bases))}
    values = torch.tensor(sorted(sums))
    return values / values.max()


def sp2_levels(bits: int) -> Tensor:
    """SP2 magnitudes: q1 + q2 with q_i in {0, 2^-1, ..., 2^-(2^m_i - 1)}, m1 + m2 + 1 = bits, m1 >= m2,
    scaled to max 1. For 4 bits: {0, 1/8, 1/4, 1/2, 5/8, 3/4, 1}."""
    if bits < 2:
        raise ValueError(f"SP2 needs at least 2 bits, not {bits}")
    m2 = (bits - 1) // 2
    m1 = bits - 1 - m2

    def terms(m: int) -> list[float]:
        return [0.0] + [2.0 ** -k for k in range(1, 2**m)]

    values = torch.tensor(sorted({a + b for a in terms(m1) for b in terms(m2)}))
    return values / values.max()
