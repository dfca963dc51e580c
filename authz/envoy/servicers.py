"""The gRPC servicers Envoy calls. Thin: adapt the proto, run the pipeline, adapt back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from time import perf_counter
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2 as auth_pb2
from envoy.service.auth.v3 import external_auth_pb2_grpc as auth_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as proc_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as proc_grpc

from authz import logs, metrics, tracing
from authz.envoy import check as check_adapter
from authz.envoy import process as proc_adapter
from authz.errors import Answer, BadRequest, Deny, InternalError
from authz.model import Context, Exchange, Handoff, Mutations, Request
from authz.pipeline import Pipeline
from authz.responses import Denial, render_denial
from authz.runtime import Runtime

log = logging.getLogger("authz.decision")
CHECK_SERVICE = "envoy.service.auth.v3.Authorization"
PROCESS_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
_REQUEST_ID = frozenset(("x-request-id",))
_completions: set[asyncio.Task[None]] = set()  # strong references until each completion has run
proc_log = logging.getLogger("authz.process")


class AuthorizationServicer(auth_grpc.AuthorizationServicer):  # type: ignore[misc]  # generated, untyped
    """envoy.service.auth.v3.Authorization/Check."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._seconds = metrics.RPC_SECONDS.labels(rpc="check")
        self._inflight = metrics.InFlight("check")
        self._lines = logs.decision_lines(log)

    async def Check(self, request: auth_pb2.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]
                    ) -> bytes:
        """Answer one ``Check`` with a serialized ``CheckResponse`` (see ``add_to_server``)."""
        started = perf_counter()
        self._inflight.inc()
        pipeline = self.runtime.pipeline
        req: Request | None = None
        ctx: Context | None = None
        deny: Deny | None = None
        try:
            try:
                req = check_adapter.request_from_check(request, body_limit=self.runtime.config.server.max_request_bytes)
            except Exception:  # a proto we cannot read is the client's problem, not a crash
                log.warning("unreadable CheckRequest", exc_info=True)
                deny = BadRequest("the request could not be read", reason="request.unreadable")
            if req is not None:
                ctx = pipeline.context(req)
                if tracing.TRACER is None:
                    deny = await self._decide(pipeline, ctx)
                else:
                    with tracing.request_span("authz.check", req.headers, {"authz.request_id": req.id}) as span:
                        deny = await self._decide(pipeline, ctx)
                        span.set_attribute("authz.decision", "allow" if deny is None else "deny")
                        span.set_attribute("authz.reason", "ok" if deny is None else deny.reason)
                if pipeline.has("on_decision"):
                    try:
                        await pipeline.decided(ctx, deny)
                    except Deny as exc:  # only when a stage refuses an allowed request (audit fail-closed)
                        deny = exc
                # The one place that decides a request goes nowhere: refused, answered by the
                # sidecar itself, or allowed after Envoy stopped waiting (it then never forwards).
                if ctx.on_refusal and (deny is not None or _too_late(context)):
                    _release(pipeline, ctx)
            if deny is None and ctx is not None:
                self._record("allow", "ok", 200, req, ctx)
                extra = {"x-authz-check": "allow"} if self.runtime.config.server.debug_headers else None
                return check_adapter.allow_response(ctx, extra_response_headers=extra)
            assert deny is not None
            # An Answer (an approval granted) travels the denial path but refuses nothing.
            self._record("answer" if isinstance(deny, Answer) else "deny", deny.reason, deny.status,
                         req, ctx, message=deny.message)
            view = ctx.view if ctx is not None else None
            denial = render_denial(deny, req, protocol=view.protocol if view else "",
                                   action=view.action if view else None)
            denied: bytes = check_adapter.deny_response(denial).SerializeToString()
            return denied
        except asyncio.CancelledError:  # Envoy gave up on this Check (its timeout, a reset)
            if ctx is not None and ctx.on_refusal:
                _release(pipeline, ctx)
            raise
        finally:
            self._inflight.dec()
            self._seconds.observe(perf_counter() - started)

    @staticmethod
    async def _decide(pipeline: Pipeline, ctx: Context) -> Deny | None:
        try:
            await pipeline.check(ctx)
        except Deny as exc:
            return exc
        except Exception:  # never let Envoy see a gRPC error for our own bug: fail closed
            log.exception("Check failed unexpectedly")
            return InternalError()
        return None

    def _record(self, decision: str, reason: str, status: int, req: Request | None,
                ctx: Context | None, *, message: str = "") -> None:
        metrics.child(metrics.DECISIONS, decision=decision, reason=reason).inc()  # reasons: a bounded set
        if not self.runtime.config.log.decisions or not log.isEnabledFor(logging.INFO):
            return
        fields: dict[str, object] = {"event": "decision", "decision": decision, "reason": reason,
                                     "status": status}
        if req is not None:
            fields.update(request_id=req.id, method=req.method, host=req.host, path=req.path_only)
            traceparent = req.headers.get("traceparent")
            if traceparent:
                fields["traceparent"] = traceparent[:64]
        if ctx is not None:
            if not ctx.principal.anonymous:
                fields["subject"] = ctx.principal.subject
                fields["client"] = ctx.principal.client
            fields.update({k: v for k, v in ctx.facts.items() if k in ("rule", "route", "tool",
                                                                         "model", "dry_run")})
        if message:
            fields["message"] = message
        self._lines.emit(f"{decision} {reason}", fields)


