"""Prices from a unit-cost table (`UnitCosts`): the energy of counted operations, the area of the units one
multiply-accumulate lane needs, and the energy of memory reads.

Operations are keyed "op@bits" (int_add@16, fp_mult@32, mux2@1): an op of width b takes the entry of the
smallest listed width >= b, and a width beyond the table is an error naming the op. A shift over S fixed
positions is an S:1 multiplexer of the operand's width, (S - 1) two-input multiplexer bits per operand bit
(a tree of 2:1 multiplexers); it is counted in mux2 bits. A popcount is priced by the adds and XNORs listed
beside it.
"""

from __future__ import annotations

from slimkit.errors import SlimkitError
from slimkit.hardware.config import OpCost, UnitCosts

SINGLE_WIDTH = ("xnor", "xor", "mux2")  # per-bit gates: one entry each, no width table


def unit(units: UnitCosts, op: str, bits: int) -> OpCost:
    """The cost of one `op` (int_add, int_mult, uint_mult, fp_add, fp_mult) at `bits`: the smallest listed
    width that holds it; a per-bit gate (xnor, xor, mux2) has one entry."""
    if op in SINGLE_WIDTH:
        single: OpCost = getattr(units, op)
        return single
    table: dict[int, OpCost] = getattr(units, op)
    fitting = [w for w in table if w >= bits]
    if not fitting:
        raise SlimkitError(f"the unit-cost table lists {op} up to {max(table)} bits, and this layer needs "
                           f"{bits}; add a wider entry to measure.hardware.arithmetic.units.{op}")
    return table[min(fitting)]


def tally(*counts: tuple[str, int]) -> dict[str, int]:
    """("op@bits", count) pairs summed by key, zero counts left out (two adds of one width are one key)."""
    out: dict[str, int] = {}
    for key, count in counts:
        if count:
            out[key] = out.get(key, 0) + count
    return out


def _key_cost(key: str, units: UnitCosts) -> OpCost | None:
    op, _, bits = key.partition("@")
    return None if op == "popcount" else unit(units, op, int(bits) if bits else 1)


def ops_energy(ops: dict[str, int], units: UnitCosts) -> float:
    """Sum of count x unit energy over `ops` ("op@bits": count)."""
    return sum(count * cost.energy_pj for key, count in ops.items() if (cost := _key_cost(key, units)) is not None)


def lane_area(lane: dict[str, int], units: UnitCosts) -> float:
    """Silicon of one multiply-accumulate lane: `lane` maps "op@bits" to the units of it the lane holds."""
    return sum(count * cost.area_um2 for key, count in lane.items() if (cost := _key_cost(key, units)) is not None)


def shift_mux_bits(operand_bits: int, positions: int) -> int:
    """Two-input multiplexer bits of one shift of an `operand_bits`-wide value over `positions` fixed
    positions: an S:1 multiplexer per operand bit is S - 1 of them (a shift over one position is wiring)."""
    return operand_bits * max(0, positions - 1)


def sram_read_pj(units: UnitCosts, kib: float) -> float:
    """Energy of one 64-bit read from an SRAM of `kib` KiB: the smallest listed capacity that holds it."""
    fitting = [size for size in units.sram_read_pj if size >= kib]
    if not fitting:
        raise SlimkitError(f"the unit-cost table lists SRAM reads up to {max(units.sram_read_pj):g} KiB, and "
                           f"sram_kib is {kib:g}; add a larger entry to measure.hardware.arithmetic.units.sram_read_pj")
    return units.sram_read_pj[min(fitting)]
