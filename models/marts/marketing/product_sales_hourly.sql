{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='sales_hour',
        on_schema_change='append_new_columns',
        pre_hook=[
            "{{ delete_gone('sales_hour', ref('fct_order_items'),"
            " upstream_key=\"date_trunc('hour', kept.ordered_at)\","
            " upstream_where='not kept.is_cancelled') }}",
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
    stale_hours as (

        -- a line deleted or cancelled leaves no newer row behind, only units that no
        -- longer match what was built
        {{ stale_periods('sales_hour', 'order_items', 'quantity', 'not is_cancelled') }}

    ),

    hours_to_build as (

        -- an hour with a line (cancelled ones too) loaded since the last build
        select sales_hour from order_items
        where last_load_id >= {{ last_built_load_id() }}
        union
        select stale.sales_hour from stale_hours as stale

    ),
{% endif %}

selected_items as (

    select * from order_items
    {% if is_incremental() %}
        where sales_hour in (select build.sales_hour from hours_to_build as build)
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
        -- a stale hour takes the newest load, so that analysts' copy takes it
        greatest(
            last_load_id,
            {% if is_incremental() -%}
                (
                    select stale.newest_load_id
                    from stale_hours as stale
                    where stale.sales_hour = aggregated.sales_hour
                )
            {%- else -%}
                cast(null as varchar)
            {%- endif %}
        ) as last_load_id
    from aggregated

)

select * from final
