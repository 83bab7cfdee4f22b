"""The fixtures of the training tests."""

import pytest

from ..helpers.nan_loss_at_step import install_nan_loss


@pytest.fixture
def nan_loss_at_step(monkeypatch):
    """``nan_loss_at_step(k)``: from now on in this test, training's loss is NaN at optimizer step k (1-based,
    counted from the start of each ``train`` call). ``monkeypatch.undo()`` removes the fault."""
    return lambda k: install_nan_loss(k, monkeypatch.setattr)
