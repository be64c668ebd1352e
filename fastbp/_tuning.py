"""Tuning constants of the Python layer, in one place, each with its reason. (The kernels' own constants live
beside the code they shape; changing one of these recompiles nothing.)"""

#: Rows the network's workspace holds at least when ``predict`` or ``evaluate`` run over a large data set in chunks:
#: enough rows that each chunk's GEMMs run near the BLAS's speed, few enough that the workspace stays a few MB for
#: the networks of the benchmarks.
CHUNK_ROWS = 1024

#: Rows spread evenly over the training data on which the reference loss of the divergence check is computed (the
#: check stops training when a batch loss exceeds ``divergence_factor`` times it): enough for a stable mean, and a
#: cost of a few training steps at the start of ``fit``.
DIVERGENCE_REFERENCE_ROWS = 1024

#: Rows of the fixed probe batch on which ``Trainer(record_deltas=True)`` measures each layer's delta after every
#: epoch, by the NumPy reference: a stable norm for the cost of a few training steps per epoch.
PROBE_ROWS = 256

#: Timed forward passes of each kind when the PyTorch bridge chooses, once per batch size, between fastbp's BLAS on
#: the calling thread and torch's BLAS on torch's threads: the minimum of 3 is stable against one disturbed pass,
#: and 6 passes are a small part of the first training step.
CALIBRATION_ROUNDS = 3

#: Elements per block when an input is tested for NaN and infinity (``np.isfinite`` block by block): its boolean
#: temporary stays at 1 MB whatever the data size, and the Python loop costs a few microseconds per million values.
FINITE_BLOCK = 1 << 20

#: Largest workspace (bytes) the PyTorch bridge keeps in its pool for the next pass: the workspaces of training batches
#: are reused without a new allocation per step, and one of a very large batch (a whole test set evaluated at once)
#: is freed with its pass, as PyTorch frees its activations; allocating a larger one again costs its page faults, a
#: few percent of the passes that fill it.
BRIDGE_POOL_BYTES = 64 << 20
