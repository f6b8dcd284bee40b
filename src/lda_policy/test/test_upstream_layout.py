"""lda-import-upstream on the authors' full key layout, and on bad input.

- The published RoboCasa config (values from the authors' config.yaml) gives exactly the 1441 keys and
  shapes of the published checkpoint (the list in data/upstream_golden/, rebuilt from their code).
- A synthetic checkpoint with that key structure at small widths (16 DiT blocks, 32 embodiments,
  12 DINO layers, a 36-layer Qwen3-VL with deepstack) is written as they ship it (a torch.save
  ``pytorch_model.pt``), converted, loaded and compared tensor by tensor.
- Unknown, missing and mis-shaped keys and a broken config are refused by name.
"""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from lda_policy.model.upstream import DinoSpec, UpstreamConfig, UpstreamLDA, to_ours, to_theirs
from lda_policy.model.upstream.checkpoint import load_upstream, read_upstream_config
from lda_policy.model.upstream.cli import main
from lda_policy.model.upstream.config import PUBLISHED_ROBOCASA
from lda_policy.model.upstream.importer import read_authors_config
from lda_policy.model.upstream.vlm import QWEN3VL_4B_INSTRUCT, build_qwen, expected_vlm_shapes
from safetensors.torch import load_file, save_file

FIXTURE = Path(__file__).parent / "data" / "upstream_golden"

#: The published config.yaml's action-model values (as pinned by third parties; see the fixture's config.json).
PUBLISHED_YAML = {
    "framework": {
        "name": "QwenMMDiT", "qwenvl": {"base_vlm": "Qwen/Qwen3-VL-4B-Instruct"},
        "action_model": {
            "action_model_type": "DiT-L", "action_dim": 138, "state_dim": 58, "future_action_window_size": 15,
            "hidden_size": 2560, "max_num_embodiments": 32, "max_seq_len": 1024, "num_target_vision_tokens": 32,
            "num_views": 1, "obs_horizon": 2, "future_obs_index": 16, "num_inference_timesteps": 4,
            "vision_encoder_type": "dinov3", "vision_encoder_size": "s", "add_pos_embed": True,
            "diffusion_model_cfg": {"cross_attention_dim": 2560, "num_layers": 16, "output_dim": 2560,
                                    "positional_embeddings": None, "dropout": 0.2, "norm_type": "ada_norm"},
        },
    },
    "datasets": {"vla_data": {"CoT_prompt": "Your task is {instruction}."}},
    "trainer": {"repeated_diffusion_steps": 4},
}


def published_keys():
    keys = {}
    for line in (FIXTURE / "state_dict_keys_published_config.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split("\t")[:2]
            keys[name] = tuple(json.loads(shape))
    return keys


def test_published_config_gives_the_published_keys_and_shapes(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(PUBLISHED_YAML))
    config = read_authors_config(tmp_path / "config.yaml")
    assert config.inner_dim == 1536 and config.num_layers == 16 and config.vlm == QWEN3VL_4B_INSTRUCT
    assert config.dino == DinoSpec() and config.vlm_prompt == "Your task is {instruction}."
    with torch.device("meta"):
        head = {to_theirs("head", k): tuple(v.shape) for k, v in UpstreamLDA(config).state_dict().items()}
    vlm = {to_theirs("vlm", k): tuple(v) for k, v in expected_vlm_shapes(QWEN3VL_4B_INSTRUCT).items()}
    assert {**head, **vlm} == published_keys()
    assert sum(torch.Size(s).numel() for s in head.values()) == 2_384_218_048  # the fixture's count
    assert config.to_dict() == {**PUBLISHED_ROBOCASA.to_dict(), "vlm": QWEN3VL_4B_INSTRUCT,
                                "vlm_prompt": "Your task is {instruction}."}


def small_published_structure():
    """The published key structure (depths, token counts, embodiments) at small widths."""
    text = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 36,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "hidden_act": "silu",
            "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 5000000.0,
            "rope_scaling": {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
            "attention_bias": False, "tie_word_embeddings": True}
    vision = {**QWEN3VL_4B_INSTRUCT["vision_config"], "hidden_size": 16, "intermediate_size": 32, "num_heads": 2,
              "out_hidden_size": 32, "num_position_embeddings": 16}
    vlm = {**QWEN3VL_4B_INSTRUCT, "text_config": text, "vision_config": vision}
    dino = DinoSpec(hidden_size=16, intermediate_size=32, num_attention_heads=2, image_size=32)
    return UpstreamConfig(num_heads=2, head_dim=8, hidden_size=24, dit_output_dim=24, text_dim=32, dino=dino, vlm=vlm)


def fixture_layout_config(config):
    """config.json in the golden-fixture layout (their config + the sub-model configs beside it)."""
    action = {"action_model_type": "DiT-small", "action_dim": config.action_dim, "state_dim": config.state_dim,
              "future_action_window_size": config.action_horizon - 1, "hidden_size": config.hidden_size,
              "max_num_embodiments": config.max_embodiments, "future_obs_index": config.future_obs_index,
              "vision_encoder_type": "dinov3",
              "diffusion_model_cfg": {"cross_attention_dim": config.text_dim, "num_layers": config.num_layers,
                                      "output_dim": config.dit_output_dim, "positional_embeddings": None}}
    tokens = {k: v for k, v in config.vlm.items() if k.endswith("token_id")}
    return {"full_config": {"framework": {"action_model": action}},
            "DiTConfig[DiT-small]": {"num_attention_heads": config.num_heads, "attention_head_dim": config.head_dim},
            "dinov3_config": config.dino.__dict__, "qwen3vl_text_config": config.vlm["text_config"],
            "qwen3vl_vision_config": config.vlm["vision_config"], "qwen3vl_token_ids": tokens}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """An authors-layout pytorch_model.pt + config of the small published structure."""
    torch.manual_seed(0)
    config = small_published_structure()
    head = UpstreamLDA(config)
    state = {to_theirs("head", k): v.clone() for k, v in head.state_dict().items()}
    vlm = build_qwen(config.vlm)
    state.update({to_theirs("vlm", k): v.clone() for k, v in vlm.state_dict().items()})
    source = tmp_path_factory.mktemp("authors") / "checkpoints" / "steps_1000"
    source.mkdir(parents=True)
    torch.save(state, source / "pytorch_model.pt")
    (source.parent.parent / "config.json").write_text(json.dumps(fixture_layout_config(config)))
    return source, state, config


def test_synthetic_full_layout_converts_and_round_trips(synthetic, tmp_path, capsys):
    source, state, config = synthetic
    assert set(re.sub(r"\.\d+\.", ".N.", k) for k in state) == \
        set(re.sub(r"\.\d+\.", ".N.", k) for k in published_keys())  # the same key structure
    assert {k for k in state if ".blocks." in k or ".layer." in k or ".layers." in k} \
        >= {k for k in published_keys() if ".blocks.15." in k or ".layer.11." in k or ".layers.35." in k}
    assert main([str(source), str(tmp_path / "out")]) == 0
    assert "vlm.language_model" in capsys.readouterr().out
    assert read_upstream_config(tmp_path / "out") == config
    model = load_upstream(tmp_path / "out")
    for ours, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[to_theirs("head", ours)]), ours
    vlm = load_file(str(tmp_path / "out" / "vlm.safetensors"))
    assert set(vlm) | {"lm_head.weight"} == {to_ours(k)[1] for k in state if k.startswith("qwen_vl_interface.")}
    for ours, tensor in vlm.items():
        assert torch.equal(tensor, state[to_theirs("vlm", ours)]), ours
    b = 2  # and the converted model runs
    actions = model.predict_action(torch.randn(b, 7, 32), torch.ones(b, 7), torch.randint(0, 255, (b, 2, 32, 32, 3)),
                                   torch.randn(b, 2, 58), torch.tensor([24, 3]), torch.randn(b, 5, 138), num_steps=2)
    assert actions.shape == (b, 16, 138) and torch.isfinite(actions).all()


