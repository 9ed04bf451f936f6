"""What one app holds: its settings, the models its routes call (a data plane per loaded model
version), its metrics and its keys."""

from __future__ import annotations

from dataclasses import dataclass

from maskrt.runtime.models import ModelSet
from maskrt.server.metrics import Metrics
from maskrt.server.security import ApiKeys
from maskrt.server.settings import Settings


@dataclass
class AppState:
    settings: Settings
    models: ModelSet
    metrics: Metrics  # the planes' statistics, exported, and the requests' own metrics
    keys: ApiKeys
