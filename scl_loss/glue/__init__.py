"""Reference fine-tuning script for the GLUE protocol of Gunel et al. (2020).

Optional: install with ``pip install scl-loss[glue]`` (transformers, datasets, scikit-learn,
tqdm, matplotlib). The core package never imports this subpackage. Entry points: the
``scl-glue`` command and ``python -m scl_loss.glue``; see ``docs/glue.md``.
"""
