"""PatDNN/PCONV pattern plus connectivity sparsity, trained with ADMM.

- A pattern is a 3x3 support of 4 entries that includes the centre (56 candidates). The library is the K
  patterns that occur most often when every trained 3x3 kernel keeps its centre plus its 3 largest |w|.
- Pattern projection keeps, per kernel, the library pattern P maximising ||W_k * P||_2.
- Connectivity projection keeps the ceil(n / r_c) kernels of largest ||W_k||_2 per layer (1x1 and other
  kernel shapes get connectivity only).
- ADMM minimises CE + rho/2 ||W - Z + U||^2 + rho/2 ||W - Y + V||^2 with Z, Y the pattern and connectivity
  copies and U, V scaled duals updated after each epoch; then a hard prune to Pi_pat(Pi_conn(W)) != 0 and
  masked retraining. The penalty is the papers' squared Frobenius norm (the unofficial code used the plain
  norm). No official training code exists: this follows the papers and that unofficial reimplementation.
- `filter_group` (slimkit's extension): consecutive groups of filters share kept kernels and patterns, both
  chosen on summed squared norms, so both projections stay Euclidean; the CPU runtime runs such groups as
  dense GEMMs. 1 (the default) is PatDNN.
- `block` (slimkit's extension): consecutive input channels share them the same way. With 4, every kept tap
  of a filter is a whole block of 4 input channels, the layout of the int8 sparse operator
  (slimkit::QuantSparseConv2d), so a pattern-pruned, quantized model runs on it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from slimkit.layers import LayerSelection
from slimkit.methods import register_method
from slimkit.sparsity.blocks import block_sizes, block_sums, check_block
from slimkit.sparsity.masks import raw_weight
from slimkit.sparsity.pruner import MaskConfig, PruneModifier
from slimkit.train.modifier import TrainContext

CENTRE = 4
PATTERN_LIBRARY = "pattern_library.json"  # the file a pattern stage exports: {"patterns": K rows of 9 0/1}


def candidate_patterns(device: torch.device | None = None) -> Tensor:
    """The 56 supports of a 3x3 kernel with 4 entries including the centre, (56, 9) bool, in a fixed order."""
    others = [i for i in range(9) if i != CENTRE]
    rows = []
    for chosen in itertools.combinations(others, 3):
        row = torch.zeros(9, dtype=torch.bool, device=device)
        row[[CENTRE, *chosen]] = True
        rows.append(row)
    return torch.stack(rows)


def kernel_patterns(kernels: Tensor) -> Tensor:
    """Each 3x3 kernel's own pattern: the centre plus the 3 largest |w| of the other 8, as (N, 9) bool."""
    flat = kernels.reshape(-1, 9).abs().clone()
    flat[:, CENTRE] = float("inf")
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :4]
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)


def extract_library(kernels: Tensor, k: int = 8) -> Tensor:
    """The k most frequent kernel patterns among `kernels` (..., 3, 3), (k, 9) bool; equal counts go to the
    earlier candidate."""
    candidates = candidate_patterns(kernels.device)
    own = kernel_patterns(kernels)
    counts = (own.unsqueeze(1) == candidates.unsqueeze(0)).all(-1).sum(0)
    order = torch.sort(counts, descending=True, stable=True).indices
    return candidates[order[:k]]


def filter_groups(out_channels: int, group: int, device: torch.device | None = None) -> Tensor:
    """The group of each filter when consecutive runs of `group` filters share structure (the last run may be
    shorter)."""
    return torch.arange(out_channels, device=device) // group


def group_sum(values: Tensor, group: int) -> Tensor:
    """Sum of a per-filter (O, ...) tensor over each group of `group` consecutive filters, (groups, ...)."""
    ids = filter_groups(values.shape[0], group, values.device)
    return torch.zeros(int(ids[-1]) + 1, *values.shape[1:], dtype=values.dtype, device=values.device
                       ).index_add_(0, ids, values)


def tile_sum(values: Tensor, group: int, block: int) -> Tensor:
    """Sum of a per-kernel (out, in, ...) tensor over each tile of `group` consecutive filters by `block`
    consecutive input channels, (filter groups, input blocks, ...)."""
    return block_sums(group_sum(values, group), block)


def untile(tiles: Tensor, group: int, block: int, shape: tuple[int, int]) -> Tensor:
    """Per-tile values (filter groups, input blocks, ...) given to every kernel of their tile, (out, in, ...)."""
    out_c, in_c = shape
    return tiles.repeat_interleave(block, dim=1)[:, :in_c][filter_groups(out_c, group, tiles.device)]


