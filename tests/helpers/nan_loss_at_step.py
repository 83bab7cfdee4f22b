"""The NaN fault: training's loss turns NaN at one optimizer step.

In a test: the ``nan_loss_at_step`` fixture of tests/train/conftest.py. As a program (e.g. under torchrun, each rank)::

    python tests/helpers/nan_loss_at_step.py K train --config ... --out ...

installs the fault at optimizer step K, then runs ``moejet`` with the remaining arguments (``moejet.cli.main``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def install_nan_loss(step: int, setattr_: Callable[[Any, str, Any], None] = setattr) -> None:
    """Make every loss module ``moejet.train.build.build_loss`` returns from now on give NaN during optimizer step
    ``step`` (1-based; each built optimizer counts its own steps, so each ``train`` call counts from 1).

    ``setattr_``: how to patch ``build_loss`` / ``build_optimizer`` (pytest's ``monkeypatch.setattr`` undoes it)."""
    install_loss_fault(step, lambda loss: loss * float("nan"), setattr_)


def install_loss_fault(step: int, fault: Callable[[Any], Any], setattr_: Callable[[Any, str, Any], None] = setattr
                       ) -> None:
    """Pass each loss value of optimizer step ``step``'s micro-batches through ``fault`` (see
    :func:`install_nan_loss`)."""
    import torch

    from moejet.train import build

    steps = {"done": 0}  # optimizer steps completed by the latest optimizer built
    real_loss, real_optimizer = build.build_loss, build.build_optimizer

    def build_optimizer(*args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        optimizer = real_optimizer(*args, **kwargs)
        steps["done"] = 0

        def count(*_: Any) -> None:
            steps["done"] += 1

        optimizer.register_step_post_hook(count)
        return optimizer

    class NanAtStep(torch.nn.Module):
        def __init__(self, loss: torch.nn.Module) -> None:
            super().__init__()
            self.loss = loss

        def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            value = self.loss(*args, **kwargs)
            if steps["done"] + 1 == step:  # a micro-batch of step `step`
                value = fault(value)
            return value

    setattr_(build, "build_optimizer", build_optimizer)
    setattr_(build, "build_loss", lambda *args, **kwargs: NanAtStep(real_loss(*args, **kwargs)))


def main(argv: list[str]) -> int:
    from moejet.cli import main as moejet

    install_nan_loss(int(argv[0]))
    sys.argv = ["moejet", *argv[1:]]
    return moejet()  # the program path: a torchrun worker leaves as moejet itself does


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
