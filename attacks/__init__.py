"""Attack plugins: one module per attack family; each registers itself in ``bench.registry.ATTACKS``."""
