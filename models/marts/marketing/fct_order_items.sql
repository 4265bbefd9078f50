{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='order_item_id',
        on_schema_change='append_new_columns',
        post_hook=[
            "delete from {{ this }} where order_item_id not in (select order_item_id"
            " from {{ ref('int_order_items_joined_to_orders') }})",
        ],
    )
}}

with

order_items as (

    select * from {{ ref('int_order_items_joined_to_orders') }}
    {% if is_incremental() %}
        -- lines whose line, order or product changed, with a lookback
        where source_updated_at >= {{ since_last_build('source_updated_at') }}
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
        source_updated_at

    from order_items

)

select * from final
