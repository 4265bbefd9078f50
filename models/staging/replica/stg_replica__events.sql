{%- set events = source('replica', 'events') -%}

with

source as (

    {{ newest_versions(events, 'event_id') }}

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
        {{ as_utc('occurred_at') }} as device_occurred_at,
        {{ as_utc('updated_at') }} as arrived_at,
        -- the dlt load that last wrote the row: incremental marts resume from it
        {{ column_or_null(events, '_dlt_load_id', 'varchar') }} as load_id

    from source

),

final as (

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
        device_type,
        referrer,
        -- clock skew (doc block clock_skew): a device clock ahead of the server's sends
        -- an event that seems to occur after it arrived; flagged, and occurred_at is
        -- held at the arrival (least skips a null: an event without a time of its own
        -- occurred when it arrived)
        coalesce(device_occurred_at > arrived_at, false) as is_clock_skewed,
        least(device_occurred_at, arrived_at) as occurred_at,
        device_occurred_at,
        arrived_at,
        load_id

    from renamed

)

select * from final
