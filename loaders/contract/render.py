"""The contract document as committed files: JSON, YAML and a page of the docs site.

May import: :mod:`.document` only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import yaml

from loaders.contract.document import CONTRACT_JSON, HEADER


def canonical(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_json(doc: dict) -> str:
    return canonical(doc)


def render_yaml(doc: dict) -> str:
    body = yaml.safe_dump(doc, sort_keys=True, allow_unicode=True, width=88)
    return f"# {HEADER}\n# The same document as {CONTRACT_JSON.name}.\n{body}"


def _cell(values: Sequence[str]) -> str:
    return ", ".join(values).replace("|", "\\|") or "—"


def render_docs(doc: dict) -> str:
    """The contract as a page of the dbt docs site."""
    lines = [
        "{% docs replica_contract %}",
        f"### Data contract with the platform team (version `{doc['version']}`)",
        "",
        f"*{HEADER}*",
        "",
        "The replica API fields salesflow's marts and dashboards depend on, from the models'"
        " column lineage: a field counts when it reaches a mart column, decides a mart's rows"
        " (filter, join or group key) or reaches an exposure, or when the loader needs it."
        " Fields not listed are not used. The platform team checks a build of the API"
        " against it with `salesflow contract verify --api URL`; the JSON Schema is"
        f" `{CONTRACT_JSON}`.",
        "",
        "*required*: the field must be served (optional ones are read when present);"
        " *nullable*: no test says it is never null.",
        "",
        "*Recommended* for every listing: a commit sequence —"
        f" {doc['x-salesflow'].get('recommended', {}).get('change_sequence', '')}.",
    ]
    for entity, spec in sorted(doc["$defs"].items()):
        meta = spec["x-salesflow"]
        lines += [
            "",
            f"#### {entity} (`{meta['endpoint']}`, key `{meta['primary_key']}`)",
            "",
            "| field | type | required | nullable | allowed values | used by |",
            "|---|---|---|---|---|---|",
        ]
        for name, field in sorted(spec["properties"].items()):
            info = field["x-salesflow"]
            allowed = info.get("accepted_values")
            values = (
                f"{_cell(allowed['values'])} ({allowed['severity']})" if allowed else "—"
            )
            used = list(info["marts"]) + [f"dashboard {e}" for e in info["exposures"]]
            used += [f"loader ({r})" for r in info["loader"]]
            lines.append(
                f"| `{name}` | {info['api_type']} | {info['presence']} |"
                f" {'yes' if info['nullable'] else 'no'} | {values} | {_cell(used)} |"
            )
        lines += ["", f"Owners to tell: {_cell(meta['owners'])}."]
    lines.append("{% enddocs %}")
    return "\n".join(lines) + "\n"
