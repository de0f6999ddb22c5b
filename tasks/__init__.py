"""Task plugins: one module or small package per task; each registers itself in ``bench.registry.TASKS``."""
