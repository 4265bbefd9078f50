{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='order_item_id',
        on_schema_change='append_new_columns',
        post_hook=[
            "{{ delete_gone('order_item_id', ref('int_order_items_joined_to_orders')) }}",
        ],
    )
}}

with

-- not materialized: read again by the incremental filter, DuckDB would otherwise
-- copy the whole input once per build
order_items as not materialized (

    select * from {{ ref('int_order_items_joined_to_orders') }}

),

{% if is_incremental() %}
    moved_lines as (

        -- a line takes only its product line from its product: a product loaded since
        -- the last build moves its lines only if that changed (a new price leaves every
        -- line of the product's history as it is)
        select order_items.order_item_id
        from order_items
        inner join {{ this }} as built
            on order_items.order_item_id = built.order_item_id
        where
            order_items.product_load_id >= {{ last_built_load_id() }}
            and built.product_line is distinct from order_items.product_line

    ),
{% endif %}

selected_lines as (

    select * from order_items
    {% if is_incremental() %}
        -- the line or its order was (re)loaded since the last build, or its product
        -- line moved
        where
            order_item_load_id >= {{ last_built_load_id() }}
            or order_load_id >= {{ last_built_load_id() }}
            or order_item_id in (select moved.order_item_id from moved_lines as moved)
    {% endif %}

),

final as (

    select
        order_item_id,
        order_id,
        product_id,
        customer_id,
        region_id,
        currency_code,
        channel,
        order_status,
        product_line,
        quantity,
        unit_price_amount,
        discount_amount,
        net_amount,
        net_amount_usd,
        is_cancelled,
        is_returned,
        cast(ordered_at as date) as order_date,
        ordered_at,
        source_updated_at,
        last_load_id

    from selected_lines

)

select * from final
