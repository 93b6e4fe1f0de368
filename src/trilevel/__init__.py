"""trilevel: faster Vision Transformer training by removing redundant data at three nested levels.

Training examples (forgetting-based example selection), patch tokens ([CLS]-attention top-k token
pruning) and attention connections (per-query top-k connection masks), after Kong et al.,
"Peeling the Onion: Hierarchical Reduction of Data Redundancy for Efficient Vision Transformer
Training", AAAI 2023 (arXiv 2211.10801).
"""

__version__ = "0.1.0"