def _too_late(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    """Whether Envoy's deadline for this Check has passed: an allow now is never forwarded."""
    try:
        remaining = context.time_remaining()
    except Exception:  # a context without deadlines (tests): never too late
        return False
    return remaining is not None and remaining <= 0


def _release(pipeline: Pipeline, ctx: Context) -> None:
    """Give back what the request took, in its own task: the answer does not wait for it, and a
    cancelled RPC does not cancel it."""
    task = asyncio.get_running_loop().create_task(pipeline.release(ctx))
    _completions.add(task)
    task.add_done_callback(_completions.discard)


class ExternalProcessorServicer(proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]  # generated, untyped
    """envoy.service.ext_proc.v3.ExternalProcessor/Process: one stream per HTTP request."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._seconds = metrics.RPC_SECONDS.labels(rpc="process")
        self._inflight = metrics.InFlight("process")
        self._streams = {outcome: metrics.PROCESS_STREAMS.labels(outcome=outcome)
                         for outcome in ("completed", "incomplete", "denied", "error")}

    async def Process(self, request_iterator: AsyncIterator[proc_pb2.ProcessingRequest],
                      context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        """Answer each message of one stream with a serialized ``ProcessingResponse`` (see
        ``add_process_to_server``): most answers change nothing and are encoded once."""
        pipeline = self.runtime.pipeline  # one pipeline for the whole exchange, even across reloads
        debug = self.runtime.config.server.debug_headers
        peers = self.runtime.peers  # other workers holding what their Check kept for this stream
        ex: Exchange | None = None
        outcome = "completed"

        def pending() -> float:  # reads ex as it is now
            return ex.flush_at if ex is not None else 0.0

        self._inflight.inc()
        try:
            async for msg in _with_pauses(request_iterator, pending):
                started = time.perf_counter()
                # None: a duplex answer's upstream paused past its flush deadline (ex.flush_at)
                kind = msg.WhichOneof("request") if msg is not None else "response_pause"
                try:
                    if ex is None:
                        ex = self._exchange(msg, kind)
                        if peers is not None:
                            await peers.localize(ex.handoff)
                    elif msg is not None and not ex.handoff.needed:
                        found = proc_adapter.check_handoff(msg)
                        if found is not None:
                            ex.handoff = found
                            if peers is not None:
                                await peers.localize(found)
                    ex.phases.append(kind)
                    ex.mutations = Mutations()
                    response = await self._handle(pipeline, ex, msg, kind, debug)
                except Deny as deny:
                    outcome = "denied"
                    proc_log.info("process denied %s", deny.reason, extra={"fields": {
                        "event": "process_denied", "reason": deny.reason, "status": deny.status,
                        "request_id": ex.request.id if ex else "", "phase": kind}})
                    metrics.child(metrics.DECISIONS, decision="deny", reason=deny.reason).inc()
                    yield proc_adapter.immediate_response(self._denial(pipeline, deny, ex)).SerializeToString()
                    return
                finally:
                    self._seconds.observe(time.perf_counter() - started)
                if isinstance(response, list):  # duplex: nothing (all held back), or a body and trailers
                    for one in response:
                        yield one
                else:
                    yield response
        except Exception:
            outcome = "error"
            proc_log.exception("Process stream failed")
            yield proc_adapter.immediate_response(self._denial(pipeline, InternalError(), ex)).SerializeToString()
        finally:
            self._inflight.dec()
            if ex is not None and ex.response_status == 0 and outcome == "completed":
                outcome = "incomplete"  # the client or upstream went away before a response
            self._streams[outcome].inc()
            if ex is not None:
                ex.facts.setdefault("outcome", outcome)
                # Envoy often ends the stream by cancelling it: the completion (settling budgets,
                # the audit outcome) must not be cancelled with it, so it runs as its own task.
                task = asyncio.get_running_loop().create_task(pipeline.complete(ex))
                _completions.add(task)
                task.add_done_callback(_completions.discard)
                await asyncio.shield(task)

    @staticmethod
    def _denial(pipeline: Pipeline, deny: Deny, ex: Exchange | None) -> Denial:
        """The refusal in the caller's protocol: the path's (by the config's protocol routes),
        the action Check read when it handed one over."""
        if ex is None:
            return render_denial(deny, None)
        return render_denial(deny, ex.request, protocol=pipeline.reader.protocol_of(ex.request),
                             action=ex.handoff.action)

    def _exchange(self, msg: proc_pb2.ProcessingRequest, kind: str) -> Exchange:
        headers: dict[str, str] = {}
        if kind == "request_headers":
            headers = proc_adapter.headers_dict(msg.request_headers, proc_adapter.REQUEST_NAMES)
        elif kind == "response_headers":  # no request phase: the answer names the request id
            request_id = proc_adapter.headers_dict(msg.response_headers, _REQUEST_ID).get("x-request-id", "")
            headers = {"x-request-id": request_id} if request_id else {}
        return Exchange(request=proc_adapter.request_from_headers(headers),
                        handoff=proc_adapter.check_handoff(msg) or Handoff())

    async def _handle(self, pipeline: Pipeline, ex: Exchange, msg: proc_pb2.ProcessingRequest | None, kind: str,
                      debug: bool) -> bytes | list[bytes]:
        if msg is None or (ex.handoff.response_body == "duplex" and kind in ("response_body", "response_trailers")):
            return await self._duplex(pipeline, ex, msg, kind)
        if kind == "request_headers":
            # Check decided per request whether bodies need to be seen (redaction, metering,
            # tools/list filtering); everything else streams through without buffering.
            return proc_adapter.headers_answer("request_headers", ex.mutations, request_body=ex.handoff.request_body,
                                               response_body=ex.handoff.response_body)
        if kind == "request_body":
            ex.request_body += msg.request_body.body
            if msg.request_body.end_of_stream:
                await pipeline.request_body(ex)
                ex.state["forwarded_body"] = (ex.mutations.body if ex.mutations.body is not None
                                              else ex.request_body)
            return proc_adapter.body_answer("request_body", ex.mutations,
                                            buffered=ex.handoff.request_body == "buffered")
        if kind == "response_headers":
            headers = proc_adapter.headers_dict(msg.response_headers)
            try:
                ex.response_status = int(headers.get(":status", "0"))
            except ValueError:
                ex.response_status = 0
            ex.response_headers = headers
            await pipeline.run("on_response_headers", ex)
            if debug:
                ex.mutations.set_header("x-authz-process", ",".join(ex.phases))
            return proc_adapter.headers_answer("response_headers", ex.mutations)
        if kind == "response_body":
            ex.response_chunk = msg.response_body.body
            ex.response_end = msg.response_body.end_of_stream
            mode = ex.handoff.response_body
            if mode == "buffered" or mode == "partial":
                ex.response_body += ex.response_chunk
            await pipeline.run("on_response_body", ex)
            return proc_adapter.body_answer("response_body", ex.mutations, buffered=mode == "buffered")
        if kind in ("request_trailers", "response_trailers"):
            out: bytes = proc_adapter.trailers_response(kind).SerializeToString()
            return out
        raise BadRequest(f"unexpected ext_proc message {kind!r}", reason="process.unexpected_message")

    @staticmethod
    async def _duplex(pipeline: Pipeline, ex: Exchange, msg: proc_pb2.ProcessingRequest | None, kind: str
                      ) -> list[bytes]:
        """An answer in FULL_DUPLEX_STREAMED: Envoy forwards only what is sent back, when it is
        sent: each chunk as the stages leave it (nothing while all of it is held back), what a
        pause releases, and at the end the rest (before the trailers' answer, when there are any)."""
        ex.flush_at = 0.0
        trailers = kind == "response_trailers"
        if ex.answer_closed:  # ended already (a refusal went out last): the rest is dropped
            return [proc_adapter.trailers_response(kind).SerializeToString()] if trailers else []
        if msg is None:
            await pipeline.run("on_response_pause", ex)
            body = ex.mutations.body
            end: bool = ex.answer_closed  # the pause may have ended the answer (a refusal)
            return [r.SerializeToString() for r in proc_adapter.streamed_body_responses(body or b"", end)] if (
                body or end) else []
        ex.response_chunk = b"" if trailers else msg.response_body.body
        ex.response_end = trailers or msg.response_body.end_of_stream
        await pipeline.run("on_response_body", ex)
        body = ex.mutations.body if ex.mutations.body is not None else ex.response_chunk
        # At trailers only what was still held (Envoy takes no body answer for a body it never
        # sent). A stage that ended the answer early (``answer_closed``) ends Envoy's body too.
        end = not trailers and (ex.response_end or ex.answer_closed)
        out = proc_adapter.streamed_body_responses(body, end) if (body or end) else []
        if trailers:
            out.append(proc_adapter.trailers_response(kind))
        return [r.SerializeToString() for r in out]


async def _with_pauses(messages: AsyncIterator[proc_pb2.ProcessingRequest], deadline: Callable[[], float]
                       ) -> AsyncIterator[proc_pb2.ProcessingRequest | None]:
    """Envoy's messages; and None whenever ``deadline()`` (time.monotonic(); 0: none) passes
    before the next one arrives. Without a deadline it reads exactly like ``async for``."""
    it = messages.__aiter__()
    waiting: asyncio.Future[proc_pb2.ProcessingRequest] | None = None
    try:
        while True:
            at = deadline()
            if waiting is None and not at:
                try:
                    msg = await it.__anext__()
                except StopAsyncIteration:
                    return
                yield msg
                continue
            if waiting is None:
                waiting = asyncio.ensure_future(it.__anext__())
            if at:
                done, _ = await asyncio.wait((waiting,), timeout=max(0.0, at - time.monotonic()))
                if not done:
                    yield None
                    continue
            task, waiting = waiting, None
            try:
                msg = await task
            except StopAsyncIteration:
                return
            yield msg
    finally:
        if waiting is not None:
            waiting.cancel()


def add_process_to_server(servicer: ExternalProcessorServicer, server: grpc.aio.Server) -> None:
    """Register ``Process`` as Envoy calls it, answering with the bytes it encoded itself."""
    handler: grpc.RpcMethodHandler[Any, Any] = grpc.stream_stream_rpc_method_handler(
        servicer.Process, request_deserializer=proc_pb2.ProcessingRequest.FromString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        PROCESS_SERVICE, {"Process": handler}),))


def add_to_server(servicer: AuthorizationServicer, server: grpc.aio.Server) -> None:
    """Register ``Check`` as Envoy calls it. The servicer answers with bytes it encoded itself
    (``authz.envoy.wire``), so there is no response serializer: grpc sends them as they are."""
    handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(
        servicer.Check, request_deserializer=auth_pb2.CheckRequest.FromString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        CHECK_SERVICE, {"Check": handler}),))
