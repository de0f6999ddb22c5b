"""``repnoise``: representation noising (Rosati et al. 2024, "Representation Noising: A Defence Mechanism Against
Harmful Finetuning", arXiv 2405.14577).

Threat model: the defender publishes weights; the attacker fine-tunes every weight on harmful data. RepNoise trains
the released model, on the defender's split only, so that the representations of harmful inputs carry no
information an attacker could reuse: it pushes their hidden states toward Gaussian noise, raises the harmful loss,
and keeps the safe behaviour on the same inputs. Each step, on a pair of batches over the same harmful inputs (the
view's ``"pairs"`` stream: harmful targets, and the safe targets of the aligned split), it minimises

    L = aligned_loss(aligned) + beta · mean_l MMD(h_l(harmful), N(0, I)) − alpha · log(1 + harmful_loss(harmful))

where h_l are the features of the task's feature module l (:func:`mmd_to_noise`), with AdamW.

The MMD is the reference's (domenicrosati/representation-noising ``loss.py``): five Gaussian kernels whose
bandwidths step by ×2 around the mean squared distance of the pooled sample (features and noise together), the
biased estimator. (An earlier version here used fixed bandwidths at 1, 2, 4 × sqrt(D), which saturate when the
features' scale is far from the noise's.)

Deviation in the features (disclosed, not matched): the reference noises the output of every layer's *MLP sublayer*
and treats each harmful *sequence* as one sample (its (tokens × hidden) states flattened, the positions outside the
mask zeroed, against noise zeroed the same way). Here h_l are the task's feature modules, through the task-agnostic
:attr:`~bench.contracts.DefenderView.features`: on the LLM tasks the decoder blocks' outputs (the residual stream,
which the MLP's output is added into) with one row per response token; on vision, the hidden layers and on diffusion
the UNet's decoder blocks, one flattened row per example. Reasons: MLP sublayers exist only in transformers, the view
exposes response-token rows rather than padded sequences, and a per-sequence sample over zero-filled positions makes
the MMD depend on padding; per-token rows also give the kernel estimate more samples than a batch of 8 sequences.

Simplification: the paper's ascent term averages the harmful NLL of a logit lens applied at every layer (each hidden
state through the final norm and the output embedding). That lens is specific to a transformer LM, so this
implementation uses the final layer's harmful loss only, which any task provides; the representation term still
acts on every feature module. The paper's mask (tokens where the harmful and refusal texts differ) is the task's:
its losses and features count the response positions of each batch.

Defaults (paper: alpha = 1, beta = 1e-3, AdamW lr 1e-4 with a cosine schedule, one epoch over ~1k pairs, about 1–4×
the cost of one attack): alpha, beta and the cosine decay as the paper; full-parameter training (the paper trained
every weight too). Scaled to the tier by the rules of :class:`~defenses._trained.AttackerScaledConfig`: the learning
rate is a tenth of the smallest of the task's undefended-attacker learning rates (the paper trained at 1e-4, the
scale of the learning rates its attacks used, 3e-5 to 1e-4); the steps are 10 × the undefended steps-to-harm, at
most 150 (vision-digits tiny: 100 steps at lr 1e-4; LLM tiny tiers 150; diffusion tiny tiers 150).

Measured on vision-digits tiny at lr 1e-3, before the rule took a tenth and with the earlier fixed-bandwidth MMD
(seed 0, default suite; the defaults' numbers are in the README's baseline table): training 1.4 s (100 steps, 300
forward-backward passes), retained allowed accuracy 0.993; worst-case steps-to-harm 10 (Muon at lr 0.316), the same
as undefended: it falls to an optimizer/LR sweep, as the literature reports. Per family (undefended → repnoise):
Adam 35 → 60, SGD 60 → 80, LoRA 85 → 310, adaptive attacks 35 → 45. The noising term hardly acts at the paper's beta
(the harmful features' MMD to noise rises during training, 1.0 → 2.0); at beta = 1 or 100 it falls (to 0.7 or 0.2),
and an Adam attack at lr 1e-2 (budget 200, seed 0) harms in 50 or 30 steps (undefended 35, default RepNoise 60): a
stronger noising term makes it weaker here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bench.config import check
from bench.contracts import DefenderView, Defense, DefenseResult
from bench.registry import DEFENSES
from defenses._objectives import bounded_ascent
from defenses._trained import (
    AttackerScaledConfig,
    attacker_report,
    batch_size_of,
    endless,
    lr_for,
    require,
    steps_for,
    train_defense,
)


@dataclass(frozen=True, kw_only=True)
class RepNoiseConfig(AttackerScaledConfig):
    alpha: float = 1.0
    """Weight of the bounded ascent term −log(1 + harmful loss) (paper: 1)."""
    beta: float = 1e-3
    """Weight of the noising term, the mean over feature modules of MMD(harmful features, N(0, I)) (paper: 1e-3)."""
    cosine: bool = True
    """Decay the learning rate to 0 along a cosine over the steps (the paper's schedule)."""
    mmd_rows: int = 256
    """The MMD of a feature module uses at most this many of its rows, drawn with the seed: its kernel matrices grow
    with rows² (an LLM batch has a row per response token: 1344 on llm-harmful-qa tiny, where the full MMD cost 3× the
    model's own passes)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")
        check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        check(self.mmd_rows >= 2, f"mmd_rows must be at least 2, got {self.mmd_rows}")


@DEFENSES.register("repnoise")
class RepNoise(Defense):
    """RepNoise: noise the harmful inputs' representations, raise their harmful loss, keep the safe behaviour."""

    Config = RepNoiseConfig
    preserves_function = False
    smoke_args: ClassVar[Mapping[str, Any]] = {"steps": 3, "lr": 1e-3}
    # Defender tuning (bench tune): the paper's α (ascent) and β (noise) weights; its README asks for a grid search.
    search_space: ClassVar[Mapping[str, tuple]] = {"alpha": (1.0, 4.0), "beta": (1e-3, 1e-2, 1e-1)}

    def apply(self, model: nn.Module, view: DefenderView, cfg: RepNoiseConfig, *,
              generator: torch.Generator) -> DefenseResult:
        require(view, "repnoise", "aligned_loss", "feature_modules", "features")
        steps, lr = steps_for(cfg, view), lr_for(cfg, view)
        batch_size = batch_size_of(cfg, view)
        pairs = endless(view, "pairs", batch_size, generator)

        def step(_: int) -> dict[str, torch.Tensor]:
            harmful, aligned = next(pairs)
            aligned_loss = view.aligned_loss(model, aligned)
            harmful_loss = view.harmful_loss(model, harmful)
            noise = noise_term(view.features(model, harmful), generator, cfg.mmd_rows)
            loss = aligned_loss + cfg.beta * noise + cfg.alpha * bounded_ascent(harmful_loss)
            loss.backward()
            return {"loss": loss, "aligned_loss": aligned_loss, "harmful_loss": harmful_loss, "mmd": noise}

        # 3 passes: the aligned batch, the harmful batch, and the harmful batch again for its features. RepNoise
        # simulates no attacker; the report names the attacker scale its rules read instead.
        return train_defense(model, view, cfg, step, name="repnoise", steps=steps, passes=3, lr=lr,
                             cosine=0.0 if cfg.cosine else None,
                             info={"lr": lr, "batch_size": batch_size, "alpha": cfg.alpha, "beta": cfg.beta,
                                   "cosine": cfg.cosine, "mmd_rows": cfg.mmd_rows,
                                   "feature_modules": list(view.feature_modules), "simulated_attacker": None,
                                   "scaled_by": attacker_report(view)})


KERNEL_MULTIPLIER = 2.0
KERNELS = 5
"""The reference's MMD kernels: 5 Gaussian kernels whose bandwidths step by ×2 around the data's own scale."""


def mmd_to_noise(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Squared MMD between ``rows`` (N, D) and N draws of N(0, I) from ``generator``, with the reference's kernels:
    exp(−‖a − b‖² / b_i) summed over bandwidths b_i = m · 2^(i−2), i = 0..4, where m is the mean squared distance
    between distinct points of the pooled sample (rows and noise together), taken without gradient; the biased
    estimator mean(K_xx + K_yy − K_xy − K_yx). The bandwidth follows the data, so the term keeps its meaning at any
    feature scale."""
    x = rows.float()
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    pooled = torch.cat([x, noise])
    d2 = torch.cdist(pooled, pooled).pow(2)
    n = len(pooled)
    mean = d2.detach().sum() / max(n * n - n, 1)
    base = mean / KERNEL_MULTIPLIER ** (KERNELS // 2)
    kernel = sum(torch.exp(-d2 / (base * KERNEL_MULTIPLIER ** i).clamp_min(1e-12)) for i in range(KERNELS))
    size = len(x)
    xx, yy, xy = kernel[:size, :size], kernel[size:, size:], kernel[:size, size:]
    return xx.mean() + yy.mean() - 2 * xy.mean()


def noise_term(features: Mapping[str, torch.Tensor], generator: torch.Generator, max_rows: int) -> torch.Tensor:
    """Mean over feature modules of MMD(rows, N(0, I)) (:func:`mmd_to_noise`; the paper averages over layers), on at
    most ``max_rows`` rows of each module drawn with ``generator``."""
    terms = []
    for rows in features.values():
        if len(rows) > max_rows:
            rows = rows[torch.randperm(len(rows), generator=generator)[:max_rows].to(rows.device)]
        terms.append(mmd_to_noise(rows, generator))
    return torch.stack(terms).mean()

