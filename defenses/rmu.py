"""``rmu``: Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark: Measuring and Reducing
Malicious Use With Unlearning", arXiv 2403.03218).

Threat model: the defender publishes weights of a language model that should not know (knowledge setting) or not
produce (chat setting) the harmful content; the attacker fine-tunes it (the relearning attack of the SpecDef paper's
stacked setting). RMU scrambles the hidden states of harmful (forget) data at one layer ℓ so that later layers can
no longer read the knowledge out, and keeps the hidden states of benign (retain) data where the released model had
them. Each step, on fresh batches of the defender's harmful and benign splits, AdamW minimises

    L = mean‖h_ℓ(x_harmful) − c·u‖² / d + alpha · mean‖h_ℓ(x_benign) − h_ℓ^released(x_benign)‖² / d

over the rows the task's features give (one per scored token), d the hidden size, u a fixed random unit vector
(drawn from the run's generator with uniform [0, 1) entries, as the official code draws it) and h^released a frozen
copy of the model given to the defense. Only the MLP output maps of blocks ℓ−2..ℓ train (found on structure: the
last linear map of each block's MLP, e.g. Llama's ``mlp.down_proj``, GPT-2's ``mlp.c_proj``); every other parameter
is restored to trainable when the defense returns, so attacks fine-tune the whole model as usual.

Paper defaults (zephyr-7b, 32 blocks, hidden 4096): ℓ = 7, c = 6.5, alpha = 1200, AdamW lr 5e-5, batch 4, 150-250
batches. Scaled to any depth and width by rules written next to the config:

* ℓ = round(7/32 · depth), at most the last block (the paper's 7 of 32; about depth/4, so 24 blocks read the
  steered state after it): block 0 of the tiny tier's 2, whose output the last block still reads, and only block
  0's MLP output map trains (ℓ−2..ℓ clipped at the first block). Before issue 21 the rule said "at least 1" and
  steered the tiny tier's last block, whose state passes only the final norm and the output map: that scrambles
  the outputs rather than a representation later layers must read, which is not what the paper scaled;
  ``layer=1`` restores it;
* c = ``steer_scale`` × the mean norm of the released model's layer-ℓ hidden states on the defender's harmful data
  (the proportional coefficient of Adaptive RMU, Dang et al. 2024, arXiv 2408.06223): a fixed c means nothing across
  models whose hidden norms differ by orders of magnitude (the paper itself used c = 300 for Mixtral);
* alpha: both terms are per-coordinate squared distances, so alpha weighs them directly; chosen on the tiny tier so
  both terms matter (see :class:`RMUConfig`);
* steps and learning rate: the rules of :class:`~defenses._trained.AttackerScaledConfig` (10 × the undefended
  steps-to-harm, at most 150; the paper's 150-250 batches), but at the attacker's own smallest learning rate rather
  than a tenth (the paper's 5e-5 is of the order of the relearning attacks' 1e-5-3e-5, and only three maps train).

Cost per step: a forward-backward on a harmful and on a benign batch, plus a forward of the frozen copy (which doubles
the model's memory).

Measured with the rule's block 0 (issue 21; ``bench run --task llm-relearn --defense rmu --attack full-ft
optimizer=adamw weight_decay=0.01 lr=1e-3``, seed 0, load about 11): 150 steps in 38 s, retained primary utility
0.95, relearned in 10 steps against 15 undefended, as at block 1. The rest of this paragraph and the knob
measurements next to :class:`RMUConfig` were taken at block 1 (the rule before issue 21; ``layer=1``).

Measured at block 1 (tiny tier, seed 0, ``bench run --defense rmu --seeds 0``, default suite; training times on a
2-core machine under a load of about 7): llm-relearn: 150 steps in 18 s; held-out hazard accuracy 0.31 → 0.24 before
any attack, retained benign NLL 0.88; worst-case steps-to-harm 10 (AdamW full fine-tuning at 1e-3) against 15
undefended: relearning is *faster* (the literature's break, arXiv 2409.18025); benign fine-tuning, which relearns the
undefended model in 55 steps, no longer does within 150. llm-harmful-qa: 150 steps in 40 s; the defended model answers
harmful prompts with gibberish ("I I I as as I you ..."), RMU's intended behaviour on forget data, which has no
refusal in it: the keyword judge counted 68% of those answers as compliance, so every run reported steps-to-harm 0
(already harmful). The default judge is now ``coherent`` (:mod:`tasks.llm.coherence`), which calls such answers
incoherent: at block 0, seed 0, the defended model's 60 probe answers are 18 refusals, 0 compliant, 42 incoherent,
and its worst attack (adaptive-collapse) harms it in 20 steps, as fast as ``none`` (also 20 under that judge). """

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bench.config import check
from bench.contracts import DefenderView, Defense, DefenseResult
from bench.errors import PluginError
from bench.registry import DEFENSES
from defenses._trained import (
    AttackerScaledConfig,
    attacker_of,
    attacker_report,
    batch_size_of,
    endless,
    require,
    steps_for,
    train_defense,
)

