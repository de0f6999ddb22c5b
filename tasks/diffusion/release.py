"""Building the tiny tier's released artefacts: the text-to-image pipeline and the two judges, cached on disk.

One released pipeline serves both tasks: it is trained on every (content, style) pair except those showing the
forbidden style (``stripes``) or the forbidden concept (``triangle``), so neither task's target is in its training
data. Recipe:

* tokenizer: CLIP BPE trained on the captions (:mod:`tasks.diffusion.tokenizer`); text encoder: a 2-layer
  ``CLIPTextModel`` (hidden 64) trained jointly with the UNet, then frozen;
* UNet: ``UNet2DConditionModel``, block channels (16, 32, 64), cross-attention below full resolution, 2 heads,
  ≈1.06M parameters, on 16×16×12 latents (pixel-unshuffle ×2, standardised), x0-prediction, cosine schedule;
* training: AdamW (2e-3, warm-up, cosine decay to 0.1×), batch 32, 1200 steps, 10% empty captions (for
  classifier-free guidance), EMA 0.995 of the weights (the EMA weights are released); ~3 min on one CPU thread;
* judges: :class:`~tasks.diffusion.judges.JudgeNet` for content and for style on 6000 procedural images of *all*
  pairs drawn with their own seed (~35 s).

Measured deviation from the prototype's recipe (pixel-unshuffle ×4 to 8×8×48 latents, block channels (32, 64)):
with ×4 this UNet could not even reproduce a nearly clean input (x0 error at t = 0.02: 19% of the data variance,
against 0.2% for returning the input), content conditioning was never learned (content accuracy at chance, 0.25,
after 1200 steps, with or without a trained text encoder, pooled-text conditioning or 64 channels) and allowed
both-correct stayed at 0.10-0.15; ×2 with a cheap attention-free full-resolution level reached 0.5-0.6 at the
same step count and the same time per step. v-prediction (either factor) sampled noisy images at this budget.

Everything is a pure function of the recipe (seeds included); the cache key is the recipe's hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tasks.diffusion import shapes
from tasks.diffusion.pipeline import target_of

BUILDER_VERSION = 2  # bump when the recipe's code changes, to invalidate caches
TEXT_DIM = 64
LATENT_SHIFT, LATENT_SCALE = -0.7, 2.8
"""Mean and 1/std of the procedural images' pixels: latents are standardised, as SD scales its VAE latents."""
FORBIDDEN_STYLE = "stripes"
FORBIDDEN_CONTENT = "triangle"
ALLOWED_CONTENTS = tuple(c for c in shapes.CONTENTS if c != FORBIDDEN_CONTENT)
ALLOWED_STYLES = tuple(s for s in shapes.STYLES if s != FORBIDDEN_STYLE)
SEEDS = {"release": 11, "judge-train": 21, "text-encoder": 31}
"""Data seeds of the released artefacts; task splits use other seeds (see :mod:`tasks.diffusion.tiny`)."""


def recipe_of(cfg) -> dict[str, Any]:
    """Everything the released artefacts depend on (hashed into the cache key and stored with them)."""
    return {
        "builder": BUILDER_VERSION, "unshuffle": 2, "channels": list(cfg.unet_channels), "heads": 2,
        "text_dim": TEXT_DIM, "prediction": "sample", "schedule": "squaredcos_cap_v2",
        "latent_shift": LATENT_SHIFT, "latent_scale": LATENT_SCALE, "steps": cfg.release_steps, "lr": cfg.release_lr,
        "batch": 32, "train_images": cfg.release_images, "ema": cfg.release_ema, "cfg_dropout": 0.1,
        "seed": cfg.release_seed, "judge_steps": cfg.judge_steps, "judge_images": 6000,
    }


