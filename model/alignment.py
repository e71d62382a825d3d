"""Similarity alignment of 3D point sets (batched, differentiable, degenerate-safe).

Conventions
-----------
All functions broadcast over arbitrary leading dimensions ``...``.  Point sets
are ``(..., N, 3)`` row vectors; a similarity ``(s, R, t)`` maps a point ``x`` to
``s * R @ x + t`` (for row-vector arrays: ``s * X @ R.T + t``).

``similarity_procrustes(X, Y, w)`` solves the weighted Umeyama problem

    min_{s >= 0, R in SO(3), t}  sum_n w_n || s R x_n + t - y_n ||^2

    W     = sum_n w_n
    mu_x  = sum_n w_n x_n / W,                 mu_y likewise
    Sigma = sum_n w_n (y_n - mu_y)(x_n - mu_x)^T / W      (3x3, "y x^T")
    Sigma = U diag(d) V^T                      (SVD, d1 >= d2 >= d3 >= 0)
    D     = diag(1, 1, sign(det U det V))      (reflection correction -> det R = +1)
    R     = U D V^T
    var_x = sum_n w_n ||x_n - mu_x||^2 / W
    s     = tr(diag(d) D) / var_x  = tr(R^T Sigma) / var_x
    t     = mu_y - s R mu_x

Gradients.  The SVD's own backward is singular whenever two singular values
coincide (e.g. a zero covariance, or collinear points), although the rotation
itself is a smooth function of ``Sigma`` there.  The rotation is therefore computed
by a custom autograd function which differentiates the (reflection-corrected)
polar factor directly: with ``U' = U D``, ``d' = D d`` and
``A = U'^T G V`` (``G`` = dL/dR),

    dL/dSigma = U' K V^T,   K_ij = (A_ij - A_ji) / (d'_i + d'_j)

and ``K_ij`` is set to 0 where ``|d'_i + d'_j|`` is negligible (the rotation is not
determined in that direction, e.g. the spin about the axis of collinear points).
This is finite for every input.  Internally the computation runs in float64 and
the results are cast back to the input dtype.

Degenerate inputs (no NaN is ever produced):
  * all weights zero: ``s = 1, R = I, t = 0``;
  * ``Sigma`` ~ 0 (coincident X or coincident Y points): ``R = I``;
  * ``var_x`` ~ 0 (coincident X points): ``s = 1`` (``t = mu_y - R mu_x``).
Negative weights are clamped to 0.

``align_with_rotation(X, Y, R, w)`` solves the same problem with the rotation
known (e.g. ``R = R_v R_j^T`` from camera extrinsics, mapping camera-j coordinates
to camera-v coordinates):

    s = max(0, sum_n w_n <R (x_n - mu_x), y_n - mu_y> / (W var_x)),   t = mu_y - s R mu_x

(the objective is a convex quadratic in ``s`` once ``t`` is eliminated, so
clamping the unconstrained optimum at 0 gives the constrained optimum; a negative
scale would turn the proper rotation into a reflection).
"""

from __future__ import annotations

import torch

__all__ = ["similarity_procrustes", "apply_similarity", "align_with_rotation"]

_REL_TOL = 1e-10   # relative threshold for degenerate covariance / variance (float64)
_ABS_TOL = 1e-30   # absolute floor


class _ProperPolar(torch.autograd.Function):
    """R = U diag(1, 1, det(U V^T)) V^T for Sigma = U diag(d) V^T, with a finite backward."""

    @staticmethod
    def forward(ctx, M: torch.Tensor) -> torch.Tensor:  # M: (..., 3, 3), float64
        U, S, Vh = torch.linalg.svd(M)
        sign = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        flip = torch.ones_like(S)
        flip[..., 2] = sign
        Uc = U * flip[..., None, :]          # U D
        Sc = S * flip                        # D d  (last entry may be negative)
        R = Uc @ Vh
        ctx.save_for_backward(Uc, Sc, Vh, S)
        return R

    @staticmethod
    def backward(ctx, G: torch.Tensor) -> torch.Tensor:
        Uc, Sc, Vh, S = ctx.saved_tensors
        A = Uc.transpose(-1, -2) @ G @ Vh.transpose(-1, -2)
        den = Sc[..., :, None] + Sc[..., None, :]
        tol = (_REL_TOL * 1e2) * S[..., :1, None] + _ABS_TOL
        ok = den.abs() > tol
        K = torch.where(ok, (A - A.transpose(-1, -2)) / torch.where(ok, den, torch.ones_like(den)),
                        torch.zeros_like(A))
        return Uc @ K @ Vh


