"""The app's routes, one :class:`fastapi.APIRouter` per group; ``create_app`` includes them.

A new group is a new module here with its own ``router``, reading the app's state through
``Depends(get_state)`` (:mod:`maskrt.server.dependencies`) and inference through
:func:`maskrt.server.inference.infer_request`.
"""
