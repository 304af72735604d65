"""Helpers shared by the test files: independent references and assertions.

tests/ is not a package; pytest (rootdir import mode) and ``python
tests/test_x.py`` both put tests/ on sys.path, so test files ``import
_helpers``. Nothing here is a test (pytest collects test_*.py only).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from lminima.core.losses import loss_scale  # importing lminima enables float64

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --- Scripts -----------------------------------------------------------------


def script_command(name, *args):
  """The command line running scripts/<name> with ``args`` in a fresh
  Python."""
  return [sys.executable, os.path.join(REPO, "scripts", name), *args]


def run_script(name, *args, cwd=None):
  """scripts/<name> run to its end: the CompletedProcess (text output)."""
  return subprocess.run(script_command(name, *args), capture_output=True,
                        text=True, timeout=300, check=False, cwd=cwd)


def start_script(name, *args, cwd=None):
  """scripts/<name> started, stdout and stderr piped: the Popen."""
  return subprocess.Popen(script_command(name, *args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=cwd)


def assert_one_line_error(test, returncode, stderr, args, expected=None,
                          prefix="error: "):
  """A failed script run whose stderr is one line starting with ``prefix``
  (and containing ``expected`` when given); returns that line."""
  test.assertNotEqual(returncode, 0, args)
  lines = stderr.strip().splitlines()
  test.assertLen(lines, 1, (args, stderr))
  test.assertStartsWith(lines[0], prefix)
  if expected is not None:
    test.assertIn(expected, lines[0])
  return lines[0]


def assert_png_has_content(test, path):
  """A decodable PNG that is not a blank canvas."""
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  pixels = matplotlib.image.imread(path)
  test.assertGreater(min(pixels.shape[:2]), 200)
  test.assertGreater(len(np.unique(pixels.reshape(-1, pixels.shape[-1]),
                                   axis=0)), 10)


# --- Data, networks and closed forms -----------------------------------------


def gaussian_data(m=30, d_x=4, d_y=2, seed=0):
  """Gaussian (x, y) of shapes (m, d_x) and (m, d_y), numpy float64."""
  rng = np.random.default_rng(seed)
  return rng.standard_normal((m, d_x)), rng.standard_normal((m, d_y))


def flax_variables(*layers):
  """Flax variables {"params": {"layer_1": layers[0], ...}}."""
  return {"params": {f"layer_{l}": {k: jnp.asarray(v, jnp.float64)
                                    for k, v in layer.items()}
                     for l, layer in enumerate(layers, start=1)}}


def linear_net_spectrum_at_origin(x, y, hidden, normalization):
  """Analytic Hessian eigenvalues of c||X W1 W2 - Y||^2 at W1 = W2 = 0.

  L(tA, tB) = L(0) - 2c t^2 tr(Y^T X A B) + O(t^4), a bilinear form coupling
  A and B through X^T Y (x) I_hidden: eigenvalues +-2c sigma_i(X^T Y), each
  ``hidden`` times, and zeros for the rest.
  """
  c = loss_scale(normalization, x.shape[0])
  sigma = np.linalg.svd(x.T @ y, compute_uv=False)
  nonzero = np.repeat(2 * c * sigma, hidden)
  n = hidden * (x.shape[1] + y.shape[1])
  zeros = np.zeros(n - 2 * nonzero.size)
  return np.sort(np.concatenate([-nonzero, zeros, nonzero]))


ACTIVATIONS = {"tanh": jnp.tanh, "softplus": jax.nn.softplus,
               "sigmoid": jax.nn.sigmoid}


def mlp_problem(widths, activation="tanh", bias=True, m=40, d_in=3, d_out=2,
                seed=0):
  """(params, loss_fn): a float64 MLP (tuple of layer dicts) with a mean
  squared loss on Gaussian data; self-contained, independent of
  lminima.core.models."""
  sizes = (d_in, *widths, d_out)
  keys = jax.random.split(jax.random.PRNGKey(seed), 2 * len(sizes))
  params = tuple(
      {"w": jax.random.normal(keys[2 * l], (a, b), jnp.float64) / np.sqrt(a),
       **({"b": 0.1 * jax.random.normal(keys[2 * l + 1], (b,), jnp.float64)}
          if bias else {})}
      for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])))
  x = jax.random.normal(keys[-2], (m, d_in), jnp.float64)
  y = jax.random.normal(keys[-1], (m, d_out), jnp.float64)
  sigma = ACTIVATIONS[activation]

  def loss_fn(p):
    h = x
    for l, layer in enumerate(p):
      h = h @ layer["w"] + layer.get("b", 0.0)
      h = sigma(h) if l < len(p) - 1 else h
    return 0.5 * jnp.mean(jnp.sum(jnp.square(h - y), axis=1))

  return params, loss_fn


def matrix_with_spectrum(eigenvalues, seed=0):
  """A dense symmetric matrix Q diag(eigenvalues) Q^T, Q random orthogonal."""
  n = len(eigenvalues)
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
  return (q * np.asarray(eigenvalues)) @ q.T


def dense_matvec(a):
  """v -> a @ v for a dense matrix a."""
  a = jnp.asarray(a)
  return lambda v: a @ v


# --- Classical optima --------------------------------------------------------


def lstsq_loss(design, y, c):
  """c ||Y - design beta||^2 at numpy's least-squares solution beta."""
  beta = np.linalg.lstsq(design, y, rcond=None)[0]
  return c * np.sum(np.square(y - design @ beta))


def assert_sum_is_m_times_mean(test, optimum):
  """``optimum(x, y, normalization)`` on ``gaussian_data()``: the "sum" value
  is m times the (positive) "mean" value, at the same fitted values."""
  x, y = gaussian_data()
  total, mean = optimum(x, y, "sum"), optimum(x, y, "mean")
  test.assertGreater(mean.value, 0)
  np.testing.assert_allclose(total.value, x.shape[0] * mean.value,
                             rtol=1e-13)
  np.testing.assert_array_equal(total.fitted, mean.fitted)


def assert_raises_on_data(test, call, message):
  """``call(x, y)`` on ``gaussian_data()`` raises a ValueError matching
  ``message``."""
  x, y = gaussian_data()
  with test.assertRaisesRegex(ValueError, message):
    call(x, y)
