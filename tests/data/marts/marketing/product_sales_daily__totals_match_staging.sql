-- daily product sales add up to the live, not cancelled order lines in staging
with

mart as (

    select
        sum(units) as units,
        sum(revenue_usd) as revenue_usd
    from {{ ref('product_sales_daily') }}

),

staged as (

    select
        sum(order_items.quantity) as units,
        sum(
            cast(
                order_items.net_amount / currency_rates.units_per_usd
                as decimal(18, 2)
            )
        ) as revenue_usd
    from {{ ref('stg_replica__order_items') }} as order_items
    inner join {{ ref('stg_replica__orders') }} as orders
        on order_items.order_id = orders.order_id
    inner join {{ ref('currency_rates') }} as currency_rates
        on orders.currency_code = currency_rates.currency_code
    where not orders.is_cancelled

)

select
    mart.units as mart_units,
    staged.units as staged_units,
    mart.revenue_usd as mart_revenue_usd,
    staged.revenue_usd as staged_revenue_usd
from mart
cross join staged
where
    mart.units is distinct from staged.units
    or mart.revenue_usd is distinct from staged.revenue_usd
