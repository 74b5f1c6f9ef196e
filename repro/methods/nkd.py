"""Chapter 34 (NKD / USKD): the non-target mass mismatch NKD removes, and USKD's soft labels."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..losses import distillation as D
from ..plots.style import annotate_setting, jsonable, new_figure
from ..train import predict


@torch.no_grad()
def non_target_mass(model: torch.nn.Module, test) -> np.ndarray:
    """1 − p_y per test image: the probability a model puts on the wrong classes."""
    logits, y = predict(model, test)
    return (1 - F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)).numpy()


def plot_non_target(masses: dict[str, np.ndarray], setting: str):
    """Histograms of 1 − p_y for the teacher and the students."""
    fig, ax = new_figure(width=5.4)
    bins = np.linspace(0, 1, 26)
    for i, (label, m) in enumerate(masses.items()):
        ax.hist(m, bins=bins, histtype="step", linewidth=1.6, color=f"C{i}",
                label=f"{label} (mean {np.mean(m):.2f})")
    ax.set_xlabel("non-target probability 1 − p_y on a test image")
    ax.set_ylabel("test images")
    ax.set_title("How much probability lands outside the true class")
    ax.legend(fontsize=8)
    annotate_setting(fig, setting)
    return fig, jsonable({k: {"mean": float(np.mean(v)), "hist": np.histogram(v, bins)[0]} for k, v in masses.items()}
                         | {"bins": bins, "setting": setting})


@torch.no_grad()
def soft_label_examples(teacher: torch.nn.Module, uskd_model, test, n: int = 3) -> list[dict[str, Any]]:
    """For the first ``n`` test images: the teacher's normalised non-target distribution and the
    Zipf non-target labels USKD makes for itself (from its weak head and final head)."""
    x, y = next(iter(test))
    x, y = x[:n], y[:n]
    teacher.eval()
    uskd_model.eval()
    t = teacher(x).float()
    s, w = uskd_model.forward_both(x)
    log_s = F.log_softmax(s.float(), 1)
    p_w = F.softmax(w.float(), 1)
    score = p_w / (1 - p_w.gather(1, y[:, None]) + 1e-6) + log_s / (1 - log_s.gather(1, y[:, None]) + 1e-6)
    z = D.zipf_labels(score, y)
    t_nt = D._non_target_log_softmax(t, y, 1.0).exp()
    return [{"label": int(y[i]), "teacher": t_nt[i].tolist(), "zipf": z[i].tolist()} for i in range(n)]


def plot_soft_labels(examples: list[dict[str, Any]], class_names: list[str], setting: str):
    """Teacher's non-target distribution vs USKD's Zipf labels, classes sorted by the teacher."""
    fig, axes = new_figure(ncols=len(examples), width=3.6 * len(examples), height=3.2, squeeze=False)
    for ax, ex in zip(axes[0], examples):
        t, z = np.asarray(ex["teacher"]), np.asarray(ex["zipf"])
        order = [c for c in np.argsort(-t) if c != ex["label"]]
        k = np.arange(len(order))
        ax.bar(k - 0.2, t[order], width=0.4, color="C0", label="teacher (non-target, normalised)")
        ax.bar(k + 0.2, z[order], width=0.4, color="C1", label="USKD Zipf labels")
        ax.set_xticks(k, [class_names[c][:8] for c in order], rotation=90, fontsize=6)
        ax.set_title(f"true class: {class_names[ex['label']]}", fontsize=9)
    axes[0][0].set_ylabel("probability over the other classes")
    axes[0][0].legend(fontsize=7)
    annotate_setting(fig, setting)
    return fig, jsonable({"examples": examples, "setting": setting})
