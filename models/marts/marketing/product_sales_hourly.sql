{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='sales_hour',
        on_schema_change='append_new_columns',
        post_hook=[
            "delete from {{ this }} where sales_hour not in"
            " (select distinct date_trunc('hour', ordered_at)"
            " from {{ ref('fct_order_items') }} where not is_cancelled)",
        ],
    )
}}

with

order_items as (

    select
        *,
        date_trunc('hour', ordered_at) as sales_hour
    from {{ ref('fct_order_items') }}

),

{% if is_incremental() %}
    {{ affected_periods('sales_hour', 'order_items', 'last_load_id', 'quantity', 'not is_cancelled') }},
{% endif %}

selected_items as (

    select * from order_items
    {% if is_incremental() %}
        where sales_hour in (select affected.sales_hour from affected_periods as affected)
    {% endif %}

),

sold as (

    select * from selected_items
    where not is_cancelled

),

aggregated as (

    select
        sales_hour,
        product_line,
        region_id,
        channel,
        count(distinct order_id) as orders,
        sum(quantity) as units,
        sum(net_amount_usd) as revenue_usd,
        max(source_updated_at) as last_source_updated_at,
        max(last_load_id) as last_load_id
    from sold
    group by sales_hour, product_line, region_id, channel

),

final as (

    select
        {{ surrogate_key(['sales_hour', 'product_line', 'region_id', 'channel']) }}
            as product_sales_hourly_id,
        product_line,
        region_id,
        channel,
        orders,
        cast(units as bigint) as units,
        cast(revenue_usd as decimal(18, 2)) as revenue_usd,
        sales_hour,
        last_source_updated_at,
        -- a period rebuilt because its units no longer matched takes the newest load
        greatest(
            last_load_id, {{ stale_load_id('sales_hour', 'stale_periods') }}
        ) as last_load_id
    from aggregated

)

select * from final
