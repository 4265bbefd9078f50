{%- set order_items = source('replica', 'order_items') -%}

with

source as (

    {{ newest_versions(order_items, 'order_item_id', deleted_marker='deleted_at') }}

),

renamed as (

    select
        order_item_id,
        order_id,
        product_id,
        quantity,
        {{ cents_to_amount('unit_price_cents') }} as unit_price_amount,
        {{ cents_to_amount('discount_cents') }} as discount_amount,
        {{ cents_to_amount('quantity * unit_price_cents - discount_cents') }}
            as net_amount,
        {{ as_utc('created_at') }} as created_at,
        {{ as_utc('updated_at') }} as updated_at,
        -- the dlt load that last wrote the row: incremental marts resume from it
        {{ column_or_null(order_items, '_dlt_load_id', 'varchar') }} as load_id

    from source
    where deleted_at is null

)

select * from renamed
