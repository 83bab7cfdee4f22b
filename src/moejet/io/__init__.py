"""Model files: safetensors weights with their timm architecture (:mod:`.weights`), atomic writes (:mod:`.files`),
and what is done with a finished model: publishing to the Hub (:mod:`.hub`), export (:mod:`.export`) and
conversion of the authors' released checkpoints (:mod:`.convert`).

Only the file layer is imported here; ``moejet.io.hub`` / ``.export`` / ``.convert`` are imported by name.
"""

from .files import atomic_output, plain_json, write_json, write_text
from .weights import build_from_checkpoint, load_into, load_state_dict, read_metadata, save_model

__all__ = ["atomic_output", "build_from_checkpoint", "load_into", "load_state_dict", "plain_json", "read_metadata",
           "save_model", "write_json", "write_text"]
