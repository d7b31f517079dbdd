"""Attention-MIL aggregators over a patient's bag of encoder features.

* :class:`ABMIL`: gated attention pooling (Ilse, Tomczak & Welling 2018, "Attention-based deep multiple
  instance learning", eq. 9): ``a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))``, ``z = sum_k a_k h_k``,
  then a linear classifier on ``z``.
* :class:`CLAMSB`: CLAM's single-branch variant (Lu et al. 2021, Nat. Biomed. Eng.): the same gated attention
  plus an instance-level loss: the ``k_sample`` most-attended patches of a bag are pushed towards "positive
  evidence" and the ``k_sample`` least-attended ones towards "negative evidence" by a small patch classifier
  of the bag's class (CLAM uses a smooth SVM loss; this uses cross-entropy). Training weighs the bag loss by
  ``bag_weight`` and the instance loss by ``1 - bag_weight``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedAttention(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.V = nn.Linear(dim, hidden)
        self.U = nn.Linear(dim, hidden)
        self.w = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(n, dim) -> (n,) attention weights summing to 1."""
        return torch.softmax(self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1), dim=0)


class ABMIL(nn.Module):
    def __init__(self, in_dim: int, hidden: int = 256, attention: int = 128, dropout: float = 0.25):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden, attention)
        self.classifier = nn.Linear(hidden, 1)

    def forward(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(bag)
        a = self.attention(h)
        self._h = h  # for instance_loss
        return self.classifier(a @ h).squeeze(-1), a


class CLAMSB(ABMIL):
    def __init__(self, in_dim: int, hidden: int = 256, attention: int = 128, dropout: float = 0.25,
                 k_sample: int = 8, bag_weight: float = 0.7):
        super().__init__(in_dim, hidden, attention, dropout)
        self.k_sample, self.bag_weight = k_sample, bag_weight
        self.instance = nn.ModuleList([nn.Linear(hidden, 2) for _ in range(2)])  # one patch classifier per class

    def instance_loss(self, bag: torch.Tensor, label: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the bag class's patch classifier: top-k attended -> 1, bottom-k -> 0."""
        k = min(self.k_sample, len(attention) // 2)
        if k < 1:
            return attention.new_zeros(())
        order = torch.argsort(attention, descending=True)
        idx = torch.cat([order[:k], order[-k:]])
        target = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(bag.device)
        logits = self.instance[int(label)](self._h[idx])
        return (1 - self.bag_weight) / self.bag_weight * F.cross_entropy(logits, target)


def build_abmil(in_dim: int, hidden: int = 256, attention: int = 128, dropout: float = 0.25) -> nn.Module:
    return ABMIL(in_dim, hidden, attention, dropout)


def build_clam_sb(in_dim: int, hidden: int = 256, attention: int = 128, dropout: float = 0.25, k_sample: int = 8,
                  bag_weight: float = 0.7) -> nn.Module:
    return CLAMSB(in_dim, hidden, attention, dropout, k_sample, bag_weight)
