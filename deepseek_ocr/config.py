"""Typed configuration built from the official `config.json`.

The official file carries the language-model fields twice (top level and `language_config`)
and the vision tower's sizes under `vision_config.width`. We read the language fields from
`language_config` (falling back to the top level), check that the architecture is the one we
implement (plain multi-head attention, greedy softmax routing), and keep every size here so no
module hard-codes one. Unknown keys are ignored; `auto_map` entries are never imported.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamConfig:
    """SAM ViT-B image encoder plus the 16x convolutional compressor."""

    image_size: int = 1024  # pretraining size: the absolute position table is (1024/16)^2
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    neck_channels: int = 256
    downsample_channels: tuple[int, ...] = (512, 1024)
    eps: float = 1e-6

    @property
    def pretrain_grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class ClipConfig:
    """CLIP-L/14 transformer, fed with SAM's 1024-channel map instead of its own patches."""

    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    image_size: int = 224
    patch_size: int = 14
    eps: float = 1e-5

    @property
    def num_positions(self) -> int:  # 16x16 grid + class token
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class DecoderConfig:
    """DeepSeek-V2 style MoE decoder with plain multi-head attention."""

    vocab_size: int = 129280
    hidden_size: int = 1280
    num_layers: int = 12
    num_heads: int = 10
    num_kv_heads: int = 10
    intermediate_size: int = 6848
    moe_intermediate_size: int = 896
    n_routed_experts: int = 64
    n_shared_experts: int = 2
    num_experts_per_tok: int = 6
    first_k_dense_replace: int = 1
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    max_position_embeddings: int = 8192
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    # Training only: the MoE balance loss (DeepSeek-V2's defaults when config.json omits them,
    # as the official one does).
    aux_loss_alpha: float = 0.001
    seq_aux: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def is_moe_layer(self, i: int) -> bool:
        return i >= self.first_k_dense_replace


