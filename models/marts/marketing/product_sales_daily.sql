{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='sales_date',
        on_schema_change='append_new_columns',
        pre_hook=[
            "{{ delete_gone('sales_date', ref('product_sales_hourly'),"
            " upstream_key='cast(kept.sales_hour as date)') }}",
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
    stale_days as (

        -- an hour deleted leaves no newer row behind, only units that no longer match
        -- what was built
        {{ stale_periods('sales_date', 'hourly', 'units') }}

    ),

    days_to_build as (

        -- a day with an hour rebuilt since the last build
        select sales_date from hourly
        where last_load_id >= {{ last_built_load_id() }}
        union
        select stale.sales_date from stale_days as stale

    ),
{% endif %}

selected_hours as (

    select * from hourly
    {% if is_incremental() %}
        where sales_date in (select build.sales_date from days_to_build as build)
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
        -- a stale day takes the newest load, so that analysts' copy takes it
        greatest(
            last_load_id,
            {% if is_incremental() -%}
                (
                    select stale.newest_load_id
                    from stale_days as stale
                    where stale.sales_date = aggregated.sales_date
                )
            {%- else -%}
                cast(null as varchar)
            {%- endif %}
        ) as last_load_id
    from aggregated

)

select * from final
