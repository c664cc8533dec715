"""The service's OpenAPI document: BentoML's, made true to what the service does.

BentoML 1.4 generates the document from the endpoints' pydantic models, but it knows nothing
of the API keys `serving.app.GuardMiddleware` checks and it lists the same boilerplate error
answers for every endpoint (400 / 404 / 500 with a ``detail`` string), some of which these
endpoints never give, while it leaves out the ones they do give (401, 403, 413, 415, 422,
503, 504). `openapi_document` rewrites it:

* ``components.securitySchemes`` declares the API key (`SECURITY_SCHEME`, HTTP bearer:
  ``Authorization: Bearer <key>``) and every API operation requires it, so Swagger UI shows
  an **Authorize** button and sends the key with "Try it out"; the probes and metrics
  declare that they need none (``security: []``);
* each API operation documents the answers it really gives (`ERROR_STATUSES`, all with the
  `serving.schemas.ErrorResponse` body), and ``/high_risk`` and ``/segments`` their CSV;
* each API operation's JSON request body refers to its request model's component
  (``#/components/schemas/<Model>IODescriptor``, which BentoML generates from the model's
  validation schema) instead of BentoML's inline copy, which it generates from the
  serialization schema and flattens to the first branch of every union: a customer id,
  a string or an integer (`serving.schemas.CustomerId`), showed as a string only there,
  and ``as_of`` or ``segments``, which may be null, as never null;
* a request body whose model has required fields is marked required;
* BentoML's boilerplate goes: the error schemas nothing references any more, the unused task
  schema, BentoML's README and contact as the service description.

`serving.app.GuardMiddleware` serves the result, without a key, at ``/openapi.json`` and
``/docs.json`` (which the Swagger UI at ``/`` and ``/docs`` loads): the document describes
the API and holds no customer data. It serves BentoML's other description, the service
schema at ``/schema.json`` (which BentoML's own client reads), through `service_schema`:
BentoML flattens every union there too, so customer ids showed as strings only. Nothing
happens on import.
"""

from __future__ import annotations

import copy
import inspect
import json
from typing import Any

from serving.app import BATCH_HEADER, TOTAL_HEADER

__all__ = ["ERROR_STATUSES", "ROUTING_ERROR_STATUSES", "SECURITY_SCHEME", "openapi_document",
           "service_schema"]

#: The name of the API key's security scheme in the document.
SECURITY_SCHEME = "ApiKey"

_SCHEMAS = "#/components/schemas/"
_ERROR_SCHEMA = "ErrorResponse"

#: The error answers of every API endpoint (read from `serving.app` and BentoML 1.4's server:
#: `GuardMiddleware`, `rewrite_error`, `Runtime`, BentoML's TimeoutMiddleware), each with the
#: body ``{"error": "<message>", "detail": [...]}`` (`serving.schemas.ErrorResponse`).
ERROR_STATUSES: dict[int, str] = {
    400: "The body is not valid JSON (or its Content-Length header is not a number).",
    401: "No API key, or an unknown, malformed or revoked one: send `Authorization: Bearer "
         "<key>` with a key from `lifecast keys create`. Carries `WWW-Authenticate: Bearer`.",
    403: "The key lacks this endpoint's scope (`predict` for /predict and /score, `lists` "
         "for /high_risk and /segments).",
    413: "The body is larger than the service's limit on its size (LIFECAST_MAX_BODY_BYTES, "
         "2 MB by default; `error` gives the body's size): for /score it binds before the "
         "limits on customers and transactions (about 20,000 transactions of 100 bytes fit "
         "in 2 MB, far fewer than 100 customers of 1,000).",
    415: "The Content-Type is not application/json, the body is compressed "
         "(Content-Encoding: gzip, ...): send it uncompressed, or it is not UTF-8 (UTF-16, "
         "UTF-32, Latin-1 bytes): send it in UTF-8 (a UTF-8 byte order mark is ignored).",
    422: "The request does not match the schema: `error` names each field and what is wrong "
         "with it (e.g. `customer_ids: List should have at most 1000 items`), `detail` lists "
         "them one by one.",
    500: "An unexpected error (a bug): a generic message, the details are in the server log.",
    503: "Not ready: the customer store holds no scored batch yet (run `lifecast score`), "
         "the customer store, the API key store or (for list exports) the audit log cannot be "
         "used, or (/predict) the store's batch has other features than the service's models "
         "take; `error` says which, and what fixes it.",
    504: "The request took longer than the service's timeout (60 s).",
}

