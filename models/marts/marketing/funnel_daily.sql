-- rebuilt whole, and read by the month or the day: while salesflow watch runs, built
-- at most every 5 minutes (dbt's build_after), out of the cycles that carry sales
{{ config(freshness={'build_after': {'count': 5, 'period': 'minute'}}) }}

with

sessions as (

    select * from {{ ref('fct_sessions') }}

),

counted as (

    select
        session_date,
        channel,
        count(*) as sessions,
        count(*) filter (where has_product_view) as sessions_with_view,
        count(*) filter (where has_reached_cart) as sessions_with_cart,
        count(*) filter (where has_reached_checkout) as sessions_with_checkout,
        count(*) filter (where has_purchased) as sessions_with_purchase
    from sessions
    group by session_date, channel

),

final as (

    select
        {{ surrogate_key(['session_date', 'channel']) }} as funnel_daily_id,
        channel,
        sessions,
        sessions_with_view,
        sessions_with_cart,
        sessions_with_checkout,
        sessions_with_purchase,
        cast(
            {{ safe_divide('sessions_with_cart', 'sessions_with_view') }}
            as decimal(9, 4)
        ) as view_to_cart_rate,
        cast(
            {{ safe_divide('sessions_with_checkout', 'sessions_with_cart') }}
            as decimal(9, 4)
        ) as cart_to_checkout_rate,
        cast(
            {{ safe_divide('sessions_with_purchase', 'sessions_with_checkout') }}
            as decimal(9, 4)
        ) as checkout_to_purchase_rate,
        cast(
            {{ safe_divide('sessions_with_purchase', 'sessions') }}
            as decimal(9, 4)
        ) as session_conversion_rate,
        session_date
    from counted

)

select * from final
