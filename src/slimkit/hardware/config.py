"""Hardware descriptions for the cost models: validated like every recipe section, with documented defaults.

A recipe names them under `measure.hardware` (`systolic`, `lut`, `arithmetic`); the cost functions take them
as plain arguments. Defaults are illustrative, not a claim about one chip: an 8x8 array (Sense's tile of 8
input channels), 8-bit operands, 64 KiB buffers and 16 bytes of DRAM per cycle (a 128-bit bus at the array's
clock); see docs/hardware.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from slimkit.config import StrictModel

HOROWITZ = ("M. Horowitz, \"Computing's energy problem (and what we can do about it)\", ISSCC 2014, "
            "doi:10.1109/ISSCC.2014.6757323; 45 nm, 0.9 V")
# NanGate FreePDK45 Open Cell Library: a 2:1 multiplexer (MUX2_X1, 1.862 um^2) against a full adder (FA_X1,
# 4.256 um^2), the ratio a multiplexer bit is priced at against one bit slice of Horowitz's 8-bit add
MUX2_PER_ADDER_BIT = 1.862 / 4.256


class SystolicConfig(StrictModel):
    """An R x C systolic array in the Sense mapping: rows take the input channels of one tile, columns take
    filters; `dataflow` sets the loop order, so what stays on chip and what DRAM carries.

    References:
        Sun et al., "Sense: Model Hardware Co-design for Accelerating Sparse CNN on Systolic Array",
        arXiv:2202.00389. Chen, Emer & Sze, "Eyeriss: A Spatial Architecture for Energy-Efficient Dataflow for
        Convolutional Neural Networks", ISCA 2016 (the dataflow taxonomy).
    """

    dataflow: Literal["weight_stationary", "output_stationary"] = "weight_stationary"
    rows: int = Field(8, ge=1, le=4096, description="PE rows: input channels per pass (Sense's tile)")
    cols: int = Field(8, ge=1, le=4096, description="PE columns: filters per pass")
    weight_bits: int = Field(8, ge=1, le=32)
    activation_bits: int = Field(8, ge=1, le=32)
    psum_bits: int = Field(32, ge=1, le=64)
    input_buffer_kib: float = Field(64.0, gt=0)
    weight_buffer_kib: float = Field(64.0, gt=0)
    output_buffer_kib: float = Field(64.0, gt=0)
    dram_bytes_per_cycle: float = Field(16.0, gt=0)
    batch: int = Field(1, ge=1, description="samples per inference")
    skip_zero_weights: bool = Field(True, description="weights stored compressed, zero weights skipped")
    activation_sparsity: bool = Field(True, description="skip zero input activations, measured on calibration "
                                                        "batches")
    calibration_batches: int = Field(1, ge=1)


class LutPartition(StrictModel):
    """A module whose every output is one truth table of `fan_in` inputs of `input_bits` each, whatever float
    sub-network computes it inside (NeuraLUT's L-LUT). Its output bits are those of the quantizer that next
    reads it, or `output_bits` when given."""

    fan_in: int = Field(ge=1, description="inputs each output of the partition reads")
    input_bits: int = Field(ge=1, le=32)
    output_bits: int | None = Field(None, ge=1, le=32)


class LutConfig(StrictModel):
    """Neurons as FPGA lookup tables (LogicNets-style): each neuron's sparse, quantized inputs address a table.

    References:
        Umuroglu, Akhauri, Fraser & Blott, "LogicNets: Co-Designed Neural Networks and Circuits for
        Extreme-Throughput Applications", FPL 2020, arXiv:2004.03021 (the LUT6 cost formula).
    """

    max_table_bits: int = Field(20, ge=1, le=40, description="address bits F x B above which a neuron's table "
                                                             "is called infeasible and export refuses it")
    final_output_bits: int = Field(8, ge=1, le=32, description="output bits of a layer no quantizer reads "
                                                               "(the logits)")
    partitions: dict[str, LutPartition] = Field(
        default_factory=dict, description="module name -> a sub-network costed as one table per output "
                                          "(NeuraLUT): its modules inside are not costed one by one")


class OpCost(StrictModel):
    """One operation at one width: energy per operation and silicon area of one unit."""

    energy_pj: float = Field(ge=0)
    area_um2: float = Field(ge=0)


def _costs(table: dict[int, tuple[float, float]]) -> dict[int, OpCost]:
    return {bits: OpCost(energy_pj=e, area_um2=a) for bits, (e, a) in table.items()}


def _multipliers() -> dict[int, OpCost]:
    """Horowitz's 8-bit (0.2 pJ, 282 um^2) and 32-bit (3.1 pJ, 3495 um^2) integer multiplies, and below 8 bits
    the 8-bit figures scaled by (b/8)^2: a b x b array multiplier has b^2 partial-product cells (Horowitz's own
    8 -> 32-bit energy ratio, 15.5, is close to the (32/8)^2 = 16 this predicts). Assumed, not measured."""
    table = {b: (0.2 * (b / 8) ** 2, 282 * (b / 8) ** 2) for b in range(1, 9)}
    return _costs({**table, 32: (3.1, 3495)})


class UnitCosts(StrictModel):
    """Energy and area per operation, keyed by operand width in bits. An op of width b costs the entry of the
    smallest listed width >= b (conservative); wider than every entry is an error naming the op.

    Defaults: Horowitz's 45 nm table (ISSCC 2014). It lists no multiplexer, no XNOR or XOR gate and no
    multiplier narrower than 8 bits, so these are *assumed*: `xnor` and `xor` one eighth of an 8-bit add per bit
    (one adder bit slice); `mux2`, one bit of a 2:1 multiplexer, 0.44 of that slice (NanGate 45 nm's MUX2_X1
    against its full adder, area for both energy and area), which prices a shift over S fixed positions as an
    S:1 multiplexer, (S - 1) mux2 per operand bit; and `int_mult` / `uint_mult` below 8 bits the 8-bit multiply
    scaled by (b/8)^2 (array-multiplier cells). `uint_mult` is the unsigned magnitude multiply of
    sign-magnitude weights, priced like a signed one of the same width (a Baugh-Wooley signed array has the
    same b^2 cells). Memory reads are Horowitz's, per 64-bit word: `sram_read_pj` by capacity in KiB (8 KB
    10 pJ, 32 KB 20 pJ, 1 MB 100 pJ) and `dram_read_pj`, twice his 640 pJ 32-bit DRAM read (1.28 nJ; his 64-bit
    row gives 1.3-2.6 nJ). Replace them (or the whole table) with numbers for your process.
    """

    source: str = HOROWITZ
    int_add: dict[int, OpCost] = Field(default_factory=lambda: _costs({8: (0.03, 36), 16: (0.05, 67),
                                                                       32: (0.1, 137)}))
    int_mult: dict[int, OpCost] = Field(default_factory=_multipliers)
    uint_mult: dict[int, OpCost] = Field(default_factory=_multipliers)
    fp_add: dict[int, OpCost] = Field(default_factory=lambda: _costs({16: (0.4, 1360), 32: (0.9, 4184)}))
    fp_mult: dict[int, OpCost] = Field(default_factory=lambda: _costs({16: (1.1, 1640), 32: (3.7, 7700)}))
    xnor: OpCost = Field(default_factory=lambda: OpCost(energy_pj=0.03 / 8, area_um2=36 / 8))
    xor: OpCost = Field(default_factory=lambda: OpCost(energy_pj=0.03 / 8, area_um2=36 / 8))
    mux2: OpCost = Field(default_factory=lambda: OpCost(energy_pj=0.03 / 8 * MUX2_PER_ADDER_BIT,
                                                        area_um2=36 / 8 * MUX2_PER_ADDER_BIT))
    sram_read_pj: dict[float, float] = Field(default_factory=lambda: {8.0: 10.0, 32.0: 20.0, 1024.0: 100.0},
                                             description="energy of a 64-bit read, by SRAM capacity in KiB")
    dram_read_pj: float = Field(1280.0, ge=0, description="energy of a 64-bit DRAM read")

    @model_validator(mode="before")
    @classmethod
    def _no_shift_table(cls, data: object) -> object:
        if isinstance(data, dict) and "shift" in data:
            raise ValueError("'shift': a shift is no longer priced as an add of its width; a shift over S fixed "
                             "positions is an S:1 multiplexer of the operand's width, priced per bit by 'mux2' "
                             "(energy_pj, area_um2 of one bit of a 2:1 multiplexer)")
        return data

    @model_validator(mode="after")
    def _widths(self) -> UnitCosts:
        if not self.sram_read_pj or any(kib <= 0 or pj < 0 for kib, pj in self.sram_read_pj.items()):
            raise ValueError(f"'sram_read_pj': needs at least one entry, keyed by capacities > 0 KiB with energies "
                             f">= 0, not {self.sram_read_pj}")
        for name in ("int_add", "int_mult", "uint_mult", "fp_add", "fp_mult"):
            table = getattr(self, name)
            if not table or any(bits < 1 for bits in table):
                raise ValueError(f"'{name}': needs at least one entry, keyed by widths >= 1 bit, not {sorted(table)}")
        return self


class ArithmeticConfig(StrictModel):
    """Counts of multiplies, shifts, adds, XNORs and popcounts per layer, and of the same layer with its integer
    weights stored sign-magnitude or CSD-encoded, priced with `units`; the energy of reading the operands from an
    on-chip SRAM of `sram_kib` and from DRAM (weights once per `batch` samples); the area of one MAC lane."""

    units: UnitCosts = Field(default_factory=UnitCosts)
    sram_kib: float = Field(32.0, gt=0, description="capacity of the on-chip buffer every MAC reads its operands "
                                                    "from (prices its reads)")
    batch: int = Field(1, ge=1, description="samples per inference: weights are read from DRAM once per batch")


class HardwareConfig(StrictModel):
    """`measure.hardware`: the targets a run is costed on (at least one)."""

    systolic: SystolicConfig | None = None
    lut: LutConfig | None = None
    arithmetic: ArithmeticConfig | None = None

    @model_validator(mode="after")
    def _one_target(self) -> HardwareConfig:
        if self.systolic is None and self.lut is None and self.arithmetic is None:
            raise ValueError("'measure.hardware': names no target; give at least one of 'systolic', 'lut', "
                             "'arithmetic' (e.g. systolic: {})")
        return self
