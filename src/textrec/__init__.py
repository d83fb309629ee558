"""textrec: transferable sequential recommendation from item text.

Re-implements UniSRec, VQ-Rec, MISSRec and Recformer (plus the SASRec ID baseline) with one data
pipeline, one full-ranking evaluation and one training loop. See README.md and DESIGN.md.

The results of the commands are library calls (``textrec.api``), re-exported here::

    import textrec
    metrics = textrec.evaluate_run("runs/sasrec").metrics
    top = textrec.recommend("runs/sasrec", user="A1SWWHE1L3XR3V", k=5).recommendations
"""

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate_run", "recommend", "Evaluation", "Recommendations", "load_run", "LoadedRun"]


def __getattr__(name: str):
    """The library calls above, imported on first use so that ``import textrec`` (and ``textrec --version``) stays light."""
    if name in ("evaluate_run", "recommend", "Evaluation", "Recommendations"):
        from textrec import api

        return getattr(api, name)
    if name in ("load_run", "LoadedRun"):
        from textrec import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'textrec' has no attribute {name!r}")
