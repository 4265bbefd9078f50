with

events as (

    select * from {{ ref('stg_replica__events') }}

),

aggregated as (

    select
        session_id,
        max(customer_id) as customer_id,
        max(order_id) as order_id,
        {{ arg_min('channel', 'occurred_at') }} as channel,
        {{ arg_min('utm_source', 'occurred_at') }} as utm_source,
        {{ arg_min('utm_medium', 'occurred_at') }} as utm_medium,
        {{ arg_min('utm_campaign', 'occurred_at') }} as utm_campaign,
        {{ arg_min('platform', 'occurred_at') }} as platform,
        {{ arg_min('device_type', 'occurred_at') }} as device_type,
        count(*) as events,
        count(*) filter (where event_type = 'product_view') as product_views,
        bool_or(event_type = 'product_view') as has_product_view,
        -- a later step implies the earlier ones, even if their event is missing
        bool_or(event_type in ('add_to_cart', 'checkout', 'purchase'))
            as has_reached_cart,
        bool_or(event_type in ('checkout', 'purchase')) as has_reached_checkout,
        bool_or(event_type = 'purchase') as has_purchased,
        min(occurred_at) as started_at,
        max(occurred_at) as ended_at,
        max(arrived_at) as last_arrived_at

    from events
    group by session_id

)

select * from aggregated
