"""The bounds of ``/v2`` request parsing, in process: the JSON pre-scan (depth, elements, strings
skipped), the JSON header and its length, gzip members, parameter keys and message length; and a
sweep of the parsers with hypothesis-generated bodies and headers, which must end in an
:class:`~maskrt.server.errors.ApiError` with a 4xx status (or a parsed request), never anything
else. Then, against a real ``maskrt serve``: the attacks of ``maskrt bench resilience`` (each its
4xx while ``/healthz`` answers), the same sweep over HTTP (a 4xx JSON error and no ERROR line in
the log, ever), the content-type rule and its setting, the body rate, proxies and ``Host``."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import socket
import zlib

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_harness import HOST, png, shapes_image, start_server

from maskrt.bench.body_attacks import JSON as JSON_TYPE
from maskrt.bench.body_attacks import body_attacks, forwarded_for_believed, host_reflected, send
from maskrt.bench.resilience import error_lines
from maskrt.server import bounded_json
from maskrt.server.errors import MAX_MESSAGE_CHARS, ApiError
from maskrt.server.oip import (
    MAX_JSON_DEPTH,
    MAX_JSON_ELEMENTS,
    MAX_JSON_HEADER_BYTES,
    MAX_PARAMETERS,
    decompress,
    json_inspector,
    parse_infer_request,
)
from maskrt.server.parsing import parse_params

IMAGE = base64.b64encode(b"\x89PNG not really").decode()


def request(**fields) -> dict:
    spec = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [IMAGE]}
    return {"inputs": [spec], **fields}


def scanner(depth: int, elements: int) -> bounded_json.Scanner:
    return bounded_json.Scanner(max_depth=depth, max_elements=elements)


def refused(body: bytes, header: str | None = None, max_images: int = 8) -> ApiError:
    with pytest.raises(ApiError) as err:
        parse_infer_request(body, header, max_images=max_images)
    return err.value


# ---------------------------------------------------------------------------------------------
# The pre-scan


@pytest.mark.parametrize(
    ("text", "elements", "depth"),
    [
        ('{"a": [1, 2, 3], "b": {"c": null}}', 6, 2),
        ('["[[[[", "{{{", ",,,,", ":::"]', 4, 1),  # structure inside strings is skipped
        (r'["a\"[[[", "b\\", "[\\\"]"]', 3, 1),  # escaped quotes end no string
        ("[[[[]]]]", 4, 4),
        ('[7, "]"]', 2, 1),
    ],
)
def test_prescan_counts_what_is_outside_strings(text, elements, depth):
    data = text.encode()
    assert bounded_json.loads(data, scanner(depth, elements)) == json.loads(text)
    with pytest.raises(bounded_json.JsonRefused, match="elements"):
        scanner(depth, elements - 1).feed(data)
    with pytest.raises(bounded_json.JsonRefused, match="deeper than"):
        scanner(depth - 1, elements).feed(data)
    pieces = scanner(depth, elements)  # fed a byte at a time, the counts are the same
    for i in range(len(data)):
        pieces.feed(data[i : i + 1])
    assert (pieces.depth, pieces.elements, pieces.in_string) == (0, elements, False)


def test_prescan_skips_long_strings_across_windows():
    text = json.dumps({"data": ["[" * 3_000_000, "x" * 2_500_000]})
    assert len(bounded_json.loads(text.encode(), scanner(2, 3))["data"]) == 2


# ---------------------------------------------------------------------------------------------
# The request's bounds


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[" * 950 + b"]" * 950, f"nested deeper than {MAX_JSON_DEPTH} levels"),
        (b"[" * 100_000, f"nested deeper than {MAX_JSON_DEPTH} levels"),
        (b"[" + b"[]," * 7_000_000 + b"[]]", "elements"),
        (json.dumps({"parameters": {str(i): 0 for i in range(20_000)}}).encode(), "elements"),
        (json.dumps(request(parameters={"k" * 9 + str(i): 0 for i in range(100)})).encode(), ""),
        (b'{"inputs": NaN}', "not valid JSON"),
        (b"]" * 1_000_000, "closes nothing"),  # tokens that count no element stop the scan too
        (b'"" ' * 1_000_000, "elements"),
        (b":" * 1_000_000, "elements"),
    ],
)
def test_json_bounds(body, message):
    err = refused(body)
    assert err.status == 400 and message in err.message
    assert len(err.message) <= MAX_MESSAGE_CHARS


def test_elements_grow_with_the_image_limit():
    count = 2 * MAX_JSON_ELEMENTS
    doc = request()
    doc["inputs"][0].update(shape=[count], data=[IMAGE] * count)
    body = json.dumps(doc).encode()
    assert "elements" in refused(body, max_images=8).message
    assert len(parse_infer_request(body, None, max_images=count).images) == count


@pytest.mark.parametrize(
    "value", ["²", "١٢", "12a", "-1", "1" * 20, str(MAX_JSON_HEADER_BYTES + 1)]
)
def test_header_length_must_be_a_small_ascii_byte_count(value):
    err = refused(b"{}" * 100, value)
    assert err.status == 400 and "Inference-Header-Content-Length" in err.message


def test_too_many_parameter_keys_is_one_short_refusal():
    doc = request(parameters={f"unknown_{i}": "x" * 1000 for i in range(MAX_PARAMETERS + 1)})
    err = refused(json.dumps(doc).encode())
    assert err.status == 400 and f"at most {MAX_PARAMETERS}" in err.message


def test_unknown_parameters_name_the_first_one_only():
    params = [(f"unknown_{i}", "x" * 10_000) for i in range(MAX_PARAMETERS)]
    with pytest.raises(ApiError, match="unknown parameter 'unknown_0'") as err:
        parse_params(params)
    assert err.value.status == 422 and len(err.value.message) < 200


def test_a_huge_bad_value_is_quoted_short():
    with pytest.raises(ApiError, match="score_threshold") as err:
        parse_params([("score_threshold", "9" * 100_000 + "x")])
    assert err.value.status == 422 and len(err.value.message) < 400
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ApiError, match=r"\[\[\[\.\.\.\]\]\]"):
        parse_params([("max_detections", deep)])


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_bytes_after_the_compressed_stream_are_refused(algorithm):
    body = json.dumps(request()).encode()
    packed = gzip.compress(body) if algorithm == "gzip" else zlib.compress(body)
    for extra in (packed, b"trailing"):
        with pytest.raises(ApiError, match="after its end") as err:
            decompress(packed + extra, algorithm, limit=len(body))
        assert err.value.status == 400
    assert decompress(packed, algorithm, limit=len(body)) == body


def test_an_inflating_body_is_refused_at_its_first_piece():
    bomb = gzip.compress(b"[" + b"[]," * 7_000_000 + b"[]]")
    inspect = json_inspector(None, max_images=8)
    pieces: list[int] = []

    def counting(piece: bytes) -> None:
        pieces.append(len(piece))
        inspect(piece)

    with pytest.raises(ApiError, match="elements") as err:
        decompress(bomb, "gzip", limit=30_000_000, inspect=counting)
    assert err.value.status == 400 and len(pieces) == 1 and pieces[0] < 30_000_000


def test_only_the_json_header_is_inspected():
    header = json.dumps(request()).encode()
    binary = b"[[[[,,,,{{{{" * 500_000  # image bytes: no JSON, whatever they hold
    body = header + binary
    inspect = json_inspector(str(len(header)), max_images=8)
    assert decompress(gzip.compress(body), "gzip", limit=len(body), inspect=inspect) == body


def test_messages_are_capped():
    err = ApiError(400, "invalid_request", "x" * 100_000)
    assert len(err.message) == MAX_MESSAGE_CHARS and err.message.endswith("...")


# ---------------------------------------------------------------------------------------------
# The sweep: whatever the body and headers, a request or a 4xx ApiError

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=30,
)
_KEYS = st.sampled_from(["inputs", "outputs", "parameters", "id", "name", "data", "shape"])
_PLAUSIBLE = st.fixed_dictionaries(
    {
        "inputs": st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["image", "x", ""]) | _JSON,
                    "datatype": st.sampled_from(["BYTES", "UINT8"]) | _JSON,
                    "shape": st.lists(st.integers(-2, 10), max_size=3) | _JSON,
                    "data": st.lists(st.sampled_from([IMAGE, "%%", ""]) | _JSON, max_size=3),
                    "parameters": st.dictionaries(
                        st.sampled_from(["binary_data_size", "x"]), st.integers(-5, 50) | _JSON
                    ),
                }
            ),
            max_size=2,
        )
        | _JSON,
    },
    optional={
        "outputs": st.lists(st.dictionaries(st.sampled_from(["name", "parameters"]), _JSON))
        | _JSON,
        "parameters": st.dictionaries(
            st.sampled_from(["score_threshold", "max_detections", "masks", "binary_data_output"])
            | st.text(max_size=5),
            _JSON,
        ),
        "id": _JSON,
    },
)
BODIES = (
    st.binary(max_size=300)
    | _JSON.map(lambda v: json.dumps(v).encode())
    | _PLAUSIBLE.map(lambda v: json.dumps(v).encode())
    | st.dictionaries(_KEYS, _JSON).map(lambda v: json.dumps(v).encode())
    | st.integers(0, 2000).map(lambda n: b"[" * n + b"]" * n)
)
HEADER_LENGTHS = st.none() | st.text(max_size=8) | st.integers(-5, 400).map(str)
ENCODINGS = st.sampled_from([None, "identity", "gzip", "deflate", "br", "GZIP ", ""])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=BODIES,
    header=HEADER_LENGTHS,
    encoding=ENCODINGS,
    compress=st.booleans(),
    tail=st.binary(max_size=8),
)
def test_the_parsers_answer_any_body_with_a_request_or_a_4xx(
    body, header, encoding, compress, tail
):
    if compress and encoding in ("gzip", "deflate"):
        body = (gzip.compress(body) if encoding == "gzip" else zlib.compress(body)) + tail
    try:
        inflated = decompress(body, encoding, limit=1 << 20)
        parsed = parse_infer_request(inflated, header, max_images=4)
        params = parse_params(list(parsed.parameters.items()))
        parsed.selected_outputs(masks=params.masks == "rle")
    except ApiError as exc:
        assert 400 <= exc.status < 500, exc.message
        assert exc.message and len(exc.message) <= MAX_MESSAGE_CHARS


# ---------------------------------------------------------------------------------------------
# Over HTTP, against a real server: the attacks of `maskrt bench resilience`, the sweep, the body
# rate, proxies and Host

MAX_UPLOAD = 4_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint):
    srv = start_server(
        tmp_path_factory,
        "v2-bounds",
        {
            "model": checkpoint,
            "backend": "torch",
            "max_upload_bytes": MAX_UPLOAD,
            "max_queue": 4,
            "header_timeout_s": 2,
            "min_body_rate": 2000,
        },
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def name(server) -> str:
    with server.client() as c:
        return c.get("/v1/model").json()["name"]


def assert_clean_log(server) -> None:
    server.log()  # flushes the log file
    assert error_lines(server.log_path) == [], server.log()


@pytest.mark.slow
def test_hostile_bodies_get_their_4xx_while_healthz_answers(server, name):
    """Each attack of the bench, several at once, while /healthz is asked in a loop: every one
    gets its documented 4xx, a short one, and /healthz keeps answering (how fast is the bench's
    to say)."""
    attacks = body_attacks(name, MAX_UPLOAD)

    async def run() -> tuple[list[tuple[int | str, int]], list[int]]:
        done = asyncio.Event()
        healthz: list[int] = []

        async def poll(http: httpx.AsyncClient) -> None:
            while not done.is_set():
                healthz.append((await http.get("/healthz")).status_code)
                await asyncio.sleep(0.01)

        async def hostile(http: httpx.AsyncClient) -> list[tuple[int | str, int]]:
            answers = await asyncio.gather(*(send(http, a) for a in attacks for _ in range(2)))
            done.set()
            return answers

        async with (
            httpx.AsyncClient(base_url=server.url, timeout=120, trust_env=False) as probe,
            httpx.AsyncClient(base_url=server.url, timeout=120, trust_env=False) as http,
        ):
            _, answers = await asyncio.gather(poll(probe), hostile(http))
        return answers, healthz

    answers, healthz = asyncio.run(run())
    expected = [a.expect for a in attacks for _ in range(2)]
    assert [s in e for (s, _), e in zip(answers, expected)] == [True] * len(answers), answers
    assert max(size for _, size in answers) < 2000
    assert healthz and set(healthz) == {200}
    assert_clean_log(server)


@pytest.mark.slow
def test_json_needs_its_content_type(server, name):
    doc = json.dumps(request()).encode()
    with server.client() as c:
        for headers in (
            {},
            {"Content-Type": "text/plain"},
            {"Content-Type": "application/x-www-form-urlencoded"},  # what curl -d sends
            {"Content-Type": "multipart/form-data"},
        ):
            r = c.post(f"/v2/models/{name}/infer", content=doc, headers=headers)
            assert r.status_code == 415, r.text
            assert "'Content-Type: application/json'" in r.json()["error"]
        r = c.post(f"/v2/models/{name}/infer", content=doc, headers=dict(JSON_TYPE))
        assert r.status_code == 400 and "image[0]" in r.json()["error"]  # parsed: not an image


@pytest.mark.slow
def test_settings_for_a_trusted_network(tmp_path_factory, checkpoint):
    """V2_ANY_CONTENT_TYPE takes JSON as a form; FORWARDED_ALLOW_IPS believes its proxy."""
    srv = start_server(
        tmp_path_factory,
        "v2-trusted",
        {
            "model": checkpoint,
            "backend": "torch",
            "v2_any_content_type": "true",
            "forwarded_allow_ips": "127.0.0.1",
        },
    )
    try:
        with srv.client() as c:
            model = c.get("/v1/model").json()["name"]
            image = base64.b64encode(png(shapes_image())).decode()
            doc = request()
            doc["inputs"][0]["data"] = [image]
            r = c.post(
                f"/v2/models/{model}/infer",
                content=json.dumps(doc),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["name"] == "num_detections"
        assert forwarded_for_believed(srv.url, srv.log_path)
    finally:
        srv.stop()


@pytest.mark.slow
def test_a_trickled_body_gets_408_and_the_connection_closes(server, name):
    doc = json.dumps(request()).encode()
    with socket.create_connection((HOST, server.port), timeout=30) as sock:
        head = (
            f"POST /v2/models/{name}/infer HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(doc)}\r\n\r\n"
        )
        sock.sendall(head.encode())
        sock.settimeout(0.3)
        answer = b""
        for byte in doc:  # a byte every 0.3 s: under MIN_BODY_RATE once HEADER_TIMEOUT_S is over
            try:  # waiting for the answer in between, so that no byte is sent after it
                answer += sock.recv(4096)
            except TimeoutError:
                sock.send(bytes([byte]))
                continue
            if b"\r\n\r\n" in answer:
                break
        status, body = answer.split(b" ", 2)[1], answer.partition(b"\r\n\r\n")[2]
        assert status == b"408", answer
        assert b"connection: close" in answer.lower()
        sock.settimeout(10)
        while chunk := sock.recv(4096):  # the server closes the connection
            body += chunk
        assert json.loads(body)["error"].startswith("the request body came slower than 2000")
    assert_clean_log(server)


@pytest.mark.slow
def test_forwarded_for_from_an_unconfigured_peer_is_not_believed(server):
    assert not forwarded_for_believed(server.url, server.log_path)
    assert '"client": "127.0.0.1"' in server.log() or '"client":"127.0.0.1"' in server.log()


@pytest.mark.slow
def test_no_redirect_reflects_the_host_header(server):
    status, reflected = host_reflected(server.url)
    assert (status, reflected) == (404, False)


# what HTTP lets a header value hold (visible ASCII, spaces inside, bytes >= 0x80): anything
# else is the connection's 400 invalid_http, before the app
_HEADER_VALUES = st.binary(max_size=12).map(
    lambda b: bytes(c for c in b if 0x20 <= c < 0x7F or c >= 0x80).strip()
)


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    body=BODIES,
    header=st.none() | _HEADER_VALUES | st.sampled_from([b"0", b"2", "²".encode(), b"99999999"]),
    content_type=st.sampled_from([b"application/json", b"text/plain", b""]) | _HEADER_VALUES,
    encoding=st.none() | st.sampled_from([b"gzip", b"deflate", b"br"]) | _HEADER_VALUES,
    compress=st.booleans(),
)
def test_any_body_and_headers_get_a_4xx_json_error_and_no_error_line(
    server, name, body, header, content_type, encoding, compress
):
    if compress and encoding in (b"gzip", b"deflate"):
        body = gzip.compress(body) if encoding == b"gzip" else zlib.compress(body)
    headers = {b"content-type": content_type}
    if header is not None:
        headers[b"inference-header-content-length"] = header
    if encoding is not None:
        headers[b"content-encoding"] = encoding
    with server.client() as c:
        r = c.post(f"/v2/models/{name}/infer", content=body, headers=headers)
    assert 400 <= r.status_code < 500, r.text
    assert isinstance(r.json()["error"], str) and "Traceback" not in r.text
    assert_clean_log(server)
