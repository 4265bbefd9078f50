-- fct_orders holds every live order once, with the same money as staging
with

mart as (

    select
        count(*) as orders,
        sum(total_amount) as total_amount,
        sum(total_amount_usd) as total_amount_usd
    from {{ ref('fct_orders') }}

),

staged as (

    select
        count(*) as orders,
        sum(total_amount) as total_amount,
        sum(total_amount_usd) as total_amount_usd
    from {{ ref('stg_replica__orders') }}

)

select
    mart.orders as mart_orders,
    staged.orders as staged_orders,
    mart.total_amount_usd as mart_total_amount_usd,
    staged.total_amount_usd as staged_total_amount_usd
from mart
cross join staged
where
    mart.orders != staged.orders
    or mart.total_amount != staged.total_amount
    or mart.total_amount_usd != staged.total_amount_usd
