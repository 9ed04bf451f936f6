"""The gRPC clients of tests/test_oip_grpc.py, each run in its own process: ``tritonclient.grpc``
and the ``kserve`` package register the same protobuf symbols (``duplicate symbol
'inference.ServerLiveRequest'``), so neither may be imported where the other is (and pytest's
process imports ``kserve`` for tests/test_oip_http.py).

``python oip_grpc_clients.py {triton,kserve,infer,repository} ADDRESS MODEL KEY IMAGE...`` runs
that client's calls against a server and prints one JSON object: each answer's outputs as lists
(BYTES as latin-1 strings), and each refused call's gRPC status code and message.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _plain(value: Any) -> Any:
    """An output array as JSON: numbers as lists, BYTES elements as latin-1 strings."""
    array = np.asarray(value)
    if array.dtype == np.object_:
        return np.vectorize(lambda b: b.decode("latin-1"), otypes=[object])(array).tolist()
    return array.tolist()


def triton(address: str, model: str, key: str, images: list[bytes]) -> dict[str, Any]:
    import grpc
    import tritonclient.grpc as tg
    import tritonclient.grpc.aio as tga
    from google.protobuf import json_format
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from tritonclient.utils import InferenceServerException

    auth = {"authorization": f"Bearer {key}"}
    out: dict[str, Any] = {"answers": {}, "errors": {}}
    client = tg.InferenceServerClient(address)

    def tensor(data: list[bytes]) -> Any:
        t = tg.InferInput("image", [len(data)], "BYTES")
        t.set_data_from_numpy(np.array(data, dtype=np.object_))
        return t

    def answer(result: Any) -> dict[str, Any]:
        response = result.get_response()
        return {
            "id": response.id,
            "raw": len(response.raw_output_contents) > 0,
            "outputs": {o.name: _plain(result.as_numpy(o.name)) for o in response.outputs},
        }

    def refused(label: str, call: Any) -> None:
        try:
            call()
        except InferenceServerException as exc:
            out["errors"][label] = [exc.status(), exc.message()]
        else:
            out["errors"][label] = ["OK", ""]

    out["live"] = client.is_server_live()
    out["ready"] = client.is_server_ready()
    out["server_metadata"] = client.get_server_metadata(as_json=True)
    out["model_ready"] = client.is_model_ready(model, headers=auth)
    out["model_metadata"] = client.get_model_metadata(model, headers=auth, as_json=True)
    out["config"] = client.get_model_config(model, headers=auth, as_json=True)
    for i, image in enumerate(images):
        result = client.infer(model, [tensor([image])], headers=auth, request_id=f"sync-{i}")
        out["answers"][f"sync-{i}"] = answer(result)
    out["answers"]["batch"] = answer(client.infer(model, [tensor(images)], headers=auth))
    params = {"score_threshold": "0.5", "masks": "none"}
    out["answers"]["params"] = answer(
        client.infer(model, [tensor(images[:1])], headers=auth, parameters=params)
    )

    async def aio() -> dict[str, Any]:
        async with tga.InferenceServerClient(address) as c:
            t = tga.InferInput("image", [1], "BYTES")
            t.set_data_from_numpy(np.array(images[:1], dtype=np.object_))
            return answer(await c.infer(model, [t], headers=auth, request_id="aio"))

    out["answers"]["aio"] = asyncio.run(aio())

    # typed contents, in and out: the request message built by hand (tritonclient sends raw)
    request = service_pb2.ModelInferRequest(model_name=model, id="typed")
    typed = request.inputs.add(name="image", datatype="BYTES", shape=[1])
    typed.contents.bytes_contents.append(images[0])
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response, call = stub.ModelInfer.with_call(
            request, metadata=[*auth.items(), ("x-request-id", "typed-rid")]
        )
        out["typed"] = json_format.MessageToDict(response, preserving_proto_field_name=True)
        out["typed_trailer"] = dict(call.trailing_metadata())

    out["statistics"] = client.get_inference_statistics(model, headers=auth, as_json=True)
    out["all_statistics"] = client.get_inference_statistics(headers=auth, as_json=True)

    refused("no key", lambda: client.infer(model, [tensor(images[:1])]))
    refused(
        "bad key",
        lambda: client.infer(model, [tensor(images[:1])], headers={"x-api-key": "not-the-key"}),
    )
    refused("unknown model", lambda: client.get_model_config("nope", headers=auth))
    refused("not an image", lambda: client.infer(model, [tensor([b"not an image"])], headers=auth))
    refused(
        "bad parameter",
        lambda: client.infer(
            model, [tensor(images[:1])], headers=auth, parameters={"score_threshold": "high"}
        ),
    )
    many = images * (16 // len(images) + 1)
    refused(
        "deadline",
        lambda: client.infer(model, [tensor(many[:16])], headers=auth, client_timeout=1.0),
    )
    out["live_after"] = client.is_server_live()
    client.close()
    return out


def kserve(address: str, model: str, key: str, images: list[bytes]) -> dict[str, Any]:
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    auth = [("authorization", f"Bearer {key}")]

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {"answers": {}}
        client = InferenceGRPCClient(address, timeout=120)
        out["ready"] = await client.is_server_ready()
        out["model_ready"] = await client.is_model_ready(model, headers=auth)
        for i, image in enumerate(images):
            tensor = InferInput("image", [1], "BYTES", data=[image])
            request = InferRequest(model, [tensor], request_id=f"kserve-{i}")
            response = await client.infer(request, headers=auth)
            out["answers"][f"kserve-{i}"] = {
                "id": response.id,
                "outputs": {o.name: _plain(o.as_numpy()) for o in response.outputs},
            }
        await client.close()
        return out

    return asyncio.run(run())


def infer(address: str, model: str, key: str, images: list[bytes]) -> dict[str, Any]:
    """One call: its status code and its detection counts."""
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    with tg.InferenceServerClient(address) as client:
        t = tg.InferInput("image", [len(images)], "BYTES")
        t.set_data_from_numpy(np.array(images, dtype=np.object_))
        try:
            result = client.infer(model, [t], headers={"x-api-key": key}, client_timeout=120)
        except InferenceServerException as exc:
            return {"status": exc.status(), "message": exc.message()}
        return {"status": "OK", "num_detections": _plain(result.as_numpy("num_detections"))}


def repository(address: str, model: str, key: str, images: list[bytes]) -> dict[str, Any]:
    """Triton's repository calls on ``model`` (tests/test_model_repository.py), each as
    ``{"status", "value"}`` or ``{"status", "message"}``: without a key, then with one: the index,
    unload, load with a ``config`` override (``max_batch_size`` 4) and its configuration after,
    and calls the server must refuse."""
    import grpc
    import tritonclient.grpc as tg
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from tritonclient.utils import InferenceServerException

    auth = {"x-api-key": key}
    out: dict[str, Any] = {}

    def call(label: str, run: Any) -> None:
        try:
            value = run()
        except InferenceServerException as exc:
            out[label] = {"status": str(exc.status()), "message": exc.message()}
        else:
            out[label] = {"status": "OK", "value": value}

    with tg.InferenceServerClient(address) as client:
        call("index no key", lambda: client.get_model_repository_index(as_json=True))
        call("load no key", lambda: client.load_model(model))
        call("unload no key", lambda: client.unload_model(model))
        call("index", lambda: client.get_model_repository_index(headers=auth, as_json=True))
        call("unload", lambda: client.unload_model(model, headers=auth))
        call(
            "index unloaded", lambda: client.get_model_repository_index(headers=auth, as_json=True)
        )
        call("ready unloaded", lambda: client.is_model_ready(model, headers=auth))
        override = json.dumps({"max_batch_size": 4})
        call("load", lambda: client.load_model(model, headers=auth, config=override))
        call("ready loaded", lambda: client.is_model_ready(model, headers=auth))
        call("config", lambda: client.get_model_config(model, headers=auth, as_json=True))
        call("index loaded", lambda: client.get_model_repository_index(headers=auth, as_json=True))
        call("load unknown", lambda: client.load_model("no-such-model", headers=auth))
        call("load bad config", lambda: client.load_model(model, headers=auth, config="{oops"))
        files = {"file:1/model.pt": b"weights"}
        call("load file", lambda: client.load_model(model, headers=auth, config="{}", files=files))
    # a repository by name (tritonclient never names one)
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.RepositoryIndexRequest(repository_name="other")
        try:
            stub.RepositoryIndex(request, metadata=list(auth.items()))
        except grpc.RpcError as exc:
            out["index other"] = {"status": str(exc.code()), "message": exc.details()}
    return out


if __name__ == "__main__":
    which, address, model, key, *paths = sys.argv[1:]
    run = {"triton": triton, "kserve": kserve, "infer": infer, "repository": repository}[which]
    print(json.dumps(run(address, model, key, [Path(p).read_bytes() for p in paths])))
