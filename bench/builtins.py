"""The harness's own plugins, registered as lazy ``module:Attr`` placeholders (imported only when asked for)."""

BUILTINS: tuple[tuple[str, str, str, str], ...] = (
    # (kind, name, target, one-line summary)
    ("defense", "none", "defenses.none:NoDefense", "No defense: the released model, unchanged (the baseline)."),
    ("defense", "specdef", "defenses.specdef:SpecDef",
     "SpecDef: inflate the top-k singular values by alpha and compensate with a trainable map (Rosati et al. 2026)."),
    ("defense", "specdef-nocomp", "defenses.specdef_nocomp:SpecDefNoCompensation",
     "Ablation: SpecDef's spectral inflation without the compensation map (changes the function)."),
    ("attack", "full-ft", "attacks.full_ft:FullFineTune",
     "Full fine-tuning of every parameter with SGD, Adam or AdamW."),
    ("task", "vision-digits", "tasks.vision.task:VisionDigits",
     "Vision classifier: an MLP/ViT released for allowed classes, attacked to learn the forbidden ones."),
)
