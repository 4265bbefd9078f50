{{ config(materialized='view') }}

-- How current the data behind the marts is, per entity: a view, so it answers "now"
-- whenever it is queried, not when it was last built.
with

loads as (

    select * from {{ ref('stg_salesflow__pipeline_loads') }}

),

incidents as (

    select * from {{ ref('stg_salesflow__pipeline_incidents') }}

),

mart_statuses as (

    select * from {{ ref('stg_salesflow__mart_status') }}

),

last_load as (

    select
        entity,
        max(loaded_at) as last_loaded_at,
        max(case when rows_loaded > 0 then loaded_at end) as last_new_data_at
    from loads
    group by entity

),

open_incident as (

    select
        incident_kind as open_incident_kind,
        incident_family as open_incident_family,
        started_at as open_incident_since
    from incidents
    where is_open and incident_family in ('outage', 'error')
    order by started_at desc
    limit 1

),

-- marts held back at their last good version by a failing build or data test
held_back as (

    select
        count(*) as marts_held_back,
        {{ ordered_string_agg('mart_name', "', '", 'mart_name') }} as held_back_marts
    from mart_statuses
    where is_held_back

),

-- data alarms: on one entity, or (entity null) on the whole platform; a failing build
-- or test run is an alarm on the whole platform
open_alarms as (

    select
        loaded.entity,
        min(incidents.started_at) as open_alarm_since,
        {{ ordered_string_agg(
            'incidents.incident_kind', "', '", 'incidents.incident_kind'
        ) }}
            as open_alarm_kinds
    from incidents
    inner join last_load as loaded
        on incidents.entity = loaded.entity or incidents.entity is null
    where incidents.is_open and incidents.incident_family in ('data', 'build')
    group by loaded.entity

),

aged as (

    select
        last_load.entity,
        last_load.last_loaded_at,
        last_load.last_new_data_at,
        {{ minutes_between('last_load.last_loaded_at', 'current_timestamp') }}
            as minutes_since_load
    from last_load

),

final as (

    select
        aged.entity,
        aged.last_loaded_at,
        aged.last_new_data_at,
        aged.minutes_since_load,
        case
            when aged.minutes_since_load >= {{ var('freshness_error_minutes') }}
                then 'error'
            when aged.minutes_since_load >= {{ var('freshness_warn_minutes') }}
                then 'warn'
            else 'fresh'
        end as freshness_status,
        case
            when
                aged.minutes_since_load >= {{ var('freshness_error_minutes') }}
                or open_incident.open_incident_kind is not null
                or open_alarms.open_alarm_kinds is not null
                then 'red'
            when
                aged.minutes_since_load >= {{ var('freshness_warn_minutes') }}
                or held_back.marts_held_back > 0
                then 'warn'
            else 'green'
        end as health_status,
        open_incident.open_incident_kind,
        open_incident.open_incident_family,
        open_incident.open_incident_since,
        open_alarms.open_alarm_kinds,
        open_alarms.open_alarm_since,
        held_back.held_back_marts,
        held_back.marts_held_back
    from aged
    left join open_incident on true
    left join held_back on true
    left join open_alarms on aged.entity = open_alarms.entity

)

select * from final
