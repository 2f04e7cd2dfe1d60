import pytest
import yaml

from ldm_ood.config import PAPER_CODEBOOK_SIZE, PRESETS, ConfigError, load_config, save_config


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_validates_and_grid_divides(preset):
    cfg = load_config(preset=preset)
    f = 2 ** cfg.first_stage.levels
    assert all(g % f == 0 for g in cfg.data.grid)
    assert len(cfg.data.grid) == cfg.data.spatial_dims


def test_paper_preset_is_paper_000_section_3_2():
    cfg = load_config(preset="paper")
    fs, ldm, tr, sc = cfg.first_stage, cfg.ldm, cfg.transformer, cfg.score
    assert (fs.channels, fs.num_res_layers, fs.embedding_dim) == (128, 3, 64)
    assert fs.num_embeddings == PAPER_CODEBOOK_SIZE[fs.levels] == 256
    assert (fs.perceptual_weight, fs.adversarial_weight, fs.optim.lr, fs.optim.patience) == (0.001, 0.01, 3e-4, 15)
    assert ldm.channels == (128, 256, 256) and ldm.attention_levels == (False, False, True)
    assert ldm.num_res_blocks == 1 and ldm.num_train_timesteps == 1000
    assert (ldm.schedule, ldm.beta_start, ldm.beta_end, ldm.optim.lr) == ("scaled_linear_beta", 0.0015, 0.0195, 2.5e-5)
    assert (tr.num_layers, tr.dim, tr.heads, tr.optim.lr) == (22, 256, 8, 1e-4)
    assert (sc.num_t_values, sc.num_inference_steps, sc.sampler) == (50, 100, "plms")
    assert cfg.data.grid == (176, 208, 176)


def test_2d_presets_are_paper_001_vqvae():
    cfg = load_config(preset="cpu-2d")
    assert cfg.data.spatial_dims == 2 and cfg.data.grid == (64, 64)
    assert cfg.first_stage.kind == "vqvae" and cfg.first_stage.downsampling_factor == 4
    seg = cfg.segment
    assert (seg.kl_t_range, seg.percentile, seg.start_t, seg.ddim_steps) == ((400, 600), 97.5, 500, 50)


def test_presets_do_not_share_state():
    a = load_config(preset="cpu")
    b = load_config(preset="cpu-2d")
    assert a.ldm.channels != b.ldm.channels or a.first_stage.channels != b.first_stage.channels
    assert load_config(preset="cpu").ldm.channels == a.ldm.channels


def test_bad_value_names_field_and_reason():
    with pytest.raises(ConfigError, match=r"ldm\.optim\.lr: Input should be greater than 0"):
        load_config(preset="tiny", overrides={"ldm": {"optim": {"lr": -1}}})
    with pytest.raises(ConfigError, match=r"first_stage\.kind"):
        load_config(overrides={"first_stage": {"kind": "gan"}})
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(overrides={"data": {"grid": (60, 64, 64)}, "first_stage": {"levels": 3}})
    with pytest.raises(ConfigError, match="unknown_field"):
        load_config(overrides={"score": {"unknown_field": 1}})


def test_yaml_round_trip_and_file_errors(tmp_path):
    cfg = load_config(preset="tiny")
    p = tmp_path / "c.yaml"
    save_config(cfg, p)
    assert load_config(p) == cfg
    p.write_text(yaml.safe_dump({"preset": "tiny", "score": {"num_t_values": 0}}))
    with pytest.raises(ConfigError, match=str(p).replace(".", r"\.") + r"(.|\n)*score\.num_t_values"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="huge")