def select_patterns(weight: Tensor, library: Tensor, group: int = 1, block: int = 1) -> Tensor:
    """Per 3x3 kernel the index of the library pattern with the largest ||W_k * P||_2 (ties: lower index).
    With `group` or `block` > 1 the kernels of a tile (a group of filters by a block of input channels) share
    the pattern of largest summed energy, so they keep identical structure."""
    out_c, in_c = weight.shape[:2]
    energy = (weight.reshape(-1, 9).pow(2) @ library.float().T).reshape(out_c, in_c, len(library))
    best = torch.sort(tile_sum(energy, group, block), dim=-1, descending=True, stable=True).indices[..., 0]
    return untile(best, group, block, (out_c, in_c)).reshape(-1)


def pattern_mask(weight: Tensor, library: Tensor, group: int = 1, block: int = 1) -> Tensor:
    """The support of the chosen library pattern of every 3x3 kernel, shaped like `weight`."""
    return library[select_patterns(weight, library, group, block)].reshape(weight.shape)


def project_patterns(weight: Tensor, library: Tensor, group: int = 1, block: int = 1) -> Tensor:
    """Euclidean projection of a (out, in, 3, 3) weight onto the library's patterns (shared per tile)."""
    return weight * pattern_mask(weight, library, group, block)


def kernels_kept(count: int, ratio: float) -> int:
    """Kernels a layer of `count` keeps under connectivity ratio r_c: ceil(count / r_c)."""
    return min(count, math.ceil(count / ratio - 1e-9))


