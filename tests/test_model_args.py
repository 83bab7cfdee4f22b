"""moejet.model_args: the model keyword-argument checks run on user input before any model is built."""

import pytest
import timm

from moejet.errors import UserError
from moejet.model_args import check_model_kwargs

SWIN = dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2), img_size=32, patch_size=4, window_size=4, num_classes=3)


def test_per_stage_num_heads_pass_where_the_model_has_stages():
    check_model_kwargs(SWIN)  # one head count per stage, as hierarchical timm models take them
    model = timm.create_model("swin_tiny_patch4_window7_224", **SWIN)
    assert [layer.blocks[0].attn.num_heads for layer in model.layers] == [1, 2]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(SWIN, num_heads=(1, 0)), "num_heads = (1, 0) is invalid: must be an integer >= 1 (or one per stage)"),
    (dict(SWIN, num_heads=()), "num_heads = () is invalid: must be an integer >= 1 (or one per stage)"),
    (dict(embed_dim=16, num_heads=3), "num_heads = 3 is invalid: it must divide embed_dim = 16"),
])
def test_impossible_head_counts_are_one_line(kwargs, message):
    with pytest.raises(UserError) as err:
        check_model_kwargs(kwargs)
    assert str(err.value) == message
