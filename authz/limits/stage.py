"""The limits stage: rate limits and budget reservations in Check, metering and settlement in
Process.

Check: every rate limit and budget that applies to the request is checked and consumed in one
store call (one Redis round trip per slot); a refusal is a 429 with ``Retry-After`` and the IETF
``RateLimit`` / ``RateLimit-Policy`` fields. A budget reserves an estimate (prompt size plus the
most the request may generate), so concurrent requests overshoot a budget by no more than what
the requests in flight used beyond their estimates. What was taken is registered on the context
(``ctx.on_refusal``): if the request does not go upstream after all, ``Pipeline.release`` gives
it back. What Check took also travels in the hand-off (rate charges, reservations), so a refusal in
Process before the request goes upstream gives it back too (``on_refused``).

Process: the response streams by (never buffered for this), its ``usage`` is read, and the
reservation is settled to what was really used: released when the upstream failed, the prompt
and the text streamed when the client went away mid-stream, kept when an answer reported nothing.
"""

from __future__ import annotations

import datetime
import logging
import math
from typing import Any

from prometheus_client import Counter

from authz import metrics
from authz.errors import TooManyRequests, Unavailable
from authz.limits.config import Budget, LimitsConfig, Price, RateLimit
from authz.limits.metering import Usage, UsageMeter
from authz.matching import CompiledConditions, CompiledMatch, Glob
from authz.matching.config import Conditions, Match
from authz.model import Context, Exchange, Metering, RateCharge, Reservation
from authz.pipeline import Stage
from authz.store import Store, StoreUnavailable
from authz.store import limits as alg

log = logging.getLogger("authz.limits")

RATE_DECISIONS = Counter("authz_rate_limit_decisions_total",
                         "Rate limit checks by limit id and outcome.", ["limit", "outcome"])
BUDGET_DECISIONS = Counter("authz_budget_decisions_total",
                           "Budget reservations by budget id and outcome.", ["budget", "outcome"])
BUDGET_CONSUMED = Counter("authz_budget_consumed_total",
                          "Settled consumption by budget id and unit (tokens, or micro-units of "
                          "currency).", ["budget", "unit"])
STORE_FAILURES = Counter("authz_limits_store_failures_total",
                         "Limit checks the store could not answer, by what was done about it.",
                         ["action"])

MICRO = 1_000_000  # costs are kept as integer micro-units of currency
METERED_APIS = frozenset({"chat.completions", "completions", "responses", "embeddings", "messages",
                          "images.generations", "audio.speech"})


def _input_tokens(value: Any, bytes_per_token: float) -> int:
    """Tokens in an embeddings ``input``: a string, token ids, or lists of either."""
    if isinstance(value, str):
        return math.ceil(len(value.encode()) / bytes_per_token)
    if isinstance(value, int) and not isinstance(value, bool):
        return 1
    if isinstance(value, list):
        return sum(_input_tokens(v, bytes_per_token) for v in value)
    return 0


def _safe(value: str) -> str:
    # Key parts come from tokens; keep hash tags and separators unambiguous.
    return value.replace("{", "(").replace("}", ")").replace(":", ";").replace("|", "/")


def period_bounds(period: str, now: datetime.datetime) -> tuple[str, datetime.datetime]:
    """The period's id and its end (UTC)."""
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%d"), start + datetime.timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + datetime.timedelta(days=32)).replace(day=1)
    return start.strftime("%Y-%m"), end


class _Selected:
    def __init__(self, match: Match, when: Conditions) -> None:
        self.match = CompiledMatch(match)
        self.when = CompiledConditions(when)

    def applies(self, ctx: Context, now: datetime.datetime) -> bool:
        return (self.match(ctx.request, ctx.action)
                and self.when.first_failure(ctx.principal, ctx.request, now) is None)