#: Error answers of one endpoint only, besides `ERROR_STATUSES`.
ENDPOINT_ERROR_STATUSES: dict[str, dict[int, str]] = {
    "/high_risk": {409: "The request's `batch_id` is not the customer store's current batch: "
                        "`lifecast score` rescored the store since the first page, or it is "
                        "no batch the store keeps (an unknown id); `error` says which. Start "
                        "the list again at offset 0."},
}

#: Error answers of no operation in the document: a path that is not one (with a valid key:
#: without one, 401 first) and a method an operation does not take. Listed in the document's
#: description, with the operations' statuses, as "Error answers".
ROUTING_ERROR_STATUSES: dict[int, str] = {
    404: "No such path (with a valid key; without one 401): the API endpoints are POST "
         "/predict, /score, /high_risk and /segments.",
    405: "A method the path does not take (e.g. GET /predict: the API takes POST with a "
         "JSON body); the `Allow` header names the methods it takes.",
}

#: Endpoints that answer text/csv with ``"format": "csv"``.
_CSV_ENDPOINTS = frozenset({"/high_risk", "/segments"})
#: BentoML's components that its error answers and task endpoints reference.
_BENTOML_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError", "TaskStatusResponse")


def openapi_document(spec: dict[str, Any], *, endpoints: dict[str, str], description: str,
                     version: str | None = None) -> dict[str, Any]:
    """BentoML's document (``service.openapi_spec.asdict()``) with the API key, the real
    error answers and without BentoML's boilerplate; ``endpoints`` maps each API path to the
    scope its key needs (`serving.keys.ENDPOINT_SCOPES`), ``description`` replaces BentoML's
    README text, ``version`` (when given) its version. The input is not changed."""
    from serving.schemas import ErrorResponse

    doc = copy.deepcopy(spec)
    info = doc.setdefault("info", {})
    info.pop("contact", None)  # "BentoML Team": not who answers for this service
    info["description"] = (inspect.cleandoc(description) + "\n\n" + _errors_section()).strip()
    if version:
        info["version"] = version
    components = doc.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "lc_<key id>_<secret>",
        "description": "An API key from `lifecast keys create --name <caller> --scope "
                       "predict|lists`, sent as `Authorization: Bearer <key>`.",
    }
    schemas = components.setdefault("schemas", {})
    schemas[_ERROR_SCHEMA] = ErrorResponse.model_json_schema(
        ref_template=_SCHEMAS + "{model}")

    for path, item in doc.get("paths", {}).items():
        for op in item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            if path not in endpoints:  # probes and metrics: no key
                op["security"] = []
                if path == "/readyz":
                    op["responses"]["503"] = {"description": (
                        "Not ready: the models are loading, the customer store holds no "
                        "scored batch yet (run `lifecast score`) or cannot be reached, or "
                        "its batch has other features than the service's models take "
                        "(/predict answers 503). Once the service is loaded, the body is "
                        '`{"error": "not ready: <why and what fixes it>"}`.')}
                continue
            op["security"] = [{SECURITY_SCHEME: []}]
            _request_body_by_reference(op, schemas)
            op["description"] = (f"{inspect.cleandoc(op.get('description') or '')}\n\n"
                                 f"Needs an API key with the scope `{endpoints[path]}`.").strip()
            ok = op["responses"].get("200") or op["responses"].get(200) or {}
            if path in _CSV_ENDPOINTS:
                ok.setdefault("content", {})["text/csv"] = {
                    "schema": {"type": "string",
                               "description": 'With "format": "csv": a header row and one '
                                              'row per item.'}}
                ok["headers"] = {
                    BATCH_HEADER: {
                        "description": 'With "format": "csv": the batch the rows come from '
                                       '(the JSON answer\'s `batch_id`; send it with the '
                                       'next pages).', "schema": {"type": "string"}},
                    **({TOTAL_HEADER: {
                        "description": 'With "format": "csv": how many customers match the '
                                       'filters, on every page (the JSON answer\'s `total`).',
                        "schema": {"type": "integer"}}} if path == "/high_risk" else {})}
            errors = {**ERROR_STATUSES, **ENDPOINT_ERROR_STATUSES.get(path, {})}
            op["responses"] = {"200": ok, **{str(status): _error(status, text) for status, text
                                             in sorted(errors.items())}}

    text = json.dumps(doc)
    for name in _BENTOML_SCHEMAS:
        if f'"{_SCHEMAS}{name}"' not in text:
            schemas.pop(name, None)
    return doc