def test_bfloat16_import(synthetic, tmp_path):
    source, state, _ = synthetic
    assert main([str(source), str(tmp_path / "bf16"), "--dtype", "bfloat16", "--head-only"]) == 0
    stored = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    key = "dit.blocks.15.modulation.weight"
    assert stored[key].dtype == torch.bfloat16
    assert torch.equal(stored[key], state["action_model.model.blocks.15.to_cond.2.weight"].bfloat16())
    assert not (tmp_path / "bf16" / "vlm.safetensors").exists()


def edited_fixture(tmp_path, edit):
    copy = tmp_path / "authors"
    copy.mkdir()
    shutil.copy(FIXTURE / "config.json", copy / "config.json")
    state = load_file(str(FIXTURE / "state_dict.safetensors"))
    edit(state)
    save_file(state, str(copy / "state_dict.safetensors"))
    return copy


def refused(tmp_path, capsys, source, *patterns, args=()):
    assert main([str(source), str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    for pattern in patterns:
        assert re.search(pattern, err), (pattern, err)


def test_unexpected_key_is_named(tmp_path, capsys):
    source = edited_fixture(tmp_path, lambda s: s.update({"action_model.extra_head.weight": torch.zeros(2)}))
    refused(tmp_path, capsys, source, r"1 unexpected key", r"action_model\.extra_head\.weight")


def test_missing_key_is_named(tmp_path, capsys):
    source = edited_fixture(tmp_path, lambda s: s.pop("action_model.model.blocks.1.to_cond.2.weight"))
    refused(tmp_path, capsys, source, r"1 missing key", r"action_model\.model\.blocks\.1\.to_cond\.2\.weight")


def test_shape_mismatch_is_named(tmp_path, capsys):
    source = edited_fixture(tmp_path, lambda s: s.update({"action_model.obs_merger.weight": torch.zeros(64, 96)}))
    refused(tmp_path, capsys, source, r"action_model\.obs_merger\.weight' has shape \(64, 96\), expected \(64, 144\)")


def test_missing_vlm_needs_head_only(tmp_path, capsys):
    def drop_vlm(state):
        for k in [k for k in state if k.startswith("qwen_vl_interface.")]:
            del state[k]

    source = edited_fixture(tmp_path, drop_vlm)
    refused(tmp_path, capsys, source, r"no qwen_vl_interface", r"--head-only")
    assert main([str(source), str(tmp_path / "head"), "--head-only"]) == 0


def test_bad_config_is_named(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"framework": {"name": "QwenMMDiT"}}))
    shutil.copy(FIXTURE / "state_dict.safetensors", tmp_path / "state_dict.safetensors")
    refused(tmp_path, capsys, tmp_path, r"config\.yaml", r"framework\.action_model")
    bad = dict(PUBLISHED_YAML, framework={**PUBLISHED_YAML["framework"], "action_model": {
        **PUBLISHED_YAML["framework"]["action_model"], "action_model_type": "DiT-Huge"}})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    refused(tmp_path, capsys, tmp_path, r"unknown DiT size 'DiT-Huge'")


class NotATensor:
    """An object a weights-only unpickler must refuse to build (it would run this module's code)."""


def test_pickle_with_code_is_refused(tmp_path, capsys):
    torch.save({"action_model.policy_embedding": NotATensor()}, tmp_path / "pytorch_model.pt")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(PUBLISHED_YAML))
    refused(tmp_path, capsys, tmp_path, r"pytorch_model\.pt", r"weights_only=True refused it")
