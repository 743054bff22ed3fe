"""Multi-step workflows composed from medmtl's public API (:mod:`medmtl.api`) only.

Run them as modules, e.g. ``python -m pipelines.demo`` or
``torchrun --nproc_per_node 2 -m pipelines.batch_inference ...``; the library never imports
this package.
"""
