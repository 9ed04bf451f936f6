"""maskrt: Mask R-CNN instance segmentation served fast.

The code lives in sibling top-level folders (``model/``, ``export/``, ``plugins/``, ``server/``,
``bench/``) that install as ``maskrt.model``, ``maskrt.export`` and so on.
"""

__version__ = "0.1.0"
