"""Parsing the official `config.json` into `ModelConfig` (RELIABILITY.md case 3, DESIGN.md 6).

The reference numbers are the official DeepSeek-OCR sizes, written out here by hand, and the
official file itself (`../shared/parity/official_config.json`). Each refusal test checks the
exception type and that the message names the file and the offending field.
"""
from __future__ import annotations

import copy
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from deepseek_ocr.config import ClipConfig, DecoderConfig, ModelConfig, SamConfig
from deepseek_ocr.errors import ConfigError, DeepseekOCRError


@pytest.fixture(scope="module")
def official(shared_dir) -> Path:
    return shared_dir / "parity" / "official_config.json"


@pytest.fixture()
def official_dict(official) -> dict:
    return json.loads(official.read_text(encoding="utf-8"))


def both_levels(cfg: dict, key: str, value=None, *, delete: bool = False) -> dict:
    """The official file repeats each language field at the top level and under
    `language_config`; a change must hit both or the other copy silently wins."""
    for d in (cfg, cfg["language_config"]):
        if delete:
            d.pop(key, None)
        else:
            d[key] = value
    return cfg


def refused(cfg_or_path, *fragments: str, source: str = "test.json") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        if isinstance(cfg_or_path, Path):
            ModelConfig.from_file(cfg_or_path)
        else:
            ModelConfig.from_dict(cfg_or_path, source=source)
    err = info.value
    assert isinstance(err, DeepseekOCRError)
    message = str(err)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return err


# --- the official file ------------------------------------------------------------------------

def test_official_config_parses_to_official_sizes(official):
    cfg = ModelConfig.from_file(official)
    d = cfg.decoder
    assert (d.hidden_size, d.num_layers, d.n_routed_experts, d.num_experts_per_tok) == (1280, 12, 64, 6)
    assert (d.num_heads, d.num_kv_heads, d.head_dim) == (10, 10, 128)
    assert (d.intermediate_size, d.moe_intermediate_size) == (6848, 896)
    assert (d.n_shared_experts, d.first_k_dense_replace, d.vocab_size) == (2, 1, 129280)
    assert d.max_position_embeddings == 8192
    assert not d.is_moe_layer(0) and all(d.is_moe_layer(i) for i in range(1, 12))
    s = cfg.sam
    assert (s.width, s.depth, s.heads, s.global_attn_indexes) == (768, 12, 12, (2, 5, 8, 11))
    assert s.downsample_channels == (512, 1024) and s.image_size == 1024
    c = cfg.clip
    assert (c.width, c.depth, c.heads, c.image_size, c.patch_size) == (1024, 24, 16, 224, 14)
    assert cfg.projector_input_dim == 2048 and cfg.n_embed == 1280
    assert cfg.torch_dtype == "bfloat16"
    # The official file has no value for these; the DeepSeek-V2 defaults apply.
    assert (d.norm_topk_prob, d.routed_scaling_factor, d.rope_theta) == (False, 1.0, 10000.0)


def test_official_config_equals_the_built_in_defaults(official):
    # ModelConfig() is what random_config() and the docs start from: it must be the official model.
    assert ModelConfig.from_file(official) == ModelConfig()


def test_language_config_wins_over_the_top_level(official_dict):
    official_dict["language_config"]["num_hidden_layers"] = 3
    official_dict["num_hidden_layers"] = 7
    assert ModelConfig.from_dict(official_dict).decoder.num_layers == 3


def test_top_level_fields_are_used_without_language_config(official_dict):
    del official_dict["language_config"]
    official_dict["n_routed_experts"] = 8
    cfg = ModelConfig.from_dict(official_dict)
    assert cfg.decoder.n_routed_experts == 8 and cfg.decoder.hidden_size == 1280


# --- architectures we do not implement ----------------------------------------------------------

def test_use_mla_is_refused(official_dict):
    refused(both_levels(official_dict, "use_mla", True), "test.json", "use_mla")


def test_mla_in_language_config_alone_is_refused(official_dict):
    official_dict["language_config"]["use_mla"] = True
    refused(official_dict, "use_mla")


@pytest.mark.parametrize("method", ["noaux_tc", "group_limited_greedy"])
def test_topk_method_other_than_greedy_is_refused(official_dict, method):
    refused(both_levels(official_dict, "topk_method", method), "topk_method", method)


def test_sigmoid_scoring_is_refused(official_dict):
    refused(both_levels(official_dict, "scoring_func", "sigmoid"), "scoring_func", "sigmoid")


def test_rope_scaling_is_refused(official_dict):
    refused(both_levels(official_dict, "rope_scaling", {"type": "yarn", "factor": 40}), "rope_scaling")


def test_grouped_query_attention_is_refused(official_dict):
    refused(both_levels(official_dict, "num_key_value_heads", 2), "grouped-query", "2")


def test_non_linear_projector_is_refused(official_dict):
    official_dict["projector_config"]["projector_type"] = "mlp_gelu"
    refused(official_dict, "projector_type", "mlp_gelu")


# --- malformed files ----------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "n_routed_experts",
                                 "moe_intermediate_size", "vocab_size", "num_experts_per_tok"])
def test_missing_field_is_named(official_dict, key):
    refused(both_levels(official_dict, key, delete=True), "test.json", "missing", repr(key))


def test_null_field_counts_as_missing(official_dict):
    refused(both_levels(official_dict, "intermediate_size", None), "missing", "'intermediate_size'")


