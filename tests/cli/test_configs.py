"""``moejet configs``: the packaged configs by name, filtered; ``moejet train --config NAME`` runs one."""

from moejet.cli import main
from moejet.configs import config_names


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


def test_train_print_config_by_name(capsys):
    assert main(["train", "--config", "table1_vit_t_jetpack_flowers", "--print-config"]) == 0
    assert "name: table1_vit_t_jetpack_flowers\n" in capsys.readouterr().out
