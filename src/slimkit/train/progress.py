"""Progress display: a live bar with loss, accuracy and learning rate in a terminal; one line per epoch
everywhere (CI logs included). Only rank 0 prints."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True, soft_wrap=True)


class EpochProgress:
    def __init__(self, label: str, epoch: int, epochs: int, steps: int, enabled: bool):
        self.enabled = enabled
        self.header = f"{label} epoch {epoch + 1}/{epochs}"
        self._bar: Progress | None = None
        if enabled and console.is_terminal:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console,
                                 transient=True)
            self._task = self._bar.add_task(self.header, total=steps, stats="")
            self._bar.start()

    def update(self, loss: float, metric: str, lr: float) -> None:
        """Advance one step; `metric` is the running metric already formatted ('' for none)."""
        if self._bar is not None:
            self._bar.update(self._task, advance=1, stats=f"loss {loss:.4f}{metric} lr {lr:.4g}")

    def close(self, summary: str) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self.enabled:
            console.print(f"{self.header}: {summary}", highlight=False)
