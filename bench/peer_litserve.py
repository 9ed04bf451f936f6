"""The LitServe peer of ``maskrt bench peers`` (needs ``pip install 'maskrt[bench]'``).

Its own module because LitServe pickles the API object into its inference worker process, so the
class must be importable by name.
"""

from __future__ import annotations

import litserve as ls
import torch

from maskrt.bench.eager_model import EagerModel


class MaskRCNNAPI(ls.LitAPI):
    """The eager torchvision model behind LitServe's dynamic batching; loaded in the worker."""

    def __init__(self, model_args: dict, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model_args = model_args

    def setup(self, device: str) -> None:
        self.model = EagerModel(**self.model_args)

    def decode_request(self, request) -> torch.Tensor:
        return self.model.decode(request["image"].file.read())

    def batch(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(inputs)  # images of any size: torchvision's transform batches them

    def predict(self, images: list[torch.Tensor] | torch.Tensor) -> list[dict] | dict:
        if isinstance(images, torch.Tensor):  # max_batch_size 1: LitServe does not batch
            return self.model.predict([images])[0]
        return self.model.predict(images)

    def unbatch(self, output: list[dict]) -> list[dict]:
        return output

    def encode_response(self, output: dict) -> dict:
        return output


def serve(model_args: dict, port: int, max_batch: int, timeout_s: float) -> None:
    api = MaskRCNNAPI(model_args, max_batch_size=max_batch, batch_timeout=timeout_s)
    accelerator = "cuda" if model_args["device"].startswith("cuda") else "cpu"
    ls.LitServer(api, accelerator=accelerator, workers_per_device=1).run(
        host="127.0.0.1", port=port, log_level="warning", generate_client_file=False
    )
