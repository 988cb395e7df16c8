"""Few-shot linear evaluation: regularised least squares onto {-1, 1}^K in closed form.

Follows big_vision's `evaluators/fewshot_lsr.py` (the ViT authors' evaluator): features
standardised with the training shots' statistics (std + 1e-5), a constant bias feature of
100 (large, so the bias is almost unregularised), targets 2·onehot − 1, and the normal
equations solved through an eigendecomposition of XᵀX or XXᵀ, whichever is smaller. One
decomposition serves every regulariser, so picking l2 on held-out data costs a matmul each.
Everything runs in float64 on the features' device (the GPU when there is one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BIAS_FEATURE = 100.0
DEFAULT_L2 = 2.0**10


class LinearFewshot:
    """The least-squares solver fitted to k-shot features, ready for any l2 regulariser.

    train_x: (N, D) features; train_y: (N,) int labels in [0, K), K = max label + 1.
    """

    def __init__(self, train_x: torch.Tensor, train_y: torch.Tensor):
        x = train_x.double()
        self.mean = x.mean(0, keepdim=True)
        self.std = x.std(0, unbiased=False, keepdim=True) + 1e-5
        x = self._design(train_x)  # (N, D+1)
        num_classes = int(train_y.max()) + 1
        y = 2.0 * F.one_hot(train_y.to(x.device).long(), num_classes).double() - 1.0  # (N, K)
        self.x = x
        # Gram of the smaller side: XᵀX (D+1 square) when N ≥ D+1, else XXᵀ (N square).
        self.primal = x.shape[0] >= x.shape[1]
        self.eigs, self.q = torch.linalg.eigh(x.T @ x if self.primal else x @ x.T)
        self.projected = self.q.T @ (x.T @ y if self.primal else y)  # Qᵀ·(Xᵀy or y)

    def _design(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.to(self.mean.device).double() - self.mean) / self.std
        return F.pad(x, (0, 1), value=BIAS_FEATURE)

    def weights(self, l2_reg: float) -> torch.Tensor:
        """(D+1, K): (XᵀX + λI)⁻¹Xᵀy, or Xᵀ(XXᵀ + λI)⁻¹y (equal; the cheaper one)."""
        solved = self.q @ (self.projected / (self.eigs + l2_reg)[:, None])
        return solved if self.primal else self.x.T @ solved

    def scores(self, test_x: torch.Tensor, l2_reg: float = DEFAULT_L2) -> torch.Tensor:
        """(M, D) features -> (M, K) regression outputs (the decision function)."""
        return self._design(test_x) @ self.weights(l2_reg)

    def predict(self, test_x: torch.Tensor, l2_reg: float = DEFAULT_L2) -> torch.Tensor:
        """(M, D) features -> (M,) predicted labels."""
        return self.scores(test_x, l2_reg).argmax(1)


def linear_fewshot(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, l2_reg: float = DEFAULT_L2) -> torch.Tensor:
    """Predicted labels for `test_x` (M, D) from the shots `train_x` (N, D), `train_y` (N,)."""
    return LinearFewshot(train_x, train_y).predict(test_x, l2_reg)
