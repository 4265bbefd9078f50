{%- set orders = source('replica', 'orders') -%}
{%- set money = ['subtotal', 'discount', 'shipping', 'total'] -%}

with

source as (

    {{ newest_versions(orders, 'order_id', deleted_marker='deleted_at') }}

),

currency_rates as (

    -- a static lookup, not a second entity: this is how amounts become US dollars
    select * from {{ ref('currency_rates') }}

),

renamed as (

    select
        source.order_id,
        source.customer_id,
        source.region_id,
        source.session_id,
        source.status as order_status,
        source.currency as currency_code,
        source.channel,
        source.utm_source,
        source.utm_medium,
        source.utm_campaign,
        -- additive evolution: coupon codes appear on orders
        {{ column_or_null(orders, 'coupon_code', 'varchar') }} as coupon_code,
        {%- for name in money %}
            {{ cents_to_amount('source.' ~ name ~ '_cents') }} as {{ name }}_amount,
            cast(
                source.{{ name }}_cents / 100.0 / currency_rates.units_per_usd
                as decimal(18, 2)
            ) as {{ name }}_amount_usd,
        {%- endfor %}
        source.status = 'cancelled' as is_cancelled,
        source.status = 'returned' as is_returned,
        {{ as_utc('source.ordered_at') }} as ordered_at,
        {{ as_utc('source.updated_at') }} as updated_at,
        -- the dlt load that last wrote the row: incremental marts resume from it
        {{ column_or_null(orders, '_dlt_load_id', 'varchar') }} as load_id

    from source
    left join currency_rates
        on source.currency = currency_rates.currency_code
    where source.deleted_at is null

)

select * from renamed
