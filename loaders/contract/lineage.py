"""Column-level lineage of the dbt project's models, from their compiled SQL.

Each model's compiled SQL is qualified with sqlglot (dialect duckdb) against the columns of
the relations it reads: sources and seeds as declared, upstream models as computed here in
dependency order. Per model this gives:

* ``columns``: each output column -> the upstream (node, column) pairs it is computed from
  (sqlglot's lineage, through every CTE and subquery);
* ``rows``: the upstream (node, column) pairs that decide which rows the model has — the
  columns in its filters, join conditions, group keys, ``having`` and ``qualify``, in any
  of its CTEs;
* ``not_null_from`` / ``values_from``: for each output column, the upstream columns it
  passes through unchanged enough that a ``not_null`` (strict expressions: casts,
  arithmetic, comparisons) or an ``accepted_values`` test (the value itself: casts, the
  first argument of ``coalesce``) on the output says the same of the input.

:func:`reach` follows a column forward through the whole project, so a caller can ask
which marts (columns or rows) a source field ends up in.

May import: sqlglot; nothing of the project.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.lineage import lineage, to_node
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, ScopeType, build_scope, find_all_in_scope
from sqlglot.schema import MappingSchema

log = logging.getLogger(__name__)

DIALECT = "duckdb"
ROWS = "*"  # pseudo column of a model: which rows it has

Ref = tuple[str, str]  # (unique_id of a node, column name)
RelKey = tuple[str, str, str]  # (catalog, schema, name), lower case

# expressions through which an input that is null makes the output null
_STRICT: tuple[type[exp.Expr], ...] = (
    exp.Cast, exp.Paren, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.IntDiv, exp.Mod, exp.Neg,
    exp.AtTimeZone, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Not, exp.DPipe,
    exp.Lower, exp.Upper, exp.Trim, exp.SHA, exp.SHA2, exp.MD5, exp.Encode, exp.Unhex,
)
# expressions through which an input's value reaches the output as it is
_VALUE: tuple[type[exp.Expr], ...] = (exp.Cast, exp.Paren)


@dataclass
class ModelLineage:
    unique_id: str
    columns: dict[str, set[Ref]] = field(default_factory=dict)
    rows: set[Ref] = field(default_factory=set)
    reads: set[str] = field(default_factory=set)  # unique_ids of the relations it reads
    not_null_from: dict[str, set[Ref]] = field(default_factory=dict)
    values_from: dict[str, set[Ref]] = field(default_factory=dict)


class LineageError(RuntimeError):
    """A model's compiled SQL could not be analysed."""


def relation_key(relation_name: str) -> RelKey:
    table = exp.to_table(relation_name, dialect=DIALECT)
    return (table.catalog.lower(), table.db.lower(), table.name.lower())


def _table_key(table: exp.Table) -> RelKey:
    return (table.catalog.lower(), table.db.lower(), table.name.lower())


class Project:
    """The relations of a compiled project and their columns, filled in as models are
    analysed in dependency order."""

    def __init__(self) -> None:
        self.schema: dict[str, dict[str, dict[str, dict[str, str]]]] = {}
        self.by_key: dict[RelKey, str] = {}

    def add(self, unique_id: str, relation_name: str, columns: Iterable[str]) -> None:
        catalog, db, name = relation_key(relation_name)
        self.by_key[(catalog, db, name)] = unique_id
        self.schema.setdefault(catalog, {}).setdefault(db, {})[name] = {
            c.lower(): "unknown" for c in columns
        }


def analyse(unique_id: str, compiled_sql: str, project: Project) -> ModelLineage:
    """The lineage of one model; its output columns are added to ``project``."""
    try:
        expression = sqlglot.parse_one(compiled_sql, dialect=DIALECT)
        schema = MappingSchema(dict(project.schema), dialect=DIALECT)
        qualified = qualify(
            expression, dialect=DIALECT, schema=schema, validate_qualify_columns=False,
            identify=False,
        )
        root = build_scope(qualified)
        if root is None or not isinstance(qualified, exp.Query):
            raise LineageError(f"{unique_id}: compiled SQL is not a query")
        result = ModelLineage(unique_id)
        for name, node in lineage(
            None, qualified, schema, dialect=DIALECT, scope=root, trim_selects=False
        ).items():
            result.columns[name] = {
                ref for n in node.walk() if (ref := _leaf(n, project)) is not None
            }
        for scope in root.traverse():
            for column in _key_columns(scope):
                result.rows |= _resolve(scope, column, schema, project)
            result.reads |= {
                uid for src in scope.sources.values() if isinstance(src, exp.Table)
                and (uid := project.by_key.get(_table_key(src)))
            }
        for name in result.columns:
            result.not_null_from[name] = _trace(root, name, _STRICT, False, project)
            result.values_from[name] = _trace(root, name, _VALUE, True, project)
    except (SqlglotError, ValueError) as exc:
        raise LineageError(
            f"{unique_id}: sqlglot could not analyse its compiled SQL ({exc}); the data"
            " contract needs every model the replica source feeds to be analysable"
        ) from exc
    return result


