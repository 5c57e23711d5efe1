"""slimkit: compress PyTorch models and measure what each method really bought.

    import slimkit
    model = slimkit.models.lenet(in_channels=1, num_classes=10, input_size=8)
    run = slimkit.compress(model, data="digits", recipe="gmp-90")
    print(run.report.table())
"""

__version__ = "0.2.0"  # the package's version (pyproject.toml reads it); CHANGELOG.md says what changed

from slimkit import binary, channels, distill, models, quant, sparsity  # methods register on import
from slimkit.api import compress, one_shot, prepare
from slimkit.data import load_data, user_data
from slimkit.errors import SlimkitError
from slimkit.metrics import measure
from slimkit.persistence import load, save_model
from slimkit.pipeline import Run, run_recipe
from slimkit.recipe import Recipe
from slimkit.report import Report
from slimkit.runtime import deploy, load_deployed, save_deployed
from slimkit.train import Compression, Metric, Modifier, Trainer

__all__ = [
           "Compression",
           "Metric",
           "Modifier",
           "Recipe",
           "Report",
           "Run",
           "SlimkitError",
           "Trainer",
           "__version__",
           "binary",
           "channels",
           "compress",
           "deploy",
           "distill",
           "load",
           "load_data",
           "load_deployed",
           "measure",
           "models",
           "one_shot",
           "prepare",
           "quant",
           "run_recipe",
           "save_deployed",
           "save_model",
           "sparsity",
           "user_data",
]
