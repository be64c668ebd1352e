"""Shared fixtures and the ONE table of numerical tolerances, each with its reason."""

import numpy as np
import pytest

#: Compiled kernels vs the NumPy reference, same dtype, relative error ||a - b|| / ||b||. The two paths do the
#: same arithmetic in a different order (BLAS blocking of two different OpenBLAS builds, fused epilogues,
#: float64 accumulation of the loss), so they differ by a few units in the last place, amplified by depth.
RTOL = {"float32": 1e-5, "float64": 1e-12}

#: The float32 softmax cross-entropy of given float32 logits against the same loss computed in float64 from those
#: logits: the exponentials are float32 (a relative error of about 1e-7 in their sum, so about 1e-7 absolute in the
#: loss), the rest float64. 1e-6 relative (loss ~ 5) leaves room; a float32 y . z cancelling against lse sum(y) at
#: logits of 1e4 was off by 8e-6.
SOFTMAX_LOSS_RTOL_FLOAT32 = 1e-6

#: fastbp's vectorised exp (fastbp.kernels.activations._exp_nonpositive) against exp in long double, in units in the
#: last place of the dtype: a range reduction and a polynomial in the dtype's own arithmetic round a few times, so
#: up to about 1 ulp (measured 1.24 float32, 0.85 float64 over dense grids); a wrong coefficient or a lost bit of the
#: reduction shows as thousands of ulps.
EXP_MAX_ULPS = 2.0

#: The squared-error loss of an output a = f(z) computed by two paths: a differs by a few ulps (f's rounding, up to
#: EXP_MAX_ULPS for exp and sigmoid, plus the summation order of z), and 1/2 (a - y)^2 magnifies that where a is close
#: to y, by up to OUTPUT_ULPS ulp(a) |a - y| per element: loss values are compared with that much absolute slack on
#: top of RTOL (0 in effect for the losses computed from the logits, whose pairs need none).
OUTPUT_ULPS = 4.0

#: Reference vs central finite differences in float64 (step FD_STEP): truncation error O(h^2) ~ 1e-12 and
#: rounding error O(eps / h) ~ 1e-10 relative, so 1e-6 leaves ample room while any wrong derivative term
#: (an error of order 1) fails by many orders of magnitude.
FD_RTOL = 1e-6
FD_STEP = 1e-6

#: Hand-worked examples use numbers exactly representable in binary, so the arithmetic is exact in float64;
#: only transcendental functions (exp) bring rounding, bounded by a few ulps.
HAND_RTOL = 1e-14

#: Data-parallel (MPI, 2 ranks) vs single-process training on the same global batches, float64, relative error of
#: the parameters and histories after a few epochs. Each rank's partial gradient is summed by the all-reduce in
#: another order than one process sums the whole batch (and each rank scales by its share, k/m, before the 1/k
#: of its mean), so every step differs by a few ulps (~1e-16, measured 2e-16 after 4 epochs), carried and mildly
#: amplified by the training dynamics; 1e-11 leaves room for that, while a lost row, a wrong share or a missed
#: L2 term is off by 1e-3 or more.
DIST_RTOL = 1e-11
#: The same in float32 (2 and 3 ranks, Adam, 2 epochs): the sums' order changes the float32 rounding of each step,
#: measured 2.5e-8 relative (about half an ulp, 6e-8); 1e-5 leaves room, a lost row or a wrong share is 1e-3 or more.
DIST_RTOL_FLOAT32 = 1e-5

#: fastbp.sklearn against scikit-learn's own estimator, same hyper-parameters, initialisation and shuffling: the
#: same arithmetic up to BLAS blocking and the order of the fused sums, over a few epochs of training (which can
#: amplify last-place differences a little). float64: ~1e-15 measured, 1e-9 leaves room for amplification while a
#: wrong penalty scale, loss, schedule or shuffle (errors of 1e-3 and more) fails. float32: ~1e-6 measured.
SKLEARN_RTOL = {"float32": 1e-4, "float64": 1e-9}

#: bfloat16 matmul precision against the float64 reference (the true gradient), relative error of the gradient and
#: of the loss: operands rounded to 8 significant bits (2^-9 relative) move a gradient by about 1e-3, more where
#: depth amplifies it; 2e-2 is the issue's bound.
BF16_RTOL = 2e-2

