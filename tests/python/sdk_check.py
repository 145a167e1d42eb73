"""Drives a running krouter with the official `openai` and `anthropic` Python SDKs.

Run by tests/tests/e2e/sdk.rs with the venv from .ci/python-env, against krouter in front of
the mock upstream (tests/src/upstream.rs), which always answers
`Hello from the krouter demo upstream (model MODEL).` with 11 input and 7 output tokens.

Environment:
  KROUTER_BASE_URL                 krouter, e.g. http://127.0.0.1:40123 (no /v1)
  KROUTER_KEY                      a valid krouter API key
  KROUTER_WRONG_KEY                a well-formed key krouter does not know
  KROUTER_OPENAI_MODEL             a route to an OpenAI-compatible provider
  KROUTER_OPENAI_UPSTREAM          the upstream model that route targets
  KROUTER_ANTHROPIC_MODEL          a route to an Anthropic provider
  KROUTER_ANTHROPIC_UPSTREAM       the upstream model that route targets

and routes `openai-fail-<status>` / `anthropic-fail-<status>` (400, 429, 500) to the mock's
failing models `fail-<status>` on the same two providers, and `openai-stream-cut` to the
mock's `stream-cut` (a stream aborted after its first content).

Arguments, if any, name the check functions to run; without any, every check in CHECKS
runs (not those in KNOWN_BUGS, which run only when named).

Prints `ok: <check>` per check and `sdk_check: all N checks passed` at the end; on the
first failure prints `FAIL: <check>: <why>` to stderr and exits 1. No connection is allowed
anywhere but KROUTER_BASE_URL (an audit hook refuses the rest), so an SDK that phones home
fails the run.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import traceback
import urllib.parse
from typing import Any, Callable

BASE = os.environ["KROUTER_BASE_URL"].rstrip("/")
KEY = os.environ["KROUTER_KEY"]
WRONG_KEY = os.environ["KROUTER_WRONG_KEY"]
OPENAI_MODEL = os.environ["KROUTER_OPENAI_MODEL"]
OPENAI_UPSTREAM = os.environ["KROUTER_OPENAI_UPSTREAM"]
ANTHROPIC_MODEL = os.environ["KROUTER_ANTHROPIC_MODEL"]
ANTHROPIC_UPSTREAM = os.environ["KROUTER_ANTHROPIC_UPSTREAM"]
UNKNOWN_MODEL = "no-such-route"
# What the mock puts in its 500 bodies; krouter must not relay it.
INTERNAL_DETAIL = "UPSTREAM-INTERNAL-DETAIL"
PROMPT = "Say hello."


def _only_the_base_url() -> None:
    """Refuses every connection and name lookup other than krouter's address."""
    url = urllib.parse.urlsplit(BASE)
    host, port = url.hostname, url.port
    allowed = {
        (info[4][0], info[4][1])
        for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    }

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.connect":
            address = args[1]
            if isinstance(address, tuple) and (address[0], address[1]) not in allowed:
                raise PermissionError(f"sdk_check: connection to {address!r} refused")
        elif event == "socket.getaddrinfo":
            if args[0] not in (host, None):
                raise PermissionError(f"sdk_check: name lookup of {args[0]!r} refused")

    sys.addaudithook(hook)


_only_the_base_url()
_IMPORTING = time.monotonic()

import anthropic  # noqa: E402  (after the hook, so imports cannot connect either)
import openai  # noqa: E402


class CheckFailed(Exception):
    pass


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


def expect_eq(got: Any, want: Any, what: str) -> None:
    if got != want:
        raise CheckFailed(f"{what}: got {got!r}, want {want!r}")


def sentence(model: str) -> str:
    return f"Hello from the krouter demo upstream (model {model})."


def expect_request_id(value: str | None, what: str) -> None:
    expect(
        isinstance(value, str) and value.startswith("req_"),
        f"{what}: request id {value!r} does not start with req_",
    )


