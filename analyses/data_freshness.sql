-- How current the published marts are: when they were published, and per entity the
-- last successful load and any open incident at that moment.
-- Run: salesflow query analyses/data_freshness.sql
select
    published.published_at,
    health.entity,
    health.last_loaded_at,
    health.freshness_status,
    health.open_incident_kind
from marts._published as published
cross join marts.pipeline_health as health
order by health.entity