#: bfloat16 matmul precision against the reference computing the same bfloat16 products exactly (operands rounded to
#: bfloat16, then summed in float64): the compiled products are summed in float32 (a few ulps), but an activation that
#: differs by an ulp rounds, rarely, to the neighbouring bfloat16 (2^-8 apart), which moves a row of the next weight
#: gradient: measured median 6e-8, at most 1.8e-4 over the 200 networks of tests/test_bf16.py; the same networks with
#: unrounded (float32) operands are 1.1e-3 and more away from the emulation, a stale weight twin far more.
BF16_EMULATION_RTOL = 5e-4

HIDDEN = ("identity", "sigmoid", "tanh", "relu", "leaky_relu")

#: Every output activation x loss pair: the canonical ones and the general BP1 form.
PAIRS = (
    ("softmax", "cross_entropy"),
    ("sigmoid", "binary_cross_entropy"),
    ("identity", "squared_error"),
    ("sigmoid", "squared_error"),
    ("tanh", "squared_error"),
    ("relu", "squared_error"),
    ("leaky_relu", "squared_error"),
    ("softmax", "squared_error"),
    ("exp", "poisson"),
    ("exp", "squared_error"),
)

DTYPES = ("float32", "float64")

#: fastbp.torch.MLP against the equivalent torch.nn.Sequential (outputs and gradients, and parameters after 8 steps
#: of SGD, momentum or Adam), relative error: the same products and sums, but OpenBLAS against torch's
#: MKL/oneDNN (different blocking and summation order) and fused epilogues, so a few units in the last place,
#: amplified by depth and training steps. Measured: float32 <= 4e-7, float64 <= 1.5e-15; the issue asks for 1e-5 in
#: float32. A wrong derivative or a missing gradient term fails by orders of magnitude.
TORCH_RTOL = {"float32": 1e-5, "float64": 1e-12}

#: The hidden-layer options (batch norm, layer norm, residual connections) against the same network built from
#: torch.nn modules, float64: loss, gradients, and parameters and running statistics after SGD steps. The same
#: operations in another order (fastbp's shifted one-pass batch variance, fused epilogues, OpenBLAS against torch's
#: BLAS): measured <= 4e-15, except the gradient of the weights under a batch norm over 2 rows, 2.2e-12 (there x_hat
#: is +-sqrt(v / (v + eps)), nearly independent of Z, so that gradient is nearly 0 and its last places are rounding).
#: 1e-10 is the issue's bound, while a wrong term of a normalization's gradient, a missed update of gamma and beta or
#: a biased running variance is off by 1e-3 and more.
TORCH_LAYERS_RTOL = 1e-10


#: The graph engine (fastbp.graph) against the fused kernels and the NumPy reference, float64: the same functions
#: evaluated op by op in another order (and softmax/sigmoid losses through log-softmax or log(sigmoid) instead of the
#: fused forms), ~1e-15 measured on small random MLPs; 1e-10 is the issue's bound, far below any wrong term.
GRAPH_RTOL = 1e-10

#: fastbp.gradcheck's verdict on a correct gradient: the worst per-layer norm-wise error of central differences (eps
#: 1e-5; below the differences' own noise the error is measured against noise / threshold) measured below 6e-8 on
#: 108 small networks; 1e-6 is the issue's bound, while a wrong activation derivative gives 0.13 and more.
GRADCHECK_THRESHOLD = 1e-6

#: A gradient broken on purpose (tanh' written as 1 - A, the L2 term dropped with l2 = 0.1, a layer zeroed, the L2
#: term dropped in float32 only) must show at least this error in the layers it touches: measured 0.18 to 1.2 in these
#: tests (the error is the relative size of what is wrong), four orders of magnitude above GRADCHECK_THRESHOLD.
WRONG_GRADIENT_MIN_ERROR = 1e-2

#: A float32 network's own float32 gradient against the float64 one at the same parameters and data, norm-wise,
#: relative to the size of the summed terms: a few float32 ulps (1.2e-7) amplified by depth and width, below 2e-6
#: measured on random networks up to 784-512-512-10; fastbp.gradcheck's default threshold_float32 is 1e-4, and a
#: float32-only error (a dropped term, a zeroed layer) gives 1e-2 and more.
GRADCHECK_THRESHOLD_FLOAT32 = 1e-4

