"""textrec: transferable sequential recommendation from item text.

Re-implements UniSRec, VQ-Rec, MISSRec and Recformer (plus the SASRec ID baseline) with one data
pipeline, one full-ranking evaluation and one training loop. See README.md and DESIGN.md.
"""

__version__ = "0.1.0"
