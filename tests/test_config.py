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


def test_string_and_path_values_are_taken_verbatim():
    """Issue 19: ' #' in a value was cut as a YAML comment (model.init='runs/exp #2' loaded runs/exp)."""
    items = ["model.init=runs/exp #2", "data.labels=zarr:seg #1.zarr#labels", "data.source=yes", "data.series=1.2e3"]
    config = build_config(None, items)
    assert config.model.init == "runs/exp #2" and config.data.labels == "zarr:seg #1.zarr#labels"
    assert config.data.source == "yes" and config.data.series == "1.2e3"  # not True, not 1200.0
    assert parse_overrides(["model.init=runs/exp #2"]) == {"model": {"init": "runs/exp #2"}}
    assert build_config(None, ["model.init=null"]).model.init is None  # an optional path can still be unset


def test_typed_values_are_parsed_and_a_comment_is_not_dropped_silently():
    config = build_config(None, ["train.epochs=3", "data.patch=16,16", "views.flip=off", "method_options={a: 1}"])
    assert (config.train.epochs, config.data.patch, config.views.flip, config.method_options) == (
        3,
        [16, 16],
        False,
        {"a": 1},
    )
    with pytest.raises(UserError, match="train.epochs must be a whole number, got '3 #three'"):
        build_config(None, ["train.epochs=3 #three"])
    with pytest.raises(UserError, match="data.patch must be a whole number, got '32 #x'"):
        build_config(None, ["data.patch=16,32 #x"])
    assert build_config(None, ["method=icone", "icone.projector=my head #2"]).method_options == {
        "projector": "my head #2"
    }


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("train:\n  epochs: 3  # r\xe9glage\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"config file '.*latin1\.yaml' is not UTF-8 text \(byte 0xe9 at position 23\)"):
        load_yaml(tmp_path / "latin1.yaml")
