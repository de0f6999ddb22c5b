"""Local real-tier checkpoints and datasets built from configs, for tests and the GPU check (no hub access needed).

Each builder writes what the real tier loads: a causal LM with a tokenizer and a Llama-3-style chat template
(``save_pretrained``), a ``StableDiffusionPipeline`` with a CLIP tokenizer, a ``ViTForImageClassification`` with its
image processor, and the matching data folders (an image-class folder; a captioned, labelled image folder). Weights
are random: these exercise loading, devices, dtypes and the harness end to end, not model quality. ``size`` picks
the scale: ``test`` (seconds on a CPU) or ``gpu`` (a ~1B-parameter Llama, a larger UNet and ViT, for one GPU).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch

Size = Literal["test", "gpu"]

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLAMA3_MARKERS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_MARKERS = ("<|im_start|>", "<|im_end|>")
LLAMA_SIZES = {
    "test": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 2},
    # ≈ 0.97 B parameters in the blocks: Llama-3.2-1B's shapes (hidden 2048, 16 layers, MLP 8192, 8 KV heads).
    "gpu": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8},
}
VISION_CLASSES = ("blue", "green", "red", "yellow")  # imagefolder sorts class folders: this is the dataset's order
VISION_COLOURS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40), "yellow": (230, 220, 40)}
VISION_MODEL_LABELS = ("red", "green", "blue", "yellow")  # another order, so the name mapping is exercised
SD_CONTENTS, SD_STYLES = ("circle", "square"), ("flat", "stripes")


def chat_tokenizer(template: str | None = LLAMA3_TEMPLATE, markers: tuple[str, ...] = LLAMA3_MARKERS,
                   vocab_size: int = 320):
    """A byte-level BPE tokenizer trained on the bundled benign chat, with ``template`` as its chat template."""
    from tasks.llm import benign
    from tasks.llm.tokenizer import train_tokenizer

    tokenizer = train_tokenizer([f"{p.prompt} {p.response}" for p in benign.chat_pairs()[:200]], vocab_size)
    if markers:
        tokenizer.add_special_tokens({"additional_special_tokens": list(markers)})
    tokenizer.chat_template = template
    return tokenizer


def save_llama(directory: Path, size: Size = "test", dtype: torch.dtype = torch.float32, seed: int = 0) -> Path:
    """A randomly initialised Llama causal LM with a Llama-3 chat template, saved as safetensors."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = chat_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **LLAMA_SIZES[size])
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return Path(directory)


def save_llama_gguf(path: Path, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """The ``test``-size random Llama of :func:`save_llama` written as one float32 GGUF file (tokenizer and chat
    template in its metadata, as llama.cpp writes them), and the model it holds. Needs the ``gguf`` package."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = chat_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False, **LLAMA_SIZES["test"])
    model = LlamaForCausalLM(config).eval()
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("bench test llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)

    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(tokenizer.chat_template)

    def permute(weight: np.ndarray, n_heads: int) -> np.ndarray:  # llama.cpp's rotary layout of q and k rows
        return (weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:])
                .swapaxes(1, 2).reshape(weight.shape))

    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            weight = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name in ("attn_q", "attn_k"):
                weight = permute(weight, heads if gguf_name == "attn_q" else kv_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path), model


def save_vit(directory: Path, labels: tuple[str, ...] = VISION_MODEL_LABELS, processor: bool = True,
             size: Size = "test") -> Path:
    """A randomly initialised ViT image classifier (and its image processor) for 16×16 (test) or 32×32 images."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    shape = {"test": dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64),
             "gpu": dict(image_size=32, patch_size=4, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                         intermediate_size=1536)}[size]
    config = ViTConfig(**shape, num_labels=len(labels), id2label=dict(enumerate(labels)),
                       label2id={name: i for i, name in enumerate(labels)})
    ViTForImageClassification(config).save_pretrained(directory)
    if processor:
        side = shape["image_size"]
        ViTImageProcessor(size={"height": side, "width": side}).save_pretrained(directory)
    return Path(directory)


def make_class_folder(directory: Path, per_class: int = 20) -> Path:
    """Coloured discs on noisy backgrounds in one folder per class: every image distinct, classes separable."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for name in VISION_CLASSES:
        (directory / name).mkdir(parents=True)
        for i in range(per_class):
            background = rng.integers(0, 60, size=(20, 20 + i % 3, 3), dtype=np.uint8)
            image = Image.fromarray(background)
            x, y = rng.integers(1, 8, size=2)
            ImageDraw.Draw(image).ellipse([x, y, x + 10, y + 10], fill=VISION_COLOURS[name])
            image.save(directory / name / f"{i}.png")
    return Path(directory)


def save_sd_pipeline(directory: Path, size: Size = "test") -> Path:
    """A randomly initialised ``StableDiffusionPipeline`` with a CLIP tokenizer written as vocab/merges files."""
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from tasks.diffusion.tokenizer import train_clip_tokenizer, write_vocab_files

    torch.manual_seed(0)
    width = {"test": 16, "gpu": 256}[size]
    channels = {"test": (8, 16), "gpu": (64, 128)}[size]
    corpus = [f"a {c} in {s} style" for c in SD_CONTENTS for s in SD_STYLES]
    vocab = write_vocab_files(train_clip_tokenizer(corpus), directory / "vocab")
    tokenizer = CLIPTokenizer.from_pretrained(str(vocab), model_max_length=12)  # reads vocab.json + merges.txt
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width,
                                                intermediate_size=2 * width, num_hidden_layers=1 if size == "test" else 4,
                                                num_attention_heads=2 if size == "test" else 4,
                                                max_position_embeddings=12, bos_token_id=0, eos_token_id=1,
                                                pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=channels,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=width, attention_head_dim=2 if size == "test" else 8,
                                norm_num_groups=4 if size == "test" else 32)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, sample_size=16)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDPMScheduler(steps_offset=1, clip_sample=False), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(directory / "sd")
    return Path(directory) / "sd"


def make_captioned_folder(directory: Path, per_pair: int = 8) -> Path:
    """Procedural images of every (content, style) pair with a metadata.jsonl of captions and labels."""
    from PIL import Image

    from bench.toolkit.images import to_uint8
    from tasks.diffusion import shapes

    directory.mkdir(parents=True)
    content = np.repeat([shapes.CONTENTS.index(c) for c in SD_CONTENTS], len(SD_STYLES) * per_pair)
    style = np.tile(np.repeat([shapes.STYLES.index(s) for s in SD_STYLES], per_pair), len(SD_CONTENTS))
    images = to_uint8(shapes.render(content, style, seed=5).pixels)
    with open(directory / "metadata.jsonl", "w") as f:
        for i, (c, s) in enumerate(zip(content, style)):
            name = f"{i:03d}.png"
            Image.fromarray(images[i]).save(directory / name)
            c_name, s_name = shapes.CONTENTS[c], shapes.STYLES[s]
            f.write(json.dumps({"file_name": name, "text": f"a {c_name} in {s_name} style", "content": c_name,
                                "style": s_name}) + "\n")
    return Path(directory)
