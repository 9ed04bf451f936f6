"""A model repository set in the environment (``MASKRT_MODEL_REPOSITORY``, as the Docker Compose
file and the Kubernetes manifests set it): each version's options are the server's with the
version's model, and the repository's own settings left out, whatever the environment holds."""

from __future__ import annotations

import shutil

from maskrt.runtime.repository import options_for, scan
from maskrt.server.settings import Settings


def test_version_options_ignore_the_repository_settings_of_the_environment(
    monkeypatch, tmp_path, checkpoint
):
    (tmp_path / "a" / "2").mkdir(parents=True)
    shutil.copy(checkpoint, tmp_path / "a" / "2" / "model.pt")
    monkeypatch.setenv("MASKRT_MODEL_REPOSITORY", str(tmp_path))
    monkeypatch.setenv("MASKRT_REPOSITORY_POLL_S", "5")
    monkeypatch.setenv("MASKRT_DEFAULT_MODEL", "a")
    monkeypatch.setenv("MASKRT_MAX_BATCH", "3")
    server = Settings()
    options = options_for(server, scan(server.model_repository)["a"], 2)
    assert (options.model, options.model_name, options.model_version) == (
        str(tmp_path / "a" / "2" / "model.pt"),
        "a",
        2,
    )
    assert options.model_repository is None and options.repository_poll_s == 0
    assert options.default_model is None
    assert options.max_batch == 3  # the server's settings still apply
