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
    changed_hours as (

        -- hours with a line changed since the last build, with a lookback
        select distinct sales_hour
        from order_items
        where source_updated_at >= (
            select max(built.last_source_updated_at) - {{ lookback_interval() }}
            from {{ this }} as built
        )

    ),

    built_units as (

        select
            sales_hour,
            sum(units) as units
        from {{ this }}
        group by sales_hour

    ),

    current_units as (

        select
            sales_hour,
            sum(quantity) as units
        from order_items
        where not is_cancelled
        group by sales_hour

    ),

    stale_hours as (

        -- a deleted line leaves no changed row behind: find its hour by its units
        select current_units.sales_hour
        from current_units
        left join built_units
            on current_units.sales_hour = built_units.sales_hour
        where built_units.units is distinct from current_units.units

    ),

    affected_hours as (

        select sales_hour from changed_hours
        union
        select sales_hour from stale_hours

    ),
{% endif %}

selected_items as (

    select * from order_items
    {% if is_incremental() %}
        where sales_hour in (select affected.sales_hour from affected_hours as affected)
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
        max(source_updated_at) as last_source_updated_at
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
        last_source_updated_at
    from aggregated

)

select * from final
