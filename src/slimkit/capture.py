"""A model captured from the example input it really gets, for the ONNX and OpenVINO exports.

An export takes the example as one of four forms (`Example`):

- a per-sample shape (C, H, W): one float input of normal noise with a batch of 1, as exports always took it;
- a tensor with its batch dimension (an image batch, token ids);
- a tuple of tensors, fed to the model positionally;
- a dict of tensors (token ids, attention masks, pixel values), fed by keyword.

A shape or a tensor is traced by TorchScript (torch.onnx's `dynamo=False` exporter), as before: slimkit's own
operators are written only by that exporter (their symbolic functions), and it exported ResNet-20 in 1 s where
torch.export took 6 s. A tuple or a dict is captured by torch.export, which HF BERT, GPT-2 and ViT pass and
torch.fx and TorchScript do not reliably pass (they need data-dependent masks and dict outputs), and written as
ONNX by torch.onnx's dynamo exporter, which OpenVINO reads too. The captured graph returns the tensor the model's
output carries (`train.objective.logits_of`: the output, `.logits` or `["logits"]`); a forward that takes
`use_cache` is called with `use_cache=False`, since a graph that returns logits alone has no key/value cache to
give back (with it, GPT-2's cache concatenates onto an empty tensor, which OpenVINO refuses). The batch axis of
every input is dynamic, and dim 1 of every 2-D input (token ids and masks: the sequence) where the model allows
(torch.export's `Dim.AUTO`: a model that fixes its length keeps it). An example of batch 1 is repeated to 2
before capture, since torch.export specialises axes of size 1.

A model torch.export cannot capture is a SlimkitError naming the op that stopped it, and the line of the
model's code that called it where torch says which: never a traceback from deep inside torch.
"""

from __future__ import annotations

import inspect
import io
import logging
import os
import traceback
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import SlimkitError, first_line
from slimkit.train.objective import logits_of

Example = Sequence[int] | Tensor | tuple[Tensor, ...] | Mapping[str, Tensor]
_TORCH = os.path.dirname(torch.__file__)


@dataclass(frozen=True)
class ExampleInputs:
    """An example as named tensors, each with its batch dimension. `by_keyword`: the model takes them as
    keyword arguments (a dict example); `torch_export`: captured by torch.export (a tuple or a dict example)."""

    names: tuple[str, ...]
    tensors: tuple[Tensor, ...]
    by_keyword: bool
    torch_export: bool

    def batch(self, size: int) -> tuple[Tensor, ...]:
        """The inputs with `size` samples, each a copy of the first (token ids stay valid ids)."""
        return tuple(t[:1].repeat(size, *[1] * (t.ndim - 1)) for t in self.tensors)

    def shapes(self, batch: int) -> dict[str, list[int]]:
        """Each input's shape at `batch` samples, by name."""
        return {name: [batch, *t.shape[1:]] for name, t in zip(self.names, self.tensors, strict=True)}

    def feed(self, tensors: Sequence[Tensor]) -> Tensor | tuple[Tensor, ...] | dict[str, Tensor]:
        """`tensors` in the form the example had: what `metrics.call` hands the model."""
        if self.by_keyword:
            return dict(zip(self.names, tensors, strict=True))
        return tensors[0] if not self.torch_export else tuple(tensors)


def example_inputs(example: Example) -> ExampleInputs:
    """`example` as named inputs (see the module docstring); anything else is an error naming what it was."""
    if isinstance(example, Tensor):
        return ExampleInputs(("input",), (example,), by_keyword=False, torch_export=False)
    if isinstance(example, Mapping):
        for key, value in example.items():
            if not isinstance(key, str) or not isinstance(value, Tensor) or value.ndim == 0:
                raise SlimkitError(f"an example dict maps argument names to tensors with a batch dimension; "
                                   f"{key!r} holds {type(value).__name__}")
        if not example:
            raise SlimkitError("the example dict is empty: give the tensors the model takes, by argument name")
        return ExampleInputs(tuple(example), tuple(example.values()), by_keyword=True, torch_export=True)
    if isinstance(example, Sequence) and example and all(isinstance(d, int) and not isinstance(d, bool)
                                                         for d in example):
        return ExampleInputs(("input",), (torch.randn(1, *example),), by_keyword=False, torch_export=False)
    if isinstance(example, tuple) and example and all(isinstance(t, Tensor) and t.ndim > 0 for t in example):
        names = ("input",) if len(example) == 1 else tuple(f"input{i}" for i in range(len(example)))
        return ExampleInputs(names, tuple(example), by_keyword=False, torch_export=True)
    raise SlimkitError(f"an example input is a per-sample shape, a tensor, a tuple of tensors or a dict of tensors "
                       f"(each with its batch dimension), not {type(example).__name__}")


