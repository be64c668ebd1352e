"""Compiled kernels, one module per step of backpropagation.

``activations`` (f and f' from the output) -> ``gemm`` (direct BLAS) -> ``layout`` (views into flat buffers) ->
``forward`` (GEMM + bias/activation epilogue) -> ``loss`` (BP1 fused with the loss) -> ``backward`` (BP2-BP4) ->
``drivers`` (whole passes). All kernels are private and trust their inputs: the Python API validates first.
"""
