"""Repository-level pytest set-up (kept out of the package, so the wheel ships no test code).

``--doctest-modules`` imports every module under ``scl_loss/``; the optional subpackages need
the ``[glue]`` extra, so without ``transformers`` their modules are not collected.
"""

import importlib.util

collect_ignore_glob = (
    [] if importlib.util.find_spec("transformers") else ["scl_loss/glue/*.py", "scl_loss/integrations/*.py"]
)