class LimitsStage(Stage):
    name = "limits"

    def __init__(self, cfg: LimitsConfig, store: Store, *, meter_all: bool = False) -> None:
        self.cfg = cfg
        self.store = store
        self.meter_all = meter_all  # read usage of every LLM answer (for audit), not only budgeted ones
        self._rates = tuple((r, _Selected(r.match, r.when)) for r in cfg.rate_limits)
        self._budgets = tuple((b, _Selected(b.match, b.when)) for b in cfg.budgets)
        self._prices = tuple((Glob((name,)), price) for name, price in cfg.prices.items())
        # Per rate limit, worked out once: GCRA emission interval and burst, RateLimit-Policy item.
        self._gcra: dict[str, tuple[float, int]] = {}
        self._policy_items: dict[str, str] = {}
        for r in cfg.rate_limits:
            count, window = r.count_and_window
            self._gcra[r.id] = (window * 1_000_000 / count, r.burst or count)
            self._policy_items[r.id] = f'"{r.id}";q={count};w={window}'

    # --- key building ----------------------------------------------------------------------------

    @staticmethod
    def dimensions(ctx: Context) -> dict[str, str | None]:
        p = ctx.principal
        action = ctx.action
        model = ctx.model
        return {
            "user": None if p.anonymous else p.subject,
            "tenant": p.tenant,
            "client": p.client,
            "route": ctx.facts.get("route"),
            "tool": action.name if action.kind == "tools/call" else None,
            "model": model,
        }

    @staticmethod
    def key_for(kind: str, limit_id: str, dims: tuple[str, ...], values: dict[str, str | None]
                ) -> str | None:
        parts = []
        for d in dims:
            v = values.get(d)
            if v is None:
                return None  # a limit keyed by a dimension this request lacks does not apply
            parts.append(f"{d}={_safe(v)}")
        # The hash tag is the dimension values: every key of one user shares a Redis slot.
        return f"{kind}:{{{'|'.join(parts)}}}:{limit_id}"

    # --- Check -----------------------------------------------------------------------------------

    async def on_request(self, ctx: Context) -> None:
        await self._limit(ctx)
        action = ctx.action
        if (self.meter_all and ctx.handoff.metering is None and action.protocol == "llm"
                and action.model and action.kind in METERED_APIS):
            self._prepare_metering(ctx, [])

    async def _limit(self, ctx: Context) -> None:
        if not self._rates and not self._budgets:
            return
        now = datetime.datetime.now(datetime.UTC)
        values = self.dimensions(ctx)
        rates: list[tuple[RateLimit, alg.RateOp]] = []
        for limit, sel in self._rates:
            if not sel.applies(ctx, now):
                continue
            key = self.key_for("rl", limit.id, limit.key, values)
            if key is None:
                continue
            interval_us, burst = self._gcra[limit.id]
            rates.append((limit, alg.RateOp(key, interval_us, burst)))
        reserves: list[tuple[Budget, alg.ReserveOp]] = []
        model = values["model"]
        if ctx.action.protocol == "llm" and model:
            for budget, sel in self._budgets:
                if not sel.applies(ctx, now):
                    continue
                key = self.key_for("bg", budget.id, budget.key, values)
                if key is None:
                    continue
                period_id, end = period_bounds(budget.period, now)
                amount = self._estimate(ctx, budget, model)
                cap = int(budget.limit if budget.unit == "tokens" else budget.limit * MICRO)
                ttl = int((end - now).total_seconds()) + 86400
                reserves.append((budget, alg.ReserveOp(f"{key}:{period_id}", cap, amount, ttl)))
        if not rates and not reserves:
            return
        try:
            result = await self.store.apply_limits([op for _, op in rates], [op for _, op in reserves])
        except StoreUnavailable as exc:
            self._store_failed(ctx, exc, [r for r, _ in rates] + [b for b, _ in reserves])
            return
        self._decide(ctx, now, rates, reserves, result)

    def _estimate(self, ctx: Context, budget: Budget, model: str) -> int:
        prompt = self._prompt_tokens(ctx)
        output = self._output_tokens(ctx)
        if budget.unit == "tokens":
            return prompt + output
        price = self.price_for(model)
        if price is None:
            return 0
        return math.ceil(prompt * price.input + output * price.output)

    def _prompt_tokens(self, ctx: Context) -> int:
        """The prompt's size in tokens, generously: its bytes / ``bytes_per_token``; for
        embeddings, each token id sent as a number counts one token (a list of small ids has
        fewer bytes than tokens)."""
        est = self.cfg.estimate
        by_size = math.ceil(len(ctx.request.body) / est.bytes_per_token)
        doc = ctx.view.body.document
        if ctx.action.kind == "embeddings" and isinstance(doc, dict):
            return max(by_size, _input_tokens(doc.get("input"), est.bytes_per_token))
        return by_size

    def _output_tokens(self, ctx: Context) -> int:
        """The most the request may generate: ``max_tokens`` (or the default) for text, nothing
        for embeddings, ``tokens_per_image`` per image asked for."""
        est = self.cfg.estimate
        kind = ctx.action.kind
        if kind == "embeddings":
            return 0
        if kind == "images.generations":
            doc = ctx.view.body.document
            n = doc.get("n") if isinstance(doc, dict) else None
            count = n if isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 100 else 1
            return count * est.tokens_per_image
        return min(ctx.action.max_tokens or est.default_max_tokens, est.max_output_tokens)

    def price_for(self, model: str) -> Price | None:
        for glob, price in self._prices:
            if glob(model):
                return price
        return None

    def _store_failed(self, ctx: Context, exc: StoreUnavailable, limits: list[RateLimit | Budget]) -> None:
        closed = [limit.id for limit in limits if limit.on_store_error == "fail_closed"]
        if closed:
            STORE_FAILURES.labels(action="fail_closed").inc()
            log.error("limit store unavailable, failing closed for %s: %s", ", ".join(closed), exc)
            raise Unavailable("rate limits and budgets cannot be checked right now; try again shortly",
                              reason="limits.store_unavailable", headers={"retry-after": "1"})
        STORE_FAILURES.labels(action="fail_open").inc()
        log.warning("limit store unavailable, failing open: %s", exc)
        ctx.facts["limits"] = {"store": "unavailable", "fail_open": [limit.id for limit in limits]}

    def _decide(self, ctx: Context, now: datetime.datetime, rates: list[tuple[RateLimit, alg.RateOp]],
                reserves: list[tuple[Budget, alg.ReserveOp]], result: alg.BatchResult) -> None:
        facts: dict[str, Any] = {}
        items = []
        for (limit, _), r in zip(rates, result.rates, strict=True):
            items.append(f'"{limit.id}";r={r.remaining};t={math.ceil(r.reset_us / 1e6)}')
            facts[limit.id] = {"allowed": r.allowed, "remaining": r.remaining}
        for (budget, op), b in zip(reserves, result.budgets, strict=True):
            facts[budget.id] = {"allowed": b.allowed, "reserved": op.amount, "used": b.used,
                                "remaining": b.remaining, "unit": budget.unit}
        ctx.facts["limits"] = facts
        headers = {}
        if items:
            headers["ratelimit-policy"] = ", ".join(self._policy_items[limit.id] for limit, _ in rates)
            headers["ratelimit"] = ", ".join(items)
        if result.allowed:
            for limit, _ in rates:
                metrics.child(RATE_DECISIONS, limit=limit.id, outcome="allowed").inc()
            for budget, _ in reserves:
                metrics.child(BUDGET_DECISIONS, budget=budget.id, outcome="reserved").inc()
            if self.cfg.headers_on_allowed:
                ctx.mutations.response_headers.update(headers)
            if reserves:
                self._prepare_metering(ctx, reserves)
            # Taken now; given back if the request does not go upstream after all.
            rate_ops, reserve_ops = [op for _, op in rates], [op for _, op in reserves]
            ctx.on_refusal.append(lambda: self.store.undo_limits(rate_ops, reserve_ops))
            if rate_ops:
                ctx.handoff.rate_charges = tuple(RateCharge(op.key, op.interval_us, op.cost) for op in rate_ops)
            return
        refused_rates = [(limit, r) for (limit, _), r in zip(rates, result.rates, strict=True)
                         if not r.allowed]
        for limit, r in zip([limit for limit, _ in rates], result.rates, strict=True):
            metrics.child(RATE_DECISIONS, limit=limit.id, outcome="allowed" if r.allowed else "limited").inc()
        if refused_rates:
            retry = max(math.ceil(r.retry_after_us / 1e6) for _, r in refused_rates)
            headers["retry-after"] = str(max(1, retry))
            ids = ", ".join(limit.id for limit, _ in refused_rates)
            raise TooManyRequests(f"rate limit exceeded ({ids}); retry in {headers['retry-after']}s",
                                  reason="rate_limited", headers=headers,
                                  details={"limits": [limit.id for limit, _ in refused_rates]})
        refused = [budget for (budget, _), b in zip(reserves, result.budgets, strict=True) if not b.allowed]
        for budget in refused:
            BUDGET_DECISIONS.labels(budget=budget.id, outcome="exceeded").inc()
        ends = [period_bounds(b.period, now)[1] for b in refused]
        headers["retry-after"] = str(max(1, math.ceil((min(ends) - now).total_seconds())))
        raise TooManyRequests(
            f"budget exhausted ({', '.join(b.id for b in refused)}); it renews at the start of the "
            f"next {refused[0].period} (UTC)", reason="budget.exceeded", headers=headers,
            details={"budgets": [b.id for b in refused]})

    def _prepare_metering(self, ctx: Context, reserves: list[tuple[Budget, alg.ReserveOp]]) -> None:
        action = ctx.action
        ctx.handoff.metering = Metering(
            reservations=tuple(Reservation(b.id, op.key, op.amount, b.unit) for b, op in reserves),
            model=ctx.model or "", stream=action.stream, prompt_tokens=self._prompt_tokens(ctx))
        ctx.want_body("response", "streamed")
        if action.stream and action.kind in ("chat.completions", "completions"):
            # OpenAI only reports usage in a stream when asked; ask, or spend goes unmetered.
            out = ctx.rewrite()
            body = out.document
            if isinstance(body, dict):
                options = body.get("stream_options")
                if not isinstance(options, dict) or options.get("include_usage") is not True:
                    options = dict(options) if isinstance(options, dict) else {}
                    options["include_usage"] = True
                    out.replace({**body, "stream_options": options})

    # --- Process ---------------------------------------------------------------------------------

    async def on_response_body(self, ex: Exchange) -> None:
        if ex.handoff.metering is None:
            return
        meter = ex.state.get("meter")
        if meter is None:
            meter = ex.state["meter"] = UsageMeter()
        if "text/event-stream" in ex.response_headers.get("content-type", ""):
            meter.feed_sse(ex.response_chunk, end=ex.response_end)
        else:
            buf = ex.state.get("json", b"") + ex.response_chunk
            if len(buf) <= 8 * 1024 * 1024:
                ex.state["json"] = buf
            if ex.response_end:
                meter.feed_json(ex.state.pop("json", b""))

    async def on_refused(self, ex: Exchange) -> None:
        """Process refused the request before it went upstream: give back every rate charge and
        reservation Check made for it, in the same one call per slot as a refusal in Check."""
        h = ex.handoff
        rate_ops = [alg.RateOp(c.key, c.interval_us, 0, c.cost) for c in h.rate_charges]
        reservations = h.metering.reservations if h.metering is not None else ()
        reserve_ops = [alg.ReserveOp(r.key, 0, r.amount, 0) for r in reservations]
        if not rate_ops and not reserve_ops:
            return
        try:
            await self.store.undo_limits(rate_ops, reserve_ops)
        except StoreUnavailable as exc:
            log.error("could not give back the limits of refused request %s: %s", ex.request.id, exc)
            return
        for r in reservations:
            ex.facts.setdefault("budgets", {})[r.id] = {"reserved": r.amount, "actual": 0,
                                                        "unit": r.unit, "settled": "released"}

    async def on_complete(self, ex: Exchange) -> None:
        budget = ex.handoff.metering
        if budget is None or ex.refused:  # refused before upstream: released by ``on_refused``
            return
        meter: UsageMeter | None = ex.state.get("meter")
        if meter is not None and "json" in ex.state:  # stream ended without end_of_stream
            meter.feed_json(ex.state.pop("json"))
        usage = meter.usage if meter is not None else Usage()
        status = ex.response_status
        for r in budget.reservations:
            reserved = r.amount
            if usage.seen:
                actual = self._cost(r.unit, budget.model, usage)
                why = "metered"
            elif budget.stream and 200 <= status < 300 and not ex.response_end and meter is not None:
                # Cut short (the client went away): no usage will come. Charge the prompt and
                # the output that was streamed, not the whole reservation.
                streamed = Usage(input_tokens=budget.prompt_tokens, seen=True,
                                 output_tokens=math.ceil(meter.streamed_bytes / self.cfg.estimate.bytes_per_token))
                actual, why = min(reserved, self._cost(r.unit, budget.model, streamed)), "streamed"
            elif status == 0 or status >= 400:
                actual, why = 0, "released"   # nothing was generated (or billed) for an error
            else:
                actual, why = reserved, "kept"  # answered but no usage seen: assume the worst
                log.warning("budget %s: request %s was answered %s without usage; its reservation of %d "
                            "stays charged", r.id, ex.request.id, status, reserved)
            delta = actual - reserved
            try:
                if delta:
                    await self.store.incr(r.key, delta, ttl=self.cfg.reservation_ttl_seconds)
            except StoreUnavailable as exc:
                log.error("could not settle budget %s (delta %d): %s", r.id, delta, exc)
                why = "settle_failed"
            metrics.child(BUDGET_CONSUMED, budget=r.id, unit=r.unit).inc(max(actual, 0))
            ex.facts.setdefault("budgets", {})[r.id] = {"reserved": reserved, "actual": actual,
                                                        "unit": r.unit, "settled": why}
        if usage.seen:
            ex.facts["usage"] = usage.as_dict()

    def _cost(self, unit: str, model: str, usage: Usage) -> int:
        if unit == "tokens":
            return usage.total
        price = self.price_for(model)
        if price is None:
            return 0
        cached_price = price.cached_input if price.cached_input is not None else price.input
        uncached = max(0, usage.input_tokens - usage.cached_tokens)
        return math.ceil(uncached * price.input + usage.cached_tokens * cached_price
                             + usage.output_tokens * price.output)
