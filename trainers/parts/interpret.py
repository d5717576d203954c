"""Reading learned prompts: nearest vocabulary words, SoftCPT's generated contexts, task similarity.

* ``nearest_words``: for every context vector, the K token embeddings closest
  to it by Euclidean distance (CoOp's ``interpret_prompt.py`` convention), with
  each token id decoded by open_clip's tokenizer.
* ``save_generated`` / ``load_generated``: the contexts SoftCPT's meta network
  generates for each task, with the task names and scores, in one small file
  of the run (``generated_contexts.pt``, written atomically).
* ``task_similarity``, ``cluster_order``, ``write_similarity``: the cosine
  similarity of the tasks' generated contexts, tasks ordered by a hierarchical
  clustering, as CSV and a PNG heatmap (docs/prompts.md#which-tasks-share-what).
"""
from __future__ import annotations

import csv
import io
import itertools
import logging
import os.path as osp
from typing import Optional, Sequence

import numpy as np
import torch

from trainers.run.atomic import atomic_torch_save, atomic_write

logger = logging.getLogger(__name__)

GENERATED_FILE = "generated_contexts.pt"
SIMILARITY_STEM = "task_similarity"  # .csv and .png
GENERATED_VERSION = 1


# ------------------------------------------------------------------ nearest words
_TOKENIZER = None


def decode_token(token_id: int) -> str:
    """The word (BPE token) of one id; ``<id N>`` for an id outside the tokenizer's vocabulary."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from open_clip.tokenizer import SimpleTokenizer
        _TOKENIZER = SimpleTokenizer()
    if token_id not in _TOKENIZER.decoder:  # a model whose embedding has more rows than the BPE
        return f"<id {token_id}>"
    word = _TOKENIZER.decode([token_id]).strip()
    if not word or "\ufffd" in word:  # a piece of a multi-byte character: show the BPE symbol
        word = _TOKENIZER.decoder[token_id].replace("</w>", "")
    return word


def nearest_words(vectors: torch.Tensor, embedding: torch.Tensor,
                  k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and token ids ``(N, k')`` of the ``k`` nearest rows of ``embedding`` ``(V, W)``
    to each of ``vectors`` ``(N, W)``, nearest first (``k' = min(k, V)``)."""
    if vectors.shape[-1] != embedding.shape[-1]:
        raise ValueError(f"context vectors have width {vectors.shape[-1]}, the token embedding "
                         f"{embedding.shape[-1]}: give the run's backbone (--backbone)")
    dist = torch.cdist(vectors.float()[None], embedding.float()[None])[0]  # (N, V)
    values, ids = dist.topk(min(k, embedding.shape[0]), dim=1, largest=False)
    return values, ids


def interpret_rows(groups: Sequence[tuple[str, str, torch.Tensor]], embedding: torch.Tensor,
                   k: int) -> list[dict]:
    """One row per (context, position, rank): ``groups`` are (kind, owner, vectors ``(n, W)``)."""
    rows = []
    for kind, owner, vectors in groups:
        dist, ids = nearest_words(vectors, embedding, k)
        for pos in range(len(vectors)):
            for rank in range(ids.shape[1]):
                token = int(ids[pos, rank])
                rows.append({"context": kind, "owner": owner, "position": pos + 1, "rank": rank + 1,
                             "token_id": token, "word": decode_token(token),
                             "distance": float(dist[pos, rank])})
    return rows


def format_rows(rows: Sequence[dict]) -> str:
    """Readable text: a heading per context, one line per vector position, nearest word first."""
    out = []
    for (kind, owner), group in itertools.groupby(rows, key=lambda r: (r["context"], r["owner"])):
        out.append(kind + (f" [{owner}]" if owner else "") + ":")
        for pos, words in itertools.groupby(group, key=lambda r: r["position"]):
            out.append(f"  {pos:>3}: " + ", ".join(f"{r['word']} ({r['distance']:.4f})" for r in words))
    return "\n".join(out) + "\n"


def rows_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["context", "owner", "position", "rank", "token_id", "word", "distance"],
                       lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "distance": f"{r['distance']:.6f}"})
    return buf.getvalue()


# ------------------------------------------------------------------ generated contexts
def save_generated(path: str, contexts: torch.Tensor, keys: Sequence[str], names: Sequence[str],
                   scores: Optional[Sequence[float]], epoch: Optional[int], config: str,
                   classnames: Sequence[Sequence[str]] = (), metrics: Sequence[str] = (),
                   templates: Sequence[str] = ()) -> None:
    """``generated_contexts.pt``: per-task contexts ``(T, N_CTX, W)`` and what they belong to.

    The class-aware variants generate one context per class; ``contexts`` is then
    each task's mean over its classes, and the per-class ones are left out (for
    General-10's 1,191 classes they would take 39 MB): ``scripts/interpret_prompt.py``
    regenerates them from the checkpoint, with ``config`` (the run's
    ``cfg.dump()``), the tasks and their classes saved here.
    """
    state = {"version": GENERATED_VERSION, "contexts": contexts.detach().float().cpu(),
             "task_keys": list(keys), "task_names": list(names),
             "scores": None if scores is None else [float(s) for s in scores],
             "epoch": epoch, "config": config, "classnames": [list(c) for c in classnames],
             "metrics": list(metrics), "templates": list(templates)}
    atomic_torch_save(state, path)


