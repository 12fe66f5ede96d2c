"""Probes: what the Monitor measures, each a small function of the model, optimizer and curvature."""
