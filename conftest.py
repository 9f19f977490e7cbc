"""Repository-level pytest set-up (kept out of the package, so the wheel ships no test code).

``--doctest-modules`` imports every module under ``scl_loss/``; the optional subpackages need
their extras (``[glue]``, ``[st]``), so without the library a module imports it is not collected.
"""

import importlib.util


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


collect_ignore_glob = []
if _missing("transformers"):
    collect_ignore_glob += ["scl_loss/glue/*.py", "scl_loss/integrations/*.py"]
if _missing("sentence_transformers"):
    collect_ignore_glob += ["scl_loss/integrations/sentence_transformers.py", "docs/sentence-transformers.md"]
if _missing("setfit"):
    collect_ignore_glob += ["scl_loss/integrations/setfit.py"]
