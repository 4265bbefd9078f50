{#- Spark: parquet tables take no delete, see doc block spark_lane -#}
{{
    config(
        materialized='table' if target.type == 'spark' else 'incremental',
        incremental_strategy='delete+insert',
        unique_key='customer_id',
        on_schema_change='append_new_columns',
        pre_hook=["{{ delete_tombstoned('customer_id', 'customers') }}"],
        post_hook=["{{ removed_log_table() }}"],
    )
}}

-- the incremental branch also reads the orders removed from fct_orders, declared here
-- since dbt parses only the full branch:
-- depends_on: {{ source('removed', 'fct_orders__removed') }}

with

-- not materialized: the incremental filter below is pushed into the input's scan,
-- which DuckDB would otherwise copy whole once per build
customers as {{ not_materialized() }}(

    select * from {{ ref('stg_replica__customers') }}

),

orders as {{ not_materialized() }}(

    select * from {{ ref('fct_orders') }}

),

{% if is_incremental() %}
    {%- set since = build_from_load_id() %}
    removed_orders as (

        -- an order of theirs was removed (deleted upstream): it left no newer row
        -- behind, only a count that no longer matches
        {{ removed_since('fct_orders', since) }}

    ),

    {%- set customers_to_build -%}
        -- the customer was loaded since the last build
        select changed.customer_id as key
        from {{ ref('stg_replica__customers') }} as changed
        where changed.load_id >= {{ since }}
        union
        -- one of their orders was
        select changed.customer_id as key
        from {{ ref('fct_orders') }} as changed
        where changed.last_load_id >= {{ since }}
        union
        -- or removed
        select removed.customer_id as key
        from ({{ removed_since('fct_orders', since) }}) as removed
    {%- endset %}
    {%- set to_build = keys_to_build('customer_id', customers_to_build) %}
{% endif %}

selected_customers as (

    select * from customers
    {% if is_incremental() %}
        where {{ to_build }}
    {% endif %}

),

selected_orders as (

    select * from orders
    {% if is_incremental() %}
        where {{ to_build }}
    {% endif %}

),

customer_orders as (

    -- cancelled orders never became sales and do not count
    select
        customer_id,
        count(*) filter (where not is_cancelled) as lifetime_orders,
        sum(total_amount_usd) filter (where not is_cancelled) as lifetime_revenue_usd,
        min(ordered_at) filter (where not is_cancelled) as first_order_at,
        max(ordered_at) filter (where not is_cancelled) as last_order_at,
        -- every order counts here: a cancellation is a change to the customer
        max(last_load_id) as last_load_id
    from selected_orders
    group by customer_id

),

final as (

    select
        selected_customers.customer_id,
        selected_customers.region_id,
        selected_customers.email_hash,
        selected_customers.customer_name_hash,
        selected_customers.acquisition_channel,
        coalesce(customer_orders.lifetime_orders, 0) as lifetime_orders,
        cast(
            coalesce(customer_orders.lifetime_revenue_usd, 0) as decimal(18, 2)
        ) as lifetime_revenue_usd,
        selected_customers.has_phone,
        selected_customers.is_marketing_opt_in,
        coalesce(customer_orders.lifetime_orders, 0) > 0 as has_ordered,
        cast(customer_orders.first_order_at as date) as first_order_date,
        selected_customers.created_at,
        customer_orders.first_order_at,
        customer_orders.last_order_at,
        -- a customer who lost an order takes the load of its removal, so that
        -- analysts' copy takes it
        greatest(
            selected_customers.load_id,
            customer_orders.last_load_id,
            {% if is_incremental() -%}
                (
                    select max(removed.removed_load_id)
                    from removed_orders as removed
                    where removed.customer_id = selected_customers.customer_id
                )
            {%- else -%}
                cast(null as {{ type_name('varchar') }})
            {%- endif %}
        ) as last_load_id

    from selected_customers
    left join customer_orders
        on selected_customers.customer_id = customer_orders.customer_id

)

select * from final
