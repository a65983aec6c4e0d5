"""The API reference page at ``/docs``: plain HTML rendered from the OpenAPI schema.

FastAPI's own ``/docs`` loads Swagger UI's scripts and styles from a CDN, so on a machine
without internet access it shows a blank page. This one is written on the server from
the same schema that ``/openapi.json`` serves, needs no script and references nothing
outside the page, so it works offline and shows exactly what the service accepts.
"""

from __future__ import annotations

import html
import json

STYLE = """
body { font: 16px/1.45 system-ui, sans-serif; max-width: 56rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h2 code { background: #eef4ff; padding: .1rem .4rem; border-radius: 4px; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
pre { background: #f6f6f6; padding: .6rem; overflow-x: auto; }
"""


def _type(schema: dict) -> str:
    """A short type name: ``integer``, ``array of string``, ``string or null``, or a component's name."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_type(option) for option in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {_type(schema.get('items', {}))}"
    return schema.get("format", schema.get("type", "any"))


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; the cells are escaped here."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _operation(path: str, method: str, operation: dict) -> str:
    parts = [f"<h2><code>{method.upper()} {html.escape(path)}</code></h2>"]
    parts.append(f"<p>{html.escape(operation.get('description') or operation.get('summary', ''))}</p>")
    parameters = [
        [
            p["name"],
            p["in"],
            _type(p.get("schema", {})),
            json.dumps(p.get("schema", {}).get("default")),
            p.get("description", ""),
        ]
        for p in operation.get("parameters", [])
    ]
    if parameters:
        parts.append(_table(["parameter", "in", "type", "default", "description"], parameters))
    body = operation.get("requestBody", {}).get("content", {})
    if body:
        parts.append("<p>Request body, one of: " + ", ".join(f"<code>{html.escape(t)}</code>" for t in body) + "</p>")
    responses = []
    for status, response in operation.get("responses", {}).items():
        schemas = [_type(content.get("schema", {})) for content in response.get("content", {}).values()]
        responses.append([status, response.get("description", ""), ", ".join(schemas)])
    parts.append(_table(["status", "meaning", "body"], sorted(responses)))
    return "".join(parts)


def _component(name: str, schema: dict) -> str:
    required = set(schema.get("required", []))
    rows = [
        [field, _type(spec), "yes" if field in required else "no", spec.get("description", "")]
        for field, spec in schema.get("properties", {}).items()
    ]
    intro = f"<p>{html.escape(schema['description'])}</p>" if "description" in schema else ""
    return f'<h3 id="{html.escape(name)}">{html.escape(name)}</h3>{intro}' + _table(
        ["field", "type", "required", "description"], rows
    )


def render_reference(schema: dict, example: str | None = None) -> str:
    """The reference page for an OpenAPI ``schema``: every operation, its parameters, bodies and statuses.

    Args:
        schema: What ``app.openapi()`` returns.
        example: The curl lines shown first. Defaults to None: an upload to ``/predict``.

    Returns:
        A complete HTML document with no external references.
    """
    info = schema.get("info", {})
    title = html.escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    operations = [
        _operation(path, method, operation)
        for path, methods in schema.get("paths", {}).items()
        for method, operation in methods.items()
    ]
    components = [_component(name, spec) for name, spec in schema.get("components", {}).get("schemas", {}).items()]
    example = example or (
        "curl -F file=@digit.png 'http://HOST:PORT/predict?top_k=3'\n"
        "curl -H 'Authorization: Bearer TOKEN' --data-binary @digit.png http://HOST:PORT/predict  # with a token"
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>"
        f"<p>{html.escape(info.get('summary', ''))} The machine-readable schema is at "
        '<a href="openapi.json">openapi.json</a>.</p>'
        f"<pre>{html.escape(example)}</pre>{''.join(operations)}<h2>Schemas</h2>{''.join(components)}</body></html>"
    )