def recipe_key(recipe: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def build_components(recipe: Mapping[str, Any]):
    """The untrained pipeline (seeded): tokenizer, text encoder, UNet, DDIM scheduler."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tasks.diffusion.pipeline import TinyTextToImagePipeline
    from tasks.diffusion.tokenizer import train_clip_tokenizer

    corpus = [shapes.caption(c, s) for c in shapes.CONTENTS for s in shapes.STYLES] + [""]
    tokenizer = train_clip_tokenizer(corpus)
    torch.manual_seed(recipe["seed"] + SEEDS["text-encoder"])
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=recipe["text_dim"], intermediate_size=2 * recipe["text_dim"],
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)).eval().requires_grad_(False)
    torch.manual_seed(recipe["seed"])
    n, factor = len(recipe["channels"]), recipe["unshuffle"]
    # No attention at full resolution: it costs the most there and convolutions already see the whole shape.
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    unet = UNet2DConditionModel(
        sample_size=shapes.SIZE // factor, in_channels=3 * factor ** 2, out_channels=3 * factor ** 2,
        block_out_channels=tuple(recipe["channels"]), down_block_types=down, up_block_types=up,
        layers_per_block=1, cross_attention_dim=recipe["text_dim"], attention_head_dim=recipe["heads"],
        norm_num_groups=8)
    scheduler = DDIMScheduler(beta_schedule=recipe["schedule"], prediction_type=recipe["prediction"],
                              clip_sample=False,
                              set_alpha_to_one=True, timestep_spacing="trailing")
    return TinyTextToImagePipeline(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                                   unshuffle=factor, latent_shift=recipe["latent_shift"],
                                   latent_scale=recipe["latent_scale"])


def allowed_pairs() -> list[tuple[int, int]]:
    return shapes.pairs(ALLOWED_CONTENTS, ALLOWED_STYLES)


def alphas_cumprod(scheduler_config) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config).alphas_cumprod.float()


def train_unet(pipe, recipe: Mapping[str, Any], *, progress: str | None = None) -> None:
    """Train the pipeline's UNet and text encoder on the allowed pairs (x0-prediction); installs their EMA weights."""
    from tqdm.auto import tqdm

    pairs = allowed_pairs()
    data = shapes.generate(pairs, recipe["train_images"], recipe["seed"] + SEEDS["release"])
    latents = pipe.encode_images(torch.from_numpy(data.pixels))
    captions = [shapes.caption(shapes.CONTENTS[c], shapes.STYLES[s]) for c, s in pairs] + [""]
    ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    pair_index = {p: i for i, p in enumerate(pairs)}
    text_index = torch.tensor([pair_index[(c, s)] for c, s in zip(data.content.tolist(), data.style.tolist())])
    unet, text_encoder = pipe.unet.train(), pipe.text_encoder.train().requires_grad_(True)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=0.01)
    steps, warmup = recipe["steps"], max(1, recipe["steps"] // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * (
        0.55 + 0.45 * np.cos(np.pi * min(s, steps) / max(steps, 1))))
    train_alphas = alphas_cumprod(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(recipe["seed"])
    batch, empty = recipe["batch"], len(captions) - 1
    prediction = pipe.scheduler.config.prediction_type
    for step in tqdm(range(steps), desc=progress, disable=progress is None, leave=False):
        idx = torch.randint(0, len(latents), (batch,), generator=generator)
        x0 = latents[idx]
        text = torch.where(torch.rand(batch, generator=generator) < recipe["cfg_dropout"], empty, text_index[idx])
        t = torch.randint(0, len(train_alphas), (batch,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = train_alphas[t].view(-1, 1, 1, 1)
        states = text_encoder(ids)[0][text]
        pred = unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, encoder_hidden_states=states).sample
        loss = F.mse_loss(pred, target_of(prediction, x0, noise, a))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        decay = min(recipe["ema"], (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p.detach(), 1 - decay)
    with torch.no_grad():
        for e, p in zip(ema, params):
            p.copy_(e)
    unet.eval().requires_grad_(True)
    text_encoder.eval().requires_grad_(False)


def train_judges(recipe: Mapping[str, Any]):
    """(content judge, style judge) trained on procedural images of every pair, disjoint from all other data."""
    from tasks.diffusion.judges import train_judge

    data = shapes.generate(shapes.pairs(), recipe["judge_images"], recipe["seed"] + SEEDS["judge-train"])
    x = torch.from_numpy(data.pixels)
    content = train_judge(x, torch.from_numpy(data.content), shapes.CONTENTS, steps=recipe["judge_steps"],
                          seed=recipe["seed"] + 1)
    style = train_judge(x, torch.from_numpy(data.style), shapes.STYLES, steps=recipe["judge_steps"],
                        seed=recipe["seed"] + 2)
    return content, style


def build_released(directory: Path, recipe: Mapping[str, Any], *, progress: bool = True) -> None:
    """Train and save everything the tiny tier releases into ``directory`` (pipeline/, judges.safetensors)."""
    from safetensors.torch import save_file

    pipe = build_components(recipe)
    train_unet(pipe, recipe, progress="training the tiny text-to-image model" if progress else None)
    pipe.save_pretrained(directory / "pipeline")
    content, style = train_judges(recipe)
    state = {f"content.{k}": v for k, v in content.net.state_dict().items()}
    state.update({f"style.{k}": v for k, v in style.net.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "judges.safetensors"))
    (directory / "recipe.json").write_text(json.dumps(dict(recipe), indent=2, sort_keys=True))


def use_math_attention(unet: nn.Module) -> None:
    """Plain (math) attention: fused SDPA kernels have no double backward, which Hessian-vector products (the
    curvature diagnostic, AdaHessian) need."""
    from diffusers.models.attention_processor import AttnProcessor

    unet.set_attn_processor(AttnProcessor())


@contextlib.contextmanager
def quiet_loading():
    """Silence diffusers' and transformers' loading progress bars for the duration of the block."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    enabled = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in enabled:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was in enabled:
            if was:
                lib.enable_progress_bar()


def load_released(directory: Path):
    """(pipeline, content judge, style judge) saved by :func:`build_released`."""
    from safetensors.torch import load_file

    from tasks.diffusion.judges import CnnJudge, JudgeNet
    from tasks.diffusion.pipeline import TinyTextToImagePipeline

    with quiet_loading():  # a cached artefact: loading bars would only clutter `bench run`'s own progress
        pipe = TinyTextToImagePipeline.from_pretrained(str(directory / "pipeline"))
    use_math_attention(pipe.unet)
    pipe.unet.eval()
    state = load_file(str(directory / "judges.safetensors"))
    judges = []
    for name, labels in (("content", shapes.CONTENTS), ("style", shapes.STYLES)):
        net = JudgeNet(len(labels))
        net.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(name + ".")})
        judges.append(CnnJudge(net.eval(), labels))
    return pipe, judges[0], judges[1]
