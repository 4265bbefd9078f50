{#- Spark: parquet tables take no delete, days are overwritten (doc block spark_lane) -#}
{%- set spark = target.type == 'spark' -%}
{%- set spark_days = "ref('int_order_items_joined_to_orders'), 'order_item_id',"
    ~ " 'order_date', 'cast(ordered_at as date)', 'last_load_id'" -%}
{{
    config(
        materialized='incremental',
        incremental_strategy='insert_overwrite' if spark else 'delete+insert',
        partition_by=['order_date'] if spark else none,
        unique_key='order_item_id',
        on_schema_change='append_new_columns',
        meta={'removed_columns': ['ordered_at']},
        pre_hook=["{{ drop_emptied_days(" ~ spark_days ~ ") }}"] if spark else [
            "{{ delete_tombstoned('order_item_id', 'order_items') }}",
            "{{ delete_tombstoned('order_id', 'orders') }}",
        ],
        post_hook=["{{ removed_log_table() }}"],
    )
}}

-- the incremental branch reads staging (the lines it rebuilds, joined by the macro
-- order_items_joined), declared here since dbt parses only the full branch:
-- depends_on: {{ ref('stg_replica__order_items') }}
-- depends_on: {{ ref('stg_replica__orders') }}
-- depends_on: {{ ref('stg_replica__products') }}
-- depends_on: {{ ref('currency_rates') }}

with

{% if is_incremental() and not spark %}
    {%- set since = build_from_load_id() %}
    {%- set changed_lines -%}
        -- the line was (re)loaded since the last build
        select changed.order_item_id as key
        from {{ ref('stg_replica__order_items') }} as changed
        where changed.load_id >= {{ since }}
        union
        -- its order was
        select lines.order_item_id as key
        from {{ ref('stg_replica__order_items') }} as lines
        inner join {{ ref('stg_replica__orders') }} as orders
            on lines.order_id = orders.order_id
        where orders.load_id >= {{ since }}
        union
        -- a line takes only its product line from its product: a product loaded since
        -- the last build moves its lines only if that changed (a new price leaves every
        -- line of the product's history as it is)
        select built.order_item_id as key
        from {{ this }} as built
        inner join {{ ref('stg_replica__products') }} as products
            on built.product_id = products.product_id
        where
            products.load_id >= {{ since }}
            and built.product_line is distinct from products.product_line
    {%- endset %}
    changed_order_items as (

        select * from {{ ref('stg_replica__order_items') }}
        where {{ keys_to_build('order_item_id', changed_lines) }}

    ),

    -- joined here, on the changed lines only: a filter on the intermediate view would
    -- be applied after every line of the history had been joined
    selected_lines as (

        {{ order_items_joined('changed_order_items') }}

    ),
{% else %}
    selected_lines as (

        select * from {{ ref('int_order_items_joined_to_orders') }}
        {%- if is_incremental() %}
        -- Spark: every line of the days with a line (re)loaded, moved or deleted since
        -- the last build, or whose order or product was
        where {{ in_days('cast(ordered_at as date)', days_to_rebuild(
            ref('int_order_items_joined_to_orders'), 'order_item_id', 'order_date',
            'cast(ordered_at as date)', 'last_load_id'
        )) }}
        {%- endif %}

    ),
{% endif %}

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
