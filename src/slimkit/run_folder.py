"""What `slimkit info`, `bench` and `export` read of a saved model: the model itself (a model.pt, a run folder or
a zoo name), and of a run folder's recipe only the sections they use (measure, data), each validated alone
under the user's trust, so that no code the recipe names is imported unless the command needs it and the
user allowed it (slimkit.trust)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimkit.errors import RecipeError, SlimkitError, first_line


def _run_dir(source: str) -> Path:
    """The run folder of `source`: the folder itself, or the folder a model.pt lies in."""
    return Path(source) if Path(source).is_dir() else Path(source).parent


def load_model(name: str, in_channels: int, input_size: int, num_classes: int
               ) -> tuple[Any, tuple[int, int, int], dict[str, Any]]:
    """(model, input shape, the files its stages export by name) from a model.pt, a run folder or a zoo name
    (built with the given shape facts)."""
    from slimkit.models import MODELS, build_model
    from slimkit.persistence import read_artifacts, read_model_file, rebuild
    from slimkit.recipe import ModelConfig

    source = Path(name)
    if source.is_dir():
        if not (source / "model.pt").exists() and (source / "weights.pt").exists():
            raise SlimkitError(f"{source} is a run of your own model (built by model.factory or given to "
                               f"slimkit.compress): {source / 'weights.pt'} holds its state_dict, which your code "
                               f"loads into the model it builds; slimkit rebuilds only zoo models from a file")
        source = source / "model.pt"
    if source.exists():
        arch, stages, state_dict = read_model_file(source)
        model = rebuild(arch, stages, state_dict, str(source))
        if arch.in_channels is None or arch.input_size is None:
            raise SlimkitError(f"{source}: its architecture does not record in_channels and input_size")
        return model, (arch.in_channels, arch.input_size, arch.input_size), read_artifacts(stages, str(source))
    if name in MODELS:
        model = build_model(ModelConfig(name=name), in_channels, num_classes, input_size)
        return model, (in_channels, input_size, input_size), {}
    raise SlimkitError(f"{name!r} is neither a saved model (file or run folder) nor a zoo model; "
                       f"zoo models: {', '.join(sorted(MODELS))}")


def run_hardware(source: str, model: Any, trust_code: bool) -> tuple[dict[str, Any] | None, str | None]:
    """The hardware section of the run folder of `source` (the folder, or its model.pt) when its recipe names
    measure.hardware: `model` costed on those targets (against the same layers with dense weights),
    calibrated on the run's training data. Data a factory builds is loaded only with `trust_code` (or an
    allow-listed package); otherwise the result is (None, why the section was skipped)."""
    from slimkit.metrics import MeasureConfig
    from slimkit.recipe import read_section

    run_dir = _run_dir(source)
    if not (run_dir / "recipe.yaml").exists():
        return None, None
    measure = read_section(run_dir / "recipe.yaml", "measure", MeasureConfig)
    config = measure.hardware if measure is not None else None
    if config is None:
        return None, None
    from slimkit.hardware import hardware_section

    count = config.systolic.calibration_batches if config.systolic is not None else 1
    try:
        batches = calibration_batches(source, count, trust_code)
    except RecipeError as exc:  # the run's data: its factory is not trusted, or its section no longer validates
        return None, f"measure.hardware is calibrated on the run's data, which was not loaded: {exc}"
    return hardware_section(model, batches, config), None


def calibration_batches(source: str, count: int, trust_code: bool = False) -> list[Any]:
    """The first `count` training batches of the data set the run's recipe names (the run folder's
    recipe.yaml), in the run's split: what the integer graph's added quantizers are calibrated on. Only the
    data section is read; data a factory builds is code, loaded only with --trust-code or an allow-listed
    package (slimkit.trust)."""
    from slimkit.data import DataConfig, load_data
    from slimkit.recipe import read_section

    run_dir = _run_dir(source)
    if not (run_dir / "recipe.yaml").exists():
        raise SlimkitError(f"calibrating the int8 graph needs the run's data, and {run_dir} holds no recipe.yaml; "
                           "export from the run folder (slimkit export runs/NAME)")
    data = read_section(run_dir / "recipe.yaml", "data", DataConfig, trust_code=trust_code)
    if data is None:
        raise RecipeError([f"{run_dir / 'recipe.yaml'}: 'data': required key is missing"])
    return load_data(data).input_batches(count, data.batch_size)


def read_example(path: Path) -> Any:
    """An example input saved with torch.save (a tensor, a tuple or a dict of tensors), read with weights_only so
    that no code in the file runs; its form is checked by capture.example_inputs when it is used."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise SlimkitError(f"--example {path}: not a readable tensor file ({type(exc).__name__}: "
                           f"{first_line(exc)})") from None
