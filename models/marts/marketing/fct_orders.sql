{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='order_id',
        on_schema_change='append_new_columns',
        meta={'removed_columns': ['customer_id']},
        pre_hook=["{{ delete_tombstoned('order_id', 'orders') }}"],
        post_hook=["{{ removed_log_table() }}"],
    )
}}

with

orders as (

    select * from {{ ref('stg_replica__orders') }}
    {% if is_incremental() %}
        -- rows (re)loaded since the last build
        where load_id >= {{ build_from_load_id() }}
    {% endif %}

),

marketing_calendar as (

    select * from {{ ref('marketing_calendar') }}

),

final as (

    select
        orders.order_id,
        orders.customer_id,
        orders.region_id,
        orders.session_id,
        orders.order_status,
        orders.currency_code,
        orders.channel,
        orders.utm_source,
        orders.utm_medium,
        orders.utm_campaign,
        orders.coupon_code,
        orders.subtotal_amount,
        orders.discount_amount,
        orders.shipping_amount,
        orders.total_amount,
        orders.subtotal_amount_usd,
        orders.discount_amount_usd,
        orders.shipping_amount_usd,
        orders.total_amount_usd,
        orders.is_cancelled,
        orders.is_returned,
        marketing_calendar.campaign is not null as is_in_campaign_window,
        cast(orders.ordered_at as date) as order_date,
        orders.ordered_at,
        orders.updated_at,
        orders.load_id as last_load_id

    from orders
    left join marketing_calendar
        on
            orders.utm_campaign = marketing_calendar.campaign
            and cast(orders.ordered_at as date)
            between marketing_calendar.start_date and marketing_calendar.end_date

)

select * from final
