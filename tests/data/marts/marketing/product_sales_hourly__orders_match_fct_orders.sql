-- every hour's sales come from orders that are in fct_orders and were not cancelled
with

hourly as (

    select
        sales_hour,
        sum(units) as units
    from {{ ref('product_sales_hourly') }}
    group by sales_hour

),

order_hours as (

    select distinct date_trunc('hour', ordered_at) as sales_hour
    from {{ ref('fct_orders') }}
    where not is_cancelled

)

select hourly.sales_hour
from hourly
left join order_hours
    on hourly.sales_hour = order_hours.sales_hour
where order_hours.sales_hour is null
