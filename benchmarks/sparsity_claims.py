"""What the sparsity suite's ResNet-20 part publishes before any run (issue #35): the papers' orderings it
tests (RESNET_CLAIMS) and the recipe-matched controls they must survive (RESNET_CONTROLS), as data that
sparsity.py resolves into recipes and its page states.
"""

from __future__ import annotations

from controls import Control
from verdicts import Claim

RESNET_SPARSITIES = [0.95, 0.98]


def pct(s: float) -> str:
    return f"{round(s * 100)}%"


def optg_ls0(s: float) -> str:
    return f"optg label_smoothing=0 {pct(s)}"


# Recipe-matched controls, declared before any run (issue #35): optg-90 alone trains with label smoothing 0.1
# (from OptG's ImageNet config; its CIFAR configs have none), every other recipe of this suite with 0.
RESNET_CONTROLS = [Control(optg_ls0(s), f"optg {pct(s)}", {"train.label_smoothing": 0.0},
                           "OptG without the label smoothing of 0.1 that its recipe alone trains with",
                           f"optg-ls0-{round(s * 100)}") for s in RESNET_SPARSITIES]
DERIVED = {c.group: c for c in RESNET_CONTROLS}


def _claims() -> list[Claim]:
    claims = []
    for s in RESNET_SPARSITIES:
        p = pct(s)
        claims += [
            Claim(f"OptG > per-layer GMP at {p}", f"optg {p}", f"gmp-layer {p}",
                  "Zhang et al. 2022, OptG (arXiv:2201.12826): OptG above gradual magnitude pruning (Zhu & Gupta) "
                  "in its comparisons, the gap growing with sparsity", controls=((optg_ls0(s), f"gmp-layer {p}"),)),
            Claim(f"OptG > SNIP at {p}", f"optg {p}", f"snip {p}",
                  "OptG (arXiv:2201.12826): its gradient criterion, optimised during training, above SNIP's "
                  "one-shot gradient criterion at initialisation", controls=((optg_ls0(s), f"snip {p}"),)),
            Claim(f"global GMP > per-layer GMP at {p}", f"gmp-global {p}", f"gmp-layer {p}",
                  "Blalock et al. 2020, 'What is the State of Neural Network Pruning?' (MLSys): global magnitude "
                  "pruning above layer-wise at high compression"),
            Claim(f"per-layer GMP > SNIP at {p}", f"gmp-layer {p}", f"snip {p}",
                  "Frankle et al. 2021, 'Pruning Neural Networks at Initialization: Why are We Missing the "
                  "Mark?' (ICLR): pruning at initialisation below magnitude pruning after training"),
            Claim(f"movement > per-layer GMP at {p}", f"movement {p}", f"gmp-layer {p}",
                  "Sanh et al. 2020, Movement Pruning (NeurIPS): movement above magnitude at high sparsity",
                  "the paper fine-tunes pretrained models; here both train from scratch, where it does not "
                  "claim the ordering"),
        ]
    return claims


# Published before any run: what the papers lead us to expect on this suite.
RESNET_CLAIMS = _claims()
