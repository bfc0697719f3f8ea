from pathlib import Path

import pytest

from hybrid_ad.config import config_from_dict, load_config
from hybrid_ad.errors import ConfigError

from .conftest import small_config_dict

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_loads_with_rules_from_their_own_file() -> None:
    config = load_config(REPO / "config" / "config.yaml")
    assert config.judge.label_source == "pseudo"
    assert config.autoencoder.latent_dim == 16
    assert [rule.name for rule in config.rules.rules][:2] == [
        "very_high_amount",
        "many_extreme_components",
    ]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"judge": {"nonsense": 1}}, "judge.nonsense: unknown key"),
        ({"autoencoder": {"latent_dim": "many"}}, "autoencoder.latent_dim"),
        ({"judge": {"label_source": "oracle"}}, "judge.label_source"),
        ({"autoencoder": {"hidden_layers": [8, 0]}}, "autoencoder.hidden_layers"),
        ({"data": {"split": {"train": 0.5, "validation": 0.2, "test": 0.2}}}, "must be 1"),
    ],
)
def test_bad_values_name_the_key(overrides: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")) as info:
        config_from_dict(small_config_dict(**overrides), "cfg.yaml")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("cfg.yaml: ")


def test_rule_condition_needs_exactly_one_kind() -> None:
    raw = small_config_dict()
    raw["rules"]["rules"][0]["when"] = {
        "threshold": {"feature": "Amount", "op": ">", "value": 1},
        "hour_of_day": {"start": 0, "end": 1},
    }
    with pytest.raises(ConfigError, match=r"rules\.rules\.0\.when.*exactly one"):
        config_from_dict(raw, "cfg.yaml")


def test_duplicate_rule_names_rejected() -> None:
    raw = small_config_dict()
    raw["rules"]["rules"][1]["name"] = raw["rules"]["rules"][0]["name"]
    with pytest.raises(ConfigError, match="duplicate rule names: very_high_amount"):
        config_from_dict(raw, "cfg.yaml")


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("seed: 1\njudge: [unclosed\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: malformed YAML at line \d+"):
        load_config(path)


def test_error_in_a_section_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text("pseudo_label_threshold: 1\nrules: []\nextra: 1\n")
    (tmp_path / "config.yaml").write_text("rules: rules.yaml\n")
    with pytest.raises(ConfigError, match=r"rules\.yaml: rules: List should have at least 1"):
        load_config(tmp_path / "config.yaml")


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def _config_file(tmp_path: Path) -> Path:
    import yaml

    raw = small_config_dict()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(raw.pop("rules")))
    raw["rules"] = "rules.yaml"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "config.yaml"


def test_set_overrides_are_yaml_values_applied_before_validation(tmp_path: Path) -> None:
    config = load_config(
        _config_file(tmp_path),
        overrides=[
            "judge.max_depth=4",
            "data.features=[V1, Amount]",
            "features.behavioural=null",
            "rules.pseudo_label_threshold=3.5",  # inside a section file
            "evaluation.alerts_per_day=50",
            "judge.max_depth=5",  # the last one wins
        ],
    )
    assert config.judge.max_depth == 5
    assert config.data.features == ["V1", "Amount"]
    assert config.features.behavioural is None
    assert config.rules.pseudo_label_threshold == 3.5
    assert config.evaluation.alerts_per_day == 50


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("judge.learning_rte=0.1", "--set judge.learning_rte=0.1: unknown key"),
        ("judge.max_depth=10**12", "--set judge.max_depth=10**12: Input should be a valid"),
        ("judge.max_depth=1000", "--set judge.max_depth=1000: Input should be less than"),
        ("data.features=[V1, 3]", "--set data.features=[V1, 3]: 1: Input should be a valid str"),
        ("seed.x=1", "--set seed.x=1: 'seed' is not a mapping"),
        ("judge.max_depth", "--set judge.max_depth: expected key.path=value"),
        ("judge..x=1", "--set judge..x=1: expected key.path=value"),
        ("judge.max_depth=[1", "--set judge.max_depth=[1: the value is malformed YAML"),
    ],
)
def test_a_bad_override_is_named(tmp_path: Path, override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_config_file(tmp_path), overrides=[override])
    assert str(info.value).startswith(expected), str(info.value)
    assert "\n" not in str(info.value)
