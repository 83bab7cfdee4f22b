"""timm's hosted weights, with an offline path that fails in seconds.

``timm.create_model(name, pretrained=True)`` on a machine without network retries the Hugging Face Hub for about
a minute before it gives up. :func:`create_pretrained` first checks that the Hub answers at all (a TCP connect
to ``$HF_ENDPOINT``, a few seconds at most); when it does not, it loads from the local Hugging Face cache only
(``HF_HUB_OFFLINE`` semantics), and a miss is one line naming the file to download and the option that takes it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import torch.nn as nn

from ..errors import UserError

CONNECT_TIMEOUT_S = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"


class WeightsUnavailable(UserError):
    """timm's hosted weights could not be had. ``reason`` says why and ``url`` is the file to download; ``how``
    (the command's own option for a local file, e.g. ``--predecessor-checkpoint FILE``) completes the message."""

    def __init__(self, reason: str, url: str | None, how: str):
        self.reason, self.url = reason, url
        fetch = f"download {url} on a machine with network and pass it with {how}" if url else \
            f"pass a local weights file with {how}"
        super().__init__(f"{reason}: {fetch}")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether the Hub's host accepts a TCP connection within ``timeout`` seconds (no request is sent)."""
    url = urlparse(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for the calls inside: files come from the local cache, or fail at once."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def weights_url(name: str) -> str | None:
    """Where timm downloads ``name``'s weights from: its Hub file, else its URL; None for a name without weights."""
    import timm

    if name.startswith("hf-hub:"):  # a published model: its Hub repository (config.json, model.safetensors)
        return f"{hub_endpoint()}/{name.removeprefix('hf-hub:')}"
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001  (an unknown tag: timm.create_model reports it)
        return None
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        return f"{hub_endpoint()}/{cfg.hf_hub_id}/resolve/main/{cfg.hf_hub_filename or 'model.safetensors'}"
    return cfg.url or None


def create_pretrained(name: str, how: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=True, **kwargs)``; when the weights cannot be had (no network and not
    cached, or any download error) a :class:`WeightsUnavailable` whose message ends with ``how``, the command's way
    to pass a local file instead, e.g. ``--set model.init=checkpoint --set model.init_checkpoint=FILE``."""
    import timm
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE or not hub_reachable()
    try:
        with hub_offline() if offline else contextlib.nullcontext():
            return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as err:  # noqa: BLE001  (hub / URL errors come in many types)
        if offline:
            reason = (f"timm's pretrained weights for {name} are not in the local cache and the Hugging Face Hub "
                      f"({hub_endpoint()}) is unreachable")
        else:
            detail = " ".join(str(err).split()) or "no detail"
            reason = f"cannot fetch timm's pretrained weights for {name} ({type(err).__name__}: {detail})"
        raise WeightsUnavailable(reason, weights_url(name), how) from None
