"""The file names of a run directory (``moejet train``) and of a recycle output (``moejet recycle --out``).

train/ and recycle/ write these files; io/ (``moejet publish``), predict, analysis and the demo read them. The names
live here, in the lowest layer, so that a reader of a directory imports nothing of its writer.

    RUN/config.yaml          the resolved config (moejet.train.run)
    RUN/metrics.jsonl        one JSON row per epoch
    RUN/last.safetensors     the committed epoch's weights
    RUN/best.safetensors     the weights of the epoch with the best val_top1
    RUN/checkpoint.json      the committed checkpoint: its files under RUN/checkpoints/ (moejet.train.checkpointing)
    RUN/classes.json         the dataset's name and class names (moejet.io.labels)
    RUN/eval.json            moejet eval --run's result
    RUN/tb/                  TensorBoard logs (train.tensorboard)
    RUN/recycle/             model.init: recycle's recycle output, as below (moejet.train.recycling_step)

    OUT/model.safetensors    the recycled successor (moejet.recycle.output)
    OUT/recycle.json         the recycling report
"""

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
LAST = "last.safetensors"
BEST = "best.safetensors"
POINTER = "checkpoint.json"
CKPT_DIR = "checkpoints"
LABELS_FILE = "classes.json"
EVAL_FILE = "eval.json"
TENSORBOARD_DIR = "tb"
RECYCLE_DIR = "recycle"

MODEL_FILE = "model.safetensors"
REPORT_FILE = "recycle.json"