oai = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=30)
ant = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0, timeout=30)
OAI_TEXT = sentence(OPENAI_UPSTREAM)
ANT_TEXT = sentence(ANTHROPIC_UPSTREAM)
CHAT = [{"role": "user", "content": PROMPT}]


# --- OpenAI ------------------------------------------------------------------------------


def openai_chat() -> None:
    completion = oai.chat.completions.create(model=OPENAI_MODEL, messages=CHAT)
    expect_eq(completion.object, "chat.completion", "object")
    expect_eq(len(completion.choices), 1, "choices")
    expect_eq(completion.choices[0].message.content, OAI_TEXT, "text")
    expect_eq(completion.choices[0].finish_reason, "stop", "finish_reason")
    expect(completion.usage is not None, "usage is missing")
    expect_eq(completion.usage.prompt_tokens, 11, "usage.prompt_tokens")
    expect_eq(completion.usage.completion_tokens, 7, "usage.completion_tokens")
    expect_eq(completion.usage.total_tokens, 18, "usage.total_tokens")
    expect_request_id(completion._request_id, "completion._request_id")


def openai_chat_stream() -> None:
    pieces: list[str] = []
    usages = []
    finish = None
    stream = oai.chat.completions.create(
        model=OPENAI_MODEL,
        messages=CHAT,
        stream=True,
        stream_options={"include_usage": True},
    )
    with stream:
        for chunk in stream:
            expect_eq(chunk.object, "chat.completion.chunk", "chunk.object")
            if chunk.usage is not None:
                usages.append(chunk.usage)
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                if choice.finish_reason:
                    finish = choice.finish_reason
    expect(len(pieces) > 1, f"expected several deltas, got {pieces!r}")
    expect_eq("".join(pieces), OAI_TEXT, "streamed text")
    expect_eq(finish, "stop", "finish_reason")
    expect_eq(len(usages), 1, "chunks with usage")
    expect_eq(usages[0].prompt_tokens, 11, "usage.prompt_tokens")
    expect_eq(usages[0].completion_tokens, 7, "usage.completion_tokens")


def openai_stream_failure() -> None:
    pieces: list[str] = []
    try:
        stream = oai.chat.completions.create(
            model="openai-stream-cut", messages=CHAT, stream=True
        )
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
    except openai.APIStatusError as error:
        raise CheckFailed(f"got a status error ({error.status_code}), want a stream error") from error
    except openai.APIError as error:
        expect("failed part-way" in str(error), f"error message: {error}")
        expect(len(pieces) > 0, "no content before the error")
        return
    raise CheckFailed(f"the cut stream ended silently after {pieces!r}")


def openai_embeddings() -> None:
    # The SDK asks for base64 unless told otherwise; try both encodings.
    for kwargs in ({}, {"encoding_format": "float"}):
        reply = oai.embeddings.create(model=OPENAI_MODEL, input=["one", "two"], **kwargs)
        expect_eq(len(reply.data), 2, f"embeddings {kwargs}")
        for item in reply.data:
            expect_eq(
                [round(x, 5) for x in item.embedding], [0.1, 0.2, 0.3], f"embedding {kwargs}"
            )
        expect_eq(reply.usage.prompt_tokens, 5, "usage.prompt_tokens")


def openai_responses() -> None:
    response = oai.responses.create(model=OPENAI_MODEL, input=PROMPT)
    expect_eq(response.status, "completed", "status")
    expect_eq(response.output_text, OAI_TEXT, "output_text")
    expect(response.usage is not None, "usage is missing")
    expect_eq(response.usage.input_tokens, 11, "usage.input_tokens")
    expect_eq(response.usage.output_tokens, 7, "usage.output_tokens")


