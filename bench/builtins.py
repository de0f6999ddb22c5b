"""The harness's own plugins, registered as lazy ``module:Attr`` placeholders (imported only when asked for)."""

BUILTINS: tuple[tuple[str, str, str, str], ...] = (
    # (kind, name, target, one-line summary)
    ("defense", "none", "defenses.none:NoDefense", "No defense: the released model, unchanged (the baseline)."),
    ("defense", "specdef", "defenses.specdef:SpecDef",
     "SpecDef: inflate the top-k singular values by alpha and compensate with a trainable map (Rosati et al. 2026)."),
    ("defense", "specdef-nocomp", "defenses.specdef_nocomp:SpecDefNoCompensation",
     "Ablation: SpecDef's spectral inflation without the compensation map (changes the function)."),
    ("attack", "full-ft", "attacks.full_ft:FullFineTune",
     "Full fine-tuning of every parameter with SGD, Adam, AdamW, Muon or AdaHessian."),
    ("attack", "lora", "attacks.lora:Lora",
     "LoRA adapters (PEFT) on the task's standard targets, all linear maps, or convolutions only."),
    ("attack", "adaptive-collapse", "attacks.adaptive_collapse:AdaptiveCollapse",
     "Adaptive: fuse each chain of adjacent linear maps into one, then fine-tune."),
    ("attack", "adaptive-inject", "attacks.adaptive_inject:AdaptiveInject",
     "Adaptive: freeze each fused chain, insert an identity-initialised trainable square layer, fine-tune."),
    ("attack", "adaptive-freeze", "attacks.adaptive_freeze:AdaptiveFreeze",
     "Adaptive: freeze the compensation side of each chain of linear maps, then fine-tune."),
    ("attack", "adaptive-split", "attacks.adaptive_split:AdaptiveSplit",
     "Adaptive: split each inflated map into j factors sharing its spectrum, then fine-tune."),
    ("task", "vision-digits", "tasks.vision.task:VisionDigits",
     "Vision classifier: an MLP/ViT released for allowed classes, attacked to learn the forbidden ones."),
    ("task", "sd-style", "tasks.diffusion.task:SDStyle",
     "Text-to-image: a pipeline released without the 'stripes' style, attacked to paint in it (tiny SD on CPU, or real SD)."),
    ("task", "sd-concept", "tasks.diffusion.task:SDConcept",
     "Text-to-image: a pipeline released without the 'triangle' concept, attacked to draw it (tiny SD on CPU, or real SD)."),
)
