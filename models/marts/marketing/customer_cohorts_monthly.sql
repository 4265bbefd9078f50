-- rebuilt whole, and read by the month or the day: while salesflow watch runs, built
-- at most every 5 minutes (dbt's build_after), out of the cycles that carry sales
{{ config(freshness={'build_after': {'count': 5, 'period': 'minute'}}) }}

with

orders as (

    -- cancelled orders never became sales and do not count
    select * from {{ ref('fct_orders') }}
    where not is_cancelled

),

first_orders as (

    select
        customer_id,
        cast(date_trunc('month', min(ordered_at)) as date) as cohort_month
    from orders
    group by customer_id

),

cohort_sizes as (

    select
        cohort_month,
        count(*) as cohort_customers
    from first_orders
    group by cohort_month

),

monthly as (

    select
        first_orders.cohort_month,
        cast(date_trunc('month', orders.ordered_at) as date) as order_month,
        count(distinct orders.customer_id) as active_customers,
        count(*) as orders,
        sum(orders.total_amount_usd) as revenue_usd
    from orders
    inner join first_orders
        on orders.customer_id = first_orders.customer_id
    group by first_orders.cohort_month, order_month

),

final as (

    select
        {{ surrogate_key(['monthly.cohort_month', 'monthly.order_month']) }}
            as customer_cohort_monthly_id,
        cast(
            {{ dbt.datediff('monthly.cohort_month', 'monthly.order_month', 'month') }}
            as bigint
        ) as months_since_first_order,
        cohort_sizes.cohort_customers,
        monthly.active_customers,
        monthly.orders,
        cast(monthly.revenue_usd as decimal(18, 2)) as revenue_usd,
        monthly.cohort_month,
        monthly.order_month

    from monthly
    inner join cohort_sizes
        on monthly.cohort_month = cohort_sizes.cohort_month

)

select * from final
