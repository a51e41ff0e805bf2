"""Config: YAML round trip, overrides, validation messages."""

import pytest

from icone.config import build_config, load_yaml, parse_overrides, save_config
from icone.errors import UserError


def test_overrides_are_typed_and_nested():
    config = build_config(None, ["train.epochs=3", "optim.lr=1e-3", "views.flip=false", "data.resize=32,32"])
    assert config.train.epochs == 3 and config.optim.lr == 1e-3 and config.views.flip is False
    assert config.data.resize == [32, 32]


def test_method_prefix_is_a_short_form_of_method_options():
    assert parse_overrides(["icone.alignment=infonce"], "icone") == {"method_options": {"alignment": "infonce"}}
    config = build_config(None, ["method=icone", "icone.w_div=2"])
    assert config.method_options == {"w_div": 2}


def test_yaml_round_trip(tmp_path):
    config = build_config(None, ["train.seed=7", "icone.diversity=frame"])
    save_config(config, tmp_path / "c.yaml")
    again = build_config(load_yaml(tmp_path / "c.yaml"))
    assert again == config


@pytest.mark.parametrize(
    "item,pattern",
    [
        ("train.nope=1", "unknown option 'train.nope'"),
        ("train.epochs=0", "at least 1"),
        ("train.epochs=1.5", "whole number"),
        ("data.normalize=magic", "percentile, minmax, zscore, none"),
        ("model.norm=weird", "batch, group, instance, layer"),
        ("novalue", "key.sub=value"),
        ("train=3", "is a section"),
        ("data.imbalance_ratio=0.5", "at least 1"),
    ],
)
def test_bad_overrides_say_what_to_do(item, pattern):
    with pytest.raises(UserError, match=pattern):
        build_config(None, [item])


def test_missing_or_broken_yaml(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_yaml(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")


def test_default_lr_follows_the_batch_size_by_the_sqrt_rule():
    from helpers import tiny_dataset
    from icone.build import resolve_config
    from icone.methods import get_method

    default = get_method("icone").default_lr
    for batch, expected in ((1, default / 8), (16, default / 2), (64, default)):
        config = resolve_config(build_config(None, [f"train.batch_size={batch}"]), tiny_dataset(2, n=64))
        assert config.optim.lr == pytest.approx(expected)
    explicit = resolve_config(build_config(None, ["train.batch_size=1", "optim.lr=0.01"]), tiny_dataset(2, n=64))
    assert explicit.optim.lr == 0.01
    unscaled = resolve_config(
        build_config(None, ["train.batch_size=1", "optim.lr_scaling=none"]), tiny_dataset(2, n=64)
    )
    assert unscaled.optim.lr == default
