"""
Chat web server: a single-page chat UI and an OpenAI-compatible API over a pool of model workers.

    python -m scripts.chat_web                          # CPU or one GPU, open http://127.0.0.1:8000
    python -m scripts.chat_web -i rl -g d20 -s 500      # another stage / model tag / step
    python -m scripts.chat_web --num-gpus 8             # one model replica per GPU: 8 conversations at once
    python -m scripts.chat_web --host 0.0.0.0           # expose on the network (no auth; the limits below apply)

Endpoints:
    GET  /                      the chat UI (nanochat/ui.html: one file, no build step)
    POST /chat/completions      server-sent events for the UI: data: {"token": "..."} ..., then data: {"done": true, ...}
    POST /v1/chat/completions   OpenAI-compatible, streaming and not
    GET  /v1/models             the one model served
    GET  /health                liveness, model name, default sampling settings and limits
    GET  /stats                 workers total/available/busy, requests and tokens served

The official `openai` client works unchanged:
    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="nanochat", messages=[{"role": "user", "content": "Hi"}])
Any model name is accepted (one model is served) and the reply carries the real one.

Each worker owns an Engine: one model replica per GPU, or workers sharing one model on CPU (--num-workers). A
request is checked against the limits below before it may take a worker (refusal: 4xx with a JSON body
{"error": {"message": ...}}), then waits at most --max-wait seconds for a free worker (else 503), generates in a
thread so the event loop keeps serving, and gives the worker back when it completes, fails, or the client goes
away. The worker returns to the pool only once its generation thread has stopped, so two requests never share
an engine, and an exception inside generation is reported to that one client and leaves the worker usable.
"""

import argparse
import asyncio
import json
import os
import re
import secrets
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from nanochat.checkpoint_manager import PHASE_DIRS, find_largest_model, load_model
from nanochat.common import autodetect_device_type, get_base_dir, print0
from nanochat.engine import Engine

UI_HTML_PATH = Path(__file__).resolve().parent.parent / "nanochat" / "ui.html"

# Abuse limits. A maximal valid body is 32,000 characters, at most 12 bytes each as JSON escapes, plus the
# envelope of 500 messages: 1 MiB is above any valid request and keeps a hostile one from filling memory.
MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 8_000
MAX_TOTAL_CHARS = 32_000
MAX_BODY_BYTES = 1 << 20
TEMPERATURE_RANGE = (0.0, 2.0)
TOP_K_RANGE = (0, 200)  # 0 = no top-k filtering
MAX_TOKENS_RANGE = (1, 4096)
# top_p lies in (0, 1]; 1 = no nucleus filtering

# OpenAI parameters that would change the answer and that this server does not implement: refused, not ignored.
UNSUPPORTED_PARAMS = {
    "n": lambda v: v not in (None, 1),
    "stop": lambda v: v not in (None, [], ""),
    "tools": lambda v: bool(v),
    "functions": lambda v: bool(v),
    "logprobs": lambda v: bool(v),
    "logit_bias": lambda v: bool(v),
    "presence_penalty": lambda v: v not in (None, 0),
    "frequency_penalty": lambda v: v not in (None, 0),
}

TOOL_MARKERS = re.compile(r"<\|(python_start|python_end|output_start|output_end)\|>")