def load_generated(path: str) -> dict:
    """A ``generated_contexts.pt``; a ValueError (one line naming the file) when it is truncated,
    pickles a class it should not (``trainers.run.checkpoint.load_file``) or holds something else."""
    from trainers.run import checkpoint as ckpt_io
    try:
        state = ckpt_io.load_file(path)
    except ckpt_io.UnexpectedClassError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise ValueError(f"cannot read {path} ({type(err).__name__}): the file is truncated or not "
                         "a generated-contexts file") from None
    if not isinstance(state, dict) or "contexts" not in state or "task_names" not in state:
        raise ValueError(f"{path} is not a generated-contexts file of this project")
    return state


# ------------------------------------------------------------------ task similarity
def task_similarity(contexts: torch.Tensor) -> np.ndarray:
    """Cosine similarity ``(T, T)`` of the tasks' contexts ``(T, N_CTX, W)``, each flattened."""
    flat = torch.nn.functional.normalize(contexts.detach().float().flatten(1), dim=1)
    return (flat @ flat.t()).clamp(-1.0, 1.0).cpu().numpy().astype(np.float64)


def cluster_order(sim: np.ndarray) -> list[int]:
    """Task order of an average-linkage clustering on ``1 - cos`` (leaves optimally ordered),
    so that similar tasks sit next to each other."""
    n = len(sim)
    if n < 3:
        return list(range(n))
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform
    dist = np.clip(1.0 - (sim + sim.T) / 2, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    tree = linkage(squareform(dist, checks=False), method="average", optimal_ordering=True)
    return [int(i) for i in leaves_list(tree)]


def task_labels(keys: Sequence[str], names: Sequence[str], scores: Optional[Sequence[float]]) -> list[str]:
    """``colour recognition (colours) 31.2%``: the name fed to the prompt, the key, the score."""
    out = []
    for i, (key, name) in enumerate(zip(keys, names)):
        label = name if key == name else f"{name} ({key})"
        if scores is not None and scores[i] == scores[i]:  # not NaN
            label += f"  {scores[i]:.1f}%"
        out.append(label)
    return out


def write_similarity(stem: str, sim: np.ndarray, keys: Sequence[str], names: Sequence[str],
                     scores: Optional[Sequence[float]], title: str = "") -> list[str]:
    """``<stem>.csv`` and ``<stem>.png`` (when matplotlib imports), tasks in cluster order."""
    order = cluster_order(sim)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task", "key", "name", "score"] + [keys[j] for j in order])
    for i in order:
        score = "" if scores is None else f"{scores[i]:.4f}"
        w.writerow([i, keys[i], names[i], score] + [f"{sim[i, j]:.6f}" for j in order])
    atomic_write(stem + ".csv", buf.getvalue())
    written = [stem + ".csv"]
    try:
        fig = draw_similarity(sim, order, task_labels(keys, names, scores), title)
    except ImportError:
        logger.warning("matplotlib does not import: %s.png not drawn (%s.csv holds the matrix)", stem, stem)
        return written
    import matplotlib.pyplot as plt
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    atomic_write(stem + ".png", png.getvalue())
    return written + [stem + ".png"]


def draw_similarity(sim: np.ndarray, order: Sequence[int], labels: Sequence[str], title: str = ""):
    """The heatmap as a matplotlib Figure; its size grows with the number of tasks and the
    longest label, so that 20 labelled rows stay legible."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [labels[i] for i in order]
    n = len(order)
    cell = 0.42  # inches per task: 20 tasks give an 8.4-inch matrix
    label_w = 0.075 * max(len(s) for s in labels)  # inches for the longest label at 8 pt
    side = max(cell * n, 2.2)
    fig, ax = plt.subplots(figsize=(side + label_w + 1.6, side + label_w * 0.8 + 0.9))
    # the colour scale spans the values present: contexts of one meta network are often all alike
    low = min(float(sim.min()), 0.99)
    img = ax.imshow(sim[np.ix_(order, order)], cmap="viridis", vmin=low, vmax=1.0)
    digits = 3 if low > 0.9 else 2
    ax.set_xticks(range(n), labels, rotation=50, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    if n <= 12:  # values are legible at this size
        for a in range(n):
            for b in range(n):
                v = sim[order[a], order[b]]
                ax.text(b, a, f"{v:.{digits}f}", ha="center", va="center", fontsize=7,
                        color="black" if v > (low + 1.0) / 2 else "white")
    fig.colorbar(img, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    ax.set_title(title or "cosine similarity of the generated contexts", fontsize=9)
    fig.tight_layout()
    return fig


def write_run_analysis(output_dir: str, state: dict) -> list[str]:
    """The similarity CSV and PNG of a run's ``generated_contexts.pt`` state (None below 2 tasks)."""
    if len(state["task_keys"]) < 2:
        return []
    sim = task_similarity(state["contexts"])
    epoch = f", epoch {state['epoch']}" if state.get("epoch") else ""
    return write_similarity(osp.join(output_dir, SIMILARITY_STEM), sim, state["task_keys"],
                            state["task_names"], state.get("scores"),
                            title=f"cosine similarity of the generated contexts{epoch}")