@dataclass(frozen=True)
class ModelConfig:
    """The whole model: vision tower, projector, decoder."""

    sam: SamConfig = field(default_factory=SamConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    projector_input_dim: int = 2048
    # The compressor maps a patch grid of side g to ceil(g / 4): two stride-2 convolutions.
    downsample_ratio: int = 4
    torch_dtype: str = "bfloat16"
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_embed(self) -> int:
        return self.decoder.hidden_size

    def tokens_per_side(self, view_size: int) -> int:
        """Vision tokens per row of a square view: ceil((size // 16) / 4)."""
        return math.ceil((view_size // self.sam.patch_size) / self.downsample_ratio)

    # ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, cfg: dict[str, Any], *, source: str = "config.json") -> "ModelConfig":
        if not isinstance(cfg, dict):
            raise ConfigError(f"{source}: expected a JSON object, found {type(cfg).__name__}")
        if "auto_map" in cfg:
            logger.debug("%s: ignoring auto_map (remote code is never imported)", source)
        lang = cfg.get("language_config") or cfg
        if not isinstance(lang, dict):
            raise ConfigError(f"{source}: language_config must be an object")

        def get(key: str, default: Any = None, required: bool = True) -> Any:
            if key in lang and lang[key] is not None:
                return lang[key]
            if key in cfg and cfg[key] is not None:
                return cfg[key]
            if required and default is None:
                raise ConfigError(f"{source}: missing language field {key!r}")
            return default

        if get("use_mla", False, required=False):
            raise ConfigError(f"{source}: use_mla=true (multi-head latent attention) is not implemented")
        topk_method = get("topk_method", "greedy", required=False)
        if topk_method != "greedy":
            raise ConfigError(f"{source}: topk_method {topk_method!r} is not implemented (only 'greedy')")
        scoring = get("scoring_func", "softmax", required=False)
        if scoring != "softmax":
            raise ConfigError(f"{source}: scoring_func {scoring!r} is not implemented (only 'softmax')")
        rope_scaling = get("rope_scaling", None, required=False)
        if rope_scaling:
            raise ConfigError(f"{source}: rope_scaling {rope_scaling!r} is not implemented")

        try:
            decoder = DecoderConfig(
                vocab_size=int(get("vocab_size")),
                hidden_size=int(get("hidden_size")),
                num_layers=int(get("num_hidden_layers")),
                num_heads=int(get("num_attention_heads")),
                num_kv_heads=int(get("num_key_value_heads", get("num_attention_heads"))),
                intermediate_size=int(get("intermediate_size")),
                moe_intermediate_size=int(get("moe_intermediate_size")),
                n_routed_experts=int(get("n_routed_experts")),
                n_shared_experts=int(get("n_shared_experts", 0, required=False)),
                num_experts_per_tok=int(get("num_experts_per_tok")),
                first_k_dense_replace=int(get("first_k_dense_replace", 0, required=False)),
                norm_topk_prob=bool(get("norm_topk_prob", False, required=False)),
                routed_scaling_factor=float(get("routed_scaling_factor", 1.0, required=False)),
                max_position_embeddings=int(get("max_position_embeddings", 8192, required=False)),
                rope_theta=float(get("rope_theta", 10000.0, required=False)),
                rms_norm_eps=float(get("rms_norm_eps", 1e-6, required=False)),
                aux_loss_alpha=float(get("aux_loss_alpha", 0.001, required=False)),
                seq_aux=bool(get("seq_aux", True, required=False)),
            )
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{source}: a language field has the wrong type: {err}") from err
        if decoder.num_heads <= 0 or decoder.hidden_size % decoder.num_heads:
            raise ConfigError(f"{source}: hidden_size {decoder.hidden_size} is not divisible by "
                              f"num_attention_heads {decoder.num_heads}")
        if decoder.num_kv_heads != decoder.num_heads:
            raise ConfigError(f"{source}: grouped-query attention (num_key_value_heads "
                              f"{decoder.num_kv_heads} != {decoder.num_heads}) is not implemented")
        if not 0 < decoder.num_experts_per_tok <= decoder.n_routed_experts:
            raise ConfigError(f"{source}: num_experts_per_tok {decoder.num_experts_per_tok} must be in "
                              f"1..n_routed_experts ({decoder.n_routed_experts})")

        sam, clip = SamConfig(), ClipConfig()
        vision = cfg.get("vision_config") or {}
        widths = vision.get("width") if isinstance(vision, dict) else None
        if isinstance(widths, dict):
            try:
                s = widths.get("sam_vit_b") or {}
                c = widths.get("clip-l-14-224") or {}
                sam = SamConfig(
                    image_size=int(vision.get("image_size", sam.image_size)),
                    width=int(s.get("width", sam.width)),
                    depth=int(s.get("layers", sam.depth)),
                    heads=int(s.get("heads", sam.heads)),
                    global_attn_indexes=tuple(int(i) for i in s.get("global_attn_indexes",
                                                                   sam.global_attn_indexes)),
                    downsample_channels=tuple(int(i) for i in s.get("downsample_channels",
                                                                   sam.downsample_channels)),
                )
                clip = ClipConfig(
                    width=int(c.get("width", clip.width)),
                    depth=int(c.get("layers", clip.depth)),
                    heads=int(c.get("heads", clip.heads)),
                    image_size=int(c.get("image_size", clip.image_size)),
                    patch_size=int(c.get("patch_size", clip.patch_size)),
                )
            except (AttributeError, TypeError, ValueError) as err:
                raise ConfigError(f"{source}: a vision_config field has the wrong type: {err}") from err
        proj = cfg.get("projector_config") or {}
        if not isinstance(proj, dict):
            raise ConfigError(f"{source}: projector_config must be an object")
        projector_type = proj.get("projector_type", "linear")
        if projector_type != "linear":
            raise ConfigError(f"{source}: projector_type {projector_type!r} is not implemented")
        try:
            n_embed = int(proj.get("n_embed", decoder.hidden_size))
            input_dim = int(proj.get("input_dim", clip.width + sam.downsample_channels[-1]))
        except (IndexError, TypeError, ValueError) as err:
            raise ConfigError(f"{source}: a projector_config field has the wrong type: {err}") from err
        if n_embed != decoder.hidden_size:
            raise ConfigError(f"{source}: projector n_embed {n_embed} != hidden_size {decoder.hidden_size}")
        if input_dim != clip.width + sam.downsample_channels[-1]:
            raise ConfigError(f"{source}: projector input_dim {input_dim} != CLIP width + SAM channels "
                              f"({clip.width} + {sam.downsample_channels[-1]})")
        return cls(sam=sam, clip=clip, decoder=decoder, projector_input_dim=input_dim,
                   torch_dtype=str(cfg.get("torch_dtype", "bfloat16")), raw=cfg)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "ModelConfig":
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError as err:
            raise ConfigError(f"{path}: config.json not found") from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path}: cannot read config.json: {err}") from err
        return cls.from_dict(data, source=path)

    def to_dict(self) -> dict[str, Any]:
        """The official config.json layout (the raw file when we have one, else rebuilt)."""
        if self.raw:
            return self.raw
        d = self.decoder
        lang = {
            "bos_token_id": 0, "eos_token_id": 1,
            "first_k_dense_replace": d.first_k_dense_replace, "hidden_size": d.hidden_size,
            "intermediate_size": d.intermediate_size, "kv_lora_rank": None, "lm_head": True,
            "max_position_embeddings": d.max_position_embeddings,
            "moe_intermediate_size": d.moe_intermediate_size, "n_group": 1,
            "norm_topk_prob": d.norm_topk_prob, "routed_scaling_factor": d.routed_scaling_factor,
            "rope_theta": d.rope_theta, "rms_norm_eps": d.rms_norm_eps,
            "n_routed_experts": d.n_routed_experts, "n_shared_experts": d.n_shared_experts,
            "num_attention_heads": d.num_heads, "num_experts_per_tok": d.num_experts_per_tok,
            "num_hidden_layers": d.num_layers, "num_key_value_heads": d.num_kv_heads,
            "q_lora_rank": None, "qk_nope_head_dim": 0, "qk_rope_head_dim": 0, "rm_head": False,
            "topk_group": 1, "topk_method": "greedy", "torch_dtype": self.torch_dtype,
            "use_mla": False, "v_head_dim": 0, "vocab_size": d.vocab_size,
        }
        return {
            "architectures": ["DeepseekOCRForCausalLM"],
            "language_config": {"architectures": ["DeepseekV2ForCausalLM"], **lang},
            "model_type": "deepseek_vl_v2",
            "projector_config": {"input_dim": self.projector_input_dim, "model_type": "mlp_projector",
                                 "n_embed": d.hidden_size, "projector_type": "linear"},
            "tile_tag": "2D",
            "torch_dtype": self.torch_dtype,
            "vision_config": {
                "image_size": self.sam.image_size, "model_name": "deeplip_b_l", "model_type": "vision",
                "width": {
                    "clip-l-14-224": {"heads": self.clip.heads, "image_size": self.clip.image_size,
                                      "layers": self.clip.depth, "patch_size": self.clip.patch_size,
                                      "width": self.clip.width},
                    "sam_vit_b": {"downsample_channels": list(self.sam.downsample_channels),
                                  "global_attn_indexes": list(self.sam.global_attn_indexes),
                                  "heads": self.sam.heads, "layers": self.sam.depth,
                                  "width": self.sam.width},
                },
            },
            **lang,
        }

    def summary(self) -> dict[str, Any]:
        return {"sam": asdict(self.sam), "clip": asdict(self.clip), "decoder": asdict(self.decoder)}
