"""popcount for numba: LLVM's ctpop intrinsic, which numba does not expose. LLVM lowers it to the POPCNT
instruction, and vectorises loops of it with AVX2 byte lookups where that is faster."""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic


@intrinsic
def popcount(typingctx, value):
    """Number of set bits of a uint64, as a uint64."""
    if value != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen
