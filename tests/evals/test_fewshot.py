"""Few-shot linear evaluation against independent closed forms."""

from __future__ import annotations

import pytest
import torch

from vitrun.evals.fewshot import BIAS_FEATURE, LinearFewshot, linear_fewshot


def _problem(n_per_class=5, classes=4, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * 2
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=gen)
    y_test = torch.arange(classes).repeat_interleave(50)
    x_test = centres[y_test] + torch.randn(len(y_test), dim, generator=gen)
    return x, y, x_test, y_test


def _direct(x, y, x_test, l2):
    """Textbook ridge: solve (XᵀX + λI) w = Xᵀ(2·onehot − 1) with the standardised, bias-padded features."""
    mean, std = x.mean(0), x.std(0, unbiased=False) + 1e-5
    pad = lambda a: torch.cat([((a - mean) / std).double(), torch.full((len(a), 1), BIAS_FEATURE, dtype=torch.float64)], 1)
    a, a_test = pad(x), pad(x_test)
    targets = 2.0 * torch.nn.functional.one_hot(y).double() - 1.0
    w = torch.linalg.solve(a.T @ a + l2 * torch.eye(a.shape[1], dtype=torch.float64), a.T @ targets)
    return (a_test @ w).argmax(1)


@pytest.mark.parametrize("n_per_class,dim", [(5, 16), (2, 64)])  # N ≥ D and N < D take different branches
@pytest.mark.parametrize("l2", [1.0, 1024.0])
def test_matches_direct_solve(n_per_class, dim, l2):
    x, y, x_test, _ = _problem(n_per_class=n_per_class, dim=dim)
    assert torch.equal(linear_fewshot(x, y, x_test, l2), _direct(x, y, x_test, l2))


@pytest.mark.parametrize("n_per_class,dim", [(10, 32), (2, 64), (25, 16)])  # both Gram branches
@pytest.mark.parametrize("l2", [1.0, 1024.0])
def test_agrees_with_sklearn_ridge_classifier(n_per_class, dim, l2):
    """sklearn fits an unregularised intercept where we use a bias feature of 100 (penalised
    by l2 / 100²): on standardised features the predictions agree and the scores nearly so."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y, x_test, y_test = _problem(n_per_class=n_per_class, classes=6, dim=dim, seed=1)
    mean, std = x.mean(0), x.std(0, unbiased=False) + 1e-5
    clf = sklearn.RidgeClassifier(alpha=l2).fit(((x - mean) / std).numpy(), y.numpy())
    theirs = torch.from_numpy(clf.predict(((x_test - mean) / std).numpy()))
    ours = linear_fewshot(x, y, x_test, l2)
    assert torch.equal(ours, theirs)
    scores = LinearFewshot(x, y).scores(x_test, l2)
    assert torch.allclose(scores, torch.from_numpy(clf.decision_function(((x_test - mean) / std).numpy())).double(), atol=1e-2)
    if n_per_class > 2:
        assert (ours == y_test).double().mean() > 0.8, "separable classes must be learned"


def test_one_fit_serves_every_regulariser():
    x, y, x_test, _ = _problem(n_per_class=3, dim=40)
    solver = LinearFewshot(x, y)
    for l2 in (2.0**-4, 1.0, 2.0**10, 2.0**16):
        assert torch.equal(solver.predict(x_test, l2), _direct(x, y, x_test, l2))