def openai_responses_stream() -> None:
    deltas: list[str] = []
    kinds: list[str] = []
    with oai.responses.stream(model=OPENAI_MODEL, input=PROMPT) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    expect_eq(kinds[0], "response.created", "first event")
    expect_eq(kinds[-1], "response.completed", "last event")
    expect(len(deltas) > 1, f"expected several deltas, got {deltas!r}")
    expect_eq("".join(deltas), OAI_TEXT, "streamed text")
    expect_eq(final.output_text, OAI_TEXT, "final output_text")
    expect_eq(final.usage.input_tokens, 11, "usage.input_tokens")
    expect_eq(final.usage.output_tokens, 7, "usage.output_tokens")
    # The same through create(stream=True).
    text = ""
    with oai.responses.create(model=OPENAI_MODEL, input=PROMPT, stream=True) as events:
        for event in events:
            if event.type == "response.output_text.delta":
                text += event.delta
    expect_eq(text, OAI_TEXT, "create(stream=True) text")


def openai_models() -> None:
    ids = [model.id for model in oai.models.list()]
    expect(OPENAI_MODEL in ids, f"{OPENAI_MODEL} not in {ids!r}")


def openai_request_id_header() -> None:
    raw = oai.chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=CHAT)
    expect_request_id(raw.headers.get("x-request-id"), "x-request-id header")
    expect_eq(raw.parse().choices[0].message.content, OAI_TEXT, "text")


def openai_wrong_key() -> None:
    client = oai.with_options(api_key=WRONG_KEY)
    try:
        client.chat.completions.create(model=OPENAI_MODEL, messages=CHAT)
    except openai.AuthenticationError as error:
        expect_eq(error.status_code, 401, "status")
        expect_request_id(error.request_id, "error.request_id")
        return
    raise CheckFailed("no AuthenticationError")


def openai_unknown_model() -> None:
    try:
        oai.chat.completions.create(model=UNKNOWN_MODEL, messages=CHAT)
    except openai.NotFoundError as error:
        expect_eq(error.status_code, 404, "status")
        return
    raise CheckFailed("no NotFoundError")


