"""The tiny text-to-image pipeline (a real ``diffusers.DiffusionPipeline``) and the sampling loop both tiers share.

:class:`TinyTextToImagePipeline` has the usual components (``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``)
and saves/reloads with ``save_pretrained`` / ``from_pretrained`` like any pipeline. In place of a VAE it uses a fixed,
invertible codec: pixel-unshuffle (factor 2 on the tiny tier: a 32×32×3 image is a 16×16×12 latent), standardised
by a fixed shift and scale as SD scales its VAE latents. The UNet predicts the clean latent (x0,
``prediction_type="sample"``).

:func:`sample_latents` is the deterministic DDIM loop (η = 0, classifier-free guidance) with the UNet passed in
explicitly, so a task can sample from an attacked or defended UNet without rebuilding a pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from torch import nn
from torch.nn import functional as F


def scheduler_timesteps(scheduler, steps: int, device) -> torch.Tensor:
    scheduler.set_timesteps(steps, device=device)
    return scheduler.timesteps


@torch.no_grad()
def sample_latents(
    unet: nn.Module,
    scheduler_config,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    noise: torch.Tensor,
    *,
    steps: int,
    guidance: float,
    batch_size: int = 64,
) -> torch.Tensor:
    """DDIM (η = 0) from ``noise`` conditioned on text states ``cond``; ``guidance`` > 1 needs ``uncond`` (1, L, D).

    Deterministic for a given ``noise``. Runs in chunks of ``batch_size`` (doubled under guidance).
    """
    scheduler = DDIMScheduler.from_config(scheduler_config)
    param = next(unet.parameters())
    device, dtype = param.device, compute_dtype(unet)
    timesteps = scheduler_timesteps(scheduler, steps, device)
    out = []
    for start in range(0, len(noise), batch_size):
        x = noise[start:start + batch_size].to(device=device, dtype=torch.float32) * scheduler.init_noise_sigma
        c = cond[start:start + batch_size].to(device=device, dtype=dtype)
        guided = guidance != 1.0 and uncond is not None
        states = torch.cat([uncond.to(device=device, dtype=dtype).expand(len(c), -1, -1), c]) if guided else c
        for t in timesteps:
            model_in = torch.cat([x, x]) if guided else x
            model_in = scheduler.scale_model_input(model_in, t).to(dtype)
            pred = unet(model_in, t, encoder_hidden_states=states).sample.float()
            if guided:
                pred_u, pred_c = pred.chunk(2)
                pred = pred_u + guidance * (pred_c - pred_u)
            x = scheduler.step(pred, t, x, eta=0.0).prev_sample
        out.append(x)
    return torch.cat(out)


def target_of(prediction: str, x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The training target of a prediction type, for x_t = sqrt(alpha) x0 + sqrt(1 - alpha) noise."""
    if prediction == "sample":
        return x0
    if prediction == "epsilon":
        return noise
    return alpha.sqrt() * noise - (1 - alpha).sqrt() * x0


def compute_dtype(unet: nn.Module) -> torch.dtype:
    """The dtype the UNet computes in (inputs are cast to it)."""
    dtypes = [p.dtype for p in unet.parameters() if p.is_floating_point()]
    # A defense may store some factors in float64; the model's own dtype is the most common one.
    return max(set(dtypes), key=dtypes.count)


class TinyTextToImagePipeline(DiffusionPipeline):
    """Text-to-image with a UNet on pixel-unshuffled images (no VAE); see the module docstring.

    ``pipe(["a circle, flat style"], num_inference_steps=10, guidance_scale=2.0, generator=g)`` returns images as
    a float tensor in [0, 1] (``output_type="pt"``) or PIL images (``output_type="pil"``).
    """

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet, text_encoder, tokenizer, scheduler, unshuffle: int = 4, latent_shift: float = 0.0,
                 latent_scale: float = 1.0):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        self.register_to_config(unshuffle=unshuffle, latent_shift=latent_shift, latent_scale=latent_scale)

    # -- codec ----------------------------------------------------------------------------------------------
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> standardised latents (N, 3·f², H/f, W/f)."""
        return (F.pixel_unshuffle(pixels, self.config.unshuffle) - self.config.latent_shift) * self.config.latent_scale

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] (the exact inverse of :meth:`encode_images`)."""
        latents = latents / self.config.latent_scale + self.config.latent_shift
        return F.pixel_shuffle(latents, self.config.unshuffle).clamp(-1, 1)

    # -- text -----------------------------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids (N, L) of ``prompts``, padded to the tokenizer's max length: the text encoder's inputs."""
        return self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text-encoder hidden states (N, L, D) of ``prompts``, padded to the tokenizer's max length."""
        return self.text_encoder(self.tokenize(prompts).to(self.text_encoder.device))[0]

    # -- sampling -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], num_inference_steps: int = 10, guidance_scale: float = 2.0,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pt"):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        channels, size = self.unet.config.in_channels, self.unet.config.sample_size
        if latents is None:
            latents = torch.randn(len(prompts), channels, size, size, generator=generator)
        cond = self.encode_prompt(prompts)
        uncond = self.encode_prompt([""]) if guidance_scale != 1.0 else None
        x0 = sample_latents(self.unet, self.scheduler.config, cond, uncond, latents, steps=num_inference_steps,
                            guidance=guidance_scale)
        images = (self.decode_latents(x0) + 1) / 2
        if output_type == "pil":
            from PIL import Image

            arrays = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            return [Image.fromarray(a) for a in arrays]
        return images
