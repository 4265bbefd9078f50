{#- Spark: parquet tables take no delete, see doc block spark_lane -#}
{{
    config(
        materialized='table' if target.type == 'spark' else 'incremental',
        incremental_strategy='delete+insert',
        unique_key='sales_hour',
        on_schema_change='append_new_columns',
        pre_hook=[
            "{{ rebuild_periods('sales_hour', 'fct_order_items',"
            " \"date_trunc('hour', ordered_at)\") }}",
        ],
        post_hook=["{{ removed_log_table() }}"],
    )
}}

-- the incremental branch also reads the lines removed from fct_order_items, declared
-- here since dbt parses only the full branch:
-- depends_on: {{ source('removed', 'fct_order_items__removed') }}

with

order_items as (

    select
        *,
        date_trunc('hour', ordered_at) as sales_hour
    from {{ ref('fct_order_items') }}

),

{% if is_incremental() %}
    {%- set hours = changed_periods('sales_hour', 'fct_order_items', "date_trunc('hour', ordered_at)") %}
    hours_to_build as (

        -- an hour with a line (cancelled ones too) loaded since the last build, or a
        -- line removed since (deleted upstream: it left no newer row behind)
        {{ hours }}

    ),
{% endif %}

selected_items as (

    select * from order_items
    {% if is_incremental() %}
        where {{ keys_to_build(
            'sales_hour',
            'select periods.sales_hour as key from (' ~ hours ~ ') as periods',
            bounds=('ordered_at', 'interval 1 hour'),
        ) }}
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
        -- a rebuilt hour takes the newest load behind its change (a cancelled or
        -- removed line's too), so that analysts' copy takes it
        greatest(
            last_load_id,
            {% if is_incremental() -%}
                (
                    select build.newest_load_id
                    from hours_to_build as build
                    where build.sales_hour = aggregated.sales_hour
                )
            {%- else -%}
                cast(null as {{ type_name('varchar') }})
            {%- endif %}
        ) as last_load_id
    from aggregated

)

select * from final