def _prepare_weights(X: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return torch.ones(X.shape[:-1], dtype=X.dtype, device=X.device)
    w = weights.to(dtype=X.dtype, device=X.device).clamp(min=0)
    return torch.broadcast_to(w, X.shape[:-1]) if w.shape != X.shape[:-1] else w


def _moments(X: torch.Tensor, Y: torch.Tensor, w: torch.Tensor):
    """Weighted centroids, centred sets, total weight and 'weight is zero' flag."""
    W = w.sum(-1)                                           # (...)
    empty = W <= 0
    W_safe = torch.where(empty, torch.ones_like(W), W)
    wn = w / W_safe[..., None]                              # normalised weights (..., N)
    mu_x = (wn[..., None] * X).sum(-2)                      # (..., 3); 0 if empty
    mu_y = (wn[..., None] * Y).sum(-2)
    Xc = X - mu_x[..., None, :]
    Yc = Y - mu_y[..., None, :]
    var_x = (wn * (Xc * Xc).sum(-1)).sum(-1)
    var_y = (wn * (Yc * Yc).sum(-1)).sum(-1)
    return wn, mu_x, mu_y, Xc, Yc, var_x, var_y, empty


def _broadcast_pair(X: torch.Tensor, Y: torch.Tensor):
    if X.shape[-1] != 3 or Y.shape[-1] != 3:
        raise ValueError(f"point sets must end in 3, got {tuple(X.shape)} and {tuple(Y.shape)}")
    shape = torch.broadcast_shapes(X.shape, Y.shape)
    return X.expand(shape), Y.expand(shape)


def similarity_procrustes(X: torch.Tensor, Y: torch.Tensor, weights: torch.Tensor | None = None):
    """Weighted similarity (Umeyama) alignment of ``X`` onto ``Y``.

    Args:
        X, Y: ``(..., N, 3)`` corresponding points (broadcastable).
        weights: optional ``(..., N)`` non-negative weights (broadcastable).

    Returns:
        ``scale (...,)``, ``R (..., 3, 3)`` with det +1, ``t (..., 3)`` minimising
        ``sum_n w_n ||s R x_n + t - y_n||^2``.  See the module docstring for the
        closed form and the degenerate-case conventions.
    """
    out_dtype = torch.promote_types(X.dtype, Y.dtype)
    X, Y = _broadcast_pair(X.to(torch.float64), Y.to(torch.float64))
    w = _prepare_weights(X, weights)
    wn, mu_x, mu_y, Xc, Yc, var_x, var_y, empty = _moments(X, Y, w)

    sigma = torch.einsum("...n,...ni,...nj->...ij", wn, Yc, Xc)      # (..., 3, 3)
    R_raw = _ProperPolar.apply(sigma)
    sig_norm = torch.linalg.matrix_norm(sigma.detach())
    scale_ref = torch.sqrt(var_x.detach() * var_y.detach())
    deg_rot = empty | (sig_norm <= _REL_TOL * scale_ref + _ABS_TOL)
    eye = torch.eye(3, dtype=X.dtype, device=X.device).expand_as(R_raw)
    R = torch.where(deg_rot[..., None, None], eye, R_raw)

    num = (R * sigma).sum((-1, -2))                                  # tr(R^T Sigma)
    deg_scale = empty | (var_x.detach() <= _REL_TOL * (var_x.detach() + var_y.detach()) + _ABS_TOL)
    var_safe = torch.where(deg_scale, torch.ones_like(var_x), var_x)
    s = torch.where(deg_scale, torch.ones_like(num), num / var_safe)
    t = mu_y - s[..., None] * (R @ mu_x[..., None])[..., 0]
    return s.to(out_dtype), R.to(out_dtype), t.to(out_dtype)


def align_with_rotation(X: torch.Tensor, Y: torch.Tensor, R: torch.Tensor,
                        weights: torch.Tensor | None = None):
    """Scale and translation aligning ``X`` onto ``Y`` for a KNOWN rotation ``R``.

    Args:
        X, Y: ``(..., N, 3)``; R: ``(..., 3, 3)`` (e.g. ``R_v R_j^T``); weights ``(..., N)``.

    Returns:
        ``scale (...,)`` (clamped at >= 0) and ``t (..., 3)`` minimising
        ``sum_n w_n ||s R x_n + t - y_n||^2``.  Degenerate cases: all weights zero ->
        ``s = 1, t = 0``; coincident X points -> ``s = 1``.
    """
    out_dtype = torch.promote_types(torch.promote_types(X.dtype, Y.dtype), R.dtype)
    X, Y = _broadcast_pair(X.to(torch.float64), Y.to(torch.float64))
    R = R.to(torch.float64)
    lead = torch.broadcast_shapes(X.shape[:-2], R.shape[:-2])
    X = X.expand(*lead, *X.shape[-2:])
    Y = Y.expand(*lead, *Y.shape[-2:])
    R = R.expand(*lead, 3, 3)
    w = _prepare_weights(X, weights)
    wn, mu_x, mu_y, Xc, Yc, var_x, var_y, empty = _moments(X, Y, w)

    RXc = Xc @ R.transpose(-1, -2)
    num = (wn * (RXc * Yc).sum(-1)).sum(-1)
    deg_scale = empty | (var_x.detach() <= _REL_TOL * (var_x.detach() + var_y.detach()) + _ABS_TOL)
    var_safe = torch.where(deg_scale, torch.ones_like(var_x), var_x)
    s = torch.where(deg_scale, torch.ones_like(num), (num / var_safe).clamp(min=0))
    t = mu_y - s[..., None] * (R @ mu_x[..., None])[..., 0]
    return s.to(out_dtype), t.to(out_dtype)


def apply_similarity(X: torch.Tensor, s: torch.Tensor, R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``s R x + t`` for every point: X ``(..., N, 3)``, s ``(...,)``, R ``(..., 3, 3)``, t ``(..., 3)``."""
    return s[..., None, None] * (X @ R.transpose(-1, -2)) + t[..., None, :]