def _leaf(node, project: Project) -> Ref | None:
    if not isinstance(node.expression, exp.Table):
        return None
    uid = project.by_key.get(_table_key(node.expression))
    return (uid, node.name.split(".")[-1].lower()) if uid else None


def _key_columns(scope: Scope) -> list[exp.Column]:
    """Columns deciding a scope's rows: filters, join conditions, group keys, having,
    qualify; and everything a subquery used as a predicate selects."""
    select = scope.expression
    if not isinstance(select, exp.Select):
        return []
    parts: list[exp.Expr] = [
        select.args[k] for k in ("where", "group", "having", "qualify") if select.args.get(k)
    ]
    parts += [j for j in select.args.get("joins") or [] if j.args.get("on") or j.args.get("using")]
    if scope.scope_type == ScopeType.SUBQUERY:
        parts += list(select.selects)
    return [c for part in parts for c in find_all_in_scope(part, exp.Column)]


def _resolve(scope: Scope, column: exp.Column, schema, project: Project) -> set[Ref]:
    source = scope.sources.get(column.table)
    if isinstance(source, exp.Table):
        uid = project.by_key.get(_table_key(source))
        return {(uid, column.name.lower())} if uid else set()
    if isinstance(source, Scope):
        try:
            node = to_node(column.name, source, DIALECT, schema=schema, trim_selects=False)
        except (SqlglotError, ValueError):
            return set()
        return {ref for n in node.walk() if (ref := _leaf(n, project)) is not None}
    return set()


def _trace(
    scope: Scope, name: str, allowed: tuple[type[exp.Expr], ...], coalesce_first: bool,
    project: Project,
) -> set[Ref]:
    """Upstream columns that reach output ``name`` only through ``allowed`` expressions."""
    select = scope.expression
    if not isinstance(select, exp.Select):
        return set()
    projection = next((s for s in select.selects if s.alias_or_name == name), None)
    if projection is None:
        return set()
    found: set[Ref] = set()
    for column in find_all_in_scope(projection, exp.Column):
        if not _passes(column, projection, allowed, coalesce_first):
            continue
        source = scope.sources.get(column.table)
        if isinstance(source, exp.Table):
            uid = project.by_key.get(_table_key(source))
            if uid:
                found.add((uid, column.name.lower()))
        elif isinstance(source, Scope):
            found |= _trace(source, column.name, allowed, coalesce_first, project)
    return found


def _passes(
    column: exp.Expr, root: exp.Expr, allowed: tuple[type[exp.Expr], ...], coalesce_first: bool
) -> bool:
    node = column
    while node is not root and node.parent is not None:
        parent = node.parent
        if isinstance(parent, exp.Alias) and parent is root:
            return True
        if coalesce_first and isinstance(parent, exp.Coalesce) and parent.this is node:
            node = parent
            continue
        if not isinstance(parent, allowed):
            return False
        node = parent
    return True


def edges(models: Mapping[str, ModelLineage]) -> dict[Ref, set[Ref]]:
    """Where each (node, column) and (node, ROWS) flows one step downstream."""
    out: dict[Ref, set[Ref]] = {}
    for m in models.values():
        for name, inputs in m.columns.items():
            for ref in inputs:
                out.setdefault(ref, set()).add((m.unique_id, name))
        for ref in m.rows:
            out.setdefault(ref, set()).add((m.unique_id, ROWS))
        for upstream in m.reads:
            out.setdefault((upstream, ROWS), set()).add((m.unique_id, ROWS))
    return out


def reach(graph: Mapping[Ref, set[Ref]], start: Ref) -> set[Ref]:
    """Every (model, column) and (model, ROWS) that ``start`` flows into, downstream."""
    seen: set[Ref] = set()
    queue = [start]
    while queue:
        ref = queue.pop()
        for nxt in graph.get(ref, ()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen
