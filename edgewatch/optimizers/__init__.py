"""Optimizer adapters: preconditioner, learning rate and stability constant from a live optimizer.

Empty until the optimizer-adapter issue lands; the curvature core does not depend on it.
"""
