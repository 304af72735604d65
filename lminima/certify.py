"""Second-order certificates of a point of a ``Problem``.

A certificate (docs/theory.md#certificates) records, in float64 on the full
training set, ``||g||``, the extreme Hessian eigenvalues with residuals
``||H v - lambda v||``, the index (number of eigenvalues ``< -eig_tol``), the
number of flat directions (``|lambda| <= eig_tol``) and a verdict, decided in
this order:

1. ``not_critical``: L or g not finite, or ``||g|| > grad_tol`` (absolute).
2. ``non_differentiable``: an argument of a non-differentiable activation
   (``Problem.kinks_fn``, e.g. a relu pre-activation) within ``kink_tol`` of
   its kink on some training sample.
3. ``saddle``: an eigenvalue ``< -eig_tol``.
4. ``local_min``: none. This is the second-order necessary condition up to
   tolerances; with ``n_flat > 0`` the point may still be a higher-order saddle
   (docs/theory.md#limits-of-a-certificate).

Eigenvalues carry the loss's units, so the default ``eig_tol`` is relative:
``1e-6 * max(|lambda_min|, |lambda_max|)``, which is 0 when H = 0 exactly
(then every eigenvalue is flat and none is negative). Dense ``eigh`` is used
for ``n_params <= dense_max_params``; above it Lanczos with (partial)
reorthogonalization (``lminima.lanczos.lanczos_extreme_eigs``), and ``index``
and ``n_flat`` are counted from the Ritz values: by Cauchy interlacing the
j-th smallest Ritz value is >= the j-th smallest eigenvalue, so ``index`` is a
lower bound, and ``n_flat`` is a lower bound in practice (one Ritz value per
eigenvalue cluster). A Lanczos ``saddle`` is rigorous (lambda_min is a
Rayleigh quotient); a Lanczos ``local_min`` relies on Lanczos having found
lambda_min (check ``residual_min``).

Example:
  >>> import jax, jax.numpy as jnp, numpy as np
  >>> from lminima.models import MLP
  >>> model = MLP(d_in=1, widths=(1,), d_out=1, activation="identity",
  ...             bias=False)
  >>> origin = jax.tree_util.tree_map(jnp.zeros_like, model.init_params(
  ...     jax.random.PRNGKey(0)))
  >>> problem = Problem.for_module(model, origin, np.ones((2, 1)),
  ...                              np.ones((2, 1)))
  >>> cert = certificate(problem)
  >>> cert.verdict, cert.index, cert.lambda_min
  ('saddle', 1, -1.0)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from lminima import lanczos
from lminima.problem import Problem
from lminima.refinement import serial_blas


@dataclasses.dataclass(frozen=True)
class Certificate:
  """Second-order record of one point; see the module docstring.

  Attributes:
    n_params: number of parameters n.
    loss: L(theta).
    grad_norm: ``||grad L||_2``.
    grad_norm_rel: ``grad_norm / (1 + |L|)``.
    lambda_min: smallest Hessian eigenvalue (Ritz value on the Lanczos path).
    lambda_max: largest Hessian eigenvalue.
    residual_min: ``||H v - lambda_min v||`` of the reported pair.
    residual_max: the same for ``lambda_max``.
    index: number of eigenvalues ``< -eig_tol`` (lower bound for Lanczos).
    n_flat: number of eigenvalues with ``|lambda| <= eig_tol`` (Lanczos:
      counted from Ritz values, a lower bound in practice).
    grad_tol: absolute gradient-norm tolerance used.
    eig_tol: eigenvalue tolerance used.
    kink_tol: kink tolerance used.
    min_abs_preactivation: smallest ``|z|`` over the arguments of
      non-differentiable activations (relu pre-activations) on all samples;
      None for smooth models.
    method: ``"dense"`` or ``"lanczos"``.
    verdict: one of ``VERDICTS``.
  """
  n_params: int
  loss: float
  grad_norm: float
  grad_norm_rel: float
  lambda_min: float
  lambda_max: float
  residual_min: float
  residual_max: float
  index: int
  n_flat: int
  grad_tol: float
  eig_tol: float
  kink_tol: float
  min_abs_preactivation: float | None
  method: str
  verdict: str

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready dict; non-finite floats become None (strict JSON)."""
    def plain(value):
      if isinstance(value, float) and not math.isfinite(value):
        return None
      return value
    return {field.name: plain(getattr(self, field.name))
            for field in dataclasses.fields(self)}


def end_residuals(matrix, lam, vecs, xp=np):
  """``||H v - lambda v||`` of the extreme eigenpairs (lambda_min, lambda_max)
  of a dense ``eigh``; with leading batch axes and ``xp=jax.numpy`` too."""
  ends = vecs[..., :, [0, -1]]
  return xp.linalg.norm(matrix @ ends - ends * lam[..., None, [0, -1]],
                        axis=-2)


