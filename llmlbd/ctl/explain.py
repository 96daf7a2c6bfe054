"""`llmlbctl explain`: where a request would go now, and why. Reserves nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import click

from llmlbd import exits
from llmlbd.ctl.context import Ctl, pass_ctl
from llmlbd.ctl.output import emit, fmt_age, fmt_list, fmt_num, json_option, table
from llmlbd.state.members import effective_backends

__all__ = ["explain_command", "render_explain"]


class BadRequest(click.ClickException):
    """The request given to explain would be refused by the proxy itself."""

    exit_code = exits.BAD_CONFIG


def _fmt_score(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() else f"{value:.3f}"
    return str(value)


# Candidate columns in display order: (key, header, formatter).
_COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("name", "BACKEND", str),
    ("inflight", "INFLIGHT", str),
    ("weight", "WEIGHT", fmt_num),
    ("health", "HEALTH", str),
    ("drained", "DRAINED", lambda v: "yes" if v else "no"),
    ("models", "MODELS", fmt_list),
    ("metrics_age_ms", "METRICS AGE", fmt_age),
]
_HIDDEN = {"url", "stale"}


def _candidate_table(candidates: list[dict[str, Any]]) -> str:
    """A column for each field any candidate has: policies explain with different fields."""
    present = {key for c in candidates for key in c}
    columns = [col for col in _COLUMNS if col[0] in present]
    known = {col[0] for col in _COLUMNS} | _HIDDEN | {"removed_by", "score"}
    extra = sorted(present - known)
    headers = [h for _, h, _ in columns] + [k.upper().replace("_", " ") for k in extra]
    headers += ["REMOVED BY", "SCORE"]
    rows = []
    for c in candidates:
        row = []
        for key, _, fmt in columns:
            value = c.get(key)
            text = "-" if value is None and key != "drained" else fmt(value)
            if key == "metrics_age_ms" and c.get("stale"):
                text += " STALE"
            row.append(text)
        row += [_fmt_score(c.get(key)) for key in extra]
        row += [c.get("removed_by") or "", _fmt_score(c.get("score"))]
        rows.append(row)
    return table(headers, rows)


def render_explain(data: dict[str, Any]) -> str:
    req = data.get("request") or {}
    lines = [
        (f"pool {data['pool']}   " if data.get("pool") else "")
        + f"policy {data.get('policy')}   request {req.get('path', '?')} model "
        f"{req.get('model') or '(none)'}"
        + (f", {req['prompt_chars']} prompt chars" if req.get("prompt_chars") else "")
        + (", stream" if req.get("stream") else "")
    ]
    by = data.get("explained_by")
    if "policy" in data:
        lines.append(
            "explained by the policy itself"
            if by == "policy"
            else "explained by the generic explainer ("
            + ("exact for this policy" if data.get("exact") else "an approximation")
            + ")"
        )
    candidates = data.get("candidates") or []
    if candidates:
        lines.append("")
        lines.append(_candidate_table(candidates))
    filters = data.get("filters") or []
    if filters:
        lines.append("")
        lines.append(
            "filters: "
            + "; ".join(
                f"{f['name']}: " + (", ".join(f["removed"]) if f.get("removed") else "none removed")
                for f in filters
            )
        )
    if data.get("score_meaning"):
        lines.append(f"score: {data['score_meaning']}")
    if data.get("prefix_match") is not None:
        unit = data.get("prefix_match_unit", "")
        lines.append(f"prefix match: {data['prefix_match']} {unit}".rstrip())
    lines.append("")
    outcome = data.get("outcome") or {}
    if data.get("choice"):
        ties = [t for t in data.get("ties") or [] if t != data["choice"]]
        lines.append(
            f"-> {data['choice']}  (reason {data.get('reason')})"
            + (f"; tied with {', '.join(ties)}: one of them is picked at random" if ties else "")
        )
    else:
        lines.append(
            f"-> no backend: the client gets {outcome.get('status')} "
            f"{outcome.get('code', '')}: {outcome.get('message', '')}"
        )
    if data.get("note"):
        lines.append(f"note: {data['note']}")
    # Whatever else a policy's own explain returned.
    known = {
        "pool",
        "policy",
        "explained_by",
        "exact",
        "note",
        "request",
        "candidates",
        "filters",
        "score_meaning",
        "choice",
        "ties",
        "reason",
        "prefix_match",
        "prefix_match_unit",
        "outcome",
    }
    extra = {k: v for k, v in data.items() if k not in known}
    for key, value in extra.items():
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(
                f"expected 'Name: value', got {value!r}", param_hint="'-H' / '--header'"
            )
        headers[name.strip().lower()] = content.strip()
    return headers


@click.command("explain")
@click.option(
    "--body",
    "body_file",
    type=click.File("rb"),
    required=True,
    help="The request body (JSON), or - for standard input.",
)
@click.option(
    "--path",
    default="/v1/chat/completions",
    show_default=True,
    help="The request path the client would use.",
)
@click.option(
    "-H",
    "--header",
    "header_values",
    multiple=True,
    help="A request header, 'Name: value' (repeatable), e.g. x-llmlbd-criticality.",
)
@json_option
@pass_ctl
def explain_command(
    ctl: Ctl, body_file: Any, path: str, header_values: tuple[str, ...], as_json: bool
) -> None:
    """Where a request with this body would go now, and why: the pool its model
    selects (with several pools and no --pool), which filters
    removed which backends, the scores, the prefix match length. Nothing is
    reserved and no request is sent.

    Uses the policy's own explain method when it has one, else the generic
    explainer (exact for global_least_request, round_robin and random).
    Exits 0 when a backend would be chosen, 3 when no backend serves the
    model (404), 4 when every backend is down, drained or full (503/429),
    2 when the body is not a valid request.
    """
    from llmlbd.errors import LLMLBError
    from llmlbd.policy.context import PolicyContext
    from llmlbd.policy.explain import explain
    from llmlbd.server.parse import parse_request
    from llmlbd.state.leases import Leases

    body = body_file.read()
    headers = _headers(header_values)
    headers.setdefault("content-type", "application/json")
    try:
        request = parse_request(f"explain-{uuid.uuid4().hex[:12]}", "POST", path, headers, body)
    except LLMLBError as exc:
        raise BadRequest(f"the client would get {exc.status}: {exc.message}") from None
    pool = ctl.pool_for_model(request.model)
    if pool is None:  # no pool lists the model and none is the default: the proxy's 404
        from llmlbd.policy.outcomes import error_outcome
        from llmlbd.policy.pools import no_pool

        data = {
            "pool": None,
            "request": {"path": path, "model": request.model},
            "outcome": error_outcome(no_pool(request.model, ctl.config.pool_map())),
        }
        emit(data, as_json, render_explain)
        raise SystemExit(exits.NOT_FOUND)
    config, client, keys = ctl.config, ctl.client, ctl.use(pool).keys
    backends, _ = effective_backends(client, keys, pool.backends)
    # A Leases object so that policies can be built as in a worker; explain never calls it.
    leases = Leases(client, keys, "llmlbctl-explain", int(config.server.lease_ttl_s * 1000))
    ctx = PolicyContext(
        backends,
        pool.lb_config,
        keys,
        leases,
        client,
        stale_after_ms=config.collector.stale_after_ms,
    )
    data = {"pool": pool.name, **explain(pool.lb_policy, ctx, request)}
    emit(data, as_json, render_explain)
    if not data.get("choice"):
        status = (data.get("outcome") or {}).get("status")
        raise SystemExit(exits.NOT_FOUND if status == 404 else exits.UNHEALTHY)
