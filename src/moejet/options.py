"""The values of moejet's enumerated options, and the defaults its help texts print.

The library checks its arguments against these and the CLI offers them as ``choices``; they live here, with no
torch import, so that ``moejet --help`` and every subcommand's ``--help`` start in milliseconds.
"""

# recycling (moejet.recycle; `moejet recycle` flags, a config's `recycle:` keys)
RECYCLE_STRATEGIES = ("importance", "graph", "uniform", "random", "upcycle")
IMPORTANCE_METRICS = ("mean_abs", "l2")
EXPERT_CHANNELS = ("shared", "per_expert")
UNIFORM_RULES = ("shared", "linspace")
UNIV_MODES = ("draw", "subselect")
QUERY_NORMS = ("inherit", "fresh")
FINAL_NORMS = ("copy", "fresh")
SWITCH_CHOICES = {"importance_metric": IMPORTANCE_METRICS, "expert_channels": EXPERT_CHANNELS,
                  "uniform_rule": UNIFORM_RULES, "query_norm": QUERY_NORMS, "univ_mode": UNIV_MODES,
                  "final_norm": FINAL_NORMS}
MIXED_MODES = ("none", "core_upcycled", "univ_upcycled")  # --mixed: which bank is upcycled from the dense checkpoint
ROUTER_INITS = ("fresh", "kmeans")  # --router-init: the successor's fresh slot queries, or k-means centroids
ALIGN_MODES = ("none", "affine")
ALIGN_RIDGE = 1e-3  # --align-ridge default: ridge * n * I added to the n-token covariance

# export (moejet.io.export; `moejet export --format`): format -> file suffix
EXPORT_FORMATS = {"export": ".pt2", "onnx": ".onnx", "torchscript": ".ts"}
