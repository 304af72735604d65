"""The Hessian spectrum of a ``Problem``: extreme eigenpairs and the density.

``hessian_spectrum`` runs Lanczos with full reorthogonalization for lambda_min
and lambda_max (with true residuals ``||H v - lambda v||``) and stochastic
Lanczos quadrature for the smoothed eigenvalue density, both matrix free on
the problem's Hessian-vector operator, so it works where the dense Hessian
does not fit.

Example:
  >>> import jax, numpy as np
  >>> from lminima import Problem
  >>> from lminima.core.models import MLP
  >>> model = MLP(d_in=2, widths=(3,), d_out=1)
  >>> x = np.random.default_rng(0).standard_normal((8, 2))
  >>> problem = Problem.for_module(model, model.init_params(
  ...     jax.random.PRNGKey(0)), x, x[:, :1])
  >>> spectrum = hessian_spectrum(problem, key=jax.random.PRNGKey(0),
  ...                             num_probes=2, num_iters=13)
  >>> lam = np.linalg.eigvalsh(problem.dense_hessian())
  >>> bool(np.isclose(spectrum.extremes.lambda_min, lam[0], atol=1e-10))
  True
"""

from __future__ import annotations

import dataclasses

import jax

from lminima.core.problem import Problem
from lminima.linalg import lanczos
from lminima.linalg import slq


@dataclasses.dataclass(frozen=True)
class HessianSpectrum:
  """Extreme eigenpairs and the SLQ density of one problem's Hessian.

  Attributes:
    extremes: ``lanczos.ExtremeEigs`` (lambda_min, lambda_max, residuals,
      Ritz values).
    density: ``slq.SpectralDensity`` on a grid.
    n_params: dimension of the Hessian.
  """
  extremes: lanczos.ExtremeEigs
  density: slq.SpectralDensity
  n_params: int


def hessian_spectrum(problem: Problem, *, key: jax.Array,
                     num_probes: int = 10, num_iters: int = 80,
                     tol: float = 1e-8) -> HessianSpectrum:
  """Extreme eigenpairs (Lanczos, tolerance ``tol``) and the SLQ density.

  Args:
    problem: the objective at the point.
    key: PRNG key, split between the Lanczos start and the SLQ probes.
    num_probes: SLQ probe vectors.
    num_iters: Lanczos steps per SLQ probe.
    tol: relative residual tolerance of the extreme pairs.
  """
  key_eigs, key_slq = jax.random.split(key)
  operator = problem.hvp_operator()
  extremes = lanczos.lanczos_extreme_eigs(operator, problem.n_params,
                                          key=key_eigs, tol=tol)
  density = slq.slq_density(operator, problem.n_params, key=key_slq,
                                   num_probes=num_probes,
                                   num_iters=num_iters)
  return HessianSpectrum(extremes=extremes, density=density,
                         n_params=problem.n_params)
