"""Loggers: JSONL run directory (default), W&B, TensorBoard, MLflow, stdout.

Empty until the loggers issue lands; the curvature core does not depend on it.
"""
