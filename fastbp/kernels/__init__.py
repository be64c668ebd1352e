"""Compiled kernels, one module per step of backpropagation.

``activations`` (f and f' from the output) -> ``gemm`` (direct BLAS) -> ``layout`` (views into flat buffers) ->
``forward`` (GEMM + bias/activation epilogue) -> ``loss`` (BP1 fused with the loss) -> ``backward`` (BP2-BP4) ->
``drivers`` (whole passes) -> ``optimizers`` (fused updates) -> ``epoch`` (the training loop); ``boundary`` rebuilds
arrays from the addresses the Python entry points pass, and ``checked`` holds the entry points of the public calls,
which check the common case of their arguments themselves before any work. All kernels are private and trust their
inputs: the Python API, or a checked entry point, validates first.
"""