def openai_upstream_errors() -> None:
    cases = [
        (400, openai.BadRequestError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ]
    for status, exception in cases:
        try:
            oai.chat.completions.create(model=f"openai-fail-{status}", messages=CHAT)
        except exception as error:
            expect_request_id(error.request_id, f"upstream {status}: error.request_id")
            expect(
                INTERNAL_DETAIL not in f"{error} {error.body}",
                f"upstream {status}: the upstream's error detail reached the client: {error}",
            )
            continue
        except openai.APIStatusError as error:
            raise CheckFailed(
                f"upstream {status}: got {type(error).__name__} ({error.status_code}),"
                f" want {exception.__name__}"
            ) from error
        raise CheckFailed(f"upstream {status}: no {exception.__name__}")


def openai_wrong_api() -> None:
    try:
        oai.chat.completions.create(model=ANTHROPIC_MODEL, messages=CHAT)
    except openai.BadRequestError as error:
        expect_eq(error.status_code, 400, "status")
        return
    raise CheckFailed("no BadRequestError for an Anthropic route over the OpenAI API")


def openai_async() -> None:
    async def run() -> tuple[str, str]:
        async with openai.AsyncOpenAI(
            base_url=BASE + "/v1", api_key=KEY, max_retries=0, timeout=30
        ) as client:
            completion = await client.chat.completions.create(
                model=OPENAI_MODEL, messages=CHAT
            )
            stream = await client.chat.completions.create(
                model=OPENAI_MODEL, messages=CHAT, stream=True
            )
            streamed = ""
            async for chunk in stream:
                for choice in chunk.choices:
                    streamed += choice.delta.content or ""
            return completion.choices[0].message.content or "", streamed

    text, streamed = asyncio.run(run())
    expect_eq(text, OAI_TEXT, "text")
    expect_eq(streamed, OAI_TEXT, "streamed text")


# --- Anthropic ---------------------------------------------------------------------------


def anthropic_messages() -> None:
    message = ant.messages.create(model=ANTHROPIC_MODEL, max_tokens=64, messages=CHAT)
    expect_eq(message.type, "message", "type")
    expect_eq(message.role, "assistant", "role")
    expect_eq([block.type for block in message.content], ["text"], "content blocks")
    expect_eq(message.content[0].text, ANT_TEXT, "text")
    expect_eq(message.stop_reason, "end_turn", "stop_reason")
    expect_eq(message.usage.input_tokens, 11, "usage.input_tokens")
    expect_eq(message.usage.output_tokens, 7, "usage.output_tokens")


def anthropic_messages_stream() -> None:
    with ant.messages.stream(model=ANTHROPIC_MODEL, max_tokens=64, messages=CHAT) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    expect(len(pieces) > 1, f"expected several deltas, got {pieces!r}")
    expect_eq("".join(pieces), ANT_TEXT, "streamed text")
    expect_eq(final.content[0].text, ANT_TEXT, "final text")
    expect_eq(final.stop_reason, "end_turn", "stop_reason")
    expect_eq(final.usage.input_tokens, 11, "usage.input_tokens")
    expect_eq(final.usage.output_tokens, 7, "usage.output_tokens")


def anthropic_count_tokens() -> None:
    count = ant.messages.count_tokens(model=ANTHROPIC_MODEL, messages=CHAT)
    expect_eq(count.input_tokens, 11, "input_tokens")


def anthropic_models() -> None:
    ids = [model.id for model in ant.models.list()]
    expect(ANTHROPIC_MODEL in ids, f"{ANTHROPIC_MODEL} not in {ids!r}")


def anthropic_request_id_header() -> None:
    raw = ant.messages.with_raw_response.create(
        model=ANTHROPIC_MODEL, max_tokens=64, messages=CHAT
    )
    expect_request_id(raw.headers.get("x-request-id"), "x-request-id header")
    expect_eq(raw.parse().content[0].text, ANT_TEXT, "text")


def anthropic_wrong_key() -> None:
    client = ant.with_options(api_key=WRONG_KEY)
    try:
        client.messages.create(model=ANTHROPIC_MODEL, max_tokens=64, messages=CHAT)
    except anthropic.AuthenticationError as error:
        expect_eq(error.status_code, 401, "status")
        expect_eq(error.body.get("type"), "error", "error body type")
        expect_eq(error.body["error"]["type"], "authentication_error", "error type")
        return
    raise CheckFailed("no AuthenticationError")


def anthropic_unknown_model() -> None:
    try:
        ant.messages.create(model=UNKNOWN_MODEL, max_tokens=64, messages=CHAT)
    except anthropic.NotFoundError as error:
        expect_eq(error.status_code, 404, "status")
        expect_eq(error.body["error"]["type"], "not_found_error", "error type")
        return
    raise CheckFailed("no NotFoundError")


def anthropic_upstream_errors() -> None:
    cases = [
        (400, anthropic.BadRequestError),
        (429, anthropic.RateLimitError),
        (500, anthropic.InternalServerError),
    ]
    for status, exception in cases:
        try:
            ant.messages.create(
                model=f"anthropic-fail-{status}", max_tokens=64, messages=CHAT
            )
        except exception as error:
            expect_eq(error.body.get("type"), "error", f"upstream {status}: error body type")
            expect(
                INTERNAL_DETAIL not in f"{error} {error.body}",
                f"upstream {status}: the upstream's error detail reached the client: {error}",
            )
            continue
        except anthropic.APIStatusError as error:
            raise CheckFailed(
                f"upstream {status}: got {type(error).__name__} ({error.status_code}),"
                f" want {exception.__name__}"
            ) from error
        raise CheckFailed(f"upstream {status}: no {exception.__name__}")


def anthropic_wrong_api() -> None:
    try:
        ant.messages.create(model=OPENAI_MODEL, max_tokens=64, messages=CHAT)
    except anthropic.BadRequestError as error:
        expect_eq(error.status_code, 400, "status")
        expect_eq(error.body["error"]["type"], "invalid_request_error", "error type")
        return
    raise CheckFailed("no BadRequestError for an OpenAI route over the Anthropic API")


def anthropic_async() -> None:
    async def run() -> tuple[str, str]:
        async with anthropic.AsyncAnthropic(
            base_url=BASE, api_key=KEY, max_retries=0, timeout=30
        ) as client:
            message = await client.messages.create(
                model=ANTHROPIC_MODEL, max_tokens=64, messages=CHAT
            )
            async with client.messages.stream(
                model=ANTHROPIC_MODEL, max_tokens=64, messages=CHAT
            ) as stream:
                streamed = "".join([piece async for piece in stream.text_stream])
            return message.content[0].text, streamed

    text, streamed = asyncio.run(run())
    expect_eq(text, ANT_TEXT, "text")
    expect_eq(streamed, ANT_TEXT, "streamed text")


def anthropic_sdk_request_id() -> None:
    """The anthropic SDK's own request-id accessors, which read the `request-id` header."""
    message = ant.messages.create(model=ANTHROPIC_MODEL, max_tokens=64, messages=CHAT)
    expect_request_id(message._request_id, "Message._request_id")
    try:
        ant.messages.create(model=UNKNOWN_MODEL, max_tokens=64, messages=CHAT)
    except anthropic.NotFoundError as error:
        expect_request_id(error.request_id, "APIStatusError.request_id")
        return
    raise CheckFailed("no NotFoundError")


CHECKS: list[tuple[str, Callable[[], None]]] = [
    ("openai chat.completions.create", openai_chat),
    ("openai chat.completions.create stream + include_usage", openai_chat_stream),
    ("openai stream cut after content -> APIError", openai_stream_failure),
    ("openai embeddings.create", openai_embeddings),
    ("openai responses.create", openai_responses),
    ("openai responses.stream", openai_responses_stream),
    ("openai models.list", openai_models),
    ("openai x-request-id via with_raw_response", openai_request_id_header),
    ("openai wrong key -> AuthenticationError", openai_wrong_key),
    ("openai unknown model -> NotFoundError", openai_unknown_model),
    ("openai upstream 400/429/500 -> SDK errors", openai_upstream_errors),
    ("openai Anthropic route -> BadRequestError", openai_wrong_api),
    ("openai AsyncOpenAI create + stream", openai_async),
    ("anthropic messages.create", anthropic_messages),
    ("anthropic messages.stream", anthropic_messages_stream),
    ("anthropic messages.count_tokens", anthropic_count_tokens),
    ("anthropic models.list", anthropic_models),
    ("anthropic x-request-id via with_raw_response", anthropic_request_id_header),
    ("anthropic wrong key -> AuthenticationError", anthropic_wrong_key),
    ("anthropic unknown model -> NotFoundError", anthropic_unknown_model),
    ("anthropic upstream 400/429/500 -> SDK errors", anthropic_upstream_errors),
    ("anthropic OpenAI route -> BadRequestError", anthropic_wrong_api),
    ("anthropic AsyncAnthropic create + stream", anthropic_async),
    ("anthropic SDK request id (request-id header)", anthropic_sdk_request_id),
]


# Checks of known krouter bugs (each with an ignored Rust test): run only when named.
KNOWN_BUGS: list[tuple[str, Callable[[], None]]] = []


def main() -> int:
    print(
        f"sdk_check: openai {openai.__version__}, anthropic {anthropic.__version__}"
        f" (imported in {time.monotonic() - _IMPORTING:.2f}s)"
    )
    only = set(sys.argv[1:])
    unknown = only - {check.__name__ for _, check in CHECKS + KNOWN_BUGS}
    if unknown:
        print(f"FAIL: no such checks: {sorted(unknown)}", file=sys.stderr)
        return 2
    ran = 0
    for name, check in CHECKS + KNOWN_BUGS if only else CHECKS:
        if only and check.__name__ not in only:
            continue
        ran += 1
        started = time.monotonic()
        try:
            check()
        except CheckFailed as failure:
            print(f"FAIL: {name}: {failure}", file=sys.stderr)
            return 1
        except Exception as error:  # an SDK exception: show what the SDK saw
            print(f"FAIL: {name}: {type(error).__name__}: {error}", file=sys.stderr)
            traceback.print_exc()
            return 1
        print(f"ok: {name} ({time.monotonic() - started:.2f}s)", flush=True)
    print(f"sdk_check: all {ran} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
