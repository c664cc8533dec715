"""The BentoML service: ``bentoml serve serving.service:Lifecast`` (or ``lifecast serve``).

Endpoints (JSON over HTTP; the Swagger UI is ``/`` and ``/docs``, the OpenAPI document
``/openapi.json`` and ``/docs.json``; they need no key, see `_openapi_document`):

=============  ========  =====================================================================
endpoint       scope     what
=============  ========  =====================================================================
/predict       predict   ``{"customer_ids": [...]}`` (1-1,000): per customer the output of
                         DESIGN.md from the champion models and the customer store's features
                         (the batch's ``as_of``; ``batch_model_versions``: the models that
                         scored the batch); unknown ids in ``errors``
/score         predict   ``{"customers": [{"customer_id", "transactions": [...]}], "as_of"}``:
                         real-time scoring from the caller's own history; the baseline
                         features from the population of the batch ``batch_id`` names (the
                         store's current one, as /predict's)
/high_risk     lists     the ranked list by value at risk of the high-risk customers
                         (``churn_risk``, default ``["high"]``; null: every customer; other
                         filters, ``limit``/``offset``, ``format`` json or csv), audited
/segments      lists     segment sizes, mean churn probability, value at risk, audited
/livez /readyz  (open)   BentoML's probes (``/healthz`` is ``/livez``); ``/readyz`` is 503
                         until the models and a scored batch of the store are loaded, while
                         the store cannot be reached (looked at every
                         ``LIFECAST_STORE_CHECK_SECONDS``) and while the store's batch has
                         other features than the models take (/predict answers 503 then);
                         its 503 says why (`_not_ready`)
/metrics        (open)   Prometheus metrics
/docs, /        (open)   Swagger UI (**Authorize** takes the API key); ``/openapi.json`` and
                         ``/docs.json`` the OpenAPI document; ``/schema.json`` BentoML's
                         service schema (`_service_schema`)
=============  ========  =====================================================================

Requests and responses are the models of `serving.schemas`; the logic is `serving.app.Runtime`
and `serving.app.GuardMiddleware` (keys, body size limit, readable 4xx errors).

Configuration (environment, read when a worker starts):

* ``LIFECAST_CHURN_MODEL`` / ``LIFECAST_CLV_MODEL``: BentoML model tags (default
  ``lifecast-churn:latest`` / ``lifecast-clv:latest``, which `serving.serve_cli.import_champions`
  keeps pointing at the MLflow champions). They are resolved from the BentoML model store
  (``BENTOML_HOME``) when the worker starts, and ``bentoml build`` packs them into the Bento.
* ``LIFECAST_STORE_URL`` (default ``sqlite:///<cwd>/lifecast_store.db``), ``LIFECAST_KEYS_FILE``
  (default ``./.lifecast/keys.json``), ``LIFECAST_AUDIT_LOG`` (default ``./.lifecast/audit.log``),
  ``LIFECAST_MAX_BODY_BYTES`` (default 2 MB), ``LIFECAST_STORE_CHECK_SECONDS`` (default 30).
* ``LIFECAST_CORS_ORIGINS``: the origins whose web apps may call the service from a browser
  (comma-separated, e.g. ``https://crm.example.com``; ``*`` for any). Their preflights are
  answered without a key, the requests still need one (`serving.app.CorsMiddleware`). Unset:
  no CORS headers.
* BentoML's own settings (workers, access log, timeouts) through ``BENTOML_CONFIG_OPTIONS``,
  e.g. ``services.lifecast.logging.access.enabled=false`` (what ``lifecast serve
  --no-access-log`` sets; the access log costs about a quarter of the throughput).

Performance notes (measured on the prototype): the models are called as native LightGBM
boosters on numpy arrays with ``num_threads=1`` (about 3.6x the throughput of the MLflow pyfunc;
more threads only add latency to small requests: scale with workers); ``gc.freeze()`` after
loading removes ~130 ms collection pauses; no adaptive batching (with a small
``max_latency_ms`` it answers 503 under load, and requests are already vectorized).
/predict reads the store without pandas (`serving.app.Runtime.predict`, about 0.25 ms
in-process for one id, with LightGBM's single-row fast path) and, for a few ids, runs on the
event loop instead of a worker thread (see `Lifecast.predict`); JSON answers go out as one plain
response (`_json`); bench/README.md "Serving" has the figures.

Importing this module imports the request schemas (and with them the `features` package) and
parses the model tags; nothing is loaded, connected or written until BentoML creates the
service instance in a worker.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

import anyio
import bentoml
from bentoml.models import BentoModel
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from serving.app import (
    CHURN_MODEL_ENV,
    CLV_MODEL_ENV,
    KEY_STATE,
    SERVICE_NAME,
    CorsMiddleware,
    CsvAnswer,
    GuardMiddleware,
    ServiceError,
)
from serving.schemas import (
    HighRiskRequest,
    HighRiskResponse,
    PredictRequest,
    PredictResponse,
    ScoreRequest,
    ScoreResponse,
    SegmentsRequest,
    SegmentsResponse,
)

logger = logging.getLogger("lifecast.serving")

DEFAULT_TAGS = {"churn": "lifecast-churn:latest", "clv": "lifecast-clv:latest"}
#: /predict requests with at most this many ids are answered on the event loop (a few ms at
#: most); larger ones in a worker thread.
INLINE_IDS = 16


def _error(exc: ServiceError, ctx: Any) -> JSONResponse:
    if ctx is not None:  # BentoML gives the answer the context's status code
        ctx.response.status_code = exc.status
    return JSONResponse({"error": exc.message}, status_code=exc.status)


def _json(answer: BaseModel, ctx: Any) -> BaseModel | Response:
    """An answer as BentoML would send it, made cheaper over HTTP.

    Over HTTP (``ctx`` given) the answer's JSON, from the pydantic model's own serializer
    (exactly the bytes BentoML's JSON serde would send), goes out as one plain response with
    its Content-Length. BentoML's own path wraps it in a streaming response that sends the
    body through every middleware in three messages; at one worker's ~800 requests per second
    that was about a tenth of its CPU. A direct call (tests, notebooks) gets the model."""
    if ctx is None:
        return answer
    return Response(answer.model_dump_json().encode(), media_type="application/json")


def _csv(answer: CsvAnswer, filename: str) -> Response:
    return Response(answer.text, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"',
                             **answer.headers})


def _caller(ctx: Any) -> tuple[Any, str | None]:
    """The caller's key (left by `GuardMiddleware`) and address, when called over HTTP."""
    try:
        request = ctx.request
    except (AttributeError, LookupError):
        return None, None
    key = getattr(request.state, KEY_STATE, None)
    client = request.client.host if request.client else None
    return key, client


#: Set to 1 (with BentoML's tracing configuration: exporter, sample rate) to trace requests.
#: Otherwise every path is excluded from BentoML's OpenTelemetry middleware: with no exporter
#: its spans go nowhere, and creating them cost ~10% of a worker's CPU per /predict.
TRACING_ENV = "LIFECAST_TRACING"
_TRACING = os.environ.get(TRACING_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@bentoml.service(
    name=SERVICE_NAME,
    description="Churn probability, predicted customer value, segments and reasons.",
    traffic={"timeout": 60},
    # the access log is on by default; `lifecast serve --no-access-log` turns it off
    logging={"access": {"enabled": True}},
    **({} if _TRACING else {"tracing": {"excluded_urls": [".*"]}}),
)
class Lifecast:
    """lifecast: churn probability and future customer value.

    Every API endpoint needs an API key (`lifecast keys create`), sent as
    `Authorization: Bearer <key>` (on this page: **Authorize**, then paste the key): scope
    `predict` for /predict and /score (the CRM), `lists` for /high_risk and /segments
    (marketing). This page, the OpenAPI document (/openapi.json, /docs.json), the probes and
    /metrics need no key: they describe the service and hold no customer data.

    Errors are `{"error": "<what is wrong, naming the field>", "detail": [...]}` with the
    status each operation lists below (all of them: **Error answers**, at the end).
    """

    # Resolved from the BentoML model store when the worker starts (and packed by
    # `bentoml build`). Not named like an API method: that makes the worker restart forever.
    churn_bento_model = BentoModel(os.environ.get(CHURN_MODEL_ENV) or DEFAULT_TAGS["churn"])
    clv_bento_model = BentoModel(os.environ.get(CLV_MODEL_ENV) or DEFAULT_TAGS["clv"])

    def __init__(self) -> None:
        from serving.app import Runtime, model_folder, quiet_validation_errors

        if logger.level == logging.NOTSET:  # BentoML shows warnings only for other loggers
            logger.setLevel(logging.INFO)
        quiet_validation_errors()
        churn, clv = self.churn_bento_model, self.clv_bento_model
        versions = {kind: m.info.labels.get("registry_version") or m.tag.version
                    for kind, m in (("churn", churn), ("clv", clv))}
        self.runtime = Runtime.from_environment(
            model_folder(churn.path), model_folder(clv.path), versions)
        self._large_requests = anyio.CapacityLimiter(1)  # /predict with many ids: one at a time
        logger.info("lifecast models loaded: %s (churn v%s), %s (clv v%s)", churn.tag,
                    versions["churn"], clv.tag, versions["clv"])
        # everything loaded is long-lived: keep the collector from scanning it (removed
        # ~130 ms pauses in the prototype)
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return self.runtime.is_ready()

    # Each API takes its request model's fields as keyword arguments (BentoML validates the
    # body against `input_spec` first); they are validated again here, so a direct call
    # (tests, notebooks) gets the same checks. Errors become JSON answers with their status.

    @bentoml.api(input_spec=PredictRequest, output_spec=PredictResponse)
    async def predict(self, ctx: bentoml.Context = None, **request: Any
                      ) -> PredictResponse | Response:
        """Churn probability, predicted value, segment, lifecycle stage and reasons of
        customers in the customer store, every field from the champion models the service
        runs, applied to the store's features as of the batch's `as_of`. Unknown ids are
        listed in `errors`; they never fail the batch. `batch_model_versions` names the
        models that scored the store's batch (whose scores /high_risk and /segments return):
        after a new champion they differ until `lifecast score` rescores the store with it
        (or, when the store was rescored first, until `lifecast serve` is restarted to serve
        it)."""
        # Asynchronous, unlike the other endpoints: a request for a few ids (about 1 ms of
        # work) runs on the event loop, which halved the latency of one-id requests against
        # BentoML's hop to its worker thread and back; larger ones go to one worker thread
        # of their own, so that they do not hold up the small ones. A direct call (tests,
        # notebooks) returns a coroutine: `asyncio.run(service.predict(customer_ids=[...]))`.
        try:
            req = PredictRequest.model_validate(request)
            if len(req.customer_ids) <= INLINE_IDS:
                return _json(self.runtime.predict(req.customer_ids), ctx)
            return _json(await anyio.to_thread.run_sync(
                self.runtime.predict, req.customer_ids, limiter=self._large_requests), ctx)
        except ServiceError as exc:
            return _error(exc, ctx)

    @bentoml.api(input_spec=ScoreRequest, output_spec=ScoreResponse)
    def score(self, ctx: bentoml.Context = None, **request: Any) -> ScoreResponse | Response:
        """Real-time scoring from the caller's own recent transactions (a new customer, an
        order just placed), with the batch pipeline's features, the population's BG/NBD +
        Gamma-Gamma baseline and the segment thresholds saved with the model. `batch_id`
        names the customer store batch whose population gave the baseline: the store's
        current one, as for /predict (after `lifecast score`, the new batch at once)."""
        try:
            return _json(self.runtime.score(ScoreRequest.model_validate(request)), ctx)
        except ServiceError as exc:
            return _error(exc, ctx)

    @bentoml.api(input_spec=HighRiskRequest, output_spec=HighRiskResponse)
    def high_risk(self, ctx: bentoml.Context = None, **request: Any) -> HighRiskResponse | Response:
        """The ranked list of who to act on first (highest value at risk first), filtered and
        paginated, from the latest batch scores; `format: csv` answers text/csv. Audited.
        By default only the customers whose `churn_risk` is `high`: send `"churn_risk":
        ["medium", "high"]` to widen it, or `"churn_risk": null` to rank every customer."""
        key, client = _caller(ctx)
        try:
            result = self.runtime.high_risk(HighRiskRequest.model_validate(request), key=key,
                                            client=client)
        except ServiceError as exc:
            return _error(exc, ctx)
        if isinstance(result, CsvAnswer):
            return _csv(result, "high_risk.csv")
        return _json(result, ctx)

    @bentoml.api(input_spec=SegmentsRequest, output_spec=SegmentsResponse)
    def segments(self, ctx: bentoml.Context = None, **request: Any) -> SegmentsResponse | Response:
        """Segment sizes and shares, mean churn probability, total value at risk and total
        predicted value per segment of the latest batch. Audited."""
        key, client = _caller(ctx)
        try:
            result = self.runtime.segments(SegmentsRequest.model_validate(request), key=key,
                                           client=client)
        except ServiceError as exc:
            return _error(exc, ctx)
        if isinstance(result, CsvAnswer):
            return _csv(result, "segments.csv")
        return _json(result, ctx)

    @bentoml.on_shutdown
    def _close(self) -> None:
        self.runtime.close()
        gc.unfreeze()  # let the interpreter's final collection free them (DuckDB complains)


def _openapi_document() -> dict[str, Any]:
    """The OpenAPI document `GuardMiddleware` serves without a key at /openapi.json and
    /docs.json: BentoML's, with the API key's security scheme, the error answers the
    endpoints really give and without BentoML's boilerplate (`serving.openapi`). It holds
    no customer data: endpoints, schemas and examples only."""
    from importlib.metadata import PackageNotFoundError, version

    from serving.keys import ENDPOINT_SCOPES
    from serving.openapi import openapi_document

    try:
        package_version = version("lifecast")
    except PackageNotFoundError:  # a Bento runs the sources: keep BentoML's (the Bento's)
        package_version = None
    return openapi_document(Lifecast.openapi_spec.asdict(), endpoints=ENDPOINT_SCOPES,
                            description=Lifecast.inner.__doc__ or "", version=package_version)


def _service_schema() -> dict[str, Any]:
    """BentoML's service schema, which `GuardMiddleware` serves at /schema.json (BentoML's
    client reads it), with the requests' and answers' real types (`serving.openapi`)."""
    from serving.openapi import service_schema

    apis = {api.route: (api.input_spec, api.output_spec) for api in Lifecast.apis.values()}
    return service_schema(Lifecast.schema(), apis)


def _not_ready() -> str | None:
    """Why this worker's service is not ready (`serving.app.Runtime.not_ready`, left by the
    readiness check BentoML runs for /readyz), for the body of /readyz's 503; None before
    the service instance exists."""
    try:
        instance = bentoml.get_current_service()
    except bentoml.exceptions.BentoMLException:
        return None
    runtime = getattr(instance, "runtime", None)
    return getattr(runtime, "not_ready", None)


# CORS first, so that it runs before the key check: a browser's preflight carries no key
Lifecast.add_asgi_middleware(CorsMiddleware)
Lifecast.add_asgi_middleware(GuardMiddleware, openapi=_openapi_document, schema=_service_schema,
                             not_ready=_not_ready)
