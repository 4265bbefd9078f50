{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        full_refresh=false,
    )
}}

-- Spark's stand-in for the snapshot products_snapshot (doc block spark_lane): each
-- build appends, stamped with the build's time, the products whose list price differs
-- from the one last captured (the snapshot's check strategy on list_price_usd); the
-- history, like a snapshot's, survives --full-refresh (full_refresh=false)
with

products as (

    select * from {{ ref('stg_replica__products') }}

),

{% if is_incremental() %}
    last_captured as (

        select
            product_id,
            max_by(list_price_usd, dbt_updated_at) as list_price_usd
        from {{ this }}
        group by product_id

    ),
{% endif %}

final as (

    select
        products.*,
        current_timestamp() as dbt_updated_at
    from products
    {% if is_incremental() %}
        left join last_captured
            on products.product_id = last_captured.product_id
        where
            last_captured.product_id is null
            or products.list_price_usd is distinct from last_captured.list_price_usd
    {% endif %}

)

select * from final
