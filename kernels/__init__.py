"""Triton kernels of torch_geometric_nsa (installed as ``torch_geometric_nsa.kernels``)."""