class ApiError(Exception):
    """A refusal sent to the client as {"error": {"message": ...}} with an HTTP status."""

    def __init__(self, status, message, param=None, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


class GenerationFailed(Exception):
    """The engine raised inside a worker thread; the message goes to the client, the worker stays usable."""


class ClientGone(Exception):
    """The client closed the connection while its reply was being generated."""


def error_body(message, kind="invalid_request_error", param=None):
    # the OpenAI error shape, so that the openai client raises with our message; the UI reads error.message
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


# -----------------------------------------------------------------------------
# Request checking


@dataclass
class ChatRequest:
    messages: list  # [{"role": "system"|"user"|"assistant", "content": str}], last one from the user
    temperature: float
    top_k: int
    top_p: float | None
    max_tokens: int
    seed: int
    stream: bool = False
    include_usage: bool = False


def read_number(body, name, default, lo, hi, integer=False, lo_open=False):
    """body[name] checked to be a number (an int if integer) in [lo, hi] (or (lo, hi]); default when absent/null."""
    value = body.get(name)
    if value is None:
        return default
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    is_int = isinstance(value, int) and not isinstance(value, bool)
    in_range = is_number and (lo < value if lo_open else lo <= value) and value <= hi  # NaN fails both
    if not (is_int if integer else is_number) or not in_range:
        kind = "an integer" if integer else "a number"
        interval = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise ApiError(400, f"{name} must be {kind} in {interval}, got {json.dumps(value)[:40]}", param=name)
    return value


def read_content(content, i):
    """Message content as text: a str, or the OpenAI list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", param="messages")
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", param="messages")


def parse_chat_request(body, defaults):
    """Check a decoded JSON body against the limits and the chat format; raise ApiError naming the problem."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for name, is_unsupported in UNSUPPORTED_PARAMS.items():
        if is_unsupported(body.get(name)):
            raise ApiError(400, f"parameter {name!r} is not supported by this server", param=name)

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"too many messages: {len(messages)} (at most {MAX_MESSAGES})", param="messages")
    checked, total_chars = [], 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ApiError(400, f"messages[{i}] must be an object with 'role' and 'content'", param="messages")
        role = {"developer": "system"}.get(message["role"], message["role"])  # newer OpenAI name for system
        if role not in ("system", "user", "assistant"):
            raise ApiError(
                400, f"messages[{i}].role must be system, user or assistant, got {message['role']!r:.40}", "messages"
            )
        content = read_content(message["content"], i)
        if len(content) > MAX_MESSAGE_CHARS:
            raise ApiError(
                400, f"messages[{i}] has {len(content)} characters (at most {MAX_MESSAGE_CHARS})", "messages"
            )
        if role != "assistant" and not content.strip():  # a model may legitimately have said nothing
            raise ApiError(400, f"messages[{i}] ({role}) has empty content", param="messages")
        total_chars += len(content)
        checked.append({"role": role, "content": content})
    if total_chars > MAX_TOTAL_CHARS:
        raise ApiError(400, f"the messages hold {total_chars} characters in total (at most {MAX_TOTAL_CHARS})")

    # roles: an optional system message first, then user/assistant alternating, ending with the user
    first = 1 if checked[0]["role"] == "system" else 0
    for i in range(first, len(checked)):
        expected = "user" if (i - first) % 2 == 0 else "assistant"
        if checked[i]["role"] != expected:
            where = "only the first message may be a system message" if checked[i]["role"] == "system" else ""
            raise ApiError(
                400,
                f"messages[{i}] is {checked[i]['role']!r} but {expected!r} was expected: after an optional system "
                f"message, roles alternate user/assistant starting with user. {where}".strip(),
                param="messages",
            )
    if checked[-1]["role"] != "user":
        raise ApiError(400, "the last message must be from the user", param="messages")

    max_tokens = body.get("max_completion_tokens")  # newer OpenAI name, preferred when both are given
    name = "max_completion_tokens" if max_tokens is not None else "max_tokens"
    stream, stream_options = body.get("stream", False), body.get("stream_options") or {}
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {json.dumps(stream)[:40]}", param="stream")
    if not isinstance(stream_options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    top_k = read_number(body, "top_k", defaults["top_k"], *TOP_K_RANGE, integer=True)
    seed = read_number(body, "seed", None, 0, 2**63 - 1, integer=True)
    return ChatRequest(
        messages=checked,
        temperature=float(read_number(body, "temperature", defaults["temperature"], *TEMPERATURE_RANGE)),
        top_k=top_k,
        top_p=read_number(body, "top_p", None, 0.0, 1.0, lo_open=True),
        max_tokens=read_number(body, name, defaults["max_tokens"], *MAX_TOKENS_RANGE, integer=True),
        seed=seed if seed is not None else secrets.randbits(31),  # fresh per request unless asked
        stream=stream,
        include_usage=bool(stream_options.get("include_usage", False)),
    )


async def read_json_body(request):
    """The body as JSON, refusing oversized bodies (413) while reading, before they are held in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"request body of {int(declared)} bytes is too large (at most {MAX_BODY_BYTES})")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"request body is too large (at most {MAX_BODY_BYTES} bytes)")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed JSON in the request body: {e}") from None


def assistant_parts(text):
    """Assistant text as the tokenizer's parts: tool calls streamed earlier as <|python_start|>expr<|python_end|>
    <|output_start|>out<|output_end|> come back as python / python_output parts, so they re-render as the
    special tokens the model produced rather than as plain text."""
    parts, kind, pos = [], "text", 0
    for match in TOOL_MARKERS.finditer(text):
        if match.start() > pos or kind != "text":
            parts.append({"type": kind, "text": text[pos : match.start()]})
        kind = {"python_start": "python", "output_start": "python_output"}.get(match.group(1), "text")
        pos = match.end()
    if pos < len(text) or not parts:
        parts.append({"type": kind, "text": text[pos:]})
    return parts


def build_prompt(tokenizer, messages):
    """Prompt token ids: the conversation (user text is always plain text, never special tokens), then
    <|assistant_start|>."""
    rendered = [
        {"role": m["role"], "content": assistant_parts(m["content"]) if m["role"] == "assistant" else m["content"]}
        for m in messages
    ]
    # render_for_completion drops a final assistant message and ends the prompt with <|assistant_start|>
    return tokenizer.render_for_completion({"messages": rendered + [{"role": "assistant", "content": ""}]})


# -----------------------------------------------------------------------------
# Workers


@dataclass
class Worker:
    id: int
    device: str
    engine: object  # nanochat.engine.Engine, or anything with its generate() and stop_reasons
    tokenizer: object
    sequence_len: int  # the model's context, in tokens
    model_name: str = "nanochat"  # what /v1/models and every reply call the model
    busy: bool = False
    requests_served: int = 0
    tokens_generated: int = 0


@dataclass
class Stats:
    requests_total: int = 0  # every POST to a chat endpoint
    requests_completed: int = 0
    requests_failed: int = 0  # the engine raised
    requests_cancelled: int = 0  # the client went away
    requests_refused: int = 0  # 4xx and 503
    tokens_generated: int = 0
    started_at: float = field(default_factory=time.time)


class WorkerPool:
    def __init__(self, workers, max_wait):
        assert workers, "a worker pool needs at least one worker"
        self.workers, self.max_wait = workers, max_wait
        self.queue = asyncio.Queue()  # free workers; built inside the running event loop (lifespan)
        for worker in workers:
            self.queue.put_nowait(worker)
        # one thread per worker: a worker runs one generation at a time and is freed only when it has stopped
        self.executor = ThreadPoolExecutor(max_workers=len(workers), thread_name_prefix="chat-worker")
        self.waiting = 0
        self.leases = set()

    async def acquire(self):
        self.waiting += 1
        try:
            worker = await asyncio.wait_for(self.queue.get(), self.max_wait)  # Queue.get is cancellation-safe
        except TimeoutError:
            raise ApiError(
                503,
                f"all {len(self.workers)} workers are busy (waited {self.max_wait:g} s); try again shortly",
                kind="server_busy",
            ) from None
        finally:
            self.waiting -= 1
        worker.busy = True
        return worker

    def put_back(self, worker):
        worker.busy = False
        self.queue.put_nowait(worker)


class Lease:
    """One request's hold on a worker. release() is idempotent and always safe to call: it asks the generation
    thread to stop and returns the worker to the pool as soon as that thread has finished."""

    def __init__(self, pool, worker, stats):
        self.pool, self.worker, self.stats = pool, worker, stats
        self.cancel = threading.Event()
        self.thread_done = None  # asyncio future of the generation thread, once started
        self.outcome = "cancelled"  # set to completed / failed when the reply ends on its own
        self.released = False
        pool.leases.add(self)

    def release(self):
        if self.released:
            return
        self.released = True
        self.cancel.set()
        self.pool.leases.discard(self)
        setattr(self.stats, f"requests_{self.outcome}", getattr(self.stats, f"requests_{self.outcome}") + 1)
        self.worker.requests_served += 1
        if self.thread_done is None or self.thread_done.done():
            self.pool.put_back(self.worker)
        else:
            self.thread_done.add_done_callback(lambda _: self.pool.put_back(self.worker))


async def generate_text(lease, request, prompt, chat):
    """Run the engine in the worker's thread and yield ("text", piece) as the reply grows, then
    ("finish", finish_reason, completion_tokens). Raises GenerationFailed or ClientGone.

    Pieces are UTF-8 safe: tokens are held back until they decode to text that does not end in U+FFFD (a
    character cut between tokens)."""
    worker, loop = lease.worker, asyncio.get_running_loop()
    tokenizer, events = worker.tokenizer, asyncio.Queue()
    stop_ids = {tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id()}

    def produce():  # in the worker thread; hands events to the event loop
        def put(*event):
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone: the server is shutting down
                pass

        try:
            tokens = worker.engine.generate(
                prompt,
                num_samples=1,
                max_tokens=chat.max_tokens,
                temperature=chat.temperature,
                top_k=chat.top_k or None,
                top_p=chat.top_p,
                seed=chat.seed,
            )
            try:
                for token_column, _ in tokens:
                    if lease.cancel.is_set():
                        return
                    put("token", token_column[0])
            finally:
                tokens.close()
            put("end", worker.engine.stop_reasons[0])
        except Exception as e:  # noqa: BLE001 -- any failure goes to this one client; the worker lives on
            traceback.print_exc()
            put("error", f"generation failed: {type(e).__name__}: {e}")

    lease.thread_done = loop.run_in_executor(lease.pool.executor, produce)
    pending, num_tokens = [], 0
    while True:
        event = await events.get()
        if event[0] == "error":
            lease.outcome = "failed"
            raise GenerationFailed(event[1])
        if event[0] == "end":
            if pending:
                yield "text", tokenizer.decode(pending)
            lease.outcome = "completed"
            yield "finish", {"end": "stop", "max_tokens": "length", "context": "length"}[event[1]], num_tokens
            return
        num_tokens += 1
        worker.tokens_generated += 1
        lease.stats.tokens_generated += 1
        if event[1] not in stop_ids:  # the end token is counted but not shown
            pending.append(event[1])
            text = tokenizer.decode(pending)
            if not text.endswith("\ufffd"):
                yield "text", text
                pending = []
        if await request.is_disconnected():
            raise ClientGone()


class LeasedStreamingResponse(StreamingResponse):
    """A streaming response that releases its lease however it ends: finished, cancelled by a disconnect (the
    body generator may then be abandoned at a yield or never started, so its own finally cannot be relied on),
    or failed."""

    def __init__(self, content, lease, **kwargs):
        super().__init__(content, **kwargs)
        self.lease = lease

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.lease.release()


NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # tokens reach the browser as they come


def sse(payload, event=None):
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload, ensure_ascii=False)}\n\n"


# -----------------------------------------------------------------------------
# The app


def create_app(workers_or_loader, temperature=0.8, top_k=50, max_tokens=512, max_wait=30.0):
    """The FastAPI app over a list of Workers, or a callable returning one (called at startup, so that a server
    loads its models once it runs). temperature / top_k / max_tokens are the defaults of requests that omit them;
    max_wait is how many seconds a request may wait for a free worker before a 503."""
    defaults = {"temperature": temperature, "top_k": top_k, "max_tokens": max_tokens}
    stats = Stats()
    model_name = "nanochat"  # until the workers are there

    @asynccontextmanager
    async def lifespan(app):
        nonlocal model_name
        workers = workers_or_loader() if callable(workers_or_loader) else workers_or_loader
        app.state.pool = pool = WorkerPool(list(workers), max_wait)
        model_name = pool.workers[0].model_name
        devices = ", ".join(w.device for w in pool.workers)
        print0(f"chat_web: serving {model_name} with {len(pool.workers)} worker(s) on {devices}")
        yield
        for lease in list(pool.leases):  # stop generations in flight so their threads end promptly
            lease.cancel.set()
        pool.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="nanochat", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.stats = stats

    @app.exception_handler(ApiError)
    async def api_error(request, e):
        stats.requests_refused += 1
        return JSONResponse(error_body(e.message, e.kind, e.param), status_code=e.status)

    @app.exception_handler(Exception)
    async def internal_error(request, e):  # a bug, not a refusal: uvicorn also logs the traceback
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"), status_code=500)

    async def start_chat(request):
        """Check the request and its prompt, then take a worker: (lease, prompt, chat, request_id). A refused
        request never takes a worker."""
        stats.requests_total += 1
        chat = parse_chat_request(await read_json_body(request), defaults)
        pool = app.state.pool
        first = pool.workers[0]  # every worker serves the same model: one tokenizer, one context length
        try:
            prompt = build_prompt(first.tokenizer, chat.messages)
        except ValueError as e:
            raise ApiError(400, f"cannot render the conversation: {e}", param="messages") from None
        if len(prompt) >= first.sequence_len:
            raise ApiError(
                400,
                f"the conversation is {len(prompt)} tokens long but the model's context is {first.sequence_len} "
                f"tokens; start a new conversation or shorten it",
                param="messages",
            )
        lease = Lease(pool, await pool.acquire(), stats)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        print0(
            f"{request_id[:17]} worker {lease.worker.id}: {len(chat.messages)} messages, prompt {len(prompt)} tokens, "
            f"temperature {chat.temperature:g}, top_k {chat.top_k}, top_p {chat.top_p}, max_tokens {chat.max_tokens}"
        )
        return lease, prompt, chat, request_id

    def usage(prompt, completion_tokens):
        return {
            "prompt_tokens": len(prompt),
            "completion_tokens": completion_tokens,
            "total_tokens": len(prompt) + completion_tokens,
        }

    # --- pages and status

    @app.get("/")
    async def index():
        # read per request: editing the UI needs no restart, and the file is small
        return HTMLResponse(UI_HTML_PATH.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    async def health():
        pool = getattr(app.state, "pool", None)
        return {
            "status": "ok",
            "ready": pool is not None,
            "model": model_name,
            "workers": len(pool.workers) if pool else 0,
            "available_workers": pool.queue.qsize() if pool else 0,
            "defaults": defaults,
            "limits": {
                "max_messages": MAX_MESSAGES,
                "max_message_chars": MAX_MESSAGE_CHARS,
                "max_total_chars": MAX_TOTAL_CHARS,
                "temperature": list(TEMPERATURE_RANGE),
                "top_k": list(TOP_K_RANGE),
                "max_tokens": list(MAX_TOKENS_RANGE),
            },
        }

    @app.get("/stats")
    async def get_stats():
        pool = app.state.pool
        available = pool.queue.qsize()
        return {
            "model": model_name,
            "uptime_s": round(time.time() - stats.started_at, 1),
            "workers_total": len(pool.workers),
            "workers_available": available,
            "workers_busy": len(pool.workers) - available,
            "requests_waiting": pool.waiting,
            "requests_total": stats.requests_total,
            "requests_completed": stats.requests_completed,
            "requests_failed": stats.requests_failed,
            "requests_cancelled": stats.requests_cancelled,
            "requests_refused": stats.requests_refused,
            "tokens_generated": stats.tokens_generated,
            "workers": [
                {
                    "id": w.id,
                    "device": w.device,
                    "busy": w.busy,
                    "requests_served": w.requests_served,
                    "tokens_generated": w.tokens_generated,
                }
                for w in pool.workers
            ],
        }

    @app.get("/v1/models")
    async def list_models():
        model = {"id": model_name, "object": "model", "created": int(stats.started_at), "owned_by": "nanochat"}
        return {"object": "list", "data": [model]}

    # --- the UI's streaming endpoint

    @app.post("/chat/completions")
    async def chat_completions(request: Request):
        lease, prompt, chat, request_id = await start_chat(request)

        async def events():
            try:
                async for kind, *rest in generate_text(lease, request, prompt, chat):
                    if kind == "text":
                        yield sse({"token": rest[0]})
                    else:
                        finish_reason, n = rest
                        done = {"done": True, "finish_reason": finish_reason, "usage": usage(prompt, n)}
                        yield sse(done | {"id": request_id, "seed": chat.seed, "worker": lease.worker.id})
            except GenerationFailed as e:
                yield sse(error_body(str(e), "server_error"), event="error")
            except ClientGone:
                pass
            finally:
                lease.release()

        return LeasedStreamingResponse(events(), lease, media_type="text/event-stream", headers=NO_BUFFERING)

    # --- OpenAI-compatible API

    @app.post("/v1/chat/completions")
    async def openai_chat_completions(request: Request):
        lease, prompt, chat, request_id = await start_chat(request)
        created = int(time.time())
        envelope = {"id": request_id, "created": created, "model": model_name, "system_fingerprint": None}

        if not chat.stream:
            try:
                pieces, finish_reason, n = [], None, 0
                async for kind, *rest in generate_text(lease, request, prompt, chat):
                    if kind == "text":
                        pieces.append(rest[0])
                    else:
                        finish_reason, n = rest
            except GenerationFailed as e:
                return JSONResponse(error_body(str(e), "server_error"), status_code=500)
            except ClientGone:
                return JSONResponse(error_body("client disconnected"), status_code=499)
            finally:
                lease.release()
            message = {"role": "assistant", "content": "".join(pieces)}
            choice = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
            return envelope | {"object": "chat.completion", "choices": [choice], "usage": usage(prompt, n)}

        def chunk(delta, finish_reason=None):
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            extra = {"usage": None} if chat.include_usage else {}
            return sse(envelope | {"object": "chat.completion.chunk", "choices": [choice]} | extra)

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                async for kind, *rest in generate_text(lease, request, prompt, chat):
                    if kind == "text":
                        yield chunk({"content": rest[0]})
                    else:
                        finish_reason, n = rest
                        yield chunk({}, finish_reason)
                        if chat.include_usage:
                            last = {"object": "chat.completion.chunk", "choices": [], "usage": usage(prompt, n)}
                            yield sse(envelope | last)
                yield "data: [DONE]\n\n"
            except GenerationFailed as e:
                yield sse(error_body(str(e), "server_error"))  # the openai client raises APIError on this
            except ClientGone:
                pass
            finally:
                lease.release()

        return LeasedStreamingResponse(events(), lease, media_type="text/event-stream", headers=NO_BUFFERING)

    return app


# -----------------------------------------------------------------------------
# Loading models from checkpoints


def load_workers(source, model_tag, step, device_type, num_gpus, num_workers):
    """One worker per GPU, each with its own model replica; on CPU/MPS num_workers workers sharing one model
    (an Engine keeps its KV cache per generate() call, so a read-only model can serve several threads)."""
    # resolved here (load_model would do the same) so that the served model's name says which checkpoint it is
    model_tag = model_tag or find_largest_model(os.path.join(get_base_dir(), PHASE_DIRS[source]))
    workers = []
    if device_type == "cuda":
        assert num_workers == 1, "--num-workers is for CPU/MPS; on CUDA there is one worker per GPU (--num-gpus)"
        assert num_gpus <= torch.cuda.device_count(), f"--num-gpus {num_gpus} > {torch.cuda.device_count()} GPUs"
        for i in range(num_gpus):
            device = torch.device(f"cuda:{i}")
            model, tokenizer, meta = load_model(source, device, phase="eval", model_tag=model_tag, step=step)
            name = f"nanochat-{source}-{model_tag}-step{meta['step']}"
            workers.append(Worker(i, str(device), Engine(model, tokenizer), tokenizer, model.config.sequence_len, name))
    else:
        assert num_gpus == 1, f"--num-gpus is for CUDA; on {device_type} use --num-workers"
        model, tokenizer, meta = load_model(
            source, torch.device(device_type), phase="eval", model_tag=model_tag, step=step
        )
        name = f"nanochat-{source}-{model_tag}-step{meta['step']}"
        for i in range(num_workers):
            workers.append(Worker(i, device_type, Engine(model, tokenizer), tokenizer, model.config.sequence_len, name))
    return workers


def main(argv=None):
    parser = argparse.ArgumentParser(description="Serve a nanochat model: chat UI and OpenAI-compatible API")
    parser.add_argument("-i", "--source", default="sft", choices=["base", "mid", "sft", "rl"], help="training stage")
    parser.add_argument("-g", "--model-tag", default=None, help="model tag, e.g. d20 (default: the largest model)")
    parser.add_argument("-s", "--step", type=int, default=None, help="checkpoint step (default: the last one)")
    parser.add_argument("--device-type", default="", choices=["", "cuda", "mps", "cpu"], help="default: autodetect")
    parser.add_argument("--num-gpus", type=int, default=1, help="CUDA: one model replica and worker per GPU")
    parser.add_argument("--num-workers", type=int, default=1, help="CPU/MPS: workers sharing one model")
    parser.add_argument("-t", "--temperature", type=float, default=0.8, help="default sampling temperature")
    parser.add_argument("-k", "--top-k", type=int, default=50, help="default top-k (0 = off)")
    parser.add_argument("-m", "--max-tokens", type=int, default=512, help="default reply length limit, in tokens")
    parser.add_argument("--max-wait", type=float, default=30.0, help="seconds a request waits for a worker (-> 503)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind; 0.0.0.0 exposes the server")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    device_type = args.device_type or autodetect_device_type()

    def loader():
        return load_workers(args.source, args.model_tag, args.step, device_type, args.num_gpus, args.num_workers)

    app = create_app(loader, args.temperature, args.top_k, args.max_tokens, args.max_wait)
    print0(f"chat_web: starting on http://{args.host}:{args.port}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
