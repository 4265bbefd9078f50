{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='sales_date',
        on_schema_change='append_new_columns',
        post_hook=[
            "delete from {{ this }} where sales_date not in"
            " (select distinct cast(sales_hour as date)"
            " from {{ ref('product_sales_hourly') }})",
        ],
    )
}}

with

hourly as (

    select
        *,
        cast(sales_hour as date) as sales_date
    from {{ ref('product_sales_hourly') }}

),

{% if is_incremental() %}
    {{ affected_periods('sales_date', 'hourly', 'last_load_id', 'units') }},
{% endif %}

selected_hours as (

    select * from hourly
    {% if is_incremental() %}
        where sales_date in (select affected.sales_date from affected_periods as affected)
    {% endif %}

),

aggregated as (

    -- an order falls in exactly one hour, so hourly order counts add up to the day
    select
        sales_date,
        product_line,
        region_id,
        channel,
        sum(orders) as orders,
        sum(units) as units,
        sum(revenue_usd) as revenue_usd,
        max(last_source_updated_at) as last_source_updated_at,
        max(last_load_id) as last_load_id
    from selected_hours
    group by sales_date, product_line, region_id, channel

),

final as (

    select
        {{ surrogate_key(['sales_date', 'product_line', 'region_id', 'channel']) }}
            as product_sales_daily_id,
        product_line,
        region_id,
        channel,
        cast(orders as bigint) as orders,
        cast(units as bigint) as units,
        cast(revenue_usd as decimal(18, 2)) as revenue_usd,
        sales_date,
        last_source_updated_at,
        -- a period rebuilt because its units no longer matched takes the newest load
        greatest(
            last_load_id, {{ stale_load_id('sales_date', 'stale_periods') }}
        ) as last_load_id
    from aggregated

)

select * from final
