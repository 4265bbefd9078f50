"""The ``endpoint_failed`` alarm: one entity's endpoint failed while the others loaded.

The replica source isolates a failure of one endpoint (see
:mod:`loaders.replica.failures`): the cycle succeeds for the other entities, and each
failing endpoint is a data alarm (:mod:`loaders.monitoring.alarms`) on its entity: one
notice when it first fails, naming the endpoint, what it answered and the marts and
exposures it holds back (from the project's lineage, as impact reports have it); nothing
while it keeps failing; one recovery notice once it answers again, in the cycle whose
load catches the entity up (its cursor never moved past what loaded).

May import: every service and the foundations (see :mod:`loaders.runners`); not the
pipeline runner, which imports this.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from loaders.monitoring.alarms import AlarmCheck, Condition
from loaders.replica import settings
from loaders.replica.failures import EndpointFailure
from loaders.schema_changes.impact import Lineage, LineageSource, current_lineage, resolve

log = logging.getLogger(__name__)

KIND = "endpoint_failed"


def check(
    alarms: AlarmCheck, failed: Iterable[EndpointFailure], listed: Iterable[str],
    lineage: LineageSource = current_lineage,
) -> None:
    """Into ``alarms``: a condition per endpoint of ``failed``; the entities ``listed``
    this cycle are judged (an alarm on another entity is left as it is). ``lineage`` is
    asked only when an endpoint failed."""
    failed = list(failed)
    resolved = resolve(lineage) if failed else None
    alarms.add(KIND, [condition(f, resolved) for f in failed], entities=list(listed))


def held_back(lineage: Lineage | None, entity: str) -> list[str] | None:
    """The marts and exposures downstream of ``source:replica.<entity>`` (None: the
    lineage is not available)."""
    if lineage is None:
        return None
    source_id = lineage.source_id(settings.SOURCE_NAME, entity)
    if source_id is None:
        return []
    found = lineage.reach(source_id, None)
    return sorted({*found.marts, *found.exposures})


def condition(failure: EndpointFailure, lineage: Lineage | None) -> Condition:
    """The alarm's condition for one failed endpoint."""
    entity = failure.entity
    status = failure.status
    short = (f"answers {status}" if status is not None and status >= 400
             else "serves pages that are not records")
    if status is not None and status >= 400:
        answered = f"{status}: {failure.answered}" if failure.answered else f"{status}"
    else:  # a page that is not records, with the status it came with
        answered = (f"{status} with " if status is not None else "") + (
            failure.answered or "a page that is not records")
    marts = held_back(lineage, entity)
    holds = (
        "the lineage could not be worked out, so the marts it holds back are not listed"
        if marts is None
        else f"these marts and exposures miss new {entity} data meanwhile:"
        f" {', '.join(marts)}" if marts
        else f"no mart reads {entity}"
    )
    text = (
        f"The endpoint /{failure.path} answered {answered}. The other entities load as"
        f" usual; {entity} loads nothing new until it answers again ({holds}). Nothing"
        f" is lost: its cursor stays where its last page loaded, and the first cycle"
        f" after the endpoint is back catches {entity} up. If it lasts, check the"
        " endpoint declaration in .dlt/config.toml or escalate to the platform team."
        f"\nDetail: {failure.message}"
    )
    return Condition(
        kind=KIND,
        entity=entity,
        title=f"{entity}: endpoint /{failure.path} {short}",
        text=text,
        details={"endpoint": failure.path, "status": failure.status,
                 "answered": failure.answered, "held_back": marts},
    )
