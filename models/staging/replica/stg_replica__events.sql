{%- set events = source('replica', 'events') -%}

with

source as (

    select * from {{ events }}

),

renamed as (

    select
        event_id,
        session_id,
        customer_id,
        product_id,
        order_id,
        event_type,
        channel,
        utm_source,
        utm_medium,
        utm_campaign,
        platform,
        -- additive evolution: device and referrer on events
        {{ column_or_null(events, 'device_type', 'varchar') }} as device_type,
        {{ column_or_null(events, 'referrer', 'varchar') }} as referrer,
        occurred_at at time zone 'utc' as occurred_at,
        updated_at at time zone 'utc' as arrived_at,
        -- the dlt load that last wrote the row: incremental marts resume from it
        {{ column_or_null(events, '_dlt_load_id', 'varchar') }} as load_id

    from source

)

select * from renamed