@pytest.mark.parametrize("key, value, fragment", [
    ("hidden_size", "wide", "wrong type"),
    ("num_hidden_layers", [12], "wrong type"),
    ("hidden_size", 1281, "not divisible"),
    ("num_experts_per_tok", 65, "num_experts_per_tok"),
    ("num_experts_per_tok", 0, "num_experts_per_tok"),
    ("num_attention_heads", 0, "num_attention_heads"),
])
def test_bad_language_values_are_refused(official_dict, key, value, fragment):
    refused(both_levels(official_dict, key, value), "test.json", fragment)


@pytest.mark.parametrize("section, key, value", [
    ("sam_vit_b", "layers", "twelve"),
    ("sam_vit_b", "global_attn_indexes", 5),
    ("clip-l-14-224", "width", None),
    ("clip-l-14-224", "heads", {"n": 16}),
])
def test_bad_vision_values_are_a_config_error(official_dict, section, key, value):
    # Not a bare ValueError/TypeError from int(): one typed error naming the file.
    official_dict["vision_config"]["width"][section][key] = value
    refused(official_dict, "test.json", "vision_config")


@pytest.mark.parametrize("projector", [["linear"], {"projector_type": "linear", "n_embed": "x"}])
def test_bad_projector_config_is_a_config_error(official_dict, projector):
    official_dict["projector_config"] = projector
    refused(official_dict, "test.json", "projector")


def test_projector_width_mismatch_is_refused(official_dict):
    official_dict["projector_config"]["input_dim"] = 2049
    refused(official_dict, "input_dim", "2049")


@pytest.mark.parametrize("value", [[1, 2], "config", 3, None])
def test_top_level_not_an_object_is_refused(value):
    refused(value, "test.json", "JSON object")


def test_language_config_not_an_object_is_refused(official_dict):
    official_dict["language_config"] = ["hidden_size", 1280]
    refused(official_dict, "language_config")


def test_malformed_json_file(tmp_path, official):
    path = tmp_path / "config.json"
    path.write_text(official.read_text(encoding="utf-8")[:-40], encoding="utf-8")  # cut short
    refused(path, str(path), "cannot read")


def test_non_utf8_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"hidden_size": "\xff\xfe"}')
    refused(path, str(path))


def test_missing_file(tmp_path):
    path = tmp_path / "absent" / "config.json"
    refused(path, str(path), "not found")


def test_config_error_is_also_a_value_error(tmp_path):
    # Callers that catch ValueError for bad arguments keep working.
    with pytest.raises(ValueError):
        ModelConfig.from_file(tmp_path / "config.json")


# --- remote code ---------------------------------------------------------------------------------

def test_auto_map_is_never_imported(tmp_path, monkeypatch, official_dict):
    marker = tmp_path / "imported.txt"
    module = "deepseek_ocr_test_remote_code_trap"
    (tmp_path / f"{module}.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "raise RuntimeError('remote code was imported')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))  # so an import attempt would really succeed
    trap = {"AutoConfig": f"{module}.Config", "AutoModel": f"{module}.Model",
            "AutoModelForCausalLM": f"{module}.Model"}
    official_dict["auto_map"] = trap
    official_dict["language_config"]["auto_map"] = trap
    official_dict["trust_remote_code"] = True
    path = tmp_path / "config.json"
    path.write_text(json.dumps(official_dict), encoding="utf-8")
    cfg = ModelConfig.from_file(path)
    assert cfg == ModelConfig()
    assert module not in sys.modules and not marker.exists()


# --- to_dict ------------------------------------------------------------------------------------

def test_to_dict_with_raw_returns_the_file_unchanged(official, official_dict):
    assert ModelConfig.from_file(official).to_dict() == official_dict


def test_to_dict_round_trip_of_defaults():
    cfg = ModelConfig()
    assert not cfg.raw
    d = cfg.to_dict()
    again = ModelConfig.from_dict(json.loads(json.dumps(d)))  # through real JSON
    assert again == cfg
    assert "auto_map" not in d  # a rebuilt file points at no remote code


def test_to_dict_round_trip_keeps_every_parsed_field():
    """Every field that from_dict reads must survive to_dict -> JSON -> from_dict, so a
    config without a file behind it (random_config, save_pretrained) reloads as itself.
    Each value differs from its default so a field dropped by to_dict shows up."""
    base = ModelConfig()
    decoder = DecoderConfig(
        vocab_size=1000, hidden_size=256, num_layers=5, num_heads=4, num_kv_heads=4,
        intermediate_size=640, moe_intermediate_size=96, n_routed_experts=16, n_shared_experts=1,
        num_experts_per_tok=3, first_k_dense_replace=2, norm_topk_prob=True,
        routed_scaling_factor=2.5, max_position_embeddings=4096, rope_theta=50000.0,
        rms_norm_eps=1e-5)
    sam = replace(base.sam, image_size=512, width=384, depth=6, heads=6,
                  global_attn_indexes=(1, 4), downsample_channels=(256, 512))
    clip = replace(base.clip, width=768, depth=4, heads=12, image_size=336, patch_size=16)
    cfg = replace(base, sam=sam, clip=clip, decoder=decoder, projector_input_dim=768 + 512,
                  torch_dtype="float16")
    for field in ("decoder", "sam", "clip"):  # the test really moves every value
        assert getattr(cfg, field) != getattr(base, field)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.decoder == cfg.decoder
    assert again.sam == cfg.sam
    assert again.clip == cfg.clip
    assert again == cfg


def test_from_dict_does_not_modify_its_input(official_dict):
    before = copy.deepcopy(official_dict)
    ModelConfig.from_dict(official_dict)
    assert official_dict == before


def test_sub_configs_have_the_documented_defaults():
    assert SamConfig().pretrain_grid == 64
    assert ClipConfig().num_positions == 257
    assert ModelConfig().tokens_per_side(1024) == 16 and ModelConfig().tokens_per_side(640) == 10
