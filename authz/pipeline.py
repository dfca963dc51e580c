"""One pipeline of stages. The order of stages is visible in one place: ``build_pipeline``.

A stage is a small object that implements any of these async hooks:

- ``on_request(ctx: Context)``          ext_authz ``Check``: identity, policy, limits, routing
- ``on_request_body(ex: Exchange)``     ext_proc request body: redaction
- ``on_response_headers(ex: Exchange)`` ext_proc response headers
- ``on_response_body(ex: Exchange)``    ext_proc response body: metering, tools/list filtering, answer redaction
- ``on_response_pause(ex: Exchange)``   a duplex answer's upstream paused past ``ex.flush_at``: held text
- ``on_complete(ex: Exchange)``         the exchange ended (normally or not): settle, audit
- ``on_decision(ctx, deny)``            ``Check`` decided (``deny`` is None when allowed): audit
- ``on_refused(ex: Exchange)``          Process refused the request before it went upstream: give
                                        back what Check took for it (from the hand-off)

A hook returns nothing: it edits the context (principal, mutations, facts) or raises ``Deny``.
Which hooks a stage implements is resolved once when the pipeline is built, so the per-request
path only walks the stages that care about that phase.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from authz import metrics, tracing
from authz.errors import Deny, InternalError, Unavailable
from authz.model import Context, Exchange, Request
from authz.request import BodyStash, Reader

log = logging.getLogger("authz.pipeline")

HOOKS = ("on_request", "on_request_body", "on_response_headers", "on_response_body", "on_response_pause",
         "on_complete", "on_decision", "on_refused")


class Stage:
    """Base class for stages. Override the hooks you need; the rest are skipped."""

    name: str = "stage"

    async def on_request(self, ctx: Context) -> None:  # pragma: no cover - never called
        raise NotImplementedError

    async def on_request_body(self, ex: Exchange) -> None:  # pragma: no cover
        raise NotImplementedError

    async def on_response_headers(self, ex: Exchange) -> None:  # pragma: no cover
        raise NotImplementedError

    async def on_response_body(self, ex: Exchange) -> None:  # pragma: no cover
        raise NotImplementedError

    async def on_response_pause(self, ex: Exchange) -> None:  # pragma: no cover
        raise NotImplementedError

    async def on_complete(self, ex: Exchange) -> None:  # pragma: no cover
        raise NotImplementedError

    async def on_decision(self, ctx: Context, deny: Deny | None) -> None:  # pragma: no cover
        raise NotImplementedError

    async def on_refused(self, ex: Exchange) -> None:  # pragma: no cover
        raise NotImplementedError

    def implements(self, hook: str) -> bool:
        return getattr(type(self), hook) is not getattr(Stage, hook)

    async def close(self) -> None:
        """Release resources when the pipeline is replaced or the server stops."""


Hook = Callable[..., Awaitable[None]]  # (Context | Exchange) or, for on_decision, (Context, Deny | None)


class Pipeline:
    """Runs stages in order for each phase. Immutable once built; reload swaps the whole object."""

    def __init__(self, stages: Sequence[Stage], *, reader: Reader | None = None,
                 stash: BodyStash | None = None, sealed_prefix: str = "x-authz-") -> None:
        self.stages = tuple(stages)
        self.sealed_prefix = sealed_prefix  # request headers under it never reach the upstream
        self.reader = reader or Reader()
        # The runtime passes its own: it outlives a reload (an empty stash is falsy: test for None).
        self.stash = stash if stash is not None else BodyStash()
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stage names: {names}")
        # Resolved once: (stage name, bound hook, its latency histogram child).
        self._hooks: dict[str, tuple[tuple[str, Hook, Any], ...]] = {
            hook: tuple((s.name, getattr(s, hook), metrics.STAGE_SECONDS.labels(stage=s.name, phase=hook))
                        for s in self.stages if s.implements(hook))
            for hook in HOOKS
        }

    def has(self, hook: str) -> bool:
        return bool(self._hooks[hook])

    def context(self, request: Request) -> Context:
        """The context of one ``Check``, with the request read once."""
        return Context(request=request, view=self.reader.read(request))

    async def check(self, ctx: Context) -> None:
        """Run ``Check``'s stages; when they rewrote the body, encode it once and keep it for
        Process to forward. Raises ``Deny``.

        Every request header under the sidecar's namespace is removed first, whoever set it;
        a stage that sets one of them after that wins over the removal."""
        m = ctx.mutations
        prefix = self.sealed_prefix
        if prefix:
            m.remove_headers.update(n for n in ctx.request.headers if n.startswith(prefix))
        await self.run("on_request", ctx)
        if m.remove_headers and m.set_headers:
            m.remove_headers.difference_update(m.set_headers)
        out = ctx.outgoing
        if out is not None and out.changed:
            ctx.handoff.body_key = self.stash.put(ctx.request.body, out.encode())
            ctx.handoff.want_body("request", "buffered")

    async def request_body(self, ex: Exchange) -> None:
        """The whole request body arrived in Process: swap in what Check made of it, then run the
        stages that look at it. Raises ``Deny``: the request then never goes upstream (Envoy
        holds a buffered body until it is answered), so ``complete`` gives back what Check took."""
        try:
            key = ex.handoff.body_key
            if key:
                body = self.stash.take(key, ex.request_body)
                if body is None:  # this process restarted since Check, or the body is not the one checked
                    raise Unavailable("the request changed or expired between its check and its "
                                      "forwarding; retry", reason="body.rewrite_lost")
                ex.mutations.replace_body(body)
            await self.run("on_request_body", ex)
        except Deny:
            ex.refused = True
            raise

    async def run(self, hook: str, subject: Context | Exchange) -> None:
        """Run every stage's ``hook`` in order. Raises ``Deny``; any other error becomes
        ``InternalError`` (fail closed) after being logged with its traceback."""
        for name, fn, seconds in self._hooks[hook]:
            started = time.perf_counter()
            try:
                if tracing.TRACER is None:
                    await fn(subject)
                else:
                    with tracing.stage_span(name, hook):
                        await fn(subject)
            except Deny:
                raise
            except Exception as exc:
                log.exception("stage %s crashed in %s", name, hook)
                raise InternalError(reason="internal_error", details={"stage": name}) from exc
            finally:
                seconds.observe(time.perf_counter() - started)

    async def complete(self, ex: Exchange) -> None:
        """Run ``on_complete`` for every stage, even if one fails: cleanup must not be skipped.
        A request Process refused before it went upstream is released first."""
        if ex.refused:
            await self.release(ex)
        for name, fn, _ in self._hooks["on_complete"]:
            try:
                await fn(ex)
            except Exception:
                log.exception("stage %s failed in on_complete", name)

    async def decided(self, ctx: Context, deny: Deny | None) -> None:
        """Tell every stage how ``Check`` ended. A stage may still refuse an allowed request by
        raising ``Deny`` (audit that cannot record, configured to fail closed); other errors are
        logged and do not change the answer."""
        for name, fn, _ in self._hooks["on_decision"]:
            try:
                await fn(ctx, deny)
            except Deny:
                if deny is None:
                    raise
                log.exception("stage %s raised while recording a denial", name)
            except Exception:
                log.exception("stage %s failed in on_decision", name)

    async def release(self, subject: Context | Exchange) -> None:
        """The one rule for what a request that does not go upstream costs: nothing. Called when
        ``Check`` ends in anything but an allow Envoy receives in time (a stage after limits
        refused, an approval hold or grant, audit refusing, the answer coming after Envoy's
        timeout, the RPC cancelled), and when Process refuses a request Check allowed before it
        goes upstream (``body.rewrite_lost``): what stages took for the request is given back.
        In Check, by what the stages registered on the context; in Process (maybe another
        process, or after a reload), by each stage's ``on_refused`` from the hand-off."""
        if isinstance(subject, Exchange):
            for name, fn, _ in self._hooks["on_refused"]:
                try:
                    await fn(subject)
                except Exception:
                    log.exception("stage %s could not give back what request %s took", name,
                                  subject.request.id)
            return
        undo, subject.on_refusal = subject.on_refusal, []
        for give_back in undo:
            try:
                await give_back()
            except Exception:
                log.exception("could not give back what request %s took", subject.request.id)

    async def start(self) -> None:
        """Start what stages run in the background (the audit writer). Called once the
        pipeline is about to serve, inside the event loop."""
        for stage in self.stages:
            start = getattr(stage, "start", None)
            if start is not None:
                await start()

    async def close(self) -> None:
        for stage in self.stages:
            try:
                await stage.close()
            except Exception:
                log.exception("stage %s failed to close", stage.name)
