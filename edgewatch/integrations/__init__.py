"""Integrations: the Monitor driven by a trainer's own hooks (Lightning, the Hugging Face Trainer).

Each framework has its own module, which imports the framework when it is imported and names the
extra to install when it is missing::

    from edgewatch.integrations.lightning import EdgewatchCallback      # pip install 'edgewatch[lightning]'
    from edgewatch.integrations.transformers import EdgewatchCallback   # pip install 'edgewatch[transformers]'

Both take the same arguments, ``EdgewatchCallback(probe, loss_fn=None, *, stop_on=(),
trainer_loggers=True, **monitor_kwargs)``; without ``loss_fn`` the loss is the trainer's own
(``training_step``'s for Lightning, ``model(**batch).loss`` for Hugging Face). Both send the
metrics through the trainer's own loggers, named ``edgewatch/<name>`` (Lightning's
``trainer.loggers``; the Hugging Face Trainer's logs, so every ``report_to`` integration), and
write the JSONL run directory under the trainer's root: ``<default_root_dir>/edgewatch_runs/<time>``
or ``<output_dir>/edgewatch_runs/<time>``.

This package itself imports no framework. What both callbacks share is in
:mod:`~edgewatch.integrations._adapter`: building the Monitor at train start with the trainer's
global step as its step, following the trainer's step count, turning ``stop_on`` events into a stop request the trainer's own flag carries
out at the next step boundary (never an exception from ``optimizer.step()``), and closing.
"""
