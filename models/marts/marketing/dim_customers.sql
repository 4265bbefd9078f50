with

customers as (

    select * from {{ ref('stg_replica__customers') }}

),

orders as (

    select * from {{ ref('fct_orders') }}

),

customer_orders as (

    -- cancelled orders never became sales and do not count
    select
        customer_id,
        count(*) as lifetime_orders,
        sum(total_amount_usd) as lifetime_revenue_usd,
        min(ordered_at) as first_order_at,
        max(ordered_at) as last_order_at
    from orders
    where not is_cancelled
    group by customer_id

),

final as (

    select
        customers.customer_id,
        customers.region_id,
        customers.email_hash,
        customers.customer_name_hash,
        customers.acquisition_channel,
        coalesce(customer_orders.lifetime_orders, 0) as lifetime_orders,
        cast(
            coalesce(customer_orders.lifetime_revenue_usd, 0) as decimal(18, 2)
        ) as lifetime_revenue_usd,
        customers.has_phone,
        customers.is_marketing_opt_in,
        customer_orders.customer_id is not null as has_ordered,
        cast(customer_orders.first_order_at as date) as first_order_date,
        customers.created_at,
        customer_orders.first_order_at,
        customer_orders.last_order_at

    from customers
    left join customer_orders
        on customers.customer_id = customer_orders.customer_id

)

select * from final
