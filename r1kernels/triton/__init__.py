"""Triton kernels for CUDA tensors, registered on the `r1kernels::` ops for the CUDA dispatch key.

Importing this package registers them; it is imported by r1kernels when triton is installed.
"""