class LogitsOf(nn.Module):
    """`model` called on positional tensors as the example feeds it, returning the tensor its output carries."""

    def __init__(self, model: nn.Module, inputs: ExampleInputs):
        super().__init__()
        self.model, self.names, self.by_keyword = model, inputs.names, inputs.by_keyword
        takes_cache = "use_cache" in inspect.signature(model.forward).parameters
        self.options: dict[str, Any] = {"use_cache": False} if takes_cache else {}

    def forward(self, *tensors: Tensor) -> Tensor:
        if self.by_keyword:
            return logits_of(self.model(**dict(zip(self.names, tensors, strict=True)), **self.options))
        return logits_of(self.model(*tensors, **self.options))


def _culprit(exc: BaseException) -> str:
    """What stopped torch.export: the op without export support, or the error torch raised, and the line of the
    model's code it was raised under (the innermost frame outside torch and this module)."""
    from torch._subclasses.fake_tensor import UnsupportedOperatorException

    what = (f"the op {exc.func} has no export support" if isinstance(exc, UnsupportedOperatorException) else
            f"{type(exc).__name__}: {first_line(exc)}")
    outside = [frame for frame in traceback.extract_tb(exc.__traceback__)
               if not frame.filename.startswith(_TORCH) and frame.filename != __file__]
    if outside:
        frame = outside[-1]
        what += f" (at {frame.filename}:{frame.lineno}, in {frame.name}: {(frame.line or '').strip()})"
    return what


@contextmanager
def _quiet() -> Iterator[None]:
    """torch's exporters warn, log and print at length (skipped torchvision ops; on a failure, the partial graph
    to stderr); a failure is reported by its error alone."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def capture(model: nn.Module, inputs: ExampleInputs) -> torch.export.ExportedProgram:
    """`model` (eval mode) captured by torch.export on `inputs`, batch axes dynamic and sequence axes where the
    model allows (see the module docstring)."""
    from torch.export import Dim

    batch = Dim("batch")
    shapes = tuple({0: batch, 1: Dim.AUTO} if t.ndim == 2 else {0: batch} for t in inputs.tensors)
    tensors = inputs.batch(2) if inputs.tensors[0].shape[0] == 1 else inputs.tensors
    was_training = model.training
    model.eval()
    try:
        with _quiet(), torch.no_grad():
            return torch.export.export(LogitsOf(model, inputs), tensors, dynamic_shapes=(shapes,), strict=False)
    except Exception as exc:  # torch.export's failures are many; each names its op or expression
        raise SlimkitError(f"torch.export cannot capture {type(model).__name__} from this example: "
                           f"{_culprit(exc)}") from None
    finally:
        model.train(was_training)


def write_onnx(program: torch.export.ExportedProgram, inputs: ExampleInputs, path: Path,
               translations: Mapping[Any, Any] | None = None) -> Path:
    """A captured program as one ONNX file (weights inside) by torch.onnx's dynamo exporter, its inputs named as
    the example names them and its output `logits`. `translations` maps custom torch operators to the onnxscript
    functions that write them (slimkit's engine operators, runtime/engine/quant_linear)."""
    try:
        with _quiet():
            torch.onnx.export(program, inputs.tensors, str(path), dynamo=True, input_names=list(inputs.names),
                              output_names=["logits"], external_data=False, verbose=False,
                              custom_translation_table=dict(translations) if translations else None)
    except Exception as exc:  # the exporter names the op it has no ONNX translation for
        raise SlimkitError(f"the ONNX exporter cannot translate the captured model: {type(exc).__name__}: "
                           f"{first_line(exc)}") from None
    return path
