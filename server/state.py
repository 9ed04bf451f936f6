"""What one app holds: its settings, the data plane its routes call, its metrics and its keys."""

from __future__ import annotations

from dataclasses import dataclass

from maskrt.runtime.dataplane import DataPlane
from maskrt.server.metrics import Metrics
from maskrt.server.security import ApiKeys
from maskrt.server.settings import Settings


@dataclass
class AppState:
    settings: Settings
    plane: DataPlane
    metrics: Metrics  # the plane's statistics, exported, and the requests' own metrics
    keys: ApiKeys
