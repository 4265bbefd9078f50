with

source as (

    select * from {{ source('salesflow', 'pipeline_incidents') }}

),

renamed as (

    select
        incident_id,
        family as incident_family,
        kind as incident_kind,
        entity,
        last_error,
        duration_seconds,
        failed_cycles,
        rows_caught_up,
        ended_at is null as is_open,
        -- already UTC: the loader writes these timestamps with their time zone
        started_at,
        ended_at

    from source

)

select * from renamed
