with

sessions as (

    select * from {{ ref('fct_sessions') }}

),

counted as (

    select
        session_date,
        channel,
        count(*) as sessions,
        cast(count_if(has_product_view) as bigint) as sessions_with_view,
        cast(count_if(has_reached_cart) as bigint) as sessions_with_cart,
        cast(count_if(has_reached_checkout) as bigint) as sessions_with_checkout,
        cast(count_if(has_purchased) as bigint) as sessions_with_purchase
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
            sessions_with_cart / nullif(sessions_with_view, 0) as decimal(9, 4)
        ) as view_to_cart_rate,
        cast(
            sessions_with_checkout / nullif(sessions_with_cart, 0) as decimal(9, 4)
        ) as cart_to_checkout_rate,
        cast(
            sessions_with_purchase / nullif(sessions_with_checkout, 0)
            as decimal(9, 4)
        ) as checkout_to_purchase_rate,
        cast(
            sessions_with_purchase / nullif(sessions, 0) as decimal(9, 4)
        ) as session_conversion_rate,
        session_date
    from counted

)

select * from final
