"""Framework validation errors as one sentence per field a person can act on.

pydantic reports a value that fits none of a union's forms once per form (a long dump of type
names), and a body that is not JSON as a field named after the character offset. Here:

- a body that is not JSON is a 400 saying where parsing stopped;
- a field whose value fits none of its forms gets one line saying what it accepts;
- an image sent as a text form field is told to be sent as a file part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmembed.serve.models import FieldProblem

#: What a union-typed field accepts, in words.
ACCEPTED = {
    "input": "a string, or a list of strings and {\"text\", \"image\"} objects",
    "documents": "a list of strings or {\"text\": ...} objects",
}
_LOCATIONS = ("body", "query", "path", "header", "form")


def validation_error(errors: Sequence[dict[str, Any]]) -> tuple[int, str, list[FieldProblem] | None]:
    """``(status, detail, fields)`` of a request the framework could not validate."""
    for e in errors:
        if e.get("type") == "json_invalid":
            loc = e.get("loc", ())
            where = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
            reason = (e.get("ctx") or {}).get("error", "invalid JSON")
            return 400, f"the request body is not valid JSON ({reason}{where})", None
    by_field: dict[str, list[dict[str, Any]]] = {}
    for e in errors:
        by_field.setdefault(_field(e.get("loc", ())), []).append(e)
    fields = [FieldProblem(field=name, message=_message(name, problems)) for name, problems in by_field.items()]
    detail = "; ".join(f"{f.field or 'request'}: {f.message}" for f in fields) or "invalid request"
    return 422, detail, fields


def _field(loc: Sequence[Any]) -> str:
    """The dotted field name, without the location kind and pydantic's union member tags."""
    parts = [p for p in loc if p not in _LOCATIONS]
    named = []
    for part in parts:
        if isinstance(part, str) and ("[" in part or part[:1].isupper() or part in ("str", "int", "float", "bool")):
            break  # a union member tag: what follows describes a form the value did not take
        named.append(str(part))
    return ".".join(named)


def _message(name: str, problems: list[dict[str, Any]]) -> str:
    first = problems[0]
    message = str(first.get("msg", "invalid"))
    if "Expected UploadFile" in message:
        return ("send the image as a file part of a multipart/form-data request (with a filename; curl: "
                "-F image=@photo.png), not as a text field")
    top = name.split(".", 1)[0]
    if len(problems) > 1 or top in ACCEPTED and name == top:
        accepted = ACCEPTED.get(top)
        if accepted:
            return f"expected {accepted}"
        return "; ".join(dict.fromkeys(str(p.get("msg", "invalid")) for p in problems))
    return message
