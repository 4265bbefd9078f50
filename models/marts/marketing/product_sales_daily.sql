{#- Spark: parquet tables take no delete, see doc block spark_lane -#}
{{
    config(
        materialized='table' if target.type == 'spark' else 'incremental',
        incremental_strategy='delete+insert',
        unique_key='sales_date',
        on_schema_change='append_new_columns',
        pre_hook=[
            "{{ rebuild_periods('sales_date', 'product_sales_hourly',"
            " 'cast(sales_hour as date)') }}",
        ],
        post_hook=["{{ removed_log_table() }}"],
    )
}}

-- the incremental branch also reads the hours removed from product_sales_hourly,
-- declared here since dbt parses only the full branch:
-- depends_on: {{ source('removed', 'product_sales_hourly__removed') }}

with

hourly as (

    select
        *,
        cast(sales_hour as date) as sales_date
    from {{ ref('product_sales_hourly') }}

),

{% if is_incremental() %}
    {%- set days = changed_periods('sales_date', 'product_sales_hourly', 'cast(sales_hour as date)') %}
    days_to_build as (

        -- a day with an hour rebuilt or removed since the last build
        {{ days }}

    ),
{% endif %}

selected_hours as (

    select * from hourly
    {% if is_incremental() %}
        where {{ keys_to_build(
            'sales_date',
            'select periods.sales_date as key from (' ~ days ~ ') as periods',
            bounds=('sales_hour', 'interval 1 day'),
        ) }}
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
        -- a rebuilt day takes the newest load behind its change, so that analysts'
        -- copy takes it
        greatest(
            last_load_id,
            {% if is_incremental() -%}
                (
                    select build.newest_load_id
                    from days_to_build as build
                    where build.sales_date = aggregated.sales_date
                )
            {%- else -%}
                cast(null as {{ type_name('varchar') }})
            {%- endif %}
        ) as last_load_id
    from aggregated

)

select * from final
