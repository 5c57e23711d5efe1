"""How reports write numbers: percentages, byte sizes, counts, energies, ratios and tensor shapes."""

from __future__ import annotations


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def energy(pj: float) -> str:
    for unit, scale in (("pJ", 1.0), ("nJ", 1e3), ("uJ", 1e6)):
        if pj < 1e3 * scale or unit == "uJ":
            return f"{pj / scale:.3g} {unit}"
    return f"{pj} pJ"


def shape(dims: list[int] | dict[str, list[int]]) -> str:
    if isinstance(dims, dict):
        return ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in dims.items())
    return "x".join(map(str, dims))


def ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}x" if after else "n/a"
