"""Look inside a Vision Transformer: the paper's section 4.5 analyses, as numbers and pictures.

- :mod:`vitkit.explain.analysis`: pure tensor functions (attention maps, rollout, mean attention
  distance, position-embedding similarity, patch-filter PCA), no plotting, reusable anywhere.
- :mod:`vitkit.explain.figures`: matplotlib figures of those numbers.
- :mod:`vitkit.explain.report`: both, written to a folder as PNG + JSON (``vitkit explain``).
"""

from .analysis import (
    Explanation,
    PatchFilters,
    attention_maps,
    default_query,
    explain_batch,
    grid_for,
    mean_attention_distance,
    model_patch_filters,
    model_posemb,
    patch_distances,
    patch_filters_pca,
    posemb_similarity,
    rollout,
    rollout_map,
    uniform_attention_distance,
    upsample_map,
)
from .figures import (
    plot_attention_maps,
    plot_mean_attention_distance,
    plot_patch_filters,
    plot_posemb_similarity,
    plot_rollout,
    save_figure,
)
from .report import write_report

__all__ = [
    "Explanation",
    "PatchFilters",
    "attention_maps",
    "default_query",
    "explain_batch",
    "grid_for",
    "mean_attention_distance",
    "model_patch_filters",
    "model_posemb",
    "patch_distances",
    "patch_filters_pca",
    "plot_attention_maps",
    "plot_mean_attention_distance",
    "plot_patch_filters",
    "plot_posemb_similarity",
    "plot_rollout",
    "posemb_similarity",
    "rollout",
    "rollout_map",
    "save_figure",
    "uniform_attention_distance",
    "upsample_map",
    "write_report",
]
