"""``moejet configs``: the packaged configs by name, filtered; ``moejet train --config NAME`` runs one."""

import yaml

from moejet.cli import main
from moejet.configs import config_names, resolve_config
from moejet.train.config import config_to_dict, load_config


def test_configs_lists_names_filters_and_describes(capsys):
    assert main(["configs"]) == 0
    assert capsys.readouterr().out.split() == config_names()
    assert main(["configs", "table3_*"]) == 0
    assert capsys.readouterr().out.split() == [f"table3_{s}_in1k" for s in ("graph", "importance", "random",
                                                                             "uniform", "upcycle")]
    assert main(["configs", "table1_vit_t_jetpack_flowers", "--describe"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("table1_vit_t_jetpack_flowers  ") and "Paper top-1: 95.4" in out
    assert main(["configs", "nothing_*"]) == 2
    assert capsys.readouterr().err == ("moejet configs: error: no packaged config matches 'nothing_*': run moejet "
                                       "configs to list them all\n")


def test_train_print_config_by_name_prints_every_key_resolved(capsys):
    """The file holds only what differs from the defaults; --print-config shows the whole config, lr resolved."""
    assert main(["train", "--config", "table1_vit_t_jetpack_flowers", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    config = load_config("table1_vit_t_jetpack_flowers")
    assert printed == config_to_dict(config) and printed["name"] == "table1_vit_t_jetpack_flowers"
    assert printed["optim"]["lr"] == config.lr and printed["train"]["log_every"] == 50  # a default the file omits
    assert "log_every" not in resolve_config("table1_vit_t_jetpack_flowers").read_text()
