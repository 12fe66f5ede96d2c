"""Integrations: the Monitor driven by a trainer's own hooks (Lightning, the Hugging Face Trainer).

Each framework has its own module, which imports the framework when it is imported and names the
extra to install when it is missing::

    from edgewatch.integrations.lightning import EdgewatchCallback      # pip install 'edgewatch[lightning]'
    from edgewatch.integrations.transformers import EdgewatchCallback   # pip install 'edgewatch[transformers]'

This package itself imports no framework. What both callbacks share is in
:mod:`~edgewatch.integrations._adapter`: building the Monitor at train start with the trainer's
global step as its step, following the trainer's step count, turning ``stop_on`` events into a stop request the trainer's own flag carries
out at the next step boundary (never an exception from ``optimizer.step()``), and closing.
"""