#: The graph's softmax cross-entropy against the same quantity written directly in NumPy (softmax by exp / sum, the
#: graph by log-sum-exp): the loss agrees to a few ulps (<= 4.4e-16 relative measured over 300 random draws) ...
CLOSED_FORM_LOSS_RTOL = 1e-14
#: ... and the gradient (P - Y) / n to a few ulps of its largest entry 1/n (<= 1.7e-16 absolute over 2000 draws; the
#: entries near 0, where P ~ 1 cancels against the one-hot 1, have relative errors up to 2e-11), so rtol 1e-13 with
#: atol 1e-15. A wrong gradient (a missing 1/n, softmax of the wrong axis) is off by 1e-2 and more.
CLOSED_FORM_GRAD_RTOL = 1e-13
CLOSED_FORM_GRAD_ATOL = 1e-15

#: The same float64 quantity from two code paths that differ only in the order of the products and sums (BP3/BP4
#: re-assembled from reference.deltas against reference.value_and_grad; the trainer's recorded delta norms against
#: reference.deltas): a few ulps, <= 8e-16 relative measured; 1e-12 leaves room, while a missing 1/n, L2 term or a
#: shifted layer is off by 1e-2 and more.
REASSEMBLY_RTOL = 1e-12

#: fastbp diagnose's reported per-layer weight-gradient norms (compiled float64 kernels, 11 layers) against the NumPy
#: reference at the same plain initialisation: <= 3.3e-16 relative measured; the bound 1e-10 allows for rounding that
#: grows with depth, while a wrong initialisation, split or batch changes the norms by orders of magnitude.
DIAGNOSE_RTOL = 1e-10

#: fastbp diagnose's remedies (defaults: 64-64x10-10 sigmoid, SGD(lr=0.1), batch 32, 10 epochs): the plain network
#: does not learn, measured 0.097 to 0.103 test accuracy over seeds 0-15 (chance 0.1); 0.3 is far from learning.
DIAGNOSE_PLAIN_MAX_ACCURACY = 0.3
#: ... and with batch norm or residual connections it does, measured 0.942 to 0.972 (batch norm) and 0.939 to 0.978
#: (residual) over seeds 0-15; a remedy that does not restore the gradient stays near 0.1.
DIAGNOSE_REMEDY_MIN_ACCURACY = 0.9


#: The hidden-layer options (batch norm, layer norm, residual connections, dropout) in the compiled kernels against
#: the NumPy reference and the graph engine (tests/test_layers.py), relative error of gradients, losses, parameters
#: after a step and running statistics: the same operations in another order (statistics and sums in float64 in both,
#: fused epilogues, BLAS blocking), amplified where a normalization is ill-conditioned. Measured on random networks
#: (widths >= 3, up to 6 hidden layers, up to 257 rows): float64 <= 1.3e-12 (2e-16 without normalization); float32
#: within the limits below <= 9e-6 but for rare networks (see FLOAT32_NORM_MAX_DEPTH), 3.5e-7 without normalization.
#: The issue's bounds; a wrong term of a normalization's gradient, a missed residual path or a wrong dropout mask is
#: off by 1e-3 and more.
LAYERS_RTOL = {"float32": 1e-5, "float64": 1e-10}
#: ... those comparisons take normalized layers of at least this width: a layer norm over 1 or 2 features is
#: degenerate (x_hat = 0, or +-sqrt(v / (v + eps))), and a width-1 layer whose output is constant (after such a layer
#: norm, or a dead relu) gives the batch norm above it a column of equal values, normalized rounding: the gradients
#: are then rounding noise (measured up to 6e-7 apart in float64, O(1) in float32). 4 for float32's margin (3: 1.4e-5).
NORM_MIN_WIDTH = 4
#: ... float32 batch norm over this many rows at least: over n rows x_hat^2 sums to n v / (v + eps), so over 2 rows
#: x_hat = +-sqrt(v / (v + eps)) and delta is proportional to 1 - x_hat^2 = eps / (v + eps), a cancellation of x_hat's
#: rounding (float32 kernels and reference 7e-4 apart over 2 rows, 2.3e-4 over 3, 3e-6 over 4); 8 leave room.
BATCH_NORM_MIN_ROWS_FLOAT32 = 8
#: ... and float32 networks with a normalization of at most this many hidden layers: each normalization divides the
#: float32 rounding of Z by its column's (or row's) spread (small after a sigmoid), and deeper networks carry that
#: further: at 4 to 6 hidden layers (widths >= 4) 1 in 100 networks is above 1e-5, up to 1.8e-4, with both float32
#: paths as far from the float64 gradient at the same parameters (float32's limit, not a wrong term; rounding the
#: parameters to float32 moves it by about 1e-6). At up to 3 layers, 1 in 1700 (1.9e-5). float64: every depth.
FLOAT32_NORM_MAX_DEPTH = 3

