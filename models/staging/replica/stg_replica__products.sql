{%- set products = source('replica', 'products') -%}

with

source as (

    {{ newest_versions(products, 'product_id') }}

),

versioned as (

    select
        *,
        {{ column_or_null(products, 'category', 'varchar') }} as category_v1,
        {{ column_or_null(products, 'subcategory', 'varchar') }} as subcategory_v1,
        {{ column_or_null(products, 'product_line', 'varchar') }} as product_line_v2,
        -- price: bigint US cents before the restructure, a decimal string of
        -- dollars after it; dlt may keep it in `price` or in a variant column
        {{ column_or_null(products, 'price', 'varchar') }} as price_raw,
        {{ column_or_null(products, 'price__v_text', 'varchar') }} as price_text_v2
    from source

),

renamed as (

    select
        product_id,
        sku,
        product_name,
        coalesce(product_line_v2, category_v1 || ' / ' || subcategory_v1)
            as product_line,
        coalesce(category_v1, split_part(product_line_v2, ' / ', 1)) as category,
        coalesce(subcategory_v1, split_part(product_line_v2, ' / ', 2)) as subcategory,
        cast(
            case
                when price_text_v2 is not null
                    then cast(price_text_v2 as decimal(18, 2))
                -- a row in the new shape carries dollars, an old one cents
                when product_line_v2 is not null
                    then cast(price_raw as decimal(18, 2))
                else cast(price_raw as decimal(18, 2)) / 100
            end as decimal(18, 2)
        ) as list_price_usd,
        is_active,
        {{ as_utc('created_at') }} as created_at,
        {{ as_utc('updated_at') }} as updated_at,
        -- the dlt load that last wrote the row: incremental marts resume from it
        {{ column_or_null(products, '_dlt_load_id', 'varchar') }} as load_id

    from versioned

)

select * from renamed