def _errors_section() -> str:
    """Every error status the service answers, each with the JSON body ``{"error": ...}``."""
    statuses = {**ERROR_STATUSES, **ROUTING_ERROR_STATUSES}
    for endpoint, own in ENDPOINT_ERROR_STATUSES.items():
        for status, text in own.items():
            statuses.setdefault(status, f"{endpoint} only. {text}")
    lines = ["**Error answers**: every one of these statuses, on any path but the probes' "
             "own answers (/livez, /readyz), /metrics and the docs' pages, has the JSON body "
             '`{"error": "<what is wrong and what to do>"}` (`detail`: the fields, for 400 '
             "and 422), never a traceback:", ""]
    lines += [f"* {status}: {text}" for status, text in sorted(statuses.items())]
    return "\n".join(lines)


def _request_body_by_reference(op: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Point the operation's JSON request body at the component of the same title (BentoML
    names both after the request model), when there is one; a body whose model has required
    fields (/predict, /score) is itself required (OpenAPI's default is optional, and a request
    without one is a 422)."""
    body = (op.get("requestBody") or {}).get("content", {}).get("application/json")
    title = (body or {}).get("schema", {}).get("title")
    if title in schemas:
        body["schema"] = {"$ref": _SCHEMAS + title}
        if schemas[title].get("required"):
            op["requestBody"]["required"] = True


def _error(status: int, description: str) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _SCHEMAS + _ERROR_SCHEMA}}},
    }
    if status in (401, 403):
        answer["headers"] = {"WWW-Authenticate": {
            "description": "RFC 6750: `Bearer realm=\"lifecast\"` (403: with "
                           "`error=\"insufficient_scope\"` and the scope needed).",
            "schema": {"type": "string"}}}
    return answer


def service_schema(schema: dict[str, Any], apis: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """BentoML's service schema (``service.schema()``, served at ``/schema.json``) with each
    route's ``input`` and ``output`` the JSON schema of its models (``apis``: by route, the
    input and output pydantic models), references inlined as BentoML does, but every union
    kept: BentoML keeps only the first branch of each ``anyOf``, so a customer id (a string
    or an integer, `serving.schemas.CustomerId`) showed as a string only, and what may be
    null (``as_of``, ``segments``, ``expected_orders``) as never null. The input is the
    validation schema (what a request may hold), the output the serialization schema. Keys
    BentoML adds (``is_stream``, ``media_type``) stay. The input is not changed."""
    doc = copy.deepcopy(schema)
    for route in doc.get("routes", []):
        models = apis.get(route.get("route"))
        if models is None:
            continue
        request, answer = models
        added = {k: v for k, v in (route.get("output") or {}).items()
                 if k in ("is_stream", "media_type")}
        route["input"] = _inlined(request.model_json_schema())
        route["output"] = {**_inlined(answer.model_json_schema(mode="serialization")),
                           **added}
    return doc


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its ``#/$defs/...`` references replaced by the definitions (the
    layout of BentoML's service schema, which has no ``$defs``); a definition that refers to
    itself, through others or not, keeps its reference there."""
    defs = schema.pop("$defs", {})

    def walk(node: Any, active: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [walk(item, active) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name in defs and name not in active:
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**walk(defs[name], (*active, name)), **walk(rest, active)}
        return {k: walk(v, active) for k, v in node.items()}

    return walk(schema, ())
