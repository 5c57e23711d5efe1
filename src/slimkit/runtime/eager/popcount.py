"""popcount for numba: LLVM's ctpop intrinsic, which numba does not expose. LLVM lowers it to the POPCNT
instruction, and vectorises loops of it with AVX2 byte lookups where that is faster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
from numba import types
from numba.extending import intrinsic


@intrinsic
def _ctpop(typingctx: Any, value: Any) -> Any:
    """Number of set bits of a uint64, as a uint64."""
    if value != types.uint64:
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


# numba's stubs type an intrinsic as called with its typing signature (typingctx, value), as from Python,
# where it cannot run; jitted code calls it with the value alone and gets a uint64
popcount = cast(Callable[[np.uint64], np.uint64], _ctpop)
