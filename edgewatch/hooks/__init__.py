"""The Monitor, its probes and event detectors.

Empty until the Monitor issue lands; the curvature core does not depend on it.
"""
