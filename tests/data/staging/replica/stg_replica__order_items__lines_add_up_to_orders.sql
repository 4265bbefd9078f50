-- an order's lines add up to its subtotal less its discount (amounts in its currency);
-- watch's periodic runs read the orders with the order or a line loaded since their
-- last passing run (var salesflow_tests_since, see the macro get_where_subquery)
{%- set since = var('salesflow_tests_since', '') %}
with

{% if since -%}
    changed as (

        select order_id from {{ ref('stg_replica__orders') }}
        where load_id > '{{ since }}'
        union
        select order_id from {{ ref('stg_replica__order_items') }}
        where load_id > '{{ since }}'

    ),
{%- endif %}

lines as (

    select
        order_id,
        sum(net_amount) as net_amount
    from {{ ref('stg_replica__order_items') }}
    {% if since -%}
        where order_id in (select changed.order_id from changed)
    {%- endif %}
    group by order_id

),

orders as (

    select * from {{ ref('stg_replica__orders') }}
    {% if since -%}
        where order_id in (select changed.order_id from changed)
    {%- endif %}

)

select
    orders.order_id,
    lines.net_amount,
    orders.subtotal_amount - orders.discount_amount as expected_net_amount
from orders
inner join lines
    on orders.order_id = lines.order_id
where lines.net_amount != orders.subtotal_amount - orders.discount_amount
