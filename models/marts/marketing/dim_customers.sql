{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='customer_id',
        on_schema_change='append_new_columns',
        post_hook=["{{ delete_gone('customer_id', ref('stg_replica__customers')) }}"],
    )
}}

with

{% if is_incremental() %}
    current_orders as (

        select
            customer_id,
            count(*) as lifetime_orders
        from {{ ref('fct_orders') }}
        where not is_cancelled
        group by customer_id

    ),

    stale_customers as (

        -- an order of theirs was deleted: it left no newer row, only a count that no
        -- longer matches
        select built.customer_id
        from {{ this }} as built
        left join current_orders
            on built.customer_id = current_orders.customer_id
        where built.lifetime_orders != coalesce(current_orders.lifetime_orders, 0)

    ),

    newest_load as (

        select max(newest.load_id) as load_id
        from (
            select max(load_id) as load_id from {{ ref('stg_replica__customers') }}
            union all
            select max(last_load_id) as load_id from {{ ref('fct_orders') }}
        ) as newest

    ),

    changed_customers as (

        -- the customer was loaded since the last build
        select customer_id from {{ ref('stg_replica__customers') }}
        where load_id >= {{ last_built_load_id() }}
        union
        -- one of their orders was
        select customer_id from {{ ref('fct_orders') }}
        where last_load_id >= {{ last_built_load_id() }}
        union
        select stale.customer_id from stale_customers as stale

    ),
{% endif %}

customers as (

    select * from {{ ref('stg_replica__customers') }}
    {% if is_incremental() %}
        where customer_id in (select changed.customer_id from changed_customers as changed)
    {% endif %}

),

orders as (

    select * from {{ ref('fct_orders') }}
    {% if is_incremental() %}
        where customer_id in (select changed.customer_id from changed_customers as changed)
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
    from orders
    group by customer_id

),

final as (

    select
        customers.customer_id,
        customers.region_id,
        customers.email_hash,
        customers.customer_name_hash,
        customers.acquisition_channel,
        coalesce(customer_orders.lifetime_orders, 0) as lifetime_orders,
        cast(
            coalesce(customer_orders.lifetime_revenue_usd, 0) as decimal(18, 2)
        ) as lifetime_revenue_usd,
        customers.has_phone,
        customers.is_marketing_opt_in,
        coalesce(customer_orders.lifetime_orders, 0) > 0 as has_ordered,
        cast(customer_orders.first_order_at as date) as first_order_date,
        customers.created_at,
        customer_orders.first_order_at,
        customer_orders.last_order_at,
        -- a stale customer takes the newest load, so analysts' copy takes the rebuild
        greatest(
            customers.load_id,
            customer_orders.last_load_id,
            {{ stale_load_id('customers.customer_id', 'stale_customers') }}
        ) as last_load_id

    from customers
    left join customer_orders
        on customers.customer_id = customer_orders.customer_id

)

select * from final
