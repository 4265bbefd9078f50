-- an order's lines add up to its subtotal less its discount (amounts in its currency)
with

lines as (

    select
        order_id,
        sum(net_amount) as net_amount
    from {{ ref('stg_replica__order_items') }}
    group by order_id

),

orders as (

    select * from {{ ref('stg_replica__orders') }}

)

select
    orders.order_id,
    lines.net_amount,
    orders.subtotal_amount - orders.discount_amount as expected_net_amount
from orders
inner join lines
    on orders.order_id = lines.order_id
where lines.net_amount != orders.subtotal_amount - orders.discount_amount
