-- depends_on: {{ ref('stg_replica__orders') }}, {{ ref('stg_replica__products') }}
-- depends_on: {{ ref('stg_replica__order_items') }}
{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='order_item_id',
        on_schema_change='append_new_columns',
        post_hook=["{{ delete_gone('order_item_id', ref('int_order_items_joined_to_orders')) }}"],
    )
}}

with

{% if is_incremental() %}
    changed_orders as (

        select order_id from {{ ref('stg_replica__orders') }}
        where load_id >= {{ last_built_load_id() }}

    ),

    moved_products as (

        -- a line takes only its product line from the product: a product loaded
        -- since the last build moves its lines only if that changed (a new price
        -- leaves every line of the product's history as it is)
        select built.order_item_id
        from {{ this }} as built
        inner join {{ ref('stg_replica__products') }} as products
            on built.product_id = products.product_id
        where
            products.load_id >= {{ last_built_load_id() }}
            and built.product_line
            is distinct from coalesce(products.product_line, 'Unknown')

    ),

    changed_lines as (

        -- lines whose line or order was (re)loaded since the last build, or whose
        -- product line moved; as keys, so the join upstream reads only these lines
        select order_item_id from {{ ref('stg_replica__order_items') }}
        where
            load_id >= {{ last_built_load_id() }}
            or order_id in (select changed.order_id from changed_orders as changed)
        union
        select moved.order_item_id from moved_products as moved

    ),
{% endif %}

order_items as (

    select * from {{ ref('int_order_items_joined_to_orders') }}
    {% if is_incremental() %}
        where order_item_id in (select changed.order_item_id from changed_lines as changed)
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

    from order_items

)

select * from final
