{% macro order_items_joined(order_items) %}
    {#- Order lines (`order_items`: stg_replica__order_items, or a selection of its rows
        as a relation or a CTE's name) with their order, product and currency rate: the
        body of int_order_items_joined_to_orders. fct_order_items's incremental builds
        run it on the lines they rebuild only: a filter on the view is applied after
        every line of the history has been joined, which makes a build's cost follow the
        history rather than the change. -#}
    with

    order_items as (

        select * from {{ order_items }}

    ),

    orders as (

        select * from {{ ref('stg_replica__orders') }}

    ),

    products as (

        select * from {{ ref('stg_replica__products') }}

    ),

    currency_rates as (

        select * from {{ ref('currency_rates') }}

    ),

    joined as (

        select
            order_items.order_item_id,
            order_items.order_id,
            order_items.product_id,
            orders.customer_id,
            orders.region_id,
            orders.currency_code,
            orders.channel,
            orders.order_status,
            coalesce(products.product_line, 'Unknown') as product_line,
            order_items.quantity,
            order_items.unit_price_amount,
            order_items.discount_amount,
            order_items.net_amount,
            cast(
                order_items.net_amount / currency_rates.units_per_usd as decimal(18, 2)
            ) as net_amount_usd,
            orders.is_cancelled,
            orders.is_returned,
            orders.ordered_at,
            -- a line must be rebuilt when the line, its order or its product changes
            greatest(
                order_items.updated_at,
                orders.updated_at,
                coalesce(products.updated_at, order_items.updated_at)
            ) as source_updated_at,
            -- the load that last wrote each of the three, and the latest of them
            order_items.load_id as order_item_load_id,
            orders.load_id as order_load_id,
            products.load_id as product_load_id,
            greatest(
                order_items.load_id,
                orders.load_id,
                coalesce(products.load_id, order_items.load_id)
            ) as last_load_id

        from order_items
        inner join orders
            on order_items.order_id = orders.order_id
        left join products
            on order_items.product_id = products.product_id
        left join currency_rates
            on orders.currency_code = currency_rates.currency_code

    )

    select * from joined
{%- endmacro %}
