"""The report's hardware section (measure.hardware; slimkit.hardware): each costed target with the configuration
that produced its numbers next to them, and a target that could not cost the model with its reason. Every
figure is a model output under the assumptions docs/hardware.md states."""

from __future__ import annotations

from typing import Any

from slimkit.report.text import count, energy, pct, ratio, size


def _or_dash(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _systolic_config(c: dict[str, Any]) -> str:
    return (f"Configuration: {c['rows']}x{c['cols']} PEs, {c['dataflow'].replace('_', ' ')}, "
            f"{c['weight_bits']}-bit weights, {c['activation_bits']}-bit activations, {c['psum_bits']}-bit partial "
            f"sums, buffers {c['input_buffer_kib']:g}/{c['weight_buffer_kib']:g}/{c['output_buffer_kib']:g} KiB "
            f"(input/weight/output), DRAM {c['dram_bytes_per_cycle']:g} B/cycle, batch {c['batch']}; zero weights "
            f"{'skipped' if c['skip_zero_weights'] else 'computed'}, zero activations "
            f"{'skipped (measured on calibration batches)' if c['activation_sparsity'] else 'computed'}.")


def _systolic_markdown(systolic: dict[str, Any]) -> list[str]:
    """Totals of each costed model (lockstep cycles beside the stall-free bound) and the per-layer table."""
    c = systolic["config"]
    lines = [f"### Systolic array: {c['rows']}x{c['cols']} PEs, {c['dataflow'].replace('_', ' ')}", "",
             _systolic_config(c), f"Reference: {systolic['reference']}.", "",
             "Cycles run the PEs in lockstep: each output position waits for the busiest PE. The stall-free bound "
             "is what the same work takes if no PE ever waits.", "",
             "| model | cycles (lockstep) | vs dense | stall-free bound | weight stalls | activation stalls | "
             "PE utilisation | DRAM | vs dense | bandwidth-bound layers |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = systolic["dense"]["totals"]
    labels = {"dense": "dense", "compressed": "compressed",
              "compressed_rearranged": "compressed, channels rearranged"}
    layers = len(systolic["dense"]["layers"])
    for key, label in labels.items():
        if key in systolic:
            t = systolic[key]["totals"]
            lines.append(f"| {label} | {t['cycles']:,} | {ratio(base['cycles'], t['cycles'])} fewer | "
                         f"{_or_dash(t.get('stall_free_cycles'))} | {t['weight_stall_cycles']:,.0f} | "
                         f"{t['activation_stall_cycles']:,.0f} | {pct(t['utilization'])} | {size(t['dram_bytes'])} | "
                         f"{ratio(base['dram_bytes'], t['dram_bytes'])} less | "
                         f"{_or_dash(t.get('bandwidth_bound_layers'))} of {layers} |")
    bandwidth_bound = systolic["compressed"]["totals"].get("bandwidth_bound_layers")
    if bandwidth_bound:
        lines += ["", f"{bandwidth_bound} of the compressed model's {layers} layers are bandwidth-bound at "
                      f"{c['dram_bytes_per_cycle']:g} B/cycle: their cycles are their DRAM bytes over the bandwidth, "
                      f"so they move with `dram_bytes_per_cycle`."]
    lines += ["", "| layer | dense cycles | compressed | stall-free | rearranged | weight stalls | activation stalls | "
                  "utilisation | weights stored | DRAM dense | DRAM compressed | bound |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    rearranged = systolic.get("compressed_rearranged", {}).get("layers")
    for i, (d, k) in enumerate(zip(systolic["dense"]["layers"], systolic["compressed"]["layers"], strict=True)):
        moved = f"{rearranged[i]['cycles']:,}" if rearranged else "-"
        bound = "**bandwidth**" if k["bound"] in ("bandwidth", "memory") else k["bound"]  # "memory": older runs
        lines.append(f"| {k['name']} | {d['cycles']:,} | {k['cycles']:,} | {_or_dash(k.get('stall_free_cycles'))} | "
                     f"{moved} | {k['weight_stall_cycles']:,.0f} | {k['activation_stall_cycles']:,.0f} | "
                     f"{pct(k['utilization'])} | {k.get('weight_format', '-')} | {size(d['dram_bytes'])} | "
                     f"{size(k['dram_bytes'])} | {bound} |")
    lines.append("")
    return lines


def _lut_markdown(lut: dict[str, Any]) -> list[str]:
    """Per layer (or partition): fan-in, table sizes, LUT6s, logic levels and the registers of its stage."""
    c, t = lut["config"], lut["totals"]
    partitions = ", ".join(f"{name} (fan-in {p['fan_in']}, {p['input_bits']}-bit inputs)"
                           for name, p in c.get("partitions", {}).items()) or "none"
    lines = ["### LUT mapping (LUT6, LogicNets cost)", "",
             f"Configuration: tables above 2^{c['max_table_bits']} entries are infeasible; outputs no quantizer reads "
             f"take {c.get('final_output_bits', '-')} bits; partitions costed as one table per output: {partitions}. "
             f"One register stage after every layer (LogicNets' pipelining).", "",
             "| layer | kind | input bits | output bits | max fan-in | mean fan-in | address bits | LUT6s | "
             "logic levels | registers | feasible |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {layer['name']} | {layer.get('kind', 'layer')} | {layer['input_bits']} | {layer['output_bits']} | "
              f"{layer['max_fan_in']} | {layer['mean_fan_in']:.1f} | {layer['max_address_bits']} | "
              f"{layer['luts']:.3g} | {_or_dash(layer.get('levels'))} | {_or_dash(layer.get('registers'))} | "
              f"{'yes' if layer['feasible'] else 'no'} |" for layer in lut["layers"]]
    lines += ["", f"Total: {t['luts']:.3g} LUT6s"]
    if "registers" in t:
        lines[-1] += (f", {t['registers']:,} pipeline registers, {t['pipeline_stages']} stages (latency "
                      f"{t['latency_cycles']} cycles), {t['levels']} logic levels in all, at most "
                      f"{t['max_levels_per_stage']} between two registers")
    lines[-1] += ". Synthesis shrinks tables (shared cofactors, constant outputs): the LUT6 count is an upper bound."
    lines.append("")
    return lines


def _arithmetic_markdown(arithmetic: dict[str, Any]) -> list[str]:
    """Per layer: operations, one MAC lane's area, and the energy of the operations and of the operand reads;
    the encoded alternatives where costed."""
    c, t = arithmetic.get("config", {}), arithmetic["totals"]
    lines = ["### Arithmetic (per sample)", "", f"Unit costs: {arithmetic['source']}.",
             f"Configuration: operands read from a {c['sram_kib']:g} KiB SRAM by every MAC (no reuse), "
             f"weights from DRAM once per {c['batch']} sample(s), inputs once." if c else "", "",
             "| layer | form | max fan-in | adder tree depth | accumulator bits | operations | MAC lane area | "
             "compute | SRAM reads | DRAM reads | energy | dense fp32 energy |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for layer in arithmetic["layers"]:
        ops = ", ".join(f"{k} {count(v)}" for k, v in layer["ops"].items())
        movement = layer.get("movement") or {}
        lines.append(f"| {layer['name']} | {layer['form']} | {layer['max_fan_in']} | {layer['adder_tree_depth']} | "
                     f"{layer['accumulator_bits']} | {ops} | {_or_dash(layer.get('lane_area_um2'))} um^2 | "
                     f"{energy(layer.get('compute_energy_pj', layer['energy_pj']))} | "
                     f"{energy(movement['sram_energy_pj']) if movement else '-'} | "
                     f"{energy(movement['dram_energy_pj']) if movement else '-'} | {energy(layer['energy_pj'])} | "
                     f"{energy(layer['dense_float_energy_pj'])} |")
    lines += ["", f"Total: {energy(t['energy_pj'])} per sample against {energy(t['dense_float_energy_pj'])} "
                  f"for the same layers as dense fp32 MACs ({ratio(t['dense_float_energy_pj'], t['energy_pj'])} "
                  f"less)."]
    if "compute_energy_pj" in t:
        lines[-1] += (f" Of it, operations {energy(t['compute_energy_pj'])}, SRAM reads {energy(t['sram_energy_pj'])}, "
                      f"DRAM reads {energy(t['dram_energy_pj'])}; one MAC lane that runs every layer: "
                      f"{t['lane_area_um2']:,.0f} um^2.")
    lines.append("")
    encoded = [layer for layer in arithmetic["layers"] if layer.get("sign_magnitude") and layer.get("csd")]
    if encoded:
        lines += ["Integer weights stored sign-magnitude (XOR + unsigned multiply of the magnitude bits) or "
                  "CSD-encoded (a shift, as a multiplexer, and an add per non-zero digit); energies include the same "
                  "operand reads:", "",
                  "| layer | as stored | sign-magnitude | magnitude bits | CSD | non-zero CSD digits |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {layer['name']} | {energy(layer['energy_pj'])} | "
                  f"{energy(layer['sign_magnitude']['energy_pj'])} | {layer['sign_magnitude']['magnitude_bits']} | "
                  f"{energy(layer['csd']['energy_pj'])} | {layer['csd']['nonzero_digits']} |" for layer in encoded]
        lines += ["", f"Total with every such layer sign-magnitude: {energy(t['sign_magnitude_energy_pj'])}; "
                      f"CSD-encoded: {energy(t['csd_energy_pj'])}."]
        if "csd_lane_area_um2" in t:
            lines[-1] += (f" MAC lane: {t['sign_magnitude_lane_area_um2']:,.0f} um^2 sign-magnitude, "
                          f"{t['csd_lane_area_um2']:,.0f} um^2 CSD.")
        lines.append("")
    return lines


_HARDWARE_TARGETS = (("systolic", "Systolic array", _systolic_markdown), ("lut", "LUT mapping", _lut_markdown),
                     ("arithmetic", "Arithmetic", _arithmetic_markdown))


def hardware_markdown(section: dict[str, Any], plot: str | None = None) -> list[str]:
    """The hardware section: per-layer tables of each costed target, a target that could not cost the model
    with its reason."""
    lines = ["## Hardware (analytical cost models)", "",
             "Computed from the model by slimkit's analytical cost models (docs/hardware.md states their "
             "assumptions, formulas and calibration against published figures): model output under the stated "
             "configuration, not measurements.", ""]
    for key, title, markdown in _HARDWARE_TARGETS:
        target = section.get(key)
        if target is not None and "error" in target:
            lines += [f"{title}: could not cost this model: {target['error']}", ""]
        elif target is not None:
            lines += markdown(target)
    if plot:
        lines += [f"![hardware cost against dense]({plot})", ""]
    return lines


def hardware_plottable(section: dict[str, Any]) -> bool:
    """Whether a hardware section holds numbers to plot (a systolic or arithmetic target that costed)."""
    return any(key in section and "error" not in section[key] for key in ("systolic", "arithmetic"))
