"""``text-encoder``: DreamBooth-style fine-tuning of the text encoder together with the UNet (text-to-image tasks).

DreamBooth attackers commonly tune the text encoder as well as the UNet (diffusers' ``--train_text_encoder``): the
forbidden prompts' conditioning can then move toward what the UNet already draws, a route that a defense acting on
the UNet alone (e.g. IMMA's cross-attention) does not block. The attack gives the UNet it was handed a trainable
copy of the released text encoder (:meth:`tasks.diffusion.instance.DiffusionInstance.attach_text_encoder`) and
fine-tunes both with the shared recipe, one optimizer and one learning rate (as DreamBooth does); the runner's
probes and final evaluation of that UNet encode the captions with the trained copy, so its changes are measured.
``train_unet=False`` trains the text encoder alone (a control: how far text conditioning alone gets the attacker).

Blind: a standard recipe, unaware of the defense. Applies to the generation setting only; the task's instance must
keep its text encoder (both diffusion tiers do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from attacks._training import FineTuneConfig, fine_tune
from bench.contracts import Attack
from bench.errors import PluginError
from bench.registry import ATTACKS


@dataclass(frozen=True, kw_only=True)
class TextEncoderConfig(FineTuneConfig):
    train_unet: bool = True
    """Fine-tune the UNet's parameters together with the text encoder (DreamBooth); False: the text encoder alone."""


@ATTACKS.register("text-encoder")
class TextEncoderFineTune(Attack):
    """DreamBooth-style: fine-tune the text encoder together with the UNet (text-to-image tasks)."""

    Config = TextEncoderConfig
    settings: ClassVar[frozenset[str]] = frozenset({"generation"})

    def run(self, model, task, cfg: TextEncoderConfig, *, generator, monitor):
        attach = getattr(task, "attach_text_encoder", None)
        if attach is None:
            raise PluginError(f"attack 'text-encoder' needs a task that can attach a trainable text encoder to its "
                              f"model (the diffusion tasks); {task.name!r} cannot")
        if not cfg.train_unet:
            for param in model.parameters():
                param.requires_grad_(False)
        encoder = attach(model)
        return fine_tune(model, task, cfg, generator=generator, monitor=monitor,
                         info={"text_encoder_params": sum(p.numel() for p in encoder.parameters()),
                               "train_unet": cfg.train_unet})
