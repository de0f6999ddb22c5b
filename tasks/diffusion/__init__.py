"""Text-to-image tasks ``sd-style`` and ``sd-concept`` (tiny embedded pipeline on CPU, or real Stable Diffusion)."""
