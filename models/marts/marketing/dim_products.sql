with

products as (

    select * from {{ ref('stg_replica__products') }}

),

final as (

    select
        product_id,
        sku,
        product_name,
        product_line,
        category,
        subcategory,
        list_price_usd,
        is_active,
        created_at,
        updated_at

    from products

)

select * from final
