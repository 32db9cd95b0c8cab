"""Two-component 1-D Gaussian mixtures fitted by EM, many at once.

One row per GT: its pooled candidate costs (B rows, K slots, a validity mask). The
arithmetic follows sklearn's GaussianMixture(2, covariance_type="diag") with the PAA
initialisation (means at the smallest and largest cost, weights 0.5, precisions 1)
step for step, dtype for dtype: sklearn receives float32 costs, squares them in
float32 and does the rest in float64, so we do the same and agree with it on the
positives as well as on the parameters. Each row stops when its own lower bound
changes by less than `tol`, exactly as a separate sklearn fit would.
"""
import math
from dataclasses import dataclass

import torch
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)
_EPS64 = torch.finfo(torch.float64).eps
_BLOCK = 4


@dataclass
class Mixture:
    """Fitted parameters, float64: weights, means, variances each (B, 2); iterations (B,) int64."""

    weights: Tensor
    means: Tensor
    variances: Tensor
    iterations: Tensor

    def weighted_log_prob(self, x: Tensor, x_sq: Tensor) -> Tensor:
        """log(w_k) + log N(x | mean_k, var_k): (B, K) -> (B, K, 2)."""
        return _weighted_log_prob(x, x_sq, self.weights, self.means, 1.0 / self.variances.sqrt())


def _weighted_log_prob(x: Tensor, x_sq: Tensor, weights: Tensor, means: Tensor, prec_chol: Tensor) -> Tensor:
    # sklearn's expanded form m^2 p - 2 x m p + x^2 p, not (x - m)^2 p: the rounding matters.
    prec = prec_chol**2
    m, p, lw = means[:, None, :], prec[:, None, :], weights.log()[:, None, :]
    quad = m**2 * p - 2.0 * x[..., None] * (m * p) + x_sq[..., None] * p
    return -0.5 * (_LOG_2PI + quad) + prec_chol.log()[:, None, :] + lw


def fit_two_gaussians(
    costs: Tensor, valid: Tensor, tol: float = 1e-3, max_iter: int = 100, reg_covar: float = 1e-6
) -> Mixture:
    """Fit one 2-component mixture per row of `costs`.

    costs: (B, K) float32 (or castable), valid: (B, K) bool; rows need >= 1 valid entry
    (rows with fewer than 2 are fitted but meaningless: callers skip them).
    Returns float64 parameters. Never raises and never returns NaN for finite input:
    variances that sklearn would reject as ill-defined are reset to reg_covar.
    """
    x32 = torch.where(valid, costs.float(), 0.0)
    x = x32.double()
    x_sq = (x32 * x32).double()
    mask = valid.double()
    count = mask.sum(-1).clamp(min=1.0)
    big = torch.finfo(torch.float32).max
    lo = torch.where(valid, costs.float(), big).amin(-1).double()
    hi = torch.where(valid, costs.float(), -big).amax(-1).double()

    b = costs.shape[0]
    state = {
        "weights": torch.full((b, 2), 0.5, dtype=torch.float64, device=costs.device),
        "means": torch.stack([lo, hi], -1),
        "prec_chol": torch.ones((b, 2), dtype=torch.float64, device=costs.device),
        "lower": torch.full((b,), -math.inf, dtype=torch.float64, device=costs.device),
        "iterations": torch.zeros(b, dtype=torch.int64, device=costs.device),
    }
    fitted = valid.any(-1)  # rows without a valid entry keep their initial parameters
    rows = torch.arange(b, device=costs.device)
    step = 0
    # Blocks of EM steps on the rows still running: most GTs converge in a handful of steps,
    # and one host sync per block (not per step) finds the stragglers. On CUDA the blocks
    # double in length (4, 4, 8, 16, ...): a fit of 100 steps costs 6 syncs, not 25. On the
    # CPU a sync costs nothing and steps on converged rows do: blocks stay at 4.
    doubling = _doubling_blocks(costs.device)
    while step < max_iter and len(rows):
        sub = {k: v[rows] for k, v in state.items()}
        active = fitted[rows]
        for _ in range(min(max(_BLOCK, step) if doubling else _BLOCK, max_iter - step)):
            active = _em_step(sub, active, x[rows], x_sq[rows], mask[rows], count[rows], tol, reg_covar)
            step += 1
        for k, v in sub.items():
            state[k][rows] = v
        rows = rows[active]
    return Mixture(state["weights"], state["means"], 1.0 / state["prec_chol"] ** 2, state["iterations"])


def _doubling_blocks(device: torch.device) -> bool:
    return device.type != "cpu"


def _em_step(p: dict, active: Tensor, x: Tensor, x_sq: Tensor, mask: Tensor, count: Tensor, tol: float,
             reg_covar: float) -> Tensor:
    """One E and M step, in place on the parameters of the rows still `active`; returns the
    rows still active after it (sklearn stops a fit when its lower bound moves by < tol)."""
    wlp = _weighted_log_prob(x, x_sq, p["weights"], p["means"], p["prec_chol"])
    log_norm = torch.logsumexp(wlp, -1)
    resp = (wlp - log_norm[..., None]).exp() * mask[..., None]
    new_lower = (log_norm * mask).sum(-1) / count

    nk = resp.sum(1) + 10 * _EPS64
    new_means = (resp * x[..., None]).sum(1) / nk
    var = (resp * x_sq[..., None]).sum(1) / nk - new_means**2 + reg_covar
    var = torch.where(var > 0, var, torch.full_like(var, reg_covar))

    keep = active[:, None]
    p["weights"] = torch.where(keep, nk / nk.sum(-1, keepdim=True), p["weights"])
    p["means"] = torch.where(keep, new_means, p["means"])
    p["prec_chol"] = torch.where(keep, 1.0 / var.sqrt(), p["prec_chol"])
    p["iterations"] = p["iterations"] + active.long()
    converged = (new_lower - p["lower"]).abs() < tol
    p["lower"] = torch.where(active, new_lower, p["lower"])
    return active & ~converged


def split_low_component(costs: Tensor, valid: Tensor, mixture: Mixture) -> Tensor:
    """PAA's separation: which candidates become positives. (B, K) -> (B, K) bool.

    `costs` must be sorted ascending along K with the valid entries first. The
    candidates predicted into the low-cost component (component 0), in cost order, are
    cut after the one with the highest log-likelihood, and after every candidate of
    exactly its cost: equal costs get equal decisions (docs/method.md, "PAA assignment").
    """
    x32 = torch.where(valid, costs.float(), 0.0)
    wlp = mixture.weighted_log_prob(x32.double(), (x32 * x32).double())
    low = (wlp[..., 0] >= wlp[..., 1]) & valid
    score = torch.where(low, torch.logsumexp(wlp, -1), -math.inf)
    best = score.argmax(-1, keepdim=True)
    return low & (x32 <= x32.gather(-1, best))
