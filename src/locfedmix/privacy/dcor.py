"""Distance correlation between inputs and smashed data (Székely, Rizzo & Bakirov 2007), the dependence measure NoPeek
minimises (Vepakomma et al. 2020) and our leakage diagnostic reports.

Two estimators, both over flattened samples (rows):
* `distance_correlation`: the V-statistic dCor_n of Székely et al. (2007), the one NoPeek trains against. Plain tensor
  ops, differentiable and safe under torch.func.vmap. In high dimension it is biased towards 1 even for independent
  data (Székely & Rizzo 2013 show the bias; our own measurement: dCor_n = 0.98 for 200 independent
  uniform samples of 784 vs 3136 dimensions), so on its own it cannot say whether smashed data leak.
* `bias_corrected_distance_correlation_sqr`: R*_n², built from U-centred distance matrices (Székely & Rizzo 2014,
  "Partial distance correlation with methods for dissimilarities", Ann. Statist. 42(6)); it is near 0 for independent
  data at any dimension (it can dip below 0) and 1 for identical data or data related by a similarity transform (a
  rotation, a uniform scale, a shift); a general invertible linear map gives less than 1. This is the leakage number
  to compare.
"""

import torch

_TINY = 1e-30


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def distance_matrix(t: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between all pairs of samples; computed from differences (not the Gram-matrix shortcut),
    so the diagonal is exactly 0 and its gradient stays finite."""
    flat = _flat(t)
    return torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")


def _safe_sqrt(t: torch.Tensor) -> torch.Tensor:
    """sqrt(max(t, 0)) with gradient 0 (not inf) at 0, written with where so that vmap can batch it."""
    positive = t > 0
    return torch.where(positive, torch.where(positive, t, torch.ones_like(t)).sqrt(), torch.zeros_like(t))


def _ratio(num: torch.Tensor, var_x: torch.Tensor, var_y: torch.Tensor) -> torch.Tensor:
    """num / sqrt(var_x var_y), defined as 0 where a variable has no spread (a constant batch, one sample)."""
    denom = _safe_sqrt(var_x * var_y)
    return torch.where(denom > 0, num / denom.clamp_min(_TINY), torch.zeros_like(num))


def distance_correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The empirical dCor_n(x, y) of Székely et al. (2007): with double-centred distance matrices A, B,
    dCor² = mean(A∘B) / sqrt(mean(A∘A) mean(B∘B)). Rows of x and y are paired samples."""
    a, b = distance_matrix(x), distance_matrix(y)
    a = a - a.mean(0, keepdim=True) - a.mean(1, keepdim=True) + a.mean()
    b = b - b.mean(0, keepdim=True) - b.mean(1, keepdim=True) + b.mean()
    return _safe_sqrt(_ratio((a * b).mean(), (a * a).mean(), (b * b).mean()))


def _u_centred(d: torch.Tensor) -> torch.Tensor:
    """U-centring (Székely & Rizzo 2014): d_ij − d_i·/(n−2) − d_·j/(n−2) + d_··/((n−1)(n−2)) off the diagonal,
    0 on it."""
    n = d.shape[0]
    centred = (d - d.sum(0, keepdim=True) / (n - 2) - d.sum(1, keepdim=True) / (n - 2)
               + d.sum() / ((n - 1) * (n - 2)))
    return centred * (1 - torch.eye(n, dtype=d.dtype, device=d.device))


def bias_corrected_distance_correlation_sqr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """R*_n²(x, y) = (Ã·B̃) / sqrt((Ã·Ã)(B̃·B̃)) with (Ã·B̃) = Σ_{i≠j} Ã_ij B̃_ij / (n(n−3)); needs n ≥ 4."""
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"the bias-corrected distance correlation needs at least 4 samples, got {n}")
    a, b = _u_centred(distance_matrix(x)), _u_centred(distance_matrix(y))
    inner = lambda p, q: (p * q).sum() / (n * (n - 3))
    return _ratio(inner(a, b), inner(a, a), inner(b, b))
