"""The typed config: YAML file plus ``section.key=value`` overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from aepipe.config import (
    PipelineConfig,
    build_config,
    dump_config,
    load_config,
    parse_overrides,
)
from aepipe.errors import ConfigError


def test_defaults_validate_and_describe_the_digits_pipeline():
    cfg = build_config()
    assert cfg == PipelineConfig()
    assert cfg.corpus.source == "digits"
    assert cfg.model.code_size == 10
    assert cfg.model.widths() == [512, 256, 128]


def test_overrides_are_nested_and_values_parsed_as_yaml():
    cfg = build_config(
        overrides=[
            "run_dir=/tmp/somewhere",
            "model.code_size=30",
            "model.n_layers=2",
            "model.nodes_per_layer=[8, 4]",
            "index.metric=cosine",
            "training.lr=0.0005",
            "training.max_time_minutes=1.5",
            "corpus.limit=null",
            "corpus.label_column=",
            "features.image.size=[16, 12]",
            "model.batch_norm=true",
            "training.devices=auto",
        ]
    )
    assert cfg.run_dir == "/tmp/somewhere"
    assert cfg.model.code_size == 30
    assert cfg.model.nodes_per_layer == [8, 4] and cfg.model.widths() == [8, 4]
    assert cfg.index.metric == "cosine"
    assert cfg.training.lr == pytest.approx(0.0005)
    assert cfg.training.max_time_minutes == pytest.approx(1.5)
    assert cfg.corpus.limit is None
    assert cfg.corpus.label_column is None  # empty value -> None
    assert cfg.features.image.size == (16, 12)
    assert cfg.model.batch_norm is True
    assert cfg.training.devices == "auto"
    # untouched keys keep their defaults
    assert cfg.training.batch_size == PipelineConfig().training.batch_size


def test_parse_overrides_builds_a_nested_dict():
    assert parse_overrides(["a.b.c=1", "a.b.d=[x, y]", "e={f: 2}"]) == {
        "a": {"b": {"c": 1, "d": ["x", "y"]}},
        "e": {"f": 2},
    }


def test_later_override_wins():
    assert build_config(overrides=["model.code_size=3", "model.code_size=7"]).model.code_size == 7


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.cod_size=3", "model.cod_size"),
        ("modle.code_size=3", "modle"),
        ("training.epochs=3", "training.epochs"),
    ],
)
def test_unknown_key_is_a_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as exc:
        build_config(overrides=[override])
    msg = str(exc.value)
    assert key in msg
    assert "\n" not in msg


def test_wrong_type_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"model\.code_size") as exc:
        build_config(overrides=["model.code_size=abc"])
    assert "\n" not in str(exc.value)


def test_nodes_per_layer_length_must_match_n_layers():
    with pytest.raises(ConfigError, match="nodes_per_layer has 2 entries but n_layers is 3"):
        build_config(overrides=["model.n_layers=3", "model.nodes_per_layer=[8, 4]"])


def test_nonpositive_widths_are_rejected():
    with pytest.raises(ConfigError, match="positive"):
        build_config(overrides=["model.n_layers=2", "model.nodes_per_layer=[8, 0]"])


def test_integer_nodes_per_layer_repeats_for_every_layer():
    assert build_config(overrides=["model.n_layers=3", "model.nodes_per_layer=16"]).model.widths() == [16, 16, 16]


def test_conv_default_channels_grow():
    cfg = build_config(overrides=["model.architecture=conv", "model.n_layers=3"])
    assert cfg.model.widths() == [32, 64, 128]


def test_split_fractions_must_leave_training_items():
    with pytest.raises(ConfigError, match="val_fraction"):
        build_config(overrides=["training.val_fraction=0.45", "training.test_fraction=0.45"])


@pytest.mark.parametrize("bad", ["model.code_size", "=3", "model.nodes_per_layer=[1,"])
def test_malformed_overrides_raise_config_error(bad):
    with pytest.raises(ConfigError) as exc:
        build_config(overrides=[bad])
    assert "\n" not in str(exc.value)


def test_load_config_from_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(tmp_path / "run"),
                "model": {"code_size": 12, "n_layers": 2, "nodes_per_layer": [32, 16]},
                "index": {"metric": "cosine"},
            }
        )
    )
    cfg = load_config(path, ["model.code_size=5"])
    assert cfg.run_dir == str(tmp_path / "run")
    assert cfg.model.code_size == 5  # override beats the file
    assert cfg.model.widths() == [32, 16]
    assert cfg.index.metric == "cosine"


def test_dumped_config_loads_back_identical(tmp_path):
    cfg = build_config(overrides=["model.code_size=7", "features.image.size=[9, 11]", "index.factory=HNSW16"])
    path = tmp_path / "dump.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(notmap)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  widths: 3\n")
    with pytest.raises(ConfigError, match=r"model\.widths"):
        load_config(unknown)


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == PipelineConfig()


def test_empty_run_dir_is_rejected():
    with pytest.raises(ConfigError, match="run_dir"):
        build_config(overrides=["run_dir=' '"])


def test_config_objects_validate_assignment():
    cfg = build_config()
    with pytest.raises(ValidationError):
        cfg.model.code_size = 0


def test_example_yaml_lists_every_key_with_its_default():
    example = yaml.safe_load((Path(__file__).resolve().parents[1] / "data" / "example.yaml").read_text())
    assert example == PipelineConfig().model_dump(mode="json")  # regenerate it with dump_config when a key changes


def test_keys_that_moved_into_sections_are_still_read(caplog):
    cfg = build_config(
        {"corpus": {"max_pixels": 1234, "text_column": "body"}, "features": {"image_size": [5, 6], "channels": 1}}
    )
    assert cfg.corpus.images.max_pixels == 1234 and cfg.corpus.documents.text_column == "body"
    assert cfg.features.image.size == (5, 6) and cfg.features.image.channels == 1
    assert "corpus.max_pixels is now corpus.images.max_pixels" in caplog.text


def test_presets_are_named_readable_and_optional():
    from aepipe.config import load_preset

    docs = load_preset("documents")
    assert docs["model"]["loss"] == "softmax" and docs["index"]["metric"] == "cosine"
    assert build_config(overrides=["corpus.kind=documents"]).model.loss == "softmax"  # preset auto
    plain = build_config(overrides=["corpus.kind=documents", "preset=none"])
    assert plain.model.loss == PipelineConfig().model.loss and plain.index.metric == "l2"
    with pytest.raises(ConfigError, match="preset"):
        build_config(overrides=["preset=nonsense"])


def test_config_show_prints_a_preset_and_the_resolved_config(capsys):
    from aepipe.cli import main

    assert main(["config", "show", "--preset", "documents"]) == 0
    assert "loss: softmax" in capsys.readouterr().out
    assert main(["config", "show", "--set", "model.code_size=7"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["code_size"] == 7


def test_off_on_yes_no_are_words_for_choices_and_still_booleans_for_switches(tmp_path):
    """YAML 1.1 reads off / on / yes / no as booleans: `encode.autocast=off` arrived as False and
    was refused as not one of its choices (found by the GPU check's rehearsal on the CPU)."""
    cfg = build_config(overrides=["encode.autocast=off", "model.batch_norm=no", "model.variational=on"])
    assert cfg.encode.autocast == "off" and cfg.model.batch_norm is False and cfg.model.variational is True
    path = tmp_path / "c.yaml"
    path.write_text("encode:\n  autocast: off\nmodel:\n  batch_norm: yes\n")
    cfg = load_config(path)
    assert cfg.encode.autocast == "off" and cfg.model.batch_norm is True
    assert build_config(overrides=["model.batch_norm=false"]).model.batch_norm is False
