{{ config(alias='products_snapshot') }}

-- the price history as the snapshot products_snapshot gives it elsewhere (same name,
-- same columns): each captured version valid from its capture to the next one's
with

captures as (

    select * from {{ ref('product_price_captures') }}

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
        updated_at,
        load_id,
        md5(concat_ws(
            '|', cast(product_id as string), cast(dbt_updated_at as string)
        )) as dbt_scd_id,
        dbt_updated_at,
        dbt_updated_at as dbt_valid_from,
        lead(dbt_updated_at) over (
            partition by product_id order by dbt_updated_at
        ) as dbt_valid_to
    from captures

)

select * from final