def _spectrum_summary(problem: Problem, dense_max_params: int,
                      key: jax.Array):
  """(ascending eigenvalues or Ritz values, lam_min, lam_max, res_min,
  res_max)."""
  if problem.n_params <= dense_max_params:
    matrix = problem.dense_hessian()
    with serial_blas():
      lam, vecs = np.linalg.eigh(matrix)
    residuals = end_residuals(matrix, lam, vecs)
    return (lam, float(lam[0]), float(lam[-1]), float(residuals[0]),
            float(residuals[1]))
  return lanczos_spectrum(lanczos.lanczos_extreme_eigs(
      problem.hvp_operator(), problem.n_params, key=key))


def lanczos_spectrum(eigs: lanczos.ExtremeEigs) -> tuple:
  """``summarize``'s spectrum from a Lanczos run (Ritz values, ends, true
  residuals); shared with the batched ``batch_refine.certify_many``."""
  return (np.asarray(eigs.ritz_values), eigs.lambda_min, eigs.lambda_max,
          eigs.residual_min, eigs.residual_max)


def check_tolerances(grad_tol: float, kink_tol: float, dense_max_params: int,
                     eig_tol: float | None, caller: str = "certificate"
                     ) -> None:
  """Raises ValueError (naming ``caller``) on a bad tolerance."""
  if not (grad_tol > 0 and kink_tol >= 0 and dense_max_params >= 0
          and (eig_tol is None or eig_tol >= 0)):
    raise ValueError(
        f"{caller}: need grad_tol > 0, kink_tol >= 0, dense_max_params >= 0"
        f" and eig_tol >= 0 or None; got grad_tol={grad_tol}, kink_tol="
        f"{kink_tol}, dense_max_params={dense_max_params}, eig_tol={eig_tol}")


def summarize(*, n_params: int, loss: float, grad_norm: float,
              min_abs_kink: float | None, spectrum: tuple | None,
              method: str, grad_tol: float, eig_tol: float | None,
              kink_tol: float) -> Certificate:
  """The certificate of a point from its measurements (module docstring).

  Shared by ``certificate`` and the batched ``lminima.batch_refine.
  certify_many``, so both decide verdicts by the same rules.

  Args:
    n_params, loss, grad_norm, min_abs_kink: the point's measurements
      (``min_abs_kink`` None for smooth models).
    spectrum: ``(ascending eigenvalues or Ritz values, lambda_min,
      lambda_max, residual_min, residual_max)``; None when L or g is not
      finite (no spectrum is taken there).
    method: ``"dense"`` or ``"lanczos"``.
    grad_tol, eig_tol, kink_tol: as in ``certificate``.
  """
  finite = math.isfinite(loss) and math.isfinite(grad_norm)
  nan = float("nan")
  values, lam_min, lam_max, res_min, res_max = (
      (np.array([]), nan, nan, nan, nan) if spectrum is None else spectrum)
  if eig_tol is None:
    eig_tol = 1e-6 * max(abs(lam_min), abs(lam_max)) if finite else nan
  index = int(np.sum(values < -eig_tol))
  n_flat = int(np.sum(np.abs(values) <= eig_tol))
  if not finite or grad_norm > grad_tol:
    verdict = "not_critical"
  elif min_abs_kink is not None and min_abs_kink <= kink_tol:
    verdict = "non_differentiable"
  elif index > 0:
    verdict = "saddle"
  else:
    verdict = "local_min"
  return Certificate(
      n_params=n_params, loss=loss, grad_norm=grad_norm,
      grad_norm_rel=grad_norm / (1.0 + abs(loss)), lambda_min=lam_min,
      lambda_max=lam_max, residual_min=res_min, residual_max=res_max,
      index=index, n_flat=n_flat, grad_tol=float(grad_tol),
      eig_tol=float(eig_tol), kink_tol=float(kink_tol),
      min_abs_preactivation=min_abs_kink, method=method, verdict=verdict)


def certificate(problem: Problem, *, dense_max_params: int = 3000,
                grad_tol: float = 1e-8, eig_tol: float | None = None,
                kink_tol: float = 1e-8, key: jax.Array | None = None
                ) -> Certificate:
  """Certifies the problem's point as a local minimum, saddle or neither.

  Args:
    problem: the objective at the point (the FULL training set).
    dense_max_params: dense eigh up to this many parameters, Lanczos above.
    grad_tol: absolute tolerance on ``||grad L||``.
    eig_tol: eigenvalue tolerance; default ``1e-6 * max(|lambda_min|,
      |lambda_max|)``.
    kink_tol: kink arguments within this of 0 make the verdict
      ``non_differentiable``.
    key: PRNG key of the Lanczos start vector (default ``PRNGKey(0)``).

  Returns:
    A ``Certificate``.

  Raises:
    ValueError: on negative tolerances.
  """
  check_tolerances(grad_tol, kink_tol, dense_max_params, eig_tol)
  loss, grad_norm = problem.loss, problem.grad_norm
  finite = math.isfinite(loss) and math.isfinite(grad_norm)
  spectrum = _spectrum_summary(
      problem, dense_max_params,
      jax.random.PRNGKey(0) if key is None else key) if finite else None
  return summarize(
      n_params=problem.n_params, loss=loss, grad_norm=grad_norm,
      min_abs_kink=problem.min_abs_kink_input(), spectrum=spectrum,
      method="dense" if problem.n_params <= dense_max_params else "lanczos",
      grad_tol=grad_tol, eig_tol=eig_tol, kink_tol=kink_tol)
