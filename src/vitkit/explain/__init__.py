"""Look inside a Vision Transformer: the paper's section 4.5 analyses, as numbers and pictures.

- :mod:`vitkit.explain.analysis`: pure tensor functions (attention maps, rollout, mean attention
  distance, position-embedding similarity, patch-filter PCA, token norms and attention sinks), no
  plotting, reusable anywhere.
- :mod:`vitkit.explain.figures`: matplotlib figures of those numbers.
- :mod:`vitkit.explain.report`: both, written to a folder as PNG + JSON (``vitkit explain``).
"""

from .analysis import (
    SINK_RATIO,
    Explanation,
    PatchFilters,
    Sinks,
    attention_maps,
    default_query,
    deletion_insertion,
    explain_batch,
    find_sinks,
    grad_rollout,
    grad_rollout_map,
    grid_for,
    mean_attention_distance,
    model_patch_filters,
    model_posemb,
    patch_distances,
    patch_filters_pca,
    posemb_similarity,
    rollout,
    rollout_map,
    sink_verdict,
    token_norms,
    uniform_attention_distance,
    upsample_map,
)
from .figures import (
    plot_attention_maps,
    plot_class_maps,
    plot_mean_attention_distance,
    plot_patch_filters,
    plot_posemb_similarity,
    plot_rollout,
    plot_sinks,
    save_figure,
)
from .report import write_faithfulness, write_grad_rollout, write_report, write_sinks

__all__ = [
    "SINK_RATIO",
    "Explanation",
    "PatchFilters",
    "Sinks",
    "attention_maps",
    "default_query",
    "explain_batch",
    "deletion_insertion",
    "find_sinks",
    "grad_rollout",
    "grad_rollout_map",
    "grid_for",
    "mean_attention_distance",
    "model_patch_filters",
    "model_posemb",
    "patch_distances",
    "patch_filters_pca",
    "plot_attention_maps",
    "plot_class_maps",
    "plot_mean_attention_distance",
    "plot_patch_filters",
    "plot_posemb_similarity",
    "plot_rollout",
    "plot_sinks",
    "posemb_similarity",
    "rollout",
    "rollout_map",
    "save_figure",
    "sink_verdict",
    "token_norms",
    "uniform_attention_distance",
    "upsample_map",
    "write_faithfulness",
    "write_grad_rollout",
    "write_report",
    "write_sinks",
]