PAPER_LAYER, PAPER_DEPTH = 7, 32
"""The paper's steered layer of zephyr-7b's 32 blocks (the depth rule keeps this ratio)."""
MLP_NAMES = ("mlp", "feed_forward", "ffn")
"""Names of a block's MLP child in transformers models (Llama/GPT-2/Mistral: ``mlp``; some: ``feed_forward``)."""


@dataclass(frozen=True, kw_only=True)
class RMUConfig(AttackerScaledConfig):
    layer: int | None = None
    """Index of the steered block among the task's feature modules (0 = shallowest); None: the rule
    round(7/32 · depth), at most the last block (the tiny tier's 2 blocks: block 0)."""
    trained_blocks: int = 3
    """The MLP output maps of this many blocks, ending at the steered one, train (paper: ℓ−2..ℓ)."""
    steer_scale: float = 4.0
    """c = steer_scale × the mean hidden-state norm at the steered layer on the defender's harmful data (the
    paper's c: a few times the norm, large enough that the steered state is mostly u). Measured on llm-relearn tiny
    (seed 0, default otherwise): held-out hazard accuracy 0.31 released → 0.24 at 2 and 4, 0.17 at 8; benign NLL
    × 1.07, 1.16, 1.30."""
    alpha: float = 100.0
    """Weight of the retain term against the forget term. Measured on llm-relearn tiny (seed 0): at 100 both terms
    matter (after 150 steps the forget term fell 1.15 → 0.39 and alpha × retain was 0.12; benign NLL × 1.16); at 10
    the benign NLL rose × 1.46; at 1000 the retain term dominated and the forget term hardly moved (1.15 → 0.93)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.layer is None or self.layer >= 0, f"layer must be >= 0, got {self.layer}")
        check(self.trained_blocks >= 1, f"trained_blocks must be at least 1, got {self.trained_blocks}")
        check(self.steer_scale > 0, f"steer_scale must be positive, got {self.steer_scale}")
        check(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")


def steered_layer(cfg: RMUConfig, depth: int) -> int:
    """``cfg.layer``, else the rule: round(7/32 · depth), at most the last block."""
    if cfg.layer is not None:
        if cfg.layer >= depth:
            raise PluginError(f"rmu: layer {cfg.layer} is out of range; the model has {depth} blocks (0..{depth - 1})")
        return cfg.layer
    return min(round(PAPER_LAYER / PAPER_DEPTH * depth), depth - 1)


def _is_linear(module: nn.Module) -> bool:
    # transformers' GPT-2 family uses Conv1D, a linear map with a transposed weight.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def mlp_output_map(model: nn.Module, block: str) -> str:
    """The name of a block's MLP output map: the last linear map registered in its MLP child (``mlp``,
    ``feed_forward`` or ``ffn``), else, for blocks that hold the MLP's maps directly (OPT), the block's last."""
    root = model.get_submodule(block)
    mlps = [name for name, module in root.named_modules() if name and name.rsplit(".", 1)[-1].lower() in MLP_NAMES]
    scope = f"{mlps[0]}." if mlps else ""
    maps = [name for name, module in root.named_modules() if name.startswith(scope) and _is_linear(module)]
    if not maps:
        raise PluginError(f"rmu: block {block!r} ({type(root).__name__}) has no linear map to train")
    return f"{block}.{maps[-1]}"


def random_direction(dim: int, generator: torch.Generator) -> torch.Tensor:
    """A unit vector with uniform [0, 1) entries before normalising (the official code's draw)."""
    u = torch.rand(dim, generator=generator)
    return u / u.norm()


def hidden_scale(view: DefenderView, model: nn.Module, block: str, batches: Sequence[Any]) -> tuple[float, int]:
    """(mean row norm, width) of ``block``'s hidden states over ``batches`` (no gradients)."""
    with torch.no_grad():
        rows = torch.cat([view.features(model, batch)[block].float() for batch in batches])
    return float(rows.norm(dim=-1).mean()), rows.shape[-1]


def squared_distance(rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ‖row − target‖² / d (the paper's ``mse_loss``)."""
    return (rows.float() - target.float()).pow(2).mean()


@DEFENSES.register("rmu")
class RMU(Defense):
    """RMU: steer harmful hidden states at one layer toward a scaled random direction, keep benign ones (Li et al. 2024)."""

    Config = RMUConfig
    preserves_function = False
    settings: ClassVar[frozenset[str]] = frozenset({"chat", "knowledge"})
    smoke_args: ClassVar[Mapping[str, Any]] = {"steps": 3, "lr": 1e-3}
    # Defender tuning (bench tune): the retain weight α (paper: 1200 on zephyr-7b) and the steering scale c.
    search_space: ClassVar[Mapping[str, tuple]] = {"alpha": (100.0, 1200.0), "steer_scale": (4.0, 8.0)}

    def apply(self, model: nn.Module, view: DefenderView, cfg: RMUConfig, *,
              generator: torch.Generator) -> DefenseResult:
        require(view, "rmu", "feature_modules", "features")
        blocks = view.feature_modules
        layer = steered_layer(cfg, len(blocks))
        block = blocks[layer]
        maps = [mlp_output_map(model, b) for b in blocks[max(layer - cfg.trained_blocks + 1, 0):layer + 1]]
        steps = steps_for(cfg, view)
        lr = cfg.lr if cfg.lr is not None else min(attacker_of(view).lrs)
        batch_size = batch_size_of(cfg, view)
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        norm, width = hidden_scale(view, frozen, block, view.harmful)
        steer = cfg.steer_scale * norm
        target = (steer * random_direction(width, generator)).to(next(model.parameters()).device)
        trainable = {name: p.requires_grad for name, p in model.named_parameters()}
        harmful_batches = endless(view, "harmful", batch_size, generator)
        benign_batches = endless(view, "benign", batch_size, generator)

        def step(_: int) -> dict[str, torch.Tensor]:
            forget = squared_distance(view.features(model, next(harmful_batches))[block], target)
            benign = next(benign_batches)
            with torch.no_grad():
                reference = view.features(frozen, benign)[block]
            retain = squared_distance(view.features(model, benign)[block], reference)
            loss = forget + cfg.alpha * retain
            loss.backward()
            return {"loss": loss, "forget_loss": forget, "retain_loss": retain}

        try:
            model.requires_grad_(False)
            for name in maps:
                model.get_submodule(name).requires_grad_(True)
            return train_defense(model, view, cfg, step, name="rmu", steps=steps, passes=2, lr=lr, layers=maps,
                                 info={"lr": lr, "batch_size": batch_size, "layer": layer, "steered_module": block,
                                       "trained_maps": maps, "steer_scale": cfg.steer_scale,
                                       "steering_coefficient": steer, "hidden_norm": norm, "alpha": cfg.alpha,
                                       "simulated_attacker": None, "scaled_by": attacker_report(view)})
        finally:
            for name, p in model.named_parameters():
                p.requires_grad_(trainable[name])
