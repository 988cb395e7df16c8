"""Few-shot linear evaluation: regularised least squares onto {-1, 1}^K in closed form.

Follows big_vision's `evaluators/fewshot_lsr.py` (the ViT authors' evaluator): features
standardised with the training shots' statistics (std + 1e-5), a constant bias feature of
100 (large, so the bias is almost unregularised), targets 2·onehot − 1, and the normal
equations solved through an eigendecomposition of XᵀX or XXᵀ, whichever is smaller.
"""

from __future__ import annotations

import torch

BIAS_FEATURE = 100.0
DEFAULT_L2 = 2.0**10


def linear_fewshot(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, l2_reg: float = DEFAULT_L2) -> torch.Tensor:
    """Predicted labels for `test_x`.

    train_x: (N, D) features of the k-shot images; train_y: (N,) int labels in [0, K);
    test_x: (M, D). Solved in float64 on the features' device.
    """
    x = train_x.double()
    x_test = test_x.to(x.device).double()
    mean = x.mean(0, keepdim=True)
    std = x.std(0, unbiased=False, keepdim=True) + 1e-5
    x, x_test = (x - mean) / std, (x_test - mean) / std
    x = torch.nn.functional.pad(x, (0, 1), value=BIAS_FEATURE)  # (N, D+1)
    x_test = torch.nn.functional.pad(x_test, (0, 1), value=BIAS_FEATURE)
    num_classes = int(train_y.max()) + 1
    y = 2.0 * torch.nn.functional.one_hot(train_y.to(x.device).long(), num_classes).double() - 1.0  # (N, K)
    n, d = x.shape
    if n >= d:  # (XᵀX + λI)⁻¹ Xᵀy
        eigs, q = torch.linalg.eigh(x.T @ x)
        w = (q / (eigs + l2_reg)) @ q.T @ (x.T @ y)
    else:  # Xᵀ (XXᵀ + λI)⁻¹ y: cheaper when there are fewer shots than features
        eigs, q = torch.linalg.eigh(x @ x.T)
        w = x.T @ ((q / (eigs + l2_reg)) @ q.T @ y)
    return (x_test @ w).argmax(1)