#: The kept fraction of a dropout layer over 2^20 units against 1 - p, absolute: the mask is a deterministic hash, but
#: as a sample its fraction has the binomial spread sqrt(p (1 - p) / 2^20) <= 4.9e-4; 2e-3 is the issue's 0.2% (four
#: standard deviations and more), while a rate applied as 1 - p, or a hash whose top bits are not uniform, is off by
#: far more.
DROPOUT_KEPT_ATOL = 2e-3
#: ... and two masks of other seeds, steps, layers or rows disagree on about half their units: over 256 units the
#: fraction has the spread 0.031, so (0.3, 0.7) is more than 6 of them either side, while a key that ignores one of
#: its inputs gives 0.
INDEPENDENT_MASKS_DISAGREE = (0.3, 0.7)
#: Two units that share a hash (its two 32-bit halves) are kept together as often as independent units, (1 - p)^2:
#: over 2^18 pairs at p = 0.5 the fraction has the spread 8.5e-4, so 4e-3 is more than 4 of them, while halves that
#: repeat each other give 0.5 (off by 0.25).
PAIRED_UNITS_ATOL = 4e-3

#: What the layer tests require to differ, differs by far: the gradient without the step's dropout masks (measured
#: 0.29 to 1.1 relative), evaluation against the training-mode forward pass (0.48), a normalization's gradient with its
#: mean and variance taken as constants, against central differences (0.97). 1e-2 is far below those and far above
#: LAYERS_RTOL, so these checks show that the equalities they accompany are not vacuous.
LAYERS_MUST_DIFFER = 1e-2


def rel_err(a, b):
    """||a - b|| / ||b|| in float64 (0 when both are 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(b)
    diff = np.linalg.norm(a - b)
    return diff / denom if denom > 0 else diff


def make_batch(net, n, rng, labels=True):
    """A random batch (X, Y) that suits the network's output: class labels (or one-hot) for softmax,
    values in (0, 1) for sigmoid, Poisson counts (zeros included) for exp, standard normal otherwise."""
    X = rng.standard_normal((n, net.n_in))
    if net.output == "softmax":
        y = rng.integers(0, net.n_out, n)
        return X, (y if labels else np.eye(net.n_out)[y])
    if net.output == "sigmoid":
        return X, rng.random((n, net.n_out))
    if net.output == "exp":
        return X, rng.poisson(1.5, (n, net.n_out)).astype(np.float64)
    return X, rng.standard_normal((n, net.n_out))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


#: The failure battery (tests/test_failures.py): each saver is killed after a delay drawn uniformly from [0, this]
#: seconds; a save of its 1.2 MB network takes 3 to 16 ms (median 4 ms), so the kills land at every stage of a save
#: (the first one included) and after a few saves, not always between two saves.
KILL_DELAY_MAX = 0.06
#: ... of its 30 kills at least this many must land inside a write (a temporary file left): measured 19 of 30; fewer
#: than 3 would mean the test no longer exercises an interrupted save.
KILLS_MIDWRITE_MIN = 3

#: The soak (4000 rounds of train_step, value_and_grad and predict after 2500 rounds of warm-up): Python allocations
#: still held at the end, over those at the start (tracemalloc). Measured 0 to a few hundred bytes once the
#: interpreter's free lists are full (they are, after the warm-up: 166 KB of blocks held in them); a leak of one small
#: object per call is 4000 x 3 x 50 bytes = 600 KB and more.
SOAK_TRACED_GROWTH_MAX = 256 * 1024
#: ... and the growth of the resident set (psutil), which also sees NumPy buffers and the compiled code's memory:
#: measured 0 to 200 KB of page-level noise; a leaked batch buffer (32 rows x 64 float32 = 8 KB) per call is
#: 96 MB.
SOAK_RSS_GROWTH_MAX = 8 * 1024 * 1024