def connectivity_mask(weight: Tensor, ratio: float, group: int = 1, block: int = 1) -> Tensor:
    """Shaped like `weight`: the ceil(n / ratio) kernels of largest L2 norm (ties: lower index). A linear
    weight's kernels are its single entries. With `group` or `block` > 1, whole tiles (a group of filters by a
    block of input channels) are kept: ceil(n_t / ratio) of the n_t tiles, ranked by their summed squared norm
    (a partial last block's sum scaled by block / its size, so it competes as a full block of its mean)."""
    out_c, in_c = weight.shape[:2]
    energy = tile_sum(weight.reshape(out_c, in_c, -1).pow(2).sum(-1), group, block)
    energy = (energy * (block / block_sizes((energy.shape[0], in_c), block, weight.device))).reshape(-1)
    order = torch.sort(energy, descending=True, stable=True).indices
    keep = torch.zeros(energy.shape[0], dtype=torch.bool, device=weight.device)
    keep[order[:kernels_kept(energy.shape[0], ratio)]] = True
    keep = untile(keep.reshape(-1, -(-in_c // block)), group, block, (out_c, in_c))
    return keep.reshape(out_c, in_c, *([1] * (weight.dim() - 2))).expand_as(weight).clone()


def project_connectivity(weight: Tensor, ratio: float, group: int = 1, block: int = 1) -> Tensor:
    return weight * connectivity_mask(weight, ratio, group, block)


def stored_library(artifacts: Mapping[str, Any]) -> Tensor | None:
    """The pattern library among a model's exported files (`PATTERN_LIBRARY`) as (K, 9) bool, each row a 3x3
    support read row by row; None when no stage exported one."""
    if PATTERN_LIBRARY not in artifacts:
        return None
    return torch.tensor(artifacts[PATTERN_LIBRARY]["patterns"], dtype=torch.bool).reshape(-1, 9)


def is_pattern_valid(weight: Tensor, library: Tensor) -> bool:
    """True when every 3x3 kernel is all zero or has its non-zeros inside one library pattern."""
    support = weight.reshape(-1, 9) != 0
    inside = (support.unsqueeze(1) & ~library.unsqueeze(0)).any(-1).logical_not().any(1)
    return bool((inside | ~support.any(1)).all())


def _is_3x3(weight: Tensor) -> bool:
    return weight.dim() == 4 and tuple(weight.shape[2:]) == (3, 3)


class PatternConfig(MaskConfig):
    """PatDNN: ADMM for `admm_epochs` from start_epoch, then hard pattern + connectivity pruning and
    masked retraining to the end.

    Every kept 3x3 kernel has one of K 4-entry patterns and ceil(n / r_c) kernels per layer survive: regular
    enough for a compiler to emit dense inner loops, fine-grained enough to keep accuracy.

    References:
        Niu et al., "PatDNN: Achieving Real-Time DNN Execution on Mobile Devices with Pattern-based Weight
        Pruning", ASPLOS 2020, arXiv:2001.00138.
        Ma et al., "PCONV: The Missing but Desirable Sparsity in DNN Weight Pruning for Real-time Execution on
        Mobile Devices", AAAI 2020, arXiv:1909.05073.
    """

    kind = "prune"
    method: Literal["patdnn"] = "patdnn"
    patterns: int = Field(8, ge=1, le=56, description="library size K")
    connectivity: float = Field(3.6, ge=1, description="r_c: a layer keeps ceil(kernels / r_c) kernels")
    filter_group: int = Field(1, ge=1, description="consecutive filters that share kept kernels and patterns "
                              "(1 = PatDNN; larger groups run as dense GEMMs in the CPU runtime)")
    block: int = Field(1, description="consecutive input channels that share kept kernels and patterns "
                       "(1 = PatDNN; 4 = the int8 sparse operator's layout)")
    rho: float = Field(1e-2, gt=0, description="ADMM penalty weight")
    admm_epochs: int = Field(2, ge=0)
    layers: LayerSelection = Field(default_factory=lambda: LayerSelection(types=["conv"]))

    @field_validator("block")
    @classmethod
    def _block_size(cls, block: int) -> int:
        return check_block(block)


@register_method(PatternConfig)
class PatternModifier(PruneModifier[PatternConfig]):

    def __init__(self, config: PatternConfig):
        super().__init__(config)
        self.library = torch.zeros(0, 9, dtype=torch.bool)
        self.admm: dict[str, dict[str, Tensor]] = {}  # layer -> Z, Y, U, V
        self.pruned = False

    @property
    def final(self) -> float:
        return self.achieved_sparsity() if self.pruned else 1.0

    @property
    def prune_epoch(self) -> int:
        return self.config.start_epoch + self.config.admm_epochs

    def project(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """(pattern projection, connectivity projection) of a layer's weight."""
        group, block = self.config.filter_group, self.config.block
        patterned = project_patterns(weight, self.library, group, block) if _is_3x3(weight) else weight
        return patterned, project_connectivity(weight, self.config.connectivity, group, block)

    @torch.no_grad()
    def start_admm(self) -> None:
        kernels = [raw_weight(m) for m, _ in self.masks.values() if _is_3x3(raw_weight(m))]
        self.library = extract_library(torch.cat([k.reshape(-1, 9) for k in kernels]), self.config.patterns) \
            if kernels else torch.zeros(0, 9, dtype=torch.bool)
        for name, (module, _) in self.masks.items():
            w = raw_weight(module).detach()
            z, y = self.project(w)
            self.admm[name] = {"Z": z, "Y": y, "U": torch.zeros_like(w), "V": torch.zeros_like(w)}

    @torch.no_grad()
    def update_admm(self) -> None:
        for name, (module, _) in self.masks.items():
            state, x = self.admm[name], raw_weight(module).detach()
            state["Z"], _ = self.project(x + state["U"])
            _, state["Y"] = self.project(x + state["V"])
            state["U"] += x - state["Z"]
            state["V"] += x - state["Y"]

    @torch.no_grad()
    def hard_prune(self) -> None:
        """Masks = connectivity x pattern supports of the current weights; the duals are dropped."""
        if not self.library.numel():
            self.start_admm()
        for module, mask in self.masks.values():
            w = raw_weight(module)
            group, block = self.config.filter_group, self.config.block
            support = connectivity_mask(w, self.config.connectivity, group, block)
            if _is_3x3(w):
                support = support & pattern_mask(w, self.library, group, block)
            mask.mask.copy_(support)
        self.admm, self.pruned = {}, True
        self.current = self.achieved_sparsity()

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        if self.pruned or epoch < self.config.start_epoch:
            return
        if epoch >= self.prune_epoch:
            self.hard_prune()
        elif not self.admm:
            self.start_admm()
        else:
            self.update_admm()

    def on_step_end(self, step: int, ctx: TrainContext) -> None:
        """ADMM updates run per epoch; nothing per step."""

    def loss(self, outputs: Tensor, batch: tuple[Tensor, Tensor], ctx: TrainContext) -> Tensor | None:
        if not self.admm:
            return None
        terms = []
        for name, (module, _) in self.masks.items():
            s, w = self.admm[name], raw_weight(module)
            terms.append((w - s["Z"] + s["U"]).pow(2).sum() + (w - s["Y"] + s["V"]).pow(2).sum())
        return self.config.rho / 2 * torch.stack(terms).sum()

    def is_complete(self, epoch: int) -> bool:
        return self.pruned

    def finalize(self, model: nn.Module) -> nn.Module:
        if not self.pruned:
            self.hard_prune()
        return super().finalize(model)

    def summary(self) -> dict[str, Any]:
        return {"method": self.name, "library": self.library.int().tolist(), "connectivity": self.config.connectivity,
                "target_sparsity": self.current, "layers": list(self.masks)}

    def artifacts(self) -> dict[str, Any]:
        """The pattern library, which `slimkit info` checks every kept kernel against exactly."""
        return {PATTERN_LIBRARY: {"patterns": self.library.int().tolist()}} if self.library.numel() else {}

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current, "pruned": self.pruned, "library": self.library, "admm": self.admm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        library = torch.as_tensor(state["library"], dtype=torch.bool)
        if library.ndim != 2 or library.shape[1] != 9:
            raise ValueError(f"the pattern library has shape {tuple(library.shape)}, not (K, 9)")
        self.current, self.pruned = float(state["current"]), bool(state["pruned"])
        self.library, self.admm = library, dict(state["admm"])
