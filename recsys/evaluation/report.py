"""The evaluation report: one Markdown page with the tables and PNG plots (matplotlib).

Plots: Recall@K for K = 1..100 on the held-out users, popularity of the recommended
movies against the catalog, and a 2-D PCA projection of the movie embeddings coloured by
genre.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_recall_curves(curves: dict[str, list[float]], path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, values in curves.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=name)
    ax.set(xlabel="K", ylabel="Recall@K (truncated)", title="Held-out users: Recall@K",
           xlim=(1, max(len(v) for v in curves.values())), ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_popularity(recommended: dict[str, np.ndarray], counts: np.ndarray, path: str) -> None:
    """Share of recommendations by movie popularity percentile (0 = most popular)."""
    plt = _plt()
    order = np.argsort(-counts, kind="stable")
    percentile = np.empty(counts.size, np.float64)
    percentile[order] = np.arange(counts.size) / max(counts.size - 1, 1) * 100
    bins = np.linspace(0, 100, 21)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(bins[1:], np.full(bins.size - 1, 1 / (bins.size - 1)), "k--", label="catalog")
    ratings_share = np.histogram(percentile, bins=bins, weights=counts)[0] / max(counts.sum(), 1)
    ax.plot(bins[1:], ratings_share, "k:", label="ratings in the fit data")
    for name, cols in recommended.items():
        share = np.histogram(percentile[cols.ravel()], bins=bins)[0] / max(cols.size, 1)
        ax.plot(bins[1:], share, marker="o", ms=3, label=name)
    ax.set(xlabel="movie popularity percentile (0 = most rated)", yscale="log",
           ylabel="share of top-100 recommendations",
           title="Popularity of recommended movies vs the catalog")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_embeddings(embeddings: np.ndarray, genres: list[str], known: np.ndarray,
                    path: str, *, top_genres: int = 8) -> None:
    """2-D PCA of the movie embeddings, coloured by each movie's first genre."""
    plt = _plt()
    x = embeddings[known]
    g = np.array(genres, dtype=object)[known]
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    names, counts = np.unique(g, return_counts=True)
    keep = list(names[np.argsort(-counts)][:top_genres])
    fig, ax = plt.subplots(figsize=(6.5, 5))
    other = ~np.isin(g, keep)
    ax.scatter(xy[other, 0], xy[other, 1], s=3, c="lightgrey", label="other")
    for name in keep:
        m = g == name
        ax.scatter(xy[m, 0], xy[m, 1], s=3, label=name)
    ax.set(xlabel="PC 1", ylabel="PC 2", title="Movie embeddings (PCA), by first genre")
    ax.legend(markerscale=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if np.isnan(v) else f"{v:.4f}"
    return str(v)


def markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    """The report page: per protocol a table of models x metrics, then the plots."""
    lines = [f"# Offline evaluation — run {results['run_id']}", "",
             f"Model: train run `{results['model_version']}`; data: preprocess run "
             f"`{results['preprocess_run']}`; {results['movies']:,} movies.", ""]
    if results.get("als_tuning"):
        lines += ["ALS settings, picked by Recall@20 on the validation users: "
                  + ", ".join(f"{k}={v}" for k, v in results["als_tuning"]["best"].items())
                  + ".", ""]
    for note in results.get("not_run", []):
        lines += [f"Not run: {note}", ""]
    for proto in results["protocols"]:
        lines += [f"## {proto['name']}", "", proto["description"] + ".", ""]
        metrics = list(next(iter(proto["models"].values())).keys())
        lines.append("| model | " + " | ".join(metrics) + " |")
        lines.append("|---|" + "---|" * len(metrics))
        for model, values in proto["models"].items():
            lines.append(f"| {model} | " + " | ".join(_fmt(values[m]) for m in metrics) + " |")
        lines.append("")
        if proto.get("comparisons"):
            first = proto["comparisons"][0]["model"]
            lines += [f"{first} minus each baseline, on the same {proto['query_users']:,} "
                      "users, with a 95% paired bootstrap interval (users resampled): an "
                      "interval that contains 0 is a difference these users cannot tell "
                      "from luck.", "",
                      "| metric | baseline | difference | 95% interval |", "|---|---|---|---|"]
            for c in proto["comparisons"]:
                lines.append(f"| {c['metric']} | {c['baseline']} | {c['difference']:+.4f} | "
                             f"[{c['low']:+.4f}, {c['high']:+.4f}] |")
            lines.append("")
    lines += ["Coverage: share of the catalog in anyone's top 100. Popular share: share of "
              "top-100 recommendations among the 1% most rated movies.", ""]
    for title, path in plots.items():
        lines += [f"## {title}", "", f"![{title}]({os.path.basename(path)})", ""]
    return "\n".join(lines)
