{#- Spark: parquet tables take no delete, days are overwritten (doc block spark_lane) -#}
{%- set spark = target.type == 'spark' -%}
{%- set spark_days = "ref('stg_replica__orders'), 'order_id', 'order_date',"
    ~ " 'cast(ordered_at as date)'" -%}
{{
    config(
        materialized='incremental',
        incremental_strategy='insert_overwrite' if spark else 'delete+insert',
        partition_by=['order_date'] if spark else none,
        unique_key='order_id',
        on_schema_change='append_new_columns',
        meta={'removed_columns': ['customer_id']},
        pre_hook=["{{ drop_emptied_days(" ~ spark_days ~ ") }}"] if spark
            else ["{{ delete_tombstoned('order_id', 'orders') }}"],
        post_hook=["{{ removed_log_table() }}"],
    )
}}

with

orders as (

    select * from {{ ref('stg_replica__orders') }}
    {% if is_incremental() and spark %}
        -- Spark: every order of the days with an order (re)loaded, moved or deleted
        -- since the last build
        where {{ in_days('cast(ordered_at as date)', days_to_rebuild(
            ref('stg_replica__orders'), 'order_id', 'order_date', 'cast(ordered_at as date)'
        )) }}
    {% elif is_incremental() %}
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