def test_override_config_replaces_exactly_the_named_fields(tmp_path):
    from ldm_ood.config import changed_fields, override_config

    base = load_config(preset="tiny")
    over = tmp_path / "over.yaml"
    over.write_text(yaml.safe_dump({"ldm": {"optim": {"max_epochs": 9}}, "score": {"map_t_values": [100]}}))
    merged = override_config(base, over)
    assert merged.ldm.optim.max_epochs == 9 and merged.score.map_t_values == (100,)
    assert merged.ldm.optim.lr == base.ldm.optim.lr and merged.ldm.channels == base.ldm.channels
    assert changed_fields(base, merged) == ["ldm.optim.max_epochs", "score.map_t_values"]
    assert changed_fields(base, base) == [] and override_config(base) == base
    assert override_config(base, over, preset="tiny") == merged
    with pytest.raises(ConfigError, match="preset 'paper'.*preset of an existing run cannot change"):
        override_config(base, preset="paper")
    over.write_text(yaml.safe_dump({"ldm": {"optim": {"lr": 0}}}))
    with pytest.raises(ConfigError, match=r"over\.yaml(.|\n)*ldm\.optim\.lr: Input should be greater than 0"):
        override_config(base, over)


def test_every_section_lists_the_artifacts_it_invalidates():
    from ldm_ood.config import ARTIFACTS, SECTION_ARTIFACTS, Config, invalidated_artifacts
    from ldm_ood.config.stages import CALIBRATIONS

    assert set(SECTION_ARTIFACTS) == set(Config.model_fields)
    assert invalidated_artifacts(["synth.n_train", "preset"]) == {}
    assert list(invalidated_artifacts(["data.grid"])) == list(ARTIFACTS)
    assert invalidated_artifacts(["ldm.optim.max_epochs"]) == {
        "ldm": ["ldm.optim.max_epochs"], "calibration/ldm": ["ldm.optim.max_epochs"],
        "calibration/segment": ["ldm.optim.max_epochs"]}
    # every calibration made from the segment section (paper 001's and its baselines', which use segment.fpr)
    from_segment = {c.artifact: ["segment.percentile"] for c in CALIBRATIONS.values() if "segment" in c.sections}
    assert "calibration/segment" in from_segment
    assert invalidated_artifacts(["transformer.dim", "segment.percentile"]) == {
        "transformer": ["transformer.dim"], "calibration/ltm": ["transformer.dim"], **from_segment,
        "calibration/transformer": ["transformer.dim", "segment.percentile"]}
    assert set(from_segment) >= {"calibration/fanogan", "calibration/ae", "calibration/vae"}
    assert invalidated_artifacts(["fanogan.kappa"]) == {"fanogan": ["fanogan.kappa"],
                                                        "calibration/fanogan": ["fanogan.kappa"]}
    assert invalidated_artifacts(["ae.top_k_fraction"]) == {
        "ae": ["ae.top_k_fraction"], "calibration/ae": ["ae.top_k_fraction"]}
    assert invalidated_artifacts(["transformer.dim"])["calibration/transformer"] == ["transformer.dim"]
    assert invalidated_artifacts(["ensemble.optim.lr", "token_healing.percentile"]) == {
        "ensemble": ["ensemble.optim.lr"], "calibration/transformer": ["token_healing.percentile"],
        "calibration/ensemble": ["ensemble.optim.lr", "token_healing.percentile"]}


def test_every_preset_is_a_yaml_file_shipped_in_the_package_and_validates():
    from importlib import resources

    from ldm_ood.config import PRESETS, build_config, preset_dict

    files = sorted(f.name for f in (resources.files("ldm_ood.config") / "presets").iterdir())
    assert files == sorted([f"{p}.yaml" for p in PRESETS] + ["2d.yaml"])  # 2d.yaml: the overlay of every -2d
    assert PRESETS[:4] == ("tiny", "demo", "cpu", "paper")
    for name in PRESETS:
        cfg = build_config(preset_dict(name))
        assert cfg.preset == name
        assert cfg.data.spatial_dims == (2 if name.endswith("-2d") else 3)
    demo, cpu = build_config(preset_dict("demo")), build_config(preset_dict("cpu"))
    assert demo.ldm.channels == cpu.ldm.channels and demo.data.grid == (32, 32, 32)  # extends: cpu
    d2 = build_config(preset_dict("demo-2d"))
    assert d2.first_stage.kind == "vqvae" and d2.data.grid == (32, 32) and d2.first_stage.optim.max_epochs == 10
    assert build_config(preset_dict("paper-2d")).data.spacing is None  # the 2d overlay clears the 3D spacing
    with pytest.raises(ConfigError, match="unknown preset '2d'"):
        preset_dict("2d")
